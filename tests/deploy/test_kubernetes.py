"""deploy/kubernetes, checked offline (no cluster can run here): both overlays render, every document validates
against the Kubernetes API schemas in strict mode, the operators' resources use only fields their operators
document, the manifests agree with the code they deploy, and they are locked down: network policies (default deny,
then each flow, checked by evaluating the policies), TLS at the Ingress, no committed credential, the Pod Security
Standard `restricted`, authentication on, least-privilege credentials per service and for the operators' dead-letter
tool."""
import ast
import dataclasses
import inspect
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from psycopg2.extensions import parse_dsn
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

import common.broker.queues
import common.runtime.config
import common.web.app
import gateway
import ops.provision.rabbitmq
from common.broker.connection import ORDER_REQUESTS, PAYMENT_RESULTS
from common.broker.dead_letter_headers import dead_letter_queue
from common.broker.node_probe import PROBE_QUEUE
from common.runtime.lifecycle import SHUTDOWN_TIMEOUT
from common.web.envelope import NotFoundHandler
from ops.dead_letters.__main__ import parse_args as dead_letters_args
from tests.deploy import operator_fields
from tests.deploy.manifests import (
    KUSTOMIZE_ROOT,
    OVERLAYS,
    ROOT,
    SECRET_PLACEHOLDER,
    SECRETS_SCRIPT,
    Address,
    Pod,
    connection_allowed,
    container_env,
    find,
    generated_secret_files,
    one,
    pod_template,
    pod_templates,
    render_overlay,
    secret_data,
    secret_refs,
    selects,
)

KUBERNETES_VERSION = "1.32.0"
OPERATOR_KINDS = {kind for _, kind in operator_fields.OPERATORS}
# Deployment name -> the process it runs (the compose file's service of the same name) and its port setting.
PROCESSES = {"gateway": "gateway_port", "order": "order_svc_port", "payment": "payment_svc_port"}
# Deployment name -> the variable of its admin port (/health, /ready, /metrics).
ADMIN_PORTS = {"gateway": "GATEWAY_ADMIN_PORT", "order": "ORDER_SVC_ADMIN_PORT", "payment": "PAYMENT_SVC_ADMIN_PORT"}
# Variables the ConfigMap may hold beyond .env's native part and what load_settings reads: none.
EXPECTED_BEYOND_ENV = set()
# The least-privilege credentials: Deployment -> (PostgreSQL role and RabbitMQ user, its database's Secret, its
# broker Secret, its database).
CREDENTIALS = {"order": ("shop-order", "shop-order-db", "shop-order-amqp", "orders"),
               "payment": ("shop-payment", "shop-payment-db", "shop-payment-amqp", "payments")}
# The operators' RabbitMQ user (dead letters: list, show, replay, purge), its Secret and the one-off pods' template.
OPERATOR_LOGIN, OPERATOR_SECRET, DEAD_LETTERS = "shop-operator", "shop-operator-amqp", "dead-letters"
# Each file scripts/k8s-secrets.sh writes per overlay (one Secret each) -> its username.
SECRET_FILES = {"shop-order-db.env": "shop-order", "shop-payment-db.env": "shop-payment",
                "shop-order-amqp.env": "shop-order", "shop-payment-amqp.env": "shop-payment",
                f"{OPERATOR_SECRET}.env": OPERATOR_LOGIN}
DOCS = ROOT / "docs" / "security-kubernetes.md"


@pytest.fixture(scope="module", params=[*OVERLAYS, "ha+ingress"])
def rendered(request, tmp_path_factory):
    """(variant, documents, the rendered YAML's path) of each overlay, and of ha with the optional Ingress."""
    overlay, _, component = request.param.partition("+")
    docs = render_overlay(overlay, components=[component] if component else ())
    path = tmp_path_factory.mktemp("rendered") / f"{request.param}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return request.param, docs, path


def test_every_document_validates_against_the_kubernetes_schemas_in_strict_mode(rendered):
    variant, docs, path = rendered
    done = subprocess.run([Path(sys.executable).with_name("kubernetes-validate"), "--strict",
                           "-k", KUBERNETES_VERSION, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = [line for line in done.stdout.splitlines() if line.startswith("INFO") and " passed " in line]
    core = [d for d in docs if d["kind"] not in OPERATOR_KINDS]
    # Each Kubernetes document passed; only the operators' kinds (checked below) have no schema there.
    assert len(passed) == len(core), done.stdout
    unknown = [line for line in done.stdout.splitlines() if "Couldn't find schema" in line]
    assert len(unknown) == len(docs) - len(core), done.stdout
    assert all(any(f"kind {kind} " in line for kind in OPERATOR_KINDS) for line in unknown), unknown


def test_operator_resources_use_only_the_fields_their_operators_document(rendered):
    _, docs, _ = rendered
    operator_docs = [d for d in docs if d["kind"] in OPERATOR_KINDS]
    assert {d["kind"] for d in operator_docs} == {"Cluster", "Database", "RabbitmqCluster", "User", "Permission"}
    assert [p for d in operator_docs for p in operator_fields.problems(d)] == []


def test_ha_runs_three_postgresql_instances_with_synchronous_replication_and_three_rabbitmq_nodes():
    docs = render_overlay("ha")
    cluster = one(docs, "Cluster")["spec"]
    assert cluster["instances"] == 3
    assert cluster["postgresql"]["synchronous"] == {"method": "any", "number": 1, "dataDurability": "required"}
    assert cluster["affinity"]["podAntiAffinityType"] == "required"
    assert one(docs, "RabbitmqCluster")["spec"]["replicas"] == 3
    assert one(docs, "ConfigMap", "shop-config")["data"]["QUEUE_TYPE"] == "quorum"
    for deployment in find(docs, "Deployment"):
        assert deployment["spec"]["replicas"] >= 3
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {(s["topologyKey"], s["whenUnsatisfiable"]) for s in spread} == {
            ("kubernetes.io/hostname", "DoNotSchedule")}


def test_dev_runs_single_instances_with_classic_queues():
    docs = render_overlay("dev")
    assert one(docs, "Cluster")["spec"]["instances"] == 1
    assert "synchronous" not in one(docs, "Cluster")["spec"].get("postgresql", {})
    assert one(docs, "RabbitmqCluster")["spec"]["replicas"] == 1
    assert one(docs, "ConfigMap", "shop-config")["data"]["QUEUE_TYPE"] == "classic"


TYPED_READS = ("number", "choice", "flag")


def variables_load_settings_reads():
    """Every environment variable common/runtime/config.py's load_settings reads: env["X"], env.get("X"), urls("X"),
    and the checked reads number(env, "X", ...), choice(env, "X", ...), flag(env, "X", ...)."""
    tree = ast.parse(inspect.getsource(common.runtime.config.load_settings))
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "env"
                and isinstance(node.slice, ast.Constant)):
            names.add(node.slice.value)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name)
                    and func.value.id == "env") or (isinstance(func, ast.Name) and func.id == "urls"):
                names.add(node.args[0].value)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TYPED_READS
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)):
            names.add(node.args[1].value)
    return names


