"""``helm install`` into the real local API server: the operator's pod is admitted under
the restricted Pod Security Standard, its ServiceAccount can do exactly what the operator
needs (SubjectAccessReviews, as ``kubectl auth can-i --as`` makes them), users get the kinds
through the built-in admin/edit/view roles, and ``helm uninstall`` leaves nothing behind.

Nodes are simulated (kwok): the operator's container never runs here, which is fine, since
these tests are about what the chart creates and grants. CRDs are skipped (``--skip-crds``)
so that these tests never touch cluster-wide objects other tests share.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kascade"
CACHE = Path(os.environ.get("KASCADE_CACHE", Path.home() / ".cache" / "kascade"))

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
# (verb, resource, subresource) or (verb, resource, subresource, object name).
Check = tuple[str, ...]
CRUD = ("get", "list", "watch", "create", "patch", "update", "delete")
KINDS = (
    "localmodelpools.kascade.io",
    "cloudexperts.kascade.io",
    "routingpolicies.kascade.io",
    "tenants.kascade.io",
)

# (verb, resource, subresource) the operator must be allowed in every namespace it watches.
NAMESPACED_ALLOWED: list[tuple[str, str, str]] = [
    *[(v, k, "") for k in KINDS for v in ("get", "list", "watch", "patch")],
    *[(v, k, "status") for k in KINDS for v in ("get", "patch", "update")],
    *[(v, r, "") for r in (
        "rayservices.ray.io", "deployments.apps", "services", "configmaps",
        "horizontalpodautoscalers.autoscaling", "poddisruptionbudgets.policy",
        "networkpolicies.networking.k8s.io",
    ) for v in CRUD],
    *[(v, "servicemonitors.monitoring.coreos.com", "") for v in (
        "get", "list", "watch", "create", "patch", "delete",
    )],
    ("get", "secrets", ""),
    *[(v, r, "") for r in ("events", "events.events.k8s.io") for v in ("create", "patch")],
    *[(v, "endpointslices.discovery.k8s.io", "") for v in ("get", "list", "watch")],
    *[(v, "rayclusters.ray.io", "") for v in ("get", "patch")],
]  # fmt: skip
CLUSTER_ALLOWED: list[tuple[str, str, str]] = [
    (v, r, "")
    for r in ("customresourcedefinitions.apiextensions.k8s.io", "namespaces")
    for v in ("get", "list", "watch")
]
# What a compromised operator must still not be able to do.
DENIED: list[tuple[str, str, str]] = [
    *[(v, "secrets", "") for v in ("list", "watch", "create", "update", "patch", "delete")],
    *[(v, k, "") for k in KINDS for v in ("create", "update", "delete")],
    ("update", "rayservices.ray.io", "status"),
    ("delete", "rayclusters.ray.io", ""),
    ("create", "rayclusters.ray.io", ""),
    ("get", "pods", ""),
    ("create", "pods", ""),
    ("create", "pods", "exec"),
    ("create", "serviceaccounts", "token"),
    ("create", "rolebindings.rbac.authorization.k8s.io", ""),
    ("escalate", "roles.rbac.authorization.k8s.io", ""),
    ("update", "leases.coordination.k8s.io", ""),
]  # fmt: skip


def lease_checks(release: Release) -> tuple[list[Check], list[Check]]:
    """Leader election, in the release's namespace: (allowed, denied). Only the
    operator's own Lease can be read or written; ``create`` cannot name it."""
    lease = f"{release.name}-operator"
    leases = "leases.coordination.k8s.io"
    allowed: list[Check] = [("create", leases, ""), ("get", leases, "", lease),
                            ("update", leases, "", lease)]  # fmt: skip
    denied: list[Check] = [
        ("get", leases, "", "kube-scheduler"),
        ("update", leases, "", "kube-scheduler"),
        ("delete", leases, "", lease),
        ("patch", leases, "", lease),
        ("list", leases, ""),
        ("watch", leases, ""),
    ]
    return allowed, denied


CLUSTER_DENIED: list[tuple[str, str, str]] = [
    ("get", "nodes", ""),
    ("list", "nodes", ""),
    ("create", "namespaces", ""),
    ("delete", "namespaces", ""),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("impersonate", "users", ""),
]


