"""The Kubernetes manifests of deploy/kubernetes, rendered offline with `kubectl kustomize`, and what the tests
read from them: documents by kind and name, a container's environment as the kubelet would build it, and which
connections the NetworkPolicies allow.

The overlays generate their Secrets from files that are never committed (scripts/k8s-secrets.sh): the tests
render a copy of deploy/kubernetes, made once per run in a temporary directory without any such file of this
checkout, whose files the script then writes with fresh random passwords."""
import atexit
import base64
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = ROOT / "deploy" / "kubernetes"
SECRETS_SCRIPT = ROOT / "scripts" / "k8s-secrets.sh"
OVERLAYS = ("dev", "ha")
# Where a Secret's value would be: the tests only need to know which key of which Secret it came from.
SECRET_PLACEHOLDER = "secret-{name}-{key}"
_copy = None


def kustomize_root():
    """The throw-away copy of deploy/kubernetes the tests render, with its secret files generated."""
    global _copy
    if _copy is None:
        scratch = Path(tempfile.mkdtemp(prefix="shop-kubernetes-"))
        atexit.register(shutil.rmtree, scratch, True)
        # Never copy the real credentials a developer may have generated in this checkout.
        shutil.copytree(KUSTOMIZE_ROOT, scratch / "kubernetes", ignore=shutil.ignore_patterns("secrets"))
        subprocess.run([str(SECRETS_SCRIPT), "--dir", str(scratch / "kubernetes"), *OVERLAYS], check=True,
                       capture_output=True, text=True, timeout=60)
        _copy = scratch / "kubernetes"
    return _copy


def generated_secret_files(overlay):
    """{file name: {key: value}} of the secret files the script wrote for `overlay` in the copy."""
    files = {}
    for path in sorted((kustomize_root() / "overlays" / overlay / "secrets").glob("*.env")):
        files[path.name] = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return files


def secret_data(secret):
    """A rendered Secret's keys and values, decoded (`data` is base64; `stringData` plain)."""
    return {**{k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()},
            **(secret.get("stringData") or {})}


def render(kustomization_dir):
    """`kubectl kustomize DIR` as a list of documents; raises CalledProcessError with kustomize's message."""
    if shutil.which("kubectl") is None:
        raise RuntimeError("kubectl is needed to render deploy/kubernetes (Debian: google-cloud-cli-kubectl)")
    done = subprocess.run(["kubectl", "kustomize", str(kustomization_dir)], capture_output=True, text=True,
                          timeout=120, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_overlay(name, components=()):
    """An overlay, optionally with components added (through a throw-away kustomization beside nothing else)."""
    overlay = kustomize_root() / "overlays" / name
    if not components:
        return render(overlay)
    with tempfile.TemporaryDirectory() as scratch:
        # The overlay's namespace for the components' resources too, as when the overlay lists the components.
        namespace = yaml.safe_load((overlay / "kustomization.yaml").read_text())["namespace"]
        kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                         "namespace": namespace,
                         # kustomize takes only relative paths
                         "resources": [os.path.relpath(overlay, scratch)],
                         "components": [os.path.relpath(kustomize_root() / "components" / c, scratch)
                                        for c in components]}
        (Path(scratch) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return render(scratch)


def find(docs, kind, name=None):
    """The documents of `kind` (and `name`); a test about one resource asserts it is there."""
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind, name=None):
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_template(workload):
    """The pod template of a Deployment (or StatefulSet, DaemonSet, Job) or a CronJob."""
    spec = workload["spec"]
    return spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" else spec["template"]


def container_env(docs, deployment):
    """The process environment of a workload's (a Deployment's, a CronJob's) container: its ConfigMaps, then its
    `env`, with `$(VAR)` expanded from the variables before it, as the kubelet does. Secret values are
    placeholders that name their Secret and key; a reference to a missing ConfigMap key or an undefined variable
    is an AssertionError."""
    container = pod_template(deployment)["spec"]["containers"][0]
    env = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = SECRET_PLACEHOLDER.format(**ref)
    return env


