"""What the operators document for the resources deploy/kubernetes uses, for a check without their CRDs.

Each entry maps a field path of `spec` to what it accepts: a type, or a tuple of allowed values. A field the
manifests set must be listed (a misspelt or invented field is an error, as `kubectl apply` with the CRD's
schema would make it); fields below a path whose type is `dict` are Kubernetes' own types (`resources`:
ResourceRequirements) and not looked into. Sources, read 2026-12-01:
- CloudNativePG: docs/src/cloudnative-pg.v1.md (API reference: ClusterSpec, BootstrapInitDB, StorageConfiguration,
  AffinityConfiguration, PostgresConfiguration, SynchronousReplicaConfiguration — `synchronous` since 1.24,
  `dataDurability` since 1.25 — and DatabaseSpec, the Database resource since 1.25), docs/src/applications.md
  (Services `<cluster>-rw` / `-ro` / `-r`; the initdb secret is the application's), docs/src/bootstrap.md.
- RabbitMQ Cluster Operator: rabbitmq-website kubernetes/operator/using-operator (spec.replicas,
  spec.persistence.storage, spec.resources; Service `<name>`, Secret `<name>-default-user` with `username`,
  `password`, `host`, `port`), cluster-operator internal/resource/default_user_secret.go (the password is
  base64.URLEncoding of 24 random bytes: URL-safe), and the TLS section (pods
  `<name>-server-N.<name>-nodes.<namespace>.svc`).
- Least privilege, read 2026-12-06 (the operators' repositories as fetched then): CloudNativePG 1.25's API reference
  (ManagedConfiguration `roles`; RoleConfiguration `name`, `ensure`, `comment`, `login`, `superuser`, `createdb`,
  `createrole`, `inherit`, `passwordSecret`; PostgresConfiguration `pg_hba`), docs/src/declarative_role_management.md
  (a role's passwordSecret is basic-auth with `username` = the role; label it `cnpg.io/reload: "true"` for a
  change to apply at once), docs/src/postgresql_conf.md (user pg_hba lines come after the fixed rules and before
  `host all all all scram-sha-256`). RabbitMQ Messaging Topology Operator: api/v1beta1/user_types.go (UserSpec
  `rabbitmqClusterReference`, `importCredentialsSecret` with keys `username` and `password`, `tags`),
  permission_types.go (PermissionSpec `vhost`, `user` or `userReference`, `permissions.configure/write/read`:
  regular expressions, unset = nothing), rabbitmq_cluster_reference.go (`name`); rabbitmq-website
  kubernetes/operator/using-topology-operator.md (since 1.20 a Secret it reads must carry the label
  `rabbitmq.com/topology-operator: "true"`; a changed password is applied by itself) and docs/access-control.md
  (which operation needs which permission; the default exchange is `amq.default` for permission checks).

Lists: `path[]` is an item of the list at `path` (its fields `path[].field`)."""

QUANTITY = str

OPERATORS = {
    ("postgresql.cnpg.io/v1", "Cluster"): {
        "instances": int,
        "imageName": str,
        "bootstrap": dict,
        "bootstrap.initdb": dict,
        "bootstrap.initdb.database": str,
        "bootstrap.initdb.owner": str,
        "bootstrap.initdb.secret": dict,
        "bootstrap.initdb.secret.name": str,
        "managed": dict,
        "managed.roles": list,
        "managed.roles[]": dict,
        "managed.roles[].name": str,
        "managed.roles[].ensure": ("present", "absent"),
        "managed.roles[].comment": str,
        "managed.roles[].login": bool,
        "managed.roles[].superuser": bool,
        "managed.roles[].createdb": bool,
        "managed.roles[].createrole": bool,
        "managed.roles[].inherit": bool,
        "managed.roles[].connectionLimit": int,
        "managed.roles[].passwordSecret": dict,
        "managed.roles[].passwordSecret.name": str,
        "storage": dict,
        "storage.size": QUANTITY,
        "storage.storageClass": str,
        "resources": dict,
        "postgresql": dict,
        "postgresql.parameters": dict,
        "postgresql.pg_hba": list,
        "postgresql.pg_hba[]": str,
        "postgresql.synchronous": dict,
        "postgresql.synchronous.method": ("any", "first"),
        "postgresql.synchronous.number": int,
        "postgresql.synchronous.dataDurability": ("required", "preferred"),
        "affinity": dict,
        "affinity.enablePodAntiAffinity": bool,
        "affinity.topologyKey": str,
        "affinity.podAntiAffinityType": ("preferred", "required"),
    },
    ("postgresql.cnpg.io/v1", "Database"): {
        "name": str,
        "owner": str,
        "cluster": dict,
        "cluster.name": str,
    },
    ("rabbitmq.com/v1beta1", "User"): {
        "rabbitmqClusterReference": dict,
        "rabbitmqClusterReference.name": str,
        "importCredentialsSecret": dict,
        "importCredentialsSecret.name": str,
        "tags": list,
        "tags[]": ("management", "policymaker", "monitoring", "administrator"),
    },
    ("rabbitmq.com/v1beta1", "Permission"): {
        "vhost": str,
        "user": str,
        "userReference": dict,
        "userReference.name": str,
        "permissions": dict,
        "permissions.configure": str,
        "permissions.write": str,
        "permissions.read": str,
        "rabbitmqClusterReference": dict,
        "rabbitmqClusterReference.name": str,
    },
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): {
        "replicas": int,
        "image": str,
        "persistence": dict,
        "persistence.storage": QUANTITY,
        "persistence.storageClassName": str,
        "resources": dict,
    },
}
# Opaque below these: Kubernetes' own types, which the operators embed unchanged.
OPAQUE = {"resources", "postgresql.parameters"}


def problems(doc):
    """Every field of `doc`'s spec that its operator does not document, or whose value it would not take."""
    fields = OPERATORS.get((doc["apiVersion"], doc["kind"]))
    if fields is None:
        return [f"{doc['apiVersion']} {doc['kind']} is not an operator resource these manifests use"]
    found = []
    for path, value in leaves(doc.get("spec", {})):
        accepted = fields.get(path)
        if accepted is None:
            found.append(f"{doc['kind']} {doc['metadata']['name']}: spec.{path} is not a documented field")
        elif isinstance(accepted, tuple) and value not in accepted:
            found.append(f"{doc['kind']} {doc['metadata']['name']}: spec.{path} = {value!r}, not one of {accepted}")
        elif isinstance(accepted, type) and not (isinstance(value, accepted) and not
                                                 (accepted is int and isinstance(value, bool))):
            found.append(f"{doc['kind']} {doc['metadata']['name']}: spec.{path} = {value!r} is not {accepted.__name__}")
    return found


def leaves(mapping, prefix=""):
    """(dotted path, value) for every field, descending into mappings (except the opaque ones) and lists."""
    for key, value in mapping.items():
        path = prefix + key
        yield path, value
        if path in OPAQUE:
            continue
        if isinstance(value, dict):
            yield from leaves(value, path + ".")
        elif isinstance(value, list):
            for item in value:
                yield path + "[]", item
                if isinstance(item, dict):
                    yield from leaves(item, path + "[].")
