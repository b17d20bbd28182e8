"""Bad input on the command line: one line on stderr, a specific exit code, nothing written.

Every case checks the same contract (see ``onnxprune/errors.py`` and ``onnxprune/cli.py``):
exactly one line on stderr starting with ``onnxprune: error:`` that says what is wrong (the
fragments asserted below) and what to do, the exit code of the error class, no traceback,
no output file, no temporary file left behind, and the input model byte-for-byte unchanged
(the whole working folder is snapshotted before and compared after).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_contract import PREFIX, cli, fails_cleanly, snapshot
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import NOTHING_TO_PRUNE
from onnxprune.errors import (
    ModelLoadError,
    OptionError,
    OutputError,
    UnsafeModelError,
    UnsupportedModelError,
    ValidationError,
)
from onnxprune.graph.model_io import save_model

LOAD, OPTION, UNSUPPORTED, OUTPUT = (
    ModelLoadError.exit_code,
    OptionError.exit_code,
    UnsupportedModelError.exit_code,
    OutputError.exit_code,
)
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- models


def gemm_model(
    *, ir_version: int = 8, rows: int = 16, cols: int = 32, extra_domain: str | None = None
) -> onnx.ModelProto:
    """x[1, rows] @ W[rows, cols] + B; W has rows*cols elements (512 by default: prunable)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((rows, cols)).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.linspace(-1, 1, cols, dtype=np.float32), "B")
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc")]
    out = "y"
    opsets = [helper.make_opsetid("", 17)]
    if extra_domain:
        nodes.append(helper.make_node("Mystery", ["y"], ["z"], name="custom", domain=extra_domain))
        opsets.append(helper.make_opsetid(extra_domain, 1))
        out = "z"
    graph = helper.make_graph(
        nodes,
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, cols])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version, producer_name="test")


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    """Save with every tensor in ``w.data`` next to ``path``; returns the data file."""
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.data", size_threshold=0
    )
    return path.parent / "w.data"


