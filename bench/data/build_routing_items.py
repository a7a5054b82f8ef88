"""Builds ``routing_items.jsonl``, the item set of ``bench/routing_quality.py``.

The bench itself never runs this: the JSONL is committed and the bench reads only it.
This script says how the file was made, and remakes it byte for byte from the same
package files (fixed seed, sorted sources):

    pip download bigbench==1.0.0 --no-deps --no-binary :all: -d /tmp/bb
    tar xzf /tmp/bb/bigbench-1.0.0.tar.gz -C /tmp/bb
    apt-get download bsdgames && dpkg-deb -x bsdgames_*.deb /tmp/bsd
    python bench/data/build_routing_items.py \\
        --bigbench /tmp/bb/bigbench-1.0.0/bigbench/benchmark_tasks \\
        --quiz /tmp/bsd/usr/share/games/bsdgames/quiz

Sources and licences:

- ``bigbench`` 1.0.0, the PyPI sdist of BIG-bench: task files under
  ``bigbench/benchmark_tasks``. The BIG-bench repository is Apache-2.0 (the sdist's
  PKG-INFO leaves its licence field UNKNOWN).
- Debian ``bsdgames`` 2.17-29: the data files of ``quiz(6)`` under
  ``/usr/share/games/bsdgames/quiz``, under the BSD licence of the 4.4BSD games
  (``/usr/share/doc/bsdgames/copyright``).

Item types and how each is graded (see ``bench/routing_grader.py``):

==============  ====  =================================================  ========
type            n     source                                             grading
==============  ====  =================================================  ========
arithmetic      140   bigbench arithmetic/{1,2}_digit_*, 3_digit_add...  number
capital         120   bsdgames quiz europe, africa, asia, america, state text
element         80    bsdgames quiz elements (symbol to name)            text
fact            100   bigbench qa_wikidata                               text
word_form       100   bigbench linguistic_mappings plural / past tense   text
counting        80    bigbench object_counting                           number
general         60    bigbench general_knowledge (best-scored target)    either
==============  ====  =================================================  ========

Items whose answer already appears in the question are left out (echoing the
question would otherwise grade as right). ``quick`` marks 10 items per type.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import re
from collections.abc import Iterator
from typing import Any

BIGBENCH = {"package": "bigbench==1.0.0 (PyPI sdist)", "licence": "Apache-2.0"}
BSDGAMES = {"package": "bsdgames 2.17-29 (Debian)", "licence": "BSD-3-Clause"}
SEED = 20261203
QUICK_PER_TYPE = 10
_ACCENT_CODE = re.compile(r"['^~°/,]")
_NUMBER = re.compile("[-\u2212]?[0-9][0-9,.]*")


def _expand(pattern: str) -> list[tuple[str, bool]]:
    """Expands a quiz(6) pattern: ``a|b`` alternatives, ``[a|b]`` a required choice,
    ``{x}`` optional. Each result carries whether it used no accent code (``'e``,
    ``^o``, ...), so a readable form can be picked for the question."""
    alts = _split_top(pattern)
    if len(alts) > 1:
        return [r for alt in alts for r in _expand(alt)]
    results: list[tuple[str, bool]] = [("", True)]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch in "[{":
            end = _match(pattern, i)
            inner = pattern[i + 1 : end]
            choices = _expand(inner)
            if ch == "[":
                choices = [
                    (text, clean and not (len(text) <= 3 and _ACCENT_CODE.search(text)))
                    for text, clean in choices
                ]
            else:
                choices = [*choices, ("", True)]
            results = [(a + b, ca and cb) for a, ca in results for b, cb in choices]
            i = end + 1
        else:
            results = [(a + ch, ca) for a, ca in results]
            i += 1
    return results


def _split_top(pattern: str) -> list[str]:
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(pattern):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
    parts.append(pattern[start:])
    return parts


def _match(pattern: str, start: int) -> int:
    depth = 0
    for i in range(start, len(pattern)):
        if pattern[i] in "[{":
            depth += 1
        elif pattern[i] in "]}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced quiz pattern: {pattern!r}")


_DISPLAY_OVERRIDES = {"Malagasy Republic": "Madagascar"}
"""Where the first form quiz(6) lists is not today's name."""


def _display(pattern: str) -> str:
    clean = [text for text, ok in _expand(_split_top(pattern)[0]) if ok]
    shown = max(clean, key=len) if clean else _expand(pattern)[0][0]
    return _DISPLAY_OVERRIDES.get(shown, shown)


def _answers(pattern: str) -> list[str]:
    return sorted({text.strip() for text, _ in _expand(pattern) if text.strip()})


def _quiz_lines(path: pathlib.Path) -> Iterator[list[str]]:
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.strip() and not line.startswith("#"):
            yield line.split(":")


def _item(
    kind: str, question: str, answers: list[str], grading: str, src: dict[str, str], path: str
) -> dict[str, Any]:
    return {
        "type": kind,
        "question": question,
        "answers": answers,
        "grading": grading,
        "source": {**src, "path": path},
    }


