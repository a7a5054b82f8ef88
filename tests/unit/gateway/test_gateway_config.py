"""The typed gateway config: camelCase keys, cross-references, errors naming fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kascade.gateway import config

FULL: dict[str, Any] = {
    "version": 1,
    "namespace": "team-a",
    "ledger": {"url": "redis://redis:6379/0", "checkpointPath": None},
    "auth": {"apiKeysEnv": "KASCADE_KEYS"},
    "limits": {"maxBodyBytes": 65536},
    "pools": {"small": {"endpoint": "http://pool:8000", "model": "smollm2", "timeoutSeconds": 30}},
    "experts": {
        "gpt": {
            "provider": "azure-openai",
            "endpoint": "https://x.openai.azure.com",
            "model": "gpt-4o",
            "apiVersion": "2024-06-01",
            "credentials": {"file": "/var/run/secrets/gpt/key"},
            "pricing": {"inputPerMillionTokens": 2.5, "outputPerMillionTokens": 10},
            "budget": {"limitUSD": 50, "window": "calendar-month", "onExhausted": "reject"},
            "rateLimits": {"requestsPerMinute": 60, "tokensPerMinute": 100000, "maxConcurrency": 8},
            "timeouts": {"connectSeconds": 2, "requestSeconds": 30},
            "retries": {"maxAttempts": 3, "initialBackoffMillis": 100, "maxBackoffMillis": 2000},
            "circuitBreaker": {"failureThreshold": 5, "openSeconds": 30, "halfOpenMaxRequests": 2},
            "maxContextTokens": 128000,
            "allowPersonalData": False,
        }
    },
    "policies": {
        "default": {
            "generation": 7,
            "localPool": "small",
            "experts": ["gpt"],
            "selection": "cheapest",
            "confidence": {
                "method": "min-token-prob",
                "threshold": 0.6,
                "dynamic": {"minThreshold": 0.4, "maxThreshold": 0.8, "budgetPressure": 1.5},
            },
            "rules": [
                {"when": {"minPromptTokens": 4001}, "action": "expert", "target": "gpt"},
                {
                    "when": {"header": {"name": "x-tier", "values": ["big"]}},
                    "action": "tier",
                    "target": "small",
                },
            ],
            "overflow": "wait",
            "overflowWaitMillis": 500,
            "privacy": {
                "detectors": ["email", "iban"],
                "customPatterns": [{"name": "emp", "regex": "E\\d+"}],
                "action": "redact",
            },
            "cache": {
                "exact": {"ttlSeconds": 60},
                "semantic": {"threshold": 0.9, "ttlSeconds": 60},
            },
            "fallback": {"whenExpertsUnavailable": "error", "message": "busy"},
            "maxCostPerRequestUSD": 0.05,
            "audit": {"enabled": True},
        }
    },
}


def test_full_config_round_trips_with_camel_case_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(FULL))
    loaded = config.load_config(path)
    assert loaded.experts["gpt"].budget.limit_usd == 50
    assert loaded.policies["default"].max_cost_per_request_usd == 0.05
    dumped = loaded.model_dump(by_alias=True, exclude_defaults=False)
    assert dumped["experts"]["gpt"]["budget"]["limitUSD"] == 50
    assert dumped["policies"]["default"]["maxCostPerRequestUSD"] == 0.05
    assert config.parse_config(dumped) == loaded


def test_yaml_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "pools:\n  p: {endpoint: 'http://p', model: m}\npolicies:\n  d: {localPool: p}\n"
    )
    assert config.load_config(path).policies["d"].local_pool == "p"


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.parse_config(data)
    return str(info.value)


def _with(path: list[str], value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(FULL))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ["policies", "default", "confidence", "threshold"],
            1.5,
            "policies.default.confidence.threshold",
        ),
        (["experts", "gpt", "budget", "window"], "weekly", "experts.gpt.budget.window"),
        (["experts", "gpt", "provider"], "cohere", "experts.gpt.provider"),
        (["experts", "gpt", "pricing", "inputPerMillionTokens"], -1, "inputPerMillionTokens"),
        (
            ["policies", "default", "localPool"],
            "nope",
            "policies.default.localPool: unknown pool 'nope'",
        ),
        (["policies", "default", "experts"], ["ghost"], "unknown expert 'ghost'"),
        (
            ["experts", "gpt", "apiVersion"],
            None,
            "apiVersion is required for provider azure-openai",
        ),
        (
            ["experts", "gpt", "credentials"],
            {"env": "A", "file": "/b"},
            "exactly one of env or file",
        ),
        (
            ["policies", "default", "surprise"],
            1,
            "policies.default.surprise: Extra inputs are not permitted",
        ),
        (
            ["policies", "default", "confidence", "dynamic", "minThreshold"],
            0.9,
            "minThreshold must be <= maxThreshold",
        ),
        (
            ["policies", "default", "rules"],
            [{"when": {}, "action": "tier", "target": "huge"}],
            "rules[0].target",
        ),
    ],
)
def test_errors_name_the_field(path: list[str], value: Any, expected: str) -> None:
    assert expected in _error(_with(path, value))


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(config.ConfigError, match="top level must be a mapping"):
        config.load_config(bad)


def test_config_never_holds_a_secret_value() -> None:
    # Credentials can only name an env var or a file.
    assert set(config.Credentials.model_fields) == {"env", "file"}
