"""The chaos runner's bookkeeping of what clients saw: an attempt without an answer keeps what was raised, and
one outside a gateway kill fails its row naming the request and the fault that was acting then."""
import errno
import http.client
import urllib.error

from harness.chaos.checks import check_responses, no_answers_by_fault, resets_and_timeouts
from harness.chaos.faults import Fault
from harness.chaos.workload import REFUSED, RESET, TIMEOUT, Attempt, Journal, Request, no_answer
from harness.invariants import Report

NO_ANSWER_ROW = "no answer only while the gateway was down"


def fault(kind, started, ended):
    return Fault(kind, gap=1.0, pause=1.0, started=started, ended=ended)


FAULTS = [fault("kill gateway", 100.0, 103.0), fault("rabbitmq stop_app", 110.0, 118.0),
          fault("postgres restart", 130.0, 134.0)]


def journal_of(*attempts):
    journal = Journal()
    for number, attempt in enumerate(attempts):
        journal.add(Request("order", 1, key=f"run-{number}", attempts=[attempt]))
    return journal


def checked(journal):
    report = Report()
    check_responses(report, journal, FAULTS, timeout=20.0)
    return report.check(NO_ANSWER_ROW)


def test_a_reset_while_the_gateway_is_up_fails_naming_the_request_what_was_raised_and_the_fault_then():
    reset = Attempt(112.0, 112.5, RESET, "RemoteDisconnected: Remote end closed connection without response")
    row = checked(journal_of(Attempt(111.0, 111.1, 201), reset))
    assert not row.ok
    assert "order run-1: RemoteDisconnected: Remote end closed connection without response" in row.detail
    assert row.detail.endswith("during rabbitmq stop_app")
    assert " UTC after 0.5 s " in row.detail


def test_a_reset_between_faults_says_how_long_after_which_one():
    row = checked(journal_of(Attempt(120.0, 121.5, RESET, "ConnectionResetError: [Errno 104]")))
    assert not row.ok
    assert row.detail.endswith("3.5 s after rabbitmq stop_app")


def test_no_answer_while_the_gateway_is_killed_or_just_around_it_passes():
    row = checked(journal_of(Attempt(101.0, 101.2, REFUSED, "ConnectionRefusedError: [Errno 111]"),
                             Attempt(99.5, 99.8, RESET, "ConnectionResetError: [Errno 104]"),
                             Attempt(103.0, 103.9, RESET, "RemoteDisconnected: ...")))
    assert row.ok, row.detail
    assert row.detail == "3 refused/reset/timed out, all during 1 gateway kills"


def test_attempts_without_an_answer_are_counted_by_the_fault_acting_during_them():
    # The third: a connection attempted while the gateway was down, that failed after it was back.
    journal = journal_of(Attempt(101.0, 101.2, REFUSED), Attempt(101.5, 102.0, RESET), Attempt(102.5, 107.0, REFUSED),
                         Attempt(112.0, 113.0, RESET), Attempt(125.0, 126.0, TIMEOUT), Attempt(126.0, 126.1, 503))
    assert no_answers_by_fault(journal, FAULTS) == {"between faults": {TIMEOUT: 1},
                                                    "kill gateway": {REFUSED: 2, RESET: 1},
                                                    "rabbitmq stop_app": {RESET: 1}}


def test_what_the_client_library_raised_decides_the_outcome_and_is_kept():
    refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    assert no_answer(refused) == (REFUSED, "ConnectionRefusedError: [Errno 111] Connection refused")
    assert no_answer(urllib.error.URLError(TimeoutError("timed out"))) == (TIMEOUT, "TimeoutError: timed out")
    # http.client raises it when the server closes the connection before any byte of an answer.
    closed = http.client.RemoteDisconnected("Remote end closed connection without response")
    assert no_answer(closed) == (RESET, "RemoteDisconnected: Remote end closed connection without response")
    assert no_answer(ConnectionResetError(104, "Connection reset by peer"))[0] == RESET


def test_no_route_to_host_while_connecting_is_no_connection_but_while_waiting_for_the_answer_is_a_reset():
    unreachable = OSError(errno.EHOSTUNREACH, "No route to host")
    # urllib wraps what fails while connecting (or sending) in a URLError: the request never got through.
    assert no_answer(urllib.error.URLError(unreachable)) == (REFUSED, "OSError: [Errno 113] No route to host")
    # Raised while reading: the request may have arrived before the gateway's address went away.
    assert no_answer(unreachable) == (RESET, "OSError: [Errno 113] No route to host")


def test_every_reset_and_timeout_is_described_but_refused_connections_are_not():
    journal = journal_of(Attempt(101.0, 101.2, REFUSED), Attempt(101.5, 102.0, RESET, "ConnectionResetError: x"),
                         Attempt(125.0, 145.0, TIMEOUT, "TimeoutError: timed out"),
                         Attempt(102.0, 122.1, TIMEOUT, "TimeoutError: timed out"))
    described = resets_and_timeouts(journal, FAULTS)
    assert len(described) == 3
    assert described[0].startswith("reset ") and described[0].endswith("during kill gateway")
    assert described[1].endswith("(order run-2: TimeoutError: timed out) during postgres restart")
    # Begun while the gateway was down, it hung into the next fault: the kill is what explains it.
    assert described[2].endswith("(order run-3: TimeoutError: timed out) during kill gateway")
