"""Paths and helpers for the chart tests: the cached helm binary, rendering, lookups."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kascade"
HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
NAMESPACED_VALUES = HERE / "values-namespaced.yaml"
RELEASE = "kascade"
RELEASE_NAMESPACE = "kascade-system"


def _pinned_kube_version() -> str:
    # Rendering targets the Kubernetes version the local control plane runs, rather than
    # helm's built-in default (which depends on the ldflags helm was built with).
    for line in (REPO / "e2e" / "cluster" / "versions.env").read_text().splitlines():
        if line.startswith("K8S_VERSION="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError("K8S_VERSION not found in e2e/cluster/versions.env")


KUBE_VERSION = _pinned_kube_version()

HelmRunner = Callable[..., "subprocess.CompletedProcess[str]"]
Manifest = dict[str, Any]


def helm_path() -> Path:
    """The cached helm binary, or a test failure that says how to build it."""
    cache = Path(os.environ.get("KASCADE_CACHE", Path.home() / ".cache" / "kascade"))
    path = cache / "bin" / "current" / "helm"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"helm binary not found at {path}: build it with e2e/cluster/build "
            "(or point KASCADE_CACHE at a cache that has bin/current/helm)",
            pytrace=False,
        )
    return path


def template_args(*extra: str) -> list[str]:
    """``helm template`` of the chart as release ``kascade`` in ``kascade-system``."""
    return [
        "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
        "--kube-version", KUBE_VERSION, *extra,
    ]  # fmt: skip


def parse_manifests(text: str) -> list[Manifest]:
    """The objects of a multi-document YAML stream, empty documents dropped."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of ``kind`` named ``name``; fails listing what was rendered."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    if len(found) != 1:
        rendered = sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)
        raise AssertionError(f"expected one {kind}/{name}, found {len(found)} in {rendered}")
    return found[0]
