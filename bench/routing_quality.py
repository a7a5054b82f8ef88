"""Routing-quality benchmark: how well each confidence signal tells right local answers
from wrong ones, and how much traffic can stay local at a given overall accuracy.

Run (needs the serving extra; ``--quick`` takes the 70 items marked quick):

    nice -n 10 .venv/bin/python bench/routing_quality.py [--quick] \\
        [--model builtin://smollm2-135m-instruct] [--out bench/results]

Items: ``bench/data/routing_items.jsonl`` (676 short questions with graded answers,
each naming its source package and licence; ``bench/data/build_routing_items.py``
says how it was built). Nothing is downloaded at run time.

Answers are saved to ``<out>/routing_quality_<model>.answers.jsonl``; ``--answers``
re-scores such a file without generating again (to try a change in the grader or the
signals on the same answers).

Serving path: the pool's own runtime code (``LlamaCppRuntime`` with the model's chat
template and, so, its default system prompt) and ``generation.run_generation`` at
temperature 0, exactly as a replica runs a request; the answer is graded by
``kascade.gateway.route.answer_match`` and measured by the gateway's degeneration
detector. Methods compared: every token method a pool offers, the mean with the
degeneration gate, and the combined score (logistic regression fitted here).

Protocol: the items are split into two halves (stratified by type, fixed seed). The
combined model is fitted on one half and scored on the other (cross-fitting, so every
item gets a held-out score). Thresholds for 90% / 95% overall accuracy (the expert
assumed right) are chosen on one half and measured on the other, both ways round;
figures are the mean of the two. References: a random router (keeps a random share
local) and a perfect router (keeps every right answer, plus wrong ones up to the
error budget). ``--variants`` scores A/B arms (a method and a threshold each, as a
policy's ``variants`` set them) on the same items: each arm's local share and overall
accuracy. Prints progress, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from kascade.gateway.route import answer_match, calibration, combined_score, degeneration
from kascade.gateway.route.logistic import fit_logistic
from kascade.serving import config, generation, sources
from kascade.serving.runtimes import base, llama_cpp

ITEMS = pathlib.Path(__file__).with_name("data") / "routing_items.jsonl"
DEFAULT_METHOD = "mean-token-prob"
TOKEN_METHODS = {
    "mean-token-prob": "mean_token_prob",
    "min-token-prob": "min_token_prob",
    "margin": "margin",
    "sequence-prob": "sequence_prob",
    "token-prob-q10": "token_prob_q10",
}
GATED = "mean-token-prob+degeneration"
COMBINED = "combined"
SEED = 7
DEFAULT_VARIANTS = "control=mean-token-prob@0.5,combined=combined@auto"
"""Two arms as a policy's variants would set them: the default method at the default
threshold, and the combined score at the threshold for 90% overall accuracy."""
Array = npt.NDArray[np.float64]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_items(*, quick: bool) -> list[dict[str, Any]]:
    """The committed item set (only the quick ones with ``quick``)."""
    items = [json.loads(line) for line in ITEMS.read_text(encoding="utf-8").splitlines()]
    return [item for item in items if item["quick"] or not quick]


def answer_items(
    *,
    items: Sequence[dict[str, Any]],
    source: str,
    threads: int,
    max_tokens: int,
    chat_template: str | None = None,
    stops: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Runs every item through the serving runtime; returns graded records.
    ``chat_template`` is a pool's ``model.chatTemplate`` (else the model's own, as a
    pool without one uses); ``stops`` are the request's ``stop`` sequences."""
    runtime = llama_cpp.LlamaCppRuntime(
        model_path=sources.resolve_source(source=source),
        context_length=2048,
        n_threads=threads,
        chat_template=chat_template or sources.builtin_chat_template(source),
    )
    params = base.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    records = []
    started = time.perf_counter()
    try:
        for i, item in enumerate(items):
            prompt = runtime.prompt_tokens(
                messages=[base.Message(role="user", content=item["question"])]
            )
            text, finished = _generate(runtime=runtime, prompt=prompt, params=params, stops=stops)
            records.append(
                {
                    **item,
                    "answer": text,
                    "finish_reason": finished.finish_reason,
                    "signals": finished.signals or {},
                }
            )
            if (i + 1) % 20 == 0 or i + 1 == len(items):
                right = sum(grade(r) for r in records)
                _log(
                    f"{i + 1}/{len(items)} answered, {right} right, "
                    f"{time.perf_counter() - started:.0f}s"
                )
    finally:
        runtime.close()
    return records


