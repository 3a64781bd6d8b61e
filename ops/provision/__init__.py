"""Least-privilege credentials for the two services: each its own PostgreSQL role owning its database alone, and
its own RabbitMQ user allowed only its queues; an operator user for dead letters. Idempotent: run it again to
change a password or to bring an older deployment (databases created by the superuser) under the roles.

`postgres.provision` (an admin DSN and a `DatabaseOwner` per service) and `rabbitmq.definitions` (RabbitMQ
definitions JSON: users, vhost, permissions), imported by `rabbitmq.import_definitions` through a `rabbitmqctl`
command or written to a file, are what `python -m ops.provision` runs; `harness.stack` runs them too, for each
test stack. docs/security-credentials.md explains the roles, users and permissions and why."""


class ProvisioningError(Exception):
    """Provisioning cannot be done as asked (a superuser or administrator named for a service, two services
    sharing a name, a command that failed): said before anything is changed where it can be checked first."""


class CommandFailed(ProvisioningError):
    """A command provisioning runs (rabbitmqctl) failed or could not be run."""
