"""Settings read once from the environment, with defaults from the repo's `.env`."""
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from common.broker.urls import node_urls

ENV_FILE = Path(__file__).resolve().parents[2] / ".env"
DEFAULT_MAX_BODY_BYTES = 65536
QUEUE_TYPES = ("classic", "quorum")
AUTH_MODES = ("jwt", "off")


class ConfigurationError(Exception):
    """A setting is invalid, or contradicts what already exists (e.g. a queue of the other type): the service
    says so and exits instead of starting."""


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """Parse `KEY=value` lines of a dotenv file; comments and blank lines are skipped."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


@dataclass(frozen=True)
class AuthSettings:
    mode: str
    issuer: str | None = None
    jwks_url: str | None = None
    audience: str | None = None
    user_claim: str = "shop_user_id"


def load_auth_settings(env: Mapping[str, str]) -> AuthSettings:
    """`AuthSettings` from `env`; raises `ConfigurationError` naming what is missing or unknown."""
    mode = env.get("AUTH_MODE", "")
    if mode not in AUTH_MODES:
        raise ConfigurationError(f"AUTH_MODE must be jwt (bearer tokens required) or off (an open API), "
                                 f"not {mode!r}: there is no default")
    if mode == "off":
        return AuthSettings(mode)
    missing = [key for key in ("AUTH_ISSUER", "AUTH_AUDIENCE") if not env.get(key)]
    if missing:
        raise ConfigurationError(f"AUTH_MODE=jwt needs {' and '.join(missing)}")
    return AuthSettings(mode, env["AUTH_ISSUER"], env.get("AUTH_JWKS_URL") or None, env["AUTH_AUDIENCE"],
                        env.get("AUTH_USER_CLAIM") or "shop_user_id")


@dataclass(frozen=True)
class DbTimeouts:
    """How long a service waits on PostgreSQL before it calls a server silent (.env's DB_* settings, each with its
    reason; docs/partitions.md). A machine that loses power or is cut off sends no reset: only these notice it.
    Seconds, but `tcp_user_timeout` in milliseconds as libpq takes it."""
    connect: int = 3                     # libpq connect_timeout, per host
    keepalives_idle: int = 5             # libpq keepalives_idle ...
    keepalives_interval: int = 2         # ... keepalives_interval ...
    keepalives_count: int = 3            # ... keepalives_count: an idle connection to a silent host ends after 11 s
    tcp_user_timeout: int = 10_000       # libpq tcp_user_timeout: data unacknowledged this long ends the connection
    statement: float = 5.0               # aiopg's bound on every statement but COMMIT (and on a connect)
    commit: float = 15.0                 # aiopg's bound on a COMMIT, which is closed, never cancelled, past it
    idle_in_transaction: float = 10.0    # the server's idle_in_transaction_session_timeout
    lock: float = 3.0                    # the server's lock_timeout

    def libpq(self) -> dict[str, str]:
        """The libpq connection parameters, as a DSN writes them."""
        return {"keepalives": "1", "keepalives_idle": str(self.keepalives_idle),
                "keepalives_interval": str(self.keepalives_interval), "keepalives_count": str(self.keepalives_count),
                "tcp_user_timeout": str(self.tcp_user_timeout), "connect_timeout": str(self.connect)}

    def server(self) -> dict[str, int]:
        """The server settings each session gets, in milliseconds."""
        return {"idle_in_transaction_session_timeout": round(self.idle_in_transaction * 1000),
                "lock_timeout": round(self.lock * 1000)}


# .env key -> (DbTimeouts field, type, smallest value allowed).
DB_TIMEOUT_SETTINGS = {
    "DB_CONNECT_TIMEOUT": ("connect", int, 2),  # libpq takes a smaller value as 2
    "DB_KEEPALIVES_IDLE": ("keepalives_idle", int, 1),
    "DB_KEEPALIVES_INTERVAL": ("keepalives_interval", int, 1),
    "DB_KEEPALIVES_COUNT": ("keepalives_count", int, 1),
    "DB_TCP_USER_TIMEOUT_MS": ("tcp_user_timeout", int, 1),
    "DB_STATEMENT_TIMEOUT": ("statement", float, 0.1),
    "DB_COMMIT_TIMEOUT": ("commit", float, 0.1),
    "DB_IDLE_IN_TRANSACTION_TIMEOUT": ("idle_in_transaction", float, 0.001),
    "DB_LOCK_TIMEOUT": ("lock", float, 0.001),
}


def load_db_timeouts(env: Mapping[str, str]) -> DbTimeouts:
    """`DbTimeouts` from `env`'s DB_* settings (absent ones keep the defaults). Raises `ConfigurationError` naming a
    value that is not a number, or is too small, and a lock timeout not below the statement timeout (the server's
    clear error must come before aiopg closes the connection)."""
    values = {}
    for key, (field, kind, least) in DB_TIMEOUT_SETTINGS.items():
        if env.get(key, "") == "":
            continue
        values[field] = number(env, key, env[key], kind, least)
    timeouts = DbTimeouts(**values)
    if timeouts.lock >= timeouts.statement:
        raise ConfigurationError(f"DB_LOCK_TIMEOUT ({timeouts.lock}) must be below DB_STATEMENT_TIMEOUT "
                                 f"({timeouts.statement}): a lock wait would end with a closed connection, not "
                                 "PostgreSQL's lock timeout error")
    return timeouts


def rabbitmq_heartbeat(env: Mapping[str, str]) -> int:
    """RABBITMQ_HEARTBEAT (seconds, at least 1). Raises `ConfigurationError`."""
    value = env.get("RABBITMQ_HEARTBEAT", "3")
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"RABBITMQ_HEARTBEAT must be a whole number of seconds of at least 1, not {value!r}"
                                 " (0 would turn heartbeats off: a silent node would go unnoticed for minutes)")
    return int(value)


@dataclass(frozen=True)
class Settings:
    gateway_port: int
    order_svc_port: int
    payment_svc_port: int
    listen_address: str  # the Order and Payments services' public ports
    gateway_listen_address: str
    admin_listen_address: str  # every process's admin port: /health, /ready, /metrics
    gateway_admin_port: int
    order_svc_admin_port: int
    payment_svc_admin_port: int
    order_svc_urls: tuple[str, ...]
    payment_svc_urls: tuple[str, ...]
    order_svc_admin_urls: tuple[str, ...]  # where the gateway asks the services' /ready
    payment_svc_admin_urls: tuple[str, ...]
    order_db_dsn: str
    payment_db_dsn: str
    rabbitmq_url: str
    rabbitmq_heartbeat: int  # seconds, for a node URL that names none (common.broker.urls.with_heartbeat)
    consumer_step_aside_after: float  # seconds without the database before a consumer steps aside (0: never)
    db_timeouts: DbTimeouts  # for every DSN (common.db.pg_hosts.with_timeouts) and every statement
    # The RabbitMQ users whose messages the consumers take (their `user_id`, which the broker vouches for):
    # payment requests from `order_svc_broker_user`, results from `payment_svc_broker_user`, and either from
    # `broker_operator_user` ("" = none), the user operators replay dead letters as.
    order_svc_broker_user: str
    payment_svc_broker_user: str
    broker_operator_user: str
    queue_type: str
    poll_interval: float
    fast_path: bool
    resend_delay: float
    resend_delay_max: float
    batch_size: int
    prefetch: int
    entries_per_message: int
    upstream_timeout: float
    backend_pool_size: int
    wait_pool_size: int  # the gateway's connections to each service for waiting requests, apart from the above
    max_waiting: int  # Order Service: requests held for an order's outcome at once (0: none)
    max_waiting_per_user: int  # ... and per caller
    client_idle_timeout: float
    client_body_timeout: float
    max_connections: int
    trusted_proxy: bool
    db_pool_size: int
    max_body_bytes: int
    inbox_retention_days: float
    idempotency_key_hours: float
    cleanup_interval: float
    log_format: str
    log_level: str
    event_loop: str
    auth: AuthSettings
    # ((name, value), ...) of the OTEL_* variables, for OpenTelemetry's SDK (common.observability.tracing)
    otel: tuple[tuple[str, str], ...]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `environ` (default `os.environ`) over the `.env` defaults."""
    env = {**read_env_file(), **(os.environ if environ is None else environ)}
    if "GATEWAY_PROXY" in env:
        # A deployment that still sets it expects a choice the gateway does not offer: say so, rather than ignore it.
        raise ConfigurationError("GATEWAY_PROXY is not a setting: the gateway has a single proxy path "
                                 "(proxy/server.py); remove GATEWAY_PROXY from the environment and .env")

    def urls(key: str, default: str | None = None) -> tuple[str, ...]:
        listed = tuple(u.strip().rstrip("/") for u in env.get(key, default or "").split(",") if u.strip())
        if not listed:
            raise ConfigurationError(f"{key} names no URL")
        for url in listed:
            if not url.startswith("http://"):
                # The gateway's own HTTP/1.1 client speaks plaintext only: an https:// backend would be sent
                # plaintext or fail at the first request. Inside one cluster or host, TLS ends at the gateway.
                raise ConfigurationError(f"{key}: {url!r} is not an http:// URL (https:// backends are not supported: "
                                         "terminate TLS in front of the gateway)")
        return listed

    return Settings(
        gateway_port=number(env, "GATEWAY_PORT", "", int, 0),
        order_svc_port=number(env, "ORDER_SVC_PORT", "", int, 0),
        payment_svc_port=number(env, "PAYMENT_SVC_PORT", "", int, 0),
        listen_address=env.get("LISTEN_ADDRESS", "127.0.0.1"),
        gateway_listen_address=env.get("GATEWAY_LISTEN_ADDRESS", "127.0.0.1"),
        admin_listen_address=env.get("ADMIN_LISTEN_ADDRESS", "127.0.0.1"),
        gateway_admin_port=number(env, "GATEWAY_ADMIN_PORT", "9080", int, 0),
        order_svc_admin_port=number(env, "ORDER_SVC_ADMIN_PORT", "9081", int, 0),
        payment_svc_admin_port=number(env, "PAYMENT_SVC_ADMIN_PORT", "9082", int, 0),
        order_svc_urls=urls("ORDER_SVC_URL"),
        payment_svc_urls=urls("PAYMENT_SVC_URL"),
        order_svc_admin_urls=urls("ORDER_SVC_ADMIN_URL", "http://localhost:9081"),
        payment_svc_admin_urls=urls("PAYMENT_SVC_ADMIN_URL", "http://localhost:9082"),
        order_db_dsn=env["ORDER_DB_DSN"],
        payment_db_dsn=env["PAYMENT_DB_DSN"],
        rabbitmq_url=env["RABBITMQ_URL"],
        rabbitmq_heartbeat=rabbitmq_heartbeat(env),
        consumer_step_aside_after=number(env, "CONSUMER_STEP_ASIDE_AFTER", "30", float, 0),
        db_timeouts=load_db_timeouts(env),
        order_svc_broker_user=env.get("ORDER_SVC_BROKER_USER") or broker_user(env["RABBITMQ_URL"]),
        payment_svc_broker_user=env.get("PAYMENT_SVC_BROKER_USER") or broker_user(env["RABBITMQ_URL"]),
        broker_operator_user=env.get("BROKER_OPERATOR_USER", ""),
        queue_type=choice(env, "QUEUE_TYPE", "quorum", QUEUE_TYPES),
        poll_interval=number(env, "POLL_INTERVAL", "1.0", float, 0),
        fast_path=flag(env, "FAST_PATH", "1"),
        resend_delay=number(env, "RESEND_DELAY", "5", float, 0),
        resend_delay_max=number(env, "RESEND_DELAY_MAX", "60", float, 0),
        batch_size=number(env, "BATCH_SIZE", "200", int, 1),
        prefetch=number(env, "PREFETCH", "256", int, 1),
        entries_per_message=number(env, "ENTRIES_PER_MESSAGE", "20", int, 1),
        upstream_timeout=number(env, "UPSTREAM_TIMEOUT", "10", float, 0),
        backend_pool_size=number(env, "BACKEND_POOL_SIZE", "64", int, 1),
        wait_pool_size=number(env, "WAIT_POOL_SIZE", "1000", int, 1),
        max_waiting=number(env, "MAX_WAITING", "2000", int, 1),
        max_waiting_per_user=number(env, "MAX_WAITING_PER_USER", "20", int, 1),
        client_idle_timeout=number(env, "CLIENT_IDLE_TIMEOUT", "20", float, 0),
        client_body_timeout=number(env, "CLIENT_BODY_TIMEOUT", "10", float, 0),
        max_connections=number(env, "MAX_CONNECTIONS", "4000", int, 1),
        trusted_proxy=flag(env, "TRUSTED_PROXY", "0"),
        db_pool_size=number(env, "DB_POOL_SIZE", "10", int, 1),
        max_body_bytes=number(env, "MAX_BODY_BYTES", str(DEFAULT_MAX_BODY_BYTES), int, 1),
        inbox_retention_days=number(env, "INBOX_RETENTION_DAYS", "7", float, 0),
        idempotency_key_hours=number(env, "IDEMPOTENCY_KEY_HOURS", "24", float, 0),
        cleanup_interval=number(env, "CLEANUP_INTERVAL", "3600", float, 0),
        log_format=choice(env, "LOG_FORMAT", "text", LOG_FORMATS),
        log_level=choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS, str.upper),
        event_loop=choice(env, "EVENT_LOOP", "uvloop", EVENT_LOOPS),
        auth=load_auth_settings(env),
        otel=tuple(sorted((key, value) for key, value in env.items() if key.startswith("OTEL_"))),
    )


