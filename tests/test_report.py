"""The HTML report: structure, self-containment, plots whose bars match the data, escaping,
graceful degradation on partial results, and atomic writing.

The realistic result is measured here for real: ``fixtures/cnn_digits.onnx`` and three
copies pruned by onnxprune at 0.3 / 0.5 / 0.7, run in onnxruntime on the fixture's test
split (accuracy against its labels, fidelity to the base, timed runs). No browser is
needed; ``tools/check_report.py`` renders the page in Chromium.
"""

from __future__ import annotations

import copy
import math
import os
import re
import stat
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper, shape_inference

import onnxprune
from onnxprune.errors import OnnxPruneError, OptionError, OutputError
from onnxprune.report import numbers as nb
from onnxprune.report import render_html, write_report
from onnxprune.report.charts import PALETTE, BarChart, Series, colors, nice_ticks, render, shorten, wrap
from onnxprune.report.plots import MAX_LAYERS
from onnxprune.report.structure import MAX_GROUPS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PLOTS = ("plot-size", "plot-accuracy", "plot-latency", "plot-latency-ratio", "plot-fidelity", "plot-compute")
COMPARED = {"plot-latency-ratio", "plot-fidelity"}  # one group per candidate, not per model
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr"}


# ---------------------------------------------------------------------------------------
# A real result: prune, run and time the fixture in onnxruntime


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _static(model: onnx.ModelProto, data: bytes) -> dict[str, Any]:
    """Sizes, per-tensor sparsity and MACs (batch 1) of a model."""
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = []
    for name, array in arrays.items():
        nonzeros = int(np.count_nonzero(array))
        layers.append(
            {
                "name": name,
                "scope": "",
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "parameters": int(array.size),
                "nonzeros": nonzeros,
                "sparsity": 1 - nonzeros / array.size,
                "dense_bytes": int(array.nbytes),
                "coo_bytes": nonzeros * (array.itemsize + 8 * array.ndim),
            }
        )
    fixed = copy.deepcopy(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = shape_inference.infer_shapes(fixed)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.output})
    nodes = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight = arrays[node.input[1]]
        positions = math.prod(shapes[node.output[0]][2:]) if node.op_type == "Conv" else 1
        nonzero = int(np.count_nonzero(weight))
        nodes.append(
            {
                "node": node.name,
                "op_type": node.op_type,
                "scope": "",
                "macs": weight.size * positions,
                "nonzero_macs": nonzero * positions,
                "weight": node.input[1],
                "density": nonzero / weight.size,
                "counted": True,
                "reason": None,
            }
        )
    parameters = sum(la["parameters"] for la in layers)
    nonzeros = sum(la["nonzeros"] for la in layers)
    dense = sum(la["dense_bytes"] for la in layers)
    macs = sum(n["macs"] for n in nodes)
    nonzero_macs = sum(n["nonzero_macs"] for n in nodes)
    return {
        "size": {
            "file_bytes": len(data),
            "compressed_bytes": len(zlib.compress(data, 6)),
            "sparse_bytes": len(data) - dense + sum(min(la["dense_bytes"], la["coo_bytes"]) for la in layers),
            "dense_weight_bytes": dense,
        },
        "params": {"parameters": parameters, "nonzeros": nonzeros, "sparsity": 1 - nonzeros / parameters},
        "layers": layers,
        "compute": {
            "macs": macs,
            "nonzero_macs": nonzero_macs,
            "flops": 2 * macs,
            "nonzero_flops": 2 * nonzero_macs,
            "other": {},
            "nodes": nodes,
            "uncounted": [],
            "notes": [],
        },
    }