def native_env_variables():
    """The variables of .env a native run reads (the part above the docker compose only block)."""
    text = (ROOT / ".env").read_text().split("# --- docker compose only")[0]
    return {line.partition("=")[0].strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and "=" in line}


def test_the_configmap_has_the_same_variables_as_env():
    read = variables_load_settings_reads()
    assert len(read) >= 20, f"parsing load_settings found only {sorted(read)}"
    for overlay in OVERLAYS:
        data = one(render_overlay(overlay), "ConfigMap", "shop-config")["data"]
        assert set(data) == native_env_variables() | read


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay_docs(request):
    return request.param, render_overlay(request.param)


def test_every_process_gets_every_variable_it_reads_and_its_settings_load(overlay_docs, monkeypatch):
    _, docs = overlay_docs
    # The image has no .env (Dockerfile): the pod's environment alone must do.
    monkeypatch.setattr(common.runtime.config, "read_env_file", lambda *a, **k: {})
    for name in PROCESSES:
        env = container_env(docs, one(docs, "Deployment", name))
        assert variables_load_settings_reads() <= set(env), name
        common.runtime.config.load_settings(env)


def test_probes_and_the_scrape_use_the_admin_port_and_its_routes(overlay_docs, monkeypatch):
    _, docs = overlay_docs
    monkeypatch.setattr(common.runtime.config, "read_env_file", lambda *a, **k: {})
    for name, port_setting in PROCESSES.items():
        deployment = one(docs, "Deployment", name)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = container_env(docs, deployment)
        settings = common.runtime.config.load_settings(env)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == getattr(settings, port_setting), name
        admin_port = int(env[ADMIN_PORTS[name]])
        # Once the admin port lands, load_settings reads it too.
        assert getattr(settings, port_setting.replace("_port", "_admin_port"), admin_port) == admin_port, name
        assert ports["admin"] == admin_port, name
        app = admin_application_of(container["command"], settings)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            http = container[probe]["httpGet"]
            assert http["port"] == "admin", (name, probe)
            assert has_route(app, http["path"]), f"{name}: no route for {probe} {http['path']}"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == ports["admin"], "/metrics is on the admin port only"
        assert has_route(app, annotations["prometheus.io/path"])


def has_route(app, path):
    request = HTTPServerRequest(start_line=RequestStartLine("GET", path, "HTTP/1.1"),
                                headers=HTTPHeaders({"Host": "pod"}))
    return app.find_handler(request).handler_class is not NotFoundHandler


def admin_application_of(command, settings):
    """The Tornado application the container's command serves on its admin port (built without connecting
    anything)."""
    if command == ["python", "gateway.py"]:
        return gateway.make_admin_app(settings)
    if command in (["python", "-m", "order_svc"], ["python", "-m", "payment_svc"]):
        return common.web.app.service_admin_application(settings, None, None, None, None)
    raise AssertionError(f"unknown command {command}")


