"""What the rendered chart promises: operator replicas of which only the Lease holder
acts, restricted pods, the gateway defaults handed to the operator, and exactly the RBAC
it needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from chart_render import CHART, NAMESPACED_VALUES, RELEASE_NAMESPACE, Manifest, find

Render = Callable[..., list[Manifest]]

OPERATOR = "kascade-operator"
CRUD = {"get", "list", "watch", "create", "patch", "update", "delete"}

# (apiGroup, resource) -> verbs: the operator's whole permission set, written out again
# here on purpose, so a change to the chart's RBAC has to be made twice.
NAMESPACED_RULES: dict[tuple[str, str], set[str]] = {
    **{("kascade.io", r): {"get", "list", "watch", "patch"} for r in
       ("localmodelpools", "cloudexperts", "routingpolicies", "tenants")},
    **{("kascade.io", f"{r}/status"): {"get", "patch", "update"} for r in
       ("localmodelpools", "cloudexperts", "routingpolicies", "tenants")},
    ("ray.io", "rayservices"): CRUD,
    ("ray.io", "rayclusters"): {"get", "patch"},
    ("apps", "deployments"): CRUD,
    ("", "services"): CRUD,
    ("", "configmaps"): CRUD,
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): CRUD,
    ("policy", "poddisruptionbudgets"): CRUD,
    ("monitoring.coreos.com", "servicemonitors"): {"get", "list", "watch", "create", "patch",
                                                   "delete"},
    ("", "secrets"): {"get"},
    ("networking.k8s.io", "networkpolicies"): CRUD,
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"},
}  # fmt: skip
CLUSTER_RULES: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
}


def flatten(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """Rules as (apiGroup, resource) -> verbs; refuses wildcards and resourceNames."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for value in (*rule["apiGroups"], *rule["resources"], *rule["verbs"]):
            assert "*" not in value, f"wildcard in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def container(manifests: list[Manifest]) -> dict[str, Any]:
    deployment = find(manifests, "Deployment", OPERATOR)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env(manifests: list[Manifest]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from>") for e in container(manifests)["env"]}


def test_operator_runs_two_replicas_of_which_the_lease_holder_acts(render: Render) -> None:
    deployment = find(render(), "Deployment", OPERATOR)
    assert deployment["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert deployment["spec"]["replicas"] == 2
    # A new pod stands by until the old leader releases the Lease: rolling is safe.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    args = container(render())["args"]
    assert args[args.index("--leader-elect") + 1 :][:2] == ["--lease-name", OPERATOR]
    values = env(render())
    assert values["KASCADE_OPERATOR_NAMESPACE"] == "<from>"
    assert values["POD_NAME"] == "<from>"
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == "kascade"


def test_without_leader_election_one_replica_is_replaced_not_rolled(render: Render) -> None:
    manifests = render(
        "--set", "operator.leaderElection.enabled=false", "--set", "operator.replicas=1"
    )
    deployment = find(manifests, "Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--no-leader-elect" in container(manifests)["args"]
    assert not [m for m in manifests if m["metadata"]["name"] == f"{OPERATOR}-lease"]


@pytest.mark.parametrize("extra", [[], ["--values", str(NAMESPACED_VALUES)]])
def test_lease_rbac_is_create_and_get_update_of_the_one_lease(
    render: Render, extra: list[str]
) -> None:
    manifests = render(*extra)
    role = find(manifests, "Role", f"{OPERATOR}-lease")
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [OPERATOR],
            "verbs": ["get", "update"],
        },
    ]
    binding = find(manifests, "RoleBinding", f"{OPERATOR}-lease")
    assert binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert binding["roleRef"]["name"] == f"{OPERATOR}-lease"
    sa = find(manifests, "Deployment", OPERATOR)["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NAMESPACE}
    ]


def test_cluster_wide_by_default_and_listed_namespaces_otherwise(render: Render) -> None:
    flags = ["--log-level", "INFO", "--liveness", "http://0.0.0.0:8080/healthz"]
    flags += ["--leader-elect", "--lease-name", OPERATOR]
    assert container(render())["args"] == ["operator", "--all-namespaces", *flags]
    assert container(render("--set", "watchNamespaces={a,b}"))["args"] == [
        "operator", "--namespace", "a", "--namespace", "b", *flags,
    ]  # fmt: skip


def test_liveness_probe_calls_the_endpoint_kopf_serves(render: Render) -> None:
    manifests = render("--set", "operator.healthPort=8181", "--set", "operator.logLevel=debug")
    args = container(manifests)["args"]
    assert args[args.index("--liveness") + 1] == "http://0.0.0.0:8181/healthz"
    assert args[args.index("--log-level") + 1] == "DEBUG"
    probe = container(manifests)["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container(manifests)["ports"]}
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 8181


@pytest.mark.parametrize("extra", [[], ["--values", str(NAMESPACED_VALUES)]])
def test_operator_pod_meets_the_restricted_pod_security_standard(
    render: Render, extra: list[str]
) -> None:
    pod = find(render(*extra), "Deployment", OPERATOR)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # With a read-only root, the only writable place is an emptyDir at /tmp.
    mounts = pod["containers"][0]["volumeMounts"]
    assert mounts == [{"name": "tmp", "mountPath": "/tmp"}]
    assert "hostPath" not in str(pod["volumes"])


def test_gateway_defaults_reach_the_operator_as_environment(render: Render) -> None:
    values = env(render())
    assert values["KASCADE_GATEWAY_IMAGE"] == "ghcr.io/kascade/gateway:0.1.0"
    assert values["KASCADE_SERVING_IMAGE"] == "ghcr.io/kascade/serving:0.1.0"
    assert values["KASCADE_GATEWAY_REPLICAS"] == "1"
    assert values["KASCADE_GATEWAY_CPU_REQUEST"] == "250m"
    assert values["KASCADE_GATEWAY_MEMORY_REQUEST"] == "256Mi"
    assert values["KASCADE_GATEWAY_MEMORY_LIMIT"] == "512Mi"
    assert values["KASCADE_GATEWAY_HPA_MAX"] == "1"
    assert "KASCADE_GATEWAY_REDIS_URL" not in values
    assert container(render())["image"] == "ghcr.io/kascade/operator:0.1.0"


def test_scaled_gateway_settings_come_through(render: Render) -> None:
    values = env(render("--values", str(NAMESPACED_VALUES)))
    assert values["KASCADE_GATEWAY_REPLICAS"] == "2"
    assert values["KASCADE_GATEWAY_HPA_MAX"] == "6"
    assert values["KASCADE_GATEWAY_CPU_REQUEST"] == "500m"
    assert values["KASCADE_GATEWAY_MEMORY_LIMIT"] == "1Gi"
    assert values["KASCADE_GATEWAY_REDIS_URL"] == "redis://redis.kascade-system.svc:6379/0"
    assert values["KASCADE_SERVING_IMAGE"] == "registry.example.com/kascade/serving:0.1.0-rc1"


def test_cluster_wide_rbac_is_exactly_the_needed_rules(render: Render) -> None:
    manifests = render()
    role = find(manifests, "ClusterRole", OPERATOR)
    assert flatten(role["rules"]) == NAMESPACED_RULES | CLUSTER_RULES
    binding = find(manifests, "ClusterRoleBinding", OPERATOR)
    assert binding["roleRef"]["name"] == OPERATOR
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kascade", "namespace": RELEASE_NAMESPACE}
    ]
    # The one namespaced Role is leader election's (its own test below).
    assert [m["metadata"]["name"] for m in manifests if m["kind"] in {"Role", "RoleBinding"}] == [
        f"{OPERATOR}-lease",
        f"{OPERATOR}-lease",
    ]


def test_namespaced_rbac_puts_namespaced_rules_in_each_watched_namespace(
    render: Render,
) -> None:
    manifests = render("--values", str(NAMESPACED_VALUES))
    # Cluster-scoped reads only; everything else is granted per watched namespace.
    assert flatten(find(manifests, "ClusterRole", OPERATOR)["rules"]) == CLUSTER_RULES
    roles = [m for m in manifests if m["kind"] == "Role" and m["metadata"]["name"] == OPERATOR]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert flatten(role["rules"]) == NAMESPACED_RULES
    bindings = [
        m for m in manifests if m["kind"] == "RoleBinding" and m["metadata"]["name"] == OPERATOR
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kascade-controller", "namespace": RELEASE_NAMESPACE}
        ]
    sa = find(manifests, "ServiceAccount", "kascade-controller")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam")


def test_user_roles_aggregate_into_admin_edit_and_view(render: Render) -> None:
    manifests = render()
    kinds = ("localmodelpools", "cloudexperts", "routingpolicies", "tenants")
    expected = {
        "kascade-admin": ("admin", CRUD | {"deletecollection"}),
        "kascade-editor": ("edit", CRUD),
        "kascade-viewer": ("view", {"get", "list", "watch"}),
    }
    for name, (builtin, verbs) in expected.items():
        role = find(manifests, "ClusterRole", name)
        assert role["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{builtin}"] == (
            "true"
        )
        rules = flatten(role["rules"])
        for kind in kinds:
            assert rules[("kascade.io", kind)] == verbs
            # Status belongs to the operator: users may read it, never write it.
            assert rules[("kascade.io", f"{kind}/status")] == {"get"}


def test_service_monitor_only_when_enabled(render: Render) -> None:
    assert not [m for m in render() if m["kind"] in {"ServiceMonitor", "Service"}]
    manifests = render("--values", str(NAMESPACED_VALUES))
    monitor = find(manifests, "ServiceMonitor", OPERATOR)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = find(manifests, "Service", "kascade-operator-metrics")
    pod_labels = find(manifests, "Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_every_object_carries_the_release_labels(render: Render) -> None:
    for manifest in render("--values", str(NAMESPACED_VALUES)):
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "kascade", manifest["metadata"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", manifest["metadata"]


def test_generated_crds_ship_with_the_chart(render: Render) -> None:
    files = sorted((CHART / "crds").glob("*.yaml"))
    crds = [m for m in render("--include-crds") if m["kind"] == "CustomResourceDefinition"]
    assert len(crds) == len(files)
    plurals = {crd["spec"]["names"]["plural"] for crd in crds}
    assert plurals == {"localmodelpools", "cloudexperts", "routingpolicies", "tenants"}
    assert {crd["spec"]["group"] for crd in crds} == {"kascade.io"}
    # Helm never renders crds/ in a plain template, so golden files stay independent of
    # the CRD generator.
    assert not [m for m in render() if m["kind"] == "CustomResourceDefinition"]
