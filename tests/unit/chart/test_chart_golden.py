"""``helm template`` output equals the stored expected YAML in golden/.

Regenerate after an intended change with ``KASCADE_UPDATE_GOLDEN=1`` and review the
diff in git like any other change.
"""

from __future__ import annotations

import difflib
import os

import pytest
from chart_render import GOLDEN, NAMESPACED_VALUES, HelmRunner, template_args

CASES = {
    "default": [],
    "namespaced": ["--values", str(NAMESPACED_VALUES)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_template_matches_golden(helm: HelmRunner, case: str) -> None:
    rendered = helm(*template_args(*CASES[case])).stdout
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("KASCADE_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.exists(), f"{golden} is missing: run with KASCADE_UPDATE_GOLDEN=1"
    expected = golden.read_text()
    if rendered != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                rendered.splitlines(keepends=True),
                fromfile=f"golden/{case}.yaml",
                tofile="helm template",
            )
        )
        pytest.fail(
            f"helm template ({case}) differs from {golden}; if intended, rerun with "
            f"KASCADE_UPDATE_GOLDEN=1 and review the change:\n{diff}",
            pytrace=False,
        )