def test_image_command_and_user_are_what_the_dockerfile_builds(overlay_docs):
    _, docs = overlay_docs
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(dockerfile.split("--uid")[1].split()[0])
    for name in PROCESSES:
        service = compose["services"][name]
        assert service["build"] == ".", "the compose file builds the app image from the Dockerfile"
        pod = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"].rpartition(":")[0] == service["image"].rpartition(":")[0]
        assert container["command"] == service["command"]
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_shutdown_fits_in_the_grace_period_and_each_part_has_its_budget_and_limits(overlay_docs):
    _, docs = overlay_docs
    for name in PROCESSES:
        deployment = one(docs, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + SHUTDOWN_TIMEOUT, name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"])
        assert deployment["spec"]["replicas"] >= 2
        labels = pod.get("labels") or deployment["spec"]["template"]["metadata"]["labels"]
        budget = one(docs, "PodDisruptionBudget", name)["spec"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        assert budget["minAvailable"] < deployment["spec"]["replicas"], "a drain must be able to evict one"
        service = one(docs, "Service", name)["spec"]
        assert service["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in service["ports"]] == ["http", "admin"]
    for name in ("gateway", "order"):
        hpa = one(docs, "HorizontalPodAutoscaler", name)["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
        assert hpa["minReplicas"] >= 2


def test_each_service_logs_in_with_its_own_role_and_broker_user(overlay_docs, monkeypatch):
    overlay, docs = overlay_docs
    monkeypatch.setattr(common.runtime.config, "read_env_file", lambda *a, **k: {})
    cluster, rabbit = one(docs, "Cluster"), one(docs, "RabbitmqCluster")
    spec, initdb = cluster["spec"], cluster["spec"]["bootstrap"]["initdb"]
    roles = {role["name"]: role for role in spec["managed"]["roles"]}
    owners = {initdb["database"]: initdb["owner"],
              **{d["spec"]["name"]: d["spec"]["owner"] for d in find(docs, "Database")
                 if d["spec"]["cluster"]["name"] == cluster["metadata"]["name"]}}
    name = rabbit["metadata"]["name"]
    nodes = {f"{name}-server-{i}.{name}-nodes" for i in range(rabbit["spec"]["replicas"])}
    for service, dsn_setting in (("order", "order_db_dsn"), ("payment", "payment_db_dsn")):
        login, db_secret, amqp_secret, database = CREDENTIALS[service]
        deployment = one(docs, "Deployment", service)
        assert secret_refs(deployment) == {(db_secret, "username"), (db_secret, "password"),
                                           (amqp_secret, "username"), (amqp_secret, "password")}
        # PostgreSQL: a managed role whose password is the Secret's (basic-auth, username = the role), owning its
        # database and no other, with no right to create databases or roles.
        secret = one(docs, "Secret", db_secret)
        assert secret["type"] == "kubernetes.io/basic-auth"
        assert secret_data(secret)["username"] == login
        assert secret["metadata"]["labels"]["cnpg.io/reload"] == "true", "a rotated password applies at once"
        role = roles[login]
        assert role["passwordSecret"] == {"name": db_secret}
        assert role["login"] is True and role.get("ensure", "present") == "present"
        assert not any(role.get(power) for power in ("superuser", "createdb", "createrole", "replication", "bypassrls"))
        assert [db for db, owner in owners.items() if owner == login] == [database]
        if initdb["owner"] == login:
            assert initdb["secret"]["name"] == db_secret, "initdb creates the owner with the same password"
        # RabbitMQ: a User with the Secret's credentials, no management tag.
        amqp = one(docs, "Secret", amqp_secret)
        assert secret_data(amqp)["username"] == login
        assert amqp["metadata"]["labels"]["rabbitmq.com/topology-operator"] == "true", "the operator reads no other"
        user = one(docs, "User", login)
        assert user["spec"]["importCredentialsSecret"] == {"name": amqp_secret}
        assert user["spec"]["rabbitmqClusterReference"] == {"name": name}
        assert not user["spec"].get("tags"), "no HTTP API, no management UI"
        # The DSN and the URLs carry exactly these credentials, to the operators' Services and pods.
        settings = common.runtime.config.load_settings(container_env(docs, deployment))
        dsn = parse_dsn(getattr(settings, dsn_setting))
        assert dsn["host"] == f"{cluster['metadata']['name']}-rw"
        assert dsn["dbname"] == database
        assert (dsn["user"], dsn["password"]) == (SECRET_PLACEHOLDER.format(name=db_secret, key="username"),
                                                  SECRET_PLACEHOLDER.format(name=db_secret, key="password"))
        urls = [urlsplit(u) for u in settings.rabbitmq_url.split(",")]
        hosts = {u.hostname for u in urls}
        # ha: every node by name (the services move between them); dev: the operator's client Service.
        assert hosts == (nodes if overlay == "ha" else {name}), hosts
        assert all((u.username, u.password, u.port) == (SECRET_PLACEHOLDER.format(name=amqp_secret, key="username"),
                                                        SECRET_PLACEHOLDER.format(name=amqp_secret, key="password"),
                                                        5672) for u in urls)
        assert all(u.path in ("", "/") for u in urls), "the default vhost, the one the Permission names"
        assert all("heartbeat=" in u.query for u in urls), "a frozen peer must be noticed in seconds"
    assert not secret_refs(one(docs, "Deployment", "order")) & secret_refs(one(docs, "Deployment", "payment"))
    assert not [ref for d in find(docs, "Deployment") for ref in secret_refs(d) if ref[0] == f"{name}-default-user"], \
        "the broker's administrator is for the operators"


def permission_of(docs, login):
    permissions = [p for p in find(docs, "Permission")
                   if p["spec"].get("user") == login or p["spec"].get("userReference", {}).get("name") == login]
    assert len(permissions) == 1, f"one Permission for {login}, found {len(permissions)}"
    return permissions[0]["spec"]


def permitted(spec, kind, resource):
    """RabbitMQ's check: the permission's regular expression matches the resource's name (unset or empty: none)."""
    return bool(spec["permissions"].get(kind)) and re.search(spec["permissions"][kind], resource) is not None


def test_each_broker_user_may_configure_read_and_write_only_what_its_service_needs(overlay_docs):
    _, docs = overlay_docs
    queues = (ORDER_REQUESTS, PAYMENT_RESULTS)
    dead = tuple(dead_letter_queue(q) for q in queues)
    # Dead-lettering goes through the default exchange (queue arguments), which permission checks call amq.default.
    assert all(common.broker.queues.queue_arguments(q, t)["x-dead-letter-exchange"] == "" for q in queues
               for t in common.runtime.config.QUEUE_TYPES)
    strangers = ("other", "outbox_os2", "xoutbox_ps", "outbox_os.dead.x", "amq.topic", "amq.direct", "")
    for service, consumed in (("order", PAYMENT_RESULTS), ("payment", ORDER_REQUESTS)):
        login = CREDENTIALS[service][0]
        spec = permission_of(docs, login)
        assert spec["vhost"] == "/"
        assert spec["rabbitmqClusterReference"] == one(docs, "User", login)["spec"]["rabbitmqClusterReference"]
        # configure: it declares all four queues at start-up (common/broker/queues.py) and its node probes' queue
        # (common/broker/node_probe.py), nothing else.
        assert all(permitted(spec, "configure", q) for q in queues + dead + (PROBE_QUEUE,))
        assert not any(permitted(spec, "configure", r) for r in ("amq.default", "node_probe.dead", *strangers))
        # write: every publish (outbox relay, dead letters) goes to the default exchange; no queue, no exchange else.
        assert permitted(spec, "write", "amq.default")
        assert not any(permitted(spec, "write", r) for r in queues + dead + strangers)
        # read: it consumes `consumed`; declaring a queue with dead-letter arguments needs read on it: both main
        # queues. Not the dead letters, not anything else.
        assert permitted(spec, "read", consumed)
        assert all(permitted(spec, "read", q) for q in queues)
        assert not any(permitted(spec, "read", r) for r in dead + strangers + ("amq.default",))


def test_the_operator_broker_user_may_only_take_dead_letters_and_replay_them(overlay_docs, monkeypatch):
    _, docs = overlay_docs
    monkeypatch.setattr(common.runtime.config, "read_env_file", lambda *a, **k: {})
    rabbit = one(docs, "RabbitmqCluster")["metadata"]["name"]
    assert {u["metadata"]["name"] for u in find(docs, "User")} == {OPERATOR_LOGIN} | {
        login for login, *_ in CREDENTIALS.values()}
    # A User with the credentials of its own Secret (username = the user), no tags: no HTTP API, no management UI.
    assert one(docs, "User", OPERATOR_LOGIN)["spec"] == {"rabbitmqClusterReference": {"name": rabbit},
                                                         "importCredentialsSecret": {"name": OPERATOR_SECRET}}
    secret = one(docs, "Secret", OPERATOR_SECRET)
    assert secret_data(secret)["username"] == OPERATOR_LOGIN
    assert secret["metadata"]["labels"]["rabbitmq.com/topology-operator"] == "true", "the operator reads no other"
    # Exactly the operator permissions ops.provision grants outside Kubernetes, on the services' vhost.
    spec = permission_of(docs, OPERATOR_LOGIN)
    assert spec["vhost"] == "/" and spec["rabbitmqClusterReference"] == {"name": rabbit}
    assert spec["permissions"] == {"configure": "^$", "write": r"^amq\.default$", "read": r"^outbox_(os|ps)\.dead$"}
    assert spec["permissions"] == dataclasses.asdict(ops.provision.rabbitmq.OPERATOR)
    queues = (ORDER_REQUESTS, PAYMENT_RESULTS)
    dead = tuple(dead_letter_queue(q) for q in queues)
    strangers = ("other", "outbox_os2", "xoutbox_ps", "outbox_os.dead.x", "xoutbox_ps.dead", "amq.topic",
                 "amq.direct")
    # configure: nothing (`^$` matches only the empty name, which no queue or exchange has for a permission
    # check: the default exchange is `amq.default`, a server-named queue gets `amq.gen-...`). The tool only looks
    # queues up with passive declares, which need no permission.
    assert not any(permitted(spec, "configure", r) for r in queues + dead + strangers + ("amq.default",))
    # write: replays go through the default exchange; nothing else.
    assert permitted(spec, "write", "amq.default")
    assert not any(permitted(spec, "write", r) for r in queues + dead + strangers)
    # read: the dead letters of both queues, not the queues the services consume, nothing else.
    assert all(permitted(spec, "read", d) for d in dead)
    assert not any(permitted(spec, "read", r) for r in queues + strangers + ("amq.default",))
    # The consumers take its replays: the ConfigMap names it, and both services load it; the services never hold
    # its password.
    assert one(docs, "ConfigMap", "shop-config")["data"]["BROKER_OPERATOR_USER"] == OPERATOR_LOGIN
    for service in CREDENTIALS:
        deployment = one(docs, "Deployment", service)
        settings = common.runtime.config.load_settings(container_env(docs, deployment))
        assert settings.broker_operator_user == OPERATOR_LOGIN, service
        assert {settings.order_svc_broker_user, settings.payment_svc_broker_user} == {"shop-order", "shop-payment"}
        assert not [ref for ref in secret_refs(deployment) if ref[0] == OPERATOR_SECRET], service


def test_the_dead_letter_pods_run_the_tool_as_the_operator_user(overlay_docs, monkeypatch):
    _, docs = overlay_docs
    monkeypatch.setattr(common.runtime.config, "read_env_file", lambda *a, **k: {})
    cronjob = one(docs, "CronJob", DEAD_LETTERS)
    assert cronjob["spec"]["suspend"] is True, "a template for Jobs made by hand; it never runs by itself"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0 and job["activeDeadlineSeconds"] > 0 and job["ttlSecondsAfterFinished"] > 0
    template = pod_template(cronjob)
    assert template["spec"]["restartPolicy"] == "Never"
    container = template["spec"]["containers"][0]
    # The services' image, which carries the tool (the Dockerfile copies ops/).
    assert container["image"] == one(docs, "Deployment", "order")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert (ROOT / "ops" / "dead_letters" / "__main__.py").is_file()
    assert re.search(r"(?m)^COPY\b.*\sops\s+\./ops$", (ROOT / "Dockerfile").read_text())
    # Only the operator's credentials: no database, no service's user, not the broker's administrator.
    assert secret_refs(cronjob) == {(OPERATOR_SECRET, "username"), (OPERATOR_SECRET, "password")}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "CronJob")]
    assert not [ref for d in workloads for ref in secret_refs(d) if ref[0].endswith("-default-user")]
    # The tool's settings load from the pod's environment alone, and it logs in as the user the consumers take
    # replays from: the Secret's username is the ConfigMap's BROKER_OPERATOR_USER.
    settings = common.runtime.config.load_settings(container_env(docs, cronjob))
    rabbit = one(docs, "RabbitmqCluster")["metadata"]["name"]
    urls = [urlsplit(u) for u in settings.rabbitmq_url.split(",")]
    assert all((u.username, u.password, u.hostname, u.port) == (
        SECRET_PLACEHOLDER.format(name=OPERATOR_SECRET, key="username"),
        SECRET_PLACEHOLDER.format(name=OPERATOR_SECRET, key="password"), rabbit, 5672) for u in urls)
    assert all(u.path in ("", "/") and "heartbeat=" in u.query for u in urls)
    assert common.runtime.config.broker_user(settings.rabbitmq_url) == SECRET_PLACEHOLDER.format(name=OPERATOR_SECRET,
                                                                                         key="username")
    assert secret_data(one(docs, "Secret", OPERATOR_SECRET))["username"] == settings.broker_operator_user


def documented_dead_letter_commands():
    """The arguments of every `python -m ops.dead_letters ...` in docs/security-kubernetes.md's code blocks (up
    to a shell comment)."""
    commands, in_code = [], False
    for line in DOCS.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif in_code and (match := re.search(r"python -m ops\.dead_letters\b([^#]*)", line)):
            commands.append(shlex.split(match.group(1)))
    return commands


def test_the_documented_dead_letter_commands_are_ones_the_tool_takes():
    commands = documented_dead_letter_commands()
    assert {args[0] for args in commands} >= {"list", "show", "replay"}, commands
    for args in commands:
        parsed = dead_letters_args(args)
        assert parsed.queue in (ORDER_REQUESTS, PAYMENT_RESULTS), args
        if parsed.command in ("replay", "purge"):
            assert parsed.ids or parsed.all, f"{args}: the tool refuses {parsed.command} without --id or --all"
    text = DOCS.read_text()
    assert f"--from=cronjob/{DEAD_LETTERS}" in text and OPERATOR_SECRET in text


def test_the_gateway_reaches_each_service_through_its_kubernetes_service(overlay_docs, monkeypatch):
    _, docs = overlay_docs
    monkeypatch.setattr(common.runtime.config, "read_env_file", lambda *a, **k: {})
    env = container_env(docs, one(docs, "Deployment", "gateway"))
    settings = common.runtime.config.load_settings(env)
    for urls, name in ((settings.order_svc_urls, "order"), (settings.payment_svc_urls, "payment")):
        service = one(docs, "Service", name)["spec"]
        assert [(urlsplit(u).hostname, urlsplit(u).port) for u in urls] == [(name, service["ports"][0]["port"])]
    # Its readiness asks the services' admin ports, through the same Services.
    for variable, name in (("ORDER_SVC_ADMIN_URL", "order"), ("PAYMENT_SVC_ADMIN_URL", "payment")):
        urls = getattr(settings, variable.lower().replace("_url", "_urls"), None) or env[variable].split(",")
        ports = {p["name"]: p["port"] for p in one(docs, "Service", name)["spec"]["ports"]}
        assert [(urlsplit(u).hostname, urlsplit(u).port) for u in urls] == [(name, ports["admin"])]
    assert not secret_refs(one(docs, "Deployment", "gateway")), "the gateway needs no credentials"


def test_the_optional_ingress_routes_to_the_gateway_service():
    docs = render_overlay("ha", components=["ingress"])
    backend = one(docs, "Ingress", "gateway")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    ports = {p["name"] for p in one(docs, "Service", backend["name"])["spec"]["ports"]}
    assert backend["port"]["name"] in ports
    assert not find(render_overlay("ha"), "Ingress"), "the Ingress is optional: only with the component"


# --- Network policies: evaluated, not just present --------------------------------------------------------------

def actors(docs):
    """The pods and addresses the shop deals with, labelled as the manifests and the operators label them
    (CloudNativePG: `cnpg.io/cluster`; the RabbitMQ Cluster Operator: internal/metadata/label.go; the operators'
    own Deployments, in the namespaces their install manifests create; CoreDNS as kubeadm labels it)."""
    namespace = one(docs, "Namespace")["metadata"]["name"]
    cluster, rabbit = one(docs, "Cluster")["metadata"]["name"], one(docs, "RabbitmqCluster")["metadata"]["name"]

    def shop(name):
        return Pod(namespace, one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"])

    return dict(
        gateway=shop("gateway"), order=shop("order"), payment=shop("payment"),
        postgres=Pod(namespace, {"cnpg.io/cluster": cluster, "cnpg.io/podRole": "instance",
                                 "cnpg.io/instanceName": f"{cluster}-1"}),
        postgres_join_job=Pod(namespace, {"cnpg.io/cluster": cluster, "cnpg.io/jobRole": "join"}),
        rabbitmq=Pod(namespace, {"app.kubernetes.io/name": rabbit, "app.kubernetes.io/component": "rabbitmq",
                                 "app.kubernetes.io/part-of": "rabbitmq"}),
        kube_dns=Pod("kube-system", {"k8s-app": "kube-dns"}),
        kube_system_other=Pod("kube-system", {"k8s-app": "metrics-server"}),
        cnpg_system_other=Pod("cnpg-system", {"app.kubernetes.io/name": "something-else"}),
        rabbitmq_system_other=Pod("rabbitmq-system", {"app.kubernetes.io/name": "something-else"}),
        cnpg_operator=Pod("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"}),
        cluster_operator=Pod("rabbitmq-system", {"app.kubernetes.io/name": "rabbitmq-cluster-operator",
                                                 "app.kubernetes.io/component": "rabbitmq-operator"}),
        topology_operator=Pod("rabbitmq-system", {"app.kubernetes.io/name": "messaging-topology-operator",
                                                  "app.kubernetes.io/component": "rabbitmq-operator"}),
        prometheus=Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}),
        ingress_controller=Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx",
                                                 "app.kubernetes.io/component": "controller"}),
        other_namespace=Pod("other", {"app.kubernetes.io/name": "shop", "app.kubernetes.io/component": "gateway"}),
        debug_pod=Pod(namespace, {"run": "debug"}),
        # A Job made from the CronJob's template: its pod gets the template's labels and the Job controller's.
        dead_letters=Pod(namespace, {**pod_template(one(docs, "CronJob", "dead-letters"))["metadata"]["labels"],
                                     "batch.kubernetes.io/job-name": "dead-letters-1", "job-name": "dead-letters-1"}),
        issuer=Address("203.0.113.10"), issuer_v6=Address("2001:db8::10"),
        api_server=Address("10.96.0.1"), private_host=Address("10.1.2.3"), cloud_metadata=Address("169.254.169.254"),
    )