def capitals(quiz: pathlib.Path) -> list[dict[str, Any]]:
    """Country and US-state capitals from quiz(6)."""
    items = []
    for region in ("africa", "america", "asia", "europe"):
        for fields in _quiz_lines(quiz / region):
            q = f"What is the capital of {_display(fields[0])}?"
            items.append(
                _item("capital", q, _answers(fields[1]), "text", BSDGAMES, f"quiz/{region}")
            )
    for fields in _quiz_lines(quiz / "state"):
        q = f"What is the capital of the US state of {_display(fields[0])}?"
        items.append(_item("capital", q, _answers(fields[1]), "text", BSDGAMES, "quiz/state"))
    return items


def elements(quiz: pathlib.Path) -> list[dict[str, Any]]:
    """Element names from their symbols, from quiz(6)."""
    return [
        _item(
            "element",
            f"Which chemical element has the symbol {fields[0]}?",
            _answers(fields[3]),
            "text",
            BSDGAMES,
            "quiz/elements",
        )
        for fields in _quiz_lines(quiz / "elements")
    ]


def _task(root: pathlib.Path, name: str) -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = json.loads((root / name / "task.json").read_text())["examples"]
    return examples


def _targets(example: dict[str, Any]) -> list[str]:
    if "target" in example:
        target = example["target"]
        return [target] if isinstance(target, str) else list(target)
    scores: dict[str, float] = example["target_scores"]
    best = max(scores.values())
    return [k for k, v in scores.items() if v == best]


def arithmetic(root: pathlib.Path, rng: random.Random) -> list[dict[str, Any]]:
    """Seven BIG-bench arithmetic subtasks, 22 items each (before leaky ones go)."""
    items = []
    for sub in (
        "1_digit_addition",
        "1_digit_subtraction",
        "1_digit_multiplication",
        "2_digit_addition",
        "2_digit_subtraction",
        "2_digit_multiplication",
        "3_digit_addition",
    ):
        path = f"arithmetic/{sub}"
        for ex in rng.sample(_task(root, path), 22):
            items.append(_item("arithmetic", ex["input"], _targets(ex), "number", BIGBENCH, path))
    return items


def facts(root: pathlib.Path) -> list[dict[str, Any]]:
    """BIG-bench qa_wikidata: sentence completions about Wikidata facts."""
    path = "qa_wikidata"
    return [
        _item(
            "fact",
            f"Complete the sentence with a short answer: {ex['input']} ...",
            _targets(ex),
            "text",
            BIGBENCH,
            path,
        )
        for ex in _task(root, path)
    ]


def word_forms(root: pathlib.Path) -> list[dict[str, Any]]:
    """BIG-bench linguistic_mappings: plurals and English past tenses."""
    items = []
    for sub, template in (
        ("plural_json", "What is the plural of the English noun '{}'?"),
        ("past_tense_json", "What is the simple past tense of the English verb '{}'?"),
    ):
        path = f"linguistic_mappings/{sub}"
        for ex in _task(root, path):
            items.append(
                _item(
                    "word_form", template.format(ex["input"]), _targets(ex), "text", BIGBENCH, path
                )
            )
    return items


def counting(root: pathlib.Path) -> list[dict[str, Any]]:
    """BIG-bench object_counting."""
    path = "object_counting"
    return [
        _item("counting", ex["input"], _targets(ex), "number", BIGBENCH, path)
        for ex in _task(root, path)
    ]


def general(root: pathlib.Path) -> list[dict[str, Any]]:
    """BIG-bench general_knowledge, graded by number when every target is a number."""
    path = "general_knowledge"
    numbers = {"none", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight"}
    items = []
    for ex in _task(root, path):
        targets = _targets(ex)
        numeric = all(t.lower() in numbers or _NUMBER.fullmatch(t) for t in targets)
        grading = "number" if numeric else "text"
        items.append(_item("general", ex["input"], targets, grading, BIGBENCH, path))
    return items


def _norm(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def _leaks(item: dict[str, Any]) -> bool:
    question = _norm(item["question"])
    return any(_norm(a) in question for a in item["answers"])


def build(*, bigbench: pathlib.Path, quiz: pathlib.Path) -> list[dict[str, Any]]:
    """The whole item set, typed, sampled per type with a fixed seed, ids assigned."""
    rng = random.Random(SEED)
    wanted = {
        "arithmetic": (arithmetic(bigbench, rng), 140),
        "capital": (capitals(quiz), 120),
        "element": (elements(quiz), 80),
        "fact": (facts(bigbench), 100),
        "word_form": (word_forms(bigbench), 100),
        "counting": (counting(bigbench), 80),
        "general": (general(bigbench), 60),
    }
    out: list[dict[str, Any]] = []
    for kind, (pool, n) in wanted.items():
        pool = [item for item in pool if item["answers"] and not _leaks(item)]
        chosen = rng.sample(pool, min(n, len(pool)))
        for i, item in enumerate(chosen):
            out.append({"id": f"{kind}-{i:03d}", **item, "quick": i < QUICK_PER_TYPE})
    return out


def main() -> None:
    """Writes the JSONL next to this script."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bigbench", type=pathlib.Path, required=True)
    parser.add_argument("--quiz", type=pathlib.Path, required=True)
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path(__file__).with_name("routing_items.jsonl")
    )
    args = parser.parse_args()
    items = build(bigbench=args.bigbench, quiz=args.quiz)
    with args.out.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
    counts: dict[str, int] = {}
    for item in items:
        counts[item["type"]] = counts.get(item["type"], 0) + 1
    print(json.dumps({"items": len(items), "per_type": counts}))


if __name__ == "__main__":
    main()
