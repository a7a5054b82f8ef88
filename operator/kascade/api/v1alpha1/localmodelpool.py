"""LocalModelPool: a small model served on the cluster's own nodes (llama.cpp or vLLM)."""

from __future__ import annotations

import enum
import re
from typing import Annotated, ClassVar, Literal

import pydantic

from kascade.api import limits
from kascade.api.v1alpha1 import affinity as affinity_mod
from kascade.api.v1alpha1 import common

KIND = "LocalModelPool"
PLURAL = "localmodelpools"

# builtin:// names a model shipped with Kascade; file:// an absolute path on the node;
# https:// a download; hf://org/repo/file a file of a Hugging Face repository.
MODEL_SOURCE = (
    r"^(builtin://[a-z0-9][-a-z0-9._]*"
    r"|file:///[^\s]+"
    r"|https://[^\s/?#]+(/[^\s]*)?"
    r"|hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*/[^\s]+)$"
)
MAX_POOL_NAME = limits.POOL_NAME_MAX
BUILTIN_SOURCES = tuple(f"builtin://{name}" for name in limits.BUILTIN_MODEL_NAMES)


class PoolConditionType(enum.StrEnum):
    """Condition types a LocalModelPool reports."""

    READY = "Ready"
    """All desired replicas are serving."""
    PROGRESSING = "Progressing"
    """Replicas are being created, updated or removed."""
    DEGRADED = "Degraded"
    """Fewer replicas are ready than desired, or the model failed to load."""


class ModelSpec(common.KascadeModel):
    """The model a pool serves and how it is run."""

    runtime: Literal["llama-cpp", "vllm"] = pydantic.Field(
        json_schema_extra=common.immutable(field="spec.model.runtime")
    )
    """Inference engine: 'llama-cpp' (GGUF files, CPU, optional GPU offload) or 'vllm'
    (GPU, needs resources.gpu >= 1). Immutable: create a new pool to switch runtime."""

    source: Annotated[
        str,
        pydantic.Field(
            min_length=1,
            max_length=2048,
            pattern=common.hinted(
                MODEL_SOURCE,
                "builtin://NAME, file:///ABSOLUTE/PATH, https://HOST/PATH or hf://ORG/REPO/FILE",
            ),
        ),
    ]
    """Where the model comes from: 'builtin://smollm2-135m-instruct' (shipped with Kascade),
    'file:///abs/path/model.gguf' (a file on the node), 'https://host/path/model.gguf'
    (downloaded once per replica; set sha256), or 'hf://org/repo/file.gguf' (a file of a
    Hugging Face repository; for vllm, 'hf://org/repo/-' means the whole repository)."""

    sha256: (
        Annotated[
            str,
            pydantic.Field(
                max_length=64,
                pattern=common.hinted(limits.SHA256, "64 lowercase hexadecimal digits"),
            ),
        ]
        | None
    ) = None
    """Expected SHA-256 of the model file (64 lowercase hex digits). A replica whose
    download does not match refuses to start. Recommended for https:// sources."""

    context_length: Annotated[
        int, pydantic.Field(ge=limits.CONTEXT_LENGTH_MIN, le=limits.CONTEXT_LENGTH_MAX)
    ] = pydantic.Field(default=2048, alias="contextLength")
    """Context window of one request in tokens (prompt plus completion); a longer request
    is refused with 400. A llama-cpp replica allocates contextLength x
    capacity.maxConcurrentPerReplica tokens of KV cache (each concurrent request has its
    own contextLength): size resources.memory for the model plus that cache. vllm uses it
    as max_model_len; its requests share the KV cache that fits in GPU memory."""

    chat_template: Annotated[str, pydantic.Field(min_length=1, max_length=65536)] | None = (
        pydantic.Field(default=None, alias="chatTemplate")
    )
    """Jinja chat template overriding the one embedded in the model file."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule=f"!self.source.startsWith('builtin://') || self.source in {list(BUILTIN_SOURCES)}",
            message="model.source names no builtin model; accepted: "
            + ", ".join(BUILTIN_SOURCES)
            + " (or a file://, https:// or hf:// source)",
            field_path=".source",
            check=lambda m: not m.source.startswith("builtin://") or m.source in BUILTIN_SOURCES,
        ),
        common.CelRule(
            rule="!has(self.sha256) || !self.source.startsWith('builtin://')",
            message="model.sha256 applies to file://, https:// and hf:// sources only; "
            "builtin:// models are verified by Kascade",
            field_path=".sha256",
            check=lambda m: m.sha256 is None or not m.source.startswith("builtin://"),
        ),
    )


class ReplicasSpec(common.KascadeModel):
    """How many replicas serve the model."""

    min: Annotated[int, pydantic.Field(ge=0, le=1000)] = 1
    """Fewest replicas the autoscaler keeps (0 allows scaling to zero)."""

    max: Annotated[int, pydantic.Field(ge=1, le=1000)] = 1
    """Most replicas the autoscaler may run."""

    initial: Annotated[int, pydantic.Field(ge=0, le=1000)] | None = None
    """Replicas to start with when the pool is created; defaults to min."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.min <= self.max",
            message="replicas.max must be >= replicas.min (accepted: min <= initial <= max)",
            field_path=".max",
            check=lambda r: r.min <= r.max,
        ),
        common.CelRule(
            rule="!has(self.initial) || (self.min <= self.initial && self.initial <= self.max)",
            message="replicas.initial must lie between replicas.min and replicas.max "
            "(accepted: min <= initial <= max)",
            field_path=".initial",
            check=lambda r: r.initial is None or r.min <= r.initial <= r.max,
        ),
    )


