"""RabbitMQ URL defaults the services apply themselves, whatever `RABBITMQ_URL` an operator writes.

Standard library only: the settings are checked (scripts/preflight.py) before any package is installed."""
from urllib.parse import parse_qsl, urlsplit, urlunsplit


def node_urls(rabbitmq_url: str) -> list[str]:
    """The node URLs of a `RABBITMQ_URL` setting, in order: one URL, or several comma-separated full URLs (the
    one place that splits it)."""
    return [url.strip() for url in rabbitmq_url.split(",") if url.strip()]


def with_heartbeat(urls: str, seconds: int) -> str:
    """`urls` (one node URL, or several comma-separated) with `?heartbeat=<seconds>` on each that names none; a
    node's own `heartbeat` is kept. Without one aiormq asks for 60 s, and a node that went silent (frozen, cut
    off, without power) is noticed only after three minutes (`RABBITMQ_HEARTBEAT` in .env).

    Raises `ValueError` for `seconds` below 1 (0 turns heartbeats off) and for a node's `heartbeat` that is not
    a whole number."""
    if seconds < 1:
        raise ValueError(f"a heartbeat of {seconds} s: at least 1 s, or a silent node goes unnoticed")
    return ",".join(_node_with_heartbeat(url, seconds) for url in node_urls(urls))


def _node_with_heartbeat(url: str, seconds: int) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = [value for key, value in query if key == "heartbeat"]
    if given:
        if not all(value.isdigit() for value in given):
            raise ValueError(f"heartbeat={given[0]!r} in a RABBITMQ_URL entry for {parts.hostname}: "
                             "a whole number of seconds")
        return url
    # Appended to the query as written: the node's other parameters (TLS files, ...) reach aiormq unchanged.
    return urlunsplit(parts._replace(query="&".join(filter(None, [parts.query, f"heartbeat={seconds}"]))))