def set_location(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    return model


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder (the cwd) holding ``m.onnx``, a prunable Gemm model."""
    monkeypatch.chdir(tmp_path)
    onnx.save_model(gemm_model(), str(tmp_path / "m.onnx"))
    return tmp_path


PRUNE = ("prune", "m.onnx", "out.onnx")


# --------------------------------------------------------------------------- 1-3: unreadable input


def _cut_offsets() -> list[int]:
    full = gemm_model().SerializeToString()
    no_opset = gemm_model()
    del no_opset.opset_import[:]
    head = no_opset.SerializeToString()
    assert full.startswith(head)  # opset_import is serialized last: this prefix still parses
    n = len(full)
    return sorted({1, 2, 10, 64, n // 4, n // 2, 3 * n // 4, n - 100, len(head), n - 1})


@pytest.mark.parametrize("cut", _cut_offsets())
def test_truncated_model(work: Path, cut: int) -> None:
    data = (work / "m.onnx").read_bytes()
    (work / "t.onnx").write_bytes(data[:cut])
    message = fails_cleanly(work, LOAD, "prune", "t.onnx", "out.onnx", "--sparsity", "0.5", fragments=("'t.onnx'",))
    assert "truncated" in message and "again" in message


def test_truncated_model_inspect(work: Path) -> None:
    (work / "t.onnx").write_bytes((work / "m.onnx").read_bytes()[:1000])
    fails_cleanly(work, LOAD, "inspect", "t.onnx", fragments=("'t.onnx' is not a readable ONNX model", "truncated"))


def test_text_file_renamed_onnx(work: Path) -> None:
    (work / "notes.onnx").write_text("These are my notes, not a model.\nSecond line.\n")
    fails_cleanly(
        work,
        LOAD,
        "prune",
        "notes.onnx",
        "out.onnx",
        "--sparsity",
        "0.5",
        fragments=("'notes.onnx'", "not a readable ONNX model", "not an .onnx protobuf"),
    )


def test_empty_file(work: Path) -> None:
    (work / "empty.onnx").write_bytes(b"")
    fails_cleanly(
        work, LOAD, "prune", "empty.onnx", "out.onnx", "--sparsity", "0.5", fragments=("'empty.onnx' is empty",)
    )


def test_missing_file(work: Path) -> None:
    fails_cleanly(
        work, LOAD, "prune", "nope.onnx", "out.onnx", "--sparsity", "0.5", fragments=("'nope.onnx' does not exist",)
    )


def test_directory_as_input(work: Path) -> None:
    (work / "folder.onnx").mkdir()
    fails_cleanly(work, LOAD, "prune", "folder.onnx", "out.onnx", "--sparsity", "0.5", fragments=("'folder.onnx'",))


def test_directory_as_output(work: Path) -> None:
    (work / "outdir").mkdir()
    fails_cleanly(work, OUTPUT, *PRUNE[:2], "outdir", "--sparsity", "0.5", fragments=("'outdir'", "is a folder"))


def test_directory_as_input_api(work: Path) -> None:
    """What the CLI should print for a folder as IN (load_model's message)."""
    (work / "folder.onnx").mkdir()
    with pytest.raises(ModelLoadError, match=r"is not a file: give the path of an \.onnx model file"):
        onnxprune.load(work / "folder.onnx")


# --------------------------------------------------------------------------- 4-5: external data


@pytest.fixture
def ext(work: Path) -> Path:
    """``a/m.onnx`` with its tensors in ``a/w.data``, and a full copy of the data outside ``a``."""
    folder = work / "a"
    folder.mkdir()
    data = save_external(gemm_model(), folder / "m.onnx")
    (work / "outside.data").write_bytes(data.read_bytes())
    return folder / "m.onnx"


def test_external_data_happy_path(work: Path, ext: Path) -> None:
    result = cli("prune", ext, "out.onnx", "--sparsity", "0.5", "--external-data", "-q")
    assert result.exit_code == 0, result.stderr
    assert (work / "out.onnx.data").is_file()
    onnx.checker.check_model(str(work / "out.onnx"))


def test_external_data_missing(work: Path, ext: Path) -> None:
    (ext.parent / "w.data").unlink()
    fails_cleanly(
        work,
        LOAD,
        "prune",
        ext,
        "out.onnx",
        "--sparsity",
        "0.5",
        fragments=("external data of tensor", "is missing", "w.data", "keep the data file next to the model"),
    )


def test_external_data_truncated(work: Path, ext: Path) -> None:
    data = ext.parent / "w.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    fails_cleanly(
        work,
        LOAD,
        "prune",
        ext,
        "out.onnx",
        "--sparsity",
        "0.5",
        fragments=("external data of tensor", "is truncated", "'w.data'"),
    )


def _craft(ext: Path, location: str) -> Path:
    bad = ext.parent / "bad.onnx"
    onnx.save_model(set_location(onnx.load(str(ext), load_external_data=False), location), str(bad))
    return bad


def test_external_data_absolute_path(work: Path, ext: Path) -> None:
    bad = _craft(ext, str(work / "outside.data"))
    for args in (("prune", bad, "out.onnx", "--sparsity", "0.5"), ("inspect", bad)):
        fails_cleanly(work, LOAD, *args, fragments=("uses the absolute path", "model's folder", "refusing"))
    with pytest.raises(UnsafeModelError):
        onnxprune.load(bad)


@pytest.mark.parametrize("location", ["../outside.data", "sub/../../outside.data"])
def test_external_data_parent_path(work: Path, ext: Path, location: str) -> None:
    bad = _craft(ext, location)
    for args in (("prune", bad, "out.onnx", "--sparsity", "0.5"), ("inspect", bad)):
        fails_cleanly(work, LOAD, *args, fragments=("points outside the model's folder", location, "refusing"))
    with pytest.raises(UnsafeModelError):
        onnxprune.load(bad)


@pytest.mark.parametrize("link", ["file", "folder"])
def test_external_data_symlink_out_of_folder(work: Path, ext: Path, link: str) -> None:
    if link == "file":
        (ext.parent / "ln.data").symlink_to(work / "outside.data")
        location = "ln.data"
    else:
        (ext.parent / "lndir").symlink_to(work)
        location = "lndir/outside.data"
    bad = _craft(ext, location)
    for args in (("prune", bad, "out.onnx", "--sparsity", "0.5"), ("inspect", bad)):
        fails_cleanly(work, LOAD, *args, fragments=("symbolic link", "outside the model's folder", "refusing"))
    with pytest.raises(UnsafeModelError):
        onnxprune.load(bad)


def test_external_data_symlink_inside_folder(work: Path, ext: Path) -> None:
    """onnx refuses any symbolic link as external data: say so, and what to do."""
    (ext.parent / "ln.data").symlink_to("w.data")
    bad = _craft(ext, "ln.data")
    fails_cleanly(
        work,
        LOAD,
        "prune",
        bad,
        "out.onnx",
        "--sparsity",
        "0.5",
        fragments=("'ln.data'", "is a symbolic link", "replace the link with a copy"),
    )


def test_external_data_hard_link(work: Path, ext: Path) -> None:
    """A hard link can be any file of the file system: onnx refuses it, so does onnxprune, clearly."""
    os.link(work / "outside.data", ext.parent / "hard.data")
    bad = _craft(ext, "hard.data")
    fails_cleanly(
        work,
        LOAD,
        "prune",
        bad,
        "out.onnx",
        "--sparsity",
        "0.5",
        fragments=("'hard.data'", "2 hard links", "outside the model's folder", "plain copy"),
    )
    with pytest.raises(UnsafeModelError):
        onnxprune.load(bad)


@pytest.mark.parametrize(("key", "value"), [("offset", "-5"), ("offset", "abc"), ("length", "1e3")])
def test_external_data_bad_offset(work: Path, ext: Path, key: str, value: str) -> None:
    model = onnx.load(str(ext), load_external_data=False)
    entries = model.graph.initializer[0].external_data
    for entry in entries:
        if entry.key == key:
            entry.value = value
            break
    else:
        entries.add(key=key, value=value)
    onnx.save_model(model, str(ext.parent / "bad.onnx"))
    fails_cleanly(
        work,
        LOAD,
        "prune",
        ext.parent / "bad.onnx",
        "out.onnx",
        "--sparsity",
        "0.5",
        fragments=("external data of tensor", "invalid offset or length", repr(value), "malformed"),
    )


# --------------------------------------------------------------------------- 6: options


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--sparsity", "1.5"], ["--sparsity must be a fraction of weights in [0, 1)", "got 1.5"]),
        (["--sparsity", "-0.1"], ["--sparsity must be a fraction of weights in [0, 1)", "got -0.1"]),
        (["--sparsity", "nan"], ["--sparsity must be a fraction of weights in [0, 1)", "got nan"]),
        ([], ["nothing to do", "give --sparsity"]),
        (["--pattern", "4:4"], ["--pattern 4:4 is impossible", "0 < N < M"]),
        (["--pattern", "5:4"], ["--pattern 5:4 is impossible", "0 < N < M"]),
        (["--pattern", "2-4"], ["--pattern must be 'unstructured' or N:M such as 2:4", "'2-4'"]),
        (["--pattern", "2:4", "--sparsity", "0.5"], ["--sparsity and --pattern 2:4 are both given", "drop --sparsity"]),
        (["--sparsity", "0.5", "--include", "("], ["--include '(' is not a valid regular expression"]),
        (["--sparsity", "0.5", "--exclude", "[a-"], ["--exclude '[a-' is not a valid regular expression"]),
        (["--sparsity", "0.5", "--max-layer-sparsity", "0"], ["--max-layer-sparsity must lie in (0, 1]", "got 0"]),
        (["--sparsity", "0.5", "--min-size", "-1"], ["--min-size must be >= 0"]),
    ],
)
def test_bad_options(work: Path, options: list[str], fragments: list[str]) -> None:
    fails_cleanly(work, OPTION, *PRUNE, *options, fragments=tuple(fragments))