def _fidelity(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    a, b = reference.ravel().astype(np.float64), logits.ravel().astype(np.float64)
    return {
        "top1_agreement": float(np.mean(reference.argmax(1) == logits.argmax(1))),
        "cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
        "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
        "max_abs": float(np.max(np.abs(a - b))),
    }


def measure(sparsities: tuple[float, ...] = (0.3, 0.5, 0.7), repeats: int = 15) -> dict[str, Any]:
    base = onnx.load(str(FIXTURES / "cnn_digits.onnx"))
    protos = [base] + [onnxprune.prune(base, onnxprune.PruneConfig(sparsity=s))[0] for s in sparsities]
    names = ["cnn_digits.onnx"] + [f"cnn_digits.p{round(100 * s)}.onnx" for s in sparsities]
    blobs = [p.SerializeToString() for p in protos]
    sessions = [_session(b) for b in blobs]
    x = np.load(FIXTURES / "cnn_digits.test.npz")["input"]
    labels = np.load(FIXTURES / "cnn_digits.test_labels.npy")
    outputs = [s.run(["logits"], {"input": x})[0] for s in sessions]
    times = np.zeros((len(sessions), repeats))
    one = {"input": x[:1]}
    for r in range(repeats + 2):  # interleaved: every model sees the same machine state
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, one)
            if r >= 2:
                times[i, r - 2] = (time.perf_counter() - start) * 1e3
    models = []
    for i, (proto, blob, logits) in enumerate(zip(protos, blobs, outputs, strict=True)):
        ratios = times[i] / times[0]
        top5 = np.argsort(-logits, axis=1)[:, :5]
        model = {
            "name": names[i],
            "path": f"out/{names[i]}",
            "role": "base" if i == 0 else "candidate",
            **_static(proto, blob),
            "latency": {
                "median_ms": float(np.median(times[i])),
                "p90_ms": float(np.percentile(times[i], 90)),
                "min_ms": float(times[i].min()),
                "mean_ms": float(times[i].mean()),
                "repeats": repeats,
                "ratio": None
                if i == 0
                else {k: float(np.percentile(ratios, q)) for k, q in (("p10", 10), ("median", 50), ("p90", 90))},
                "peak_memory_bytes": None,
            },
            "accuracy": {
                "top1": float(np.mean(logits.argmax(1) == labels)),
                "top5": float(np.mean((top5 == labels[:, None]).any(1))),
                "samples": len(labels),
                "metric": None,
            },
            "fidelity": None
            if i == 0
            else {"outputs": {"logits": _fidelity(outputs[0], logits)}, "overall": _fidelity(outputs[0], logits)},
            "warnings": []
            if i == 0
            else [
                "onnxruntime will not run this faster: its zeros are unstructured and every tensor keeps its dense shape."
            ],
        }
        models.append(model)
    return {
        "tool": {"name": "onnxprune", "version": onnxprune.__version__},
        "created": "2026-11-21T10:00:00Z",
        "environment": {"cpu": "test", "cores": os.cpu_count(), "onnxruntime": ort.__version__, "threads": 1},
        "data": {
            "kind": "npz",
            "source": "fixtures/cnn_digits.test.npz",
            "samples": len(labels),
            "batch_size": len(labels),
            "synthetic": False,
            "labels": "fixtures/cnn_digits.test_labels.npy",
            "output": "logits",
        },
        "settings": {"warmup": 2, "repeats": repeats, "input_shapes": {"input": [1, 1, 8, 8]}},
        "models": models,
    }


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return measure()


# ---------------------------------------------------------------------------------------
# Reading the page back


