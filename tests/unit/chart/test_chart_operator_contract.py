"""The arguments the chart gives the operator container are ones ``kascade operator``
accepts: rendered by helm, parsed by the real command line (which exits on ``--help``
before it starts kopf)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest
from chart_render import CHART, Manifest, find

Render = Callable[..., list[Manifest]]


def operator_args(manifests: list[Manifest]) -> list[str]:
    deployment = find(manifests, "Deployment", "kascade-operator")
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def cli_help(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Runs ``kascade ARGS --help`` in a fresh interpreter, as the image's entrypoint would."""
    code = f"from kascade.cli import main; raise SystemExit(main({json.dumps([*args, '--help'])}))"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


LOG_LEVELS = json.loads((CHART / "values.schema.json").read_text())["properties"]["operator"][
    "properties"
]["logLevel"]["enum"]


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param([], id="all-namespaces"),
        pytest.param(["--set", "watchNamespaces={team-a,team-b}"], id="namespaced"),
        pytest.param(
            ["--set", "operator.leaderElection.enabled=false", "--set", "operator.replicas=1"],
            id="no-leader-election",
        ),
        *[pytest.param(["--set", f"operator.logLevel={lv}"], id=lv) for lv in LOG_LEVELS],
    ],
)
def test_operator_command_line_accepts_the_rendered_args(render: Render, flags: list[str]) -> None:
    args = operator_args(render(*flags))
    assert args[0] == "operator"
    proc = cli_help(args)
    # argparse validates choices and exclusive groups as it consumes each option, and
    # only then reaches --help and exits 0; unknown options are checked against the help.
    assert proc.returncode == 0, proc.stderr
    for flag in (a for a in args if a.startswith("--")):
        assert flag in proc.stdout, f"kascade operator does not know {flag}:\n{proc.stdout}"
