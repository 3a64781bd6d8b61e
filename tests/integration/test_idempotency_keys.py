"""`common.db.idempotency` against the real database: a replayed result is the first one exactly (amounts still
`Decimal`), the work gets its arguments, and keys are forgotten exactly when they expire."""
import secrets
from dataclasses import replace
from decimal import Decimal

import pytest

from common.db.idempotency import IdempotentRequest, forget_expired, run_once
from common.domain.errors import IdempotencyKeyReused


def key_request():
    return IdempotentRequest("user-1", f"unit-{secrets.token_hex(8)}", "fingerprint")


@pytest.mark.gen_test(timeout=30)
async def test_a_replayed_result_is_the_first_one_with_exact_amounts(payment_service):
    calls = []

    async def work(cur, amount, note):
        calls.append((amount, note))
        return {"balance": amount, "note": note}

    request = key_request()
    first = await payment_service.db.run(run_once, request, work, Decimal("1000.10"), "first")
    again = await payment_service.db.run(run_once, request, work, Decimal("5"), "second")
    assert (first.replayed, again.replayed) == (False, True)
    assert first.result == again.result == {"balance": Decimal("1000.10"), "note": "first"}
    assert type(again.result["balance"]) is Decimal
    assert calls == [(Decimal("1000.10"), "first")]


@pytest.mark.gen_test(timeout=30)
async def test_a_key_used_with_a_different_request_is_refused_naming_the_key(payment_service):
    async def work(cur):
        return {}
    request = key_request()
    await payment_service.db.run(run_once, request, work)
    with pytest.raises(IdempotencyKeyReused) as raised:
        await payment_service.db.run(run_once, replace(request, fingerprint="another request"), work)
    assert raised.value.message == f"'Idempotency-Key' {request.key!r} was already used with a different request."


@pytest.mark.gen_test(timeout=30)
async def test_a_key_is_per_caller_so_another_caller_s_use_of_it_neither_replays_nor_refuses(payment_service):
    async def work(cur, who):
        return {"by": who}
    mine = key_request()
    theirs = replace(mine, principal="user-2", fingerprint="another request")
    assert (await payment_service.db.run(run_once, theirs, work, "them")) == ({"by": "them"}, False)
    assert (await payment_service.db.run(run_once, mine, work, "me")) == ({"by": "me"}, False)
    assert (await payment_service.db.run(run_once, mine, work, "me again")) == ({"by": "me"}, True)


async def key_age_is(service, key, age):
    async def backdate(cur):
        await cur.execute("UPDATE idempotency_keys SET created_at = clock_timestamp() - %s::interval WHERE key = %s",
                          (age, key))
    await service.db.run(backdate)


async def key_exists(service, key):
    async def read(cur):
        await cur.execute("SELECT count(*) FROM idempotency_keys WHERE key = %s", (key,))
        return (await cur.fetchone())[0] == 1
    return await service.db.run(read)


@pytest.mark.gen_test(timeout=30)
async def test_keys_are_forgotten_once_older_than_their_hours_and_not_before(payment_service):
    async def work(cur):
        return {}

    fresh, expired = key_request(), key_request()
    for request in (fresh, expired):
        await payment_service.db.run(run_once, request, work)
    # 24 hours: one key 10 s short of it, one 10 s past it.
    await key_age_is(payment_service, fresh.key, "23 hours 59 minutes 50 seconds")
    await key_age_is(payment_service, expired.key, "24 hours 10 seconds")
    while await payment_service.db.run(forget_expired, 24, 1000):
        pass
    assert await key_exists(payment_service, fresh.key)
    assert not await key_exists(payment_service, expired.key)
