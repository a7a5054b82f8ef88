"""Renders the chart's Grafana dashboard to PNG with matplotlib, from the same panel
queries, against any Prometheus (docs/observability.md shows the result).

    python -m e2e.dashboard_png --prometheus http://127.0.0.1:9090 --out docs/img

The e2e test (e2e/test_observability.py) calls ``render_all`` on its own Prometheus when
``KASCADE_DASHBOARD_PNG_DIR`` is set, which is how the pictures in docs/ were made.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from e2e import prometheus_support as prom

UNITS = {
    "reqps": "requests/s",
    "percentunit": "share",
    "currencyUSD": "USD",
    "s": "seconds",
    "short": "",
}


def _legend(fmt: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    return text.strip() or json.dumps(labels)


def _rows(dashboard: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            rows.append((panel["title"], []))
        elif rows:
            rows[-1][1].append(panel)
    return rows


def _draw_heatmap(ax: Any, series: list[dict[str, Any]]) -> None:
    # Cumulative `le` buckets, averaged over the range, shown as the share per bucket.
    totals = {
        float(s["metric"]["le"]): sum(float(v) for _, v in s["values"]) / len(s["values"])
        for s in series
    }
    bounds = sorted(totals)
    counts = [totals[b] - (totals[bounds[i - 1]] if i else 0.0) for i, b in enumerate(bounds)]
    whole = sum(counts) or 1.0
    labels = [f"≤{b:g}" for b in bounds]
    ax.bar(labels, [c / whole for c in counts], color="tab:blue")
    ax.set_ylabel("share of local answers")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)


def _draw_panel(
    ax: Any,
    api: prom.PrometheusAPI,
    panel: dict[str, Any],
    *,
    window: tuple[float, float, float],
    rate_interval: str,
) -> int:
    start, end, step = window
    custom = panel["fieldConfig"]["defaults"].get("custom", {})
    log_scale = custom.get("scaleDistribution", {}).get("type") == "log"
    drawn = 0
    ax.set_title(panel["title"], fontsize=10)
    for target in panel["targets"]:
        expr = prom.target_expr(panel, target, rate_interval=rate_interval)
        series = api.query_range(expr, start=start, end=end, step=step)
        if panel["type"] == "heatmap":
            if series:
                _draw_heatmap(ax, series)
                drawn += len(series)
            continue
        for s in series:
            points = [(float(t) - end, float(v)) for t, v in s["values"]]
            points = [(t, v) for t, v in points if v == v and abs(v) != float("inf")]
            if log_scale:
                points = [(t, v) for t, v in points if v > 0]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=_legend(target["legendFormat"], s["metric"]), linewidth=1.4)
            drawn += 1
    if log_scale and drawn:
        ax.set_yscale("log")
    if panel["type"] != "heatmap":
        ax.set_xlabel("seconds before the end", fontsize=8)
        ax.set_ylabel(UNITS.get(panel["fieldConfig"]["defaults"]["unit"], ""), fontsize=8)
        if drawn:
            ax.legend(fontsize=7, loc="upper left")
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    return drawn


def render_all(
    api: prom.PrometheusAPI,
    *,
    out: Path,
    rate_interval: str,
    seconds: float = 300,
    dashboard: Path = prom.DASHBOARD,
) -> list[Path]:
    """One PNG per dashboard row (``dashboard-<row>.png``) over the last ``seconds``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    doc = json.loads(dashboard.read_text())
    end = time.time()
    window = (end - seconds, end, max(1.0, seconds / 300))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for title, panels in _rows(doc):
        cols = 3
        rows = (len(panels) + cols - 1) // cols
        fig, axes = pyplot.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels, strict=False):
            _draw_panel(ax, api, panel, window=window, rate_interval=rate_interval)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(f"{doc['title']}: {title}", fontsize=13)
        fig.tight_layout()
        path = out / f"dashboard-{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}.png"
        fig.savefig(path, dpi=80)
        pyplot.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.dashboard_png", description=__doc__)
    p.add_argument("--prometheus", required=True, help="Prometheus base URL")
    p.add_argument("--out", type=Path, default=Path("docs/img"), help="output directory")
    p.add_argument("--seconds", type=float, default=300, help="time range to draw")
    p.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes")
    args = p.parse_args(argv)
    api = prom.PrometheusAPI(args.prometheus)
    for path in render_all(
        api, out=args.out, rate_interval=args.rate_interval, seconds=args.seconds
    ):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
