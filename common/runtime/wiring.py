"""What a service's `bootstrap` builds from a database and a broker (`Wiring`), and what the process that runs it
(`common.runtime.lifecycle.BackendService`) starts, serves, consumes and stops."""
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from tornado import web

from common.broker.consumer import HandleBatch, Probe
from common.broker.packing import EntryType


class Worker(Protocol):
    """A background loop of a service (`common.runtime.worker.BgWorker`, the LISTEN connection)."""

    def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class Consumption:
    """A queue a service consumes, what it does with each batch (see `common.broker.consumer.BatchConsumer`), and the
    broker users it takes messages from (a message's `user_id`; empty names are left out)."""
    queue: str
    kind: EntryType  # what the entries of its messages are
    handle_batch: HandleBatch
    publishers: tuple[str, ...]
    probe: Probe | None = None  # of the database `handle_batch` writes to: the consumer steps aside while it fails


@dataclass
class Wiring:
    """What a service is made of once built from a database and a broker (its `bootstrap`)."""
    app: web.Application
    admin_app: web.Application  # /health, /ready, /metrics, on the admin port
    workers: dict[str, Worker] = field(default_factory=dict)  # by role
    consumers: list[Consumption] = field(default_factory=list)
    # Awaited before the workers start.
    startup: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    # Called when shutdown begins, before the server drains: what holds requests open (waits) lets them go, so that
    # they are answered within the drain's grace.
    draining: list[Callable[[], None]] = field(default_factory=list)
