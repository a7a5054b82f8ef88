"""The chart's dashboard and alerts on a real Prometheus, end to end with real parts.

Real API server and operator (it renders the gateway's config and exports the pools'
replica gauges); the real gateway process from the rendered ConfigMap; real simulated
experts and a simulated pool (``kascade sim-expert``); the real Prometheus scraping the
gateway and the operator, with the chart's PrometheusRule (rendered by the real helm,
checked by the real promtool) as its rule file, at short ``for:`` durations.

A mixed load (confident, low-confidence, cached, rule-routed, overflowed, refused) makes
every dashboard panel's query return series, and the budget and circuit alerts stay
quiet. Then one expert's answers get expensive and another's fail: the budget alert
fires for the first, the circuit alert for the second, and for no other expert.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.testkit import KubectlRunner, free_port, wait_for_port

from e2e import dataplane
from e2e import kuberay as kuberay_mod
from e2e import operator_support as ops
from e2e import prometheus_support as prom

pytestmark = [pytest.mark.cluster]

RATE_WINDOW = "20s"
# Short durations so the test takes seconds, set through the chart's own values.
RULE_VALUES = (
    f"monitoring.rules.rateWindow={RATE_WINDOW}",
    "monitoring.rules.evaluationInterval=1s",
    "monitoring.rules.alerts.budgetExhaustion.for=2s",
    "monitoring.rules.alerts.circuitOpen.for=3s",
    "monitoring.rules.alerts.overflowAtMaxReplicas.for=2s",
    "monitoring.rules.alerts.ledgerUnavailable.for=1s",
    "monitoring.rules.alerts.gatewayErrors.for=1s",
    "monitoring.rules.alerts.escalationJump.baselineWindow=1m",
    "monitoring.rules.alerts.lowConfidenceJump.baselineWindow=1m",
)
# Phase 2 makes each call of `budgeted` cost about $0.25 against a $2.50 daily budget;
# in phase 1 one call costs $0.0001, a burn that would take days to spend it.
ALERTS = {
    "KascadeBudgetExhaustionProjected",
    "KascadeCircuitOpen",
    "KascadeEscalationRateJump",
    "KascadeLowConfidenceShareJump",
    "KascadePoolOverflowAtMaxReplicas",
    "KascadeLedgerUnavailable",
    "KascadeGatewayErrors",
}
DOCS_PHASE_SECONDS = 120
BUDGET_USD = 2.5
EXPENSIVE_COMPLETION_TOKENS = 5000


def _manifests(*, sims: dict[str, str]) -> str:
    def expert(name: str, *, limit: float, price: float, breaker: str = "") -> str:
        return f"""
        apiVersion: kascade.io/v1alpha1
        kind: CloudExpert
        metadata: {{name: {name}}}
        spec:
          provider: openai-compatible
          endpoint: {sims[name]}
          allowInsecureHttp: true
          model: sim-{name}
          pricing: {{inputPerMillionTokens: {price}, outputPerMillionTokens: {price}}}
          budget: {{limitUSD: {limit}, window: calendar-day}}
          retries: {{maxRetries: 0}}
          {breaker}
        ---"""

    return textwrap.dedent(
        """
        apiVersion: kascade.io/v1alpha1
        kind: LocalModelPool
        metadata: {name: tiny}
        spec:
          model: {runtime: llama-cpp, source: "builtin://smollm2-135m-instruct"}
          replicas: {min: 1, max: 1}
          capacity: {maxConcurrentPerReplica: 2}
          costPerReplicaHour: 0.01
        ---"""
        + expert("steady", limit=1000, price=1)
        + expert("budgeted", limit=BUDGET_USD, price=50)
        + expert(
            "flaky",
            limit=1000,
            price=1,
            breaker="circuitBreaker: {enabled: true, failureThreshold: 2, openSeconds: 5}",
        )
        + """
        apiVersion: kascade.io/v1alpha1
        kind: RoutingPolicy
        metadata: {name: chat}
        spec:
          localPool: tiny
          allowAnonymous: true  # the load below sends no key
          experts: [steady]
          confidence: {method: mean-token-prob, threshold: 0.5}
          overflow: escalate
          privacy: {action: allow}
          cache: {exact: {ttlSeconds: 600}}
        ---
        apiVersion: kascade.io/v1alpha1
        kind: RoutingPolicy
        metadata: {name: reports}
        spec:
          localPool: tiny
          allowAnonymous: true  # the load below sends no key
          experts: [budgeted]
          confidence: {method: mean-token-prob, threshold: 0.5}
          rules:
            - name: reports
              when: {taskLabels: [report]}
              action: expert
              expert: budgeted
          overflow: escalate
          privacy: {action: allow}
        ---
        apiVersion: kascade.io/v1alpha1
        kind: RoutingPolicy
        metadata: {name: code}
        spec:
          localPool: tiny
          allowAnonymous: true  # the load below sends no key
          experts: [flaky]
          confidence: {method: mean-token-prob, threshold: 0.5}
          overflow: escalate
          privacy: {action: allow}
          fallback: {whenExpertsUnavailable: local}
        """
    )


class GatewayOnSimPool(dataplane.GatewayFromConfigMap):
    """The real gateway from the operator's ConfigMap, its pool being a sim-expert."""

    def __init__(self, kubectl: KubectlRunner, *, namespace: str, port: int, pool: str) -> None:
        super().__init__(kubectl, namespace=namespace, port=port, serve_base=pool)

    def sync(self) -> bool:
        got = self.kubectl(
            "get", "configmap", "kascade-gateway", "-n", self.namespace, "-o", "json", check=False
        )
        if got.returncode != 0:
            return False
        config: dict[str, Any] = json.loads(json.loads(got.stdout)["data"]["config.json"])
        if set(config.get("policies", {})) != {"chat", "code", "reports"} or set(
            config.get("experts", {})
        ) != {"steady", "budgeted", "flaky"}:
            return False
        for pool in config["pools"].values():
            pool["endpoint"] = self.serve_base
        config.setdefault("ledger", {})["checkpointPath"] = str(self.dir / "ledger.json")
        self.config_path.write_text(json.dumps(config))
        return True