@dataclass(frozen=True)
class Release:
    """An installed release: its name (also the objects' name prefix) and identity."""

    name: str
    namespace: str
    notes: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    @property
    def groups(self) -> tuple[str, ...]:
        # The groups a real ServiceAccount token carries; without them a "no" could come
        # from impersonating less than the real identity.
        return ("system:serviceaccounts", f"system:serviceaccounts:{self.namespace}",
                "system:authenticated")  # fmt: skip


@pytest.fixture(scope="module")
def helm(kubeconfig: str) -> Iterator[Runner]:
    """Runs the cached helm against the local cluster, with private helm dirs."""
    binary = CACHE / "bin" / "current" / "helm"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"helm binary not found at {binary}: run e2e/cluster/build", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="kascade-helm-") as home:
        env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
        }

        def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            proc = subprocess.run(
                [str(binary), *args], capture_output=True, text=True, env=env, timeout=300,
                check=False,
            )  # fmt: skip
            if check and proc.returncode != 0:
                raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
            return proc

        yield run


Installer = Callable[..., Release]


@pytest.fixture
def install(helm: Runner, kubectl: Runner, namespace: str) -> Iterator[Installer]:
    """Installs the chart (without CRDs) into ``namespace`` under fresh names.

    Whatever a test leaves installed (it failed before ``helm uninstall``) is removed
    before the namespace goes, cluster-scoped RBAC included, so no grant outlives a test.
    """
    names: list[str] = []

    def run(*values: str) -> Release:
        name = f"kc-{secrets.token_hex(3)}"
        names.append(name)
        proc = helm(
            "install", name, str(CHART), "--namespace", namespace, "--skip-crds",
            "--set", f"fullnameOverride={name}", *values,
        )  # fmt: skip
        notes = proc.stdout.partition("NOTES:")[2]
        assert notes, f"helm install printed no NOTES:\n{proc.stdout}"
        return Release(name=name, namespace=namespace, notes=notes)

    yield run
    for name in names:
        helm("uninstall", name, "--namespace", namespace, "--ignore-not-found", check=False)
        kubectl(
            "delete", "clusterroles,clusterrolebindings", "-l",
            f"app.kubernetes.io/instance={name}", "--ignore-not-found", check=False,
        )  # fmt: skip


def access_reviews(
    kubectl: Runner,
    *,
    user: str,
    groups: tuple[str, ...],
    checks: Sequence[Check],
    namespace: str | None,
) -> list[bool]:
    """Asks the API server, with one SubjectAccessReview per check, what ``user`` may do.

    This is what ``kubectl auth can-i --as`` does, minus its resource parsing: for a
    resource the API server does not serve yet (no KubeRay or Prometheus Operator CRDs
    here), can-i sends ``rayservices.ray.io`` as a core-group resource name and gets a
    meaningless answer. The reviews name the API group explicitly.
    """
    reviews = []
    for verb, resource, subresource, *named in checks:
        name, _, group = resource.partition(".")
        attributes = {"verb": verb, "group": group, "resource": name}
        if subresource:
            attributes["subresource"] = subresource
        if named:
            attributes["name"] = named[0]
        if namespace:
            attributes["namespace"] = namespace
        reviews.append({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": list(groups), "resourceAttributes": attributes},
        })  # fmt: skip
    batch = json.dumps({"apiVersion": "v1", "kind": "List", "items": reviews})
    out = kubectl("create", "-f", "-", "-o", "json", input=batch).stdout
    # kubectl prints one JSON document per created object, back to back.
    items, decoder, pos = [], json.JSONDecoder(), 0
    while pos < len(out.rstrip()):
        item, pos = decoder.raw_decode(out, pos)
        items.append(item)
        while pos < len(out) and out[pos].isspace():
            pos += 1
    assert len(items) == len(checks)
    return [bool(item["status"].get("allowed")) for item in items]


def wrong_answers(
    kubectl: Runner,
    release: Release,
    checks: Sequence[Check],
    *,
    namespace: str | None,
    expected: bool,
) -> list[str]:
    """The checks whose answer for the release's ServiceAccount is not ``expected``."""
    answers = access_reviews(
        kubectl, user=release.user, groups=release.groups, checks=checks, namespace=namespace
    )
    where = f"in {namespace}" if namespace else "cluster-scoped"
    return [
        f"{'denied' if expected else 'allowed'}: {v} {r}{'/' + s if s else ''}"
        f"{' ' + n[0] if n else ''} {where}"
        for (v, r, s, *n), answer in zip(checks, answers, strict=True)
        if answer != expected
    ]


