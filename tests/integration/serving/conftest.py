"""One local Ray Serve instance per module, serving the real SmolLM2 model."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

# The serving extra is part of the test environment (make venv installs it): a missing
# Ray must fail these tests, not skip them.
import ray
from ray import serve

from kascade.serving import app

# Small capacity so a handful of concurrent requests saturates the replica.
POOL: dict[str, Any] = {
    "name": "smol",
    "model": {"runtime": "llama-cpp", "source": "builtin://smollm2-135m-instruct"},
    "replicas": {"min": 1, "max": 1},
    "resources": {"cpu": 1},
    "capacity": {
        "maxConcurrentPerReplica": 1,
        "maxQueuedPerReplica": 1,
        "maxQueueWaitMillis": 60000,
    },
    "confidenceMethod": "mean-token-prob",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[int]:
    """Starts Ray (2 CPUs, no dashboard, small object store) and Serve; yields the HTTP port."""
    port = _free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200_000_000,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def base_url(ray_serve: int) -> str:
    """The running pool application's URL; records how long ``serve.run`` took."""
    started = time.monotonic()
    serve.run(app.build_app(POOL), name="smol", route_prefix="/", blocking=False)
    print(f"serve.run of the SmolLM2 pool took {time.monotonic() - started:.1f}s")
    return f"http://127.0.0.1:{ray_serve}"
