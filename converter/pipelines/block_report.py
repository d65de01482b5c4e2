"""Drop-blocks report: the per-block / per-sub-layer score table (rich) and bar chart (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from converter.core.model_io import atomic_path


def _removed_units(scores: dict[str, dict[str, Any]], removed: list[str]) -> set[str]:
    """Removed unit names, with a removed block standing for its sub-layers too."""
    gone = set(removed)
    blocks = {s["block"] for n, s in scores.items() if n in gone and s["kind"] == "block"}
    return gone | {n for n, s in scores.items() if s["block"] in blocks}


def score_table(scores: dict[str, dict[str, Any]], removed: list[str], costs: dict[str, dict[str, float]]) -> Table:
    """One row per block and per sub-layer: BI, the direct measure, what it weighs."""
    lm = any("ppl" in s for s in scores.values())
    table = Table(title="block / sub-layer scores (calibration data)", show_lines=False)
    for col in ("unit", "kind", "BI", "cosine if removed", *(["ppl if removed"] if lm else []), "params", "FLOPs", ""):
        table.add_column(col, justify="left" if col in ("unit", "kind", "") else "right")
    gone = _removed_units(scores, removed)
    for name, s in scores.items():
        cost = costs.get(name, {})
        row = [name, s["kind"], f"{s['bi']:.4f}", f"{s['cosine']:.4f}"]
        row += [f"{s['ppl']:.3f}"] if lm else []
        row += [f"{cost.get('params_saved_frac', 0):.1%}", f"{cost.get('flops_saved_frac', 0):.1%}"]
        row.append("[red]removed[/red]" if name in gone else "")
        table.add_row(*row)
    return table


def bar_chart(scores: dict[str, dict[str, Any]], removed: list[str], path: str | Path, title: str = "") -> Path:
    """Two panels (blocks, sub-layers): Block Influence and the direct damage; removed units hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gone = _removed_units(scores, removed)
    lm = any("ppl" in s for s in scores.values())
    damage_label = "relative perplexity increase if removed" if lm else "1 - output cosine if removed"
    groups = [("blocks", [n for n, s in scores.items() if s["kind"] == "block"])]
    groups.append(("sub-layers", [n for n, s in scores.items() if s["kind"] != "block"]))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(groups[1][1]) + 3), 7.5))
    for ax, (label, names) in zip(axes, groups, strict=True):
        xs = range(len(names))
        colours = ["#4c72b0" if scores[n]["kind"] in ("block", "attention") else "#dd8452" for n in names]
        hatches = ["//" if n in gone else "" for n in names]
        width = 0.4
        bars = ax.bar([x - width / 2 for x in xs], [scores[n]["bi"] for n in names], width, color=colours, label="BI")
        twin = ax.twinx()
        twin.bar(
            [x + width / 2 for x in xs],
            [scores[n]["damage"] for n in names],
            width,
            color="#8c8c8c",
            label=damage_label,
        )
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
        ax.set_xticks(list(xs), names, rotation=45 if len(names) > 8 else 0)
        ax.set_ylabel("Block Influence (1 - cos)")
        twin.set_ylabel(damage_label, fontsize=8)
        ax.set_title(
            f"{label} (hatched: removed; blue: attention/block, orange: MLP; grey: direct measure)", fontsize=9
        )
    fig.suptitle(title or "drop-blocks scores")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def print_summary(report: dict[str, Any], console: Console) -> None:
    console.print(escape(report["discovery"]["message"]), highlight=False)
    if report.get("scores"):
        console.print(score_table(report["scores"], report["removed"], report["unit_costs"]))
    sel = report.get("selection")
    how = f" ({sel['method']}; {sel['stopped']})" if sel else " (named; no data to score or validate on)"
    console.print(f"[bold]removed[/bold] {report['removed'] or 'nothing'}{how}")
    if sel:
        saved = report["saved"]
        console.print(
            f"params saved {saved['params_saved']:,} ({saved['params_saved_frac']:.1%}), "
            f"estimated FLOPs saved {saved['flops_saved_frac']:.1%} per sample"
        )
        for key, before in report["validation"]["before"].items():
            console.print(f"validation {key}: {before:.5f} -> {report['validation']['after'][key]:.5f}")
    trt = report.get("tensorrt") or {}
    if trt.get("layers_before") is not None:
        line = f"TensorRT-RTX network layers {trt['layers_before']} -> {trt['layers_after']}"
        if trt.get("engine_bytes_before") and trt.get("engine_bytes_after"):
            line += f", engine {trt['engine_bytes_before'] / 1e6:.1f} MB -> {trt['engine_bytes_after'] / 1e6:.1f} MB"
        console.print(line)
    if trt.get("failed"):
        console.print(f"TensorRT-RTX: {escape(trt['failed'])}", highlight=False)
    cache = report.get("kv_cache")
    if cache:
        console.print(f"KV cache: {cache['summary']}", highlight=False)
    chart = f", chart {report['chart']}" if report.get("chart") else ""
    console.print(escape(f"wrote {report['output']}{chart}"), highlight=False)
