"""The budget search's part of report.html: the Pareto front as a plot, the chosen point, the front's table."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

Table = Callable[[list[str], list[list[Any]]], str]


def pareto_png(search: dict[str, Any]) -> bytes:
    """Every measured configuration (objective vs budgeted metric), the front joined, the chosen one starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = search["evaluated"]
    front = [points[i] for i in search["pareto"]]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    for met, colour, label in ((True, "#1f6fb2", "meets the budget"), (False, "#aaaaaa", "misses it")):
        chosen = [p for p in points if p["meets_budget"] is met]
        ax.scatter([p["objective"] for p in chosen], [p["value"] for p in chosen], s=18, color=colour, label=label)
    ax.plot([p["objective"] for p in front], [p["value"] for p in front], color="#1f6fb2", lw=1, label="Pareto front")
    ax.axhline(search["limit"], color="#c0392b", ls="--", lw=1, label=f"budget {search['budget']}")
    if search.get("chosen"):
        best = search["chosen"]
        ax.scatter([best["objective"]], [best["value"]], marker="*", s=220, color="#c0392b", zorder=3, label="chosen")
    ax.set_xscale("log")
    ax.set_xlabel(f"{search['objective']} (smaller is better)")
    ax.set_ylabel(
        f"{search['metric']} on validation data" + (" (relative increase)" if search["metric"] == "ppl" else "")
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def search_section(report: dict[str, Any], table: Table) -> list[str]:
    """HTML parts for a report with a `search` section (none without one)."""
    search = report.get("search")
    if not search:
        return []
    png = base64.b64encode(pareto_png(search)).decode()
    front = [search["evaluated"][i] for i in search["pareto"]]
    chosen = search.get("chosen") or {}
    rows = [
        [
            ("★ " if p["index"] == chosen.get("index") else "") + p["label"],
            p["value"],
            "yes" if p["meets_budget"] else "no",
            p["weight_bytes"],
            p["weighted_flops"],
            p["latency_ms_estimate"],
        ]
        for p in front
    ]
    searched = "weight-bytes" if search["objective"] == "engine-size" else search["objective"]  # engine size: by bytes
    columns = {"weight-bytes": "weight bytes", "flops": "FLOPs, fp16-equivalent", "latency": "latency estimate, ms"}
    headers = ["configuration", f"{search['metric']} on validation", "meets"]
    headers += [text + (" (objective)" if key == searched else "") for key, text in columns.items()]
    return [
        "<h2>Budget search</h2>",
        f"<p>{html.escape(search.get('summary', ''))}; stopped: {html.escape(search['stopped'])}</p>",
        f'<img alt="Pareto front" src="data:image/png;base64,{png}">',
        "<h3>Pareto front (accuracy vs objective)</h3>",
        table(headers, rows),
    ]
