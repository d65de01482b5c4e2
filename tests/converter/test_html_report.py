"""report.html: the verdict first, the model, the engines (size, targets, profiles), a bar per stage;
empty tables say "none"; the per-layer plot marks exact matches instead of drawing a floor value."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from converter.pipelines import html_report

PROFILE = {"input_ids": {"min": [1, 1], "opt": [1, 32], "max": [4, 64]}}


def _report(passed: bool | None = True, engines: bool = True) -> dict:
    curve = [
        {"index": 0, "tensor": "a", "rel": 0.0, "cosine": 1.0},
        {"index": 1, "tensor": "b", "rel": 3e-7, "cosine": 1.0},
        {"index": 2, "tensor": "c", "rel": float("nan"), "cosine": 0.0},
    ]
    return {
        "command": "convert",
        "passed": passed,
        "verified": "onnx" if passed is not None else "not verified",
        "input": {"model": "decoder-lm", "kind": "torch"},
        "artifacts": [{"path": "out/model.engine", "kind": "engine", "bytes": 15_900_000}] if engines else [],
        "engine_profiles": [PROFILE, PROFILE],
        "stages": {
            "export": {"seconds": 1.5, "summary": ""},
            "build": {"seconds": 3.0, "summary": "", "targets": ["sm86", "sm89"], "cache": "miss"},
        },
        "passes": [],
        "localization": {
            "error_curve": curve,
            "divergent_layers": [{"node": "n", "op": "Add", "tensor": "b", "rel": 3e-7, "cosine": 1, "origin": True}],
        },
    }


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.order: list[str] = []
        self._current: str | None = None

    def handle_starttag(self, tag, attrs):
        element = dict(attrs).get("id")
        if element:
            self.order.append(element)
            self._current = element
            self.ids[element] = ""

    def handle_data(self, data):
        if self._current:
            self.ids[self._current] += data


def test_the_page_opens_with_the_verdict_the_model_the_engines_and_the_stages():
    page = html_report.render(_report())
    found = _Elements()
    found.feed(page)
    assert found.order[:4] == ["verdict", "model", "engines", "stages"]  # in this order, at the top
    assert "PASSED" in found.ids["verdict"] and "decoder-lm" in found.ids["model"]
    engines = found.ids["engines"]
    assert "15.9 MB" in engines and "sm86, sm89" in engines and engines.count("input_ids 1x1..4x64") == 2
    assert re.findall(r'<span class="name">([^<]*)</span>', page) == ["export", "build"]
    widths = [int(w) for w in re.findall(r'class="bar" style="width:(\d+)px"', page)]
    assert widths == [150, 300]  # proportional to 1.5 s and 3.0 s


def test_verdicts_and_empty_tables():
    assert "ACCURACY CHECK FAILED" in html_report.render(_report(passed=False))
    assert "NOT VERIFIED" in html_report.render(_report(passed=None))
    page = html_report.render(_report(engines=False))
    assert re.search(r'<h2>Engines</h2><p class="none">none</p>', page)  # not a header row alone
    assert html_report._table(["a", "b"], []) == '<p class="none">none</p>'


def test_the_error_curve_marks_exact_matches_and_non_finite_values(monkeypatch):
    drawn: dict[str, list] = {}
    import matplotlib.axes

    real_scatter, real_plot = matplotlib.axes.Axes.scatter, matplotlib.axes.Axes.plot

    def scatter(self, xs, ys, **kw):
        drawn.setdefault(kw.get("label", ""), []).extend(xs)
        return real_scatter(self, xs, ys, **kw)

    def plot(self, xs, ys, *args, **kw):
        drawn["line"] = list(xs)
        return real_plot(self, xs, ys, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    report = _report()["localization"]
    png = html_report.error_curve_png(report["error_curve"], report["divergent_layers"], "t")
    assert png.startswith(b"\x89PNG")
    assert drawn["line"] == [1]  # only the measured error is a point on the curve
    assert drawn["exactly equal (no error)"] == [0] and drawn["not finite (NaN/inf)"] == [2]