def test_plan_not_json(work: Path) -> None:
    (work / "plan.json").write_text("W: 0.5\n")
    fails_cleanly(
        work, OPTION, *PRUNE, "--plan", "plan.json", fragments=("plan file 'plan.json' is not valid JSON", "line 1")
    )


def test_plan_not_an_object(work: Path) -> None:
    (work / "plan.json").write_text("[0.5]")
    fails_cleanly(work, OPTION, *PRUNE, "--plan", "plan.json", fragments=("must be a JSON object",))


def test_plan_bad_amount(work: Path) -> None:
    (work / "plan.json").write_text(json.dumps({"W": 2}))
    fails_cleanly(work, OPTION, *PRUNE, "--plan", "plan.json", fragments=("plan entry 'W'", "[0, 1)", "got 2"))


def test_plan_missing(work: Path) -> None:
    fails_cleanly(work, OPTION, *PRUNE, "--plan", "nope.json", fragments=("plan file 'nope.json' does not exist",))


def test_plan_unknown_weight(work: Path) -> None:
    (work / "plan.json").write_text(json.dumps({"encoder.missing.weight": 0.5}))
    fails_cleanly(
        work,
        OPTION,
        *PRUNE,
        "--plan",
        "plan.json",
        fragments=("'encoder.missing.weight'", "not a weight of this model", "W"),
    )


