"""The models stop every mistake of api_door_cases at the door, naming the field."""

from __future__ import annotations

import zoneinfo

import api_door_cases
import api_invalid_cases
import pytest

from kascade.api import v1alpha1
from kascade.api.v1alpha1 import regex, timezones


def test_the_suite_is_large_new_and_named_uniquely() -> None:
    names = [c.name for c in api_door_cases.CASES]
    assert len(names) >= 40
    assert len(set(names)) == len(names)
    assert not set(names) & {c.name for c in api_invalid_cases.CASES}


@pytest.mark.parametrize("case", api_door_cases.CASES, ids=lambda c: c.name)
def test_mistake_is_rejected_naming_the_field(case: api_door_cases.DoorCase) -> None:
    with pytest.raises(v1alpha1.ValidationFailed) as raised:
        v1alpha1.load_objects([case.body], source="case.yaml")
    problems = raised.value.problems
    named = [p for p in problems if p.path == case.field]
    assert named, f"no problem names {case.field}: {[str(p) for p in problems]}"
    if case.says is not None:
        assert any(case.says in p.message for p in named), [p.message for p in named]


def test_every_listed_time_zone_loads() -> None:
    for name in timezones.TIME_ZONES:
        zoneinfo.ZoneInfo(name)
    assert {"UTC", "Europe/Berlin", "America/New_York"} <= set(timezones.TIME_ZONES)


def test_nested_quantifiers_compile_and_run_in_linear_time() -> None:
    # The pattern the issue found taking seconds under backtracking is fine for RE2.
    assert regex.check_re2(r"^(\w+\s?)*$") == r"^(\w+\s?)*$"
    with pytest.raises(ValueError, match=r"RE2 syntax \(missing \): \(abc\)"):
        regex.check_re2("(abc")
