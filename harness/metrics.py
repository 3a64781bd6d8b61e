"""Sample values of a /metrics page (not its `# HELP` lines, present even with no sample)."""
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def sample_total(text, name, **labels):
    """Sum of the samples called `name` whose labels include `labels`; None if there is no such sample."""
    values = [s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == name and labels.items() <= s.labels.items()]
    return sum(values) if values else None


def scrape(process):
    """The /metrics page of a running `harness.stack.Process`."""
    with urllib.request.urlopen(process.admin_url + "/metrics", timeout=5) as response:
        return response.read().decode()


def rows_per_message(text, queue):
    """Outbox rows per message published to `queue` so far, from a /metrics page; None before the first."""
    rows, messages = (sample_total(text, name, queue=queue)
                      for name in ("shop_outbox_rows_published_total", "shop_messages_published_total"))
    return rows / messages if messages else None