def test_plan_known_weight_works(work: Path) -> None:
    (work / "plan.json").write_text(json.dumps({"W": 0.25}))
    result = cli(*PRUNE, "--plan", "plan.json", "-q")
    assert result.exit_code == 0, result.stderr
    weight = numpy_helper.to_array(onnx.load(str(work / "out.onnx")).graph.initializer[0])
    assert int((weight == 0).sum()) == 128


# --------------------------------------------------------------------------- 7: OUT is IN


def _same_file_spellings(work: Path) -> dict[str, str]:
    (work / "d").mkdir()
    (work / "d" / "x.onnx").write_bytes((work / "m.onnx").read_bytes())
    (work / "link.onnx").symlink_to(work / "d" / "x.onnx")
    os.link(work / "d" / "x.onnx", work / "hard.onnx")
    return {
        "same": "d/x.onnx",
        "dotdot": "./d/../d/x.onnx",
        "absolute": str(work / "d" / "x.onnx"),
        "symlink": "link.onnx",
        "hardlink": "hard.onnx",
    }


@pytest.mark.parametrize("spelling", ["same", "dotdot", "absolute", "symlink", "hardlink"])
def test_output_is_input(work: Path, spelling: str) -> None:
    out = _same_file_spellings(work)[spelling]
    fails_cleanly(
        work,
        OUTPUT,
        "prune",
        "d/x.onnx",
        out,
        "--sparsity",
        "0.5",
        fragments=("is the input model", "choose another", "--force"),
    )


@pytest.mark.parametrize("spelling", ["same", "dotdot"])
def test_output_is_input_with_force(work: Path, spelling: str) -> None:
    out = _same_file_spellings(work)[spelling]
    target = work / "d" / "x.onnx"
    old_bytes, old_inode = target.read_bytes(), target.stat().st_ino
    result = cli("prune", "d/x.onnx", out, "--sparsity", "0.5", "--force", "-q")
    assert result.exit_code == 0, result.stderr
    assert target.read_bytes() != old_bytes
    assert target.stat().st_ino != old_inode, "IN was rewritten in place, not replaced by a rename"
    assert sorted(p.name for p in (work / "d").iterdir()) == ["x.onnx"], "temporary files left behind"
    onnx.checker.check_model(str(target))
    weight = numpy_helper.to_array(onnx.load(str(target)).graph.initializer[0])
    assert int((weight == 0).sum()) == 256


