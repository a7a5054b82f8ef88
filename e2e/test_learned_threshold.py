"""A declared quality target end to end: the operator (real API server) renders a policy
with ``confidence.target`` and two A/B variants; the real gateway process runs that
config against a scripted local pool and a simulated expert; shadow calls label the
local answers; each arm learns its own threshold; and the operator mirrors the learned
thresholds into ``RoutingPolicy.status.quality`` with a ``LearnedThreshold`` Event.

The scripted pool (a sim-expert acting as a pool) always answers "42" with the
confidence the prompt asks for (``[[confidence=x]]``); the expert echoes the prompt, so
a label is right exactly when the prompt's answer is 42. Arm ``steady`` gets reliable
high scores; arm ``drifty`` gets answers scoring in [0.8, 0.9) that are right only half
of the time, so its threshold must rise above them while ``steady``'s stays below.

A second policy, ``fitted`` (method ``combined`` without weights, ``target.fitScore``),
has the pool send token signals in which only the least confident token tells right
from wrong: the gateway fits its combined score from the labels, learns a threshold
under it, and the policy's status shows how many labels the score rests on.
"""

from __future__ import annotations

import json
import random
import textwrap
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from tests import quality_support
from tests.testkit import KubectlRunner, free_port

from e2e import dataplane
from e2e import operator_support as ops

pytestmark = pytest.mark.cluster

TARGET = {
    "maxLocalErrorRate": 0.15,
    "confidenceLevel": 0.9,
    "shadowFraction": 1.0,
    "maxShadowBudgetShare": 1.0,
    "windowLabels": 200,
    "minLabels": 50,
}
PER_ARM = 160
"""Requests per arm: enough labels for the reliable scores to clear the bound."""


def _manifests(*, expert_port: int) -> str:
    pricing = {"inputPerMillionTokens": 1, "outputPerMillionTokens": 2}
    expert = dataplane.sim_expert_manifest(name="judge", port=expert_port, pricing=pricing)
    return f"{dataplane.SMOLLM_POOL}---\n{expert}---\n" + textwrap.dedent(
        f"""
        apiVersion: kascade.io/v1alpha1
        kind: RoutingPolicy
        metadata: {{name: chat}}
        spec:
          localPool: tiny
          allowAnonymous: true
          experts: [judge]
          privacy: {{action: allow}}
          confidence:
            threshold: 0.7
            target: {json.dumps(TARGET)}
          variants:
            - {{name: steady, weight: 1}}
            - {{name: drifty, weight: 1, overrides: {{confidence: {{threshold: 0.6}}}}}}
        ---
        apiVersion: kascade.io/v1alpha1
        kind: RoutingPolicy
        metadata: {{name: fitted}}
        spec:
          localPool: tiny
          allowAnonymous: true
          experts: [judge]
          privacy: {{action: allow}}
          confidence:
            method: combined
            threshold: 0.0
            target: {json.dumps({**TARGET, "windowLabels": 5000, "fitScore": True})}
        """
    )


@pytest.fixture
def sims() -> Iterator[tuple[int, int]]:
    with dataplane.running_sims(["--confidence", "0.5", "--answer", "42"], []) as ports:
        yield ports[0], ports[1]


def _synced(gateway: dataplane.GatewayFromConfigMap) -> bool:
    if not gateway.sync():
        return False
    config = json.loads(gateway.config_path.read_text())
    return {"chat", "fitted"} <= set(config.get("policies", {}))


def _ask(url: str, *, user: str, score: float | None, right: bool, model: str = "chat") -> str:
    """One request; returns the arm that served it ("" without variants). ``score``:
    the confidence the scripted pool answers with (None: its configured signals')."""
    mark = "" if score is None else f" [[confidence={score}]]"
    content = f"The answer is {42 if right else 7}.{mark}"
    body: dict[str, Any] = {"model": model, "user": user, "max_tokens": 10}
    body["messages"] = [{"role": "user", "content": content}]
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as reply:
        assert reply.status == 200
        return str(reply.headers.get("x-kascade-variant", ""))


def _item(rng: random.Random, *, arm: str) -> tuple[float, bool]:
    """(score, right): low scores are right 20% of the time; high ones 99%, except that
    arm drifty's scores in [0.8, 0.9) are right only half of the time."""
    if rng.random() < 0.5:
        return round(rng.uniform(0.0, 0.5), 3), rng.random() < 0.2
    score = round(rng.uniform(0.8, 1.0), 3)
    if arm == "drifty" and score < 0.9:
        return score, rng.random() < 0.5
    return score, rng.random() < 0.99


def _callers(url: str) -> dict[str, str]:
    """Two callers (``user`` values), one in each arm; assignment is sticky per user."""
    found: dict[str, str] = {}
    for i in range(64):
        arm = _ask(url, user=f"caller-{i}", score=0.95, right=True)
        found.setdefault(arm, f"caller-{i}")
        if len(found) == 2:
            return found
    raise AssertionError(f"64 callers all landed in {sorted(found)}")


