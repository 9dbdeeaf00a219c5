"""Structure of the Kubernetes manifests: every service deployed, probed, hardened and wired."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from memos_sdk.endpoints import SERVICES

BASE = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_probed_hardened_and_wired(service):
    docs = {d["kind"]: d for d in _docs(BASE / f"{service}.yaml")}
    assert {"ServiceAccount", "Service"} <= docs.keys()
    workload = docs.get("Deployment") or docs["StatefulSet"]
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert all(("value" in e) != ("valueFrom" in e) for e in container["env"])
    port = int(env[f"MEMOS_{service.upper()}_GRPC_ADDR"].rsplit(":", 1)[1])
    assert {p["port"] for p in docs["Service"]["spec"]["ports"]} >= {port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port
    assert pod["securityContext"]["runAsNonRoot"] is True
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] and not hardening["allowPrivilegeEscalation"]
    assert hardening["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["args"] == ["python", "-m", f"services.{service}"]
    assert env[f"MEMOS_{service.upper()}_NATS_URL"] == "nats://nats:4222" or service == "inference"


@pytest.mark.parametrize("service", [s for s in SERVICES if s != "inference"])
def test_each_service_verifies_tokens_and_only_governance_holds_the_signing_key(service):
    docs = {d["kind"]: d for d in _docs(BASE / f"{service}.yaml")}
    workload = docs.get("Deployment") or docs["StatefulSet"]
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    prefix = f"MEMOS_{service.upper()}_"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    key_file = env[prefix + "AUTH_PUBLIC_KEY_FILE"]["value"]
    assert volumes[mounts[key_file.rsplit("/", 1)[0]]]["secret"]["secretName"] == "memos-auth"
    assert env[prefix + "SERVICE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "memos-auth"
    signing = [v for v in volumes.values() if v.get("secret", {}).get("secretName") == "memos-signing-key"]
    assert bool(signing) == (service == "governance")


def test_the_gpu_component_gives_a_gpu_to_generation_and_training():
    component = yaml.safe_load((BASE.parent / "components" / "gpu" / "kustomization.yaml").read_text())
    (patch,) = component["patches"]
    deployments = {
        d["metadata"]["name"]
        for path in BASE.glob("*.yaml")
        for d in _docs(path)
        if d.get("kind") == "Deployment"
    }
    matched = {name for name in deployments if re.fullmatch(patch["target"]["name"], name)}
    assert matched == {"inference", "trainer"}
    assert "nvidia.com~1gpu" in patch["patch"]