def ports_of(docs, name):
    container = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def required_flows(docs):
    """(source, destination, port, protocol, why) of every connection the shop and its operators need."""
    p = {name: ports_of(docs, name) for name in PROCESSES}
    flows = [("gateway", service, p[service][port], "TCP", f"the gateway to the {service} {port} port")
             for service in ("order", "payment") for port in ("http", "admin")]
    for service in ("order", "payment"):
        flows += [(service, "postgres", 5432, "TCP", "PostgreSQL"),
                  (service, "rabbitmq", 5672, "TCP", "AMQP"), (service, "rabbitmq", 5671, "TCP", "AMQPS"),
                  (service, "issuer", 443, "TCP", "the token issuer's keys"),
                  (service, "issuer_v6", 443, "TCP", "the token issuer's keys (IPv6)")]
    flows += [("dead_letters", "rabbitmq", port, "TCP", "the dead-letter tool, as the operator user")
              for port in (5672, 5671)]
    flows += [(pod, "kube_dns", 53, protocol, "DNS")
              for pod in ("gateway", "order", "payment", "postgres", "postgres_join_job", "rabbitmq", "debug_pod",
                          "dead_letters")
              for protocol in ("UDP", "TCP")]
    flows += [("prometheus", name, p[name]["admin"], "TCP", "metrics on the admin port") for name in PROCESSES]
    flows += [("prometheus", "postgres", 9187, "TCP", "CloudNativePG's metrics"),
              ("prometheus", "rabbitmq", 15692, "TCP", "RabbitMQ's metrics")]
    flows += [("postgres", "postgres", port, "TCP", "replication, instance status") for port in (5432, 8000)]
    flows += [("postgres_join_job", "postgres", 5432, "TCP", "pg_basebackup of a new standby")]
    flows += [("cnpg_operator", "postgres", port, "TCP", "the operator's status checks") for port in (8000, 5432)]
    flows += [(pod, "api_server", port, "TCP", "the instance manager's Kubernetes API")
              for pod in ("postgres", "postgres_join_job") for port in (443, 6443)]
    flows += [("rabbitmq", "rabbitmq", port, "TCP", "clustering") for port in (4369, 25672, 35672, 35682)]
    flows += [(operator, "rabbitmq", 15672, "TCP", "the operators' HTTP API calls")
              for operator in ("cluster_operator", "topology_operator")]
    return flows