def expand(value, env):
    def lookup(match):
        assert match.group(1) in env, f"$({match.group(1)}) is not defined before it is used"
        return env[match.group(1)]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lookup, value)


def secret_refs(deployment):
    """(secret name, key) of every secretKeyRef in the workload's (a Deployment's, a CronJob's) container."""
    container = pod_template(deployment)["spec"]["containers"][0]
    return {(v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
            for v in container.get("env", []) if "valueFrom" in v}


def pod_templates(docs):
    """(kind/name, pod spec, pod metadata) of every workload the manifests create pods from."""
    found = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
        elif doc["kind"] == "Pod":
            template = doc
        else:
            continue
        found.append((f"{doc['kind']}/{doc['metadata']['name']}", template["spec"], template.get("metadata", {})))
    return found


# --- NetworkPolicy semantics (networking.k8s.io/v1), enough to ask whether one connection is allowed ----------

class Pod:
    """A pod as NetworkPolicies see it: its namespace (with the label every namespace carries,
    kubernetes.io/metadata.name) and its labels."""

    def __init__(self, namespace, labels, namespace_labels=None):
        self.namespace, self.labels = namespace, dict(labels)
        self.namespace_labels = {"kubernetes.io/metadata.name": namespace, **(namespace_labels or {})}

    def __repr__(self):
        return f"Pod({self.namespace}, {self.labels})"


class Address:
    """Something outside the cluster's pods: the API server, the token issuer, a client."""

    def __init__(self, ip):
        self.ip = ipaddress.ip_address(ip)

    def __repr__(self):
        return f"Address({self.ip})"


def selects(selector, labels):
    """Whether a LabelSelector (matchLabels, matchExpressions) selects `labels`; {} selects everything."""
    if selector is None:
        return False
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        assert operator in ("In", "NotIn", "Exists", "DoesNotExist"), operator
    return True


def peer_matches(peer, policy_namespace, other):
    """Whether one `from` / `to` entry of a policy in `policy_namespace` matches `other` (a Pod or an Address)."""
    if "ipBlock" in peer:
        if not isinstance(other, Address):
            return False  # pod addresses are not for ipBlock (the API's advice); our pods' are private anyway
        block = peer["ipBlock"]
        network = ipaddress.ip_network(block["cidr"])
        return (other.ip.version == network.version and other.ip in network
                and not any(other.ip in ipaddress.ip_network(e) for e in block.get("except", [])
                            if ipaddress.ip_network(e).version == other.ip.version))
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), other.labels)


def port_matches(rule_ports, port, protocol):
    """Whether a rule's `ports` admit `port`/`protocol` (no ports: every port). Named ports are not used here."""
    if not rule_ports:
        return True
    for entry in rule_ports:
        assert "port" not in entry or isinstance(entry["port"], int), f"named port {entry['port']}: use numbers"
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        if entry["port"] <= port <= entry.get("endPort", entry["port"]):
            return True
    return False


def policy_types(policy):
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])


def side_allows(policies, direction, pod, other, port, protocol):
    """Whether the policies selecting `pod` (isolated for `direction`, "Ingress" or "Egress") let through the
    connection with `other` on `port`; a pod no such policy selects is not isolated."""
    if not isinstance(pod, Pod):
        return True
    isolating = [p for p in policies if p["metadata"].get("namespace") == pod.namespace
                 and direction in policy_types(p) and selects(p["spec"]["podSelector"], pod.labels)]
    if not isolating:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in isolating:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers)) \
                    and port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def connection_allowed(docs, source, destination, port, protocol="TCP"):
    """Whether the rendered NetworkPolicies let `source` open a connection to `destination`:`port`: egress from
    the source's side and ingress on the destination's side must both allow it."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    return (side_allows(policies, "Egress", source, destination, port, protocol)
            and side_allows(policies, "Ingress", destination, source, port, protocol))
