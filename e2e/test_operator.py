"""The operator on a real control plane: helm install, the operator process running with
the chart's ServiceAccount, kubectl apply of the examples, and convergence."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.testkit import KubectlRunner, free_port

from e2e import operator_support as ops
from kascade.gateway import config as gw

pytestmark = pytest.mark.cluster

REPO = ops.REPO
COMPLETE = REPO / "examples" / "complete"
RAYSERVICE_CRD = "rayservices.ray.io"


def _kuberay_crds() -> Path:
    out = subprocess.run(
        [str(REPO / "e2e" / "cluster" / "kuberay-crds")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _wait_established(kubectl: KubectlRunner, *names: str) -> None:
    # `kubectl wait` fails outright while a new CRD has no conditions yet: poll instead.
    for name in names:
        ops.wait_for(
            f"CRD {name} Established",
            lambda name=name: (
                "True"
                in kubectl(
                    "get",
                    "crd",
                    name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                    check=False,
                ).stdout
            ),
            timeout=60,
        )


@pytest.fixture(scope="module")
def operator(kubeconfig: str, kubectl: KubectlRunner) -> Iterator[ops.OperatorProcess]:
    kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(
            f"crd/{plural}.kascade.io"
            for plural in ("localmodelpools", "cloudexperts", "routingpolicies", "tenants")
        ),
    )
    # Start without KubeRay, to see the pool report it and recover once it is installed.
    kubectl("delete", "crd", RAYSERVICE_CRD, "--ignore-not-found")
    helm = subprocess.run(
        [
            "helm",
            "upgrade",
            "--install",
            ops.RELEASE,
            str(REPO / "charts" / "kascade"),
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            ops.RELEASE_NS,
            "--create-namespace",
            "--skip-crds",
            "--wait",
            "--timeout",
            "120s",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert helm.returncode == 0, helm.stderr
    sa_config = ops.service_account_kubeconfig(kubectl, kubeconfig, ops.RELEASE)
    # In a cluster the chart sets this from the pod's namespace (downward API).
    proc = ops.OperatorProcess(
        sa_config, resync_seconds=10, env={"KASCADE_OPERATOR_NAMESPACE": ops.RELEASE_NS}
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def dump_on_failure(
    request: pytest.FixtureRequest, operator: ops.OperatorProcess, kubectl: KubectlRunner
) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        events = kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False).stdout
        print(f"---- operator log ----\n{operator.log()[-20000:]}\n---- events ----\n{events}")


def _apply(kubectl: KubectlRunner, namespace: str, path: Path | str) -> None:
    if isinstance(path, Path):
        kubectl("apply", "-n", namespace, "-f", str(path))
    else:
        kubectl("apply", "-n", namespace, "-f", "-", input=path)


def _get(kubectl: KubectlRunner, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_pool_reports_kuberay_missing_then_recovers(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> None:
    _apply(kubectl, namespace, COMPLETE / "10-pool.yaml")

    def degraded() -> dict[str, Any] | None:
        pool = _get(kubectl, namespace, "localmodelpool", "smollm2")
        c = ops.condition(pool or {}, "Degraded")
        return c if c and c["status"] == "True" else None

    cond = ops.wait_for("Degraded=True on the pool", degraded)
    assert cond["reason"] == "KubeRayMissing"
    assert "rayservices.ray.io" in cond["message"]
    assert operator.running(), operator.log()

    kubectl("apply", "--server-side", "-f", str(_kuberay_crds()))
    _wait_established(kubectl, RAYSERVICE_CRD)
    ops.wait_for(
        "the RayService after KubeRay was installed",
        lambda: _get(kubectl, namespace, "rayservice", "smollm2"),
        timeout=40,
    )
    ops.wait_for(
        "Degraded=False on the pool",
        lambda: (
            (ops.condition(_get(kubectl, namespace, "lmp", "smollm2") or {}, "Degraded") or {}).get(
                "status"
            )
            == "False"
        ),
        timeout=40,
    )


def test_complete_example_converges(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> None:
    kubectl("apply", "--server-side", "-f", str(_kuberay_crds()))
    _apply(kubectl, namespace, COMPLETE)
    rayservice = ops.wait_for(
        "RayService smollm2", lambda: _get(kubectl, namespace, "rayservice", "smollm2")
    )
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 3)
    container = workers["template"]["spec"]["containers"][0]
    assert container["image"] == "example.com/kascade/serving:e2e"
    assert container["resources"]["requests"]["memory"] == "1Gi"
    owner = rayservice["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("LocalModelPool", "smollm2")

    cm = ops.wait_for(
        "gateway ConfigMap", lambda: _get(kubectl, namespace, "configmap", "kascade-gateway")
    )
    config = gw.parse_config(json.loads(cm["data"]["config.json"]))
    assert list(config.policies) == ["assistant"]
    assert config.pools["smollm2"].endpoint == f"http://smollm2-serve-svc.{namespace}.svc:8000"
    assert "REPLACE-ME" not in cm["data"]["config.json"]
    for kind in ("deployment", "service", "poddisruptionbudget"):
        assert _get(kubectl, namespace, kind, "kascade-gateway") is not None, kind
    kubectl(
        "wait",
        "-n",
        namespace,
        "--for=condition=Available",
        "deployment/kascade-gateway",
        "--timeout=90s",
    )

    def policy_ready() -> bool:
        policy = _get(kubectl, namespace, "routingpolicy", "assistant") or {}
        ready = ops.condition(policy, "Ready") or {}
        refs = ops.condition(policy, "ReferencesResolved") or {}
        return (
            ready.get("status") == "True"
            and refs.get("status") == "True"
            and (policy["status"].get("observedGeneration") == policy["metadata"]["generation"])
        )

    ops.wait_for("policy Ready", policy_ready, timeout=60)
    expert = _get(kubectl, namespace, "cloudexpert", "gpt-4o-mini") or {}
    assert (ops.condition(expert, "CredentialsMissing") or {}).get("status") == "False"
    listing = kubectl("get", "kascade", "-n", namespace).stdout
    assert "localmodelpool.kascade.io/smollm2" in listing
    assert "routingpolicy.kascade.io/assistant" in listing
    # Secrets are never written into status, events or the operator's log.
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    for text in (events, operator.log(), json.dumps(expert.get("status"))):
        assert "sk-REPLACE-ME" not in text


def test_missing_reference_recovers_by_itself(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> None:
    _apply(kubectl, namespace, COMPLETE / "30-policy.yaml")

    def refs() -> dict[str, Any] | None:
        policy = _get(kubectl, namespace, "routingpolicy", "assistant") or {}
        return ops.condition(policy, "ReferencesResolved")

    cond = ops.wait_for("ReferencesResolved", refs)
    assert cond["status"] == "False"
    for missing in (
        "LocalModelPool/smollm2",
        "CloudExpert/gpt-4o-mini",
        "CloudExpert/claude-haiku",
    ):
        assert missing in cond["message"]
    _apply(kubectl, namespace, COMPLETE / "10-pool.yaml")
    _apply(kubectl, namespace, COMPLETE / "20-experts.yaml")
    ops.wait_for("ReferencesResolved=True", lambda: (refs() or {}).get("status") == "True")


def test_expert_reports_missing_credentials_until_the_secret_exists(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> None:
    _apply(kubectl, namespace, COMPLETE / "20-experts.yaml")

    def creds() -> dict[str, Any] | None:
        return ops.condition(
            _get(kubectl, namespace, "cx", "gpt-4o-mini") or {}, "CredentialsMissing"
        )

    cond = ops.wait_for("CredentialsMissing", creds)
    assert cond["status"] == "True"
    assert cond["reason"] == "SecretNotFound"
    assert "openai-credentials" in cond["message"]
    kubectl(
        "create",
        "secret",
        "generic",
        "openai-credentials",
        "-n",
        namespace,
        "--from-literal=api-key=sk-e2e-secret-value",
    )
    ops.wait_for(
        "CredentialsMissing=False", lambda: (creds() or {}).get("status") == "False", timeout=40
    )
    assert "sk-e2e-secret-value" not in operator.log()


def _children(kubectl: KubectlRunner, namespace: str) -> dict[str, str]:
    versions = {}
    for kind in (
        "configmap",
        "deployment",
        "service",
        "poddisruptionbudget",
        "rayservice",
        "localmodelpool",
        "cloudexpert",
        "routingpolicy",
    ):
        items = json.loads(kubectl("get", kind, "-n", namespace, "-o", "json").stdout)["items"]
        for item in items:
            if kind == "configmap" and item["metadata"]["name"] != "kascade-gateway":
                continue
            versions[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return versions


def test_hand_edits_are_repaired_and_idle_operator_writes_nothing(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> None:
    kubectl("apply", "--server-side", "-f", str(_kuberay_crds()))
    _apply(kubectl, namespace, COMPLETE)
    ops.wait_for(
        "gateway Deployment", lambda: _get(kubectl, namespace, "deployment", "kascade-gateway")
    )
    kubectl(
        "set",
        "image",
        "-n",
        namespace,
        "deployment/kascade-gateway",
        "gateway=evil.example.com/gateway:1",
    )

    def image() -> str:
        dep = _get(kubectl, namespace, "deployment", "kascade-gateway") or {}
        return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])

    ops.wait_for(
        "the gateway image repaired",
        lambda: image() == "example.com/kascade/gateway:e2e",
        timeout=30,
    )
    kubectl(
        "wait",
        "-n",
        namespace,
        "--for=condition=Available",
        "deployment/kascade-gateway",
        "--timeout=90s",
    )
    ops.wait_for(
        "policy Ready",
        lambda: (
            (ops.condition(_get(kubectl, namespace, "rp", "assistant") or {}, "Ready") or {}).get(
                "status"
            )
            == "True"
        ),
    )
    # The Deployment controller's last status writes have landed (rollout complete) ...
    kubectl("rollout", "status", "-n", namespace, "deployment/kascade-gateway",
            "--timeout=90s")  # fmt: skip
    # ... and once stopped, the operator writes nothing more: the versions seen now are
    # the ones an idle operator must leave alone. "Nothing changed" also needs KubeRay
    # (the session's real one, when it runs) to stand still over the window: if it
    # wrote, the operator may rightly mirror that, so the window is taken again.
    for _attempt in range(4):
        outside = _kuberay_writes(kubectl, namespace)
        before, after = _idle_window(operator, kubectl, namespace)
        if _kuberay_writes(kubectl, namespace) == outside:
            break
    else:
        raise AssertionError("KubeRay kept writing in every idle window; nothing was measured")
    assert after == before, "objects were rewritten while nothing changed"
    assert operator.running(), operator.log()


def _metric(port: int, series: str) -> float:
    """The value of one series on the operator's metrics port (0 before it answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def test_deleting_the_policy_garbage_collects_the_gateway(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> None:
    _apply(kubectl, namespace, COMPLETE)
    ops.wait_for(
        "gateway Deployment", lambda: _get(kubectl, namespace, "deployment", "kascade-gateway")
    )
    kubectl("delete", "routingpolicy", "assistant", "-n", namespace)
    for kind in ("deployment", "configmap", "service", "poddisruptionbudget"):
        ops.wait_for(
            f"{kind} garbage-collected",
            lambda kind=kind: _get(kubectl, namespace, kind, "kascade-gateway") is None,
            timeout=60,
        )
    # The pool and experts are untouched.
    assert _get(kubectl, namespace, "lmp", "smollm2") is not None