def _sim_config(url: str, **settings: Any) -> None:
    body = json.dumps(settings).encode()
    req = urllib.request.Request(
        f"{url}/_sim/config", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as reply:
        assert reply.status == 200


def _pool_ready(kubectl: KubectlRunner, namespace: str) -> bool:
    got = kubectl("get", "localmodelpool", "tiny", "-n", namespace, "-o", "json", check=False)
    if got.returncode != 0:
        return False
    replicas = (json.loads(got.stdout).get("status") or {}).get("replicas") or {}
    return int(replicas.get("ready") or 0) >= 1


@pytest.fixture
def stack(
    kubeconfig: str,
    kubectl: KubectlRunner,
    namespace: str,
    kuberay: kuberay_mod.KubeRayOperator,
) -> Iterator[dict[str, Any]]:
    kubectl("apply", "--server-side", "-f", str(ops.REPO / "crds"))
    # The real KubeRay runs the pool's RayCluster and writes the RayService's status;
    # the Serve application it submits is reported running (the pool is a simulator).
    reported = dataplane.ReportedServe(namespace)
    kuberay.heads.serves[namespace] = reported
    workdir = Path(tempfile.mkdtemp(prefix="kascade-e2e-observability-"))
    ports = {name: free_port() for name in ("pool", "steady", "budgeted", "flaky")}
    prom_port, gw_port, op_port = free_port(), free_port(), free_port()
    sims = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    procs: list[subprocess.Popen[bytes]] = []
    for port in ports.values():
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "kascade.cli", "sim-expert", "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    rules = workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump(prom.chart_rules(*RULE_VALUES)))
    (workdir / "prometheus.yml").write_text(
        textwrap.dedent(
            f"""
            global: {{scrape_interval: 1s, evaluation_interval: 1s}}
            rule_files: [{rules}]
            scrape_configs:
              - job_name: kascade-gateway
                static_configs:
                  - targets: ["127.0.0.1:{gw_port}"]
                    labels: {{namespace: {namespace}}}
              - job_name: kascade-operator
                static_configs:
                  - targets: ["127.0.0.1:{op_port}"]
                    labels: {{namespace: kascade-system}}
            """
        )
    )
    procs.append(
        subprocess.Popen(
            [
                prom.cached_binary("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    operator = ops.OperatorProcess(
        kubeconfig,
        resync_seconds=5,
        env={
            "KASCADE_GATEWAY_URL_TEMPLATE": f"http://127.0.0.1:{gw_port}",
            "KASCADE_METRICS_PORT": str(op_port),
        },
    )
    gateway = GatewayOnSimPool(kubectl, namespace=namespace, port=gw_port, pool=sims["pool"])
    try:
        operator.start()
        for port in [*ports.values(), prom_port]:
            wait_for_port(port)
        _sim_config(sims["pool"], confidence=0.9, throttle_fraction=0.2, retry_after=1)
        _sim_config(sims["budgeted"], prompt_tokens=1, completion_tokens=1)
        # Every 10th call of `flaky` fails: upstream errors, never two in a row (its
        # breaker opens after two consecutive failures).
        _sim_config(sims["flaky"], fail_every=10)
        kubectl("apply", "-n", namespace, "-f", "-", input=_manifests(sims=sims))
        ops.wait_for("the rendered RayService", lambda: kubectl(
            "get", "rayservice", "tiny", "-n", namespace, check=False).returncode == 0)  # fmt: skip
        ops.wait_for("KubeRay's ready pool", lambda: _pool_ready(kubectl, namespace), timeout=300)
        assert reported.submitted, "the pool is ready without KubeRay submitting its Serve app"
        ops.wait_for("the gateway ConfigMap with all policies", gateway.sync)
        gateway.start()
        yield {
            "gateway": f"http://127.0.0.1:{gw_port}",
            "prometheus": prom.PrometheusAPI(f"http://127.0.0.1:{prom_port}"),
            "sims": sims,
            "rules": rules,
        }
    finally:
        kuberay.heads.serves.pop(namespace, None)
        gateway.stop()
        operator.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        print(f"---- operator log ----\n{operator.log()[-5000:]}")


_UNIQUE = itertools.count()


async def _mixed_load(gateway: str, *, rounds: int, report: bool = False) -> dict[str, int]:
    """Confident and low-confidence local answers, cache hits, overflow (the pool sim
    refuses a share), refused requests (unknown model) and, with ``report``, one call
    routed by a task-label rule to `budgeted`."""
    seen: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:

        async def post(model: str, content: str, *, task: str | None = None) -> None:
            body = {
                "model": model,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": content}],
            }
            headers = {"x-kascade-task": task} if task else {}
            async with session.post(
                f"{gateway}/v1/chat/completions", json=body, headers=headers
            ) as reply:
                await reply.read()
                key = f"{reply.status}:{reply.headers.get('x-kascade-route', '-')}"
                seen[key] = seen.get(key, 0) + 1

        for _ in range(rounds):
            n = next(_UNIQUE)
            await asyncio.gather(
                post("chat", f"[[confidence=0.9]] local answer {n}"),
                post("chat", f"[[confidence=0.1]] hard question {n}"),
                post("chat", "[[confidence=0.9]] the same question every time"),
                post("code", f"[[confidence=0.1]] write code {n}", task="other-label"),
                post("code", f"[[confidence=0.95]] easy code {n}"),
                post("no-such-policy", "refused"),
            )
        if report:
            await post("reports", "[[confidence=0.9]] one report", task="report")
    return seen


async def _drive_budget_and_circuit(gateway: str, *, calls: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        for n in range(calls):
            for model, task, max_tokens in (("reports", "report", 6000), ("code", None, 8)):
                body = {
                    "model": model,
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": f"[[confidence=0.1]] drive {n}"}],
                }
                headers = {"x-kascade-task": task} if task else {}
                async with session.post(
                    f"{gateway}/v1/chat/completions", json=body, headers=headers
                ) as reply:
                    await reply.read()
                    key = f"{model}:{reply.status}:{reply.headers.get('x-kascade-route')}"
                    seen[key] = seen.get(key, 0) + 1
    return seen


def _keep_loading(gateway: str, *, seconds: float, drive: bool = False) -> None:
    # Only for the docs pictures: a longer run, so the time axis shows minutes.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        asyncio.run(_mixed_load(gateway, rounds=3))
        if drive:
            asyncio.run(_drive_budget_and_circuit(gateway, calls=1))


def _firing(api: prom.PrometheusAPI, name: str) -> set[str]:
    return {
        a.get("expert") or a.get("pool") or a.get("namespace", "")
        for a in prom.active_alerts(api, state="firing")
        if a["alertname"] == name
    }


def _active_names(api: prom.PrometheusAPI) -> set[str]:
    return {a["alertname"] for a in prom.active_alerts(api)}


def test_chart_rules_pass_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(prom.chart_rules(*RULE_VALUES)))
    proc = subprocess.run(
        [prom.cached_binary("promtool"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout
    assert f"{len(ALERTS) + 19} rules found" in proc.stdout, proc.stdout


def test_panels_return_series_and_alerts_fire_only_when_driven(stack: dict[str, Any]) -> None:
    api: prom.PrometheusAPI = stack["prometheus"]
    gateway, sims = stack["gateway"], stack["sims"]
    # The running Prometheus loaded the chart's rules (a rule file it cannot parse
    # would leave it without groups).
    groups = ops.wait_for("rule groups", api.rule_groups, timeout=30)
    assert {g["name"] for g in groups} == {"kascade.recording", "kascade.alerts"}
    assert {r["name"] for g in groups for r in g["rules"]} >= ALERTS
    ops.wait_for(
        "both targets up",
        lambda: api.target_health() == {"kascade-gateway": "up", "kascade-operator": "up"},
        timeout=60,
    )
    seen = asyncio.run(_mixed_load(gateway, rounds=6, report=True))
    # An unknown model without a key is 401, not 404: an unauthenticated caller does not
    # learn which policies exist (docs/api.md, Tenants).
    assert {"200:local", "200:cache", "200:expert:steady", "401:-"} <= set(seen), seen
    queries = prom.panel_queries(rate_interval=RATE_WINDOW)
    assert len(queries) >= 20

    empty: list[str] = []

    def no_empty_panels() -> bool:
        # Keep some traffic flowing so rates over the window stay defined.
        asyncio.run(_mixed_load(gateway, rounds=1))
        empty[:] = [f"{q.panel} [{q.ref}]" for q in queries if not api.query(q.expr)]
        return not empty

    try:
        ops.wait_for("every panel query to return series", no_empty_panels, timeout=90)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; panels without series: {empty}") from None
    # Everything the panels show is evaluated; the budget and circuit alerts are not
    # pending, let alone firing, and the projection that drives the budget alert exists.
    assert api.query("namespace_expert:kascade_budget_exhaustion_seconds:projected")
    active = _active_names(api)
    assert not active & {"KascadeBudgetExhaustionProjected", "KascadeCircuitOpen"}, active
    assert not active & {"KascadeLedgerUnavailable", "KascadeGatewayErrors"}, active

    render_dir = os.environ.get("KASCADE_DASHBOARD_PNG_DIR")
    if render_dir:  # pictures for docs/: minutes of mixed load, not seconds
        _keep_loading(gateway, seconds=DOCS_PHASE_SECONDS)
    # Phase 2: `budgeted` now bills 5000 completion tokens per call, `flaky` fails.
    _sim_config(sims["budgeted"], completion_tokens=EXPENSIVE_COMPLETION_TOKENS)
    _sim_config(sims["flaky"], fail_fraction=1.0)

    def all_fire() -> bool:
        asyncio.run(_drive_budget_and_circuit(gateway, calls=2))
        return (
            "budgeted" in _firing(api, "KascadeBudgetExhaustionProjected")
            and "flaky" in _firing(api, "KascadeCircuitOpen")
            # The pool runs at its maximum (1) and overflows: that alert is driven too.
            and "tiny" in _firing(api, "KascadePoolOverflowAtMaxReplicas")
        )

    ops.wait_for("the budget, circuit and overflow alerts to fire", all_fire, timeout=90)
    assert _firing(api, "KascadeBudgetExhaustionProjected") == {"budgeted"}
    assert _firing(api, "KascadeCircuitOpen") == {"flaky"}
    spent = api.query('kascade_budget_spent_usd{expert="budgeted"}')
    assert 0 < float(spent[0]["value"][1]) <= BUDGET_USD, spent
    if render_dir:  # docs/observability.md's pictures (e2e/dashboard_png.py)
        from e2e import dashboard_png

        _keep_loading(gateway, seconds=DOCS_PHASE_SECONDS / 3, drive=True)
        dashboard_png.render_all(
            api, out=Path(render_dir), rate_interval=RATE_WINDOW, seconds=DOCS_PHASE_SECONDS * 1.5
        )