def forbidden_flows(docs):
    """(source, destination, port, protocol, why) of connections nothing needs."""
    p = {name: ports_of(docs, name) for name in PROCESSES}
    flows = [("prometheus", name, p[name]["http"], "TCP", "monitoring has no business with the API")
             for name in PROCESSES]
    flows += [("prometheus", "postgres", 5432, "TCP", "no SQL for monitoring"),
              ("prometheus", "rabbitmq", 5672, "TCP", "no AMQP for monitoring"),
              ("gateway", "postgres", 5432, "TCP", "the gateway holds no credentials"),
              ("gateway", "rabbitmq", 5672, "TCP", "the gateway holds no credentials"),
              ("gateway", "issuer", 443, "TCP", "the gateway verifies no token"),
              ("order", "payment", p["payment"]["http"], "TCP", "the services never call each other"),
              ("payment", "order", p["order"]["http"], "TCP", "the services never call each other"),
              ("order", "payment", p["payment"]["admin"], "TCP", "the services never call each other"),
              ("order", "gateway", p["gateway"]["http"], "TCP", "nothing calls back the gateway"),
              ("order", "rabbitmq", 15672, "TCP", "the services have no management access"),
              ("order", "rabbitmq", 25672, "TCP", "clustering is for the nodes"),
              ("order", "postgres", 8000, "TCP", "the status API is for the operator"),
              ("order", "private_host", 443, "TCP", "443 is open outside the private ranges only"),
              ("order", "api_server", 443, "TCP", "the services do not talk to Kubernetes"),
              ("order", "cloud_metadata", 80, "TCP", "no cloud metadata"),
              ("order", "cloud_metadata", 443, "TCP", "no cloud metadata"),
              ("order", "issuer", 80, "TCP", "the issuer over HTTPS only"),
              ("order", "issuer", 5432, "TCP", "no database outside the cluster"),
              ("order", "kube_dns", 5353, "UDP", "DNS is port 53"),
              ("other_namespace", "gateway", p["gateway"]["http"], "TCP", "only the ingress controller"),
              ("other_namespace", "order", p["order"]["http"], "TCP", "the services are reached via the gateway"),
              ("other_namespace", "postgres", 5432, "TCP", "the database is the services' alone"),
              ("other_namespace", "rabbitmq", 5672, "TCP", "the broker is the services' alone"),
              ("other_namespace", "order", p["order"]["admin"], "TCP", "admin ports: monitoring and gateway"),
              ("debug_pod", "order", p["order"]["http"], "TCP", "unlabelled pods of the namespace get nothing"),
              ("debug_pod", "postgres", 5432, "TCP", "unlabelled pods of the namespace get nothing"),
              ("debug_pod", "issuer", 443, "TCP", "unlabelled pods of the namespace get nothing"),
              ("debug_pod", "rabbitmq", 5672, "TCP", "unlabelled pods of the namespace get nothing"),
              ("dead_letters", "postgres", 5432, "TCP", "the dead-letter tool needs the broker only"),
              ("dead_letters", "rabbitmq", 15672, "TCP", "the dead-letter tool has no management access"),
              ("dead_letters", "rabbitmq", 25672, "TCP", "clustering is for the nodes"),
              ("dead_letters", "order", p["order"]["http"], "TCP", "the dead-letter tool needs the broker only"),
              ("dead_letters", "order", p["order"]["admin"], "TCP", "the dead-letter tool needs the broker only"),
              ("dead_letters", "issuer", 443, "TCP", "the dead-letter tool needs the broker only"),
              ("dead_letters", "api_server", 443, "TCP", "the dead-letter tool needs the broker only"),
              ("dead_letters", "cloud_metadata", 80, "TCP", "no cloud metadata"),
              ("gateway", "dead_letters", 8080, "TCP", "nothing connects to the dead-letter pods"),
              ("other_namespace", "dead_letters", 8080, "TCP", "nothing connects to the dead-letter pods"),
              ("ingress_controller", "gateway", p["gateway"]["http"], "TCP", "only with the Ingress component"),
              ("ingress_controller", "order", p["order"]["http"], "TCP", "the controller reaches the gateway only"),
              ("postgres", "rabbitmq", 5672, "TCP", "PostgreSQL needs no broker"),
              ("postgres", "issuer", 5432, "TCP", "no replication out of the cluster"),
              ("rabbitmq", "postgres", 5432, "TCP", "the broker needs no database"),
              ("rabbitmq", "issuer", 443, "TCP", "RabbitMQ 4.1+ needs no Kubernetes API"),
              ("cnpg_operator", "rabbitmq", 15672, "TCP", "each operator its own pods"),
              ("cluster_operator", "postgres", 8000, "TCP", "each operator its own pods"),
              ("prometheus", "postgres", 8000, "TCP", "the status API is for the operator"),
              # A namespace and a pod selector in one peer mean both: other pods of those namespaces get nothing.
              ("order", "kube_system_other", 53, "UDP", "DNS is kube-dns only"),
              ("cnpg_system_other", "postgres", 8000, "TCP", "the operator's pod only"),
              ("rabbitmq_system_other", "rabbitmq", 15672, "TCP", "the operators' pods only")]
    return flows