def broker_user(rabbitmq_url: str) -> str:
    """The user a `RABBITMQ_URL` logs in as (its first node's; aiormq's default, guest, when it names none)."""
    # The standard library only: scripts/preflight.py imports this module before any package is installed.
    nodes = node_urls(rabbitmq_url)
    return (unquote(urlsplit(nodes[0]).username or "") if nodes else "") or "guest"


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EVENT_LOOPS = ("uvloop", "asyncio")
FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def number(env: Mapping[str, str], key: str, default: str, kind: type[int] | type[float], least: float) -> Any:
    """`key`'s value (or `default`) as `kind`, at least `least`. Raises `ConfigurationError` naming the setting: a
    typo must stop the start, not surface as a traceback or as a value the operator did not mean."""
    value = env.get(key, default)
    try:
        if kind is int and not value.isdigit():  # int() would also take " 5", "+5" and "1_000"
            raise ValueError(value)
        parsed = kind(value)
    except ValueError:
        raise ConfigurationError(f"{key} must be {'a whole' if kind is int else 'a'} number, not {value!r}") from None
    if not parsed >= least:  # also refuses NaN
        raise ConfigurationError(f"{key} must be at least {least}, not {value!r}")
    return parsed


def choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...],
           normalize: Callable[[str], str] = str) -> str:
    """`key`'s value (or `default`), one of `choices`. Raises `ConfigurationError` naming the setting."""
    value = normalize(env.get(key, default))
    if value not in choices:
        raise ConfigurationError(f"{key} must be one of {', '.join(choices)}, not {env.get(key, default)!r}")
    return value


def flag(env: Mapping[str, str], key: str, default: str) -> bool:
    """`key` as on (1, true, yes, on) or off (0, false, no, off, empty). Raises `ConfigurationError` for anything
    else: `FAST_PATH=disabled` must not silently mean on."""
    value = env.get(key, default).strip().lower()
    if value == "":
        return False
    if value not in FLAGS:
        raise ConfigurationError(f"{key} must be one of 1, true, yes, on or 0, false, no, off; not {env[key]!r}")
    return FLAGS[value]
