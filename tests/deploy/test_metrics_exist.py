"""Every metric the dashboard and the alerts query is one the real processes export at /metrics.

The three processes run as `python -m ...` runs them (harness.stack), on their own databases and vhost, and
each one's /metrics is scraped; the names a PromQL expression uses are read from it with a small tokenizer
(`metric_names`), itself checked on the expressions it must read."""
import json
import re
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.client import call
from tests.deploy.conftest import ROOT

# Series Prometheus makes itself for each target; no process exports them.
PROMETHEUS_OWN = {"up"}
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "inf", "nan"}
# The sample names of a metric family, by type (prometheus_client's text format).
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "untyped": ("",)}


def metric_names(expr):
    """The metric names an expression reads: identifiers outside strings, label matchers, ranges and label
    lists, that are neither functions (followed by "(") nor PromQL keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if match.group().lower() not in PROMQL_WORDS and not expr[match.end():].lstrip().startswith("("):
            names.add(match.group())
    return names


def test_metric_names_reads_what_an_expression_queries():
    assert metric_names('histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job=~"$job", x="y(z)"}'
                        '[$__rate_interval]))) > on (job) group_left b_total offset 5m or c') == \
        {"a_bucket", "b_total", "c"}
    assert metric_names("1e3 * max by (table) (shop_pending_rows) > bool 0.5") == {"shop_pending_rows"}


def alert_expressions():
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_expressions():
    dashboard = json.loads((ROOT / "deploy/grafana/shop.json").read_text())
    exprs = {f"{panel['title']} {target['refId']}": target["expr"]
             for panel in dashboard["panels"] for target in panel["targets"]}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs[f"${variable['name']}"] = re.sub(r"^label_values\((.*), *\w+\)$", r"\1",
                                                   variable["query"]["query"])
    return exprs


def exported_names(text):
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in SUFFIXES[family.type]}


@pytest.fixture(scope="module")
def exported(stack):
    """{process: the sample names its /metrics exports}, after an order went through."""
    assert call(stack.url, "POST", "/payments", {"user_id": 1})[0] == 201
    assert call(stack.url, "POST", "/orders", {"user_id": 1, "amount": 1})[0] == 201
    scraped = {}
    for name, process in stack.processes.items():
        with urllib.request.urlopen(process.admin_url + "/metrics", timeout=10) as response:
            scraped[name] = exported_names(response.read().decode())
    return scraped


@pytest.mark.parametrize("source", [alert_expressions, dashboard_expressions])
def test_every_queried_metric_is_exported_by_a_process(exported, source):
    everything = set().union(*exported.values()) | PROMETHEUS_OWN
    for where, expr in source().items():
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= everything, f"{where}: {sorted(names - everything)} not exported by any process"


def test_services_export_the_series_the_alerts_need_about_them(exported):
    needed = {"shop_ready", "shop_dead_letter_queue_messages", "shop_oldest_pending_age_seconds",
              "shop_messages_publish_failed_total"}
    for service in ("order", "payment"):
        assert needed <= exported[service], sorted(needed - exported[service])
    assert "shop_ready" not in exported["gateway"]  # it would read 0, "not ready": it has no such check
