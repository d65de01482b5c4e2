"""A self-contained HTML page for a report: per-pass table, verification, per-layer error curve.

One file, no external assets (the plot is an inline PNG), so it can be attached to a
CI run or mailed. Rendering needs matplotlib (Agg backend, no display).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from converter.core.model_io import atomic_write_text
from converter.pipelines.budget.pareto_html import search_section


def error_curve_png(curve: list[dict[str, Any]], divergent: list[dict[str, Any]], title: str) -> bytes:
    """Relative error per compared tensor along the graph, origins of divergence marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=110)
    values = [p["rel"] if isinstance(p["rel"], (int, float)) else math.nan for p in curve]
    measured = [(i, float(v)) for i, v in enumerate(values) if math.isfinite(v) and v > 0]
    floor = min((v for _, v in measured), default=1e-7) / 10  # below every measurement: a marker row
    ys = [float(v) if math.isfinite(v) and v > 0 else floor for v in values]
    ax.plot(
        [i for i, _ in measured],
        [v for _, v in measured],
        lw=1.2,
        color="#1f6fb2",
        marker=".",
        ms=3,
        label="relative error (max-abs / max|ref|)",
    )
    equal = [i for i, v in enumerate(values) if v == 0]
    if equal:  # an exact match has no error to draw on a log scale: marked, not plotted as a value
        ax.scatter(equal, [floor] * len(equal), marker="|", color="#27ae60", label="exactly equal (no error)")
    broken = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if broken:
        ax.scatter(broken, [floor] * len(broken), marker="x", color="#8e44ad", label="not finite (NaN/inf)")
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
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _verdict(report: dict[str, Any]) -> str:
    if report.get("verified") == "not verified" or report.get("passed") is None:
        text, kind = "NOT VERIFIED: nothing final could be run here", "unverified"
    elif report["passed"]:
        text, kind = f"PASSED (checked: {report.get('verified', 'onnx')})", "passed"
    else:
        text, kind = "ACCURACY CHECK FAILED", "failed"
    return f'<p id="verdict" class="verdict {kind}">{html.escape(text)}</p>'


def _summary(report: dict[str, Any]) -> list[str]:
    """The page's top: what was converted, the engines (size, targets, profiles), where the time went."""
    source = report.get("input", {})
    parts = [f'<p id="model">model: <b>{html.escape(str(source.get("model") or source.get("reference", "-")))}</b></p>']
    engines = [a for a in report.get("artifacts", []) if a.get("kind") == "engine"]
    build = report.get("stages", {}).get("build", {})
    rows = [
        [
            Path(a["path"]).name,
            f"{a['bytes'] / 1e6:.1f} MB",
            ", ".join(build.get("targets") or []) or "-",
            _profiles_text(report.get("engine_profiles", [])),
            build.get("cache", "-"),
        ]
        for a in engines
    ]
    parts += [
        "<h2>Engines</h2>",
        _table(["engine", "size", "targets", "profiles", "cache"], rows).replace("<table>", '<table id="engines">', 1),
    ]
    stages = {k: v for k, v in report.get("stages", {}).items() if isinstance(v.get("seconds"), (int, float))}
    longest = max((v["seconds"] for v in stages.values()), default=0) or 1
    bars = "".join(
        f'<div class="stage"><span class="name">{html.escape(name)}</span>'
        f'<span class="bar" style="width:{max(1, round(300 * v["seconds"] / longest))}px"></span>'
        f'<span class="secs">{v["seconds"]:.2f} s</span></div>'
        for name, v in stages.items()
    )
    parts += ["<h2>Where the time went</h2>", f'<div id="stages">{bars or "none"}</div>']
    return parts


def _profiles_text(profiles: list[dict[str, Any]]) -> str:
    """'2: input_ids 1x1..4x64 | ...' (first input of each profile, min..max)."""
    texts = []
    for group in profiles:
        name, prof = next(iter(group.items()), (None, None))
        if prof:
            texts.append(f"{name} {'x'.join(map(str, prof['min']))}..{'x'.join(map(str, prof['max']))}")
    return f"{len(profiles)}: " + " | ".join(texts) if texts else "-"


def _generation(report: dict[str, Any]) -> list[str]:
    generation = report.get("generation")
    if not generation:
        return []
    rows = [
        [
            c["candidate"],
            c["prompts"],
            c["steps"],
            "yes" if c["identical"] else "no",
            c["agreement_per_step"][-1],
            min((s for s in c["first_divergent_step"] if s is not None), default=None),
            max((e for e in c["max_logits_error_per_step"] if e is not None), default=None),
        ]
        for c in generation["checks"]
    ]
    headers = [
        "candidate",
        "prompts",
        "tokens",
        "identical",
        "agreement at the end",
        "first divergence",
        "max logits diff",
    ]
    return ["<h2>Greedy generation (KV cache)</h2>", _table(headers, rows)]


def _status(comp: dict[str, Any], out: dict[str, Any]) -> str:
    """pass/FAIL of one output, or the budget's verdict for a stage judged by one."""
    budget = comp.get("budget")
    if budget:
        return f"{'pass' if budget['met'] else 'FAIL'} (budget {budget['budget']}: {budget['value']})"
    return "pass" if out["passed"] else f"FAIL {out['failure']}"


def render(report: dict[str, Any]) -> str:
    """The HTML page for a convert or verify report: the verdict first."""
    parts = [f"<h1>trtforge {html.escape(report.get('command', ''))}</h1>", _verdict(report), *_summary(report)]
    parts += _generation(report)
    parts += search_section(report, _table)
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
                        _status(comp, out),
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
        ".verdict{font-size:20px;font-weight:bold;padding:8px 12px;display:inline-block;border-radius:4px}"
        ".passed{background:#d4f4dd;color:#145a32}.failed{background:#fadbd8;color:#78281f}"
        ".unverified{background:#fcf3cf;color:#7d6608}.none{color:#777;font-style:italic}"
        ".stage{display:flex;align-items:center;font-size:13px;margin:2px 0}.stage .name{width:110px}"
        ".stage .bar{display:inline-block;height:12px;background:#1f6fb2;margin-right:8px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>trtforge report</title><style>{style}</style>"
        f"</head><body>{''.join(parts)}</body></html>\n"
    )


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, render(report))
