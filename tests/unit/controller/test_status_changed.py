"""Status writes compare field by field, so writers of different fields never loop."""

from __future__ import annotations

from kascade.controller import status


def test_a_field_another_writer_owns_is_not_a_change() -> None:
    current = {"replicas": {"desired": 2, "ready": 1}, "observedGeneration": 3}
    assert not status.changed(current, {"replicas": {"ready": 1}, "observedGeneration": 3})


def test_a_nested_difference_is_a_change() -> None:
    current = {"replicas": {"desired": 2, "ready": 1}}
    assert status.changed(current, {"replicas": {"ready": 2}})
    assert status.changed({}, {"replicas": {"ready": 0}})


def test_lists_compare_whole() -> None:
    current = {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Degraded"}]}
    assert status.changed(current, {"conditions": [{"type": "Ready", "status": "True"}]})
