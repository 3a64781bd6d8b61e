"""deploy/prometheus: the rules and the configuration are valid, and each alert fires when it should and not
otherwise (promtool unit tests in alerts_test.yml)."""
import subprocess

from tests.deploy.conftest import PROMETHEUS_DIR


def promtool_run(promtool, *args):
    done = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_alerting_rules_and_prometheus_config_are_valid(promtool):
    assert "SUCCESS: 6 rules found" in promtool_run(promtool, "check", "rules", "alerts.yml")
    promtool_run(promtool, "check", "config", "prometheus.yml")


def test_each_alert_fires_when_it_should_and_not_otherwise(promtool):
    assert "SUCCESS" in promtool_run(promtool, "test", "rules", "alerts_test.yml")
