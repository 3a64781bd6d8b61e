"""What the chaos runner checks beyond the databases' invariants: what clients saw, the API's view of the
data, fault coverage and recovery time. Each function adds rows to a `harness.invariants.Report`."""
import time
from collections import Counter, defaultdict

from harness.chaos.faults import KINDS, fault_during, gateway_down_windows, last_fault_before
from harness.chaos.workload import ACKED, AMBIGUOUS, REFUSED, REJECTED, RESET, TIMEOUT
from harness.client import call
from harness.invariants import check_invariants, query
from harness.ledger import TopUp

# A request started just before the gateway died, or answered just after, still belongs to that outage.
WINDOW_SLACK = 1.0
NO_ANSWER = (REFUSED, RESET, TIMEOUT)


def expectations(journal):
    """What the journal lets the checker expect: acknowledged order ids, an `unacknowledged_ok(order_id,
    description)` predicate, and every top-up as a `harness.ledger.TopUp` (its key and what the client learned)."""
    requests = journal.snapshot()
    orders = [r for r in requests if r.kind == "order"]
    by_description = {r.description: r for r in orders}
    learned = {ACKED: True, REJECTED: False, AMBIGUOUS: None}
    top_ups = [TopUp(r.key, r.user_id, r.amount, learned[r.result]) for r in requests if r.kind == "top_up"]

    def unacknowledged_ok(order_id, description):
        request = by_description.get(description)
        return request is not None and request.result == AMBIGUOUS

    acked = [r.order_id for r in orders if r.result == ACKED]
    return acked, unacknowledged_ok, top_ups


def check_data(order_db, payment_db, journal):
    """The contract's invariants, with the client's knowledge (including what it never learned)."""
    acked, unacknowledged_ok, top_ups = expectations(journal)
    report = check_invariants(order_db, payment_db, {}, acked, unacknowledged_ok, top_ups)
    descriptions = [d for (d,) in query(order_db, "SELECT description FROM orders")]
    report.add("at most one order per request", [f"{n} orders from {d!r}" for d, n in
                                                 Counter(descriptions).items() if n > 1])
    return report


def wall_clock(moment):
    """A time.monotonic() `moment` as UTC wall-clock time, to find it in the services' logs."""
    wall = time.time() - time.monotonic() + moment
    return time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}"


def when(faults, attempt):
    """Where an attempt falls in the fault schedule: `during kill gateway` (for part of it at least: the first
    such fault), or `3.1 s after postgres restart` (from that fault's end to the attempt's)."""
    current = fault_during(faults, attempt.started, attempt.ended)
    if current is not None:
        return f"during {current.kind}"
    last = last_fault_before(faults, attempt.ended)
    return "before the first fault" if last is None else f"{attempt.ended - last.ended:.1f} s after {last.kind}"


def describe(request, attempt, faults):
    """One attempt, enough to find it in the gateway's log (its X-Request-ID is the request's key) and to see
    what the injector was doing when the answer failed to come."""
    return (f"{attempt.outcome} {wall_clock(attempt.ended)} UTC after {attempt.ended - attempt.started:.1f} s "
            f"({request.kind} {request.key}: {attempt.detail}) {when(faults, attempt)}")


def no_answers_by_fault(journal, faults):
    """{kind of the fault acting during the attempt (the first one, for part of it at least), or "between
    faults": {outcome: attempts}} of the attempts without an answer."""
    counts = defaultdict(Counter)
    for attempt in (a for r in journal.snapshot() for a in r.attempts if a.outcome in NO_ANSWER):
        current = fault_during(faults, attempt.started, attempt.ended)
        counts["between faults" if current is None else current.kind][attempt.outcome] += 1
    return {kind: dict(outcomes) for kind, outcomes in sorted(counts.items())}


def resets_and_timeouts(journal, faults, limit=20):
    """The first `limit` resets and timeouts, described: a refusal needs no explanation (no connection was made,
    nothing listened), those do."""
    return [describe(r, a, faults) for r in journal.snapshot() for a in r.attempts if a.outcome in (RESET, TIMEOUT)][
        :limit]