@pytest.fixture(scope="module", params=OVERLAYS)
def policy_docs(request):
    return request.param, render_overlay(request.param)


def test_every_pod_of_the_namespace_is_isolated_by_a_default_deny(policy_docs):
    _, docs = policy_docs
    namespace = one(docs, "Namespace")["metadata"]["name"]
    deny = one(docs, "NetworkPolicy", "default-deny")
    assert deny["metadata"]["namespace"] == namespace
    assert deny["spec"]["podSelector"] == {}, "every pod, the operators' included"
    assert sorted(deny["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not deny["spec"].get("ingress") and not deny["spec"].get("egress")
    assert all(p["metadata"]["namespace"] == namespace for p in find(docs, "NetworkPolicy"))
    # No policy opens everything: each rule names its peers and its ports.
    for policy in find(docs, "NetworkPolicy"):
        for direction, peers in (("ingress", "from"), ("egress", "to")):
            for rule in policy["spec"].get(direction) or []:
                assert rule.get(peers) and rule.get("ports"), (policy["metadata"]["name"], direction, rule)


def test_the_network_policies_allow_each_flow_the_shop_and_its_operators_need(policy_docs):
    _, docs = policy_docs
    who = actors(docs)
    blocked = [(src, dst, port, protocol, why) for src, dst, port, protocol, why in required_flows(docs)
               if not connection_allowed(docs, who[src], who[dst], port, protocol)]
    assert blocked == []


def test_the_network_policies_allow_nothing_else(policy_docs):
    _, docs = policy_docs
    who = actors(docs)
    open_ = [(src, dst, port, protocol, why) for src, dst, port, protocol, why in forbidden_flows(docs)
             if connection_allowed(docs, who[src], who[dst], port, protocol)]
    assert open_ == []


def test_only_the_ingress_controller_reaches_the_gateway_and_only_its_public_port():
    docs = render_overlay("ha", components=["ingress"])
    who, ports = actors(docs), ports_of(docs, "gateway")
    assert connection_allowed(docs, who["ingress_controller"], who["gateway"], ports["http"])
    assert not connection_allowed(docs, who["ingress_controller"], who["gateway"], ports["admin"])
    assert not connection_allowed(docs, who["other_namespace"], who["gateway"], ports["http"])
    assert not connection_allowed(docs, who["ingress_controller"], who["order"], ports_of(docs, "order")["http"])
    # The Ingress's backend port is the one the policy opens.
    backend = one(docs, "Ingress", "gateway")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service_ports = {p["name"]: p for p in one(docs, "Service", backend["name"])["spec"]["ports"]}
    assert ports[service_ports[backend["port"]["name"]]["targetPort"]] == ports["http"]
    # Every other flow stays as without the component.
    assert all(connection_allowed(docs, who[s], who[d], port, proto) for s, d, port, proto, _ in required_flows(docs))
    assert [f for f in forbidden_flows(docs) if f[0] != "ingress_controller"
            and connection_allowed(docs, who[f[0]], who[f[1]], f[2], f[3])] == []


def test_the_policy_evaluator_reads_selectors_as_kubernetes_does():
    """The evaluator above, against the semantics of the NetworkPolicy API (networking.k8s.io/v1)."""
    client = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}},
              "podSelector": {"matchLabels": {"role": "client"}}}
    policy = {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "a"},
              "spec": {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [client, {"podSelector": {"matchLabels": {"role": "local"}}}],
                                    "ports": [{"protocol": "TCP", "port": 5432}]}]}}
    db = Pod("a", {"role": "db"})
    assert connection_allowed([policy], Pod("b", {"role": "client"}), db, 5432)
    assert connection_allowed([policy], Pod("a", {"role": "local"}), db, 5432)
    assert not connection_allowed([policy], Pod("b", {"role": "other"}), db, 5432), "namespace AND pod"
    assert not connection_allowed([policy], Pod("c", {"role": "local"}), db, 5432), "a bare podSelector is local"
    assert not connection_allowed([policy], Pod("b", {"role": "client"}), db, 5433)
    assert not connection_allowed([policy], Pod("b", {"role": "client"}), db, 5432, "UDP")
    assert connection_allowed([policy], Pod("b", {}), Pod("a", {"role": "web"}), 80), "not selected: not isolated"
    assert selects({"matchExpressions": [{"key": "c", "operator": "In", "values": ["x", "y"]}]}, {"c": "y"})
    assert not selects({"matchExpressions": [{"key": "c", "operator": "NotIn", "values": ["y"]}]}, {"c": "y"})
    assert selects({}, {"any": "thing"})


