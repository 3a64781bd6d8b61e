"""PostgreSQL access: database creation, pool, schema, and transactions that survive server restarts.

SQLAlchemy Core builds the statements (in each service's repo.py); aiopg runs them. `aiopg.sa` is not used:
it pins SQLAlchemy 1.4."""
import asyncio
import logging
import re
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiopg
import psycopg2
import psycopg2.errors
import sqlalchemy as sa
from psycopg2.extensions import make_dsn, parse_dsn
from sqlalchemy.dialects import postgresql

from common.db.pg_hosts import Hosts, WrongHost, describe, refuse_on_tls_failure, refuse_standby, with_timeouts
from common.domain.errors import Unavailable
from common.runtime.config import ConfigurationError, DbTimeouts
from common.runtime.endpoints import describe_postgres
from common.runtime.retry import DB_ERRORS, briefly, until_connected
from common.runtime.stopping import being_cancelled

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Cursor(Protocol):
    """What the statements use of a cursor: aiopg's, or `BeginWithFirst` around one."""

    @property
    def description(self) -> Sequence[Any] | None: ...
    @property
    def rowcount(self) -> int: ...
    @property
    def raw(self) -> Any: ...  # psycopg2's cursor
    async def execute(self, operation: str, parameters: Any = None) -> None: ...
    async def fetchall(self) -> list[Any]: ...


Row = dict[str, Any]
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.sql"
DIALECT = postgresql.psycopg2.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it unannotated


