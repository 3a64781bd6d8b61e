"""Least-privilege credentials for one run of the stack (`harness.stack.Stack`): the services' own PostgreSQL roles
`<run_id>_order` / `<run_id>_payment` owning the run's databases, and broker users of those names plus
`<run_id>_operator` in the run's vhost, made by `ops.provision` as a deployment's are, and dropped afterwards.
The harness's administrator (the base AMQP URL's user) keeps every permission on the vhost, for tests that
inspect or tamper with the queues."""
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from harness.infra import InfraError
from ops.provision import postgres, rabbitmq

SERVICES = ("order", "payment")
ALL = rabbitmq.Permissions(".*", ".*", ".*")


@dataclass(frozen=True)
class RunCredentials:
    run_id: str
    passwords: dict = field(default_factory=lambda: {who: secrets.token_hex(16)
                                                     for who in (*SERVICES, "operator")})

    def name(self, who):
        """The role or broker user of "order", "payment" or "operator"."""
        return f"{self.run_id}_{who}"

    def dsn(self, infra, who, database):
        return infra.dsn(database, self.name(who), self.passwords[who])

    def amqp_url(self, infra, who, vhost, heartbeat=None):
        return infra.amqp_url(vhost, heartbeat, self.name(who), self.passwords[who])

    def env(self):
        """The settings naming the publishers the services take messages from."""
        return {"ORDER_SVC_BROKER_USER": self.name("order"), "PAYMENT_SVC_BROKER_USER": self.name("payment"),
                "BROKER_OPERATOR_USER": self.name("operator")}

    def provision(self, infra, databases, vhost):
        """Create the roles owning `databases` ({"order": name, "payment": name}), the vhost, the broker users and
        their permissions. Raises `ops.provision.ProvisioningError`, `psycopg2.Error` or `InfraError`."""
        postgres.provision(infra.pg_admin_dsn, [postgres.DatabaseOwner(self.name(who), self.passwords[who],
                                                                       databases[who]) for who in SERVICES],
                           say=lambda _line: None)
        users = [(rabbitmq.BrokerUser(self.name(who), self.passwords[who], vhost), rabbitmq.SERVICE)
                 for who in SERVICES]
        users.append((rabbitmq.BrokerUser(self.name("operator"), self.passwords["operator"], vhost),
                      rabbitmq.OPERATOR))
        defs = rabbitmq.definitions(users, extra_permissions=[(infra.amqp_user, ALL)])
        rabbitmq.import_definitions(defs, lambda args, input: infra.rabbitmqctl(*args, input=input))

    def drop(self, infra):
        """Drop the roles (their databases must be gone) and delete the broker users, whichever exist."""
        for who in SERVICES:
            infra.drop_role(self.name(who))
        names = [self.name(who) for who in (*SERVICES, "operator")]
        # rabbitmqctl deletes one user per call, each a second or so: at once, not one after the other.
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda name: _delete_user(infra, name), names))


def _delete_user(infra, name):
    try:
        infra.rabbitmqctl("delete_user", name)
    except InfraError:
        pass  # never made: provisioning failed before it
