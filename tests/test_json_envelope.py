"""Every command's JSON: one envelope, validated against the schema shipped in the package;
``--json -`` writes it to standard output with everything else on standard error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.envelope import SCHEMA_VERSION, envelope, plain, schema

jsonschema = pytest.importorskip("jsonschema")  # in the test group; ray needs it too

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIXTURES / "cnn_digits.onnx"
DATA = FIXTURES / "cnn_digits.test.npz"
LABELS = FIXTURES / "cnn_digits.test_labels.npy"
FAST_EVAL = ["--eval-samples", "64", "--repeats", "3", "--warmup", "1"]


def _validate(document):
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.Draft202012Validator(schema()).validate(document)
    assert document["tool"] == "onnxprune" and document["version"] == onnxprune.__version__
    assert document["schema"] == SCHEMA_VERSION
    assert list(document)[:4] == ["tool", "version", "schema", "command"]


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_prune_and_its_evaluation_write_valid_documents(tmp_path):
    out, pruned, evaluated = tmp_path / "p.onnx", tmp_path / "p.json", tmp_path / "e.json"
    _run("prune", MODEL, out, "--sparsity", "0.5", "--json", pruned, "--data", DATA, "--labels", LABELS,
         "--eval-json", evaluated, *FAST_EVAL, "-q")  # fmt: skip
    document = json.loads(pruned.read_text())
    _validate(document)
    assert document["command"] == "prune" and document["output"] == str(out)
    evaluation = json.loads(evaluated.read_text())
    _validate(evaluation)
    assert evaluation["command"] == "eval" and [m["role"] for m in evaluation["models"]] == ["base", "candidate"]


def test_eval_analyze_and_inspect_write_valid_documents(tmp_path, untimed_latency):
    pruned = tmp_path / "p.onnx"
    onnxprune.prune_file(MODEL, pruned, onnxprune.PruneConfig(sparsity=0.5))
    _run("eval", MODEL, pruned, "--data", DATA, "--samples", "64", "--repeats", "3", "--json", tmp_path / "e.json")
    _run("analyze", MODEL, "--data", DATA, "--samples", "32", "--levels", "0.3,0.6", "--target-sparsity", "0.4",
         "--workers", "1", "--no-cache", "--json", tmp_path / "a.json", "-q")  # fmt: skip
    _run("analyze", MODEL, "--structural", "--data", DATA, "--samples", "32", "--target-latency", "0.8",
         "--workers", "1", "--no-cache", "--json", tmp_path / "s.json", "-q")  # fmt: skip
    _run("inspect", MODEL, "--json", tmp_path / "i.json")
    for name, command in (("e", "eval"), ("a", "analyze"), ("s", "analyze"), ("i", "inspect")):
        document = json.loads((tmp_path / f"{name}.json").read_text())
        _validate(document)
        assert document["command"] == command
    assert json.loads((tmp_path / "s.json").read_text())["goal"] == {"target_latency": 0.8}


def test_json_to_standard_output_keeps_it_clean(tmp_path):
    result = _run("prune", MODEL, tmp_path / "p.onnx", "--sparsity", "0.5", "--json", "-")
    document = json.loads(result.stdout)  # nothing but the document
    _validate(document)
    assert "pruned 5 weight tensors" in result.stderr  # the human text went to stderr
    assert not (Path.cwd() / "-").exists() and not (tmp_path / "-").exists()
    inventory = _run("inspect", MODEL, "--json", "-")
    assert json.loads(inventory.stdout)["command"] == "inspect"
    both = CliRunner().invoke(main, ["prune", str(MODEL), str(tmp_path / "q.onnx"), "--sparsity", "0.5",
                                     "--json", "-", "--eval-json", "-"])  # fmt: skip
    assert both.exit_code == 2 and "only one JSON document can go to standard output" in both.output
    assert not (tmp_path / "q.onnx").exists()


def test_quiet_prints_only_the_summary_line(tmp_path):
    result = _run("prune", MODEL, tmp_path / "p.onnx", "--sparsity", "0.5", "--data", DATA, *FAST_EVAL, "-q")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, result.stdout  # the prune summary, the evaluation's
    assert lines[0].startswith("pruned 5 weight tensors") and "top-1" not in lines[0]
    assert lines[1].startswith("p.onnx: file ") and "cosine" in lines[1] and "latency" in lines[1]


def test_the_envelope_refuses_a_clash_and_plain_makes_json_numbers():
    import numpy as np

    with pytest.raises(ValueError, match="may not set version"):
        envelope("prune", {"version": 2})
    assert plain({"a": np.float32(0.5), "b": [np.int64(3), float("nan")], "c": (1, np.inf)}) == {
        "a": 0.5,
        "b": [3, None],
        "c": [1, None],
    }


def test_progress_without_a_terminal_is_periodic_lines(monkeypatch, capsys):
    from onnxprune import console

    clock = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(console, "interactive", lambda: False)
    with console.ProgressBar("pruning", quiet=False) as progress:
        for done in range(1, 41):
            clock[0] += 0.5  # 20 s in all: a line every 5 s
            progress(done, 40, f"layer {done}")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "pruning: 28% (11/40), 0:05 elapsed"  # the bar starts at the first step
    assert lines[-1] == "pruning: 100% (40/40), 0:19 elapsed"
    assert 4 <= len(lines) <= 5 and all(line.startswith("pruning: ") for line in lines)
    with console.ProgressBar("quick", quiet=False) as progress:  # done within the first 5 s: silent
        progress(1, 2, "a")
        progress(2, 2, "b")
    assert capsys.readouterr().err == ""
    with pytest.raises(KeyboardInterrupt), console.ProgressBar("stopped", quiet=False) as progress:
        for done in range(1, 21):
            clock[0] += 0.5
            progress(done, 40, f"layer {done}")
        raise KeyboardInterrupt  # half done: no line claims it finished
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["stopped: 28% (11/40), 0:05 elapsed"]  # the periodic line, no closing one
