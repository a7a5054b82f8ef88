"""``kascade validate -f PATH``: check Kascade YAML the way the API server would."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.local import objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kascade validate",
        description="Validate LocalModelPool, CloudExpert and RoutingPolicy YAML files. "
        "Errors name the file, the object and the field.",
    )
    parser.add_argument("-f", "--filename", required=True, type=Path, help="file or directory")
    args = parser.parse_args(argv)
    try:
        loaded = objects.load(args.filename)
    except (v1alpha1.ValidationFailed, objects.NamespaceConflict) as exc:
        print(f"invalid:\n{exc}", file=sys.stderr)
        return 1
    missing = {
        p.metadata.name: compile_gateway.missing_references(
            p,
            pools=[x.metadata.name for x in loaded.pools],
            experts=[x.metadata.name for x in loaded.experts],
        )
        for p in loaded.policies
    }
    problems = [
        f"RoutingPolicy/{name}: references {', '.join(refs)}, which are not in {args.filename}"
        for name, refs in missing.items()
        if refs
    ]
    if problems:
        print("invalid:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print(
        f"valid: {len(loaded.pools)} LocalModelPool, {len(loaded.experts)} CloudExpert, "
        f"{len(loaded.policies)} RoutingPolicy in namespace {loaded.namespace!r}"
    )
    return 0
