"""The typed serving config of one LocalModelPool: what ``build_app`` takes.

The compiler turns a LocalModelPool into this shape (camelCase JSON, the ``args`` of
the pool's application in a RayService ``serveConfigV2``). It is self-contained on
purpose: serving imports nothing of ``kascade.api`` but the stdlib-only bounds in
``kascade.api.limits``, so a Ray worker image needs only the serving extra.
"""

from __future__ import annotations

import enum
from typing import Any

import pydantic
from pydantic import alias_generators

from kascade.api import limits

__all__ = [
    "Capacity",
    "ConfidenceMethod",
    "ModelSpec",
    "PoolServingConfig",
    "Replicas",
    "Resources",
    "Runtime",
]


class Runtime(enum.StrEnum):
    """Which inference engine a replica runs."""

    LLAMA_CPP = "llama-cpp"
    VLLM = "vllm"


class ConfidenceMethod(enum.StrEnum):
    """How per-token probabilities become one confidence figure (see docs/serving.md)."""

    MEAN_TOKEN_PROB = "mean-token-prob"
    MIN_TOKEN_PROB = "min-token-prob"
    MARGIN = "margin"
    SEQUENCE_PROB = "sequence-prob"
    TOKEN_PROB_Q10 = "token-prob-q10"


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=alias_generators.to_camel,
        use_attribute_docstrings=True,
    )


class ModelSpec(_Model):
    """Which model a replica loads, and how."""

    runtime: Runtime = Runtime.LLAMA_CPP
    """Inference engine: ``llama-cpp`` (GGUF on CPU) or ``vllm`` (GPU, optional extra)."""

    source: str = pydantic.Field(min_length=1)
    """Where the weights come from: ``builtin://smollm2-135m-instruct``, ``file:///path``,
    ``https://host/model.gguf``, or ``hf://org/repo/file.gguf``."""

    sha256: str | None = pydantic.Field(default=None, pattern=limits.SHA256)
    """Expected SHA-256 of the weights file (64 lowercase hex digits); checked before use."""

    context_length: int = pydantic.Field(
        default=2048, ge=limits.CONTEXT_LENGTH_MIN, le=limits.CONTEXT_LENGTH_MAX
    )
    """Context window of one request in tokens (prompt plus completion). A llama-cpp
    replica allocates ``contextLength x maxConcurrentPerReplica`` KV cells."""

    chat_template: str | None = None
    """Jinja chat template; when absent the template stored in the GGUF metadata is used."""


class Replicas(_Model):
    """How many replicas serve the pool; ``min < max`` turns on Ray Serve autoscaling."""

    min: int = pydantic.Field(default=1, ge=0)
    """Fewest replicas."""

    max: int = pydantic.Field(default=1, ge=1)
    """Most replicas."""

    initial: int | None = pydantic.Field(default=None, ge=0)
    """Replicas at start; defaults to ``min`` (or 1 when ``min`` is 0)."""

    @pydantic.model_validator(mode="after")
    def _bounds(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must be <= replicas.max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(
                f"replicas.initial ({self.initial}) must lie within "
                f"[min={self.min}, max={self.max}]"
            )
        return self


class Resources(_Model):
    """What one replica reserves on its node (Ray ``ray_actor_options``)."""

    cpu: float = pydantic.Field(default=1.0, gt=0)
    """CPU cores (fractions allowed); llama.cpp threads follow this allotment."""

    memory_bytes: int | None = pydantic.Field(default=None, gt=0)
    """Memory reserved for the replica in bytes (Ray's ``memory`` resource)."""

    gpu: float = pydantic.Field(default=0.0, ge=0)
    """GPUs (fractions allowed; whole above 1 for ``vllm``); required > 0 for ``vllm``.
    llama-cpp offloads every layer when > 0; vllm splits the model over them."""


class Capacity(_Model):
    """Per-replica admission limits: beyond them a request gets 429 at once."""

    max_concurrent_per_replica: int = pydantic.Field(
        default=1, ge=1, le=limits.MAX_CONCURRENT_PER_REPLICA
    )
    """Requests generating at the same time in one replica."""

    max_queued_per_replica: int = pydantic.Field(default=4, ge=0, le=limits.MAX_QUEUED_PER_REPLICA)
    """Requests allowed to wait for a generation slot in one replica (a bounded queue)."""

    max_queue_wait_millis: int = pydantic.Field(
        default=30_000, ge=0, le=limits.MAX_QUEUE_WAIT_MILLIS
    )
    """Longest a queued request waits for a slot before it is answered 429."""


class PoolServingConfig(_Model):
    """Everything one pool's Ray Serve application needs."""

    name: str = pydantic.Field(pattern=limits.DNS1123_LABEL, max_length=limits.DNS1123_LABEL_MAX)
    """Pool name (a DNS label); the served model id and the deployment name derive from it."""

    model: ModelSpec
    """The model and its runtime."""

    replicas: Replicas = Replicas()
    """Replica count or autoscaling bounds."""

    resources: Resources = Resources()
    """Per-replica resource reservation."""

    custom_resources: dict[str, float] = pydantic.Field(default_factory=dict)
    """Ray custom resources per replica, used to place replicas on matching nodes."""

    capacity: Capacity = Capacity()
    """Per-replica concurrency and bounded queue."""

    confidence_method: ConfidenceMethod = ConfidenceMethod.MEAN_TOKEN_PROB
    """How the confidence figure is computed from token probabilities."""

    route_prefix: str = pydantic.Field(default="/", pattern=r"^/")
    """HTTP route prefix of the application (used by the compiler in serveConfigV2)."""

    @pydantic.model_validator(mode="after")
    def _runtime_resources(self) -> PoolServingConfig:
        gpu = self.resources.gpu
        if self.model.runtime is Runtime.VLLM and gpu <= 0:
            raise ValueError("model.runtime 'vllm' needs resources.gpu > 0 (vLLM runs on GPUs)")
        if self.model.runtime is Runtime.VLLM and gpu > 1 and not gpu.is_integer():
            raise ValueError(
                f"resources.gpu {gpu:g}: vllm splits a model over whole GPUs "
                "(tensor parallel); use a fraction of 1 GPU or a whole number"
            )
        return self

    @classmethod
    def from_args(cls, args: dict[str, Any] | PoolServingConfig) -> PoolServingConfig:
        """Validates builder ``args`` (a camelCase JSON dict) or passes a config through."""
        if isinstance(args, PoolServingConfig):
            return args
        return cls.model_validate(args)

    def to_args(self) -> dict[str, Any]:
        """The camelCase JSON dict form, as it appears in ``serveConfigV2``."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
