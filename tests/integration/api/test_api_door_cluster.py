"""Mistakes users make (api_door_cases) on the real API server: every one rejected at
the door, naming the field, in the same words as the models where the case says so.

One batch: the operator's own client sends each object as a server-side dry run (strict
field validation, as kubectl does) over one connection.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kascade.controller import kube as kube_mod

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
CASES_DIR = REPO / "tests" / "unit" / "api"
PLURALS = ("localmodelpools", "cloudexperts", "routingpolicies")


def _load(name: str) -> ModuleType:
    # Shared with tests/unit/api; loaded by path since test directories are not packages.
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CASES_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load("api_invalid_cases")
door = _load("api_door_cases")


async def _reject_all(kubeconfig: str, cases: Any) -> dict[str, str | None]:
    """Case name -> the API server's error (None when it accepted the object)."""
    kube = await kube_mod.Kube.connect(kubeconfig=kubeconfig)
    errors: dict[str, str | None] = {}
    try:
        for case in cases:
            body = {**case.body, "metadata": {**case.body["metadata"], "namespace": "default"}}
            try:
                await kube.create(body, dry_run=True)
            except kube_mod.KubeError as error:
                errors[case.name] = str(error)
            else:
                errors[case.name] = None
    finally:
        await kube.close()
    return errors


async def test_every_mistake_is_rejected_at_the_door_naming_the_field(
    kubectl: Any, kubeconfig: str
) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{plural}.kascade.io" for plural in PLURALS),
    )
    errors = await _reject_all(kubeconfig, door.CASES)
    accepted = [name for name, error in errors.items() if error is None]
    assert not accepted, f"accepted by the API server: {accepted}"
    unnamed = []
    for case in door.CASES:
        error = errors[case.name]
        assert error is not None
        if case.field not in error or (case.says is not None and case.says not in error):
            unnamed.append(f"{case.name}: wanted {case.field} / {case.says!r}\n  got: {error}")
    assert not unnamed, "\n".join(unnamed)


def test_kubectl_yaml_is_accepted_by_the_server_and_the_models(
    kubectl: Any, namespace: str
) -> None:
    # 1e3 as a number and an unquoted date as a string: both sides read the file alike.
    path = CASES_DIR / "kubectl_yaml.yaml"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    out = kubectl("create", "--dry-run=server", "-n", namespace, "-f", str(path)).stdout
    assert "cloudexpert.kascade.io/azure-gpt created (server dry run)" in out
    from kascade.api import v1alpha1

    assert [o.metadata.name for o in v1alpha1.load_path(path)] == ["azure-gpt"]