def schema_section(name: str, path: Path = SCHEMA_FILE) -> str:
    """The DDL between `-- [name]` and the next `-- [...]` marker of schema.sql."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("-- [") and line.rstrip().endswith("]"):
            current = line.strip()[4:-1]
            sections[current] = []
        elif current:
            sections[current].append(line)
    return "\n".join(sections[name])


class Query:
    """SQLAlchemy Core statements compiled once, when the repo module is imported, for psycopg2; several run in
    one round trip (psycopg2 sends them as one query and returns the last one's rows), and their parameters must
    not share names.

    Compiling costs about a millisecond of CPU, more than most of our statements take to run, so no
    statement is compiled per call: values are bound by name (`sa.bindparam`) when it runs, and batches
    travel as arrays (`= ANY(...)`, `unnest(...)`) so the SQL text is the same whatever their size.

    With `prepare_as`, a name, the statements are also prepared on the server, once per connection (`PREPARE`
    with the first call, then `EXECUTE`): PostgreSQL then neither parses nor plans them again, which for a
    statement of several data-modifying CTEs is most of its time (settling: 1.4 ms as text, 0.5 ms prepared, on
    this machine). For the statements of every order's path."""

    def __init__(self, *statements: sa.ClauseElement, prepare_as: str | None = None) -> None:
        compiled = [statement.compile(dialect=DIALECT) for statement in statements]
        self.sql = ";\n".join(map(str, compiled))
        self.defaults: dict[str, Any] = {}
        for each in compiled:
            shared = self.defaults.keys() & each.params.keys()
            assert not shared, f"statements of one query share parameters {sorted(shared)}"
            self.defaults.update(each.params)
        self.prepare_as = prepare_as
        self._forms: tuple[str, str, str] | None = None  # (sql, its PREPAREs, its EXECUTEs)

    def text_for(self, cur: "Cursor") -> str:
        """What to send on `cur`'s connection: the SQL, or the EXECUTEs, preceded by the PREPAREs the first time."""
        if self.prepare_as is None:
            return self.sql
        if self._forms is None or self._forms[0] != self.sql:  # (a test's broken variant may rewrite `sql`)
            self._forms = (self.sql, *prepared_forms(self.sql, f"{self.prepare_as}_{zlib.crc32(self.sql.encode())}"))
        _, prepare, execute = self._forms
        prepared = PREPARED.setdefault(cur.raw.connection, set())
        if prepare in prepared:
            return execute
        # Counted as prepared once sent: PREPARE is not undone by a ROLLBACK, and a connection that fails while
        # the query is under way is closed with its prepared statements.
        prepared.add(prepare)
        return f"{prepare};\n{execute}"


BOUND = re.compile(r"%\((\w+)\)s")  # a parameter bound by name, as psycopg2 takes it

# The prepared statements of each connection (psycopg2's), gone with it.
PREPARED: "weakref.WeakKeyDictionary[Any, set[str]]" = weakref.WeakKeyDictionary()


def prepared_forms(sql: str, name: str) -> tuple[str, str]:
    """(PREPAREs, EXECUTEs) of the statements of `sql`, named `name_1`, `name_2`, ...: each `%(param)s` becomes a
    positional parameter of its statement, and each EXECUTE passes the values by the same names."""
    prepares, executes = [], []
    for number, statement in enumerate(sql.split(";\n"), 1):
        params: list[str] = []

        def positional(match: "re.Match[str]", params: list[str] = params) -> str:
            if match[1] not in params:
                params.append(match[1])
            return f"${params.index(match[1]) + 1}"
        prepares.append(f"PREPARE {name}_{number} AS {BOUND.sub(positional, statement)}")
        arguments = ", ".join(f"%({param})s" for param in params)
        executes.append(f"EXECUTE {name}_{number}({arguments})" if params else f"EXECUTE {name}_{number}")
    return ";\n".join(prepares), ";\n".join(executes)


def ids(name: str) -> sa.BindParameter[Any]:
    """A bind parameter for a list of ids, sent as one BIGINT[] array."""
    return sa.bindparam(name, type_=postgresql.ARRAY(sa.BigInteger))


def texts(name: str) -> sa.Cast[Any]:
    """A bind parameter for a list of strings (or NULLs), sent as one TEXT[] array."""
    return sa.cast(sa.bindparam(name), postgresql.ARRAY(sa.Text))


def not_locked_elsewhere(key: sa.Column[Any], name: str) -> sa.ColumnElement[bool]:
    """The rows whose `key` is one of the ids `name` and that no other transaction holds (`FOR UPDATE SKIP
    LOCKED`). For an outbox's bookkeeping (a confirmed row deleted or counted, an unconfirmed one made due): it
    must never wait for a relay step that holds the row while it sends it (up to the publish timeout against a
    silent broker node, longer than `DB_LOCK_TIMEOUT`), nor fail the statement it rides on. A row skipped is
    dealt with by the step that holds it, or sent again (a duplicate the receiver recognises)."""
    return key.in_(sa.select(key).where(key == sa.any_(ids(name))).with_for_update(skip_locked=True))


async def execute(cur: Cursor, query: "Query | sa.ClauseElement", **values: Any) -> None:
    """Run a `Query` with `values` bound by name over its defaults, or a statement built on the spot (for cold
    paths such as clean-up and metrics, where compiling per call costs nothing that matters; lists in it are
    inlined). Raises `TypeError` for a value the `Query` has no parameter for (a typo would go unnoticed)."""
    if isinstance(query, Query):
        unknown = values.keys() - query.defaults.keys()
        if unknown:
            raise TypeError(f"unknown bind parameters {sorted(unknown)} for {query.sql!r}")
        await cur.execute(query.text_for(cur), {**query.defaults, **values})
    else:
        compiled = query.compile(dialect=DIALECT, compile_kwargs={"render_postcompile": True})
        await cur.execute(str(compiled), compiled.params)


async def fetch_all(cur: Cursor, query: "Query | sa.ClauseElement", **values: Any) -> list[Row]:
    """Rows of `query` as dicts."""
    await execute(cur, query, **values)
    columns = [c.name for c in cur.description or ()]  # (a query that returns rows always has one)
    return [dict(zip(columns, row)) for row in await cur.fetchall()]


async def fetch_one(cur: Cursor, query: "Query | sa.ClauseElement", **values: Any) -> Row | None:
    """The first row of `query` as a dict, or None."""
    rows = await fetch_all(cur, query, **values)
    return rows[0] if rows else None


def page(rows: list[Row], limit: int, key: str) -> tuple[list[Row], int | None]:
    """(the first `limit` of `rows`, the cursor of the next page or None): `rows` is a query's `limit + 1` rows
    in `key` order, the one beyond the page telling whether there is another."""
    shown = rows[:limit]
    return shown, (shown[-1][key] if len(rows) > limit else None)


async def pending_rows(cur: Cursor, created_at: sa.Column[Any], *where: sa.ColumnElement[bool]) -> tuple[int, float]:
    """(count, age in seconds of the oldest) of the rows of `created_at`'s table matching `where`."""
    age = sa.func.extract("epoch", sa.func.clock_timestamp() - sa.func.min(created_at))
    [(count, oldest)] = [tuple(row.values()) for row in await fetch_all(cur, sa.select(sa.func.count(), age)
                                                                         .where(*where))]
    return count, oldest


NOW = sa.func.clock_timestamp()


def seconds_from_now(seconds: Any) -> sa.ColumnElement[Any]:
    """The SQL time `seconds` (a number or a bound parameter; negative for the past) from now."""
    return NOW + sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def older_than(column: sa.Column[Any], seconds: float) -> sa.ColumnElement[bool]:
    return column < seconds_from_now(-seconds)


async def delete_batch(cur: Cursor, key: sa.Column[Any] | tuple[sa.Column[Any], ...], limit: int,
                       *where: sa.ColumnElement[bool]) -> bool:
    """Delete up to `limit` rows matching `where` (skipping rows locked by others); True if it hit the limit.
    `key` is the primary key's column, or a tuple of its columns.

    Small batches keep clean-up from holding many row locks at once."""
    columns = key if isinstance(key, tuple) else (key,)
    chosen = sa.select(*columns).where(*where).limit(limit).with_for_update(skip_locked=True)
    await execute(cur, sa.delete(columns[0].table).where(sa.tuple_(*columns).in_(chosen)))
    deleted: int = cur.rowcount
    return deleted >= limit


async def ensure_database(dsn: str, timeout: float = DbTimeouts.statement) -> None:
    """Create the DSN's database if it does not exist (several replicas may race: that is fine).

    The database itself is tried first: a least-privilege role (`ops.provision`) owns its database, which then
    exists, and may have no business in any other. Raises the first connection's error if the database exists
    but cannot be reached (e.g. no CONNECT privilege; retried by the caller, which logs why), and
    `ConfigurationError` if it is missing and the role may not create it."""
    params = parse_dsn(dsn)
    name = params["dbname"]
    try:
        async with aiopg.connect(dsn, timeout=timeout, enable_hstore=False):
            return
    except psycopg2.OperationalError as exc:
        unreachable = exc
    async with aiopg.connect(make_dsn(**{**params, "dbname": "postgres"}), timeout=timeout,
                             enable_hstore=False) as conn:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if await cur.fetchone():
                raise unreachable
            try:
                await cur.execute(f'CREATE DATABASE "{name}"')
                logger.info("created database %s", name)
            except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
                pass
            except psycopg2.errors.InsufficientPrivilege:
                raise ConfigurationError(f"database {name} does not exist and role {params.get('user')} may not "
                                         "create it: provision it first (python -m ops.provision, "
                                         "docs/security-credentials.md)") from None


class CommitOutcomeUnknown(Exception):
    """The connection broke while COMMIT was under way: the transaction may or may not have been applied."""


def unavailable(exc: BaseException) -> Unavailable:
    logger.warning("database unavailable: %r", exc)
    return Unavailable("Database temporarily unavailable.")


class BeginWithFirst:
    """A cursor whose first statement carries the BEGIN ("BEGIN; ..." in one round trip): aiopg's `begin()`
    sends it alone, a round trip more per transaction. COMMIT still goes alone, so that a connection lost while
    it is under way can be told apart (`CommitOutcomeUnknown`)."""

    def __init__(self, cur: Cursor) -> None:
        self.cur, self.sent = cur, False

    async def execute(self, sql: str, params: Any = None) -> None:
        if not self.sent:
            sql, self.sent = "BEGIN; " + sql, True
        await self.cur.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cur, name)


