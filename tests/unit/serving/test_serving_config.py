"""PoolServingConfig validation and the Ray Serve options derived from it."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from kascade.serving import config, deployment


def _pool(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "small",
        "model": {"runtime": "llama-cpp", "source": "builtin://smollm2-135m-instruct"},
    }
    base.update(overrides)
    return base


def test_camel_case_args_parse_with_defaults() -> None:
    pool = config.PoolServingConfig.from_args(
        _pool(
            model={
                "source": "file:///m.gguf",
                "contextLength": 4096,
                "chatTemplate": "{{ x }}",
                "sha256": "a" * 64,
            },
            resources={"cpu": 2.5, "memoryBytes": 2_000_000_000, "gpu": 0},
            customResources={"node-class/cpu-large": 1},
            capacity={
                "maxConcurrentPerReplica": 2,
                "maxQueuedPerReplica": 8,
                "maxQueueWaitMillis": 500,
            },
            confidenceMethod="margin",
            routePrefix="/small",
        )
    )
    assert pool.model.runtime is config.Runtime.LLAMA_CPP
    assert pool.model.context_length == 4096
    assert pool.resources.memory_bytes == 2_000_000_000
    assert pool.capacity.max_queued_per_replica == 8
    assert pool.confidence_method is config.ConfidenceMethod.MARGIN
    assert pool.custom_resources == {"node-class/cpu-large": 1.0}
    assert config.PoolServingConfig.from_args(pool.to_args()) == pool
    assert pool.to_args()["capacity"]["maxQueueWaitMillis"] == 500


def test_defaults() -> None:
    pool = config.PoolServingConfig.from_args(_pool())
    assert pool.confidence_method is config.ConfidenceMethod.MEAN_TOKEN_PROB
    assert pool.route_prefix == "/"
    assert pool.replicas.min == pool.replicas.max == 1
    assert pool.capacity.max_concurrent_per_replica == 1


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (_pool(unknownField=1), "unknownField"),
        (_pool(model={"source": "builtin://x", "contextLen": 5}), "contextLen"),
        (_pool(name="Not_A_Label"), "name"),
        (_pool(model={"source": "builtin://x", "runtime": "onnx"}), "runtime"),
        (_pool(model={"source": "builtin://x", "sha256": "XYZ"}), "sha256"),
        (_pool(replicas={"min": 3, "max": 2}), "replicas.min (3) must be <= replicas.max (2)"),
        (_pool(replicas={"min": 1, "max": 2, "initial": 5}), "replicas.initial (5)"),
        (_pool(capacity={"maxQueuedPerReplica": -1}), "maxQueuedPerReplica"),
        (_pool(confidenceMethod="entropy"), "confidenceMethod"),
        (_pool(model={"source": "file:///m", "runtime": "vllm"}), "needs resources.gpu > 0"),
    ],
)
def test_invalid_args_name_the_problem(args: dict[str, Any], where: str) -> None:
    with pytest.raises(
        pydantic.ValidationError, match=where.replace("(", r"\(").replace(")", r"\)")
    ):
        config.PoolServingConfig.from_args(args)


def test_fixed_replicas_and_actor_options() -> None:
    pool = config.PoolServingConfig.from_args(
        _pool(
            replicas={"min": 3, "max": 3},
            resources={"cpu": 2, "memoryBytes": 1_000_000_000},
            customResources={"pool-small": 1},
            capacity={"maxConcurrentPerReplica": 2, "maxQueuedPerReplica": 6},
        )
    )
    options = deployment.deployment_options(pool)
    assert options["name"] == "kascade-small"
    assert options["num_replicas"] == 3
    assert "autoscaling_config" not in options
    assert options["ray_actor_options"] == {
        "num_cpus": 2.0,
        "memory": 1_000_000_000,
        "resources": {"pool-small": 1.0},
    }
    assert options["max_ongoing_requests"] == 8 + deployment.REJECT_HEADROOM
    assert options["max_queued_requests"] == (8 + deployment.REJECT_HEADROOM) * 3


def test_autoscaling_when_min_differs_from_max() -> None:
    pool = config.PoolServingConfig.from_args(
        _pool(replicas={"min": 0, "max": 4}, capacity={"maxConcurrentPerReplica": 2})
    )
    options = deployment.deployment_options(pool)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "initial_replicas": 1,
        "target_ongoing_requests": 2,
    }


def test_gpu_pool_asks_ray_for_gpus() -> None:
    pool = config.PoolServingConfig.from_args(
        _pool(model={"source": "file:///m", "runtime": "vllm"}, resources={"cpu": 4, "gpu": 1})
    )
    assert deployment.deployment_options(pool)["ray_actor_options"]["num_gpus"] == 1.0


def test_deployment_name_is_deterministic() -> None:
    a = config.PoolServingConfig.from_args(_pool())
    b = config.PoolServingConfig.from_args(_pool(resources={"cpu": 3}))
    assert deployment.deployment_name(a) == deployment.deployment_name(b) == "kascade-small"


@pytest.mark.parametrize(
    ("cpu", "slots", "cores", "threads"),
    # One batched context per replica: its threads take the whole allotment, whatever
    # the number of parallel sequences.
    [(1, 1, 8, 1), (4, 1, 8, 4), (4, 2, 8, 4), (0.5, 1, 8, 1), (16, 1, 2, 2), (3, 8, 8, 3)],
)
def test_llama_threads_follow_the_cpu_allotment(
    cpu: float, slots: int, cores: int, threads: int
) -> None:
    pool = config.PoolServingConfig.from_args(
        _pool(resources={"cpu": cpu}, capacity={"maxConcurrentPerReplica": slots})
    )
    assert deployment.llama_threads(pool, cpu_count=cores) == threads