class Page(HTMLParser):
    """Tags, ids, per-figure SVG content and nesting errors of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: dict[str, dict[str, str | None]] = {}
        self.figures: dict[str, dict[str, Any]] = {}
        self.figure: str | None = None
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_parts: list[str] = []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> dict[str, str | None]:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            if a["id"] in self.ids:
                self.errors.append(f"duplicate id {a['id']}")
            self.ids[a["id"]] = a
        if tag == "figure":
            self.figure = a.get("id")
            self.figures[self.figure or ""] = {"svg": 0, "bars": [], "class": a.get("class"), "text": [], "caption": 0}
        elif self.figure is not None:
            figure = self.figures[self.figure]
            if tag == "svg":
                figure["svg"] += 1
            if tag == "figcaption":
                figure["caption"] += 1
            if tag == "rect" and a.get("class") == "bar":
                figure["bars"].append(a)
        return a

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
        if tag == "figure":
            self.figure = None

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        if self.figure is not None:
            self.figures[self.figure]["text"].append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.text_parts).split())


def parse(text: str) -> Page:
    page = Page(text)
    assert page.errors == []
    return page


def assert_self_contained(text: str) -> None:
    assert not re.search(r"https?://", text)
    assert not re.search(r"\b(src|href)\s*=", text, re.I)
    assert not re.search(r"<(script|link|iframe|object|embed|img)\b", text, re.I)
    assert "@import" not in text and "url(" not in text


def bar_values(figure: dict[str, Any]) -> list[float]:
    return [float(b["data-value"]) for b in figure["bars"]]


# ---------------------------------------------------------------------------------------
# The realistic report


def test_report_parses_is_self_contained_and_has_every_section(result):
    text = render_html(result)
    page = parse(text)
    assert_self_contained(text)
    for section in ("summary", "warnings", "plots", "layers", "compute", "data", "environment", "settings"):
        assert section in page.ids, section
    assert text.startswith("<!DOCTYPE html>")
    assert "Pruning report" in page.text and "onnxprune 0.1.0" in page.text and "2026-11-21 10:00 UTC" in page.text
    # the warning of each candidate, shared by all three, is shown once in a highlighted box
    assert page.text.count("onnxruntime will not run this faster") == 1
    assert any(a.get("class") == "warning" for tag, a in page.tags if tag == "div")
    # collapsible detail tables
    assert sum(1 for tag, _ in page.tags if tag == "details") >= 2


def test_every_plot_is_an_svg_with_one_bar_per_model_and_series(result):
    page = parse(render_html(result))
    models = result["models"]
    for plot_id in (*PLOTS, "plot-sparsity"):
        figure = page.figures[plot_id]
        assert figure["svg"] == 1 and figure["caption"] == 1, plot_id
        wanted = len(models) - 1 if plot_id in COMPARED else len(models)
        assert len(figure["bars"]) >= wanted, plot_id
    sizes = page.figures["plot-size"]
    assert len(sizes["bars"]) == 3 * len(models)  # file, compressed, sparse for every model
    assert len(page.figures["plot-compute"]["bars"]) == 2 * len(models)
    assert len(page.figures["plot-accuracy"]["bars"]) == 2 * len(models)


def test_plot_bars_carry_the_measured_values_at_proportional_heights(result):
    page = parse(render_html(result))
    bars = page.figures["plot-size"]["bars"]
    expected = [m["size"][key] for m in result["models"] for key in ("file_bytes", "compressed_bytes", "sparse_bytes")]
    assert sorted(bar_values(page.figures["plot-size"])) == sorted(float(v) for v in expected)
    scale = {float(b["height"]) / float(b["data-value"]) for b in bars}
    assert max(scale) - min(scale) < 0.02 * max(scale)  # height ∝ value, up to 0.01 px rounding
    bottoms = {round(float(b["y"]) + float(b["height"]), 1) for b in bars}
    assert len(bottoms) == 1  # every bar stands on the same zero line
    # pruning really shrank the compressed file: the 0.7 candidate's compressed bar is the shortest of its series
    compressed = [float(b["height"]) for b in bars if b["fill"] == PALETTE[1]]
    assert compressed == sorted(compressed, reverse=True)
    latency = page.figures["plot-latency"]["bars"]
    assert [float(b["data-value"]) for b in latency] == [m["latency"]["median_ms"] for m in result["models"]]


def test_sparsity_plot_shows_the_pruned_layers_of_each_candidate(result):
    page = parse(render_html(result))
    figure = page.figures["plot-sparsity"]
    assert "wide" in (figure["class"] or "")
    pruned = [la for la in result["models"][1]["layers"] if la["sparsity"] > 0]
    assert len(figure["bars"]) == 3 * len(pruned)  # layers without zeros are left out
    assert "without any zero" in " ".join(figure["text"])
    for bar in figure["bars"]:  # horizontal bars: width ∝ sparsity, on a 0..100 % axis
        assert 0 < float(bar["data-value"]) < 1
    widths = {float(b["width"]) / float(b["data-value"]) for b in figure["bars"]}
    assert max(widths) - min(widths) < 0.01 * max(widths)


def test_summary_shows_human_numbers_exact_tooltips_and_best_values(result):
    text = render_html(result)
    base, *candidates = result["models"]
    top1 = base["accuracy"]["top1"]
    assert nb.fmt_percent(top1) in text
    assert f'title="top-1 {nb.exact(top1)} on 450 samples"' in text
    assert nb.fmt_bytes(base["size"]["file_bytes"]) in text
    assert f"{base['size']['file_bytes']:,} bytes" in text
    smallest = min(result["models"], key=lambda m: m["size"]["compressed_bytes"])
    best = re.findall(r'<td class="num best" title="deflate-compressed: ([\d,]+) bytes">', text)
    assert best == [f"{smallest['size']['compressed_bytes']:,}"]
    assert "Highlighted" in text
    # one line per candidate against the base
    assert len(re.findall(r"<li><strong>cnn_digits\.p\d+\.onnx</strong>", text)) == len(candidates)


# ---------------------------------------------------------------------------------------
# Edge cases


def test_no_candidates_leaves_out_the_comparisons(result):
    alone = copy.deepcopy(result)
    alone["models"] = alone["models"][:1]
    page = parse(render_html(alone))
    assert "plot-latency-ratio" not in page.ids and "plot-fidelity" not in page.ids
    for plot_id in ("plot-size", "plot-accuracy", "plot-latency", "plot-compute", "plot-sparsity"):
        assert page.figures[plot_id]["svg"] == 1 and page.figures[plot_id]["bars"], plot_id
    assert "Fidelity to base" not in page.text and "Highlighted" not in page.text
    assert "no candidates" in page.text and "Model report" in page.text


def test_no_labels_plots_agreement_with_the_base_instead(result):
    unlabelled = copy.deepcopy(result)
    unlabelled["data"]["labels"] = None
    for model in unlabelled["models"]:
        model["accuracy"] = None
    page = parse(render_html(unlabelled))
    accuracy = page.figures["plot-accuracy"]
    assert "Agreement with the base (no labels)" in " ".join(accuracy["text"])
    agreement = [float(b["data-value"]) for b in accuracy["bars"] if b["fill"] == PALETTE[0]]
    assert agreement == [m["fidelity"]["overall"]["top1_agreement"] for m in unlabelled["models"][1:]]
    assert "Not measured: accuracy" in page.text
    assert "synthetic-data" not in page.ids and "Synthetic data" not in page.text


def test_synthetic_data_is_shown_prominently(result):
    synthetic = copy.deepcopy(result)
    synthetic["data"].update(synthetic=True, labels=None, kind="synthetic", source="random normal")
    for model in synthetic["models"]:
        model["accuracy"] = None
    text = render_html(synthetic)
    page = parse(text)
    assert "synthetic-data" in page.ids
    assert "Synthetic data: fidelity only, not accuracy." in page.text
    # the banner comes before the summary
    assert text.index('id="synthetic-data"') < text.index('id="summary"')


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"models": None, "data": None, "environment": None, "settings": None, "tool": None, "created": None},
        {"models": "not a list", "created": 12},
        {"models": [None, 3, "x"]},
        {"models": [{}]},
        {"models": [{"name": None, "layers": None, "compute": None}, {"latency": {"ratio": {"median": None}}}]},
        {"models": [{"size": {"file_bytes": float("nan")}, "latency": {"median_ms": float("inf")}}]},
        {"models": [{"layers": [None, {"name": None, "sparsity": "half"}], "compute": {"nodes": [None, {}]}}]},
    ],
)
def test_partial_results_render_and_say_not_measured(broken):
    text = render_html(broken)
    page = parse(text)
    assert_self_contained(text)
    assert "summary" in page.ids
    assert "Not measured" in page.text or "Not recorded" in page.text


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key and list-element path of a nested result."""
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append((*prefix, key))
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.append((*prefix, index))
            out.extend(_paths(item, (*prefix, index)))
    return out


