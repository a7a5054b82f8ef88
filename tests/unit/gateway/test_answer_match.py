"""The answer grader: numbers stated in a sentence, words on the first line."""

from __future__ import annotations

import json
import pathlib

import pytest

from kascade.gateway.route import answer_match

NUMBER = answer_match.Grading.NUMBER
TEXT = answer_match.Grading.TEXT
ITEMS = pathlib.Path(__file__).resolve().parents[3] / "bench" / "data" / "routing_items.jsonl"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("1219", ["1219"]),
        ("53 times 23 is 1219.", ["1219"]),
        ("Sure! 53 times 23 equals 1219. Because 50 times 23 is 1150.", ["1219"]),
        ("The result is -14.", ["-14"]),
        ("There are 1,000 meters in a kilometer.", ["1,000"]),
        ("You have three musical instruments.", ["three", "3"]),
        ("A horse has 4 legs.", ["four"]),
        ("There are none.", ["none"]),
        ("The answer is: 7", ["7"]),
        ("It is \u2212273.15 degrees.", ["\u2212273.15"]),
    ],
)
def test_number_answers_that_state_the_expected_number(answer: str, expected: list[str]) -> None:
    assert answer_match.matches(answer=answer, expected=expected, grading=NUMBER)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("53 times 23 is 1218.", ["1219"]),
        ("1219 is not it, 53 times 23 is 1300.", ["1219"]),  # the last number counts
        ("I cannot compute that.", ["1219"]),
        ("", ["3"]),
        ("The answer is 12.\n3", ["3"]),  # only the first line counts
        ("The answer is 3.5", ["3"]),
    ],
)
def test_number_answers_that_do_not(answer: str, expected: list[str]) -> None:
    assert not answer_match.matches(answer=answer, expected=expected, grading=NUMBER)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Paris", ["Paris"]),
        ("The capital of France is Paris.", ["Paris"]),
        ("Yaoundé is the capital of Cameroon.", ["Yaounde", "Yaound'e"]),
        ("\n\nThe plural of ability is ABILITIES.", ["abilities"]),
        ("The capital is Washington, D.C.", ["Washington, D.C."]),
        ("It is Brussels.", ["Brussel", "Brussels", "Bruxelles"]),
    ],
)
def test_text_answers_that_name_an_accepted_answer(answer: str, expected: list[str]) -> None:
    assert answer_match.matches(answer=answer, expected=expected, grading=TEXT)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("The capital of France is Lyon.", ["Paris"]),
        ("Parisian food is great.", ["Paris"]),  # whole words only
        ("I do not know.\nParis", ["Paris"]),  # only the first line counts
        ("", ["Paris"]),
        ("The plural of academic is academic.", ["academics"]),
    ],
)
def test_text_answers_that_do_not(answer: str, expected: list[str]) -> None:
    assert not answer_match.matches(answer=answer, expected=expected, grading=TEXT)


def test_normalize_folds_case_accents_and_punctuation() -> None:
    assert answer_match.normalize("  Bogotá, D.C.!  ") == "bogota d c"


def test_every_committed_item_grades_its_own_answer_as_right_and_a_blank_as_wrong() -> None:
    items = [json.loads(line) for line in ITEMS.read_text(encoding="utf-8").splitlines()]
    assert len(items) >= 600
    assert sum(item["quick"] for item in items) >= 60
    for item in items:
        grading = answer_match.Grading(item["grading"])
        assert item["source"]["package"], item["id"]
        assert item["source"]["licence"], item["id"]
        assert answer_match.matches(
            answer=f"The answer is {item['answers'][0]}.", expected=item["answers"], grading=grading
        ), item["id"]
        assert not answer_match.matches(
            answer="I do not know.", expected=item["answers"], grading=grading
        ), item["id"]


@pytest.mark.parametrize(
    ("answer", "reference", "same"),
    [
        ("Paris", "The capital of France is Paris.", True),
        ("The capital of France is Paris.", "Paris", True),
        ("The capital of France is Lyon.", "Paris", False),
        ("53 times 23 is 1219.", "1219", True),
        ("1218", "The product is 1219.", False),
        ("I am not sure.", "1219", False),
        ("", "Paris", False),
        ("A long answer that rambles about many things", "A different long answer", False),
    ],
)
def test_agree_judges_a_local_answer_by_the_expert_s(
    answer: str, reference: str, same: bool
) -> None:
    assert answer_match.agree(answer=answer, reference=reference) is same