# --- TLS at the Ingress -------------------------------------------------------------------------------------------

def test_the_ingress_terminates_tls_with_a_certificate_that_is_not_committed():
    docs = render_overlay("ha", components=["ingress"])
    ingress = one(docs, "Ingress", "gateway")
    tls = ingress["spec"]["tls"]
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts and hosts <= {host for entry in tls for host in entry["hosts"]}, "every host served over TLS"
    secret_names = {entry["secretName"] for entry in tls}
    assert all(secret_names)
    # The certificate comes from cert-manager or the operator, never from the repository.
    assert not [d for d in docs if d["kind"] == "Secret"
                and (d["metadata"]["name"] in secret_names or d.get("type") == "kubernetes.io/tls")]
    annotations = ingress["metadata"]["annotations"]
    assert {"cert-manager.io/cluster-issuer", "cert-manager.io/issuer"} & set(annotations)
    assert annotations["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"


# --- No credential in the repository --------------------------------------------------------------------------------

# What a committed credential looks like: a password-ish key with a literal value, credentials in a URL (not
# $(VAR) expansions), the well-known defaults, a Secret written out.
PASSWORD_LIKE = {
    "a password-like key with a value": re.compile(
        r"(?i)\b[\w-]*(password|passwd|pwd|secret|token|api[_-]?key)\b[ \t]*[:=][ \t]*['\"]?"
        r"(?![$({<]|(true|false|null)\b)[^\s'\"{}]{3,}"),
    "credentials in a URL": re.compile(r"://[^/\s:@'\"]+:(?!\$\()[^/\s@'\"]+@"),
    "a well-known default credential": re.compile(
        r"(?i)\b(change-?me[\w-]*|changeit|guest:guest|postgres:postgres|admin:admin|s3cr3t|hunter2)\b|"
        r"\b(user(name)?|password|pass)[ \t]*[:=][ \t]*['\"]?(guest|postgres|admin|root)\b"),
    "a Secret's literal values": re.compile(r"(?m)^[ \t]*stringData[ \t]*:"),
    "a Secret written out": re.compile(r"(?m)^[ \t]*kind[ \t]*:[ \t]*Secret[ \t]*$"),
}


def credential_findings(text):
    return [(what, match.group(0)) for what, pattern in PASSWORD_LIKE.items() for match in pattern.finditer(text)]


def files_to_commit(under):
    """Every file under `under` git tracks or would add (untracked, not ignored)."""
    done = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", under], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return [ROOT / line for line in done.stdout.splitlines() if (ROOT / line).is_file()]


def test_no_committed_file_under_deploy_kubernetes_holds_a_credential():
    files = files_to_commit("deploy/kubernetes")
    assert len(files) >= 10, files
    findings = {str(f.relative_to(ROOT)): credential_findings(f.read_text()) for f in files}
    assert {f: found for f, found in findings.items() if found} == {}
    assert not [f for f in files if "/secrets/" in str(f)], "the secret files are never committed"
    for overlay in OVERLAYS:
        ignored = subprocess.run(["git", "check-ignore", "-q", f"deploy/kubernetes/overlays/{overlay}/secrets/x.env"],
                                 cwd=ROOT)
        assert ignored.returncode == 0, f"overlays/{overlay}/secrets/ must be in .gitignore"


def test_the_credential_check_recognises_what_it_must_refuse():
    for bad in ("stringData:\n  username: shop\n  password: change-me-before-deploying\n",
                "ORDER_DB_DSN: postgresql://postgres:postgres@localhost:5432/orders",
                "RABBITMQ_URL: amqp://shop:s3cret-value@shop-rabbitmq:5672/",
                "RABBITMQ_URL=amqp://shop-operator:0123456789abcdef@shop-rabbitmq:5672/ python -m ops.dead_letters",
                "POSTGRES_PASSWORD=supersecret", "password: guest",
                "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n", "api_key: 0123456789abcdef"):
        assert credential_findings(bad), bad
    for fine in ("secretKeyRef: {name: shop-order-db, key: password}",
                 "value: postgresql://$(PG_USER):$(PG_PASSWORD)@shop-pg-rw:5432/orders",
                 "passwordSecret:\n  name: shop-order-db", "secret:\n  name: shop-order-db",
                 "secretName: shop-gateway-tls", "envs: [secrets/shop-order-db.env]", "- name: PG_PASSWORD",
                 "automountServiceAccountToken: false", "secretKeyRef: {name: shop-operator-amqp, key: password}",
                 "value: amqp://$(AMQP_USER):$(AMQP_PASSWORD)@shop-rabbitmq:5672/?heartbeat=10",
                 "BROKER_OPERATOR_USER: shop-operator"):
        assert not credential_findings(fine), fine


def test_every_rendered_secret_comes_from_the_uncommitted_files(policy_docs):
    overlay, docs = policy_docs
    generated = generated_secret_files(overlay)
    secrets = {d["metadata"]["name"]: secret_data(d) for d in find(docs, "Secret")}
    assert {f"{name}.env" for name in secrets} == set(generated) == set(SECRET_FILES), "one Secret per file, no other"
    for name, data in secrets.items():
        assert data == generated[f"{name}.env"], name
        assert re.fullmatch(r"[0-9a-f]{64}", data["password"]), "256 random bits, URL-safe (DSNs, AMQP URLs)"
    assert len({data["password"] for data in secrets.values()}) == len(secrets), "no password shared"
    kustomization = yaml.safe_load((KUSTOMIZE_ROOT / "overlays" / overlay / "kustomization.yaml").read_text())
    assert all(g["envs"][0].startswith("secrets/") for g in kustomization["secretGenerator"])


def test_the_secrets_script_writes_random_passwords_keeps_them_and_rotates_on_request(tmp_path):
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUSTOMIZE_ROOT, copy, ignore=shutil.ignore_patterns("secrets"))

    def run(*args):
        return subprocess.run([str(SECRETS_SCRIPT), "--dir", str(copy), *args], capture_output=True, text=True,
                              timeout=60)

    def passwords():
        return {f: f.read_text() for f in sorted(copy.glob("overlays/*/secrets/*.env"))}

    assert run().returncode == 0
    first = passwords()
    assert {(f.parent.parent.name, f.name) for f in first} == {(o, name) for o in OVERLAYS for name in SECRET_FILES}
    assert all(re.fullmatch(rf"username={SECRET_FILES[f.name]}\npassword=[0-9a-f]{{64}}\n", text)
               for f, text in first.items())
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in first)
    assert all((copy / "overlays" / o / "secrets").stat().st_mode & 0o777 == 0o700 for o in OVERLAYS)
    assert len({text.split("password=")[1] for text in first.values()}) == len(first)
    done = run("dev")
    assert done.returncode == 0 and "password" not in done.stdout, "never printed"
    assert passwords() == first, "an existing file is kept"
    assert run("--rotate", "ha").returncode == 0
    rotated = passwords()
    assert all((rotated[f] == first[f]) == ("/overlays/dev/" in str(f)) for f in first)
    assert run("nonexistent").returncode != 0