def wait_rollout(kubectl: Runner, release: Release) -> None:
    """The operator Deployment becomes Available: its pod passed admission."""
    proc = kubectl(
        "rollout", "status", f"deployment/{release.name}-operator", "-n", release.namespace,
        "--timeout=180s", check=False, timeout=200,
    )  # fmt: skip
    if proc.returncode != 0:
        events = kubectl("get", "events", "-n", release.namespace, check=False).stdout
        pytest.fail(f"operator Deployment not available:\n{proc.stderr}\n{events}")


def uninstall_leaves_nothing(
    helm: Runner, kubectl: Runner, release: Release, namespaces: list[str]
) -> None:
    """``helm uninstall`` removes every object of the release and every grant."""
    helm("uninstall", release.name, "--namespace", release.namespace, "--wait", "--timeout=120s")
    selector = f"app.kubernetes.io/instance={release.name}"
    leftovers: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        leftovers = kubectl(
            "get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name"
        ).stdout.split()
        for ns in namespaces:
            leftovers += kubectl(
                "get", "deployments,replicasets,pods,serviceaccounts,roles,rolebindings,"
                "services,configmaps", "-n", ns, "-l", selector, "-o", "name",
            ).stdout.split()  # fmt: skip
        leftovers += kubectl(
            "get", "secrets", "-n", release.namespace, "-l", f"owner=helm,name={release.name}",
            "-o", "name",
        ).stdout.split()  # fmt: skip
        if not leftovers:
            break
        time.sleep(2)  # pods go through graceful deletion after their ReplicaSet
    assert leftovers == [], f"left behind by helm uninstall: {leftovers}"
    # Nothing the ServiceAccount was granted survives it.
    sample = [("list", KINDS[0], ""), ("get", "secrets", "")]
    for ns in namespaces:
        assert wrong_answers(kubectl, release, sample, namespace=ns, expected=False) == []


def lease_problems(kubectl: Runner, release: Release) -> list[str]:
    """Leader election's grants: its own Lease in the release namespace, nothing else."""
    allowed, denied = lease_checks(release)
    problems = wrong_answers(kubectl, release, allowed, namespace=release.namespace,
                             expected=True)  # fmt: skip
    problems += wrong_answers(kubectl, release, denied, namespace=release.namespace,
                              expected=False)  # fmt: skip
    return problems + wrong_answers(kubectl, release, allowed, namespace="default",
                                    expected=False)  # fmt: skip


def restrict(kubectl: Runner, namespace: str) -> None:
    """Makes the API server refuse pods that break the restricted Pod Security Standard."""
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")


def test_cluster_wide_install_grants_exactly_what_the_operator_needs(
    helm: Runner, kubectl: Runner, namespace: str, install: Installer
) -> None:
    restrict(kubectl, namespace)
    release = install()
    wait_rollout(kubectl, release)
    # The NOTES name the real objects, and warn exactly when KubeRay is missing.
    assert f"-n {namespace} rollout status deployment/{release.name}-operator" in release.notes
    assert "The operator watches all namespaces." in release.notes
    served = kubectl("api-resources", "--api-group=ray.io", "-o", "name").stdout.split()
    assert ("WARNING: this cluster does not serve ray.io/v1 RayService" in release.notes) == (
        "rayservices.ray.io" not in served
    ), release.notes

    # Granted everywhere (checked in a namespace other than the release's) ...
    problems = wrong_answers(kubectl, release, NAMESPACED_ALLOWED, namespace="default",
                             expected=True)  # fmt: skip
    problems += wrong_answers(kubectl, release, CLUSTER_ALLOWED, namespace=None, expected=True)
    # ... and nothing more.
    problems += wrong_answers(kubectl, release, DENIED, namespace="default", expected=False)
    problems += wrong_answers(kubectl, release, DENIED, namespace=namespace, expected=False)
    problems += wrong_answers(kubectl, release, CLUSTER_DENIED, namespace=None, expected=False)
    problems += lease_problems(kubectl, release)
    assert problems == [], "\n".join(problems)

    uninstall_leaves_nothing(helm, kubectl, release, [namespace, "default"])


