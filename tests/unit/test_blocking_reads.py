"""Blocking reads without a server: how a request's wait is read (`common.web.waiting`), the registry of waiters and
its caps (`order_svc.waiters`), and the notification's payload (`order_svc.repo.named_in`)."""
import asyncio

import pytest

from common.broker.messages import OrderStatus
from common.domain.errors import InvalidInput
from common.web.waiting import parse_wait, preferred_wait, requested_wait, without_wait
from order_svc.repo import EVERY_WAITER, named_in
from order_svc.waiters import CLIENT_LEFT, FINAL, RECENT, SHUTDOWN, TIMEOUT, Waiters

FINISHED, CANCELLED = OrderStatus.FINISHED, OrderStatus.CANCELLED


@pytest.mark.parametrize("values, seconds", [([], None), (["1"], 1), (["30"], 30), (["007"], 7)])
def test_a_wait_query_is_whole_seconds_from_1_to_30(values, seconds):
    assert parse_wait(values) == seconds


@pytest.mark.parametrize("values", [["0"], ["31"], ["1.5"], [""], ["-1"], ["abc"], ["1", "2"], ["\uff11"], ["0001"]])
def test_any_other_wait_query_is_refused(values):
    with pytest.raises(InvalidInput, match="'wait' must be whole seconds from 1 to 30."):
        parse_wait(values)


@pytest.mark.parametrize("prefer, seconds", [
    ("wait=5", 5), ("WAIT=5", 5), ("respond-async, wait=10", 10), ('wait="7"', 7), ("wait=5; foo=bar", 5),
    (" wait = 3 ", 3), ("wait=100", 30), ("wait=5, wait=9", 5), ("wait=x, wait=9", None), (None, None), ("", None),
    ("wait=0", None), ("wait", None), ("wait=-3", None), ("wait=5.5", None), ("return=minimal", None), (";;,=", None),
    ("waiting=5", None)])
def test_a_prefer_wait_is_read_as_rfc_7240_says_and_never_refused(prefer, seconds):
    assert preferred_wait(prefer) == seconds


@pytest.mark.parametrize("method, uri, prefer, seconds", [
    ("GET", "/orders/1?wait=5", None, 5), ("HEAD", "/orders/1?wait=5", None, 5), ("GET", "/orders/1", None, None),
    ("GET", "/orders/1?wait=99", None, None), ("GET", "/orders/1?waiter=5", None, None),
    ("POST", "/orders", "wait=3", 3), ("POST", "/orders?wait=3", None, None), ("PUT", "/payments/1", "wait=3", None),
    ("GET", "/orders/1", "wait=3", None)])
def test_the_gateway_holds_only_a_valid_wait_of_a_read_or_a_preference_of_a_post(method, uri, prefer, seconds):
    assert requested_wait(method, uri, prefer) == seconds


def test_a_request_goes_on_without_its_wait_and_keeps_its_other_arguments():
    assert without_wait("/orders/1?wait=5") == "/orders/1"
    assert without_wait("/orders/1?x=1&wait=5&y=") == "/orders/1?x=1&y="


def test_a_notification_names_each_order_and_its_final_status():
    assert named_in("1201F,1202C,9223372036854775807F") == {1201: FINISHED, 1202: CANCELLED,
                                                           9223372036854775807: FINISHED}
    assert named_in(EVERY_WAITER) is None
    for foreign in ("1201X", "hello", "F"):
        with pytest.raises((ValueError, KeyError)):
            named_in(foreign)


@pytest.fixture
def waiters():
    """Makes registries (room for 10 waiters unless said), emptied afterwards: their gauge is the process's."""
    made = []

    def make(max_waiting=10, max_per_caller=10):
        made.append(Waiters(max_waiting, max_per_caller))
        return made[-1]
    yield make
    for registry in made:
        registry.let_go()
        for waiter in [w for ws in registry._by_order.values() for w in ws]:
            registry.remove(waiter)


def waited(waiters, waiter, seconds=5):
    return asyncio.ensure_future(waiters.wait(waiter, seconds))


@pytest.mark.gen_test
async def test_a_waiter_is_woken_with_its_order_s_final_status_and_then_forgotten(waiters):
    waiters = waiters()
    first, second = (waiters.join(7, "a", waiters.mark()) for _ in range(2))
    other = waiters.join(8, "b", waiters.mark())
    waits = [waited(waiters, w) for w in (first, second, other)]
    waiters.wake({7: FINISHED}, by="local")
    assert [await w for w in waits[:2]] == [FINISHED, FINISHED] and not waits[2].done()
    for waiter in (first, second):
        waiters.remove(waiter)
    assert (waiters.count, waiters.held(), first.outcome) == (1, [8], FINAL)
    waiters.leave(other)
    assert await waits[2] is None and other.outcome == CLIENT_LEFT
    waiters.remove(other)
    waiters.remove(other)  # twice is harmless
    assert (waiters.count, waiters.held()) == (0, [])


@pytest.mark.gen_test
async def test_a_wait_ends_without_a_status_after_its_seconds(waiters):
    waiters = waiters()
    waiter = waiters.join(7, "a", waiters.mark())
    assert await waiters.wait(waiter, 0.05) is None and waiter.outcome == TIMEOUT


@pytest.mark.gen_test
async def test_beyond_a_cap_or_while_shutting_down_nobody_joins(waiters):
    waiters = waiters(max_waiting=3, max_per_caller=2)
    mark = waiters.mark()
    assert waiters.join(1, "a", mark) and waiters.join(2, "a", mark)
    assert waiters.join(3, "a", mark) is None  # the caller's cap
    last = waiters.join(4, "b", mark)
    assert last and waiters.join(5, "c", mark) is None  # the process's cap
    waiters.remove(last)
    assert waiters.join(5, "c", mark)
    waiters.let_go()
    assert waiters.join(6, "d", mark) is None
    assert all(w.outcome == SHUTDOWN for ws in waiters._by_order.values() for w in ws)


@pytest.mark.gen_test
async def test_a_wake_up_between_the_read_and_the_join_is_not_missed(waiters):
    waiters = waiters()
    mark = waiters.mark()  # taken before the order was read
    waiters.wake({7: CANCELLED}, by="notification")  # came while it was read: nobody waited yet
    waiter = waiters.join(7, "a", mark)
    assert await waiters.wait(waiter, 5) == CANCELLED and not waiter.unsure


@pytest.mark.gen_test
async def test_a_waiter_that_cannot_know_what_it_missed_reads_its_order_again(waiters):
    waiters = waiters()
    mark = waiters.mark()
    waiters.missed()  # e.g. the LISTEN connection came back: notifications may have been lost meanwhile
    assert waiters.join(7, "a", mark).unsure
    assert not waiters.join(8, "a", waiters.mark()).unsure
    mark = waiters.mark()
    waiters.wake({order_id: FINISHED for order_id in range(100, 101 + RECENT)}, by="notification")
    assert waiters.join(9, "b", mark).unsure  # more wake-ups than remembered
    assert waiters.join(100, "b", mark).unsure and not waiters.join(100 + RECENT, "c", mark).unsure
