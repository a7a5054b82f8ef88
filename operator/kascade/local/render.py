"""``kascade render -f PATH``: print the Kubernetes objects the operator would create."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.compile import resources
from kascade.local import objects


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (serveConfigV2, the gateway config) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kascade render",
        description="Print the RayServices and gateway objects the operator would apply for "
        "these Kascade objects (for GitOps review). ownerReferences are left out: they "
        "need the uids the API server assigns.",
    )
    parser.add_argument("-f", "--filename", required=True, type=Path, help="file or directory")
    parser.add_argument("--redis-url", default=None, help="shared ledger (enables gateway HPA)")
    return parser


def _rayservices(loaded: objects.Loaded, settings: resources.Settings) -> list[dict[str, Any]]:
    serving = objects.serving_configs(loaded)
    return [
        resources.build_rayservice(
            pool=pool,
            serving=serving[pool.metadata.name],
            namespace=loaded.namespace,
            settings=settings,
            owners=[],
        )
        for pool in loaded.pools
    ]


def _gateway_objects(loaded: objects.Loaded, settings: resources.Settings) -> list[dict[str, Any]]:
    namespace = loaded.namespace
    compiled = compile_gateway.gateway_config(
        namespace=namespace,
        pools=loaded.pools,
        experts=loaded.experts,
        policies=loaded.policies,
        pool_endpoint=lambda p: resources.serve_endpoint(pool=p.metadata.name, namespace=namespace),
        credentials="file",
        ledger_url=settings.redis_url,
        tenants=loaded.tenants,
        require_api_key=True,  # as the operator renders it
    )
    for name, refs in compiled.missing.items():
        print(f"# RoutingPolicy/{name} left out: missing {', '.join(refs)}", file=sys.stderr)
    used = set(compiled.config.experts)
    return resources.build_gateway(
        namespace=namespace,
        config=compiled.config,
        experts=[e for e in loaded.experts if e.metadata.name in used],
        settings=settings,
        owners=[],
        service_monitor=False,
        tenants=loaded.tenants,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        loaded = objects.load(args.filename)
    except (v1alpha1.ValidationFailed, objects.NamespaceConflict) as exc:
        print(f"invalid:\n{exc}", file=sys.stderr)
        return 1
    findings = objects.compile_findings(loaded)
    if findings.errors:
        print(objects.LEFT_OUT + "\n" + "\n".join(findings.errors), file=sys.stderr)
        return 1
    settings = resources.Settings(redis_url=args.redis_url)
    docs = _rayservices(loaded, settings)
    if loaded.policies:
        docs.extend(_gateway_objects(loaded, settings))
    sys.stdout.write(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False))
    return 0