@pytest.fixture
def watched(kubectl: Runner, namespace: str) -> Iterator[str]:
    """A second namespace, the one a namespaced operator watches."""
    name = f"{namespace[:56]}-w"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_namespaced_install_grants_only_in_watched_namespaces(
    helm: Runner, kubectl: Runner, namespace: str, watched: str, install: Installer
) -> None:
    restrict(kubectl, namespace)
    release = install("--set", f"watchNamespaces={{{watched}}}")
    wait_rollout(kubectl, release)
    assert f"The operator watches these namespaces: {watched}." in release.notes
    assert f"kubectl -n {watched} apply -f examples/quickstart/" in release.notes

    problems = wrong_answers(kubectl, release, NAMESPACED_ALLOWED, namespace=watched,
                             expected=True)  # fmt: skip
    problems += wrong_answers(kubectl, release, CLUSTER_ALLOWED, namespace=None, expected=True)
    problems += wrong_answers(kubectl, release, DENIED, namespace=watched, expected=False)
    problems += wrong_answers(kubectl, release, CLUSTER_DENIED, namespace=None, expected=False)
    # Outside the watched namespace, even its own namespace: nothing namespaced at all
    # (but its own Lease, checked below).
    for ns in (namespace, "default"):
        problems += wrong_answers(kubectl, release, NAMESPACED_ALLOWED, namespace=ns,
                                  expected=False)  # fmt: skip
    problems += lease_problems(kubectl, release)
    assert problems == [], "\n".join(problems)

    uninstall_leaves_nothing(helm, kubectl, release, [namespace, watched])


def test_users_get_the_kinds_through_admin_edit_and_view(
    helm: Runner, kubectl: Runner, namespace: str, install: Installer
) -> None:
    release = install()
    for role, user in {"admin": "ada", "edit": "eve", "view": "vic"}.items():
        kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}",
                f"--user={user}", "-n", namespace)  # fmt: skip

    def allowed(user: str, verb: str, resource: str, subresource: str = "") -> bool:
        check = [(verb, resource, subresource)]
        groups = ("system:authenticated",)
        [answer] = access_reviews(
            kubectl, user=user, groups=groups, checks=check, namespace=namespace
        )
        return answer

    # The aggregation controller folds the chart's roles into admin/edit/view shortly
    # after they are created.
    deadline = time.monotonic() + 60
    while not allowed("vic", "list", KINDS[0]) and time.monotonic() < deadline:
        time.sleep(1)

    expected = {
        ("ada", "deletecollection", KINDS[0], ""): True,
        ("ada", "create", KINDS[1], ""): True,
        ("eve", "create", KINDS[2], ""): True,
        ("eve", "delete", KINDS[0], ""): True,
        ("eve", "deletecollection", KINDS[0], ""): False,
        ("vic", "list", KINDS[1], ""): True,
        ("vic", "get", KINDS[2], "status"): True,
        ("vic", "create", KINDS[0], ""): False,
        # Status belongs to the operator, even for namespace admins.
        ("ada", "patch", KINDS[0], "status"): False,
        ("eve", "update", KINDS[2], "status"): False,
    }
    actual = {key: allowed(*key) for key in expected}
    assert actual == expected

    # Whether admin/edit/view still grant the kinds afterwards depends on other releases
    # in this shared cluster; what this release owns is checked to be gone.
    uninstall_leaves_nothing(helm, kubectl, release, [namespace])


def test_upgrade_from_namespaced_to_cluster_wide_moves_the_grants(
    helm: Runner, kubectl: Runner, namespace: str, watched: str, install: Installer
) -> None:
    release = install("--set", f"watchNamespaces={{{watched}}}")
    sample = [("list", KINDS[0], ""), ("patch", "deployments.apps", "")]
    assert wrong_answers(kubectl, release, sample, namespace="default", expected=False) == []

    helm(
        "upgrade", release.name, str(CHART), "--namespace", namespace, "--skip-crds",
        "--reuse-values", "--set-json", "watchNamespaces=[]",
    )  # fmt: skip
    # The per-namespace Role is gone; the ClusterRole now grants everywhere.
    roles = kubectl("get", "roles,rolebindings", "-n", watched, "-l",
                    f"app.kubernetes.io/instance={release.name}", "-o", "name").stdout  # fmt: skip
    assert roles.split() == []
    assert wrong_answers(kubectl, release, sample, namespace="default", expected=True) == []
    assert wrong_answers(kubectl, release, sample, namespace=watched, expected=True) == []
    jsonpath = "jsonpath={.spec.template.spec.containers[0].args}"
    deployment = f"deployment/{release.name}-operator"
    args = json.loads(kubectl("get", deployment, "-n", namespace, "-o", jsonpath).stdout)
    assert args[:2] == ["operator", "--all-namespaces"]

    uninstall_leaves_nothing(helm, kubectl, release, [namespace, watched])
