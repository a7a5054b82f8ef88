"""Embedded mode reads YAML the way kubectl does (go-yaml via sigs.k8s.io/yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kascade.api import v1alpha1
from kascade.api.v1alpha1 import manifests

HERE = Path(__file__).parent


def _load(text: str) -> object:
    return yaml.load(text, Loader=manifests._KubectlLoader)


def test_scalars_resolve_as_kubectl_resolves_them() -> None:
    assert _load("a: 1e3") == {"a": 1000.0}
    assert _load("a: 2024-10-21") == {"a": "2024-10-21"}
    assert _load("a: 190:20:30") == {"a": "190:20:30"}
    assert _load("a: 1_000") == {"a": 1000}
    assert _load("a: 0x1F") == {"a": 31}
    assert _load("a: yes") == {"a": True}
    assert _load("a: 1e") == {"a": "1e"}
    assert _load("a: -1.5e-3") == {"a": -0.0015}


def test_a_file_kubectl_accepts_is_valid() -> None:
    [expert] = v1alpha1.load_path(HERE / "kubectl_yaml.yaml")
    assert isinstance(expert, v1alpha1.CloudExpert)
    assert expert.spec.budget.limit_usd == 1000.0
    assert expert.spec.azure is not None
    assert expert.spec.azure.api_version == "2024-10-21"
    assert expert.spec.pricing.output_per_million_tokens == 0.6


def test_duplicate_keys_are_still_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nkind: Secret\n")
    with pytest.raises(v1alpha1.ValidationFailed, match="mapping key 'kind' is defined twice"):
        v1alpha1.load_path(path)
