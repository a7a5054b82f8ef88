"""The compiler: Kascade objects -> gateway config, serving config, Kubernetes objects."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.compile import resources
from kascade.gateway import config as gw
from kascade.local import objects
from kascade.serving import config as serving_config

REPO = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden"
COMPLETE = REPO / "examples" / "complete"
QUICKSTART = REPO / "examples" / "quickstart"


def _compile(path: Path, **kwargs: object) -> compile_gateway.CompiledGateway:
    loaded = objects.load(path)
    return compile_gateway.gateway_config(
        namespace="team-a",
        pools=loaded.pools,
        experts=loaded.experts,
        policies=loaded.policies,
        pool_endpoint=lambda p: resources.serve_endpoint(pool=p.metadata.name, namespace="team-a"),
        credentials="file",
        **kwargs,
    )


def test_complete_example_compiles_to_a_valid_gateway_config() -> None:
    compiled = _compile(COMPLETE)
    assert compiled.missing == {}
    config = compiled.config
    # The JSON form the operator writes into the ConfigMap parses back identically.
    again = gw.parse_config(json.loads(config.model_dump_json(by_alias=True, exclude_none=True)))
    assert again == config
    policy = config.policies["assistant"]
    assert policy.local_pool == "smollm2"
    assert policy.selection == "cheapest"
    assert policy.experts == ["gpt-4o-mini", "claude-haiku"]
    assert config.pools["smollm2"].endpoint == "http://smollm2-serve-svc.team-a.svc:8000"
    expert = config.experts["gpt-4o-mini"]
    assert expert.endpoint == "https://api.openai.com"
    assert expert.credentials == gw.Credentials(
        file="/var/run/kascade/secrets/openai-credentials/api-key"
    )
    assert expert.budget.limit_usd == 10
    assert policy.rules[0].name == "long-prompts"
    assert policy.rules[0].when.min_prompt_tokens == 1500


def test_missing_references_leave_the_policy_out_and_name_them(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text((COMPLETE / "30-policy.yaml").read_text())
    compiled = _compile(tmp_path)
    assert compiled.missing == {
        "assistant": [
            "LocalModelPool/smollm2",
            "CloudExpert/gpt-4o-mini",
            "CloudExpert/claude-haiku",
        ]
    }
    assert compiled.config.policies == {}


def test_embedded_credentials_come_from_environment_variable_names() -> None:
    ref = v1alpha1.SecretKeyRef(name="sim-expert-key", key="api-key")
    assert compile_gateway.secret_env_var(ref) == "KASCADE_SECRET_SIM_EXPERT_KEY_API_KEY"


def test_pool_serving_config_round_trips_through_the_rayservice() -> None:
    loaded = objects.load(COMPLETE)
    serving = objects.serving_configs(loaded)["smollm2"]
    rayservice = resources.build_rayservice(
        pool=loaded.pools[0],
        serving=serving,
        namespace="team-a",
        settings=resources.Settings(),
        owners=[],
    )
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    app = serve_config["applications"][0]
    assert app["import_path"] == "kascade.serving.app:build_app"
    assert serving_config.PoolServingConfig.from_args(app["args"]) == serving
    assert serving.resources.cpu == 1.0
    assert serving.resources.memory_bytes == 1024**3
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 3)


def test_gpu_pool_lands_on_gpu_nodes_with_gpu_limits(tmp_path: Path) -> None:
    pool = v1alpha1.LocalModelPool.model_validate(
        {
            "apiVersion": "kascade.io/v1alpha1",
            "kind": "LocalModelPool",
            "metadata": {"name": "big"},
            "spec": {
                "model": {"runtime": "vllm", "source": "hf://org/repo/-"},
                "resources": {"cpu": "4", "memory": "16Gi", "gpu": 1},
                "placement": {
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
            },
        }
    )
    from kascade.compile import serving as compile_serving

    serving = compile_serving.pool_serving_config(pool)
    assert serving.model.runtime is serving_config.Runtime.VLLM
    assert serving.resources.gpu == 1.0
    manifest = resources.build_rayservice(
        pool=pool, serving=serving, namespace="ml", settings=resources.Settings(), owners=[]
    )
    pod = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_spec_hash_is_stable_and_follows_the_spec() -> None:
    loaded = objects.load(COMPLETE)
    serving = objects.serving_configs(loaded)["smollm2"]

    def build() -> dict[str, Any]:
        return resources.build_rayservice(
            pool=loaded.pools[0],
            serving=serving,
            namespace="team-a",
            settings=resources.Settings(),
            owners=[],
        )

    first, second = build(), build()
    assert first["metadata"]["annotations"] == second["metadata"]["annotations"]
    other = resources.build_rayservice(
        pool=loaded.pools[0],
        serving=serving,
        namespace="team-a",
        settings=resources.Settings(serving_image="example.com/serving:2"),
        owners=[],
    )
    assert (
        other["metadata"]["annotations"][resources.SPEC_HASH]
        != (first["metadata"]["annotations"][resources.SPEC_HASH])
    )


def _kuberay_cluster_hash(rayservice: dict[str, Any]) -> str:
    """KubeRay's upgrade decision (rayservice_controller.go,
    generateHashWithoutReplicasAndWorkersToDelete): the cluster spec with each worker
    group's replicas, minReplicas and maxReplicas muted; serveConfigV2 is not in it."""
    cluster = json.loads(json.dumps(rayservice["spec"]["rayClusterConfig"]))
    for group in cluster["workerGroupSpecs"]:
        for key in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(key, None)
    return json.dumps(cluster, sort_keys=True)


