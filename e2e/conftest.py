"""e2e plumbing: each test's outcome visible to fixtures (to dump logs on failure), and
the real KubeRay operator for the session."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest
from tests.testkit import KubectlRunner

from e2e import dataplane
from e2e import kuberay as kuberay_mod


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def kuberay(kubeconfig: str, kubectl: KubectlRunner) -> Iterator[kuberay_mod.KubeRayOperator]:
    """KubeRay's CRDs and its real operator, for the whole session."""
    kuberay_mod.install_crds(kubectl)
    heads = dataplane.RayHeads(kubectl)
    operator = kuberay_mod.KubeRayOperator(kubeconfig, heads)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
        heads.close()
        print(f"---- KubeRay operator log (tail) ----\n{operator.log()[-6000:]}")