def _loosened_crds(kubectl: KubectlRunner) -> None:
    """The CRDs as an older release might have had them: custom patterns' regexes
    unchecked, no upper bound on limitUSD or maxCostPerRequestUSD. Objects stored under
    them stay stored after an upgrade."""
    from kascade.api import crdgen

    for info in crdgen.KINDS:
        if info.plural not in ("routingpolicies", "cloudexperts"):
            continue
        crd = crdgen.crd(info)
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        if info.plural == "routingpolicies":
            pattern = spec["properties"]["privacy"]["properties"]["customPatterns"]["items"]
            pattern["properties"]["regex"].pop("x-kubernetes-validations")
            spec["properties"]["maxCostPerRequestUSD"].pop("maximum")
        else:
            spec["properties"]["budget"]["properties"]["limitUSD"].pop("maximum")
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd))


_ISOLATION = """\
apiVersion: kascade.io/v1alpha1
kind: LocalModelPool
metadata: {name: smol}
spec:
  model: {runtime: llama-cpp, source: "builtin://smollm2-135m-instruct"}
---
apiVersion: kascade.io/v1alpha1
kind: CloudExpert
metadata: {name: ok}
spec:
  provider: openai-compatible
  endpoint: https://api.example.com/v1
  model: m
  pricing: {inputPerMillionTokens: 1, outputPerMillionTokens: 2}
  budget: {limitUSD: 5}
---
apiVersion: kascade.io/v1alpha1
kind: CloudExpert
metadata: {name: sleepy}
spec:
  provider: openai-compatible
  endpoint: https://api.example.com/v1
  model: m
  pricing: {inputPerMillionTokens: 1, outputPerMillionTokens: 2}
  budget: {limitUSD: 5}
  suspend: true
---
apiVersion: kascade.io/v1alpha1
kind: RoutingPolicy
metadata: {name: healthy}
spec: {localPool: smol, experts: [pricey, ok]}
---
apiVersion: kascade.io/v1alpha1
kind: RoutingPolicy
metadata: {name: paused-only}
spec: {localPool: smol, experts: [sleepy]}
"""