def _pool_rayservice(spec: dict[str, Any], *, replicas: int | None = None) -> dict[str, Any]:
    from kascade.compile import serving as compile_serving

    pool = v1alpha1.LocalModelPool.model_validate(
        {
            "apiVersion": "kascade.io/v1alpha1",
            "kind": "LocalModelPool",
            "metadata": {"name": "roll"},
            "spec": spec,
        }
    )
    serving = compile_serving.pool_serving_config(pool, replicas=replicas)
    return resources.build_rayservice(
        pool=pool, serving=serving, namespace="ns", settings=resources.Settings(), owners=[]
    )


def test_a_model_change_rolls_to_a_new_cluster_and_a_scale_or_capacity_change_does_not() -> None:
    base = {
        "model": {"runtime": "llama-cpp", "source": "builtin://smollm2-135m-instruct"},
        "replicas": {"min": 1, "max": 3},
        "autoscaling": {"enabled": True},
    }
    before = _pool_rayservice(base, replicas=1)
    assert before["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    other_model = {**base, "model": {**base["model"], "source": "hf://org/repo/model.gguf"}}
    longer_context = {**base, "model": {**base["model"], "contextLength": 4096}}
    for changed in (other_model, longer_context):
        after = _pool_rayservice(changed, replicas=1)
        assert after["spec"]["serveConfigV2"] != before["spec"]["serveConfigV2"]
        # KubeRay sees a new cluster spec: with NewCluster it prepares a pending cluster.
        assert _kuberay_cluster_hash(after) != _kuberay_cluster_hash(before)
    # A scale decision and a capacity change stay in place (the same cluster).
    scaled = _pool_rayservice(base, replicas=3)
    capacity = _pool_rayservice({**base, "capacity": {"maxConcurrentPerReplica": 2}}, replicas=1)
    for same_cluster in (scaled, capacity):
        assert same_cluster["spec"]["serveConfigV2"] != before["spec"]["serveConfigV2"]
        assert _kuberay_cluster_hash(same_cluster) == _kuberay_cluster_hash(before)


def test_gateway_objects_hold_no_secret_values_and_run_restricted() -> None:
    loaded = objects.load(COMPLETE)
    compiled = _compile(COMPLETE)
    objs = resources.build_gateway(
        namespace="team-a",
        config=compiled.config,
        experts=loaded.experts,
        settings=resources.Settings(),
        owners=[],
        service_monitor=False,
    )
    text = yaml.safe_dump_all(objs)
    for secret_value in ("sk-REPLACE-ME", "sk-ant-REPLACE-ME"):
        assert secret_value not in text
    kinds = [o["kind"] for o in objs]
    # One replica without Redis (budgets stay exact only with a shared ledger): no HPA;
    # its ledger checkpoint on a claim, and never two pods at once (Recreate).
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Service",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PersistentVolumeClaim",
    ]
    # Callers reach the API port only; the admin port has its own Service.
    assert [p["name"] for p in objs[2]["spec"]["ports"]] == ["http"]
    assert objs[3]["metadata"]["name"] == "kascade-gateway-admin"
    assert [p["port"] for p in objs[3]["spec"]["ports"]] == [9090]
    assert objs[1]["spec"]["strategy"] == {"type": "Recreate"}
    assert objs[1]["spec"]["replicas"] == 1
    state = {v["name"]: v for v in objs[1]["spec"]["template"]["spec"]["volumes"]}["state"]
    assert state["persistentVolumeClaim"]["claimName"] == objs[6]["metadata"]["name"]
    assert "ownerReferences" not in objs[6]["metadata"]
    pod = objs[1]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/run/kascade/secrets/openai-credentials" in mounts
    shared = resources.build_gateway(
        namespace="team-a",
        config=compiled.config,
        experts=loaded.experts,
        settings=resources.Settings(redis_url="redis://redis:6379/0", gateway_replicas=2),
        owners=[],
        service_monitor=True,
    )
    assert [o["kind"] for o in shared][-2:] == ["HorizontalPodAutoscaler", "ServiceMonitor"]
    assert shared[1]["spec"]["replicas"] == 2
    assert shared[1]["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert "PersistentVolumeClaim" not in [o["kind"] for o in shared]
    assert resources.ledger_replicas_warning(resources.Settings(gateway_replicas=3)) is not None
    assert resources.ledger_replicas_warning(resources.Settings(gateway_replicas=1)) is None


@pytest.mark.parametrize("example", ["complete", "quickstart"])
def test_render_matches_golden_yaml(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    from kascade.local import render

    assert render.main(["-f", str(REPO / "examples" / example)]) == 0
    out = capsys.readouterr().out
    golden = GOLDEN / f"render-{example}.yaml"
    if os.environ.get("KASCADE_UPDATE_GOLDEN"):
        golden.write_text(out)
    assert out == golden.read_text(), "render output changed; KASCADE_UPDATE_GOLDEN=1 to accept"


def test_tenants_redis_secret_and_network_policy_are_rendered() -> None:
    loaded = objects.load(COMPLETE)
    compiled = _compile(COMPLETE, tenants=loaded.tenants, require_api_key=True, redis_secret=True)
    config = compiled.config
    assert config.require_api_key is True
    assert config.ledger.url is None
    assert config.ledger.url_file == "/var/run/kascade/redis/url"
    tenant = config.tenants["search-team"]
    assert tenant.keys.dir == "/var/run/kascade/tenants/search-team"
    assert tenant.policies == ["assistant"]
    settings = resources.Settings(
        redis_secret="redis-auth",
        gateway_admitted_namespaces=("apps",),
        gateway_admin_namespaces=("kascade-system", "monitoring"),
    )
    objs = resources.build_gateway(
        namespace="team-a",
        config=config,
        experts=loaded.experts,
        settings=settings,
        owners=[],
        service_monitor=False,
        tenants=loaded.tenants,
    )
    pod = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert secrets["tenant-0"] == {"secretName": "search-team-keys", "optional": True}
    assert secrets["redis"]["secretName"] == "redis-auth"
    [netpol] = [o for o in objs if o["kind"] == "NetworkPolicy"]
    api, admin = netpol["spec"]["ingress"]
    assert api["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}},
    ]
    assert [p["port"] for p in admin["ports"]] == [resources.GATEWAY_ADMIN_PORT]
    assert len(admin["from"]) == 2
    # The Redis Secret makes the ledger shared, so replicas may scale (an HPA).
    assert "HorizontalPodAutoscaler" in [o["kind"] for o in objs]


def test_each_policy_method_becomes_a_pool_method_the_serving_app_accepts() -> None:
    from kascade.api.v1alpha1 import routingpolicy
    from kascade.serving import config as serving_config

    policy = v1alpha1.load_path(COMPLETE / "30-policy.yaml")[0]
    assert isinstance(policy, v1alpha1.RoutingPolicy)
    methods = routingpolicy.ConfidenceSpec.model_fields["method"].annotation.__args__
    for method in methods:
        spec = policy.spec.model_copy(
            update={"confidence": policy.spec.confidence.model_copy(update={"method": method})}
        )
        compiled = compile_gateway.confidence_methods([policy.model_copy(update={"spec": spec})])
        pool_method = compiled[policy.spec.local_pool or ""]
        serving_config.ConfidenceMethod(pool_method)  # raises for a method the pool lacks
        expected = "mean-token-prob" if method == "combined" else method
        assert pool_method == expected
