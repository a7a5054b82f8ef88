"""The Kascade API, version kascade.io/v1alpha1: LocalModelPool, CloudExpert, RoutingPolicy,
Tenant.

These pydantic models are the single source of truth: the CRDs in ``crds/`` are generated
from them (``python -m kascade.api.crdgen``), and embedded mode validates YAML files with
them (:func:`load_path`), rejecting the same objects the API server rejects.
"""

from kascade.api.v1alpha1.cloudexpert import (
    CloudExpert,
    CloudExpertSpec,
    CloudExpertStatus,
    ExpertConditionType,
)
from kascade.api.v1alpha1.common import (
    API_GROUP,
    API_VERSION,
    GROUP_VERSION,
    Condition,
    ObjectMeta,
    SecretKeyRef,
)
from kascade.api.v1alpha1.localmodelpool import (
    LocalModelPool,
    LocalModelPoolSpec,
    LocalModelPoolStatus,
    PoolConditionType,
)
from kascade.api.v1alpha1.manifests import (
    KINDS,
    KascadeObject,
    Manifest,
    check_update,
    load_objects,
    load_path,
    read_manifests,
)
from kascade.api.v1alpha1.problems import Problem, ValidationFailed
from kascade.api.v1alpha1.routingpolicy import (
    PolicyConditionType,
    RoutingPolicy,
    RoutingPolicySpec,
    RoutingPolicyStatus,
)
from kascade.api.v1alpha1.tenant import Tenant, TenantSpec, TenantStatus

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "GROUP_VERSION",
    "KINDS",
    "CloudExpert",
    "CloudExpertSpec",
    "CloudExpertStatus",
    "Condition",
    "ExpertConditionType",
    "KascadeObject",
    "LocalModelPool",
    "LocalModelPoolSpec",
    "LocalModelPoolStatus",
    "Manifest",
    "ObjectMeta",
    "PolicyConditionType",
    "PoolConditionType",
    "Problem",
    "RoutingPolicy",
    "RoutingPolicySpec",
    "RoutingPolicyStatus",
    "SecretKeyRef",
    "Tenant",
    "TenantSpec",
    "TenantStatus",
    "ValidationFailed",
    "check_update",
    "load_objects",
    "load_path",
    "read_manifests",
]
