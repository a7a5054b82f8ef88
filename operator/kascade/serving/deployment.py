"""Ray Serve deployment options derived from a pool config (pure; no Ray import).

Admission is done by the replica itself (:mod:`kascade.serving.admission`), because
Ray Serve's own overflow answer is ``503`` and the gateway needs ``429``. So Ray's
``max_ongoing_requests`` is the replica's capacity plus :data:`REJECT_HEADROOM`, so
over-capacity requests reach the replica and are refused in microseconds, and Ray's
``max_queued_requests`` is bounded as a last line of defence (Ray answers 503 there;
reached only by a burst of more than ``REJECT_HEADROOM`` simultaneous refusals).
"""

from __future__ import annotations

import math
import os
from typing import Any

from kascade.serving import config

__all__ = [
    "REJECT_HEADROOM",
    "deployment_name",
    "deployment_options",
    "llama_threads",
    "replica_capacity",
    "slot_count",
]

REJECT_HEADROOM = 64
"""Requests beyond capacity that Ray may hand a replica at once, to be answered 429."""


def deployment_name(pool: config.PoolServingConfig) -> str:
    """The deterministic deployment name of a pool: ``kascade-<pool>``."""
    return f"kascade-{pool.name}"


def slot_count(pool: config.PoolServingConfig) -> int:
    """Sequences generated at once per replica (``maxConcurrentPerReplica``).

    Both runtimes batch them: llama-cpp in one context (one decode per step for all),
    vLLM in its async engine (``max_num_seqs``).
    """
    return pool.capacity.max_concurrent_per_replica


def replica_capacity(pool: config.PoolServingConfig) -> int:
    """Requests a replica holds at once: generating plus queued."""
    return pool.capacity.max_concurrent_per_replica + pool.capacity.max_queued_per_replica


def llama_threads(pool: config.PoolServingConfig, *, cpu_count: int | None = None) -> int:
    """llama.cpp threads of a replica: its whole CPU allotment (rounded down).

    One context decodes every sequence of the replica in one batch, so its threads use
    the whole allotment whatever ``maxConcurrentPerReplica`` is. At least 1; never more
    than the machine's cores (oversubscribing cores makes llama.cpp's spin-waiting
    threads much slower, not faster).
    """
    cores = cpu_count or os.cpu_count() or 1
    return max(1, min(math.floor(pool.resources.cpu), cores))


def deployment_options(pool: config.PoolServingConfig) -> dict[str, Any]:
    """Keyword options for ``serve.deployment(...).options(**options)``."""
    actor: dict[str, Any] = {"num_cpus": pool.resources.cpu}
    if pool.resources.gpu:
        actor["num_gpus"] = pool.resources.gpu
    if pool.resources.memory_bytes is not None:
        actor["memory"] = pool.resources.memory_bytes
    if pool.custom_resources:
        actor["resources"] = dict(pool.custom_resources)
    capacity = replica_capacity(pool)
    options: dict[str, Any] = {
        "name": deployment_name(pool),
        "ray_actor_options": actor,
        # Requests beyond capacity reach the replica and get a fast 429 instead of
        # waiting in Ray's router.
        "max_ongoing_requests": capacity + REJECT_HEADROOM,
        # Bounded, but roomy: Ray's router counts every request it is still placing,
        # even with replicas free, so a tight bound turns a burst into 503s.
        "max_queued_requests": (capacity + REJECT_HEADROOM) * pool.replicas.max,
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": 30,
    }
    replicas = pool.replicas
    if replicas.min == replicas.max:
        options["num_replicas"] = replicas.max
    else:
        initial = replicas.initial if replicas.initial is not None else max(1, replicas.min)
        options["autoscaling_config"] = {
            "min_replicas": replicas.min,
            "max_replicas": replicas.max,
            "initial_replicas": min(max(initial, replicas.min), replicas.max),
            # Scale up once replicas generate as many sequences as they run at once.
            "target_ongoing_requests": slot_count(pool),
        }
    return options
