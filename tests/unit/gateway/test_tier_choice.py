"""Local tiers: a request goes to the first tier whose maxPromptTokens takes its
estimated prompt; a prompt longer than every tier takes has no local pool."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kascade.gateway import config, runtime
from kascade.gateway.route import request, tiers

POOLS = {
    name: {"endpoint": f"http://{name}:8000", "model": name} for name in ("small", "mid", "big")
}


def _policy(**policy: Any) -> runtime.PolicyRuntime:
    cfg = config.parse_config({"pools": POOLS, "policies": {"p": policy}})
    return runtime.build(config=cfg, previous=None, experts={}).policies["p"]


def _estimate(words: int) -> int:
    body = {"model": "p", "messages": [{"role": "user", "content": "word " * words}]}
    return request.parse(json.dumps(body).encode()).prompt_estimate


def _chosen(policy: runtime.PolicyRuntime, *, words: int) -> str | None:
    tier = tiers.first_fitting(policy.tiers, prompt_tokens=_estimate(words))
    return None if tier is None else tier.name


LIMITED = [
    {"pool": "small", "maxPromptTokens": 50},
    {"pool": "mid", "maxPromptTokens": 400},
    {"pool": "big", "maxPromptTokens": 1000},
]


def test_each_prompt_goes_to_the_first_tier_that_takes_it() -> None:
    policy = _policy(tiers=LIMITED)
    # The estimates sit clearly on one side of each limit.
    assert _estimate(10) < 50 < _estimate(100) < 400 < _estimate(500) < 1000 < _estimate(2000)
    assert _chosen(policy, words=10) == "small"
    assert _chosen(policy, words=100) == "mid"
    assert _chosen(policy, words=500) == "big"
    assert _chosen(policy, words=2000) is None
    assert tiers.largest_limit(policy.tiers) == 1000


def test_a_limit_takes_a_prompt_of_exactly_its_length() -> None:
    policy = _policy(tiers=LIMITED)
    assert tiers.first_fitting(policy.tiers, prompt_tokens=50) is policy.tiers[0]
    assert tiers.first_fitting(policy.tiers, prompt_tokens=51) is policy.tiers[1]
    assert tiers.first_fitting(policy.tiers, prompt_tokens=1001) is None


def test_an_unlimited_tier_takes_every_prompt_longer_than_the_ones_before() -> None:
    policy = _policy(tiers=[{"pool": "small", "maxPromptTokens": 50}, {"pool": "big"}])
    assert _chosen(policy, words=10) == "small"
    assert _chosen(policy, words=5000) == "big"
    assert tiers.largest_limit(policy.tiers) is None


def test_a_policy_with_local_pool_has_one_tier_without_a_limit() -> None:
    policy = _policy(localPool="mid")
    assert [(t.name, t.max_prompt_tokens) for t in policy.tiers] == [("mid", None)]
    assert policy.tiers[0].pool.endpoint == "http://mid:8000"
    assert _chosen(policy, words=5000) == "mid"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({}, "set exactly one of localPool or tiers"),
        ({"localPool": "small", "tiers": LIMITED}, "set exactly one of localPool or tiers"),
        ({"tiers": []}, "policies.p.tiers"),
        (
            {"tiers": [{"pool": "small"}, {"pool": "huge"}]},
            "policies.p.tiers[1].pool: unknown pool 'huge'",
        ),
        ({"tiers": [{"pool": "small", "maxPromptTokens": 0}]}, "maxPromptTokens"),
    ],
)
def test_invalid_tiers_are_refused_naming_the_field(policy: dict[str, Any], expected: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.parse_config({"pools": POOLS, "policies": {"p": policy}})
    assert expected in str(info.value)
