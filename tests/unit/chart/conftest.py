"""Fixtures that run the real helm binary (built by e2e/cluster/build) on charts/kascade.

No cluster is needed: ``helm lint`` and ``helm template`` render offline. A missing helm
binary fails the tests with the command that builds it; it never skips them.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator

import pytest
from chart_render import HelmRunner, Manifest, helm_path, parse_manifests, template_args


@pytest.fixture(scope="session")
def helm() -> Iterator[HelmRunner]:
    """Runs ``helm ARGS...`` with private config/cache/data dirs (no user repos leak in)."""
    binary = helm_path()
    with tempfile.TemporaryDirectory(prefix="kascade-helm-") as home:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
        }

        def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            proc = subprocess.run(
                [str(binary), *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )
            if check and proc.returncode != 0:
                raise AssertionError(
                    f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
                )
            return proc

        yield run


@pytest.fixture
def render(helm: HelmRunner) -> Callable[..., list[Manifest]]:
    """Renders the chart with extra helm flags and returns the parsed objects."""

    def run(*extra: str) -> list[Manifest]:
        return parse_manifests(helm(*template_args(*extra)).stdout)

    return run
