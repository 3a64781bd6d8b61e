"""The alerting rules on the real series: a Prometheus server (Debian's binary, on a free port, its data in a
temporary directory) scrapes the three real processes with deploy/prometheus/prometheus.yml's jobs, every
second, and evaluates alerts.yml; a message the Payments Service dead-letters makes ShopDeadLetters fire."""
import asyncio
import json
import subprocess
import urllib.parse
import urllib.request
from urllib.error import URLError

import aio_pika
import pytest
import yaml

from common.broker.messages import ORDER_REQUESTS
from harness.stack import free_port
from tests.conftest import wait_for
from tests.deploy.conftest import PROMETHEUS_DIR


def port_of(process):
    """The port Prometheus scrapes: the process's admin port."""
    return urllib.parse.urlsplit(process.admin_url).port


@pytest.fixture(scope="module")
def prometheus(stack, prometheus_binary, tmp_path_factory):
    """The base URL of a Prometheus scraping `stack` as the shipped config would (targets replaced)."""
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    ports = {"shop-gateway": port_of(stack["gateway"]), "shop-order": port_of(stack["order"]),
             "shop-payment": port_of(stack["payment"])}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(work / "prometheus.log", "wb") as log:
        server = subprocess.Popen([prometheus_binary, f"--config.file={work / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api(url, "/-/ready", raw=True), timeout=60)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def api(base, path, raw=False, **query):
    try:
        with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(query)}", timeout=5) as response:
            body = response.read()
    except URLError as exc:
        raise AssertionError(f"{path}: {exc}") from None
    return body if raw else json.loads(body)["data"]


def alerts(prometheus, name):
    return [alert for alert in api(prometheus, "/api/v1/alerts")["alerts"] if alert["labels"]["alertname"] == name]


async def publish_malformed(stack, message_id):
    connection = await aio_pika.connect(stack.base_env["RABBITMQ_URL"])
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"{not json", message_id=message_id),
                                               routing_key=ORDER_REQUESTS)
    finally:
        await connection.close()


def test_a_dead_letter_in_the_real_stack_fires_ShopDeadLetters_and_nothing_else(stack, prometheus):
    def every_process_scraped_and_ready():
        up = api(prometheus, "/api/v1/query", query='up{job=~"shop.*"}')["result"]
        assert sorted((series["metric"]["job"], series["value"][1]) for series in up) == \
            [("shop-gateway", "1"), ("shop-order", "1"), ("shop-payment", "1")]
        ready = api(prometheus, "/api/v1/query", query="shop_ready")["result"]
        assert sorted(series["metric"]["job"] for series in ready if series["value"][1] == "1") == \
            ["shop-order", "shop-payment"]
    wait_for(every_process_scraped_and_ready, timeout=60)
    assert alerts(prometheus, "ShopDeadLetters") == []

    asyncio.run(publish_malformed(stack, "live-alert"))

    def fired():
        found = alerts(prometheus, "ShopDeadLetters")
        assert len(found) == 1, found
        alert = found[0]
        assert (alert["state"], alert["labels"]["queue"]) == ("firing", ORDER_REQUESTS)
        assert alert["annotations"]["summary"] == "1 dead letter(s) of outbox_os wait in outbox_os.dead"
    wait_for(fired, timeout=60)
    others = [alert for alert in api(prometheus, "/api/v1/alerts")["alerts"]
              if alert["labels"]["alertname"] != "ShopDeadLetters"]
    assert others == [], [stack[name].log()[-3000:] for name in ("order", "payment")]
