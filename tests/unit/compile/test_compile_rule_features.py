"""Rules on tools and response formats compile from the RoutingPolicy into the gateway
config (the API's hasTools/responseFormats become the gateway's when-conditions)."""

from __future__ import annotations

from pathlib import Path

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.compile import resources
from kascade.local import objects

COMPLETE = Path(__file__).resolve().parents[3] / "examples" / "complete"


def test_has_tools_and_response_formats_compile() -> None:
    loaded = objects.load(COMPLETE)
    [policy] = [p for p in loaded.policies if p.metadata.name == "assistant"]
    data = policy.model_dump(by_alias=True, exclude_none=True)
    data["spec"]["rules"] = [
        {"name": "tools", "when": {"hasTools": True}, "action": "expert"},
        {"name": "json", "when": {"responseFormats": ["json_schema"]}, "action": "local"},
    ]
    changed = v1alpha1.RoutingPolicy.model_validate(data)
    compiled = compile_gateway.gateway_config(
        namespace="team-a",
        pools=loaded.pools,
        experts=loaded.experts,
        policies=[changed],
        pool_endpoint=lambda p: resources.serve_endpoint(pool=p.metadata.name, namespace="team-a"),
        credentials="file",
    )
    rules = compiled.config.policies["assistant"].rules
    assert [(r.name, r.when.has_tools, r.when.response_formats) for r in rules] == [
        ("tools", True, None),
        ("json", None, ["json_schema"]),
    ]