# Connections kept apart for the consumers and workers (`Database.background`).
BACKGROUND_POOL_SIZE = 4


# Seconds a former primary's pool may keep connections still in use before they are closed regardless.
RETIRE_GRACE = 5.0


async def create_pool(dsn: str, size: int, on_connect: Callable[[Any], Awaitable[None]] | None = None,
                      timeouts: DbTimeouts = DbTimeouts()) -> aiopg.Pool:
    """A pool whose connects and statements are bounded by `timeouts.statement` (aiopg's default is 60 s: a hung
    server would hold every caller that long). `Database` gives COMMIT its own, longer bound."""
    return await aiopg.create_pool(dsn, minsize=1, maxsize=size, enable_hstore=False, timeout=timeouts.statement,
                                   on_connect=on_connect)


class Database:
    """A connection pool with transactions retried as a whole when the server goes away.

    `background` is a second one, for consumers and workers: under load the HTTP requests would otherwise
    take every connection, and the work that brings orders to their final status would queue behind new
    orders, so the backlog would grow for as long as the load lasts."""

    def __init__(self, pool: aiopg.Pool, background: "Database | None" = None, retry_seconds: float = 2.0,
                 hosts: Hosts | None = None, dsn: str | None = None, timeouts: DbTimeouts = DbTimeouts()) -> None:
        self.pool = pool
        self.timeouts = timeouts
        self.background = background
        self.retry_seconds = retry_seconds
        # A DSN with several hosts (`common.db.pg_hosts`): `pool` is on `dsn`, the host that was the primary
        # when it was made, and moves when a lost connection or a write refused by a standby says it changed.
        self.hosts, self.dsn = hosts, dsn
        self._lookup: asyncio.Future[None] | None = None
        self.retiring: set[asyncio.Future[None]] = set()  # closes of pools left behind, awaited by `close`

    @classmethod
    async def connect(cls, dsn: str, section: str, pool_size: int,
                      timeouts: DbTimeouts = DbTimeouts()) -> "Database":
        """Wait for the server, create the database and apply its schema section, then pool connections.

        `timeouts` (`Settings.db_timeouts`) go into every connection (`common.db.pg_hosts.with_timeouts`: the
        DSN's own values win) and bound every statement, so that a silent server is noticed in seconds.

        Raises `TlsRefused` (a `ConfigurationError`) at once, not waiting, when TLS to the server fails in a
        way only a change of settings mends (`common.db.pg_hosts.tls_refusal`): a wrong `sslrootcert`, a
        certificate for another host name, a server without TLS where `sslmode` requires it. The DSN's TLS
        parameters reach libpq unchanged, on every host of a multi-host DSN."""
        hosts = Hosts(with_timeouts(dsn, timeouts))
        server = describe_postgres(dsn)
        async for attempt in until_connected(DB_ERRORS, server):
            with attempt:
                try:
                    db = await cls._on_primary(hosts, pool_size, timeouts)
                    await db.apply_schema(section)
                except DB_ERRORS as exc:
                    refuse_on_tls_failure(exc, dsn, server)
                    raise
        logger.info("connected to PostgreSQL database %s", parse_dsn(dsn)["dbname"])
        return db

    @classmethod
    async def _on_primary(cls, hosts: Hosts, pool_size: int, timeouts: DbTimeouts) -> "Database":
        dsn = await hosts.primary()
        await ensure_database(dsn, timeouts.statement)
        if not hosts.several:
            return cls(await create_pool(dsn, pool_size, timeouts=timeouts),
                       cls(await create_pool(dsn, BACKGROUND_POOL_SIZE, timeouts=timeouts), timeouts=timeouts),
                       timeouts=timeouts)
        background = cls(await create_pool(dsn, BACKGROUND_POOL_SIZE, refuse_standby, timeouts), hosts=hosts,
                         dsn=dsn, timeouts=timeouts)
        return cls(await create_pool(dsn, pool_size, refuse_standby, timeouts), background, hosts=hosts, dsn=dsn,
                   timeouts=timeouts)

    async def apply_schema(self, section: str) -> None:
        ddl = schema_section("shared") + "\n" + schema_section(section)
        async with self.pool.acquire() as conn, conn.cursor() as cur, cur.begin():
            # Replicas starting together would otherwise race on CREATE ... IF NOT EXISTS.
            await cur.execute("SELECT pg_advisory_xact_lock(hashtext('shop-schema'))")
            await cur.execute(ddl)

    @asynccontextmanager
    async def _cursor(self, transaction: bool) -> AsyncIterator[Cursor]:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            if not transaction:
                yield cur
                return
            begun = BeginWithFirst(cur)
            try:
                yield begun
            except BaseException:
                if begun.sent:
                    await cur.execute("ROLLBACK")
                raise
            if begun.sent:
                # Its own bound: one that closes the connection, never a cancel (DB_COMMIT_TIMEOUT in .env).
                await cur.execute("COMMIT", timeout=self.timeouts.commit)

    async def run(self, work: Callable[..., Awaitable[T]], *args: Any, retry_seconds: float | None = None,
                  transaction: bool = True) -> T:
        """Run `await work(cur, *args)` in one transaction and return its result.

        `transaction=False` leaves out BEGIN/COMMIT, for a single statement that is safe to run twice (a read,
        or an idempotent write): the two round trips saved are most of its cost. Other writes keep BEGIN/COMMIT
        so that a connection lost during COMMIT can be recognised.
        Connection failures and deadlocks retry the whole transaction for `retry_seconds`;
        after that raises `Unavailable`. So does a connection lost during COMMIT, at once: the transaction may
        have been applied, and running it again could create a second order or credit a top-up twice.
        Other exceptions roll back and propagate."""
        retry_seconds = self.retry_seconds if retry_seconds is None else retry_seconds
        # While the primary is not known (the last look found none, or one is under way), the pool's host is
        # not tried first: cut off, it would cost each call its timeouts (a statement's or a connect's) before
        # the look that finds the new primary, and a worker that polls would follow a failover seconds late.
        if retry_seconds <= 0 or not self._primary_unknown():
            try:
                # The first attempt runs outside tenacity: setting up its retry loop costs ~14 µs of CPU, half
                # as much again as a short query, on every call of every request and worker step.
                async with self._attempt(transaction) as cur:
                    return await work(cur, *args)
            except CommitOutcomeUnknown as exc:
                raise unavailable(exc) from exc
            except DB_ERRORS as exc:
                if retry_seconds <= 0:
                    self._look_for_primary()  # for the next call: a readiness probe must not fail forever
                    raise unavailable(exc) from exc
        try:
            async for attempt in briefly(DB_ERRORS, retry_seconds):
                with attempt:
                    await self._follow_primary()
                    async with self._attempt(transaction) as cur:
                        return await work(cur, *args)
        except (*DB_ERRORS, CommitOutcomeUnknown) as exc:
            raise unavailable(exc) from exc
        raise AssertionError("tenacity's attempts end by returning or raising")

    @asynccontextmanager
    async def _attempt(self, transaction: bool) -> AsyncIterator[Cursor]:
        """One try of `run`: the cursor its work runs on, and what the work's errors mean (the work is called by
        `run` itself, so that its arguments and result pass through no other frame).

        A cancellation of the calling task always ends it with `CancelledError`: a consumer or worker that went
        on after being cancelled would keep the process from stopping (seen: one SIGTERM in eight under load
        hung until the 20 s bound). Two ways aiopg loses a cancellation:
        every query waits in `asyncio.wait_for`, which in Python 3.11 returns the result when the
        cancellation comes just as the query finishes; and it closes the connection of a cancelled query,
        so the ROLLBACK that follows raises a connection error in place of the cancellation."""
        committing = False
        try:
            async with self._cursor(transaction) as cur:
                yield cur
                committing = transaction
        except psycopg2.errors.ReadOnlySqlTransaction as exc:
            if self.hosts is None:
                raise
            # Raised by the write itself, never by COMMIT: nothing was applied, so it is safe to run again.
            raise WrongHost(repr(exc)) from exc
        except DB_ERRORS as exc:
            if being_cancelled():
                raise asyncio.CancelledError() from exc
            if committing:
                raise CommitOutcomeUnknown(repr(exc)) from exc
            raise
        if being_cancelled():
            raise asyncio.CancelledError()

    def _primary_unknown(self) -> bool:
        """A look for the primary is under way, or the last one found none."""
        lookup = self._lookup
        return lookup is not None and (not lookup.done() or lookup.cancelled() or lookup.exception() is not None)

    def _look_for_primary(self) -> "asyncio.Future[None] | None":
        """Start a look for the primary unless one is under way; the callers failing together share it."""
        if self.hosts is not None and (self._lookup is None or self._lookup.done()):
            lookup = self._lookup = asyncio.ensure_future(self._move_to_primary(self.hosts))
            lookup.add_done_callback(lambda done: done.cancelled() or done.exception())
        return self._lookup

    async def _follow_primary(self) -> None:
        """Before a retry: make sure the pool is on the current primary. Raises `NoPrimary` (retried like a
        lost connection) while there is none, e.g. during a failover."""
        lookup = self._look_for_primary()
        if lookup is not None:
            # Shielded: a cancelled caller must not cancel the look the others are waiting for.
            await asyncio.shield(lookup)

    async def _move_to_primary(self, hosts: Hosts) -> None:
        dsn = await hosts.primary()
        if dsn == self.dsn:
            return
        logger.warning("database primary moved from %s to %s: new connection pool", describe(self.dsn),
                       describe(dsn))
        new = await create_pool(dsn, self.pool.maxsize or 1, refuse_standby, self.timeouts)  # (never None here)
        old, self.pool, self.dsn = self.pool, new, dsn
        closing = asyncio.ensure_future(close_pool(old, RETIRE_GRACE))
        self.retiring.add(closing)
        closing.add_done_callback(self.retiring.discard)

    async def ping(self) -> None:
        async def select_one(cur: Cursor) -> None:
            await cur.execute("SELECT 1")
        await self.run(select_one, retry_seconds=0)

    async def close(self, grace: float = 5.0) -> None:
        """Close the pools (both at once) once their connections are back; after `grace` seconds close them
        regardless (a connection never released, e.g. by a task cancelled mid-query, must not stop the process)."""
        await asyncio.gather(*(close_pool(db.pool, grace) for db in (self, self.background) if db),
                             *(task for db in (self, self.background) if db for task in list(db.retiring)))


async def close_pool(pool: aiopg.Pool, grace: float) -> None:
    pool.close()
    try:
        await asyncio.wait_for(pool.wait_closed(), grace)
    except TimeoutError:
        logger.warning("%d database connections still in use after %ss; closing them", pool.size - pool.freesize,
                       grace)
        pool.terminate()
