"""The dashboard ConfigMap and the PrometheusRule: rendered only when switched on, with
the values applied, and every name a panel or rule uses is a metric Kascade exports or
a recording rule the chart defines. (e2e/test_observability.py runs them on a real
Prometheus.)"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from chart_render import CHART, KUBE_VERSION, REPO, HelmRunner, Manifest

from kascade.controller import pool_metrics
from kascade.gateway.observe import metrics as metrics_mod

ON = ["--set", "monitoring.dashboards.enabled=true", "--set", "monitoring.rules.enabled=true"]
ALERTS = {
    "KascadeBudgetExhaustionProjected",
    "KascadeCircuitOpen",
    "KascadeEscalationRateJump",
    "KascadeLowConfidenceShareJump",
    "KascadePoolOverflowAtMaxReplicas",
    "KascadeLedgerUnavailable",
    "KascadeGatewayErrors",
}
Render = Callable[..., list[Manifest]]


def _kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)


def _rule(manifests: list[Manifest]) -> dict[str, Any]:
    rules = [m for m in manifests if m["kind"] == "PrometheusRule"]
    assert len(rules) == 1, _kinds(manifests)
    return rules[0]


def _alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}


def test_nothing_is_rendered_by_default(render: Render) -> None:
    kinds = _kinds(render())
    assert not [k for k in kinds if k.startswith("PrometheusRule/") or "dashboard" in k], kinds


def test_switches_render_the_dashboard_configmap_and_rules(render: Render) -> None:
    manifests = render(*ON, "--set", "monitoring.rules.labels.release=kps")
    dashboards = [
        m for m in manifests if m["kind"] == "ConfigMap" and "dashboard" in m["metadata"]["name"]
    ]
    assert len(dashboards) == 1, _kinds(manifests)
    cm = dashboards[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "kascade-system"
    dashboard = json.loads(cm["data"]["kascade-overview.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "kascade-overview.json").read_text())
    rule = _rule(manifests)
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts = _alerts(rule)
    assert set(alerts) == ALERTS
    assert alerts["KascadeCircuitOpen"]["for"] == "5m"
    for name, alert in alerts.items():
        assert alert["annotations"]["runbook_url"].endswith(f"#{name.lower()}"), name
        assert alert["labels"]["severity"] in {"warning", "critical"}


def test_values_set_durations_switch_alerts_and_move_the_dashboard(render: Render) -> None:
    manifests = render(
        *ON,
        "--set", "monitoring.rules.alerts.circuitOpen.for=3s",
        "--set", "monitoring.rules.alerts.gatewayErrors.enabled=false",
        "--set", "monitoring.rules.rateWindow=20s",
        "--set", "monitoring.dashboards.namespace=grafana",
        "--set", "monitoring.dashboards.annotations.grafana_folder=Kascade",
    )  # fmt: skip
    rule = _rule(manifests)
    alerts = _alerts(rule)
    assert alerts["KascadeCircuitOpen"]["for"] == "3s"
    assert "KascadeGatewayErrors" not in alerts
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert any("[20s]" in e for e in exprs)
    assert not any("[5m]" in e for e in exprs)
    cm = next(m for m in manifests if "dashboard" in m["metadata"]["name"])
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Kascade"}


def test_lint_strict_is_clean_with_the_switches_on(helm: HelmRunner) -> None:
    proc = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *ON, check=False)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "[WARNING]" not in report, report
    assert "[ERROR]" not in report, report


@pytest.mark.parametrize(
    ("flag", "key"),
    [
        ("monitoring.rules.rateWindow=5 minutes", "rateWindow"),
        ("monitoring.rules.alerts.circuitOpen.for=soon", "for"),
        ("monitoring.rules.alerts.escalationJump.factor=1", "factor"),
        ("monitoring.rules.alerts.budgetExhaustion.severity=page", "severity"),
    ],
)
def test_schema_rejects_bad_monitoring_values(helm: HelmRunner, flag: str, key: str) -> None:
    proc = helm("template", "x", str(CHART), *ON, "--set", flag, check=False)
    assert proc.returncode != 0, proc.stdout[:300]
    assert key in proc.stderr, proc.stderr


def _exported_names() -> set[str]:
    names = set()
    for family in metrics_mod.Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    for gauge in (pool_metrics.REPLICAS, pool_metrics.MAX_CONCURRENT):
        names |= {family.name for family in gauge.describe()}
    return names


def _names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b[a-z_]*:?kascade[a-z0-9_:]*", expr))


def test_every_query_names_an_exported_metric_or_a_recording_rule(render: Render) -> None:
    rule = _rule(render(*ON))
    records = {r["record"] for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r}
    known = _exported_names() | records
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    dashboard = json.loads((CHART / "dashboards" / "kascade-overview.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    unknown = {name for e in exprs for name in _names_in(e)} - known
    assert not unknown, f"not exported by the gateway or operator, nor recorded: {unknown}"
    # Every recording rule is used by a panel or an alert (none is dead weight).
    used = {name for e in exprs for name in _names_in(e)}
    assert records <= used, records - used


def test_every_alert_has_a_runbook_section() -> None:
    doc = (REPO / "docs" / "observability.md").read_text()
    headings = set(re.findall(r"^### (Kascade\w+)$", doc, flags=re.M))
    assert headings >= ALERTS, ALERTS - headings
