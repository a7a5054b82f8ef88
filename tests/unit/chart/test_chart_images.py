"""The chart, the package and the Dockerfiles agree on versions, users and commands."""

from __future__ import annotations

import re

import yaml
from chart_render import CHART, REPO

import kascade

DOCKER = REPO / "docker"


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == kascade.__version__
    assert chart["version"] == kascade.__version__


def test_operator_and_gateway_images_run_as_the_chart_user() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    for name in ("operator", "gateway"):
        dockerfile = (DOCKER / f"{name}.Dockerfile").read_text()
        users = re.findall(r"^USER (\S+)$", dockerfile, flags=re.MULTILINE)
        # The last USER wins; numeric so runAsNonRoot can be verified by the kubelet.
        assert users[-1] == f"{uid}:{uid}", f"{name}.Dockerfile runs as {users[-1]}"


def test_images_install_the_extras_their_component_needs() -> None:
    operator = (DOCKER / "operator.Dockerfile").read_text()
    gateway = (DOCKER / "gateway.Dockerfile").read_text()
    serving = (DOCKER / "serving.Dockerfile").read_text()
    assert '".[operator]"' in operator
    assert "[operator]" not in gateway
    assert "[serving]" not in gateway
    assert '".[serving]"' in serving
    assert re.search(
        r"^FROM python:3\.11-slim|^ARG PYTHON_IMAGE=python:3\.11-slim$", operator, re.M
    )
    assert re.search(r"^ARG RAY_IMAGE=rayproject/ray:\$\{RAY_VERSION\}-py311-cpu$", serving, re.M)


def test_default_commands_match_what_the_chart_and_operator_run() -> None:
    operator = (DOCKER / "operator.Dockerfile").read_text()
    gateway = (DOCKER / "gateway.Dockerfile").read_text()
    assert 'ENTRYPOINT ["kascade"]' in operator
    assert 'CMD ["operator", "--all-namespaces"]' in operator
    assert 'ENTRYPOINT ["kascade"]' in gateway
    assert (
        'CMD ["gateway", "--config", "/etc/kascade/gateway/config.json", "--host", "0.0.0.0", '
        '"--port", "8080"]' in gateway
    )


def test_build_context_keeps_only_what_pip_needs() -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    assert patterns[patterns.index("*") :][:4] == [
        "*",
        "!pyproject.toml",
        "!README.md",
        "!operator/",
    ]
