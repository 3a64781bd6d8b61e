"""The gateway's bounded backend pool: never more than its size, first come first served, and a wait given up
(the upstream timeout) never leaks a slot."""
import asyncio
import socket

import pytest
from tornado.iostream import IOStream

from proxy.connection_pool import ConnectionPool


async def hold_and_release(pool, held, peak, order, name):
    stream = await pool.acquire()
    order.append(name)
    held[0] += 1
    peak[0] = max(peak[0], held[0])
    await asyncio.sleep(0)  # others ask for a connection meanwhile
    held[0] -= 1
    pool.release(stream)


def test_pool_never_grants_more_than_its_size_and_serves_everyone_in_order():
    async def main():
        pool, held, peak, order = ConnectionPool(3), [0], [0], []
        await asyncio.gather(*(hold_and_release(pool, held, peak, order, i) for i in range(100)))
        return pool, peak[0], order

    pool, peak, order = asyncio.run(main())
    assert peak == 3
    assert order == list(range(100))
    assert pool.granted == 0 and not pool.waiting


def test_a_wait_given_up_leaves_its_place_and_the_slot_goes_to_the_next_in_line():
    async def main():
        pool = ConnectionPool(1)
        assert await pool.acquire() is None  # the one slot, to open a connection in
        gave_up = asyncio.ensure_future(asyncio.wait_for(pool.acquire(), 0.01))
        next_in_line = asyncio.ensure_future(pool.acquire())
        with pytest.raises(asyncio.TimeoutError):
            await gave_up
        pool.release()
        await asyncio.wait_for(next_in_line, 1)
        pool.release()
        return pool

    pool = asyncio.run(main())
    assert pool.granted == 0 and not pool.waiting


def test_a_slot_handed_over_as_the_wait_is_cancelled_is_passed_on():
    async def main():
        pool = ConnectionPool(1)
        await pool.acquire()
        first = asyncio.ensure_future(pool.acquire())
        second = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        pool.release()  # hands the slot to `first`...
        first.cancel()  # ...which gives up before it runs
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.wait_for(second, 1)
        pool.release()
        return pool

    pool = asyncio.run(main())
    assert pool.granted == 0 and not pool.waiting


def test_an_idle_connection_the_backend_closed_is_dropped_and_its_slot_reused():
    async def main():
        pool = ConnectionPool(1)
        assert await pool.acquire() is None
        ours, theirs = socket.socketpair()
        pool.release(IOStream(ours))
        theirs.close()  # the backend closed the idle connection (restart, idle timeout)
        assert await pool.acquire() is None  # a new connection, in the same slot
        pool.release()
        return pool

    pool = asyncio.run(main())
    assert pool.granted == 0 and not pool.idle
