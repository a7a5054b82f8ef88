"""A RoutingPolicy's tiers compile, in order and with their prompt limits, into the
gateway config, and every tier's pool is served (not only the first one's)."""

from __future__ import annotations

from pathlib import Path

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.compile import resources
from kascade.gateway import config as gw
from kascade.local import objects

COMPLETE = Path(__file__).resolve().parents[3] / "examples" / "complete"


def test_tiers_compile_in_order_with_their_limits() -> None:
    loaded = objects.load(COMPLETE)
    [pool] = loaded.pools
    big_data = pool.model_dump(by_alias=True, exclude_none=True)
    big_data["metadata"]["name"] = "big"
    big = v1alpha1.LocalModelPool.model_validate(big_data)
    [policy] = [p for p in loaded.policies if p.metadata.name == "assistant"]
    data = policy.model_dump(by_alias=True, exclude_none=True)
    del data["spec"]["localPool"]
    data["spec"]["tiers"] = [
        {"name": "small", "pool": pool.metadata.name, "maxPromptTokens": 2000},
        {"name": "large", "pool": "big"},
    ]
    data["spec"]["rules"] = [{"name": "code", "when": {"taskLabels": ["code"]}, "action": "tier",
                              "tier": "small"}]  # fmt: skip
    compiled = compile_gateway.gateway_config(
        namespace="team-a",
        pools=[pool, big],
        experts=loaded.experts,
        policies=[v1alpha1.RoutingPolicy.model_validate(data)],
        pool_endpoint=lambda p: resources.serve_endpoint(pool=p.metadata.name, namespace="team-a"),
        credentials="file",
    )
    assert compiled.invalid == {}
    assert compiled.missing == {}
    served = compiled.config.policies["assistant"]
    assert served.local_pool is None
    assert served.tiers == [
        gw.Tier(pool=pool.metadata.name, max_prompt_tokens=2000),
        gw.Tier(pool="big", max_prompt_tokens=None),
    ]
    assert [r.target for r in served.rules] == [pool.metadata.name]
    # "big" is named by no rule: its tier alone must bring it into the config.
    assert set(compiled.config.pools) == {pool.metadata.name, "big"}