def test_any_single_value_missing_null_or_mistyped_renders(result):
    small = copy.deepcopy(result)
    small["models"] = small["models"][:2]
    for model in small["models"]:
        model["layers"] = model["layers"][:2]
        model["compute"]["nodes"] = model["compute"]["nodes"][:2]
    paths = _paths(small)
    assert len(paths) > 200
    for path in paths:
        for mutation in ("delete", None, "text", -1):
            broken = copy.deepcopy(small)
            parent = broken
            for key in path[:-1]:
                parent = parent[key]
            if mutation == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = mutation
            text = render_html(broken)  # never raises
            if mutation is None:  # and stays well-formed (parsing every variant would be slow)
                parse(text)
            else:
                assert text.endswith("</html>\n")


def test_markup_in_names_is_escaped(result):
    evil = copy.deepcopy(result)
    evil["models"][1]["name"] = '"><b onmouseover=alert(1)>model'
    evil["models"][1]["layers"][1]["name"] = "<script>alert(1)</script>"
    evil["models"][1]["compute"]["nodes"][0]["node"] = "<script>alert(2)</script>"
    evil["models"][1]["warnings"] = ["<img src=x onerror=alert(3)>"]
    evil["models"][1]["fidelity"]["outputs"] = {"<i>out</i>": evil["models"][1]["fidelity"]["overall"]}
    evil["data"]["source"] = "</style><script>alert(4)</script>"
    text = render_html(evil)
    page = parse(text)
    assert "<script" not in text.lower() and "<img" not in text.lower() and "<b " not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>alert(1)</script>" in page.text  # shown to the reader as text
    assert "&lt;img src=x onerror=alert(3)&gt;" in text
    assert_self_contained(text.replace("src=x", ""))  # the escaped warning text aside


