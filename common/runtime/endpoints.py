"""Where the configured PostgreSQL and RabbitMQ servers are, and why one could not be reached, in words.

Standard library only: `scripts/preflight.py` uses it before the virtualenv exists. A libpq DSN may be a URI
(`postgresql://u:p@h1:5432,h2:5433/orders`) or `key=value` pairs; RABBITMQ_URL may list several nodes."""
import os
import re
import ssl
from urllib.parse import SplitResult, unquote, urlsplit

from common.broker.urls import node_urls

PG_DEFAULT_PORT = 5432
AMQP_DEFAULT_PORT = 5672
AMQPS_DEFAULT_PORT = 5671


def amqp_port(parts: SplitResult) -> int:
    """The port of a split AMQP URL: its own, else the scheme's (amqps: 5671, as aiormq)."""
    return parts.port or (AMQPS_DEFAULT_PORT if parts.scheme == "amqps" else AMQP_DEFAULT_PORT)


def postgres_hosts(dsn: str) -> tuple[list[tuple[str, int]], str]:
    """[(host, port)] of a libpq DSN, and its database name: ([('127.0.0.1', 5432)], 'orders')."""
    if "://" in dsn:
        netloc, _, rest = dsn.split("://", 1)[1].partition("/")
        netloc = netloc.rpartition("@")[2]
        dbname = unquote(rest.split("?", 1)[0])
        hosts = [split_host_port(part, PG_DEFAULT_PORT) for part in netloc.split(",")]
    else:
        params = dict(re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn))
        params = {k: v.strip("'") for k, v in params.items()}
        names = params.get("host", "localhost").split(",")
        ports = params.get("port", str(PG_DEFAULT_PORT)).split(",")
        ports = ports * len(names) if len(ports) == 1 else ports
        hosts = [(name or "localhost", int(port)) for name, port in zip(names, ports)]
        dbname = params.get("dbname", "")
    return hosts, dbname


def amqp_hosts(urls: str) -> list[tuple[str, int]]:
    """[(host, port)] of RABBITMQ_URL: one URL or several, comma-separated."""
    hosts: list[tuple[str, int]] = []
    for url in node_urls(urls):
        parts = urlsplit(url)
        hosts.append((parts.hostname or "localhost", amqp_port(parts)))
    return hosts


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if not text.endswith("]") and ":" in text else (text, "", "")
    return (host.strip("[]") or "localhost", int(port) if port else default_port)


def describe_postgres(dsn: str) -> str:
    """`PostgreSQL at 127.0.0.1:5432 (orders)`."""
    hosts, dbname = postgres_hosts(dsn)
    return f"PostgreSQL at {', '.join(f'{h}:{p}' for h, p in hosts)}" + (f" ({dbname})" if dbname else "")


def describe_rabbitmq(url: str) -> str:
    """`RabbitMQ at 127.0.0.1:5672` (the credentials stay out of logs)."""
    return f"RabbitMQ at {', '.join(f'{h}:{p}' for h, p in amqp_hosts(url))}"


def reason(exc: BaseException | None) -> str:
    """Why a connection failed, short: `connection refused`, `timed out`, `password authentication failed ...`."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):  # an OSError whose errno (1) is not what went wrong
            return f"TLS: {getattr(cause, 'reason', None) or cause}"
        # An OSError, or aiormq's AMQPConnectionError(errno, message) made from one. The errno's own words:
        # asyncio puts "Connect call failed ('127.0.0.1', 5672)" where strerror usually is.
        args = cause.args
        if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
            return (os.strerror(args[0]) if args[0] > 0 else args[1]).lower()
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip()
    if not text:
        return "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
    # libpq: 'connection to server at "127.0.0.1", port 5499 failed: Connection refused\n\tIs the server ...'
    failed = re.search(r"failed: (.+)", text)
    line = (failed.group(1) if failed else text.splitlines()[0]).strip()
    first_word = line.split(" ", 1)[0]
    return line if first_word.isupper() else line[:1].lower() + line[1:]