def _learned(
    kubectl: KubectlRunner, namespace: str, *, policy: str = "chat"
) -> dict[str | None, dict[str, Any]]:
    """Each arm's all-traffic entry of status.quality.learned that has a threshold
    (keyed by variant; None for a policy without variants)."""
    got = kubectl("get", "routingpolicy", policy, "-n", namespace, "-o", "json")
    quality = (json.loads(got.stdout).get("status") or {}).get("quality") or {}
    return {
        item.get("variant"): item
        for item in quality.get("learned") or []
        if item.get("task") == "*" and item.get("threshold") is not None
    }


def _events(kubectl: KubectlRunner, namespace: str) -> list[str]:
    got = kubectl(
        "get", "events", "-n", namespace, "--field-selector", "reason=LearnedThreshold",
        "-o", "json",
    )  # fmt: skip
    return [e["message"] for e in json.loads(got.stdout)["items"]]


def test_each_variant_learns_its_threshold_and_the_policy_status_shows_it(
    kubeconfig: str, kubectl: KubectlRunner, namespace: str, sims: tuple[int, int]
) -> None:
    pool_port, expert_port = sims
    kubectl("apply", "--server-side", "-f", str(ops.REPO / "crds"))
    gw_port = free_port()
    operator = ops.OperatorProcess(
        kubeconfig,
        resync_seconds=2,
        env={"KASCADE_GATEWAY_URL_TEMPLATE": f"http://127.0.0.1:{gw_port}"},
    )
    gateway = dataplane.GatewayFromConfigMap(
        kubectl, namespace=namespace, port=gw_port, serve_base="",
        pools_at=f"http://127.0.0.1:{pool_port}",
    )  # fmt: skip
    try:
        operator.start()
        kubectl("apply", "-n", namespace, "-f", "-", input=_manifests(expert_port=expert_port))
        ops.wait_for("the gateway ConfigMap with the policy", lambda: _synced(gateway))
        gateway.start()
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        callers = _callers(url)
        rng = random.Random(5)
        for arm, user in sorted(callers.items()):
            for _ in range(PER_ARM):
                score, right = _item(rng, arm=arm)
                assert _ask(url, user=user, score=score, right=right) == arm  # sticky
        learned = ops.wait_for(
            "both arms' learned thresholds in RoutingPolicy status",
            lambda: (
                (found := _learned(kubectl, namespace)).keys() == {"steady", "drifty"} and found
            ),
            timeout=120,
        )
        # The reliable arm keeps its high scores local; the drifty arm's [0.8, 0.9)
        # answers (half wrong) are above its error budget, so its threshold clears them.
        assert learned["steady"]["threshold"] <= 0.8, learned
        assert learned["drifty"]["threshold"] >= 0.85, learned
        for entry in learned.values():
            assert entry["labels"] >= TARGET["minLabels"]
            assert entry["localErrorUpperBound"] <= TARGET["maxLocalErrorRate"]
        messages = ops.wait_for(
            "LearnedThreshold Events for both arms",
            lambda: (
                (m := _events(kubectl, namespace))
                and all(any(f"variant {arm}" in x for x in m) for arm in callers)
                and m
            ),
        )
        assert all("caller-" not in m for m in messages)  # no caller identity in Events
        _check_fitted_score(kubectl, namespace, url=url, gw_port=gw_port, pool_port=pool_port)
    finally:
        gateway.stop()
        operator.stop()
        print(f"---- operator log ----\n{operator.log()[-3000:]}")


def _gateway_arm(gw_port: int, policy: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw_port}/v1/kascade/status") as reply:
        entry: dict[str, Any] = json.loads(reply.read())["quality"].get(policy) or {}
        return entry


def _fitted_and_learned(entry: dict[str, Any]) -> bool:
    learned = (entry.get("tasks") or {}).get("*") or {}
    fitted = (entry.get("fittedScore") or {}).get("fittedOn")
    return bool(fitted) and (learned.get("threshold") or 1.0) < 1.0


def _check_fitted_score(
    kubectl: KubectlRunner, namespace: str, *, url: str, gw_port: int, pool_port: int
) -> None:
    """Policy ``fitted`` (method combined, no weights, ``fitScore``): the gateway fits
    the score from the labels, learns a threshold under it, and the operator mirrors
    how many labels the score rests on into RoutingPolicy status."""
    rng = random.Random(9)
    sent = 0
    while not _fitted_and_learned(_gateway_arm(gw_port, "fitted")):
        assert sent < 2000, "no fitted score with a learned threshold after 2000 requests"
        for _ in range(50):
            signals, right = quality_support.scripted_signals(rng)
            _sim_config(pool_port, confidence_signals=signals)
            _ask(url, user="fit", score=None, right=right, model="fitted")
        sent += 50
    entry = ops.wait_for(
        "the fitted score's labels in RoutingPolicy status",
        lambda: (
            (_learned(kubectl, namespace, policy="fitted").get(None) or {}).get("scoreLabels")
            and _learned(kubectl, namespace, policy="fitted")[None]
        ),
        timeout=120,
    )
    assert entry["threshold"] < 1.0
    assert entry["scoreLabels"] >= TARGET["minLabels"]
    assert entry["localErrorUpperBound"] <= TARGET["maxLocalErrorRate"]


def _sim_config(port: int, **settings: Any) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/_sim/config",
        data=json.dumps(settings).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as reply:
        assert reply.status == 200