def test_500_layers_are_capped_in_the_plot_and_listed_in_the_table(result):
    big = copy.deepcopy(result)
    rng = np.random.default_rng(0)
    for index, model in enumerate(big["models"]):
        layers = []
        for i in range(500):
            n = 64 * (1 + i % 37)
            zeros = 0 if index == 0 else int(n * rng.uniform(0.1, 0.9))
            name = f"encoder.layers.{i}.mlp.weight" if i != 7 else "<script>x</script>"
            layers.append(
                {"name": name, "scope": "", "shape": [n // 64, 64], "dtype": "float32", "parameters": n,
                 "nonzeros": n - zeros, "sparsity": zeros / n, "dense_bytes": 4 * n, "coo_bytes": 12 * (n - zeros)}
            )  # fmt: skip
        model["layers"] = layers
    start = time.perf_counter()
    text = render_html(big)
    elapsed = time.perf_counter() - start
    page = parse(text)
    figure = page.figures["plot-sparsity"]
    assert len(figure["bars"]) == MAX_LAYERS * (len(big["models"]) - 1)
    assert f"Showing the {MAX_LAYERS} largest of 500 layers" in " ".join(figure["text"])
    # the largest layers were kept, in model order
    first = big["models"][1]["layers"]
    largest = sorted(range(500), key=lambda i: -first[i]["parameters"])[:MAX_LAYERS]
    shown = [float(b["data-value"]) for b in figure["bars"] if b["fill"] == PALETTE[0]]
    assert shown == [first[i]["sparsity"] for i in sorted(largest)]
    # the table lists all 500 (and the nodes table its nodes); the markup in a name is escaped
    assert len(re.findall(r'<td class="name"', text)) == 500 + len(result["models"][0]["compute"]["nodes"])
    assert "&lt;script&gt;x&lt;/script&gt;" in text and "<script>" not in text
    assert elapsed < 2.0


def test_many_candidates_turn_the_model_charts_horizontal_with_distinct_colours(result):
    many = copy.deepcopy(result)
    for i in range(6):
        extra = copy.deepcopy(many["models"][2])
        extra["name"] = f"cnn_digits.variant{i}.onnx"
        many["models"].append(extra)
    page = parse(render_html(many))
    assert "wide" in page.figures["plot-size"]["class"]
    fills = {b["fill"] for b in page.figures["plot-sparsity"]["bars"]}
    assert len(fills) == len(many["models"]) - 1
    assert len(set(colors(20))) == 20


def test_render_refuses_a_non_mapping_with_one_line():
    with pytest.raises(OptionError) as caught:
        render_html(["models"])  # type: ignore[arg-type]
    assert "\n" not in str(caught.value) and "to_dict" in str(caught.value)


# ---------------------------------------------------------------------------------------
# Charts on known values


def _rects(svg: str) -> list[dict[str, str]]:
    page = Page(f"<figure id='x'>{svg}</figure>")
    return page.figures["x"]["bars"]


def test_vertical_bars_are_proportional_to_known_values():
    values = (1.0, 2.0, 4.0, 0.5)
    svg = render(
        BarChart(title="t", categories=("a", "b", "c", "d"), series=(Series("s", values, PALETTE[0]),), plot_height=200)
    )
    rects = _rects(svg)
    assert [float(r["data-value"]) for r in rects] == list(values)
    heights = [float(r["height"]) for r in rects]
    for value, height in zip(values, heights, strict=True):
        assert height == pytest.approx(heights[2] * value / 4.0, abs=0.01)
    # the axis runs to a nice tick (4 → 4), so the largest bar fills the plot height
    assert heights[2] == pytest.approx(200.0, abs=0.01)
    assert len({round(float(r["y"]) + float(r["height"]), 2) for r in rects}) == 1


def test_grouped_horizontal_bars_with_negative_values_and_whiskers():
    series = (
        Series("gain", (0.5, -0.25, None), PALETTE[0], low=(0.4, -0.3, None), high=(0.6, -0.2, None)),
        Series("loss", (1.0, 0.75, 0.25), PALETTE[1]),
    )
    svg = render(BarChart(title="t", categories=("x", "y", "z"), series=series, horizontal=True, width=600))
    rects = _rects(svg)
    assert len(rects) == 5  # None draws no bar
    width_per_unit = {float(r["width"]) / abs(float(r["data-value"])) for r in rects}
    assert max(width_per_unit) - min(width_per_unit) < 0.05
    negative = next(r for r in rects if float(r["data-value"]) < 0)
    positive = next(r for r in rects if float(r["data-value"]) == 0.5)
    assert float(negative["x"]) + float(negative["width"]) == pytest.approx(float(positive["x"]), abs=0.02)
    assert svg.count('class="whisker"') == 2
    assert svg.count('class="swatch"') == 2  # a legend for two series


def test_domain_max_fixes_the_axis_and_a_reference_line_is_drawn():
    svg = render(
        BarChart(
            title="r",
            categories=("a",),
            series=(Series("s", (0.5,), PALETTE[0]),),
            domain_max=1.0,
            plot_height=100,
            reference=1.0,
            reference_label="base",
        )
    )
    (rect,) = _rects(svg)
    assert float(rect["height"]) == pytest.approx(50.0, abs=0.01)
    assert 'class="reference"' in svg and ">base<" in svg


def test_chart_text_is_escaped():
    svg = render(BarChart(title="<t>", categories=("<a&b>",), series=(Series('"s"', (1.0,), PALETTE[0]),)))
    assert "<t>" not in svg and "&lt;t&gt;" in svg and "&lt;a&amp;b&gt;" in svg
    Page(svg)


def test_nice_ticks_and_label_helpers():
    assert nice_ticks(0, 183) == [0, 50, 100, 150, 200]
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.3, 1.1) == [-0.5, 0, 0.5, 1.0, 1.5]
    assert nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert shorten("abcdefghij", 5) == "a…hij"
    assert shorten("short", 10) == "short"
    assert wrap("cnn_digits.pruned.onnx", 12) == ["cnn_digits.", "pruned.onnx"]
    assert all(len(line) <= 8 for line in wrap("a_very_long_model_name_indeed.onnx", 8))


def test_number_formats():
    assert nb.fmt_bytes(123456) == "121 KiB"
    assert nb.fmt_bytes(512) == "512 B"
    assert nb.fmt_bytes(5 * 1024**2) == "5.00 MiB"
    assert nb.fmt_count(1_234_567) == "1.23 M"
    assert nb.fmt_count(30000) == "30.0 k"
    assert nb.fmt_percent(0.982) == "98.2 %"
    assert nb.fmt_percent(0.0003) == "0.03 %"
    assert nb.fmt_percent(0.9996) == "99.96 %"
    assert nb.fmt_ms(0.41) == "0.410 ms"
    assert nb.fmt_ratio(0.98) == "0.98×"
    assert nb.exact(123456, "bytes") == "123,456 bytes"
    assert nb.exact(None) == "not measured"
    assert nb.fmt_created("2026-11-21T10:00:00Z") == "2026-11-21 10:00 UTC"
    assert nb.fmt_shape([16, 1, 3, 3]) == "16×1×3×3"
    for missing in (None, "x", float("nan"), True):
        assert nb.fmt_bytes(missing) == nb.MISSING


