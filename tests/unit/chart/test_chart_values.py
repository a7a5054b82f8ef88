"""Bad values are refused before anything reaches a cluster, naming the offending key.

values.schema.json catches types, unknown keys and formats; the chart's own checks
catch what JSON Schema cannot (relations between values, cluster capabilities).
"""

from __future__ import annotations

import pytest
from chart_render import HelmRunner, template_args


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        pytest.param(["--set-string", "gateway.replicas=3"], ["gateway", "replicas"], id="string"),
        pytest.param(["--set", "gateway.replicas=0"], ["gateway", "replicas"], id="zero"),
        pytest.param(["--set", "replicaCount=2"], ["replicaCount"], id="unknown-top"),
        pytest.param(["--set", "gateway.replica=2"], ["gateway", "replica"], id="typo"),
        pytest.param(["--set", "gateway.resources.limits.cpu=1"], ["limits", "cpu"], id="cpu"),
        pytest.param(
            ["--set", "operator.image.pullPolicy=Sometimes"], ["pullPolicy"], id="pull-policy"
        ),
        pytest.param(["--set", "operator.logLevel=verbose"], ["logLevel"], id="log-level"),
        pytest.param(["--set", "watchNamespaces={Team_A}"], ["watchNamespaces"], id="ns-name"),
        pytest.param(
            ["--set", "gateway.redisUrl=http://redis:6379"], ["redisUrl"], id="redis-scheme"
        ),
        pytest.param(["--set", "metrics.port=70000"], ["metrics", "port"], id="port-range"),
        pytest.param(["--set", "operator.replicas=0"], ["operator", "replicas"], id="op-replicas"),
        pytest.param(
            ["--set", "operator.leaderElection.enable=true"], ["enable"], id="leader-typo"
        ),
        pytest.param(
            ["--set", "operator.resources.requests.cpu=lots"], ["requests", "cpu"], id="quantity"
        ),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(
    helm: HelmRunner, flags: list[str], names: list[str]
) -> None:
    proc = helm(*template_args(*flags), check=False)
    assert proc.returncode != 0, f"helm accepted {flags}:\n{proc.stdout[:500]}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    for name in names:
        assert name in proc.stderr, f"{name!r} not named in:\n{proc.stderr}"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(
            ["--set", "gateway.replicas=2", "--set", "gateway.hpa.maxReplicas=2"],
            "gateway.replicas is 2 but gateway.redisUrl is empty",
            id="replicas-without-redis",
        ),
        pytest.param(
            ["--set", "gateway.hpa.maxReplicas=4"],
            "gateway.hpa.maxReplicas is 4 but gateway.redisUrl is empty",
            id="scale-without-redis",
        ),
        pytest.param(
            [
                "--set",
                "gateway.replicas=3",
                "--set",
                "gateway.hpa.maxReplicas=2",
                "--set",
                "gateway.redisUrl=redis://r:6379/0",
            ],
            "gateway.hpa.maxReplicas (2) must be at least gateway.replicas (3)",
            id="max-below-replicas",
        ),
        pytest.param(
            ["--set", "kuberay.required=true"],
            "kuberay.required is true but this cluster does not serve ray.io/v1 RayService",
            id="kuberay-missing",
        ),
        pytest.param(
            ["--set", "operator.leaderElection.enabled=false"],
            "operator.replicas is 2 but operator.leaderElection.enabled is false",
            id="replicas-without-leader-election",
        ),
        pytest.param(
            ["--set", "serviceAccount.create=false"],
            "serviceAccount.name is required when serviceAccount.create is false",
            id="sa-name",
        ),
    ],
)
def test_chart_checks_refuse_inconsistent_values(
    helm: HelmRunner, flags: list[str], message: str
) -> None:
    proc = helm(*template_args(*flags), check=False)
    assert proc.returncode != 0, f"helm accepted {flags}"
    assert message in proc.stderr, proc.stderr


def test_kuberay_required_passes_when_the_api_is_served(helm: HelmRunner) -> None:
    proc = helm(
        *template_args("--set", "kuberay.required=true", "--api-versions", "ray.io/v1/RayService")
    )
    assert "kind: Deployment" in proc.stdout
