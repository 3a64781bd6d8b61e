"""The chaos runner's load: concurrent clients placing orders and topping up accounts through the gateway,
and a journal of every HTTP attempt and what the client could conclude from it.

Most writes carry an `Idempotency-Key` and are retried with it until a definite answer comes (a 503, a
timeout or a reset says nothing about whether the first try was applied; the key makes the retry safe).
The rest are plain one-shot requests, as a client without keys would send them: when those get no
definite answer they stay *ambiguous*. Every request also carries a unique `X-Request-ID` (the same on each
retry, equal to its key if it has one), which the Payments ledger stores on a top-up's credit (its
`Idempotency-Key`, else its `X-Request-ID`): the checker decides each ambiguous top-up exactly from it."""
import errno
import http.client
import random
import socket
import threading
import time
import urllib.error
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from harness.client import call

ACKED, REJECTED, AMBIGUOUS = "acknowledged", "rejected", "ambiguous"
# Outcomes of an attempt that got no HTTP answer. REFUSED: no connection was made, so the request never reached
# the gateway; RESET: any other failure, after which it may have been acted on.
TIMEOUT, REFUSED, RESET = "timeout", "refused", "reset"
# Why a connection was not made. "No route to host": under podman the host's NAT still sends a new connection
# to the address a killed gateway container had until the new one is wired up (seen 4-6 s after the connect).
NOT_CONNECTED = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)


@dataclass
class Attempt:
    started: float
    ended: float
    outcome: object  # an HTTP status code, or TIMEOUT / REFUSED / RESET
    detail: str = ""  # without an answer: what the client library raised (a reset's cause is told by it)


@dataclass
class Request:
    kind: str  # "account", "top_up" or "order"
    user_id: int
    amount: Decimal = None
    description: str = ""
    keyed: bool = True
    key: str = None  # its X-Request-ID, and its Idempotency-Key if `keyed`
    attempts: list = field(default_factory=list)
    order_id: int = None

    @property
    def result(self):
        outcomes = [a.outcome for a in self.attempts]
        if any(o in (200, 201) for o in outcomes):
            return ACKED
        # A refused connection never reached the gateway; a 4xx is a definite "no".
        if all(o == REFUSED for o in outcomes) or (outcomes and is_client_error(outcomes[-1])):
            return REJECTED
        return AMBIGUOUS


def is_client_error(outcome):
    return isinstance(outcome, int) and 400 <= outcome < 500


def is_definite(outcome):
    return isinstance(outcome, int) and outcome != 503


def attempt(base_url, method, path, body, timeout, headers=None):
    """One HTTP attempt: (Attempt, decoded body or None)."""
    started = time.monotonic()
    try:
        status, reply = call(base_url, method, path, body, timeout=timeout, headers=headers)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        return Attempt(started, time.monotonic(), *no_answer(exc)), None
    return Attempt(started, time.monotonic(), status), reply


def no_answer(exc):
    """(TIMEOUT / REFUSED / RESET, what was raised). urllib raises a URLError for a failure while connecting or
    sending; one of NOT_CONNECTED there means no connection. An error while waiting for the answer counts as a
    reset even if it is "no route to host": the request may have arrived, its acknowledgement not."""
    reason = getattr(exc, "reason", exc)
    detail = f"{type(reason).__name__}: {reason}"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return TIMEOUT, detail
    if isinstance(reason, ConnectionRefusedError) or (
            isinstance(exc, urllib.error.URLError) and getattr(reason, "errno", None) in NOT_CONNECTED):
        return REFUSED, detail
    return RESET, detail


class Journal:
    """Every request the load sent, appended from many threads."""

    def __init__(self):
        self.requests = []
        self._lock = threading.Lock()

    def add(self, request):
        with self._lock:
            self.requests.append(request)

    def snapshot(self):
        with self._lock:
            return list(self.requests)

    def of_kind(self, kind):
        return [r for r in self.snapshot() if r.kind == kind]


class Pacer:
    """Spaces operations of all threads `1 / rate` seconds apart (no limit if rate is None)."""

    def __init__(self, rate):
        self.interval = 1 / rate if rate else 0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, stop):
        with self._lock:
            now = time.monotonic()
            slot = self._next = max(self._next + self.interval, now)
        stop.wait(slot - now)