# ---------------------------------------------------------------------------------------
# Writing


def test_write_report_writes_atomically_and_replaces(tmp_path, result):
    target = tmp_path / "report.html"
    target.write_text("old")
    written = write_report(result, target)
    assert written == target
    assert target.read_text(encoding="utf-8") == render_html(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary file left
    fresh = write_report(result, tmp_path / "new.html")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


def test_write_report_keeps_the_old_file_when_rendering_fails(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(OptionError):
        write_report("not a result", target)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_report_keeps_the_old_file_when_the_rename_fails(tmp_path, result, monkeypatch):
    import onnxprune.report as report_module

    target = tmp_path / "report.html"
    target.write_text("old")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module.os, "replace", failing_replace)
    with pytest.raises(OutputError) as caught:
        write_report(result, target)
    assert "No space left on device" in str(caught.value) and "\n" not in str(caught.value)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_report_errors_are_one_line(tmp_path, result):
    with pytest.raises(OutputError, match="does not exist"):
        write_report(result, tmp_path / "missing" / "report.html")
    with pytest.raises(OutputError, match="is a folder"):
        write_report(result, tmp_path)
    assert issubclass(OutputError, OnnxPruneError)


# ---------------------------------------------------------------------------------------
# The real evaluator's output


def test_the_evaluators_result_renders_with_every_plot(tmp_path):
    evaluate = pytest.importorskip("onnxprune.evaluation")
    latency = pytest.importorskip("onnxprune.latency")
    pruned = tmp_path / "cnn_digits.p50.onnx"
    onnxprune.prune_file(FIXTURES / "cnn_digits.onnx", pruned, onnxprune.PruneConfig(sparsity=0.5))
    outcome = evaluate.evaluate(
        FIXTURES / "cnn_digits.onnx",
        [pruned],
        data=FIXTURES / "cnn_digits.test.npz",
        labels=FIXTURES / "cnn_digits.test_labels.npy",
        options=evaluate.EvalOptions(latency=latency.LatencySettings(warmup=1, repeats=5)),
    )
    page = parse(write_report(outcome.to_dict(), tmp_path / "report.html").read_text(encoding="utf-8"))
    for plot_id in (*PLOTS, "plot-sparsity"):
        assert page.figures[plot_id]["svg"] == 1 and page.figures[plot_id]["bars"], plot_id
    assert "cnn_digits.p50.onnx" in page.text


# ---------------------------------------------------------------------------------------
# The structural pass's section


@pytest.fixture(scope="module")
def structural(tmp_path_factory) -> dict[str, Any]:
    """The evaluator's result for the mask-pruned CNN, its dead channels removed (exact) and 30 %
    of every group's channels removed (by weight norm), on the fixture's test split."""
    evaluate = pytest.importorskip("onnxprune.evaluation")
    folder = tmp_path_factory.mktemp("report_structure")
    base = FIXTURES / "masked" / "cnn_masked.onnx"
    dead, s30 = folder / "dead.onnx", folder / "s30.onnx"
    onnxprune.prune_file(base, dead, None, structure=onnxprune.StructureConfig())
    onnxprune.prune_file(base, s30, None, structure=onnxprune.StructureConfig(amount=0.3))
    outcome = evaluate.evaluate(
        base, [dead, s30], data=FIXTURES / "masked" / "cnn_masked.test.npz", options=evaluate.EvalOptions(latency=None)
    )
    return outcome.to_dict()


def _details(text: str, cls: str) -> list[Page]:
    return [parse(m) for m in re.findall(rf'<details class="{cls}">.*?</details>', text, re.S)]


def test_structure_section_shows_totals_groups_chart_and_blocked_reasons(structural):
    text = render_html(structural)
    page = parse(text)
    assert_self_contained(text)
    assert "structure" in page.ids and "Channels removed (structural pass)" in page.text
    assert page.text.index("Channels removed (structural pass)") > page.text.index("Plots")
    blocked_boxes = _details(text, "blocked")
    assert len(blocked_boxes) == 2
    for index in (1, 2):
        model = structural["models"][index]
        s = model["structure"]
        assert s is not None and s["groups"] and s["blocked"]
        assert f"structure-{index}" in page.ids
        block = parse(
            re.search(rf'<div class="structure-model" id="structure-{index}">(.*?)</details></div>', text, re.S)[1]
            + "</details>"
        )
        # one table row per changed group, and a totals row
        for g in s["groups"]:
            assert g["group"] in block.text
            share = (g["channels_before"] - g["channels_after"]) / g["channels_before"]
            assert f"{g['channels_before']} → {g['channels_after']} {nb.fmt_percent(share)}" in block.text
        removed = sum(g["channels_before"] - g["channels_after"] for g in s["groups"])
        before = sum(g["channels_before"] for g in s["groups"])
        assert f"removed {removed} of {before} channels in {len(s['groups'])} groups" in block.text
        assert f"{nb.fmt_count(s['params']['before'])} → {nb.fmt_count(s['params']['after'])}" in block.text
        assert f"{nb.fmt_count(s['macs']['before'])} → {nb.fmt_count(s['macs']['after'])}" in block.text
        assert ("Exact max |Δ|" in block.text) == (s["exact_max_diff"] is not None)
        # the chart: a before and an after bar per group, in table order, lengths from the same zero
        figure = page.figures[f"plot-structure-{index}"]
        assert figure["svg"] == 1 and "wide" in figure["class"]
        expected = [float(v) for g in s["groups"] for v in (g["channels_before"], g["channels_after"])]
        assert bar_values(figure) == expected
        bars = figure["bars"]
        scale = {float(b["width"]) / float(b["data-value"]) for b in bars}
        assert max(scale) - min(scale) < 0.02 * max(scale)
        assert {b["fill"] for b in bars[::2]} == {PALETTE[0]} and {b["fill"] for b in bars[1::2]} == {PALETTE[2]}
        # blocked groups and their reasons, folded away
        box = blocked_boxes[index - 1]
        assert f"Blocked groups ({len(s['blocked'])})" in box.text
        for b in s["blocked"]:
            assert b["group"] in box.text and b["reason"] in box.text
    # the exact run says so; the one that removed live channels does not claim exactness
    assert structural["models"][1]["structure"]["exact_max_diff"] is not None
    assert structural["models"][2]["structure"]["exact_max_diff"] is None
    # fewer parameters and dense MACs than the base: the smallest of their columns are marked best
    smallest = min(structural["models"], key=lambda m: m["params"]["parameters"])
    assert f'<td class="num best" title="{smallest["params"]["parameters"]:,} parameters">' in text
    fewest = min(m["compute"]["macs"] for m in structural["models"])
    assert re.search(rf'<td class="num best" title="{fewest:,} MACs;', text)
    # the summary names the pass for each candidate
    highlights = parse(re.search(r'<ul class="highlights">.*?</ul>', text, re.S)[0]).text
    assert highlights.count("structural pass removed") == 2


def test_no_structure_no_section(result):
    text = render_html(result)
    page = parse(text)
    assert "structure" not in page.ids and "Channels removed" not in page.text
    assert not any(p.startswith("plot-structure") for p in page.figures)
    assert "structural pass" not in page.text


def test_a_pass_that_changed_no_group_says_so(structural):
    quiet = copy.deepcopy(structural)
    quiet["models"] = quiet["models"][:2]
    quiet["models"][1]["structure"]["groups"] = []
    quiet["models"][1]["structure"]["blocked"] = []
    page = parse(render_html(quiet))
    assert "The structural pass changed no group." in page.text and "No group was blocked." in page.text
    assert "plot-structure-1" not in page.figures


def test_many_groups_are_capped_in_the_chart_and_listed_in_the_table(structural):
    big = copy.deepcopy(structural)
    big["models"] = big["models"][:2]
    groups = [
        {"group": f"/layers.{i}/Conv", "channels_before": 8 + i, "channels_after": 4 + i // 2,
         "dead_channels": 0, "params_removed": 100 * i}
        for i in range(60)
    ]  # fmt: skip
    big["models"][1]["structure"]["groups"] = groups
    text = render_html(big)
    page = parse(text)
    figure = page.figures["plot-structure-1"]
    assert len(figure["bars"]) == 2 * MAX_GROUPS
    assert f"Showing the {MAX_GROUPS} largest of 60 changed groups" in " ".join(figure["text"])
    assert bar_values(figure)[::2] == [float(g["channels_before"]) for g in groups[20:]]  # the largest, in order
    table = re.search(r'<table class="detail-table structure-groups">.*?</table>', text, re.S)[0]
    assert len(re.findall(r"<tr><td", table)) == 60


def test_structure_values_missing_null_or_mistyped_render(structural):
    small = copy.deepcopy(structural)
    small["models"] = small["models"][:2]
    small["models"][0]["layers"] = small["models"][1]["layers"] = []
    small["models"][1]["structure"]["groups"] = small["models"][1]["structure"]["groups"][:2]
    for path in _paths(small["models"][1]["structure"], ("models", 1, "structure")):
        for mutation in ("delete", None, "text", -1, {"<b>": 1}):
            broken = copy.deepcopy(small)
            parent = broken
            for key in path[:-1]:
                parent = parent[key]
            if mutation == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = mutation
            text = render_html(broken)  # never raises
            assert text.endswith("</html>\n") and "<b>" not in text
    for value in (None, "text", [], 7):
        broken = copy.deepcopy(small)
        broken["models"][1]["structure"] = value
        assert "structure-1" not in parse(render_html(broken)).ids


def test_markup_in_group_names_and_reasons_is_escaped(structural):
    evil = copy.deepcopy(structural)
    s = evil["models"][1]["structure"]
    s["groups"][0]["group"] = "<script>alert(1)</script>"
    s["blocked"][0]["reason"] = '"><img src=x onerror=alert(2)>'
    s["options"] = {"<i>k</i>": "<b>v</b>"}
    text = render_html(evil)
    page = parse(text)
    assert "<script" not in text.lower() and "<img" not in text.lower() and "<b>" not in text
    assert "<script>alert(1)</script>" in page.text and "<i>k</i>: <b>v</b>" in page.text


def _with_ratio(result: dict[str, Any], p10: float, median: float, p90: float) -> dict[str, Any]:
    """``result`` with every candidate's latency ratio replaced (conclusive or not, as the evaluator says)."""
    from onnxprune.latency import RatioStats

    changed = copy.deepcopy(result)
    for i, model in enumerate(changed["models"][1:]):
        ratio = RatioStats(median * (1 + 0.01 * i), p10, p90)
        model["latency"]["ratio"] = ratio.to_dict()
        model["latency"]["median_ms"] = changed["models"][0]["latency"]["median_ms"] * ratio.median
    return changed


def test_noisy_latency_is_said_and_never_highlighted_as_best(result):
    from onnxprune.latency import TOO_NOISY

    noisy = render_html(_with_ratio(result, 0.25, 0.60, 4.04))
    assert TOO_NOISY in noisy and "no latency is highlighted as best" in noisy
    assert not re.search(r'<td class="num best" title="median: ', noisy)  # the latency column
    assert not re.search(r'<td class="num best" title="candidate / base latency', noisy)
    assert f"latency {TOO_NOISY} (0.60×, p10–p90 0.25–4.04)" in noisy  # the candidate's line
    clear = render_html(_with_ratio(result, 0.55, 0.60, 0.65))
    assert TOO_NOISY not in clear
    assert re.search(r'<td class="num best" title="candidate / base latency', clear)


def test_each_candidate_says_how_it_was_made(result, tmp_path):
    from onnxprune.provenance import read_recipe, recipe_text

    pruned = tmp_path / "p30.onnx"
    onnxprune.prune_file(FIXTURES / "cnn_digits.onnx", pruned, onnxprune.PruneConfig(sparsity=0.3))
    recipe = read_recipe(onnx.load(pruned))
    assert recipe is not None and recipe["method"] == "magnitude" and recipe["sparsity"] == 0.3
    changed = copy.deepcopy(result)
    changed["models"][1]["recipe"] = recipe
    text = render_html(changed)
    assert "made with magnitude, 30 %" in text and text.count("made with") == 1
    assert recipe_text({"method": "sparsegpt", "pattern": "2:4", "sparsity": None, "allocator": "curves"}) == (
        "sparsegpt, 2:4 pattern, curves allocation"
    )
    assert read_recipe(onnx.load(FIXTURES / "cnn_digits.onnx")) is None


def test_close_accuracies_get_a_zoomed_axis_whose_bars_still_compare(result):
    from onnxprune.report.plots import zoom_floor

    changed = copy.deepcopy(result)
    accuracies = ((0.991, 1.0), (0.989, 1.0), (0.985, 0.999), (0.97, 0.998))
    for model, (top1, top5) in zip(changed["models"], accuracies, strict=True):
        model["accuracy"].update(top1=top1, top5=top5)
    floor = zoom_floor([0.991, 0.989, 0.985, 0.97, 1.0, 1.0, 0.999, 0.998])
    assert floor == 0.95  # 0.97 less half the 3-point spread, down to a whole percent
    page = parse(render_html(changed))
    figure = page.figures["plot-accuracy"]
    assert "The axis starts at 95" in " ".join(figure["text"])  # a nice tick: the caption names the axis' start
    bars = [b for b in figure["bars"] if b["fill"] == PALETTE[0]]  # top-1
    heights = [float(b["height"]) / (float(b["data-value"]) - 0.95) for b in bars]
    assert max(heights) - min(heights) < 0.02 * max(heights)  # length ∝ value − axis start
    assert zoom_floor([0.4, 0.9]) is None and zoom_floor([0.99]) is None  # far apart, or alone: from 0


def test_pareto_charts_place_every_model_and_join_the_front(result):
    from onnxprune.report.plots import pareto_front

    assert pareto_front([(1.0, 0.99), (0.8, 0.98), (0.9, 0.97), (0.5, 0.90), (0.6, 0.89)]) == [
        (0.5, 0.90),
        (0.8, 0.98),
        (1.0, 0.99),
    ]
    html = render_html(result)
    page = parse(html)
    for plot_id in ("plot-pareto-size", "plot-pareto-latency"):
        text = " ".join(page.figures[plot_id]["text"])
        assert "Pareto front" in text and "up and to the left is better" in text
        raw = re.search(rf'<figure id="{plot_id}".*?</figure>', html, flags=re.S).group(0)
        assert raw.count('<circle class="mark"') == len(result["models"])  # one point per model
        assert raw.count('<polyline class="line"') >= 1  # the front
    assert "plot-pareto-size" not in parse(render_html({**result, "models": result["models"][:2]})).figures
