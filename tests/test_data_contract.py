"""The data contract across formats: a stack of complete feeds, one item per sample, ONNX
test-data folders and folders of per-sample files give the same samples, and every command
gives the same numbers on each (the stateful fixture: state batch on axis 1, a scalar input)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.data import open_data
from onnxprune.data.layout import FeedLayout
from onnxprune.runtime import input_specs, session

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
STATEFUL = FIXTURES / "stateful_mnist1d.onnx"
ONE_INPUT = ["cnn_digits", "mlp_digits", "transformer_mnist1d", "lstm_mnist1d", "cnn_digits_const", "mlp_digits_fp16"]
SAMPLES = 16


def cli(*args: str | Path) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr or result.output
    return result


def items_of(path: Path, samples: int = SAMPLES) -> tuple[FeedLayout, dict[str, np.ndarray]]:
    """The fixture's calibration samples, sample-major (as a Dataset holds them)."""
    model = path.with_suffix("")
    dataset = open_data(model.with_suffix(".calib.npz"), specs=input_specs(session(path)), samples=samples)
    chunks = list(dataset._batch_chunks(samples))  # the samples as held
    return dataset.layout, {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def write_formats(folder: Path, layout: FeedLayout, items: dict[str, np.ndarray]) -> dict[str, Path]:
    """The same samples as a stack of feeds (.npz), an ONNX test-data folder and a folder of
    per-sample .npz files (one item each, batch axis removed)."""
    count = next(iter(items.values())).shape[0]
    feeds = [layout.to_feeds({name: a[i : i + 1] for name, a in items.items()}) for i in range(count)]
    stack = folder / "stack.npz"
    np.savez(stack, **{name: np.stack([f[name] for f in feeds]) for name in items})
    tests = folder / "test_data"
    for i, feed in enumerate(feeds):
        target = tests / f"test_data_set_{i}"
        target.mkdir(parents=True)
        for j, (name, value) in enumerate(feed.items()):
            (target / f"input_{j}.pb").write_bytes(numpy_helper.from_array(np.asarray(value), name).SerializeToString())
    per_sample = folder / "per_sample"
    per_sample.mkdir()
    for i in range(count):
        np.savez(per_sample / f"sample_{i:03d}.npz", **{name: a[i] for name, a in items.items()})
    return {"stack": stack, "test-data": tests, "per-sample": per_sample}


@pytest.mark.parametrize("name", [*ONE_INPUT, "stateful_mnist1d"])
def test_every_format_gives_the_same_batches(tmp_path: Path, name: str) -> None:
    path = FIXTURES / f"{name}.onnx"
    layout, items = items_of(path)
    specs = input_specs(session(path))
    expected = list(open_data(path.with_suffix(".calib.npz"), specs=specs, samples=SAMPLES).batches(5))
    for kind, source in write_formats(tmp_path, layout, items).items():
        got = list(open_data(source, specs=specs).batches(5))
        assert len(got) == len(expected), kind
        for a, b in zip(got, expected, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{kind}: {key}")


def test_stateful_layout_and_batches() -> None:
    """h0 [1, batch, 32] has its batch on axis 1, gain is a scalar: one sample per run."""
    specs = input_specs(session(STATEFUL))
    layout = FeedLayout.of(specs)
    assert layout.axes == {"x": 0, "h0": 1, "gain": None}
    data = open_data(FIXTURES / "stateful_mnist1d.test.npz", specs=specs, samples=4)
    batches = list(data.batches(32))
    assert len(batches) == 4  # a scalar input: one value per run
    assert [b["h0"].shape for b in batches] == [(1, 1, 32)] * 4 and batches[0]["gain"].shape == ()


def eval_numbers(
    folder: Path, base: Path, candidate: Path, data: Path, labels: Path | None = None, samples: int = SAMPLES
) -> dict:
    out = folder / "eval.json"
    extra = ("--labels", labels) if labels else ()
    cli("eval", base, candidate, "--data", data, *extra, "--samples", samples, "--no-latency", "-q", "--json", out)
    saved = json.loads(out.read_text())
    return {"data": saved["data"]["samples"], "models": [(m["accuracy"], m["fidelity"]) for m in saved["models"]]}


def weights_of(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_stateful_every_command_same_numbers_in_every_format(tmp_path: Path) -> None:
    """prune --method sparsegpt, eval, analyze and static int8 calibration on the stack of
    feeds, the ONNX test-data folder and the per-sample folder: equal results."""
    sources = {
        "stack": FIXTURES / "stateful_mnist1d.test.npz",
        "test-data": FIXTURES / "stateful_mnist1d.heldout",
        "per-sample": FIXTURES / "stateful_mnist1d.samples",
    }
    labels = FIXTURES / "stateful_mnist1d.heldout_labels.npy"
    results = {}
    for kind, source in sources.items():
        work = tmp_path / kind
        work.mkdir()
        pruned, quantized = work / "p.onnx", work / "q.onnx"
        cli("prune", STATEFUL, pruned, "--sparsity", "0.5", "--method", "sparsegpt", "--calibration", source,
            "--samples", SAMPLES, "-q")  # fmt: skip
        cli("prune", STATEFUL, quantized, "--sparsity", "0.5", "--quantize", "int8", "--quantize-mode", "static",
            "--calibration", source, "--samples", SAMPLES, "-q")  # fmt: skip
        curves = work / "curves.json"
        cli("analyze", STATEFUL, "--data", source, "--samples", SAMPLES, "--levels", "0.5", "--workers", "1",
            "--no-cache", "--json", curves, "-q")  # fmt: skip
        results[kind] = {
            "pruned": weights_of(pruned),
            "quantized": weights_of(quantized),
            "eval": eval_numbers(work, STATEFUL, pruned, source, labels, samples=32),
            "curves": [c["loss"] for c in json.loads(curves.read_text())["curves"]],
        }
    first = results.pop("stack")
    assert first["eval"]["data"] == 32 and first["eval"]["models"][0][0]["top1"] is not None
    for kind, got in results.items():
        for key in ("pruned", "quantized"):
            assert got[key].keys() == first[key].keys()
            for name, value in got[key].items():
                np.testing.assert_allclose(
                    value, first[key][name], rtol=1e-5, atol=1e-6, err_msg=f"{kind} {key} {name}"
                )
        assert got["eval"] == first["eval"], kind
        np.testing.assert_allclose(got["curves"], first["curves"], rtol=1e-6, err_msg=kind)


@pytest.mark.parametrize("name", ONE_INPUT)
def test_stack_of_feeds_on_every_fixture(tmp_path: Path, name: str) -> None:
    """``np.savez(f, input=np.stack(feeds))`` ([N, 1, ...]): calibration and evaluation take it,
    with the numbers of the one-item-per-sample file."""
    path = FIXTURES / f"{name}.onnx"
    layout, items = items_of(path)
    stack = write_formats(tmp_path, layout, items)["stack"]
    plain = tmp_path / "plain.npz"
    np.savez(plain, **items)
    assert next(iter(np.load(stack).values())).shape[1] == 1
    outputs = {}
    for kind, data in (("stack", stack), ("plain", plain)):
        out = tmp_path / f"{kind}.onnx"
        cli("prune", path, out, "--sparsity", "0.5", "--method", "sparsegpt", "--calibration", data,
            "--samples", SAMPLES, "-q")  # fmt: skip
        outputs[kind] = (weights_of(out), eval_numbers(tmp_path, path, out, data))
    for weight, value in outputs["stack"][0].items():
        np.testing.assert_allclose(value, outputs["plain"][0][weight], rtol=1e-5, atol=1e-6, err_msg=weight)
    assert outputs["stack"][1] == outputs["plain"][1]


# --------------------------------------------------------------------------- shapes that cannot be guessed


def reshape_model() -> onnx.ModelProto:
    """x [batch, seq] reshaped to [-1, 91]: runs only when seq is a multiple of 91, which no
    guessed size is."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((91, 4)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 91], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weight, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_unguessable_dims_one_line_then_data_suffices(tmp_path: Path) -> None:
    onnx.save(reshape_model(), str(tmp_path / "m.onnx"))
    args = [sys.executable, "-m", "onnxprune", "prune", "m.onnx", "o.onnx", "--sparsity", "0.5", "--min-size", "0"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no onnxruntime log lines (they go to the debug log)
    assert "--input-shape x:1xN (declared [batch, seq])" in lines[0] and "--calibration" in lines[0]
    assert not (tmp_path / "o.onnx").exists()
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((8, 91)).astype(np.float32))
    done = subprocess.run(
        [*args, "--method", "sparsegpt", "--calibration", "calib.npz", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.onnx").exists()


def static_state_model() -> onnx.ModelProto:
    """x [1, 16] and state [3, 4, 8], all dims fixed: the state's batch axis cannot be told."""
    weight = numpy_helper.from_array(np.ones((16, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["state"], ["s"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [3, 4, 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 4, 8]),
        ],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_batch_axis_that_cannot_be_told_is_asked_for(tmp_path: Path) -> None:
    onnx.save(static_state_model(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((5, 16)).astype(np.float32),
             state=rng.standard_normal((5, 3, 4, 8)).astype(np.float32))  # fmt: skip
    args = ["eval", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "--no-latency", "-q"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "onnxprune: error: cannot tell which axis of input 'state' [3, 4, 8] holds the batch (its dims are fixed and "
        "none or several match the other inputs' batch): give --batch-axis state:K (the axis) or state:none (one "
        "value per run)"
    ]
    cli(*args, "--batch-axis", "state:none")  # one state a run: 5 runs of one sample
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--batch-axis", "state:3"]])
    assert result.exit_code == 2 and "--batch-axis state:3 is out of range: input 'state' has rank 3" in result.stderr


def test_output_validated_on_real_samples(tmp_path: Path) -> None:
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    cli("prune", STATEFUL, out, "--sparsity", "0.5", "--method", "sparsegpt", "--calibration",
        FIXTURES / "stateful_mnist1d.samples", "-q", "--json", report)  # fmt: skip
    assert json.loads(report.read_text())["validation"]["ran_on"].startswith("real samples x:1x20x1, h0:1x1x32")


def state_add_model() -> onnx.ModelProto:
    """y = x + state[0]: x [batch, 4], state [1, batch, 4] (batch on axis 1, no scalar)."""
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["state", "axes"], ["s"]),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, "batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array([0], np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_batches_put_samples_on_each_inputs_batch_axis(tmp_path: Path) -> None:
    """Batches of 3 from one item per sample: x's samples on axis 0, the state's on axis 1, and
    every output row is its own sample's x + state."""
    onnx.save(state_add_model(), str(tmp_path / "m.onnx"))
    specs = input_specs(session(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    x, state = rng.standard_normal((7, 4)).astype(np.float32), rng.standard_normal((7, 1, 4)).astype(np.float32)
    stacked = {"x": x[:, None], "state": state[:, :, None]}  # the same samples as complete feeds
    sess = session(tmp_path / "m.onnx")
    for arrays in ({"x": x, "state": state}, stacked):
        data = open_data(arrays, specs=specs)
        batches = list(data.batches(3))
        assert [b["state"].shape for b in batches] == [(1, 3, 4), (1, 3, 4), (1, 1, 4)]
        assert [data.count(b) for b in batches] == [3, 3, 1]
        got = np.concatenate([sess.run(None, b)[0] for b in batches])
        np.testing.assert_allclose(got, x + state[:, 0], rtol=1e-6)