_BROKEN = """\
apiVersion: kascade.io/v1alpha1
kind: CloudExpert
metadata: {name: pricey}
spec:
  provider: openai-compatible
  endpoint: https://api.example.com/v1
  model: m
  pricing: {inputPerMillionTokens: 1, outputPerMillionTokens: 2}
  budget: {limitUSD: 50000000}
---
apiVersion: kascade.io/v1alpha1
kind: RoutingPolicy
metadata: {name: broken}
spec:
  localPool: smol
  maxCostPerRequestUSD: 50000000
---
apiVersion: kascade.io/v1alpha1
kind: RoutingPolicy
metadata: {name: unreadable}
spec:
  localPool: smol
  privacy:
    customPatterns: [{name: ticket, regex: "(abc"}]
"""


def test_one_broken_policy_and_expert_leave_their_neighbours_serving(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> None:
    kubectl("apply", "--server-side", "-f", str(_kuberay_crds()))
    _loosened_crds(kubectl)
    try:
        # The loosened schema takes effect within moments; until then the server refuses.
        ops.wait_for(
            "the broken objects stored under the older CRDs",
            lambda: (
                kubectl("apply", "-n", namespace, "-f", "-", input=_BROKEN, check=False).returncode
                == 0
            ),
            timeout=30,
        )
    finally:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    _apply(kubectl, namespace, _ISOLATION)

    def condition(kind: str, name: str, type_: str, status: str) -> dict[str, Any] | None:
        found = ops.condition(_get(kubectl, namespace, kind, name) or {}, type_)
        return found if found is not None and found["status"] == status else None

    broken = ops.wait_for("broken Ready=False", lambda: condition("rp", "broken", "Ready", "False"))
    assert broken["reason"] == "InvalidSpec", broken
    bound = "spec.maxCostPerRequestUSD: Input should be less than or equal to 9000000"
    assert bound in broken["message"], broken

    # A stored object that breaks a CEL rule of the current CRD (here: a regex that does
    # not compile) cannot take any status write once that CRD is in force: an Event says
    # it instead (the condition, if the operator got to it while the old CRD still held).
    def unreadable_events() -> list[str]:
        items = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
        return [
            e["message"]
            for e in items["items"]
            if e["involvedObject"]["name"] == "unreadable" and e["reason"] == "InvalidSpec"
        ]

    def unreadable_reported() -> list[str]:
        ready = condition("rp", "unreadable", "Ready", "False") or {}
        return unreadable_events() or (
            [ready["message"]] if ready.get("reason") == "InvalidSpec" else []
        )

    unreadable = ops.wait_for("unreadable reported as InvalidSpec", unreadable_reported)
    assert "spec.privacy.customPatterns[0].regex" in unreadable[0], unreadable
    assert "RE2" in unreadable[0], unreadable
    pricey = ops.wait_for("pricey Ready=False", lambda: condition("cx", "pricey", "Ready", "False"))
    assert pricey["reason"] == "InvalidSpec", pricey
    assert "spec.budget.limitUSD" in pricey["message"], pricey
    healthy = ops.wait_for(
        "healthy Ready=True", lambda: condition("rp", "healthy", "Ready", "True"), timeout=90
    )
    assert healthy["message"] == "Gateway is serving this policy"
    degraded = ops.wait_for(
        "paused-only Degraded=True", lambda: condition("rp", "paused-only", "Degraded", "True")
    )
    assert degraded["reason"] == "NoUsableExpert"
    assert "sleepy (suspended)" in degraded["message"]
    assert "degrade to the local answer" in degraded["message"]
    assert condition("rp", "healthy", "Degraded", "False") is not None

    cm = _get(kubectl, namespace, "configmap", "kascade-gateway") or {}
    config = gw.parse_config(json.loads(cm["data"]["config.json"]))
    assert sorted(config.policies) == ["healthy", "paused-only"]
    assert len(unreadable_events()) <= 1, "the Event is recorded once, not on every resync"
    assert config.policies["healthy"].experts == ["ok"]
    assert sorted(config.experts) == ["ok"]
    # Isolation, not failure: the namespace's reconcile never failed.
    assert f"key=namespace/{namespace}" not in operator.log()


def test_a_failing_reconcile_is_a_condition_and_an_event_then_recovers(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> None:
    # A quota that forbids new ConfigMaps makes the gateway's apply fail, as a real
    # cluster's policy might: the failure must show on the policy, not loop in the log.
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-configmaps"},
        "spec": {"hard": {"count/configmaps": "0"}},
    }
    _apply(kubectl, namespace, json.dumps(quota))
    _apply(kubectl, namespace, COMPLETE)

    def ready() -> dict[str, Any]:
        return ops.condition(_get(kubectl, namespace, "rp", "assistant") or {}, "Ready") or {}

    failed = ops.wait_for(
        "Ready=False/ReconcileFailed",
        lambda: ready().get("reason") == "ReconcileFailed" and ready(),
    )
    assert failed["status"] == "False"
    assert "exceeded quota" in failed["message"], failed
    events = ops.wait_for(
        "a ReconcileFailed Event",
        lambda: [
            e
            for e in json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)[
                "items"
            ]
            if e["reason"] == "ReconcileFailed" and e["involvedObject"]["name"] == "assistant"
        ],
    )
    assert events[0]["type"] == "Warning"

    # Retried with backoff: the second failure in a row says when the next try is.
    def in_a_row() -> int:
        found = re.search(r"\((\d+) in a row, next try in \d+s\)", ready().get("message", ""))
        return int(found.group(1)) if found else 0

    ops.wait_for("a second failure in a row", lambda: in_a_row() >= 2)
    kubectl("delete", "resourcequota", "no-configmaps", "-n", namespace)
    ops.wait_for(
        "the gateway ConfigMap after the quota went",
        lambda: _get(kubectl, namespace, "configmap", "kascade-gateway"),
        timeout=120,
    )
    ops.wait_for("Ready=True", lambda: ready().get("status") == "True", timeout=120)
    # One traceback for the streak, then one line per retry (with backoff). Each record
    # is logged by two handlers; the plain one's lines start with the date.
    key = f"key=namespace/{namespace}"
    lines = [line for line in operator.log().splitlines() if line[:1].isdigit()]
    assert len([line for line in lines if f"Reconcile failed {key}" in line]) == 1, lines[-50:]
    assert any(f"Reconcile still failing {key}" in line for line in lines), lines[-50:]


