"""LocalModelPool -> the pool's Ray Serve application config (``PoolServingConfig``)."""

from __future__ import annotations

from kascade.api import limits, v1alpha1
from kascade.api.v1alpha1 import common
from kascade.serving import config as serving_config

QUEUE_SLOTS_PER_CONCURRENT = limits.QUEUE_SLOTS_PER_CONCURRENT


def pool_serving_config(
    pool: v1alpha1.LocalModelPool,
    *,
    confidence_method: str | None = None,
    replicas: int | None = None,
) -> serving_config.PoolServingConfig:
    """The serving config of one pool; ``confidence_method`` comes from the policies using it.

    ``replicas`` pins the replica count: with ``spec.autoscaling.enabled`` Kascade's own
    autoscaler decides it (on why requests escalate), so Ray Serve must not autoscale too.
    """
    spec = pool.spec
    cpu = float(common.decimal_quantity(spec.resources.cpu))
    memory = int(common.decimal_quantity(spec.resources.memory))
    capacity = spec.capacity
    queued = (
        0
        if capacity.max_queue_wait_millis == 0
        else (capacity.max_concurrent_per_replica * QUEUE_SLOTS_PER_CONCURRENT)
    )
    return serving_config.PoolServingConfig(
        name=pool.metadata.name,
        model=serving_config.ModelSpec(
            runtime=serving_config.Runtime(spec.model.runtime),
            source=spec.model.source,
            sha256=spec.model.sha256,
            context_length=spec.model.context_length,
            chat_template=spec.model.chat_template,
        ),
        replicas=serving_config.Replicas(
            min=spec.replicas.min, max=spec.replicas.max, initial=spec.replicas.initial
        )
        if replicas is None
        else serving_config.Replicas(min=replicas, max=replicas, initial=replicas),
        resources=serving_config.Resources(
            # Ray schedules whole or fractional CPUs; never ask for less than a millicore.
            cpu=max(cpu, 0.001),
            memory_bytes=memory,
            gpu=float(spec.resources.gpu),
        ),
        capacity=serving_config.Capacity(
            max_concurrent_per_replica=capacity.max_concurrent_per_replica,
            max_queued_per_replica=queued,
            max_queue_wait_millis=capacity.max_queue_wait_millis,
        ),
        confidence_method=serving_config.ConfidenceMethod(
            confidence_method or serving_config.ConfidenceMethod.MEAN_TOKEN_PROB
        ),
    )
