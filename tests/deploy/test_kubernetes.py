"""deploy/kubernetes, checked offline (no cluster can run here): both overlays render, every document validates
against the Kubernetes API schemas in strict mode, the operators' resources use only fields their operators
document, and the manifests agree with the code they deploy."""
import ast
import inspect
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from psycopg2.extensions import parse_dsn
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

import common.config
import gateway
import order_svc.app
import payment_svc.app
from common.envelope import NotFoundHandler
from common.lifecycle import SHUTDOWN_TIMEOUT
from tests.deploy import operator_fields
from tests.deploy.manifests import (
    OVERLAYS,
    ROOT,
    SECRET_PLACEHOLDER,
    container_env,
    find,
    one,
    render_overlay,
    secret_refs,
)

KUBERNETES_VERSION = "1.32.0"
OPERATOR_KINDS = {kind for _, kind in operator_fields.OPERATORS}
# Deployment name -> the process it runs (the compose file's service of the same name) and its port setting.
PROCESSES = {"gateway": "gateway_port", "order": "order_svc_port", "payment": "payment_svc_port"}
# Every variable the services read is in .env too.
EXPECTED_BEYOND_ENV = set()


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
    assert {d["kind"] for d in operator_docs} == {"Cluster", "Database", "RabbitmqCluster"}
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


def variables_load_settings_reads():
    """Every environment variable common/config.py's load_settings reads: env["X"], env.get("X"), urls("X")."""
    tree = ast.parse(inspect.getsource(common.config.load_settings))
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
        assert set(data) - EXPECTED_BEYOND_ENV == native_env_variables() | read - EXPECTED_BEYOND_ENV


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay_docs(request):
    return request.param, render_overlay(request.param)


def test_every_process_gets_every_variable_it_reads_and_its_settings_load(overlay_docs, monkeypatch):
    _, docs = overlay_docs
    # The image has no .env (Dockerfile): the pod's environment alone must do.
    monkeypatch.setattr(common.config, "read_env_file", lambda *a, **k: {})
    for name in PROCESSES:
        env = container_env(docs, one(docs, "Deployment", name))
        assert variables_load_settings_reads() <= set(env), name
        common.config.load_settings(env)


def test_probe_paths_and_ports_are_the_processes_own(overlay_docs, monkeypatch):
    _, docs = overlay_docs
    monkeypatch.setattr(common.config, "read_env_file", lambda *a, **k: {})
    for name, port_setting in PROCESSES.items():
        deployment = one(docs, "Deployment", name)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        settings = common.config.load_settings(container_env(docs, deployment))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        app = application_of(container["command"], settings)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            http = container[probe]["httpGet"]
            assert ports[http["port"]] == getattr(settings, port_setting), (name, probe)
            handler = app.find_handler(HTTPServerRequest(start_line=RequestStartLine("GET", http["path"], "HTTP/1.1"),
                                                          headers=HTTPHeaders({"Host": "pod"}))).handler_class
            assert handler is not NotFoundHandler, f"{name}: no route for {probe} {http['path']}"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def application_of(command, settings):
    """The Tornado application the container's command starts (built without connecting anything)."""
    if command == ["python", "gateway.py"]:
        return gateway.make_app(settings)
    if command == ["python", "-m", "order_svc"]:
        return order_svc.app.make_app(None, None, settings, None, None)
    if command == ["python", "-m", "payment_svc"]:
        return payment_svc.app.make_app(None, None, settings, None)
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
        assert [p["targetPort"] for p in service["ports"]] == ["http"]
    for name in ("gateway", "order"):
        hpa = one(docs, "HorizontalPodAutoscaler", name)["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
        assert hpa["minReplicas"] >= 2


def test_addresses_and_credentials_point_at_what_the_operators_create(overlay_docs, monkeypatch):
    overlay, docs = overlay_docs
    monkeypatch.setattr(common.config, "read_env_file", lambda *a, **k: {})
    cluster, rabbit = one(docs, "Cluster"), one(docs, "RabbitmqCluster")
    initdb_secret = cluster["spec"]["bootstrap"]["initdb"]["secret"]["name"]
    credentials = one(docs, "Secret", initdb_secret)
    assert credentials["type"] == "kubernetes.io/basic-auth"
    assert credentials["stringData"]["username"] == cluster["spec"]["bootstrap"]["initdb"]["owner"]
    databases = {cluster["spec"]["bootstrap"]["initdb"]["database"],
                 *(d["spec"]["name"] for d in find(docs, "Database") if d["spec"]["cluster"]["name"] ==
                   cluster["metadata"]["name"])}
    name = rabbit["metadata"]["name"]
    nodes = {f"{name}-server-{i}.{name}-nodes" for i in range(rabbit["spec"]["replicas"])}
    user = SECRET_PLACEHOLDER.format(name=f"{name}-default-user", key="username")
    password = SECRET_PLACEHOLDER.format(name=f"{name}-default-user", key="password")
    for service, dsn_setting in (("order", "order_db_dsn"), ("payment", "payment_db_dsn")):
        deployment = one(docs, "Deployment", service)
        assert secret_refs(deployment) == {(initdb_secret, "username"), (initdb_secret, "password"),
                                           (f"{name}-default-user", "username"),
                                           (f"{name}-default-user", "password")}
        settings = common.config.load_settings(container_env(docs, deployment))
        dsn = parse_dsn(getattr(settings, dsn_setting))
        assert dsn["host"] == f"{cluster['metadata']['name']}-rw"
        assert dsn["dbname"] in databases
        assert (dsn["user"], dsn["password"]) == (
            SECRET_PLACEHOLDER.format(name=initdb_secret, key="username"),
            SECRET_PLACEHOLDER.format(name=initdb_secret, key="password"))
        urls = [urlsplit(u) for u in settings.rabbitmq_url.split(",")]
        hosts = {u.hostname for u in urls}
        # ha: every node by name (the services move between them); dev: the operator's client Service.
        assert hosts == (nodes if overlay == "ha" else {name}), hosts
        assert all((u.username, u.password, u.port) == (user, password, 5672) for u in urls)
        assert all("heartbeat=" in u.query for u in urls), "a frozen peer must be noticed in seconds"


def test_the_gateway_reaches_each_service_through_its_kubernetes_service(overlay_docs, monkeypatch):
    _, docs = overlay_docs
    monkeypatch.setattr(common.config, "read_env_file", lambda *a, **k: {})
    settings = common.config.load_settings(container_env(docs, one(docs, "Deployment", "gateway")))
    for urls, name in ((settings.order_svc_urls, "order"), (settings.payment_svc_urls, "payment")):
        service = one(docs, "Service", name)["spec"]
        assert [(urlsplit(u).hostname, urlsplit(u).port) for u in urls] == [(name, service["ports"][0]["port"])]
    assert not secret_refs(one(docs, "Deployment", "gateway")), "the gateway needs no credentials"


def test_the_optional_ingress_routes_to_the_gateway_service():
    docs = render_overlay("ha", components=["ingress"])
    backend = one(docs, "Ingress", "gateway")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    ports = {p["name"] for p in one(docs, "Service", backend["name"])["spec"]["ports"]}
    assert backend["port"]["name"] in ports
    assert not find(render_overlay("ha"), "Ingress"), "the Ingress is optional: only with the component"