def _kuberay_writes(kubectl: KubectlRunner, namespace: str) -> dict[str, Any]:
    """What only KubeRay writes here: its clusters and Services, and the
    RayService's status."""
    seen: dict[str, Any] = {}
    for kind in ("raycluster", "service"):
        items = json.loads(kubectl("get", kind, "-n", namespace, "-o", "json").stdout)["items"]
        for item in items:
            if not item["metadata"]["name"].startswith("kascade-"):
                seen[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    services = json.loads(kubectl("get", "rayservice", "-n", namespace, "-o", "json").stdout)
    for item in services["items"]:
        seen[f"rayservice-status/{item['metadata']['name']}"] = item.get("status")
    return seen


def _idle_window(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Versions before and after a restarted operator's startup and two resync rounds."""
    operator.stop()
    before = _children(kubectl, namespace)
    port = free_port()
    operator.extra_env["KASCADE_METRICS_PORT"] = str(port)
    try:
        operator.start()
        # The window is defined by work done, not by wall time: the restarted operator's
        # startup reconciles and two whole resync rounds (every object reconciled again)
        # have completed. Round 3 starts one interval after round 2 was queued, and the
        # namespace reconciles counted done are at least startup + rounds 1 and 2.
        ops.wait_for(
            "two completed resync rounds of the restarted operator",
            lambda: (
                _metric(port, "kascade_operator_resync_rounds_total") >= 3
                and _metric(port, 'kascade_operator_reconciles_total{kind="namespace",result="ok"}')
                >= 3
            ),
            timeout=120,
        )
    finally:
        operator.extra_env.pop("KASCADE_METRICS_PORT")
    return before, _children(kubectl, namespace)
