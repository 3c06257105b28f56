"""deploy/kubernetes/: the manifests parse, agree with each other and with the daemon (its
config validator, its endpoints, the systemd unit's memory ceiling, the fleet rules' `node`
label).  No cluster runs here: nothing is applied; tests/e2e/test_package.py runs the image with
the DaemonSet's container settings under podman."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tenantwatch.config import parse_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"


def docs() -> dict[str, dict]:
    out = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        (doc,) = list(yaml.safe_load_all(path.read_text()))
        out[doc["kind"]] = doc
    return out


def test_kustomization_lists_every_manifest():
    k = docs()["Kustomization"]
    assert sorted(k["resources"]) == sorted(p.name for p in DEPLOY.glob("*.yaml")
                                            if p.name != "kustomization.yaml")
    for kind, doc in docs().items():
        if kind not in ("Kustomization", "Namespace"):
            assert doc["metadata"]["namespace"] == "tenantwatch", kind


def test_the_configmap_is_a_valid_config_listening_on_the_metrics_port():
    d = docs()
    text = d["ConfigMap"]["data"]["tenantwatch.yaml"]
    config = parse_config(yaml.safe_load(text), env={})
    assert config.listen_host == "0.0.0.0"
    assert config.enforcement.mode == "dry-run"
    (c,) = d["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    (port,) = c["ports"]
    assert port["containerPort"] == config.listen_port and port["name"] == "metrics"


def test_daemonset_privileges_mounts_probes_and_resources():
    d = docs()
    pod = d["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert {"BPF", "PERFMON", "SYS_ADMIN"} <= set(sc["capabilities"]["add"])
    assert "privileged: true" in (DEPLOY / "daemonset.yaml").read_text()  # the fallback, noted
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/sys/kernel/tracing", "/sys/fs/cgroup", "/lib/modules", "/usr/src"):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert mounts["/lib/modules"]["readOnly"] and mounts["/usr/src"]["readOnly"]
    # the config: the ConfigMap's key under the path the args name
    config_mount = mounts["/etc/tenantwatch"]
    assert volumes[config_mount["name"]]["configMap"]["name"] == \
        d["ConfigMap"]["metadata"]["name"]
    assert c["args"] == ["run", "--config", "/etc/tenantwatch/tenantwatch.yaml"]
    assert "tenantwatch.yaml" in d["ConfigMap"]["data"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    # the same memory ceiling as the systemd unit
    unit = (REPO / "systemd" / "tenantwatch.service").read_text()
    (mb,) = re.findall(r"^MemoryMax=(\d+)M$", unit, re.MULTILINE)
    assert c["resources"]["limits"]["memory"] == f"{mb}Mi"
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_service_and_servicemonitor_reach_the_pods_with_a_node_label():
    d = docs()
    labels = d["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    svc = d["Service"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    sm = d["ServiceMonitor"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == port["name"]
    # the fleet rules group by `node` (dashboards/alerts/tenantwatch.fleet.rules.yml)
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in \
        ep["relabelings"]
