"""The generated CRDs on a real API server: examples accepted, invalid objects rejected
with the field named, server defaults equal to the models', kubectl explain and columns.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import api_mutations
import pytest

from kascade.api import v1alpha1

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
Kubectl = Callable[..., Any]


def _load_cases() -> ModuleType:
    # Shared with tests/unit/api; loaded by path since test directories are not packages.
    name = "api_invalid_cases"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO / "tests" / "unit" / "api" / "api_invalid_cases.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cases = _load_cases()


@pytest.fixture(scope="module")
def crds(kubectl: Kubectl) -> None:
    """The CRDs from crds/, applied server-side and Established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{info.plural}.kascade.io" for info in _kinds()),
    )


@pytest.fixture(scope="module")
def shared_namespace(kubectl: Kubectl, crds: None) -> Iterator[str]:
    """One namespace for the many dry-run checks (a namespace per case would be slow)."""
    name = f"kascade-api-cases-{os.getpid() % 100000}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _kinds() -> list[Any]:
    from kascade.api import crdgen

    return list(crdgen.KINDS)


def test_crds_are_established_and_structural(kubectl: Kubectl, crds: None) -> None:
    for info in _kinds():
        crd = json.loads(kubectl("get", f"crd/{info.plural}.kascade.io", "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", conditions
        assert conditions.get("NamesAccepted") == "True", conditions
        assert conditions.get("NonStructuralSchema") in (None, "False"), conditions


@pytest.mark.parametrize(
    "path",
    sorted([*REPO.glob("examples/*.yaml")]),
    ids=lambda p: p.name,
)
def test_example_is_accepted(kubectl: Kubectl, namespace: str, crds: None, path: Path) -> None:
    out = kubectl("apply", "-n", namespace, "-f", str(path)).stdout
    for obj in v1alpha1.load_path(path):
        assert f"{obj.kind.lower()}.kascade.io/{obj.metadata.name} created" in out, out


def test_complete_setup_is_accepted_and_listed_by_category(
    kubectl: Kubectl, namespace: str, crds: None
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "complete"))
    # Live values for the columns, written through the status subresource.
    now = "2026-01-01T00:00:00Z"
    ready = {"type": "Ready", "status": "True", "reason": "Serving", "lastTransitionTime": now}
    _patch_status(kubectl, namespace, "lmp/smollm2", {"replicas": {"desired": 3, "ready": 2}})
    _patch_status(
        kubectl,
        namespace,
        "cx/gpt-4o-mini",
        {
            "spend": {"spentUSD": 1.25, "reservedUSD": 0.01, "remainingUSD": 8.74},
            "conditions": [ready],
        },
    )
    _patch_status(
        kubectl,
        namespace,
        "rp/assistant",
        {"stats": {"requests": 100, "escalationRate": 0.12}, "conditions": [ready]},
    )
    out = kubectl("get", "kascade", "-n", namespace).stdout
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "NAME RUNTIME MODEL READY DESIRED AGE" in lines, out
    assert any(
        line.startswith(
            "localmodelpool.kascade.io/smollm2 llama-cpp builtin://smollm2-135m-instruct 2 3 "
        )
        for line in lines
    ), out
    assert "NAME MODEL SPENT LIMIT READY AGE" in lines, out
    assert any(
        line.startswith("cloudexpert.kascade.io/gpt-4o-mini gpt-4o-mini 1.25 10 True ")
        for line in lines
    ), out
    assert any(
        line.startswith("cloudexpert.kascade.io/claude-haiku claude-3-5-haiku-latest  5 ")
        or line.startswith("cloudexpert.kascade.io/claude-haiku claude-3-5-haiku-latest 5 ")
        for line in lines
    ), out
    assert "NAME POOL EXPERTS ESCALATION READY AGE" in lines, out
    assert any(
        line.startswith(
            'routingpolicy.kascade.io/assistant smollm2 ["gpt-4o-mini","claude-haiku"] 0.12 True '
        )
        for line in lines
    ), out
    short = kubectl("get", "lmp,cx,rp", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(short) == [
        "cloudexpert.kascade.io/claude-haiku",
        "cloudexpert.kascade.io/gpt-4o-mini",
        "localmodelpool.kascade.io/smollm2",
        "routingpolicy.kascade.io/assistant",
    ]


def test_status_is_a_subresource(kubectl: Kubectl, namespace: str, crds: None) -> None:
    body = cases.pool()
    body["status"] = {"replicas": {"desired": 9, "ready": 9}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    got = json.loads(kubectl("get", "-n", namespace, "lmp/pool", "-o", "json").stdout)
    assert "status" not in got or got["status"].get("replicas") is None, got.get("status")


@pytest.mark.parametrize("case", cases.CASES, ids=lambda c: c.name)
def test_invalid_object_is_rejected_naming_the_field(
    kubectl: Kubectl, shared_namespace: str, case: Any
) -> None:
    proc = kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        shared_namespace,
        "-f",
        "-",
        input=json.dumps(case.body),
        check=False,
    )
    assert proc.returncode != 0, f"accepted: {proc.stdout}"
    assert case.field in proc.stderr, proc.stderr
    # The models' message for a cross-field rule is the very message the server gives.
    with pytest.raises(v1alpha1.ValidationFailed) as raised:
        v1alpha1.load_objects([case.body], source="case.yaml")
    for problem in raised.value.problems:
        if problem.message in _rule_messages():
            assert problem.message in proc.stderr, (problem.message, proc.stderr)


def test_fit_score_without_combined_weights_is_accepted(
    kubectl: Kubectl, shared_namespace: str, crds: None
) -> None:
    # fitScore makes confidence.combined optional, for the policy and for a variant that
    # turns combined on (the CEL rules on both must see the policy's fitScore).
    target = {"maxLocalErrorRate": 0.1, "fitScore": True}
    body = cases.policy(
        confidence={"method": "combined", "target": target},
        variants=[
            {"name": "a", "weight": 1, "overrides": {"confidence": {"method": "margin"}}},
            {"name": "b", "weight": 1, "overrides": {"confidence": {"method": "combined"}}},
        ],
    )
    kubectl("apply", "--dry-run=server", "-n", shared_namespace, "-f", "-",
            input=json.dumps(body))  # fmt: skip


def _rule_messages() -> set[str]:
    from kascade.api import crdgen

    messages = set()
    for info in crdgen.KINDS:
        stack = [crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]]
        while stack:
            node = stack.pop()
            messages.update(r["message"] for r in node.get("x-kubernetes-validations", []))
            stack.extend(node.get("properties", {}).values())
            if isinstance(node.get("items"), dict):
                stack.append(node["items"])
    assert len(messages) > 20
    return messages


@pytest.mark.parametrize(
    "body",
    [cases.pool(), cases.expert(), cases.policy()],
    ids=["LocalModelPool", "CloudExpert", "RoutingPolicy"],
)
def test_server_defaults_equal_model_defaults(
    kubectl: Kubectl, shared_namespace: str, body: dict[str, Any]
) -> None:
    proc = kubectl(
        "create",
        "--dry-run=server",
        "-n",
        shared_namespace,
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(body),
    )
    from_server = json.loads(proc.stdout)
    [local] = v1alpha1.load_objects([body], source="minimal.yaml")
    # Empty maps and lists mean "absent" to both sides (the server keeps a defaulted `{}`,
    # the models' manifests leave it out); every value that is set must be equal.
    assert _without_empty(from_server["spec"]) == local.to_manifest()["spec"], (
        "server-side defaults differ from the models' defaults"
    )


def test_runtime_is_immutable(kubectl: Kubectl, namespace: str, crds: None) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(cases.pool()))
    patch = {"spec": {"model": {"runtime": "vllm"}, "resources": {"gpu": 1}}}
    proc = kubectl(
        "patch",
        "-n",
        namespace,
        "lmp/pool",
        "--type=merge",
        "-p",
        json.dumps(patch),
        check=False,
    )
    assert proc.returncode != 0
    assert "spec.model.runtime is immutable" in proc.stderr, proc.stderr
    ok = {"spec": {"model": {"contextLength": 4096}}}
    kubectl("patch", "-n", namespace, "lmp/pool", "--type=merge", "-p", json.dumps(ok))


