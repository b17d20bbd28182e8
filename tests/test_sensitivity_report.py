"""The HTML report of ``onnxprune analyze``: the curves, the chosen plan and the totals.

The analysis is measured for real: ``onnxprune analyze`` on ``fixtures/transformer_mnist1d``
with its calibration data (once for a sparsity target, once for a loss budget, which also
measures the plan), and the page is read back: every layer in the table with its plan
level and predicted loss, one polyline per charted layer with the plan marked on it, the
totals, escaping, and the page without a plan, with channel groups and with many layers.
"""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from onnxprune.cli_analyze import analyze_command
from onnxprune.errors import OptionError, OutputError
from onnxprune.report.lines import Line, LineChart, render_lines
from onnxprune.report.sensitivity import (
    MAX_CHART_LAYERS,
    fmt_level,
    fmt_loss,
    render_sensitivity_html,
    write_sensitivity_report,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIXTURES / "transformer_mnist1d.onnx"
CALIB = FIXTURES / "transformer_mnist1d.calib.npz"
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr"}


def _analyze(tmp: Path, name: str, *plan: str) -> dict[str, Any]:
    out = tmp / f"{name}.json"
    args = [str(MODEL), "--data", str(CALIB), "--samples", "64", "--workers", "2", "--cache-dir", str(tmp / "cache")]
    result = CliRunner().invoke(analyze_command, [*args, *plan, "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def analyses(tmp_path_factory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("analysis")
    target = _analyze(tmp, "target", "--target-sparsity", "0.6")
    budget = _analyze(tmp, "budget", "--max-loss", "0.02")  # curves from the cache; the plan is measured
    return {"target": target, "budget": budget}


@pytest.fixture(scope="module")
def analysis(analyses) -> dict[str, Any]:
    return analyses["target"]


# ---------------------------------------------------------------------------------------
# Reading the page back


class Page(HTMLParser):
    """Elements (tag, attributes, text), table rows per table class, and nesting errors."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.rows: dict[str, list[list[tuple[dict[str, str | None], str]]]] = {}
        self.table: str | None = None
        self.cell: tuple[dict[str, str | None], list[str]] | None = None
        self.in_body = False
        self.text_parts: list[str] = []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.elements.append((tag, a))
        if tag == "table":
            self.table = a.get("class") or ""
            self.rows[self.table] = []
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body and self.table is not None:
            self.rows[self.table].append([])
        elif tag == "td" and self.in_body and self.table is not None:
            self.cell = (a, [])

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        if tag == "td" and self.cell is not None and self.table is not None:
            self.rows[self.table][-1].append((self.cell[0], " ".join(" ".join(self.cell[1]).split())))
            self.cell = None
        elif tag == "tbody":
            self.in_body = False
        elif tag == "table":
            self.table = None

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        if self.cell is not None and "title" not in self.stack[-1:]:
            self.cell[1].append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.text_parts).split())

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == tag and (cls is None or a.get("class") == cls)]


def parse(text: str) -> Page:
    page = Page(text)
    assert page.errors == []
    return page


def assert_self_contained(text: str) -> None:
    assert not re.search(r"https?://", text)
    assert not re.search(r"\b(src|href)\s*=", text, re.I)
    assert not re.search(r"<(script|link|iframe|object|embed|img)\b", text, re.I)
    assert "@import" not in text and "url(" not in text


def layer_rows(page: Page, table: str = "layers") -> dict[str, list[tuple[dict[str, str | None], str]]]:
    return {cells[0][1]: cells for cells in page.rows[table]}


def polyline_points(attrs: dict[str, str | None]) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in (attrs["points"] or "").split())]


def interp(levels: list[float], values: list[float], x: float) -> float:
    for i in range(1, len(levels)):
        if x <= levels[i]:
            t = (x - levels[i - 1]) / (levels[i] - levels[i - 1])
            return values[i - 1] + t * (values[i] - values[i - 1])
    return values[-1]


# ---------------------------------------------------------------------------------------
# The real analysis


def test_page_shows_every_layer_with_its_plan_level_and_predicted_loss(analysis):
    text = render_sensitivity_html(analysis)
    assert_self_contained(text)
    page = parse(text)
    curves, plan = analysis["curves"], analysis["plan"]["plan"]
    assert len(curves) == 14 and set(plan) == {c["weight"] for c in curves}
    rows = layer_rows(page)
    assert list(rows) == [c["weight"] for c in curves]  # every layer, in the analysis's order
    predicted = 0.0
    for curve in curves:
        cells = rows[curve["weight"]]
        assert cells[1][1] == f"{curve['size']:,}"
        for column, level in zip(cells[2:6], (0.3, 0.5, 0.7, 0.9), strict=True):
            assert column[1] == fmt_loss(curve["loss"][curve["levels"].index(level)])
        level_cell, predicted_cell = cells[6], cells[7]
        assert level_cell[1] == fmt_level(plan[curve["weight"]])
        assert float(level_cell[0]["title"]) == plan[curve["weight"]]
        predicted += float(predicted_cell[0]["title"])
    # the layers' predicted losses (envelope at the plan level) add up to the planner's
    assert predicted == pytest.approx(analysis["plan"]["predicted_loss"], rel=1e-9, abs=1e-12)


def test_header_and_totals(analysis):
    page = parse(render_sensitivity_html(analysis))
    text = page.text
    assert "Sensitivity analysis" in text and "transformer_mnist1d.onnx" in text
    assert "loss: 1 - cosine" in text and "method: magnitude" in text and "14 layers" in text
    assert "1 − mean cosine similarity" in text  # the kind of loss is explained
    plan = analysis["plan"]
    assert f"plan fraction (sparsity) {fmt_level(plan['fraction'])}" in text
    assert f"predicted loss {fmt_loss(plan['predicted_loss'])}" in text
    assert "measured loss not measured" in text
    total = sum(c["size"] for c in analysis["curves"])
    assert f"All 14 layers {total:,} 60 % {fmt_loss(plan['predicted_loss'])}" in text


def test_chart_has_one_polyline_per_layer_and_the_plan_on_each_curve(analysis):
    page = parse(render_sensitivity_html(analysis))
    curves, plan = analysis["curves"], analysis["plan"]["plan"]
    lines = page.find("polyline", "line")
    marks = page.find("circle", "mark")
    assert len(lines) == len(curves) == len(marks)
    assert [a["data-name"] for a in lines] == [c["weight"] for c in curves]
    by_name = {c["weight"]: c for c in curves}
    for line, mark in zip(lines, marks, strict=True):
        curve = by_name[line["data-name"]]
        points = polyline_points(line)
        assert len(points) == len(curve["levels"])
        xs = [x for x, _ in points]
        assert xs == sorted(xs) and len(set(xs)) == len(xs)  # levels left to right
        ys = [y for _, y in points]
        for i in range(len(ys)):  # a larger loss is drawn higher (smaller y), equal losses level
            for j in range(len(ys)):
                if curve["loss"][i] > curve["loss"][j] + 1e-12:
                    assert ys[i] < ys[j]
        # the mark is the plan level on the curve: same drawn position as interpolating the polyline
        level = plan[mark["data-name"]]
        assert float(mark["data-x"]) == level
        assert float(mark["data-y"]) == pytest.approx(interp(curve["levels"], curve["loss"], level))
        cx, cy = float(mark["cx"]), float(mark["cy"])
        assert cx == pytest.approx(interp(curve["levels"], xs, level), abs=0.02)
        if level in curve["levels"]:  # on a vertex: exactly there (between vertices the y scale is not linear)
            assert cy == pytest.approx(ys[curve["levels"].index(level)], abs=0.02)
    assert "Showing the" not in page.text  # 14 layers: no cap


def test_measured_loss_of_a_budget_plan_is_shown(analyses):
    data = analyses["budget"]
    measured, plan = data["measured_loss"], data["plan"]
    assert isinstance(measured, float) and measured <= 0.02
    text = parse(render_sensitivity_html(data)).text
    assert f"measured loss {fmt_loss(measured)}" in text
    assert f"predicted loss {fmt_loss(plan['predicted_loss'])}" in text
    assert "Measured with the whole plan applied" in text


def test_page_without_a_plan(analysis):
    data = {**analysis, "plan": None, "measured_loss": None}
    page = parse(render_sensitivity_html(data))
    assert "No plan was made" in page.text
    assert len(page.find("polyline", "line")) == 14
    assert page.find("circle", "mark") == [] and page.find("line", "reference") == []
    for cells in layer_rows(page).values():
        assert cells[6][1] == "—" and cells[7][1] == "—"
    assert "Dot:" not in page.text


# ---------------------------------------------------------------------------------------
# Edge cases


def _curve(name: str, size: int, scale: float = 1.0, **extra: Any) -> dict[str, Any]:
    levels = [0.0, 0.25, 0.5, 0.75]
    return {"weight": name, "size": size, "levels": levels, "loss": [scale * v * v for v in levels], **extra}


def test_odd_names_are_escaped():
    odd = "<script>alert(\"x\")</script> & 'q'"
    data = {
        "model": "<b>m</b>.onnx",
        "options": {"method": "<i>"},
        "curves": [_curve(odd, 100), _curve("plain", 50, kind="<em>")],
        "plan": {"plan": {odd: 0.5, "<x>": 0.1}, "predicted_loss": 0.25, "fraction": 0.3, "budget": "sparsity"},
    }
    text = render_sensitivity_html(data)
    assert "<script" not in text and "<b>" not in text and "<i>" not in text and "<em>" not in text
    assert "&lt;script&gt;" in text
    page = parse(text)
    assert odd in layer_rows(page)
    assert [a["data-name"] for a in page.find("polyline", "line")] == [odd, "plain"]
    assert page.find("circle", "mark")[0]["data-name"] == odd
    assert "1 tensor(s) without a curve here: <x>" in page.text


def test_chart_is_capped_to_the_largest_layers():
    curves = [_curve(f"layer{i}", 1000 + 7 * ((i * 13) % 50)) for i in range(50)]
    data = {"curves": curves, "plan": {"plan": {c["weight"]: 0.5 for c in curves}, "predicted_loss": 12.5}}
    page = parse(render_sensitivity_html(data))
    lines = page.find("polyline", "line")
    assert len(lines) == MAX_CHART_LAYERS == 40 == len(page.find("circle", "mark"))
    largest = sorted(curves, key=lambda c: -c["size"])[:40]
    assert {a["data-name"] for a in lines} == {c["weight"] for c in largest}
    assert [a["data-name"] for a in lines] == [c["weight"] for c in curves if c in largest]  # analysis order
    assert "Showing the 40 largest of 50 layers (by size); the table lists all." in page.text
    assert len(layer_rows(page)) == 50


def test_channel_groups_when_present_and_only_then(analysis):
    groups = [
        _curve("conv1/out", 16, latency_saved=[0.0, 0.1, 0.2, 0.3], macs_saved=[0.0, 0.25, 0.5, 0.75]),
        _curve("conv2/out", 32, scale=2.0),
    ]
    plan = {**analysis["plan"], "plan": {**analysis["plan"]["plan"], "conv1/out": 0.5}}
    page = parse(render_sensitivity_html({**analysis, "plan": plan, "groups": groups}))
    assert [a["data-name"] for a in page.find("polyline", "line")][-2:] == ["conv1/out", "conv2/out"]
    assert len(page.find("polyline", "line")) == 16
    rows = layer_rows(page, "groups")
    assert list(rows) == ["conv1/out", "conv2/out"]
    # columns at the groups' own levels (25 / 50 / 75 %), latency and MACs saved beneath the loss
    assert rows["conv1/out"][3][1] == "0.2500 latency −20 % · MACs −50 %"
    assert rows["conv2/out"][3][1] == "0.5000"
    assert rows["conv1/out"][5][1] == "50 %" and rows["conv2/out"][5][1] == "—"
    assert "Channel groups" in page.text and "Loss at 25 %" in page.text
    assert "without a curve" not in page.text
    without = parse(render_sensitivity_html(analysis))
    assert "groups" not in without.rows and "Channel groups" not in without.text


def test_partial_and_malformed_data_still_render():
    data = {
        "curves": [
            {
                "weight": "a",
                "levels": [0.0, 0.5, "x", 0.9],
                "loss": [0.0, float("nan"), 0.3, 0.4],
            },  # bad points dropped
            {"weight": "b"},  # no points: in the table, not in the chart
            "not a curve",
        ],
        "plan": {"plan": {"a": "high"}},  # a level that is not a number: not planned
        "options": None,
    }
    page = parse(render_sensitivity_html(data))
    assert list(layer_rows(page)) == ["a", "b"]
    lines = page.find("polyline", "line")
    assert len(lines) == 1 and len(polyline_points(lines[0])) == 2  # (0, 0) and (0.9, 0.4)
    assert page.find("circle", "mark") == []
    empty = parse(render_sensitivity_html({}))
    assert "Not measured: the analysis lists no layers." in empty.text
    with pytest.raises(OptionError, match="needs the analysis as a mapping"):
        render_sensitivity_html([1, 2])  # type: ignore[arg-type]


def test_write_is_atomic(analysis, tmp_path):
    target = tmp_path / "sensitivity.html"
    target.write_text("old")
    assert write_sensitivity_report(analysis, target) == target
    assert target.read_text(encoding="utf-8") == render_sensitivity_html(analysis)
    assert [p.name for p in tmp_path.iterdir()] == ["sensitivity.html"]  # no temporary file left
    with pytest.raises(OutputError, match="is a folder"):
        write_sensitivity_report(analysis, tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        write_sensitivity_report(analysis, tmp_path / "missing" / "x.html")
    with pytest.raises(OptionError):
        write_sensitivity_report(None, target)  # type: ignore[arg-type]
    assert target.read_text(encoding="utf-8") == render_sensitivity_html(analysis)  # untouched by the failure


# ---------------------------------------------------------------------------------------
# The line-chart primitive


def test_line_chart_scales_and_marks():
    line = Line("a", ((0.0, 0.0), (0.5, 0.25), (1.0, 1.0)), "#2563eb", mark=(0.5, 0.25), mark_note="chosen")
    flat = Line("b", ((0.0, 0.0), (1.0, 0.0)), "#f97316")
    for scale in ("linear", "sqrt"):
        page = parse(render_lines(LineChart("t", (line, flat, Line("empty", (), "#000")), y_scale=scale)))
        lines = page.find("polyline", "line")
        assert [a["data-name"] for a in lines] == ["a", "b"]  # a curve without points is not drawn
        (x0, y0), (x1, y1), (x2, y2) = polyline_points(lines[0])
        assert x1 - x0 == pytest.approx(x2 - x1, abs=0.02)  # x is linear
        # y: 0.25 is a quarter of the way up on a linear scale, half of it on a square-root scale
        share = (y0 - y1) / (y0 - y2)
        assert share == pytest.approx(0.25 if scale == "linear" else 0.5, abs=1e-3)
        assert polyline_points(lines[1])[0][1] == y0  # zero on both
        (mark,) = page.find("circle", "mark")
        assert (float(mark["cx"]), float(mark["cy"])) == pytest.approx((x1, y1), abs=0.02)
        assert "a: chosen" in page.text
        assert len(page.find("line", "swatch")) == 2  # legend: the drawn curves
    ticks = [t for t in parse(render_lines(LineChart("t", (line,), y_scale="sqrt"))).text.split() if t[0].isdigit()]
    assert "0.01" in ticks and "1" in ticks  # low ticks exist where the square-root scale spreads values
    assert not math.isnan(float(ticks[0]))


def test_predicted_loss_uses_the_planners_envelope_and_the_mark_the_measured_curve():
    dip = {"weight": "dip", "size": 10, "levels": [0.0, 0.25, 0.5, 0.75], "loss": [0.0, 0.1, 0.05, 0.2]}
    data = {"curves": [dip], "plan": {"plan": {"dip": 0.5}, "predicted_loss": 0.1, "fraction": 0.5}}
    page = parse(render_sensitivity_html(data))
    cells = layer_rows(page)["dip"]
    assert cells[-2][1] == "0.1000"  # running max: the dip at 50 % is not trusted
    (mark,) = page.find("circle", "mark")
    assert float(mark["data-y"]) == 0.05  # the dot sits on the measured curve
    assert float(mark["cy"]) == pytest.approx(polyline_points(page.find("polyline", "line")[0])[2][1], abs=0.02)


def _page_text(path: Path) -> str:
    text = re.sub(r"<style.*?</style>|<svg.*?</svg>", " ", path.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).replace("&#x27;", "'")


def test_the_structural_analysis_page_states_groups_data_goal_and_signs(tmp_path, untimed_latency):
    page, data = tmp_path / "a.html", FIXTURES / "cnn_digits.test.npz"
    args = [str(FIXTURES / "cnn_digits.onnx"), "--structural", "--data", str(data), "--samples", "48"]
    args += ["--target-latency", "0.8", "--report", str(page), "--json", str(tmp_path / "a.json"), "--workers", "1"]
    result = CliRunner().invoke(analyze_command, [*args, "--no-cache", "-q"])
    assert result.exit_code == 0, result.output
    text = _page_text(page)
    assert "not stated" not in text and "0 layers" not in text and "0 of 0" not in text
    assert "loss: 1 - cosine · 4 groups" in text and "groups analysed 4 (144 units)" in text
    assert f"data {data} (48 samples)" in text
    assert "goal keep 80 % of the latency (onnxprune analyze --target-latency 0.8)" in text
    assert "predicted latency saved 20 %" in text  # the goal, met by the plan's prediction
    assert "−-" not in text and "+-" not in text and "−+" not in text
    assert "Not measured: the analysis lists no layers" not in text  # no empty Layers section
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["goal"] == {"target_latency": 0.8} and saved["source"]["samples"] == 48
    assert all(float(f"{v:.4g}") == v for v in saved["plan"]["plan"].values())