class ResourcesSpec(common.KascadeModel):
    """Compute each replica requests (requests equal limits, so replicas are Guaranteed)."""

    cpu: common.Quantity = "1"
    """CPU cores per replica, e.g. 2 or '500m'."""

    memory: common.Quantity = "1Gi"
    """Memory per replica, e.g. '1Gi' or '512Mi'; must hold the model and its context."""

    gpu: Annotated[int, pydantic.Field(ge=0, le=16)] = 0
    """NVIDIA GPUs per replica (nvidia.com/gpu). llama-cpp offloads every layer to the
    GPU when > 0 (the image needs a CUDA build of llama-cpp-python; a CPU-only build does
    not load). vllm needs at least 1 and splits the model over all of them (tensor
    parallel)."""


class Toleration(common.KascadeModel):
    """A toleration for node taints (the shape of core/v1 Toleration)."""

    key: Annotated[str, pydantic.Field(max_length=316)] | None = None
    """Taint key the toleration applies to; empty with operator Exists matches all taints."""

    operator: Literal["Exists", "Equal"] = "Equal"
    """'Equal' matches key and value, 'Exists' matches the key with any value."""

    value: Annotated[str, pydantic.Field(max_length=63)] | None = None
    """Taint value to match when operator is Equal."""

    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""

    toleration_seconds: Annotated[int, pydantic.Field(ge=0)] | None = pydantic.Field(
        default=None, alias="tolerationSeconds"
    )
    """How long a NoExecute taint is tolerated before eviction; unset means forever."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.operator != 'Exists' || !has(self.value)",
            message="placement.tolerations[].value must be empty when operator is Exists",
            field_path=".value",
            check=lambda t: t.operator != "Exists" or t.value is None,
        ),
    )


class PlacementSpec(common.KascadeModel):
    """Which nodes replicas may run on."""

    node_selector: Annotated[dict[str, str], pydantic.Field(max_length=64)] = pydantic.Field(
        default_factory=dict, alias="nodeSelector"
    )
    """Node labels a node must have to run a replica."""

    tolerations: Annotated[list[Toleration], pydantic.Field(max_length=32)] = pydantic.Field(
        default_factory=list
    )
    """Taints replicas tolerate, e.g. for dedicated GPU nodes."""

    affinity: affinity_mod.Affinity | None = None
    """A core/v1 Affinity (nodeAffinity, podAffinity, podAntiAffinity) for the replica
    pods, checked against the Kubernetes schema when the pool is applied."""


class CapacitySpec(common.KascadeModel):
    """How much work one replica accepts before the pool counts as saturated."""

    max_concurrent_per_replica: Annotated[
        int, pydantic.Field(ge=1, le=limits.MAX_CONCURRENT_PER_REPLICA)
    ] = pydantic.Field(default=4, alias="maxConcurrentPerReplica")
    """Requests a replica processes at once (both runtimes batch them); more wait in its
    queue."""

    max_queue_wait_millis: Annotated[int, pydantic.Field(ge=0, le=limits.MAX_QUEUE_WAIT_MILLIS)] = (
        pydantic.Field(default=2000, alias="maxQueueWaitMillis")
    )
    """Longest a request may wait for a free slot before the replica answers 429 (the
    gateway then applies the policy's overflow action). 0 never queues."""


class AutoscalingSpec(common.KascadeModel):
    """Scaling on the reasons requests escalate: overflow spend versus replica cost."""

    enabled: bool = False
    """Whether the operator scales the pool between replicas.min and replicas.max."""

    interval_seconds: Annotated[int, pydantic.Field(ge=5, le=3600)] = pydantic.Field(
        default=30, alias="intervalSeconds"
    )
    """How often a scaling decision is made."""

    scale_up_stabilization_seconds: Annotated[int, pydantic.Field(ge=0, le=3600)] = pydantic.Field(
        default=60, alias="scaleUpStabilizationSeconds"
    )
    """How long the case for scaling up must hold before replicas are added."""

    scale_down_stabilization_seconds: Annotated[int, pydantic.Field(ge=0, le=86400)] = (
        pydantic.Field(default=300, alias="scaleDownStabilizationSeconds")
    )
    """How long the case for scaling down must hold before replicas are removed."""

    target_utilization: Annotated[float, pydantic.Field(gt=0.0, le=1.0)] = pydantic.Field(
        default=0.7, alias="targetUtilization"
    )
    """Busy fraction of replica capacity the autoscaler aims for, in (0, 1]."""

    metrics_source: Literal["gateway", "prometheus"] = pydantic.Field(
        default="gateway", alias="metricsSource"
    )
    """Where escalation and utilisation figures come from: 'gateway' (the gateways'
    own metrics endpoints) or 'prometheus' (queried at prometheusUrl)."""

    prometheus_url: (
        Annotated[
            str,
            pydantic.Field(
                max_length=2048,
                pattern=common.hinted(r"^https?://[^\s]+$", "an http:// or https:// URL"),
            ),
        ]
        | None
    ) = pydantic.Field(default=None, alias="prometheusUrl")
    """Base URL of the Prometheus API; required when metricsSource is 'prometheus'."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.metricsSource != 'prometheus' || has(self.prometheusUrl)",
            message="autoscaling.prometheusUrl is required when metricsSource is 'prometheus'",
            field_path=".prometheusUrl",
            check=lambda a: a.metrics_source != "prometheus" or a.prometheus_url is not None,
        ),
    )


class LocalModelPoolSpec(common.KascadeModel):
    """Desired state of a LocalModelPool."""

    model: ModelSpec
    """The model to serve and its runtime."""

    replicas: ReplicasSpec = pydantic.Field(default_factory=ReplicasSpec)
    """Replica bounds; the autoscaler moves between min and max."""

    resources: ResourcesSpec = pydantic.Field(default_factory=ResourcesSpec)
    """CPU, memory and GPUs per replica."""

    placement: PlacementSpec = pydantic.Field(default_factory=PlacementSpec)
    """Node selection for replicas."""

    capacity: CapacitySpec = pydantic.Field(default_factory=CapacitySpec)
    """Per-replica concurrency and queueing limits."""

    cost_per_replica_hour: Annotated[float, pydantic.Field(ge=0.0, le=10000.0)] = pydantic.Field(
        default=0.0, alias="costPerReplicaHour"
    )
    """What one replica costs per hour in USD (node share, amortised hardware). The
    autoscaler weighs it against overflow escalation spend; 0 means replicas are free."""

    autoscaling: AutoscalingSpec = pydantic.Field(default_factory=AutoscalingSpec)
    """Autoscaling on escalation reasons."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.model.runtime != 'vllm' || self.resources.gpu >= 1",
            message="resources.gpu must be >= 1 when model.runtime is 'vllm' "
            "(use runtime 'llama-cpp' for CPU-only pools)",
            field_path=".resources.gpu",
            check=lambda s: s.model.runtime != "vllm" or s.resources.gpu >= 1,
        ),
        common.CelRule(
            rule="!self.autoscaling.enabled || self.replicas.min < self.replicas.max",
            message="autoscaling.enabled needs replicas.min < replicas.max: with min == max "
            "there is nothing to scale (widen the range or set autoscaling.enabled: false)",
            field_path=".autoscaling.enabled",
            check=lambda s: not s.autoscaling.enabled or s.replicas.min < s.replicas.max,
        ),
    )


