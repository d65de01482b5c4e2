"""A self-contained HTML page for a report: per-pass table, verification, per-layer error curve.

One file, no external assets (the plot is an inline PNG), so it can be attached to a
CI run or mailed. Rendering needs matplotlib (Agg backend, no display).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from converter.core.model_io import atomic_write_text


def error_curve_png(curve: list[dict[str, Any]], divergent: list[dict[str, Any]], title: str) -> bytes:
    """Relative error per compared tensor along the graph, origins of divergence marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=110)
    xs = list(range(len(curve)))
    ys = [max(float(p["rel"]) if isinstance(p["rel"], (int, float)) else 1e3, 1e-12) for p in curve]
    ax.plot(xs, ys, lw=1.2, color="#1f6fb2", label="relative error (max-abs / max|ref|)")
    position = {p["tensor"]: i for i, p in enumerate(curve)}
    origins = [d for d in divergent if d.get("origin") and d["tensor"] in position]
    if origins:
        ax.scatter(
            [position[d["tensor"]] for d in origins],
            [ys[position[d["tensor"]]] for d in origins],
            color="#c0392b",
            zorder=3,
            label="where error entered",
        )
        first = origins[0]  # the earliest origin; the table below the plot lists them all
        ax.annotate(
            "/".join(first["node"].split("/")[-3:]),
            (position[first["tensor"]], ys[position[first["tensor"]]]),
            fontsize=7,
            xytext=(8, -14),
            textcoords="offset points",
        )
    ax.set_yscale("log")
    ax.set_xlabel("compared tensor (graph order)")
    ax.set_ylabel("relative error")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def render(report: dict[str, Any]) -> str:
    """The HTML page for a convert or verify report."""
    parts = [f"<h1>trtforge {html.escape(report.get('command', ''))}</h1>"]
    if report.get("passes"):
        rows = [
            [
                p["name"],
                f"{p['nodes_before']} → {p['nodes_after']}",
                ", ".join(f"{k}={v}" for k, v in p["changed"].items()) or "none",
                p["seconds"],
                p.get("accuracy", {}).get("min_cosine"),
                p.get("accuracy", {}).get("max_abs"),
            ]
            for p in report["passes"]
        ]
        parts += [
            "<h2>Accuracy after each pass</h2>",
            _table(["pass", "nodes", "changes", "seconds", "cosine vs reference", "max-abs"], rows),
        ]
    if report.get("verification"):
        rows = []
        for comp in report["verification"]:
            if comp.get("skipped"):
                rows.append([comp["candidate"], "-", "-", "-", "-", f"skipped: {comp['skipped']}"])
            for out in comp.get("outputs", []):
                rows.append(
                    [
                        comp["candidate"],
                        out["name"],
                        out["max_abs"],
                        out["cosine"],
                        out["snr_db"],
                        "pass" if out["passed"] else f"FAIL {out['failure']}",
                    ]
                )
        parts += [
            "<h2>Verification</h2>",
            _table(["candidate", "output", "max-abs", "cosine", "SNR dB", "status"], rows),
        ]
    local = report.get("localization")
    if local and local.get("error_curve"):
        png = error_curve_png(local["error_curve"], local["divergent_layers"], local.get("title", "per-layer error"))
        parts += [
            "<h2>Per-layer error</h2>",
            f'<img alt="per-layer error curve" src="data:image/png;base64,{base64.b64encode(png).decode()}">',
        ]
        rows = [
            [d["node"], d["op"], d["tensor"], d["rel"], d["cosine"], "yes" if d["origin"] else ""]
            for d in local["divergent_layers"]
        ]
        parts += [
            "<h3>Divergent layers (origins first)</h3>",
            _table(["node", "op", "tensor", "relative error", "cosine", "origin"], rows),
        ]
        if local.get("qdq_attribution"):
            rows = [
                [a["layer"], a["quantize"], a["final_cosine_before"], a["final_cosine_without_pair"], a["gain"]]
                for a in local["qdq_attribution"]
            ]
            parts += [
                "<h3>Q/DQ pairs responsible</h3>",
                _table(["layer", "Q/DQ pair", "final cosine", "without the pair", "gain"], rows),
            ]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>trtforge report</title><style>{style}</style>"
        f"</head><body>{''.join(parts)}</body></html>\n"
    )


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, render(report))