def check_responses(report, journal, faults, timeout):
    """Clients saw only 200/201/4xx/503; no answer at all only while the gateway was down; nothing hung."""
    windows = gateway_down_windows(faults)
    pairs = [(r, a) for r in journal.snapshot() for a in r.attempts]
    attempts = [a for _, a in pairs]
    seen = Counter(a.outcome for a in attempts)

    def during_outage(a):
        return any(start - WINDOW_SLACK <= a.ended and a.started <= end + WINDOW_SLACK for start, end in windows)

    report.add("clients saw only 200/201/4xx/503",
               [f"{n} x {o}" for o, n in seen.items() if isinstance(o, int) and not (
                   o in (200, 201, 503) or 400 <= o < 500)],
               ", ".join(f"{o}: {n}" for o, n in sorted(seen.items(), key=str)))
    # A killed container's network namespace vanishes without resetting its connections: a request caught
    # by a gateway container's kill gets no answer until the client's timeout (compose mode). That is no
    # answer while the gateway was down, not a hung request.
    report.add("no answer only while the gateway was down",
               [describe(r, a, faults) for r, a in pairs if a.outcome in (REFUSED, RESET) and not during_outage(a)],
               f"{sum(seen[o] for o in NO_ANSWER)} refused/reset/timed out, all during {len(windows)} gateway kills")
    report.add(f"no request hung (client timeout {timeout:g} s)",
               [describe(r, a, faults) for r, a in pairs
                if (a.outcome == TIMEOUT or a.ended - a.started > timeout + 1) and not during_outage(a)],
               f"slowest {max((a.ended - a.started for a in attempts), default=0):.1f} s")


def check_api(report, base_url, order_db, payment_db, users):
    """The API shows what the databases hold: every order's status (paging through GET /orders) and
    every account's balance."""
    in_db = dict(query(order_db, "SELECT order_id, status FROM orders"))
    through_api, cursor = {}, None
    while True:
        status, body = call(base_url, "GET", f"/orders?limit=1000{f'&cursor={cursor}' if cursor else ''}")
        if status != 200:
            report.add("API shows the databases' orders and balances", [f"GET /orders: {status} {body}"])
            return
        through_api.update((o["order_id"], o["status"]) for o in body["orders"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    balances = dict(query(payment_db, "SELECT user_id, balance FROM accounts"))
    problems = [f"order {o}: API {through_api.get(o)} vs DB {s}" for o, s in in_db.items() if through_api.get(o) != s]
    problems += [f"order {o} only in API" for o in set(through_api) - set(in_db)]
    for user in users:
        status, body = call(base_url, "GET", f"/payments/{user}")
        api_balance = body["account"]["balance"] if status == 200 else f"HTTP {status}"
        if api_balance != balances.get(user, "HTTP 404"):
            problems.append(f"user {user}: API {api_balance} vs DB {balances.get(user)}")
    report.add("API shows the databases' orders and balances", problems,
               f"{len(in_db)} orders, {len(users)} balances")


def check_faults(report, faults, kinds=KINDS):
    """Every planned fault was applied without error, and each of `kinds` at least once."""
    applied = [f for f in faults if f.ended is not None]
    report.add("every fault applied and recovered",
               [f"{f.kind}: {f.error}" for f in faults if f.error] +
               [f"{len(faults) - len(applied)} faults not applied"] * (len(applied) < len(faults)),
               f"{len(applied)} faults")
    seen = {f.kind for f in applied}
    report.add("every kind of fault injected", [f"no {k}" for k in kinds if k not in seen], f"{len(seen)} kinds")


def check_recovery(report, recovery, limit):
    if recovery is None:
        report.add("recovered after the last fault", ["work still pending at the settle deadline"])
    else:
        report.add(f"recovered within {limit:g} s of the last fault",
                   [f"took {recovery:.1f} s"] if recovery > limit else [], f"{recovery:.1f} s")
