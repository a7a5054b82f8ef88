"""Stop sequences cut the text exactly, even when split across tokens."""

from __future__ import annotations

from kascade.serving import generation


def _run(pieces: list[str], stops: list[str]) -> tuple[str, bool, list[str]]:
    matcher = generation.StopMatcher(stops=stops)
    emitted: list[str] = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        emitted.append(text)
        if hit:
            return "".join(emitted), True, emitted
    emitted.append(matcher.flush())
    return "".join(emitted), False, emitted


def test_no_stops_passes_everything_through_at_once() -> None:
    assert _run(["a", "b"], []) == ("ab", False, ["a", "b", ""])


def test_stop_inside_one_piece() -> None:
    text, hit, _ = _run(["hello END world"], ["END"])
    assert (text, hit) == ("hello ", True)


def test_stop_split_across_pieces_is_held_back_then_cut() -> None:
    text, hit, emitted = _run(["hel", "lo E", "N", "D more"], ["END"])
    assert (text, hit) == ("hello ", True)
    assert emitted[1] == "lo "  # "E" held back: it may start "END"


def test_false_prefix_is_released_at_the_end() -> None:
    text, hit, _ = _run(["x E", "N"], ["END"])
    assert (text, hit) == ("x EN", False)


def test_earliest_of_several_stops_wins() -> None:
    text, hit, _ = _run(["a;b.c"], [".", ";"])
    assert (text, hit) == ("a", True)
