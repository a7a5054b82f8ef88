"""The Kascade HTTP contract is named once (kascade.api.wire): no module spells a
``x-kascade-*`` header itself, so the gateway, the serving replica and the simulated
expert cannot drift apart."""

from __future__ import annotations

import ast
from pathlib import Path

from kascade.api import wire

PACKAGE = Path(wire.__file__).resolve().parents[1]


def _header_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.lower().startswith("x-kascade-")
    ]


def test_no_module_but_wire_spells_a_kascade_header() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}: {value!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "wire.py"
        for line, value in _header_literals(path)
    ]
    assert offenders == [], "use kascade.api.wire instead:\n" + "\n".join(offenders)


def test_the_walk_finds_a_header_where_one_is_spelled(tmp_path: Path) -> None:
    # The check above would pass vacuously if the walk could not see a literal.
    sample = tmp_path / "sample.py"
    sample.write_text('H = {"X-Kascade-Route": "local"}\n')
    assert _header_literals(sample) == [(1, "X-Kascade-Route")]


def test_header_names_are_distinct_lower_case_kascade_headers() -> None:
    names = {k: v for k, v in vars(wire).items() if k.endswith("_HEADER")}
    assert len(set(names.values())) == len(names)
    for key, value in names.items():
        assert value == value.lower(), key
        assert value.startswith("x-kascade-"), key
