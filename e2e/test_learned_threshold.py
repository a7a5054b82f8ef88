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
"""

from __future__ import annotations

import json
import random
import textwrap
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
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
    return "chat" in config.get("policies", {})


def _ask(url: str, *, user: str, score: float, right: bool) -> str:
    """One request; returns the arm that served it."""
    content = f"The answer is {42 if right else 7}. [[confidence={score}]]"
    body = {"model": "chat", "user": user, "max_tokens": 10}
    body["messages"] = [{"role": "user", "content": content}]  # type: ignore[assignment]
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as reply:
        assert reply.status == 200
        return str(reply.headers["x-kascade-variant"])


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


def _learned(kubectl: KubectlRunner, namespace: str) -> dict[str, dict[str, Any]] | None:
    """Each arm's all-traffic entry of status.quality.learned, once both have a threshold."""
    got = kubectl("get", "routingpolicy", "chat", "-n", namespace, "-o", "json")
    quality = (json.loads(got.stdout).get("status") or {}).get("quality") or {}
    entries = {
        item.get("variant"): item
        for item in quality.get("learned") or []
        if item.get("task") == "*" and item.get("threshold") is not None
    }
    return entries if set(entries) == {"steady", "drifty"} else None


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
            lambda: _learned(kubectl, namespace),
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
    finally:
        gateway.stop()
        operator.stop()
        print(f"---- operator log ----\n{operator.log()[-3000:]}")