class ReplicaCounts(common.KascadeModel):
    """Replica figures of the pool."""

    desired: Annotated[int, pydantic.Field(ge=0)] = 0
    """Replicas the operator currently wants."""

    ready: Annotated[int, pydantic.Field(ge=0)] = 0
    """Replicas serving requests."""


class ScaleDecision(common.KascadeModel):
    """The autoscaler's latest decision and the figures it was based on."""

    time: common.Timestamp
    """When the decision was made."""

    from_: Annotated[int, pydantic.Field(ge=0)] = pydantic.Field(alias="from")
    """Desired replicas before the decision."""

    to: Annotated[int, pydantic.Field(ge=0)]
    """Desired replicas after the decision."""

    reason: Annotated[str, pydantic.Field(max_length=1024)]
    """Why, e.g. 'OverflowSpendAboveReplicaCost' or 'UtilizationBelowTarget'."""

    inputs: Annotated[dict[str, float], pydantic.Field(max_length=32)] = pydantic.Field(
        default_factory=dict
    )
    """Numeric inputs of the decision, e.g. overflowSpendUSDPerHour, utilization."""


class LocalModelPoolStatus(common.KascadeModel):
    """Observed state of a LocalModelPool, written by the operator."""

    conditions: Annotated[list[common.Condition], pydantic.Field(max_length=16)] = pydantic.Field(
        default_factory=list, json_schema_extra=common.CONDITIONS_LIST
    )
    """Ready, Progressing and Degraded."""

    observed_generation: int | None = pydantic.Field(default=None, alias="observedGeneration")
    """The metadata.generation this status describes."""

    replicas: ReplicaCounts | None = None
    """Desired and ready replicas."""

    endpoint: Annotated[str, pydantic.Field(max_length=2048)] | None = None
    """In-cluster URL of the pool's OpenAI-compatible endpoint."""

    last_scale_decision: ScaleDecision | None = pydantic.Field(
        default=None, alias="lastScaleDecision"
    )
    """The autoscaler's latest decision."""


class LocalModelPool(common.KascadeModel):
    """A pool of replicas serving one small model on the cluster's own nodes."""

    api_version: Literal["kascade.io/v1alpha1"] = pydantic.Field(
        default="kascade.io/v1alpha1", alias="apiVersion"
    )
    """kascade.io/v1alpha1."""

    kind: Literal["LocalModelPool"] = "LocalModelPool"
    """LocalModelPool."""

    metadata: common.ObjectMeta
    """Standard object metadata."""

    spec: LocalModelPoolSpec
    """Desired state."""

    status: LocalModelPoolStatus | None = None
    """Observed state, written by the operator."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule=f"self.metadata.name.size() <= {MAX_POOL_NAME} && "
            f"self.metadata.name.matches('{limits.POOL_NAME}')",
            message=f"metadata.name of a LocalModelPool must be at most {MAX_POOL_NAME} "
            "characters of lowercase letters, digits and '-', starting with a letter",
            field_path=".metadata.name",
            check=lambda p: len(p.metadata.name) <= MAX_POOL_NAME and _is_dns1035(p.metadata.name),
        ),
    )


def _is_dns1035(name: str) -> bool:
    return re.fullmatch(limits.POOL_NAME, name) is not None
