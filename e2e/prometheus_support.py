"""The real Prometheus and promtool (built by e2e/cluster/build), the chart's rules and
dashboard as Prometheus sees them, and a small client for Prometheus's HTTP API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "kascade"
DASHBOARD = CHART / "dashboards" / "kascade-overview.json"


def cached_binary(name: str) -> str:
    """A binary from the e2e/cluster/build cache (prometheus, promtool, helm)."""
    cache = Path(os.environ.get("KASCADE_CACHE", Path.home() / ".cache" / "kascade"))
    binary = cache / "bin" / "current" / name
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} missing: run e2e/cluster/build")
    return str(binary)


def chart_rules(*set_values: str) -> dict[str, Any]:
    """The ``spec`` of the chart's PrometheusRule, rendered by the real helm with the
    rules switched on: a Prometheus rule file (``groups: [...]``)."""
    args = [
        cached_binary("helm"),
        "template",
        "kascade",
        str(CHART),
        "--namespace",
        "kascade-system",
    ]
    args += ["--set", "monitoring.rules.enabled=true"]
    for value in set_values:
        args += ["--set", value]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    rules = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "PrometheusRule"]
    assert len(rules) == 1, f"expected one PrometheusRule, rendered {len(rules)}"
    spec: dict[str, Any] = rules[0]["spec"]
    return spec


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str


# Dashboard variables as Grafana sends them with "All" selected (allValue ".*").
VARIABLES = {"$namespace": ".*", "$policy": ".*", "$expert": ".*"}


def target_expr(panel: dict[str, Any], target: dict[str, Any], *, rate_interval: str) -> str:
    """A panel target's query with the dashboard's variables substituted."""
    expr: str = target["expr"].replace("$__rate_interval", rate_interval)
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    leftover = re.findall(r"\$\w+", expr)
    assert not leftover, f"panel {panel['title']!r}: unknown variables {leftover}"
    return expr


def panel_queries(*, rate_interval: str, dashboard: Path = DASHBOARD) -> list[PanelQuery]:
    """Every panel target of the dashboard, with its variables substituted."""
    doc = json.loads(dashboard.read_text())
    return [
        PanelQuery(
            panel=panel["title"],
            ref=target["refId"],
            expr=target_expr(panel, target, rate_interval=rate_interval),
        )
        for panel in doc["panels"]
        for target in panel.get("targets", [])
    ]


class PrometheusAPI:
    """GET requests to Prometheus's HTTP API; errors raise with Prometheus's message."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(
        self, expr: str, *, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        data = self._get(
            "/api/v1/query_range", query=expr, start=str(start), end=str(end), step=str(step)
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        result: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return result

    def rule_groups(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return result

    def target_health(self) -> dict[str, str]:
        targets = self._get("/api/v1/targets")["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}


def active_alerts(api: PrometheusAPI, *, state: str | None = None) -> Iterator[dict[str, str]]:
    """Labels of the pending/firing alerts (only ``state`` ones when given)."""
    for alert in api.alerts():
        if state is None or alert["state"] == state:
            yield alert["labels"]
