"""core/v1 Affinity, typed: a misspelt field (``nodeAfinity``) is rejected at the door
instead of being dropped on the way to the replica pods.

The shapes and names are Kubernetes' own (``kubectl explain pod.spec.affinity``); only
the fields Kubernetes defines are accepted.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import alias_generators

from kascade.api.v1alpha1 import common

Weight = Annotated[int, pydantic.Field(ge=1, le=100)]
LabelKey = Annotated[str, pydantic.Field(min_length=1, max_length=316)]
LabelValue = Annotated[str, pydantic.Field(max_length=63)]


class _K8sModel(common.KascadeModel):
    model_config = pydantic.ConfigDict(alias_generator=alias_generators.to_camel)


class NodeSelectorRequirement(_K8sModel):
    """A node label (or field) requirement."""

    key: LabelKey
    """The label key the requirement applies to."""

    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """How the key relates to the values: In, NotIn, Exists, DoesNotExist, Gt or Lt."""

    values: Annotated[list[LabelValue], pydantic.Field(max_length=64)] | None = None
    """Values for In and NotIn (one or more), one integer for Gt and Lt, none for Exists
    and DoesNotExist."""


class NodeSelectorTerm(_K8sModel):
    """Requirements that must all hold (ANDed)."""

    match_expressions: (
        Annotated[list[NodeSelectorRequirement], pydantic.Field(max_length=32)] | None
    ) = None
    """Requirements on node labels."""

    match_fields: Annotated[list[NodeSelectorRequirement], pydantic.Field(max_length=32)] | None = (
        None
    )
    """Requirements on node fields."""


class NodeSelector(_K8sModel):
    """Terms of which at least one must match (ORed)."""

    node_selector_terms: Annotated[list[NodeSelectorTerm], pydantic.Field(max_length=32)]
    """The terms; a node matching any of them qualifies."""


class PreferredSchedulingTerm(_K8sModel):
    """A preference for nodes matching a term, with a weight."""

    weight: Weight
    """Weight of the preference, 1 to 100."""

    preference: NodeSelectorTerm
    """The nodes preferred."""


class NodeAffinity(_K8sModel):
    """Which nodes replicas may or should run on."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    """Nodes that must match for a replica to be scheduled."""

    preferred_during_scheduling_ignored_during_execution: (
        Annotated[list[PreferredSchedulingTerm], pydantic.Field(max_length=32)] | None
    ) = None
    """Nodes preferred, by weight."""


class LabelSelectorRequirement(_K8sModel):
    """A label requirement of a label selector."""

    key: LabelKey
    """The label key."""

    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """In, NotIn, Exists or DoesNotExist."""

    values: Annotated[list[LabelValue], pydantic.Field(max_length=64)] | None = None
    """Values for In and NotIn; none for Exists and DoesNotExist."""


class LabelSelector(_K8sModel):
    """Selects objects by labels; every condition must hold."""

    match_labels: Annotated[dict[str, LabelValue], pydantic.Field(max_length=64)] | None = None
    """Labels that must have these values."""

    match_expressions: (
        Annotated[list[LabelSelectorRequirement], pydantic.Field(max_length=32)] | None
    ) = None
    """Label requirements."""


class PodAffinityTerm(_K8sModel):
    """Pods (selected by labels) that must or must not share a topology domain."""

    label_selector: LabelSelector | None = None
    """The pods this term is about."""

    namespace_selector: LabelSelector | None = None
    """Namespaces those pods may be in, by namespace labels."""

    namespaces: Annotated[list[common.DnsLabel], pydantic.Field(max_length=64)] | None = None
    """Namespaces those pods may be in, by name; unset means the pool's own."""

    topology_key: Annotated[str, pydantic.Field(min_length=1, max_length=316)]
    """Node label whose value defines a topology domain, e.g. kubernetes.io/hostname."""

    match_label_keys: Annotated[list[LabelKey], pydantic.Field(max_length=32)] | None = None
    """Pod label keys whose values are added to labelSelector (In)."""

    mismatch_label_keys: Annotated[list[LabelKey], pydantic.Field(max_length=32)] | None = None
    """Pod label keys whose values are added to labelSelector (NotIn)."""


class WeightedPodAffinityTerm(_K8sModel):
    """A pod affinity term with a weight."""

    weight: Weight
    """Weight of the preference, 1 to 100."""

    pod_affinity_term: PodAffinityTerm
    """The term."""


class PodAffinity(_K8sModel):
    """Pods that replicas must or should run near (podAffinity) or away from
    (podAntiAffinity)."""

    required_during_scheduling_ignored_during_execution: (
        Annotated[list[PodAffinityTerm], pydantic.Field(max_length=32)] | None
    ) = None
    """Terms that must hold for a replica to be scheduled."""

    preferred_during_scheduling_ignored_during_execution: (
        Annotated[list[WeightedPodAffinityTerm], pydantic.Field(max_length=32)] | None
    ) = None
    """Terms preferred, by weight."""


class Affinity(_K8sModel):
    """A core/v1 Affinity for the replica pods."""

    node_affinity: NodeAffinity | None = None
    """Node affinity."""

    pod_affinity: PodAffinity | None = None
    """Pod affinity: run near pods matching the terms."""

    pod_anti_affinity: PodAffinity | None = None
    """Pod anti-affinity: run away from pods matching the terms."""
