"""RabbitMQ: each service's user with the permissions its queues need, and an operator user for dead letters, as
RabbitMQ definitions (JSON: users, the vhost, permissions), imported through `rabbitmqctl import_definitions`
(reading standard input, so no password is on a command line) or written to a file (mode 600) for a broker to
import (`rabbitmqctl import_definitions FILE`, or `load_definitions` in rabbitmq.conf at boot). RabbitMQ hashes a
definition's plaintext `password` on import (checked with 3.10). Importing adds and overwrites: it never removes
a user, vhost or permission that is not named.

The permissions (regular expressions over resource names; RabbitMQ's access-control guide):

    service   configure ^(outbox_(os|ps)(\\.dead)?|node_probe)$
                                                   both services declare all four queues at start-up, and the
                                                   queue their node probes publish to (common.broker.node_probe)
              write     ^amq\\.default$              every publish goes through the default exchange
              read      ^outbox_(os|ps)$            consuming; and declaring a queue with a dead-letter exchange
                                                   needs read on the queue (and write on that exchange)
    operator  configure ^$ (nothing)                the dead-letter tool only looks queues up (passive declare)
              write     ^amq\\.default$              replays
              read      ^outbox_(os|ps)\\.dead$      the dead letters

Both services get the same permissions: RabbitMQ checks a publish against the exchange, never the routing key,
so write on `amq.default` lets either user route a message into any queue of the vhost. What stops a forged
message is the consumers' `user_id` check (`common.broker.consumer`), not these permissions."""
import json
import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from yarl import URL

from common.broker.urls import node_urls
from ops.provision import CommandFailed, ProvisioningError


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str


SERVICE = Permissions(configure=r"^(outbox_(os|ps)(\.dead)?|node_probe)$", write=r"^amq\.default$",
                      read=r"^outbox_(os|ps)$")
OPERATOR = Permissions(configure="^$", write=r"^amq\.default$", read=r"^outbox_(os|ps)\.dead$")

# Runs `rabbitmqctl ARGS` with `input` on its standard input; returns its output; raises `CommandFailed`.
Rabbitmqctl = Callable[[Sequence[str], str | None], str]


@dataclass(frozen=True)
class BrokerUser:
    name: str
    password: str
    vhost: str

    @classmethod
    def from_url(cls, url: str) -> "BrokerUser":
        """The user, password and vhost of an AMQP URL (the first of a comma-separated list of a cluster's nodes;
        the vhost as aiormq reads it, "/" when the path is empty). Raises `ProvisioningError` without a user or
        a password (RabbitMQ refuses password logins for a user whose password is empty)."""
        parsed = URL(node_urls(url)[0])
        if not parsed.user or not parsed.password:
            raise ProvisioningError(f"the AMQP URL of {parsed.host}{parsed.path} names no user or no password")
        vhost = "/" if parsed.path in ("", "/") else parsed.path[1:].replace("%2F", "/")
        return cls(parsed.user, parsed.password, vhost)


def definitions(users: Sequence[tuple[BrokerUser, Permissions]],
                extra_permissions: Sequence[tuple[str, Permissions]] = ()) -> dict[str, Any]:
    """RabbitMQ definitions of `users` (no tags: no management UI or HTTP API) with their permissions on their
    vhost, and `extra_permissions` there for existing users (e.g. a test harness's administrator). Raises
    `ProvisioningError` if the users do not share one vhost or two share a name."""
    names, vhosts = [user.name for user, _ in users], {user.vhost for user, _ in users}
    if len(set(names)) < len(names):
        raise ProvisioningError(f"the broker users must differ: {', '.join(names)}")
    if len(vhosts) != 1:
        raise ProvisioningError(f"the broker URLs name different vhosts: {', '.join(sorted(vhosts))}")
    vhost = vhosts.pop()
    granted = [(user.name, permissions) for user, permissions in users] + list(extra_permissions)
    return {"users": [{"name": user.name, "password": user.password, "tags": []} for user, _ in users],
            "vhosts": [{"name": vhost}],
            "permissions": [{"user": name, "vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read}
                            for name, p in granted]}


def rabbitmqctl_command(prefix: str, timeout: float = 120) -> Rabbitmqctl:
    """A `Rabbitmqctl` running `prefix` (split like a shell would: "rabbitmqctl", "sudo rabbitmqctl -n rabbit@h",
    "docker compose exec -T rabbitmq rabbitmqctl") followed by the arguments."""
    command = shlex.split(prefix)

    def run(args: Sequence[str], input: str | None = None) -> str:
        try:
            done = subprocess.run([*command, *args], input=input, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CommandFailed(f"{prefix} {args[0]}: {exc}") from None
        if done.returncode:
            raise CommandFailed(f"{prefix} {args[0]} failed ({done.returncode}): "
                                    f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout
    return run


def check_not_administrators(names: Sequence[str], rabbitmqctl: Rabbitmqctl) -> None:
    """Raises `ProvisioningError` if one of `names` is an existing user with tags (administrator, management,
    ...): importing it would strip them and change its password."""
    tagged = {user["user"]: user["tags"] for user in json.loads(rabbitmqctl(["list_users", "--formatter", "json"],
                                                                             None))}
    named = [f"{name} ({', '.join(map(str, tagged[name]))})" for name in names if tagged.get(name)]
    if named:
        raise ProvisioningError(f"{', '.join(named)} already exists with tags: a service or the operator needs a "
                                "user of its own (provisioning would strip its tags)")


def import_definitions(defs: dict[str, Any], rabbitmqctl: Rabbitmqctl) -> None:
    """Import `defs` through `rabbitmqctl import_definitions`, reading standard input (no file, no argument
    holds a password)."""
    rabbitmqctl(["import_definitions"], json.dumps(defs))


def write_definitions(defs: dict[str, Any], path: str) -> None:
    """Write `defs` to `path`, readable by its owner only (it holds the passwords in clear)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(descriptor, "w") as out:
        json.dump(defs, out, indent=2)
        out.write("\n")


def summary(defs: dict[str, Any]) -> str:
    """What `defs` grants, without the passwords."""
    return "; ".join(f"{p['user']} on vhost {p['vhost']}: configure {p['configure']} write {p['write']} "
                     f"read {p['read']}" for p in defs["permissions"])
