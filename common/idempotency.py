"""Idempotency keys: a request retried with the same `Idempotency-Key` gets the first result back
instead of creating or crediting again.

The key is claimed in the same transaction as the business write, so a crash can never leave one without
the other; a concurrent request with the same key waits on the key's unique index until the first commits."""
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from common.db import Query, delete_batch, execute, fetch_one, older_than
from common.envelope import to_json
from common.errors import IdempotencyKeyReused, InvalidInput

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255

idempotency_keys = sa.Table(
    "idempotency_keys", sa.MetaData(),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("fingerprint", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)


_KEY = sa.bindparam("key")
CLAIM_KEY = Query(pg_insert(idempotency_keys).values(key=_KEY, fingerprint=sa.bindparam("fingerprint"))
                  .on_conflict_do_nothing().returning(idempotency_keys.c.key))
EARLIER_USE = Query(sa.select(idempotency_keys.c.fingerprint, idempotency_keys.c.result)
                    .where(idempotency_keys.c.key == _KEY))
STORE_RESULT = Query(sa.update(idempotency_keys).where(idempotency_keys.c.key == _KEY)
                     .values(result=sa.bindparam("result")))


@dataclass(frozen=True)
class IdempotentRequest:
    key: str
    fingerprint: str


class Outcome(NamedTuple):
    result: Any
    replayed: bool  # True: the key was used before, `result` is that first call's, and nothing ran now


def from_request(request) -> IdempotentRequest | None:
    """The request's idempotency key and fingerprint (method, path, body), or None without the header."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not (0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise InvalidInput(f"'{HEADER}' must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.")
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode() + request.body).hexdigest()
    return IdempotentRequest(key, digest)


async def run_once(cur, request: IdempotentRequest | None, work: Callable[..., Awaitable[Any]], *args) -> Outcome:
    """`await work(cur, *args)`, or, if `request`'s key was used before, that first call's result (replayed).

    Raises `IdempotencyKeyReused` if the key came with a different request."""
    if request is None:
        return Outcome(await work(cur, *args), replayed=False)
    claimed = await fetch_one(cur, CLAIM_KEY, key=request.key, fingerprint=request.fingerprint)
    if claimed is None:
        earlier = await fetch_one(cur, EARLIER_USE, key=request.key)
        if earlier["fingerprint"] != request.fingerprint:
            raise IdempotencyKeyReused(f"'{HEADER}' {request.key!r} was already used with a different request.")
        return Outcome(json.loads(earlier["result"], parse_float=Decimal), replayed=True)
    result = await work(cur, *args)
    await execute(cur, STORE_RESULT, key=request.key, result=to_json(result))
    return Outcome(result, replayed=False)


async def forget_expired(cur, hours: float, limit: int) -> bool:
    """Delete up to `limit` keys older than `hours`; True if more may be left."""
    return await delete_batch(cur, idempotency_keys.c.key, limit,
                              older_than(idempotency_keys.c.created_at, hours * 3600))
