"""``kascade status``: spend, budgets, escalation reasons and cache hit rate per policy
and expert, in the terminal (for people without Grafana).

Both modes read the same two gateway endpoints, ``/v1/kascade/status`` (budgets and
circuits, from the ledger) and ``/metrics`` (counters since the gateway started):
embedded mode at the gateway's URL, cluster mode through the API server's service
proxy to the namespace's ``kascade-gateway`` Service, with the user's kubeconfig.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import parser

GATEWAY_SERVICE = "kascade-gateway:http"
CLEAR = "\x1b[H\x1b[2J"


@dataclass
class PolicyFigures:
    """One policy's counters since the gateway started."""

    requests: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """Requests by route (local, cache, expert, error)."""
    escalations: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """Escalations by reason."""
    by_expert: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """Escalations by expert that answered."""
    cost_usd: float = 0.0

    @property
    def answered(self) -> float:
        return sum(v for route, v in self.requests.items() if route != "error")

    @property
    def cache_hit_rate(self) -> float | None:
        return self.requests.get("cache", 0.0) / self.answered if self.answered else None


def policy_figures(metrics_text: str) -> dict[str, PolicyFigures]:
    """Per-policy figures from the gateway's ``/metrics`` text."""
    out: dict[str, PolicyFigures] = defaultdict(PolicyFigures)
    for family in parser.text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            policy = labels.get("policy")
            if not policy:
                continue  # requests refused before a policy was known
            if sample.name == "kascade_requests_total":
                out[policy].requests[labels["route"]] += value
            elif sample.name == "kascade_escalations_total":
                out[policy].escalations[labels["reason"]] += value
                out[policy].by_expert[labels["expert"]] += value
            elif sample.name == "kascade_request_cost_usd_total":
                out[policy].cost_usd += value
    return dict(out)


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def _counts(counts: dict[str, float]) -> str:
    shown = [f"{k}={v:g}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v]
    return " ".join(shown) or "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]  # fmt: skip


def _expert_row(name: str, entry: dict[str, Any]) -> list[str]:
    circuit = entry.get("circuit", {}).get("state", "?")
    budget = entry.get("budget")
    if budget is None:
        reason = entry.get("ledgerError", "unknown")
        return [name, circuit, "ledger unavailable", reason, "", "", "", ""]
    limit = float(budget["limitUSD"])
    used = float(budget["spentUSD"]) + float(budget["reservedUSD"])
    return [
        name,
        circuit,
        budget["window"],
        f"${budget['spentUSD']}",
        f"${budget['reservedUSD']}",
        f"${budget['limitUSD']}",
        f"${budget['remainingUSD']}",
        _pct(used / limit if limit else None),
    ]


def render(*, status: dict[str, Any], metrics_text: str, source: str, now: float) -> str:
    """The status screen as text."""
    stamp = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    lines = [
        f"Kascade gateway of namespace {status.get('namespace', '?')} at {source} "
        f"(ledger: {status.get('ledger', '?')})  {stamp}",
        "",
        "Experts (budget of the current window):",
    ]
    experts = status.get("experts", {})
    header = ["EXPERT", "CIRCUIT", "WINDOW", "SPENT", "RESERVED", "LIMIT", "LEFT", "USED"]
    rows = [_expert_row(name, entry) for name, entry in sorted(experts.items())]
    lines += ["  " + line for line in _table(header, rows)] if rows else ["  (none)"]
    lines += ["", "Policies (since the gateway started):"]
    figures = policy_figures(metrics_text)
    header = ["POLICY", "REQUESTS", "LOCAL", "CACHE", "EXPERT", "ERROR", "CACHE HIT", "COST"]
    rows = []
    for name in sorted(set(status.get("policies", {})) | set(figures)):
        f = figures.get(name, PolicyFigures())
        r = f.requests
        rows.append(
            [name, f"{f.answered + r.get('error', 0):g}"]
            + [f"{r.get(route, 0):g}" for route in ("local", "cache", "expert", "error")]
            + [_pct(f.cache_hit_rate), f"${f.cost_usd:.6f}"]
        )
    lines += ["  " + line for line in _table(header, rows)] if rows else ["  (none)"]
    lines += ["", "Escalations (since the gateway started):"]
    header = ["POLICY", "BY REASON", "BY EXPERT"]
    rows = [
        [name, _counts(f.escalations), _counts(f.by_expert)] for name, f in sorted(figures.items())
    ]
    lines += ["  " + line for line in _table(header, rows)] if rows else ["  (none)"]
    return "\n".join(lines) + "\n"


Fetch = Callable[[str], str]


def http_fetcher(base_url: str, *, api_key: str | None) -> Fetch:
    """Reads gateway paths over plain HTTP (embedded mode, or a port-forward)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}

    def fetch(path: str) -> str:
        request = urllib.request.Request(f"{base_url.rstrip('/')}/{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as reply:
            body: bytes = reply.read()
        return body.decode()

    return fetch


def cluster_fetcher(*, kubeconfig: str | None, context: str | None, namespace: str) -> Fetch:
    """Reads gateway paths through the API server's service proxy."""
    from kubernetes_asyncio import client, config

    async def get(path: str) -> str:
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        async with client.ApiClient(configuration) as api:
            try:
                text: str = await client.CoreV1Api(
                    api
                ).connect_get_namespaced_service_proxy_with_path(GATEWAY_SERVICE, namespace, path)
            except client.ApiException as exc:
                raise ValueError(f"GET {path} answered {exc.status} {exc.reason}") from None
        return text

    def fetch(path: str) -> str:
        return asyncio.run(get(path))

    return fetch


def snapshot(fetch: Fetch, *, source: str) -> str:
    """One status screen, read now."""
    status = json.loads(fetch("v1/kascade/status"))
    return render(status=status, metrics_text=fetch("metrics"), source=source, now=time.time())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kascade status", description=__doc__)
    p.add_argument(
        "--url",
        default=os.environ.get("KASCADE_GATEWAY_URL", "http://127.0.0.1:8080"),
        help="gateway base URL in embedded mode (default: $KASCADE_GATEWAY_URL or "
        "http://127.0.0.1:8080)",
    )
    p.add_argument("-n", "--namespace", help="read the gateway of this namespace in a cluster")
    p.add_argument("--kubeconfig", help="kubeconfig for --namespace (default: $KUBECONFIG)")
    p.add_argument("--context", help="kubeconfig context for --namespace")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--count", type=int, help="with --watch: stop after this many screens")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.interval <= 0:
        print("kascade status: --interval must be a positive number of seconds", file=sys.stderr)
        return 2
    if args.namespace:
        fetch = cluster_fetcher(
            kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace
        )
        source = f"service {GATEWAY_SERVICE} in namespace {args.namespace}"
    else:
        fetch = http_fetcher(args.url, api_key=os.environ.get("KASCADE_API_KEY"))
        source = args.url
    shown = 0
    while True:
        try:
            screen = snapshot(fetch, source=source)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            print(f"kascade status: cannot read the gateway at {source}: {exc}", file=sys.stderr)
            return 1
        sys.stdout.write((CLEAR if args.watch else "") + screen)
        sys.stdout.flush()
        shown += 1
        if not args.watch or (args.count is not None and shown >= args.count):
            return 0
        time.sleep(args.interval)