# --------------------------------------------------------------------------- 8: output folder


def test_unwritable_output_folder(work: Path) -> None:
    """Root cannot create files in /proc/self either."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc")
    fails_cleanly(
        work,
        OUTPUT,
        "prune",
        "m.onnx",
        "/proc/self/out.onnx",
        "--sparsity",
        "0.5",
        fragments=("cannot write to the output folder '/proc/self'",),
    )
    assert not Path("/proc/self/out.onnx").exists()


@pytest.mark.parametrize("out", ["missing/out.onnx", "missing/deeper/out.onnx", "m.onnx/out.onnx"])
def test_missing_output_folder(work: Path, out: str) -> None:
    advice = "a file has that name" if out.startswith("m.onnx/") else "create it first"
    fails_cleanly(
        work,
        OUTPUT,
        "prune",
        "m.onnx",
        out,
        "--sparsity",
        "0.5",
        fragments=("the output folder", "does not exist", advice),
    )


# --------------------------------------------------------------------------- 9: nothing to prune


def test_nothing_to_prune(work: Path) -> None:
    onnx.save_model(gemm_model(rows=4, cols=8), str(work / "tiny.onnx"))
    before = snapshot(work)
    result = cli("prune", "tiny.onnx", "out.onnx", "--sparsity", "0.5")
    assert isinstance(result.exception, SystemExit)
    assert result.exit_code == NOTHING_TO_PRUNE == 10
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: "), result.stderr
    assert "nothing to prune in 'tiny.onnx'" in lines[0] and "no output written" in lines[0]
    assert snapshot(work) == before


def test_nothing_to_prune_says_why(work: Path) -> None:
    onnx.save_model(gemm_model(rows=4, cols=8), str(work / "tiny.onnx"))
    result = cli("prune", "tiny.onnx", "out.onnx", "--sparsity", "0.5")
    assert "--min-size" in result.stderr, result.stderr


# --------------------------------------------------------------------------- 10: --input-shape


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("x:1xa", ["--input-shape 'x:1xa'", "integers separated by 'x'"]),
        ("x1x16", ["--input-shape 'x1x16' must look like NAME:1x3x224x224"]),
        ("x:1x-16", ["dimensions must be >= 1"]),
        ("x:0x16", ["dimensions must be >= 1"]),
        ("z:1x16", ["--input-shape names unknown input(s) z", "the model's inputs are: x"]),
        ("x:1x17", ["--input-shape x:1x17 does not fit the model's declared shape [1, 16]"]),
        ("x:16", ["--input-shape x:16 does not fit the model's declared shape"]),
    ],
)
def test_bad_input_shape(work: Path, spec: str, fragments: list[str]) -> None:
    fails_cleanly(work, OPTION, *PRUNE, "--sparsity", "0.5", "--input-shape", spec, fragments=tuple(fragments))


def test_good_input_shape(work: Path) -> None:
    result = cli(*PRUNE, "--sparsity", "0.5", "--input-shape", "x:1x16", "-q")
    assert result.exit_code == 0, result.stderr


# --------------------------------------------------------------------------- 11: onnxruntime cannot load


@pytest.mark.parametrize(
    ("model", "detail"),
    [
        (gemm_model(ir_version=99), "Unsupported model IR version: 99"),
        (gemm_model(extra_domain="com.example.unknown"), "com.example.unknown:Mystery"),
    ],
    ids=["ir99", "unknown-domain"],
)
def test_model_onnxruntime_cannot_load(work: Path, model: onnx.ModelProto, detail: str) -> None:
    onnx.save_model(model, str(work / "odd.onnx"))
    message = fails_cleanly(
        work,
        UNSUPPORTED,
        "prune",
        "odd.onnx",
        "out.onnx",
        "--sparsity",
        "0.5",
        fragments=("onnxruntime cannot load the input model 'odd.onnx'", detail, "nothing was written"),
    )
    assert "onnxruntime_src" not in message and "::" not in message.replace(detail, "")


# --------------------------------------------------------------------------- 12: happy path


def test_happy_path(work: Path) -> None:
    before = (work / "m.onnx").read_bytes()
    result = cli(*PRUNE, "--sparsity", "0.5")
    assert result.exit_code == 0, result.stderr
    assert "pruned 1 weight tensors: 256 of 512 weights are zero" in result.stdout
    assert (work / "m.onnx").read_bytes() == before
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx", "out.onnx"]
    onnx.checker.check_model(str(work / "out.onnx"), full_check=True)
    inspected = cli("inspect", "out.onnx")
    assert inspected.exit_code == 0, inspected.stderr
    assert "1 prunable weight tensors (512 weights, 50.0% already zero)" in inspected.stdout


# --------------------------------------------------------------------------- python -m onnxprune


def _module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxprune", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
def test_module_entry_point_error_and_success(work: Path) -> None:
    (work / "t.onnx").write_bytes((work / "m.onnx").read_bytes()[:700])
    before = snapshot(work)
    bad = _module("prune", "t.onnx", "out.onnx", "--sparsity", "0.5", cwd=work)
    assert bad.returncode == LOAD, bad.stderr
    assert bad.stderr.startswith(PREFIX) and bad.stderr.count("\n") == 1, bad.stderr
    assert "'t.onnx' is not a readable ONNX model" in bad.stderr and "Traceback" not in bad.stderr
    assert snapshot(work) == before

    bad = _module("prune", "m.onnx", "out.onnx", "--pattern", "4:4", cwd=work)
    assert bad.returncode == OPTION and bad.stderr.startswith(PREFIX + "--pattern 4:4"), bad.stderr
    assert snapshot(work) == before

    good = _module("prune", "m.onnx", "out.onnx", "--sparsity", "0.5", "-q", cwd=work)
    assert good.returncode == 0, good.stderr
    onnx.checker.check_model(str(work / "out.onnx"))


# --------------------------------------------------------------------------- save_model directly


class Refused(Exception):
    pass


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("error", [Refused, ValidationError, KeyboardInterrupt])
def test_save_model_validation_failure_leaves_nothing(
    tmp_path: Path, external: bool, existing: bool, error: type[BaseException]
) -> None:
    out = tmp_path / "out.onnx"
    if existing:
        out.write_bytes(b"old model bytes")
        (tmp_path / "out.onnx.data").write_bytes(b"old data bytes")
    (tmp_path / "keep.txt").write_text("unrelated")
    before = snapshot(tmp_path)
    seen: list[Path] = []

    def validate(tmp: Path, checker_path: Path) -> None:
        seen.append(tmp)
        assert checker_path == tmp  # a small model: no skeleton
        assert tmp.is_file() and tmp.parent.parent == tmp_path and tmp.parent.name.startswith(".out.onnx.")
        assert (tmp.parent / "out.onnx.data").is_file() == external
        onnx.checker.check_model(str(tmp))
        raise error("validation says no")

    with pytest.raises(error, match="validation says no"):
        save_model(gemm_model(), out, external_data=external, validate=validate)
    assert seen and not seen[0].parent.exists()
    assert snapshot(tmp_path) == before


def test_save_model_success_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old model bytes")
    saved = save_model(gemm_model(), out, external_data=True, validate=lambda tmp, checker: None)
    assert saved.path == out and saved.data_path == tmp_path / "out.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    onnx.checker.check_model(str(out))


def test_save_model_refuses_input(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save_model(gemm_model(), str(src))
    (tmp_path / "ln.onnx").symlink_to(src)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="is the input model"):
        save_model(gemm_model(), tmp_path / "ln.onnx", input_path=src)
    assert snapshot(tmp_path) == before
