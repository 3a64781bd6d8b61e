"""Retry policies (tenacity) for what PostgreSQL and RabbitMQ outages throw at us."""
import asyncio
import logging

import psycopg2
from aio_pika.exceptions import AMQPConnectionError, ChannelInvalidStateError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

logger = logging.getLogger(__name__)

# A dropped or restarting server; also deadlocks / serialization failures (subclasses of OperationalError).
DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, asyncio.TimeoutError, OSError)
BROKER_ERRORS = (AMQPConnectionError, ChannelInvalidStateError, asyncio.TimeoutError, ConnectionError, OSError)


def until_connected(errors):
    """Retry forever with capped backoff: used at start-up, where waiting for a dependency is the job."""
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential(multiplier=0.2, max=5) + wait_random(0, 0.2),
        stop=stop_never,
        before_sleep=before_sleep_log(logger, logging.WARNING),
        reraise=True,
    )


def briefly(errors, seconds):
    """Retry for up to `seconds`, then re-raise the last error: for work that has a caller waiting."""
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential(multiplier=0.05, max=1) + wait_random(0, 0.05),
        stop=stop_after_delay(seconds),
        reraise=True,
    )
