"""Retry policies (tenacity) for what PostgreSQL and RabbitMQ outages throw at us."""
import asyncio
import logging

import psycopg2
from aio_pika.exceptions import AMQPConnectionError, ChannelInvalidStateError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from common.runtime.endpoints import reason

logger = logging.getLogger(__name__)

# A dropped or restarting server; also deadlocks / serialization failures (subclasses of OperationalError).
DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, asyncio.TimeoutError, OSError)
BROKER_ERRORS = (AMQPConnectionError, ChannelInvalidStateError, asyncio.TimeoutError, ConnectionError, OSError)


def until_connected(errors: tuple[type[BaseException], ...], server: str = "a server") -> AsyncRetrying:
    """Retry forever with capped backoff: used at start-up, where waiting for a dependency is the job.
    `server` says what is waited for in the log (`PostgreSQL at 127.0.0.1:5432 (orders)`)."""
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential(multiplier=0.2, max=5) + wait_random(0, 0.2),
        stop=stop_never,
        before_sleep=LogWaiting(server),
        reraise=True,
    )


class LogWaiting:
    """tenacity `before_sleep` hook: `waiting for <server>: <reason>` at the first failure, then at most once
    per `every` seconds (the retries themselves start 0.2 s apart), with the attempts and time so far."""

    def __init__(self, server: str, every: float = 5.0) -> None:
        self.server, self.every = server, every
        self.logged_at: float | None = None

    def __call__(self, state: RetryCallState) -> None:
        now = state.seconds_since_start or 0.0
        if self.logged_at is not None and now - self.logged_at < self.every:
            return
        self.logged_at = now
        why = reason(state.outcome.exception() if state.outcome else None)
        if state.attempt_number == 1:
            logger.warning("waiting for %s: %s", self.server, why)
        else:
            logger.warning("waiting for %s: %s (%d attempts, %.0f s)", self.server, why, state.attempt_number, now)


def briefly(errors: tuple[type[BaseException], ...], seconds: float) -> AsyncRetrying:
    """Retry for up to `seconds`, then re-raise the last error: for work that has a caller waiting."""
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential(multiplier=0.05, max=1) + wait_random(0, 0.05),
        stop=stop_after_delay(seconds),
        reraise=True,
    )
