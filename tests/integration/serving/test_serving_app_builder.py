"""build_app as Ray Serve calls it from a serveConfigV2 (import_path + args)."""

from __future__ import annotations

import pydantic
import pytest
from ray._common.utils import import_attr
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

pytestmark = pytest.mark.serving

ARGS = {
    "name": "small",
    "model": {"runtime": "llama-cpp", "source": "builtin://smollm2-135m-instruct"},
    "replicas": {"min": 1, "max": 3},
    "resources": {"cpu": 2, "memoryBytes": 1_000_000_000},
    "customResources": {"pool-small": 1},
    "capacity": {"maxConcurrentPerReplica": 2, "maxQueuedPerReplica": 3},
}


def test_import_path_and_json_args_build_the_deployment() -> None:
    builder = import_attr("kascade.serving.app:build_app")
    application = call_user_app_builder_with_args_if_necessary(builder, ARGS)
    deployment = application._bound_deployment
    assert deployment.name == "kascade-small"
    cfg = deployment._deployment_config
    assert cfg.max_ongoing_requests == 5 + 64
    assert cfg.autoscaling_config.min_replicas == 1
    assert cfg.autoscaling_config.max_replicas == 3
    actor = deployment.ray_actor_options
    assert actor["num_cpus"] == 2.0
    assert actor["memory"] == 1_000_000_000
    assert actor["resources"] == {"pool-small": 1.0}


def test_bad_args_fail_at_build_time_naming_the_field() -> None:
    builder = import_attr("kascade.serving.app:build_app")
    bad = {**ARGS, "capacity": {"maxConcurrentPerReplica": 0}}
    with pytest.raises(pydantic.ValidationError, match="maxConcurrentPerReplica"):
        call_user_app_builder_with_args_if_necessary(builder, bad)
