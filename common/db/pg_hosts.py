"""Multi-host DSNs for aiopg: find which of the servers is the primary, and hand aiopg that one alone.

`ORDER_DB_DSN` / `PAYMENT_DB_DSN` may name several hosts in libpq's form
(`postgresql://u@h1:5432,h2:5432/orders?target_session_attrs=read-write`, or `host=h1,h2 port=5432,5432`).
psycopg2 opens such a DSN, aiopg 1.4 does not (its asynchronous connect watches the first host's socket only),
so the hosts are tried here one after the other and the first that is not in recovery (nor read-only) is kept.
The services write on every path, so the primary is chosen whatever `target_session_attrs` says.

TLS settings (`sslmode=verify-full&sslrootcert=/ca.crt`, or any other libpq connection parameter) stay in every
single-host DSN made here, the probe of the `postgres` database's included, so each host is verified as libpq
would verify it in a multi-host connection: against the same CA, under its own host name.

Errors: `NoPrimary` (a `psycopg2.OperationalError`, so the retry policies for a lost server cover it) when no
host answers as a primary; `WrongHost` (also one) when a connection turns out to be on a standby. `tls_refusal`
tells a failed TLS set-up (a wrong CA, a certificate for another name, a server without TLS where the DSN
requires it), which no retry can mend, from a server that is away."""
import asyncio
import logging
import os
import re
from collections.abc import Iterable

import aiopg
import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

from common.runtime.config import ConfigurationError, DbTimeouts
from common.runtime.retry import DB_ERRORS

logger = logging.getLogger(__name__)

# Seconds to wait for one host's answer before trying the next: a host that is down on a real network can
# leave a connection attempt hanging instead of refusing it.
PROBE_TIMEOUT = 3.0


