"""Sample values of a /metrics page (not its `# HELP` lines, present even with no sample)."""
from prometheus_client.parser import text_string_to_metric_families


def sample_total(text, name, **labels):
    """Sum of the samples called `name` whose labels include `labels`; None if there is no such sample."""
    values = [s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == name and labels.items() <= s.labels.items()]
    return sum(values) if values else None
