"""The command line on real fixtures: tables, JSON report, plan, external data, provenance."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.graph.walk import all_tensors

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CNN = FIXTURES / "cnn_digits.onnx"


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_prune_prints_layers_summary_and_writes_json(tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = _invoke("prune", CNN, out, "--sparsity", "0.5", "--json", report)
    assert result.exit_code == 0, result.output
    assert "weight" in result.output and "before" in result.output and "after" in result.output
    assert "compressed (deflate)" in result.output
    assert "not the latency" in result.output  # the honest note
    data = json.loads(report.read_text())
    assert data["totals"]["sparsity_after"] >= 0.5
    pruned = [layer for layer in data["layers"] if layer["pruned"]]
    assert pruned and all(layer["sparsity_after"] >= 0.5 for layer in pruned)
    assert all(layer["reason"] for layer in data["layers"] if not layer["pruned"])
    comp_in, comp_out = data["model"]["compressed_bytes"]
    assert comp_out < comp_in  # zeros compress
    onnx.checker.check_model(str(out), full_check=True)


def test_quiet_prints_one_summary_line(tmp_path):
    result = _invoke("prune", CNN, tmp_path / "o.onnx", "--sparsity", "0.3", "-q")
    assert result.exit_code == 0
    assert len(result.output.strip().splitlines()) == 1
    assert "weights are zero" in result.output


def test_quiet_computes_no_compressed_size_unless_shown(tmp_path, monkeypatch):
    """-q shows no sizes, so the default estimate is not computed; --json or --compressed-size
    still get theirs."""
    import onnxprune.stats

    calls = []
    deflate = onnxprune.stats.deflate_size
    monkeypatch.setattr(onnxprune.stats, "deflate_size", lambda *a, **k: calls.append(a[1]) or deflate(*a, **k))
    quiet = _invoke("prune", CNN, tmp_path / "o.onnx", "--sparsity", "0.3", "-q")
    assert quiet.exit_code == 0 and calls == ["off", "off"]
    assert quiet.output.startswith("pruned ") and quiet.output.count("\n") == 1  # the summary line alone
    report = tmp_path / "r.json"
    assert _invoke("prune", CNN, tmp_path / "p.onnx", "--sparsity", "0.3", "-q", "--json", report).exit_code == 0
    assert calls[2:] == ["estimate", "estimate"]
    assert all(json.loads(report.read_text())["model"]["compressed_bytes"])
    assert _invoke("prune", CNN, tmp_path / "q.onnx", "--sparsity", "0.3", "-q", "--compressed-size").exit_code == 0
    assert calls[4:] == ["exact", "exact"]


def test_plan_overrides_sparsity_per_weight(tmp_path):
    inventory = onnxprune.inspect(CNN)
    first, second = inventory.prunable[0], inventory.prunable[1]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({first.name: 0.9}))
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = _invoke("prune", CNN, out, "--plan", plan, "--sparsity", "0.2", "--json", report)
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer for layer in json.loads(report.read_text())["layers"]}
    assert layers[first.name]["zeros_after"] == int(0.9 * first.numel)
    assert layers[second.name]["zeros_after"] == int(0.2 * second.numel)
    # a plan alone prunes only what it names
    result = _invoke("prune", CNN, tmp_path / "only.onnx", "--plan", plan, "--json", report)
    layers = json.loads(report.read_text())["layers"]
    assert [layer["name"] for layer in layers if layer["pruned"]] == [first.name]


def test_include_exclude_and_op_types(tmp_path):
    report = tmp_path / "r.json"
    _invoke("prune", CNN, tmp_path / "a.onnx", "--sparsity", "0.5", "--op-types", "Gemm", "--json", report)
    pruned = [layer for layer in json.loads(report.read_text())["layers"] if layer["pruned"]]
    assert pruned and all(layer["ops"] == ["Gemm"] for layer in pruned)
    _invoke("prune", CNN, tmp_path / "b.onnx", "--sparsity", "0.5", "--exclude", "fc", "--json", report)
    layers = json.loads(report.read_text())["layers"]
    assert all("fc" not in layer["name"] for layer in layers if layer["pruned"])
    assert any(layer["reason"] == "matched by exclude" for layer in layers)


def test_external_data_output_and_input(tmp_path):
    out = tmp_path / "ext.onnx"
    result = _invoke("prune", CNN, out, "--sparsity", "0.5", "--external-data")
    assert result.exit_code == 0, result.output
    data = tmp_path / "ext.onnx.data"
    assert data.is_file()
    locations = {
        e.value
        for t in all_tensors(onnx.load(str(out), load_external_data=False))
        for e in t.external_data
        if e.key == "location"
    }
    assert locations == {"ext.onnx.data"}  # relative to the output file
    # a model with external data is a valid input, in another folder
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(out, moved / "ext.onnx")
    shutil.move(data, moved / "ext.onnx.data")
    result = _invoke("prune", moved / "ext.onnx", tmp_path / "again.onnx", "--sparsity", "0.6")
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob(".*tmp*"))


def test_provenance_is_in_metadata_and_doc_strings(tmp_path):
    out = tmp_path / "out.onnx"
    _invoke("prune", CNN, out, "--sparsity", "0.5", "--scope", "global", "--criterion", "lamp")
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    options = json.loads(meta["onnxprune.options"])
    assert options["scope"] == "global" and options["criterion"] == "lamp" and options["sparsity"] == 0.5
    summary = json.loads(meta["onnxprune.summary"])
    assert summary["totals"]["pruned_tensors"] == len(summary["layers"])
    readers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and "onnxprune:" in n.doc_string]
    assert readers, "pruned nodes should say their sparsity in doc_string"


def test_inspect_lists_prunable_and_excluded(tmp_path):
    result = _invoke("inspect", CNN, "--all", "--json", tmp_path / "inv.json")
    assert result.exit_code == 0
    assert "prune" in result.output and "normalization parameter" in result.output
    inv = json.loads((tmp_path / "inv.json").read_text())["weights"]
    assert any(w["prunable"] for w in inv) and any(w["role"] == "norm" for w in inv)


@pytest.mark.slow
def test_python_dash_m_and_console_script(tmp_path):
    out = tmp_path / "m.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "onnxprune", "prune", str(CNN), str(out), "--sparsity", "0.4", "-q"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    version = subprocess.run([sys.executable, "-m", "onnxprune", "--version"], capture_output=True, text=True)
    assert onnxprune.__version__ in version.stdout


def test_random_criterion_is_seeded(tmp_path):
    a, b, c = (tmp_path / f"{x}.onnx" for x in "abc")
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        _invoke("prune", CNN, path, "--sparsity", "0.5", "--criterion", "random", "--seed", seed, "-q")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_global_scope_respects_layer_cap(tmp_path):
    report = tmp_path / "r.json"
    _invoke(
        "prune",
        CNN,
        tmp_path / "o.onnx",
        "--sparsity",
        "0.9",
        "--scope",
        "global",
        "--max-layer-sparsity",
        "0.92",
        "--json",
        report,
    )
    layers = [layer for layer in json.loads(report.read_text())["layers"] if layer["pruned"]]
    assert all(layer["zeros_after"] <= int(0.92 * layer["numel"]) for layer in layers)
    total = sum(layer["numel"] for layer in layers)
    assert sum(layer["zeros_after"] for layer in layers) == int(0.9 * total)
    assert len({round(layer["sparsity_after"], 2) for layer in layers}) > 1  # not uniform


def test_fp16_weights_stay_fp16(tmp_path):
    out = tmp_path / "fp16.onnx"
    result = _invoke("prune", FIXTURES / "mlp_digits_fp16.onnx", out, "--sparsity", "0.5")
    assert result.exit_code == 0, result.output
    assert "float16" in result.output
    model = onnx.load(str(out))
    fp16 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16 and t.doc_string]
    assert fp16
    values = onnx.numpy_helper.to_array(fp16[0])
    assert values.dtype == np.float16 and np.mean(values == 0) >= 0.5


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_scripts_and_answers(shell):
    """The README's completion set-up: click's _ONNXPRUNE_COMPLETE protocol."""
    script = CliRunner().invoke(main, [], env={"_ONNXPRUNE_COMPLETE": f"{shell}_source"}, prog_name="onnxprune")
    assert script.exit_code == 0 and "_onnxprune_completion" in script.output
    env = {"_ONNXPRUNE_COMPLETE": "bash_complete", "COMP_WORDS": "onnxprune pr", "COMP_CWORD": "1"}
    answer = CliRunner().invoke(main, [], env=env, prog_name="onnxprune")
    assert answer.exit_code == 0 and "plain,prune" in answer.output.splitlines()
    env = {"_ONNXPRUNE_COMPLETE": "bash_complete", "COMP_WORDS": "onnxprune prune --spars", "COMP_CWORD": "2"}
    assert "plain,--sparsity" in CliRunner().invoke(main, [], env=env, prog_name="onnxprune").output.splitlines()
