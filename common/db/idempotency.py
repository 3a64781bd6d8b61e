"""Idempotency keys: a request retried with the same `Idempotency-Key` gets the first result back
instead of creating or crediting again. Keys are per caller (the token's subject): another caller's use of the
same key is another key, so a guessed key cannot turn someone's request into a 422 or a replay.

The key is claimed in the same transaction as the business write, so a crash can never leave one without
the other; a concurrent request with the same key waits on the key's unique index until the first commits."""
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from tornado.httputil import HTTPServerRequest

from common.db.database import Cursor, Query, delete_batch, execute, fetch_all, older_than, texts
from common.domain.errors import IdempotencyKeyReused, InvalidInput
from common.domain.json_text import to_json

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255

idempotency_keys = sa.Table(
    "idempotency_keys", sa.MetaData(),
    sa.Column("principal", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("fingerprint", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)


# A batch's keys travel as arrays (`common.db.database.Query`): claimed in one statement, looked up in one, stored
# in one.
_given = sa.func.unnest(texts("principals"), texts("keys"), texts("fingerprints")) \
    .table_valued("principal", "key", "fingerprint").render_derived(name="given")
CLAIM_KEYS = Query(pg_insert(idempotency_keys).from_select(["principal", "key", "fingerprint"], sa.select(_given))
                   .on_conflict_do_nothing().returning(idempotency_keys.c.principal, idempotency_keys.c.key))
_asked = sa.func.unnest(texts("principals"), texts("keys")).table_valued("principal", "key") \
    .render_derived(name="asked")
EARLIER_USES = Query(sa.select(idempotency_keys.c.principal, idempotency_keys.c.key, idempotency_keys.c.fingerprint,
                               idempotency_keys.c.result)
                     .join(_asked, sa.and_(idempotency_keys.c.principal == _asked.c.principal,
                                           idempotency_keys.c.key == _asked.c.key)))
_stored = sa.func.unnest(texts("principals"), texts("keys"), texts("results")) \
    .table_valued("principal", "key", "result").render_derived(name="stored")
STORE_RESULTS = Query(sa.update(idempotency_keys)
                      .where(idempotency_keys.c.principal == _stored.c.principal,
                             idempotency_keys.c.key == _stored.c.key)
                      .values(result=_stored.c.result))


@dataclass(frozen=True)
class IdempotentRequest:
    principal: str  # whose key: the token's subject ("" with AUTH_MODE=off)
    key: str
    fingerprint: str

    @property
    def scoped_key(self) -> tuple[str, str]:
        return self.principal, self.key


class Outcome(NamedTuple):
    result: Any
    replayed: bool  # True: the key was used before, `result` is that first call's, and nothing ran now


def from_request(request: HTTPServerRequest, principal: str) -> IdempotentRequest | None:
    """The request's idempotency key of `principal` and its fingerprint (method, path, body), or None without the
    header."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not (0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise InvalidInput(f"'{HEADER}' must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.")
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode() + request.body).hexdigest()
    return IdempotentRequest(principal, key, digest)


async def run_once(cur: Cursor, request: IdempotentRequest | None, work: Callable[..., Awaitable[Any]],
                   *args: Any) -> Outcome:
    """`await work(cur, *args)`, or, if `request`'s key was used before, that first call's result (replayed).

    Raises `IdempotencyKeyReused` if the key came with a different request."""
    async def work_once(cur: Cursor, _items: list[None]) -> list[Any]:
        return [await work(cur, *args)]

    [outcome] = await run_each_once(cur, [(request, None)], work_once)
    if isinstance(outcome, IdempotencyKeyReused):
        raise outcome
    return outcome


async def run_each_once(cur: Cursor, keyed: Sequence[tuple[IdempotentRequest | None, Any]],
                        work: Callable[[Any, list[Any]], Awaitable[list[Any]]]) -> list[Outcome | IdempotencyKeyReused]:
    """`run_once` for a batch in one transaction: `keyed` is (request, item) pairs, and `await work(cur, items)`
    does the work of the items whose request has no key or is its key's first use, returning their results in
    order. Returns each pair's `Outcome`, or the `IdempotencyKeyReused` to raise for it alone.

    A key used twice in the batch is what a client retrying at once sends: the later use is answered as a
    replay of the earlier, exactly as if it had come after the earlier's commit."""
    first_use: dict[tuple[str, str], int] = {}
    fingerprint: dict[tuple[str, str], str] = {}  # of each key's first use
    for index, (request, _) in enumerate(keyed):
        if request is not None and request.scoped_key not in first_use:
            first_use[request.scoped_key], fingerprint[request.scoped_key] = index, request.fingerprint
    # Sorted, so that two transactions claiming the same keys take their index locks in the same order.
    keys = sorted(first_use)
    fingerprints = [fingerprint[key] for key in keys]
    claimed = {(row["principal"], row["key"]) for row in await fetch_all(
        cur, CLAIM_KEYS, principals=[p for p, _ in keys], keys=[k for _, k in keys], fingerprints=fingerprints)} \
        if keys else set()
    unclaimed = [key for key in keys if key not in claimed]
    earlier = {(row["principal"], row["key"]): row for row in await fetch_all(
        cur, EARLIER_USES, principals=[p for p, _ in unclaimed], keys=[k for _, k in unclaimed])} if unclaimed else {}
    chosen = [i for i, (request, _) in enumerate(keyed)
              if request is None or (request.scoped_key in claimed and first_use[request.scoped_key] == i)]
    results = dict(zip(chosen, await work(cur, [keyed[i][1] for i in chosen]))) if chosen else {}
    stored = {request.scoped_key: to_json(results[i]) for i in chosen if (request := keyed[i][0]) is not None}
    if stored:
        await execute(cur, STORE_RESULTS, principals=[p for p, _ in stored], keys=[k for _, k in stored],
                      results=list(stored.values()))
        earlier.update((key, {"fingerprint": fingerprint[key], "result": result}) for key, result in stored.items())
    outcomes: list[Outcome | IdempotencyKeyReused] = []
    for index, (request, _) in enumerate(keyed):
        if request is None or index in results:  # (a request without a key is always among the results)
            outcomes.append(Outcome(results[index], replayed=False))
        elif earlier[request.scoped_key]["fingerprint"] != request.fingerprint:
            outcomes.append(IdempotencyKeyReused(f"'{HEADER}' {request.key!r} was already used with a different "
                                                 "request."))
        else:
            outcomes.append(Outcome(json.loads(earlier[request.scoped_key]["result"], parse_float=Decimal),
                                    replayed=True))
    return outcomes


async def store_result(cur: Cursor, request: IdempotentRequest, result: Any) -> None:
    """Make `result` the answer replayed for `request`'s key from now on (e.g. the first answer, given later
    than the commit that stored a result)."""
    await execute(cur, STORE_RESULTS, principals=[request.principal], keys=[request.key], results=[to_json(result)])


async def forget_expired(cur: Cursor, hours: float, limit: int) -> bool:
    """Delete up to `limit` keys older than `hours`; True if more may be left."""
    return await delete_batch(cur, (idempotency_keys.c.principal, idempotency_keys.c.key), limit,
                              older_than(idempotency_keys.c.created_at, hours * 3600))