class NoPrimary(psycopg2.OperationalError):
    """None of the DSN's hosts is a writable primary right now (all down, or all standbys during a failover).
    `tls` lists the hosts whose TLS set-up failed, as `host:port: libpq's reason`."""

    def __init__(self, message: str, tls: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.tls = list(tls)


class TlsRefused(ConfigurationError):
    """TLS to PostgreSQL cannot work with this DSN (a wrong CA, a certificate for another host name, a missing
    root certificate file, a server without TLS where `sslmode` requires it): a setting must change, so the
    service says so and does not start, rather than wait for ever."""


# libpq's words (libpq 17, psycopg2-binary 2.9.13) for a TLS failure that only a change of configuration mends.
# "SSL SYSCALL error" and "unexpected eof" are not among them: a server going away mid-handshake says those.
TLS_FAILURES = (
    "certificate verify failed",                        # sslrootcert is not the CA that signed the server's
    "does not match host name",                         # verify-full: the certificate names other hosts
    "root certificate file",                            # sslrootcert missing or unreadable
    "does not support SSL, but SSL was required",       # sslmode require/verify-*: the server has ssl = off
    "certificate file", "private key file",             # a client certificate (sslcert/sslkey) unreadable
    "sslmode",                                          # an invalid or weak sslmode (e.g. require with system roots)
)


def tls_refusal(exc: BaseException) -> str | None:
    """libpq's reason if `exc` (a connection error) is a TLS failure of the `TLS_FAILURES` kinds, else None."""
    if isinstance(exc, NoPrimary):
        return "; ".join(exc.tls) or None
    if not isinstance(exc, psycopg2.OperationalError):
        return None
    text = str(exc).strip()
    if not any(failure in text for failure in TLS_FAILURES):
        return None
    # 'connection to server at "localhost" (127.0.0.1), port 5432 failed: SSL error: certificate verify failed'
    return " ".join(text.split(" failed: ", 1)[-1].split())


def tls_settings(dsn: str) -> str:
    """`sslmode=..., sslrootcert=...` of a DSN as libpq reads them (the environment's PGSSLMODE too), for messages."""
    params = parse_dsn(dsn)
    shown = []
    for key, variable in (("sslmode", "PGSSLMODE"), ("sslrootcert", "PGSSLROOTCERT")):
        value = params.get(key) or os.environ.get(variable)
        if value:
            shown.append(f"{key}={value}")
    return ", ".join(shown) or "sslmode=prefer (libpq's default)"


def refuse_on_tls_failure(exc: BaseException, dsn: str, server: str) -> None:
    """Raise `TlsRefused` (naming `server`, what failed and the DSN's TLS settings) if `exc` is a TLS failure."""
    why = tls_refusal(exc)
    if why is not None:
        raise TlsRefused(f"{server}: TLS failed: {why} ({tls_settings(dsn)}); not retrying, the TLS settings "
                         "or the server's certificate must change") from exc


# libpq parameters an operator may also set through the environment (libpq's own variables), which then win.
LIBPQ_ENVIRONMENT = {"connect_timeout": "PGCONNECT_TIMEOUT", "options": "PGOPTIONS"}


def with_timeouts(dsn: str, timeouts: DbTimeouts) -> str:
    """`dsn` (either libpq form, one host or several) with each of `timeouts`' libpq parameters it does not set
    (keepalives, tcp_user_timeout, connect_timeout), and its server settings (idle_in_transaction_session_timeout,
    lock_timeout) added to libpq's `options` unless that already sets them: every session then carries them
    from its start, at no round trip. What the DSN (or libpq's environment variable) says is kept.

    Raises `psycopg2.ProgrammingError` for a DSN libpq cannot parse."""
    params = parse_dsn(dsn)
    given = {key: params.get(key) or os.environ.get(LIBPQ_ENVIRONMENT.get(key, ""), "") for key in
             (*timeouts.libpq(), "options")}
    added = {key: value for key, value in timeouts.libpq().items() if not given[key]}
    options = given["options"]
    missing = [f"-c {name}={value}" for name, value in timeouts.server().items() if not sets_option(options, name)]
    if missing:
        added["options"] = " ".join([options, *missing]).strip()
    return make_dsn(dsn, **added) if added else dsn


def sets_option(options: str, name: str) -> bool:
    """Whether libpq `options` (`-c name=value`, `-cname=value` or `--name=value`) set server setting `name`."""
    spelled = "[-_]".join(re.escape(word) for word in name.split("_"))  # the server reads - as _
    return re.search(rf"(?:-c\s*|--){spelled}\s*=", options) is not None


class WrongHost(psycopg2.OperationalError):
    """A connection reached a standby: the primary has moved."""


def single_host_dsns(dsn: str) -> list[str]:
    """The DSN once per host it names, in its order, each for that host alone; `[dsn]` unchanged for one host.

    Raises `ValueError` when the host and port lists cannot be paired (libpq's rule: one port for all hosts,
    or one per host) and `psycopg2.ProgrammingError` for a DSN libpq cannot parse."""
    params = parse_dsn(dsn)
    hosts = params.get("host", "").split(",")
    if len(hosts) < 2:
        return [dsn]
    if params.get("hostaddr"):
        raise ValueError("a DSN with several hosts must name them with host=, not hostaddr=")
    ports = params.pop("port", "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        raise ValueError(f"the DSN names {len(hosts)} hosts but {len(ports)} ports")
    params.pop("target_session_attrs", None)
    return [make_dsn(**{**params, "host": host, **({"port": port} if port else {})})
            for host, port in zip(hosts, ports)]


def describe(dsn: str | None) -> str:
    """`host:port` of a single-host DSN, for log lines (never the password)."""
    params = parse_dsn(dsn or "")
    return f"{params.get('host', 'localhost')}:{params.get('port', '5432')}"


# Whether a server refuses writes (`read_only`), as an SQL expression.
REFUSES_WRITES = "pg_is_in_recovery() OR current_setting('transaction_read_only')::bool"


async def read_only(conn: aiopg.Connection) -> bool:
    """Whether the server refuses writes: a standby (in recovery), or a server set read-only. pg_auto_failover
    sets `default_transaction_read_only` on the standby it is about to promote and clears it a few seconds after
    the promotion (seen in chaos runs: out of recovery, yet refusing every write for ~6 s). libpq's
    `target_session_attrs=read-write` asks the same `transaction_read_only`."""
    async with conn.cursor() as cur:
        await cur.execute(f"SELECT {REFUSES_WRITES}")
        row = await cur.fetchone()
        return bool(row[0])


async def writing_timeline(dsn: str, timeout: float = PROBE_TIMEOUT) -> int | None:
    """The timeline the server of single-host `dsn` writes on, or None if it refuses writes (`read_only`). Asks
    its `postgres` database, which exists before the services have created theirs. Raises the connection error if
    the server cannot be reached."""
    probe = make_dsn(dsn, dbname="postgres")
    async with aiopg.connect(probe, timeout=timeout, enable_hstore=False) as conn, conn.cursor() as cur:
        # The name of the WAL file being written begins with its timeline, 8 hex digits (in recovery there is none).
        await cur.execute(f"SELECT CASE WHEN {REFUSES_WRITES} THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END")
        row = await cur.fetchone()
        return None if row[0] is None else int(row[0][:8], 16)


async def find_primary(dsns: Iterable[str], timeout: float = PROBE_TIMEOUT) -> str:
    """The one of the single-host `dsns` whose server is the primary: of those that accept writes, the one on the
    highest timeline, the first in the list among equals. All are asked at once.

    Fencing: after a failover the old primary, cut off, accepts writes until it demotes itself (seconds, by the
    rule in docs/partitions.md), on the timeline the promotion left behind; the promoted standby writes on the
    next one. Whatever the order of the hosts, the services go to the new primary as soon as they can reach it.
    Raises `NoPrimary` saying what each host answered."""
    dsns = list(dsns)
    answers = await asyncio.gather(*(writing_timeline(dsn, timeout) for dsn in dsns), return_exceptions=True)
    said: list[str] = []
    tls: list[str] = []
    writable: list[tuple[int, str]] = []
    for dsn, answer in zip(dsns, answers):
        if isinstance(answer, DB_ERRORS):
            why = tls_refusal(answer)
            if why is not None:
                tls.append(f"{describe(dsn)}: {why}")
            said.append(f"{describe(dsn)} " + (f"TLS failed ({why})" if why is not None else
                                               f"unreachable ({str(answer).strip() or type(answer).__name__})"))
        elif isinstance(answer, BaseException):
            raise answer
        elif answer is None:
            said.append(f"{describe(dsn)} is a standby")
        else:
            writable.append((answer, dsn))
    if not writable:
        raise NoPrimary("no primary among the database hosts: " + "; ".join(said), tls)
    _, dsn = max(writable, key=lambda found: found[0])  # max keeps the first of equals
    if len(writable) > 1:
        logger.warning("several database hosts accept writes (%s): using %s, on the highest timeline",
                       ", ".join(f"{describe(other)} on timeline {line}" for line, other in writable), describe(dsn))
    if tls:
        logger.warning("database host TLS failed, another host used: %s", "; ".join(tls))
    return dsn


class Hosts:
    """The servers of one DSN, and which of them to use now.

    With one host, `primary()` is the DSN itself without a round trip: a single server behaves exactly as it
    did before multi-host DSNs existed (the pool reconnects to it by itself after a restart)."""

    def __init__(self, dsn: str) -> None:
        self.candidates = single_host_dsns(dsn)

    @property
    def several(self) -> bool:
        return len(self.candidates) > 1

    async def primary(self) -> str:
        """A single-host DSN for the current primary. Raises `NoPrimary`."""
        if not self.several:
            return self.candidates[0]
        dsn = await find_primary(self.candidates)
        logger.debug("database primary is %s", describe(dsn))
        return dsn


async def refuse_standby(conn: aiopg.Connection) -> None:
    """aiopg `on_connect` hook for a pool on one host of several: a new connection that lands on a standby
    (the primary it was opened for was demoted and came back as a standby) raises `WrongHost` rather than
    serve stale reads and fail writes. Closes that connection itself: aiopg would leak it."""
    if await read_only(conn):
        await conn.close()
        raise WrongHost("the database host is now a standby")