@dataclass(frozen=True)
class Mix:
    """What the clients send, in proportions."""
    top_up_share: float = 0.12        # of operations; the rest are orders
    ghost_share: float = 0.08         # of orders: users without an account (cancelled)
    plain_share: float = 0.2          # of writes: sent without an Idempotency-Key, never retried
    order_cents: tuple = (100, 9000)  # amounts in cents, random; cents make sums distinctive
    top_up_cents: tuple = (2000, 20000)
    initial_cents: tuple = (5000, 40000)


class Client:
    """Sends requests and records them in the journal; `run_id` makes descriptions and keys unique."""

    def __init__(self, base_url, journal, run_id, timeout=20.0, retry_for=90.0):
        self.base_url, self.journal, self.run_id = base_url, journal, run_id
        self.timeout, self.retry_for = timeout, retry_for

    def send(self, request, method, path, body):
        """Send `request`; with a key, retry (tenacity, bounded) until a definite answer. Returns the last reply."""
        request.key = f"{self.run_id}-{uuid.uuid4().hex}"
        headers = {"X-Request-ID": request.key, **({"Idempotency-Key": request.key} if request.keyed else {})}
        self.journal.add(request)

        def once():
            result, reply = attempt(self.base_url, method, path, body, self.timeout, headers)
            request.attempts.append(result)
            return result, reply

        retrying = Retrying(retry=retry_if_result(lambda last: request.keyed and not is_definite(last[0].outcome)),
                            stop=stop_after_delay(self.retry_for), wait=wait_exponential(multiplier=0.1, max=2),
                            retry_error_callback=lambda state: state.outcome.result())
        return retrying(once)[1]

    def create_account(self, user_id):
        self.send(Request("account", user_id), "POST", "/payments", {"user_id": user_id})

    def top_up(self, user_id, amount, keyed=True):
        self.send(Request("top_up", user_id, amount, keyed=keyed), "PUT", f"/payments/{user_id}",
                  {"amount": str(amount)})

    def order(self, user_id, amount, seq, keyed=True):
        request = Request("order", user_id, amount, f"chaos {self.run_id} #{seq}", keyed)
        reply = self.send(request, "POST", "/orders",
                          {"user_id": user_id, "amount": str(amount), "description": request.description})
        if request.result == ACKED:
            request.order_id = reply["order_id"]


def cents(rng, bounds):
    return Decimal(rng.randint(*bounds)) / 100


class Load:
    """`clients` threads sending a random mix of orders and top-ups until `stop` is set."""

    def __init__(self, client, users, ghosts, seed, clients=8, rate=None, mix=Mix()):
        self.client, self.users, self.ghosts, self.mix = client, users, ghosts, mix
        self.seed, self.clients = seed, clients
        self.pacer = Pacer(rate)
        self.stop = threading.Event()
        self._seq = iter(range(1, 10**12))
        self._seq_lock = threading.Lock()
        self._threads = []

    def setup_accounts(self):
        """Create every account and give it a first top-up (before any fault)."""
        rng = random.Random(self.seed)
        for user in self.users:
            self.client.create_account(user)
            self.client.top_up(user, cents(rng, self.mix.initial_cents))

    def start(self):
        self._threads = [threading.Thread(target=self._work, args=(random.Random(f"{self.seed}/{i}"),),
                                          name=f"client-{i}", daemon=True) for i in range(self.clients)]
        for thread in self._threads:
            thread.start()

    def finish(self):
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def _next_seq(self):
        with self._seq_lock:
            return next(self._seq)

    def _work(self, rng):
        mix = self.mix
        while not self.stop.is_set():
            self.pacer.wait(self.stop)
            if self.stop.is_set():
                return
            keyed = rng.random() >= mix.plain_share
            if rng.random() < mix.top_up_share:
                self.client.top_up(rng.choice(self.users), cents(rng, mix.top_up_cents), keyed)
            else:
                user = rng.choice(self.ghosts if rng.random() < mix.ghost_share else self.users)
                self.client.order(user, cents(rng, mix.order_cents), self._next_seq(), keyed)
