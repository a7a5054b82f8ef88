"""Random variations of valid objects, for checking that the models and the API server
accept and reject exactly the same ones.

Each variation changes a few fields of a valid object to values near the edges of what is
accepted (bounds, formats, wrong types, cross-field combinations). Seeded, so a failure
can be reproduced with the same seed.
"""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

QUANTITIES: list[Any] = [
    "1",
    "500m",
    "0",
    "0.5",
    "1.5Gi",
    "1e3",
    2,
    0,
    "-1",
    ".5",
    "1.",
    "1Ki",
    "m",
    "0.0",
    "00",
    "1.0Gi",
    "100u",
    1.5,
]
URLS = [
    "https://a.example/v1",
    "http://localhost:8080/v1",
    "http://sim.ns.svc/v1",
    "http://sim.ns.svc.cluster.local:80",
    "http://a.example",
    "http://127.0.0.1",
    "https://a.example/v1?x=1",
    "ftp://a",
    "http://LOCALHOST",
    "http://x.svc.cluster.local.evil.example",
]
FRACTIONS: list[Any] = [-0.1, 0, 0.3, 0.5, 0.8, 1, 1.1, "0.5", None]
INTS: list[Any] = [-1, 0, 1, 2, 3, 5, None, "2"]
_ABSENT = None


class Mutator:
    """Builds random variations; ``chance`` is how often each candidate field changes."""

    def __init__(self, *, cases: ModuleType, seed: int, chance: float = 0.2) -> None:
        # ``cases`` is tests/unit/api/api_invalid_cases.py, the source of valid objects.
        self.cases = cases
        self.rng = random.Random(seed)
        self.chance = chance

    def maybe(self, target: dict[str, Any], key: str, choices: list[Any]) -> None:
        if self.rng.random() >= self.chance:
            return
        value = self.rng.choice(choices)
        if value is _ABSENT:
            target.pop(key, None)
        else:
            target[key] = value

    def variation(self) -> dict[str, Any]:
        """One variation of a valid LocalModelPool, CloudExpert or RoutingPolicy."""
        return self.rng.choice([self._pool, self._expert, self._policy])()

    def _pool(self) -> dict[str, Any]:
        body = self.cases.pool()
        spec = body["spec"]
        spec["replicas"], spec["resources"], spec["autoscaling"] = {}, {}, {}
        for key in ("min", "max", "initial"):
            self.maybe(spec["replicas"], key, INTS)
        self.maybe(spec["resources"], "cpu", [*QUANTITIES, _ABSENT])
        self.maybe(spec["resources"], "memory", [*QUANTITIES, _ABSENT])
        self.maybe(spec["resources"], "gpu", INTS)
        self.maybe(spec["model"], "runtime", ["llama-cpp", "vllm", "tgi"])
        self.maybe(
            spec["model"],
            "source",
            [
                "builtin://a",
                "file:///x",
                "file://x",
                "https://h/m.gguf",
                "hf://o/r/f",
                "hf://o/r",
                "builtin://A",
                "https://h",
            ],
        )
        self.maybe(spec["model"], "sha256", ["a" * 64, "A" * 64, _ABSENT])
        self.maybe(spec["autoscaling"], "targetUtilization", FRACTIONS)
        self.maybe(spec["autoscaling"], "metricsSource", ["gateway", "prometheus", _ABSENT])
        self.maybe(spec["autoscaling"], "prometheusUrl", ["http://p:9090", _ABSENT])
        self.maybe(spec["autoscaling"], "enabled", [True, "true", 1])
        self.maybe(spec, "costPerReplicaHour", FRACTIONS)
        self.maybe(body["metadata"], "name", ["pool", "p" * 40, "p" * 41, "1pool", "pool-", "a.b"])
        return body

    def _expert(self) -> dict[str, Any]:
        body = self.cases.expert()
        spec = body["spec"]
        spec["timeouts"] = {}
        self.maybe(spec, "provider", ["openai", "anthropic", "azure-openai", "openai-compatible"])
        self.maybe(spec, "endpoint", [*URLS, _ABSENT])
        self.maybe(spec, "allowInsecureHttp", [True, False, _ABSENT, "true", 1])
        self.maybe(spec, "credentials", [_ABSENT])
        self.maybe(spec["pricing"], "inputPerMillionTokens", FRACTIONS)
        self.maybe(spec["budget"], "limitUSD", [*FRACTIONS, 100])
        self.maybe(spec["timeouts"], "connectSeconds", [0, 1, 5, 30, 61, _ABSENT])
        self.maybe(spec["timeouts"], "requestSeconds", [0.5, 10, 60, _ABSENT])
        self.maybe(spec["timeouts"], "firstTokenSeconds", [1, 100, _ABSENT])
        self.maybe(
            spec,
            "azure",
            [
                {"apiVersion": "2024-10-21"},
                {"apiVersion": "2024-10-21-preview"},
                {"apiVersion": "v1"},
                _ABSENT,
            ],
        )
        self.maybe(
            spec["budget"],
            "timeZone",
            ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "utc", "Etc/GMT+5"],
        )
        self.maybe(spec, "capabilities", [["chat"], ["chat", "chat"], [], ["x"]])
        return body

    def _policy(self) -> dict[str, Any]:
        body = self.cases.policy()
        spec = body["spec"]
        spec["confidence"] = {}
        self.maybe(spec, "localPool", ["pool", "Pool", _ABSENT, "p" * 41])
        self.maybe(
            spec,
            "tiers",
            [
                [{"name": "small", "pool": "pool"}],
                [{"name": "small", "pool": "pool"}, {"name": "small", "pool": "x"}],
                [],
                _ABSENT,
            ],
        )
        self.maybe(spec, "experts", [["expert"], [], ["a", "b"], ["a", "a"], _ABSENT])
        self.maybe(spec["confidence"], "threshold", FRACTIONS)
        if self.rng.random() < self.chance:
            dynamic: dict[str, Any] = {}
            self.maybe(dynamic, "minThreshold", FRACTIONS)
            self.maybe(dynamic, "maxThreshold", FRACTIONS)
            spec["confidence"]["dynamic"] = dynamic
        rules = []
        for _ in range(self.rng.choice([0, 1, 2])):
            rule: dict[str, Any] = {
                "name": self.rng.choice(["r", "s", "R"]),
                "when": {"minPromptTokens": 10},
                "action": self.rng.choice(["local", "expert", "tier"]),
            }
            self.maybe(rule["when"], "minPromptTokens", INTS)
            self.maybe(rule["when"], "maxPromptTokens", INTS)
            self.maybe(rule, "expert", ["expert", "a"])
            self.maybe(rule, "tier", ["small", "big"])
            rules.append(rule)
        if rules:
            spec["rules"] = rules
        return body
