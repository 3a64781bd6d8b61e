"""The Kubernetes manifests of deploy/kubernetes, rendered offline with `kubectl kustomize`, and what the tests
read from them: documents by kind and name, a container's environment as the kubelet would build it."""
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "ha")
# Where a Secret's value would be: the tests only need to know which key of which Secret it came from.
SECRET_PLACEHOLDER = "secret-{name}-{key}"


def render(kustomization_dir):
    """`kubectl kustomize DIR` as a list of documents; raises CalledProcessError with kustomize's message."""
    if shutil.which("kubectl") is None:
        raise RuntimeError("kubectl is needed to render deploy/kubernetes (Debian: google-cloud-cli-kubectl)")
    done = subprocess.run(["kubectl", "kustomize", str(kustomization_dir)], capture_output=True, text=True,
                          timeout=120, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_overlay(name, components=()):
    """An overlay, optionally with components added (through a throw-away kustomization beside nothing else)."""
    overlay = KUSTOMIZE_ROOT / "overlays" / name
    if not components:
        return render(overlay)
    with tempfile.TemporaryDirectory() as scratch:
        kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                         # kustomize takes only relative paths
                         "resources": [os.path.relpath(overlay, scratch)],
                         "components": [os.path.relpath(KUSTOMIZE_ROOT / "components" / c, scratch)
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


def container_env(docs, deployment):
    """The process environment of a Deployment's container: its ConfigMaps, then its `env`, with `$(VAR)`
    expanded from the variables before it, as the kubelet does. Secret values are placeholders that name their
    Secret and key; a reference to a missing ConfigMap key or an undefined variable is an AssertionError."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
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
    """(secret name, key) of every secretKeyRef in the Deployment's container."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {(v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
            for v in container.get("env", []) if "valueFrom" in v}
