"""The kascade command line dispatches to each component and explains itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kascade import cli


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name}" in out


def test_unknown_command_exits_2_and_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err
    assert "sim-expert" in err


def test_every_command_target_is_importable() -> None:
    # Each target runs in its own interpreter: importing one must not need another's extras.
    for module_name, func_name, _ in cli.COMMANDS.values():
        code = f"import {module_name} as m; assert callable(m.{func_name})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, f"{module_name}.{func_name}: {proc.stderr[-2000:]}"
