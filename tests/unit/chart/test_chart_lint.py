"""``helm lint`` passes, warnings included, for both value sets the golden tests render."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from chart_render import CHART, KUBE_VERSION, NAMESPACED_VALUES, HelmRunner


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="defaults"),
        pytest.param(["--values", str(NAMESPACED_VALUES)], id="namespaced"),
    ],
)
def test_lint_strict_is_clean(helm: HelmRunner, extra: list[str]) -> None:
    proc = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *extra, check=False)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    # --strict already fails on warnings; also refuse errors printed without a failure.
    problems = [line for line in report.splitlines() if "[WARNING]" in line or "[ERROR]" in line]
    assert problems == [], report
    assert "1 chart(s) linted, 0 chart(s) failed" in report


def test_chart_works_without_generated_crds(helm: HelmRunner, tmp_path: Path) -> None:
    # The CRDs are generated into charts/kascade/crds by another tool; lint and template
    # must not depend on them, nor on any fetched dependency archive (KubeRay is a
    # documented prerequisite, not a chart dependency, so there is none to fetch).
    copy = tmp_path / "kascade"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("crds"))
    assert not (copy / "crds").exists()
    assert "dependencies" not in yaml.safe_load((copy / "Chart.yaml").read_text())
    proc = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(copy), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rendered = helm("template", "x", str(copy), "--kube-version", KUBE_VERSION).stdout
    assert "kind: Deployment" in rendered
