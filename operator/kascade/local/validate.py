"""``kascade validate -f PATH``: check Kascade YAML the way the API server would."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kascade.api import v1alpha1
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
    findings = objects.compile_findings(loaded)
    if findings.errors:
        print(objects.LEFT_OUT + "\n" + "\n".join(findings.errors), file=sys.stderr)
        return 1
    for line in findings.unresolved:
        # The API server accepts a policy whose pool or expert does not exist yet (the
        # operator reports ReferencesResolved=False until it does): a warning, not an error.
        print(f"warning: {line}, which are not in {args.filename}", file=sys.stderr)
    print(
        f"valid: {len(loaded.pools)} LocalModelPool, {len(loaded.experts)} CloudExpert, "
        f"{len(loaded.policies)} RoutingPolicy in namespace {loaded.namespace!r}"
    )
    return 0