# --- Pod Security Standards -------------------------------------------------------------------------------------

# The volume types the `restricted` profile allows (Pod Security Standards, "Volume Types").
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def restricted_violations(spec):
    """What in a pod spec the Pod Security Standard `restricted` refuses (its controls, the baseline's included)."""
    found = []
    pod = spec.get("securityContext") or {}
    found += [f"spec.{field}" for field in ("hostNetwork", "hostPID", "hostIPC", "hostUsers") if spec.get(field)
              and field != "hostUsers"]
    found += [f"volume {v['name']}: {sorted(set(v) - {'name'})}" for v in spec.get("volumes", [])
              if not set(v) - {"name"} <= RESTRICTED_VOLUME_TYPES]
    found += [f"sysctl {s['name']}" for s in pod.get("sysctls", [])]
    if (pod.get("seLinuxOptions") or {}).get("user") or (pod.get("seLinuxOptions") or {}).get("role"):
        found.append("pod seLinuxOptions user/role")
    for container in spec.get("initContainers", []) + spec["containers"] + spec.get("ephemeralContainers", []):
        context, name = container.get("securityContext") or {}, container["name"]
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if context.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot must be true")
        if context.get("runAsUser", pod.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile") or pod.get("seccompProfile") or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name}: hostPort")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
    return found


def test_the_namespace_enforces_the_restricted_pod_security_standard(policy_docs):
    _, docs = policy_docs
    labels = one(docs, "Namespace")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
        assert re.fullmatch(r"latest|v1\.\d+", labels[f"pod-security.kubernetes.io/{mode}-version"]), mode


def test_every_pod_the_manifests_create_passes_the_restricted_standard(policy_docs):
    _, docs = policy_docs
    templates = pod_templates(docs)
    assert {name for name, _, _ in templates} >= {f"Deployment/{name}" for name in PROCESSES} | {
        f"CronJob/{DEAD_LETTERS}"}
    assert {name: restricted_violations(spec) for name, spec, _ in templates
            if restricted_violations(spec)} == {}
    for name, spec, _ in templates:
        assert spec.get("automountServiceAccountToken") is False, f"{name}: no Kubernetes API token"


def test_the_restricted_check_recognises_what_it_must_refuse():
    assert restricted_violations({"containers": [{"name": "app"}]}) == [
        "app: allowPrivilegeEscalation must be false", "app: capabilities must drop ALL",
        "app: runAsNonRoot must be true", "app: seccompProfile must be RuntimeDefault or Localhost"]
    bad = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "Unconfined"}},
           "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                           "securityContext": {"privileged": True, "allowPrivilegeEscalation": False, "runAsUser": 0,
                                               "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}}]}
    assert len(restricted_violations(bad)) == 7


# --- Authentication ---------------------------------------------------------------------------------------------

def test_authentication_is_jwt_in_every_overlay_never_off(rendered, monkeypatch):
    variant, docs, path = rendered
    monkeypatch.setattr(common.runtime.config, "read_env_file", lambda *a, **k: {})
    for name in PROCESSES:
        env = container_env(docs, one(docs, "Deployment", name))
        auth = common.runtime.config.load_auth_settings(env)
        assert auth.mode == "jwt", (variant, name)
        assert urlsplit(auth.issuer).scheme == "https", "keys are fetched over HTTPS"
        assert auth.audience
    text = path.read_text()
    assert "AUTH_MODE" in text
    assert not re.search(r"AUTH_MODE['\"]?\s*[:=]\s*['\"]?off\b", text, re.IGNORECASE), variant
    assert not [d for d in find(docs, "Deployment") for c in d["spec"]["template"]["spec"]["containers"]
                for v in c.get("env", []) if v["name"] == "AUTH_MODE" and v.get("value") != "jwt"]
