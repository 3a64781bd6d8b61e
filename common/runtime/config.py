"""Settings read once from the environment, with defaults from the repo's `.env`."""
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

ENV_FILE = Path(__file__).resolve().parents[2] / ".env"
DEFAULT_MAX_BODY_BYTES = 65536
QUEUE_TYPES = ("classic", "quorum")
AUTH_MODES = ("jwt", "off")


class ConfigurationError(Exception):
    """A setting is invalid, or contradicts what already exists (e.g. a queue of the other type): the service
    says so and exits instead of starting."""


def read_env_file(path=ENV_FILE):
    """Parse `KEY=value` lines of a dotenv file; comments and blank lines are skipped."""
    values = {}
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
    order_svc_urls: tuple
    payment_svc_urls: tuple
    order_svc_admin_urls: tuple  # where the gateway asks the services' /ready
    payment_svc_admin_urls: tuple
    order_db_dsn: str
    payment_db_dsn: str
    rabbitmq_url: str
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
    gateway_proxy: str
    db_pool_size: int
    max_body_bytes: int
    inbox_retention_days: float
    idempotency_key_hours: float
    cleanup_interval: float
    log_format: str
    log_level: str
    event_loop: str
    auth: AuthSettings
    otel: tuple  # ((name, value), ...) of the OTEL_* variables, for OpenTelemetry's SDK (common.observability.tracing)


def load_settings(environ=None):
    """Build `Settings` from `environ` (default `os.environ`) over the `.env` defaults."""
    env = {**read_env_file(), **(os.environ if environ is None else environ)}

    def urls(key, default=None):
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
        gateway_port=int(env["GATEWAY_PORT"]),
        order_svc_port=int(env["ORDER_SVC_PORT"]),
        payment_svc_port=int(env["PAYMENT_SVC_PORT"]),
        listen_address=env.get("LISTEN_ADDRESS", "127.0.0.1"),
        gateway_listen_address=env.get("GATEWAY_LISTEN_ADDRESS", "127.0.0.1"),
        admin_listen_address=env.get("ADMIN_LISTEN_ADDRESS", "127.0.0.1"),
        gateway_admin_port=int(env.get("GATEWAY_ADMIN_PORT", "9080")),
        order_svc_admin_port=int(env.get("ORDER_SVC_ADMIN_PORT", "9081")),
        payment_svc_admin_port=int(env.get("PAYMENT_SVC_ADMIN_PORT", "9082")),
        order_svc_urls=urls("ORDER_SVC_URL"),
        payment_svc_urls=urls("PAYMENT_SVC_URL"),
        order_svc_admin_urls=urls("ORDER_SVC_ADMIN_URL", "http://localhost:9081"),
        payment_svc_admin_urls=urls("PAYMENT_SVC_ADMIN_URL", "http://localhost:9082"),
        order_db_dsn=env["ORDER_DB_DSN"],
        payment_db_dsn=env["PAYMENT_DB_DSN"],
        rabbitmq_url=env["RABBITMQ_URL"],
        order_svc_broker_user=env.get("ORDER_SVC_BROKER_USER") or broker_user(env["RABBITMQ_URL"]),
        payment_svc_broker_user=env.get("PAYMENT_SVC_BROKER_USER") or broker_user(env["RABBITMQ_URL"]),
        broker_operator_user=env.get("BROKER_OPERATOR_USER", ""),
        queue_type=queue_type(env.get("QUEUE_TYPE", "quorum")),
        poll_interval=float(env.get("POLL_INTERVAL", "1.0")),
        fast_path=env.get("FAST_PATH", "1") not in ("0", "false", "no", ""),
        resend_delay=float(env.get("RESEND_DELAY", "5")),
        resend_delay_max=float(env.get("RESEND_DELAY_MAX", "60")),
        batch_size=int(env.get("BATCH_SIZE", "200")),
        prefetch=int(env.get("PREFETCH", "256")),
        entries_per_message=positive(env, "ENTRIES_PER_MESSAGE", "20"),
        upstream_timeout=float(env.get("UPSTREAM_TIMEOUT", "10")),
        backend_pool_size=int(env.get("BACKEND_POOL_SIZE", "64")),
        wait_pool_size=positive(env, "WAIT_POOL_SIZE", "1000"),
        max_waiting=int(env.get("MAX_WAITING", "2000")),
        max_waiting_per_user=int(env.get("MAX_WAITING_PER_USER", "20")),
        client_idle_timeout=float(env.get("CLIENT_IDLE_TIMEOUT", "20")),
        client_body_timeout=float(env.get("CLIENT_BODY_TIMEOUT", "10")),
        max_connections=int(env.get("MAX_CONNECTIONS", "4000")),
        trusted_proxy=env.get("TRUSTED_PROXY", "0") not in ("0", "false", "no", ""),
        gateway_proxy=env.get("GATEWAY_PROXY", "direct"),
        db_pool_size=int(env.get("DB_POOL_SIZE", "10")),
        max_body_bytes=int(env.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
        inbox_retention_days=float(env.get("INBOX_RETENTION_DAYS", "7")),
        idempotency_key_hours=float(env.get("IDEMPOTENCY_KEY_HOURS", "24")),
        cleanup_interval=float(env.get("CLEANUP_INTERVAL", "3600")),
        log_format=env.get("LOG_FORMAT", "text"),
        log_level=env.get("LOG_LEVEL", "INFO"),
        event_loop=env.get("EVENT_LOOP", "uvloop"),
        auth=load_auth_settings(env),
        otel=tuple(sorted((key, value) for key, value in env.items() if key.startswith("OTEL_"))),
    )


def broker_user(rabbitmq_url: str) -> str:
    """The user a `RABBITMQ_URL` logs in as (its first node's; aiormq's default, guest, when it names none)."""
    # The standard library only: scripts/preflight.py imports this module before any package is installed.
    return unquote(urlsplit(rabbitmq_url.split(",")[0].strip()).username or "") or "guest"


def positive(env, key, default):
    value = env.get(key, default)
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"{key} must be a positive integer, not {value!r}")
    return int(value)


def queue_type(value):
    if value not in QUEUE_TYPES:
        raise ConfigurationError(f"QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}, not {value!r}")
    return value