def _generate(
    *,
    runtime: llama_cpp.LlamaCppRuntime,
    prompt: list[int],
    params: base.SamplingParams,
    stops: Sequence[str] = (),
) -> tuple[str, generation.Finished]:
    parts: list[str] = []
    for event in generation.run_generation(
        runtime=runtime,
        prompt=prompt,
        params=params,
        stops=list(stops),
        method=config.ConfidenceMethod.MEAN_TOKEN_PROB,
        cancel=threading.Event(),
    ):
        if isinstance(event, generation.TextDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise RuntimeError("generation ended without a Finished event")


def grade(raw: dict[str, Any]) -> bool:
    """Whether a raw record's answer is right."""
    return answer_match.matches(
        answer=raw["answer"],
        expected=raw["answers"],
        grading=answer_match.Grading(raw["grading"]),
    )


def score_record(raw: dict[str, Any]) -> dict[str, Any]:
    """Grades one raw record (item, answer, finish reason, signals) and scores it with
    every method; the degeneration detector runs with the policy defaults."""
    signals = raw["signals"]
    text_features = degeneration.detect(
        answer=raw["answer"], prompt=raw["question"], finish_reason=raw["finish_reason"]
    )
    flagged = degeneration.verdict(features=text_features, limits=degeneration.Limits())
    features = combined_score.features(signals=signals, text=text_features, task=raw["type"])
    scores = {method: float(signals.get(key, 0.0)) for method, key in TOKEN_METHODS.items()}
    scores[GATED] = 0.0 if flagged else scores[DEFAULT_METHOD]
    return {
        "id": raw["id"],
        "type": raw["type"],
        "correct": grade(raw),
        "degenerate": flagged,
        "scores": scores,
        "features": features or {},
    }


# --- statistics ------------------------------------------------------------------


def wilson(*, successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def auroc(*, scores: Array, labels: Array) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auroc(
    *, scores: Array, labels: Array, rounds: int, rng: np.random.Generator
) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of the AUROC (resampling items)."""
    values = []
    n = len(scores)
    for _ in range(rounds):
        idx = rng.integers(0, n, size=n)
        value = auroc(scores=scores[idx], labels=labels[idx])
        if value is not None:
            values.append(value)
    if len(values) < rounds // 2:
        return None
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))


def coverage_curve(*, scores: Array, labels: Array) -> tuple[Array, Array]:
    """(local share, overall accuracy) when the top-k scores stay local, k = 0..n."""
    order = np.argsort(-scores, kind="mergesort")
    wrong_local = np.concatenate([[0.0], np.cumsum(1.0 - labels[order])])
    n = len(scores)
    return np.arange(n + 1) / n, 1.0 - wrong_local / n


def choose_threshold(*, scores: Array, labels: Array, target: float) -> float:
    """Lowest threshold (most kept local) whose overall accuracy on these items is
    >= target; +inf (escalate everything) when none is."""
    best = math.inf
    for t in sorted(set(scores.tolist()), reverse=True):
        local = scores >= t
        accuracy = 1.0 - float(((~labels.astype(bool)) & local).sum()) / len(scores)
        if accuracy >= target:
            best = t
    return best


def perfect_share(*, labels: Array, target: float) -> float:
    """Local share of a router that knows which answers are right."""
    n = len(labels)
    right = float(labels.sum())
    return min(1.0, (right + min(n - right, (1.0 - target) * n)) / n)


def random_share(*, accuracy: float, target: float) -> float:
    """Local share of a router keeping a random share s local: 1 - s(1 - acc) >= target."""
    return 1.0 if accuracy >= target else (1.0 - target) / (1.0 - accuracy)


# --- the report ------------------------------------------------------------------


def split_halves(records: Sequence[dict[str, Any]]) -> Array:
    """0/1 half per record, stratified by type and correctness, fixed seed."""
    rng = random.Random(SEED)
    half = np.zeros(len(records), dtype=np.int64)
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((r["type"], r["correct"]), []).append(i)
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for j, i in enumerate(members):
            half[i] = j % 2
    return half


def cross_fit_combined(
    *, records: Sequence[dict[str, Any]], half: Array, names: Sequence[str]
) -> tuple[Array, dict[str, Any]]:
    """Held-out combined scores for every record, and the model fitted on all of them
    (the one to put in a policy's ``confidence.combined``)."""
    x = np.array([[r["features"].get(n, 0.0) for n in names] for r in records])
    y = np.array([float(r["correct"]) for r in records])
    out = np.zeros(len(records))
    for h in (0, 1):
        train, test = half != h, half == h
        w, b = fit_logistic(x=x[train], y=y[train])
        out[test] = 1.0 / (1.0 + np.exp(-(x[test] @ w + b)))
    w, b = fit_logistic(x=x, y=y)
    model = {
        "intercept": round(b, 6),
        "weights": {n: round(float(v), 6) for n, v in zip(names, w, strict=True)},
    }
    return out, model


def share_at(*, scores: Array, labels: Array, half: Array, target: float) -> dict[str, float]:
    """Threshold chosen on one half, measured on the other; mean of both directions."""
    shares, accuracies = [], []
    for calib in (0, 1):
        c, t = half == calib, half != calib
        threshold = choose_threshold(scores=scores[c], labels=labels[c], target=target)
        local = scores[t] >= threshold
        shares.append(float(local.mean()))
        wrong = float(((~labels[t].astype(bool)) & local).sum())
        accuracies.append(1.0 - wrong / int(t.sum()))
    return {"share": float(np.mean(shares)), "accuracy": float(np.mean(accuracies))}


def report(
    *, records: Sequence[dict[str, Any]], bootstrap: int
) -> tuple[dict[str, Any], dict[str, Array]]:
    """Every figure of the bench, and each method's score per record."""
    labels = np.array([float(r["correct"]) for r in records])
    half = split_halves(records)
    names = sorted({k for r in records for k in r["features"]})
    combined, model = cross_fit_combined(records=records, half=half, names=names)
    methods: dict[str, Array] = {
        m: np.array([r["scores"][m] for r in records]) for m in [*TOKEN_METHODS, GATED]
    }
    methods[COMBINED] = combined
    rng = np.random.default_rng(SEED)
    types = sorted({r["type"] for r in records})
    type_of = np.array([r["type"] for r in records])
    accuracy = float(labels.mean())
    out: dict[str, Any] = {
        "items": len(records),
        "local_accuracy": accuracy,
        "local_accuracy_ci95": wilson(successes=int(labels.sum()), n=len(labels)),
        "accuracy_by_type": {t: float(labels[type_of == t].mean()) for t in types},
        "degenerate_share": float(np.mean([r["degenerate"] is not None for r in records])),
        "methods": {},
        "combined_model": model,
    }
    for target in (0.90, 0.95):
        key = f"{round(target * 100)}"
        out[f"perfect_share_at_{key}"] = perfect_share(labels=labels, target=target)
        out[f"random_share_at_{key}"] = random_share(accuracy=accuracy, target=target)
    for name, scores in methods.items():
        entry: dict[str, Any] = {
            "auroc": auroc(scores=scores, labels=labels),
            "auroc_ci95": bootstrap_auroc(scores=scores, labels=labels, rounds=bootstrap, rng=rng),
            "auroc_by_type": {},
        }
        for t in types:
            sel = type_of == t
            entry["auroc_by_type"][t] = {
                "auroc": auroc(scores=scores[sel], labels=labels[sel]),
                "ci95": bootstrap_auroc(
                    scores=scores[sel], labels=labels[sel], rounds=bootstrap // 2, rng=rng
                ),
            }
        for target in (0.90, 0.95):
            at = share_at(scores=scores, labels=labels, half=half, target=target)
            entry[f"local_share_at_{round(target * 100)}"] = at["share"]
            entry[f"held_out_accuracy_at_{round(target * 100)}"] = at["accuracy"]
        out["methods"][name] = entry
    return out, methods


def parse_variants(text: str) -> list[tuple[str, str, float | None]]:
    """``name=method@threshold,...`` -> (name, method, threshold); threshold ``auto``
    (None) is chosen on one half for 90% overall accuracy and measured on the other."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rest = part.partition("=")
        method, _, threshold = rest.partition("@")
        if not name or method not in [*TOKEN_METHODS, GATED, COMBINED]:
            raise ValueError(
                f"--variants: {part!r} must be name=method@threshold with a method of "
                f"{', '.join([*TOKEN_METHODS, GATED, COMBINED])}"
            )
        out.append((name, method, None if threshold in ("", "auto") else float(threshold)))
    if len({name for name, _, _ in out}) != len(out):
        raise ValueError("--variants: names must be unique")
    return out


def variant_report(
    *,
    variants: Sequence[tuple[str, str, float | None]],
    scores: dict[str, Array],
    labels: Array,
    half: Array,
) -> dict[str, dict[str, Any]]:
    """Each variant (a method and a threshold, as a policy's variants set them) on the
    same items: the share it keeps local, the accuracy of what it keeps, and the overall
    accuracy with the expert assumed right. A fixed threshold is measured on every item
    (the combined score is cross-fitted, so held out anyway); ``auto`` as ``share_at``."""
    out: dict[str, dict[str, Any]] = {}
    right = labels.astype(bool)
    for name, method, threshold in variants:
        if threshold is None:
            at = share_at(scores=scores[method], labels=labels, half=half, target=0.90)
            local_share, overall = at["share"], at["accuracy"]
            kept_accuracy = 1.0 - (1.0 - overall) / local_share if local_share else None
        else:
            local = scores[method] >= threshold
            local_share = float(local.mean())
            overall = 1.0 - float((~right & local).sum()) / len(labels)
            kept_accuracy = float(right[local].mean()) if local.any() else None
        out[name] = {
            "method": method,
            "threshold": "auto-90" if threshold is None else threshold,
            "local_share": local_share,
            "local_accuracy": kept_accuracy,
            "overall_accuracy": overall,
        }
    return out


def plot(
    *,
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    scores: dict[str, Array],
    path: pathlib.Path,
) -> bool:
    """Coverage-accuracy curves per method against random and perfect; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib is not installed: no plot")
        return False
    labels = np.array([float(r["correct"]) for r in records])
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, method_scores in scores.items():
        x, y = coverage_curve(scores=method_scores, labels=labels)
        ax.plot(x, y, label=f"{name} (AUROC {summary['methods'][name]['auroc']:.2f})")
    acc = float(labels.mean())
    ax.plot([0, 1], [1, acc], "k--", label="random router")
    right = labels.sum() / len(labels)
    ax.plot([0, right, 1], [1, 1, acc], "k:", label="perfect router")
    ax.axhline(0.9, color="grey", lw=0.5)
    ax.set_xlabel("share answered locally")
    ax.set_ylabel("overall accuracy (expert assumed right)")
    ax.set_title(f"{summary['model']}: {len(records)} items, local accuracy {acc:.0%}")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 70 quick items")
    parser.add_argument("--model", default="builtin://smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument(
        "--chat-template",
        type=pathlib.Path,
        help="a Jinja file used as the pool's model.chatTemplate (default: the model's own)",
    )
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        help="a stop sequence the requests send (OpenAI 'stop'; repeatable; \\n for newline)",
    )
    parser.add_argument(
        "--name", help="results file stem (default: from the model name)", default=None
    )
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path(__file__).with_name("results")
    )
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="A/B variants to compare on the same items: name=method@threshold,... "
        "(threshold a number, or auto: chosen on one half for 90%% overall accuracy)",
    )
    parser.add_argument(
        "--answers",
        type=pathlib.Path,
        help="re-score the answers a previous run saved (*.answers.jsonl) instead of generating",
    )
    return parser.parse_args()


def main() -> None:
    """Runs the bench; the last printed line is the summary JSON."""
    args = _parse_args()
    stem = (args.name or args.model.split("://")[-1].replace("/", "_")) + (
        "-quick" if args.quick else ""
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.answers is not None:
        raw = [json.loads(line) for line in args.answers.read_text(encoding="utf-8").splitlines()]
        _log(f"re-scoring {len(raw)} saved answers from {args.answers}")
    else:
        items = load_items(quick=args.quick)
        _log(f"{len(items)} items, model {args.model}, max_tokens {args.max_tokens}")
        raw = answer_items(
            items=items,
            source=args.model,
            threads=args.threads,
            max_tokens=args.max_tokens,
            chat_template=(
                args.chat_template.read_text(encoding="utf-8") if args.chat_template else None
            ),
            stops=[stop.replace("\\n", "\n") for stop in args.stop],
        )
        (args.out / f"routing_quality_{stem}.answers.jsonl").write_text(
            "".join(json.dumps(r, sort_keys=True) + "\n" for r in raw), encoding="utf-8"
        )
    variants = parse_variants(args.variants)
    records = [score_record(r) for r in raw]
    summary, scores = report(records=records, bootstrap=args.bootstrap)
    summary["variants"] = variant_report(
        variants=variants,
        scores=scores,
        labels=np.array([float(r["correct"]) for r in records]),
        half=split_halves(records),
    )
    summary["targets"] = target_report(
        scores=scores,
        labels=np.array([float(r["correct"]) for r in records]),
        half=split_halves(records),
    )
    summary["model"] = args.model
    summary["chat_template"] = str(args.chat_template) if args.chat_template else None
    summary["stops"] = args.stop
    png = args.out / f"routing_quality_{stem}.png"
    plotted = plot(records=records, summary=summary, scores=scores, path=png)
    (args.out / f"routing_quality_{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary=summary, png=png if plotted else None)


TARGETS = (0.2, 0.3, 0.4, 0.5)
"""Declared local error rates (``confidence.target.maxLocalErrorRate``) the bench tries."""
TARGET_DELTA = 0.1
"""1 - confidenceLevel: the API default (0.9)."""


def target_report(
    *, scores: dict[str, Array], labels: Array, half: Array
) -> dict[str, dict[str, Any]]:
    """A declared quality target as the gateway holds it, on real answers: the
    threshold chosen by the gateway's own Learn-then-Test procedure
    (``calibration.choose_threshold``) on one half's labels (every item labelled, as
    with ``shadowFraction: 1``), measured on the other half (both ways round, mean):
    the share kept local and its true error rate. The guarantee says that error stays
    under the target with probability >= 0.9."""
    out: dict[str, dict[str, Any]] = {}
    for method in (DEFAULT_METHOD, COMBINED):
        for target in TARGETS:
            shares, errors = [], []
            for calib in (0, 1):
                c, t = half == calib, half != calib
                right = labels[c].astype(bool).tolist()
                pairs = list(zip(scores[method][c].tolist(), right, strict=True))
                learned = calibration.choose_threshold(
                    labels=pairs, max_error=target, delta=TARGET_DELTA
                )
                local = scores[method][t] >= learned.threshold
                shares.append(float(local.mean()))
                if local.any():
                    errors.append(1.0 - float(labels[t][local].mean()))
            out[f"{method}@{target}"] = {
                "local_share": float(np.mean(shares)),
                "local_error": float(np.mean(errors)) if errors else None,
            }
    return out


def _print_summary(*, summary: dict[str, Any], png: pathlib.Path | None) -> None:
    for name, entry in summary["methods"].items():
        _log(
            f"{name:32s} AUROC {entry['auroc']:.3f} {entry['auroc_ci95']}  "
            f"local@90 {entry['local_share_at_90']:.1%}  local@95 {entry['local_share_at_95']:.1%}"
        )
    for name, v in summary["variants"].items():
        _log(
            f"variant {name:24s} {v['method']}@{v['threshold']}: local {v['local_share']:.1%}, "
            f"overall accuracy {v['overall_accuracy']:.1%}"
        )
    for name, v in summary["targets"].items():
        error = "-" if v["local_error"] is None else f"{v['local_error']:.1%}"
        _log(f"target {name:28s} local {v['local_share']:.1%}, true local error {error}")
    default = summary["methods"][DEFAULT_METHOD]
    best = summary["methods"][COMBINED]
    print(
        json.dumps(
            {
                "model": summary["model"],
                "items": summary["items"],
                "local_accuracy": round(summary["local_accuracy"], 4),
                "local_accuracy_ci95": [round(v, 4) for v in summary["local_accuracy_ci95"]],
                "auroc": round(default["auroc"], 4),
                "local_share_at_90": round(default["local_share_at_90"], 4),
                "local_share_at_95": round(default["local_share_at_95"], 4),
                "perfect_share_at_90": round(summary["perfect_share_at_90"], 4),
                "random_share_at_90": round(summary["random_share_at_90"], 4),
                "combined_auroc": round(best["auroc"], 4),
                "combined_local_share_at_90": round(best["local_share_at_90"], 4),
                "degenerate_share": round(summary["degenerate_share"], 4),
                "variants": {
                    name: {
                        "local_share": round(v["local_share"], 4),
                        "overall_accuracy": round(v["overall_accuracy"], 4),
                    }
                    for name, v in summary["variants"].items()
                },
                "targets": {
                    name: {k: None if x is None else round(x, 4) for k, x in v.items()}
                    for name, v in summary["targets"].items()
                },
                "plot": str(png) if png else None,
                "baseline": "random_share_at_90 and perfect_share_at_90 (same items, same run)",
            }
        )
    )


if __name__ == "__main__":
    main()