def test_explain_prints_the_model_descriptions(kubectl: Kubectl, crds: None) -> None:
    fields = v1alpha1.localmodelpool.ModelSpec.model_fields
    deadline = time.monotonic() + 60
    while True:
        # The OpenAPI document the API server publishes lags CRD creation a little.
        proc = kubectl("explain", "localmodelpool.spec.model", check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "The model to serve and its runtime." in text
    for name in ("runtime", "source", "sha256", "contextLength", "chatTemplate"):
        assert name in text
    for info in (fields["runtime"], fields["source"]):
        first_sentence = " ".join(info.description.split()).split(". ")[0]
        assert first_sentence in text, first_sentence
    assert "llama-cpp" in text
    assert "vllm" in text


def _without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_models_and_server_agree_on_random_objects(
    kubectl: Kubectl, shared_namespace: str, seed: int
) -> None:
    mutator = api_mutations.Mutator(cases=cases, seed=seed)
    disagreements = []
    accepted = 0
    for _ in range(100):
        body = mutator.variation()
        try:
            v1alpha1.load_objects([body], source="random.yaml")
            python_error = None
        except v1alpha1.ValidationFailed as error:
            python_error = str(error)
        proc = kubectl(
            "create",
            "--dry-run=server",
            "-n",
            shared_namespace,
            "-f",
            "-",
            input=json.dumps(body),
            check=False,
        )
        server_error = proc.stderr.strip() if proc.returncode else None
        accepted += server_error is None
        if (python_error is None) != (server_error is None):
            disagreements.append(
                f"{json.dumps(body)}\n  models: {python_error}\n  server: {server_error}"
            )
    assert not disagreements, "\n".join(disagreements)
    # Both outcomes must be well represented, or agreement would mean little.
    assert 10 <= accepted <= 90, accepted


def _patch_status(kubectl: Kubectl, namespace: str, ref: str, status: dict[str, Any]) -> None:
    kubectl(
        "patch",
        "-n",
        namespace,
        ref,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
