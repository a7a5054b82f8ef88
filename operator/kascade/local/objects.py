"""Loading a directory of Kascade YAML for embedded mode, and compiling it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.compile import resources
from kascade.compile import serving as compile_serving
from kascade.serving import config as serving_config


@dataclass(frozen=True)
class Loaded:
    """The objects of one namespace, split by kind."""

    namespace: str
    pools: list[v1alpha1.LocalModelPool]
    experts: list[v1alpha1.CloudExpert]
    policies: list[v1alpha1.RoutingPolicy]


class NamespaceConflict(ValueError):
    """Embedded mode runs one namespace; the files named several."""


def load(path: Path) -> Loaded:
    """Validates every Kascade object under ``path``.

    Raises ValidationFailed (file, object, field) or NamespaceConflict.
    """
    objects = v1alpha1.load_path(path)
    namespaces = sorted({o.metadata.namespace or "default" for o in objects})
    if len(namespaces) > 1:
        raise NamespaceConflict(
            f"{path}: objects name several namespaces {namespaces}; embedded mode runs one "
            "namespace: split the files or remove metadata.namespace"
        )
    return Loaded(
        namespace=namespaces[0] if namespaces else "default",
        pools=[o for o in objects if isinstance(o, v1alpha1.LocalModelPool)],
        experts=[o for o in objects if isinstance(o, v1alpha1.CloudExpert)],
        policies=[o for o in objects if isinstance(o, v1alpha1.RoutingPolicy)],
    )


def serving_configs(loaded: Loaded) -> dict[str, serving_config.PoolServingConfig]:
    methods = compile_gateway.confidence_methods(loaded.policies)
    return {
        pool.metadata.name: compile_serving.pool_serving_config(
            pool, confidence_method=methods.get(pool.metadata.name)
        )
        for pool in loaded.pools
    }


LEFT_OUT = (
    "invalid: the API server accepts these objects, but the operator would leave them "
    "out of the gateway (each with a Ready=False/InvalidSpec condition):"
)


@dataclass(frozen=True)
class Findings:
    """What compiling the objects found, one ``Kind/name: field: reason`` line each."""

    errors: list[str]
    """Objects that cannot be compiled: the operator leaves each out with a condition."""
    unresolved: list[str]
    """Policies naming pools or experts that are not among the objects."""


def compile_findings(loaded: Loaded) -> Findings:
    """Compiles every object as the operator would and collects what it would report
    as conditions, so ``validate``, ``render`` and ``up`` report the same errors."""
    errors: list[str] = []
    for pool in loaded.pools:
        try:
            compile_serving.pool_serving_config(pool)
        except Exception as error:  # reported as the operator's condition would be
            errors += [
                f"LocalModelPool/{pool.metadata.name}: {line}"
                for line in compile_gateway.describe_failure(error)
            ]
    for expert in loaded.experts:
        errors += [
            f"CloudExpert/{expert.metadata.name}: {line}"
            for line in compile_gateway.expert_failures(expert)
        ]
    compiled = compile_gateway.gateway_config(
        namespace=loaded.namespace,
        pools=loaded.pools,
        experts=loaded.experts,
        policies=loaded.policies,
        pool_endpoint=lambda p: resources.serve_endpoint(
            pool=p.metadata.name, namespace=loaded.namespace
        ),
        credentials="file",
    )
    errors += [
        f"{key}: {line}"
        for key, lines in compiled.invalid.items()
        if key.startswith("RoutingPolicy/")
        for line in lines
    ]
    unresolved = [
        f"RoutingPolicy/{name}: references {', '.join(refs)}"
        for name, refs in compiled.missing.items()
    ]
    return Findings(errors=errors, unresolved=unresolved)
