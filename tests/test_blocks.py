"""Block reconstruction: the blocks a graph is cut into, the fit, and the option end to end."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import init, model, node, rand, value
from cli_contract import fails_cleanly
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.config import MAX_BLOCK_EPOCHS, PruneConfig
from onnxprune.errors import OptionError
from onnxprune.graph.tensors import read_array
from onnxprune.passes import blocks as block_pass
from onnxprune.passes.blocks import fit_blocks, plan_blocks
from onnxprune.reconstruct import autodiff
from onnxprune.reconstruct.autodiff import Step, forward
from onnxprune.reconstruct.block import Batch, fit_block, schedule

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TRANSFORMER = FIXTURES / "transformer_mnist1d.onnx"
CNN = FIXTURES / "cnn_digits.onnx"
MLP = FIXTURES / "mlp_digits.onnx"
LSTM = FIXTURES / "lstm_mnist1d.onnx"


def _matrices(model: onnx.ModelProto) -> list[str]:
    return [t.name for t in model.graph.initializer if len(t.dims) == 2]


# --------------------------------------------------------------------------- the maths


def _teacher_problem(seed: int = 0):
    """y = relu(x W1) W2 with dense weights; the student starts from W1 with half its entries
    zeroed (fixed mask), the dense W2."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((16, 4)).astype(np.float32)
    steps = [Step("MatMul", ("x", "w1"), ("h",)), Step("Relu", ("h",), ("r",)), Step("MatMul", ("r", "w2"), ("y",))]
    batches = []
    for _ in range(10):
        x = rng.standard_normal((32, 8)).astype(np.float32)
        batches.append(Batch({"x": x}, {"y": forward(steps, {"x": x, "w1": w1, "w2": w2})["y"]}))
    keep = rng.random(w1.shape) > 0.5
    return steps, {"w1": w1 * keep, "w2": w2.copy()}, {"w1": keep}, batches


def test_fit_block_lowers_the_held_out_error_and_keeps_the_mask() -> None:
    steps, params, keep, batches = _teacher_problem()
    fit = fit_block(steps, params, keep, batches[:8], batches[8:], epochs=30, lr=3e-2)
    assert fit.error_after < 0.8 * fit.error_before
    assert fit.epoch > 0
    assert np.all(fit.params["w1"][~keep["w1"]] == 0)  # pruned weights stay pruned
    assert not np.array_equal(fit.params["w2"], params["w2"])  # unmasked tensors move too
    assert fit.params["w1"].dtype == np.float32


def test_fit_block_keeps_the_given_weights_when_no_epoch_beats_them() -> None:
    steps, params, keep, batches = _teacher_problem()
    # a held-out set the training data says nothing about: targets of another teacher
    _, _, _, other = _teacher_problem(seed=1)
    held = [Batch(b.inputs, o.targets) for b, o in zip(batches[8:], other[8:], strict=True)]
    fit = fit_block(steps, params, keep, batches[:8], held, epochs=5, lr=0.5)
    if fit.epoch == 0:
        for name in params:
            np.testing.assert_array_equal(fit.params[name], params[name])
    assert fit.error_after <= fit.error_before


def test_fit_block_is_reproducible() -> None:
    steps, params, keep, batches = _teacher_problem()
    a = fit_block(steps, params, keep, batches[:8], batches[8:], epochs=3, lr=1e-2, seed=4)
    b = fit_block(steps, params, keep, batches[:8], batches[8:], epochs=3, lr=1e-2, seed=4)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_held_out_batches() -> None:
    assert block_pass.held_out(16) == {7, 15}
    assert block_pass.held_out(3) == {2}  # fewer than 8: the last one
    assert block_pass.held_out(1) == set()  # one batch: it trains and judges


def test_schedule_warms_up_then_decays_to_zero() -> None:
    rates = [schedule(t, 100) for t in range(1, 101)]
    assert rates[0] == pytest.approx(0.1) and max(rates) == pytest.approx(1.0)
    assert rates[9] == pytest.approx(1.0) and rates[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))


# --------------------------------------------------------------------------- the blocks of a graph


def test_a_transformer_is_cut_after_each_normalisation() -> None:
    model = onnx.load(str(TRANSFORMER))
    roots = _matrices(model)
    blocks = plan_blocks(model, roots)
    assert all(b.skip is None for b in blocks)
    assert sum(len(b.roots) for b in blocks) == len(roots)  # every weight in exactly one block
    assert [len(b.roots) for b in blocks] == [1, 4, 2, 4, 2, 1]
    layer_ends = [b.outputs for b in blocks[1:4]]
    assert layer_ends == [
        ["/layers.0/ln1/LayerNormalization_output_0"],
        ["/layers.0/ln2/LayerNormalization_output_0"],
        ["/layers.1/ln1/LayerNormalization_output_0"],
    ]
    attention = blocks[1]
    # the block's vectors are fitted (biases, the LayerNorm's scale and shift), its weights too
    assert set(attention.roots) < set(attention.fitted)
    assert any("ln1" in name for name in attention.fitted)
    # the block input and the shapes are read from the model, the constants are frozen
    assert attention.captured[0] == "/ln_embed/LayerNormalization_output_0"
    assert not set(attention.captured) & set(attention.frozen)


def test_merging_blocks_up_to_a_number_of_layers() -> None:
    model = onnx.load(str(TRANSFORMER))
    blocks = plan_blocks(model, _matrices(model), layers=6)
    assert [len(b.roots) for b in blocks] == [7, 7]  # a short last block joins the one before


def test_a_block_with_an_op_without_a_kernel_is_skipped_with_the_reason() -> None:
    model = onnx.load(str(LSTM))
    blocks = plan_blocks(model, [t.name for t in model.graph.initializer if len(t.dims) >= 2])
    reasons = [b.skip for b in blocks]
    assert reasons[0] is not None and reasons[0].startswith("no gradient kernel for LSTM (")
    assert reasons[-1] is None  # the Gemm head is fitted


def test_a_cnn_is_cut_between_its_stages() -> None:
    model = onnx.load(str(CNN))
    blocks = plan_blocks(model, _matrices(model) + [t.name for t in model.graph.initializer if len(t.dims) == 4])
    assert [b.skip for b in blocks] == [None] * len(blocks)
    assert [len(b.roots) for b in blocks] == [1, 2, 1, 1, 1, 1]  # the residual block's two convs together


def test_weights_in_constant_nodes_are_fitted_in_place(tmp_path: Path) -> None:
    """An export that keeps its weights in Constant nodes (PaddlePaddle's, cnn_digits_const) is
    cut and fitted like one with initializers, and the Constant nodes are written."""
    source = FIXTURES / "cnn_digits_const.onnx"
    calib = onnxprune.calibration_data(source, FIXTURES / "cnn_digits_const.calib.npz", samples=64)
    config = PruneConfig(sparsity=0.7, method="sparsegpt", block_epochs=3)
    run = onnxprune.prune_file(source, tmp_path / "out.onnx", config, calibration=calib)
    blocks = run.result.blocks
    assert blocks is not None and blocks["fitted"] >= 4 and blocks["skipped"] == 0
    assert blocks["error_after"] < blocks["error_before"]
    plain = onnxprune.prune_file(
        source, tmp_path / "plain.onnx", PruneConfig(sparsity=0.7, method="sparsegpt"), calibration=calib
    )
    fitted, base = (block_pass.stored_tensors(onnx.load(str(p)).graph) for p in (run.saved.path, plain.saved.path))
    moved = [n for n in base if base[n].dims and not np.array_equal(read_array(fitted[n]), read_array(base[n]))]
    assert moved  # the Constant nodes' values changed
    for name in moved:
        assert np.all(read_array(fitted[name])[read_array(base[name]) == 0] == 0) or len(base[name].dims) == 1


def test_roots_only_start_live_paths() -> None:
    """What no fitted weight reaches (the embedding of a first layer) is read, not computed."""
    model = onnx.load(str(TRANSFORMER))
    last = [name for name in _matrices(model) if "head" in name]
    (block,) = plan_blocks(model, last)
    assert [s.op for s in block.steps] == ["Gemm"]
    assert block.outputs == ["logits"]


def _chain(middle: str, *, tied: bool = False) -> onnx.ModelProto:
    """x @ W1 -> ``middle`` -> @ W2 (W1 again when ``tied``)."""
    second = "w1" if tied else "w2"
    inits = [init("w1", rand((8, 8), 1))] + ([] if tied else [init("w2", rand((8, 8), 2))])
    return model(
        [
            node("MatMul", ["x", "w1"], ["h"], "mm1"),
            node(middle, ["h"], ["a"], "act"),
            node("MatMul", ["a", second], ["y"], "mm2"),
        ],
        [value("x", [4, 8])],
        [value("y", [4, 8])],
        inits,
    )


def test_a_span_without_weights_joins_the_block_before_it_only_when_it_can_be_computed() -> None:
    joined = plan_blocks(_chain("Relu"), ["w1", "w2"])
    assert [b.nodes for b in joined] == [["mm1", "act"], ["mm2"]] and joined[0].outputs == ["a"]
    alone = plan_blocks(_chain("Softplus"), ["w1", "w2"])  # no kernel: the first block ends before it
    assert [b.nodes for b in alone] == [["mm1"], ["mm2"]] and [b.skip for b in alone] == [None, None]
    assert alone[0].outputs == ["h"] and alone[1].captured == ["a"]


def test_a_second_output_in_use_skips_the_block() -> None:
    graph = model(
        [
            node("MatMul", ["x", "w1"], ["h"], "mm1"),
            node("LayerNormalization", ["h", "g"], ["n", "mu"], "ln", axis=-1),
            node("Add", ["n", "mu"], ["s"], "add"),
            node("MatMul", ["s", "w2"], ["y"], "mm2"),
        ],
        [value("x", [4, 8])],
        [value("y", [4, 8])],
        [init("w1", rand((8, 8), 1)), init("g", rand((8,), 3)), init("w2", rand((8, 8), 2))],
    )
    first, second = plan_blocks(graph, ["w1", "w2"])
    assert (
        first.nodes == ["mm1", "ln", "add"] and first.skip == "ln (LayerNormalization) has more than one output in use"
    )
    assert second.skip is None


def test_a_program_that_cannot_run_is_skipped_not_raised(pruned_transformer, monkeypatch) -> None:
    pruned, calib = pruned_transformer
    _, back = autodiff.KERNELS["Softmax"]

    def refuse(x, a):
        raise NotImplementedError("not this one")

    monkeypatch.setitem(autodiff.KERNELS, "Softmax", (refuse, back))
    records = fit_blocks(copy.deepcopy(pruned), onnx.load(str(TRANSFORMER)), calib, _matrices(pruned), epochs=1)
    assert [r.skipped for r in records if r.skipped] == [
        "its program cannot run here (NotImplementedError: not this one)"
    ] * 2


def test_a_gradient_that_cannot_be_computed_skips_the_block(pruned_transformer, monkeypatch) -> None:
    pruned, calib = pruned_transformer
    run, _ = autodiff.KERNELS["Softmax"]

    def refuse(x, y, g, a, need):
        raise NotImplementedError("no gradient")

    monkeypatch.setitem(autodiff.KERNELS, "Softmax", (run, refuse))
    model = copy.deepcopy(pruned)
    records = fit_blocks(model, onnx.load(str(TRANSFORMER)), calib, _matrices(pruned), epochs=1)
    skipped = [r.skipped for r in records if r.skipped]
    assert skipped == ["its gradient cannot be computed here (NotImplementedError: no gradient)"] * 2
    assert sum(1 for r in records if r.skipped is None) == len(records) - 2


def test_an_unread_second_output_does_not_skip_the_block() -> None:
    graph = model(
        [
            node("MatMul", ["x", "w1"], ["h"], "mm1"),
            node("LayerNormalization", ["h", "g"], ["n", "mu_unread"], "ln", axis=-1),
            node("MatMul", ["n", "w2"], ["y"], "mm2"),
        ],
        [value("x", [4, 8])],
        [value("y", [4, 8])],
        [init("w1", rand((8, 8), 1)), init("g", rand((8,), 3)), init("w2", rand((8, 8), 2))],
    )
    first, _ = plan_blocks(graph, ["w1", "w2"])
    assert first.skip is None and first.nodes == ["mm1", "ln"]
    x = rand((4, 8), 5)
    params = {"w1": read_array(graph.graph.initializer[0]), "g": read_array(graph.graph.initializer[1])}
    env = forward(first.steps, {"x": x, **params})
    target = env["n"] * 1.1
    fit = fit_block(first.steps, params, {}, [Batch({"x": x}, {"n": target})], [], epochs=3, lr=1e-2)
    assert fit.error_after <= fit.error_before


def test_weights_after_the_last_cut_end_their_block_at_the_graph_outputs() -> None:
    graph = model(
        [
            node("MatMul", ["x", "w1"], ["h"], "mm1"),
            node("MatMul", ["h", "w2"], ["y1"], "mm2"),
            node("Relu", ["h"], ["y2"], "relu"),
        ],
        [value("x", [4, 8])],
        [value("y1", [4, 8]), value("y2", [4, 8])],
        [init("w1", rand((8, 8), 1)), init("w2", rand((8, 8), 2))],
    )
    blocks = plan_blocks(graph, ["w1", "w2"])
    assert [b.nodes for b in blocks] == [["mm1"], ["mm2", "relu"]]
    assert blocks[1].outputs == ["y1", "y2"] and blocks[1].skip is None


def test_a_tied_weight_is_not_fitted_in_either_block() -> None:
    blocks = plan_blocks(_chain("Relu", tied=True), ["w1"])
    assert [b.roots for b in blocks] == [[], []]
    assert all(b.skip is not None and "tied" in b.skip for b in blocks)
    assert all("w1" in b.frozen for b in blocks)


# --------------------------------------------------------------------------- on a model


@pytest.fixture(scope="module")
def pruned_transformer(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("blocks")
    calib = onnxprune.calibration_data(TRANSFORMER, FIXTURES / "transformer_mnist1d.calib.npz", samples=128)
    run = onnxprune.prune_file(
        TRANSFORMER, tmp / "sg.onnx", PruneConfig(sparsity=0.7, method="sparsegpt"), calibration=calib
    )
    return onnx.load(str(run.saved.path)), calib


def _logit_error(model: onnx.ModelProto) -> float:
    import onnxruntime as ort

    data = np.load(FIXTURES / "transformer_mnist1d.test.npz")["input"][:256]
    out = {}
    for key, m in (("dense", onnx.load(str(TRANSFORMER))), ("pruned", model)):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        out[key] = sess.run(None, {sess.get_inputs()[0].name: data})[0]
    return float(np.sum((out["pruned"] - out["dense"]) ** 2) / np.sum(out["dense"] ** 2))


def test_fit_blocks_brings_the_pruned_model_nearer_the_dense_one(pruned_transformer) -> None:
    pruned, calib = pruned_transformer
    model, dense = copy.deepcopy(pruned), onnx.load(str(TRANSFORMER))
    roots = _matrices(model)
    records = fit_blocks(model, dense, calib, roots, epochs=12)
    assert [r.skipped for r in records] == [None] * len(records)
    assert all(r.error_after <= r.error_before for r in records)
    assert any(r.epoch for r in records)
    before, after = (
        {t.name: read_array(t) for t in pruned.graph.initializer},
        {t.name: read_array(t) for t in model.graph.initializer},
    )
    for name in roots:  # the zeros stay zeros, and so the sparsity
        assert np.all(after[name][before[name] == 0] == 0), name
    assert any(not np.array_equal(before[n], after[n]) for n in roots)
    onnx.checker.check_model(model)
    # on held-out test data, not the calibration set: the logits move toward the dense model's
    assert _logit_error(model) < _logit_error(pruned)


def test_a_program_that_disagrees_with_onnxruntime_is_skipped(pruned_transformer, monkeypatch) -> None:
    pruned, calib = pruned_transformer
    model = copy.deepcopy(pruned)
    run, back = autodiff.KERNELS["Softmax"]
    monkeypatch.setitem(autodiff.KERNELS, "Softmax", (lambda x, a: [run(x, a)[0] * 1.5], back))
    records = fit_blocks(model, onnx.load(str(TRANSFORMER)), calib, _matrices(model), epochs=1)
    attention = [r for r in records if r.skipped]
    assert len(attention) == 2 and all("differs from onnxruntime" in r.skipped for r in attention)
    for a, b in zip(model.graph.initializer, pruned.graph.initializer, strict=True):  # skipped blocks: untouched
        if any(a.name in (r.first, r.last) for r in attention):
            np.testing.assert_array_equal(read_array(a), read_array(b))


def test_a_small_byte_budget_uses_fewer_batches(pruned_transformer, monkeypatch, caplog) -> None:
    pruned, calib = pruned_transformer
    monkeypatch.setattr(block_pass, "BLOCK_BYTES", 1)
    with caplog.at_level("INFO", logger="onnxprune.passes.blocks"):
        records = fit_blocks(copy.deepcopy(pruned), onnx.load(str(TRANSFORMER)), calib, _matrices(pruned), epochs=1)
    assert all(r.skipped is None for r in records)
    assert "block fitting uses 2 of 16 batches" in caplog.text


# --------------------------------------------------------------------------- the option


def test_config_refuses_impossible_block_epochs() -> None:
    for bad in (-1, True, 1.5, MAX_BLOCK_EPOCHS + 1):
        with pytest.raises(OptionError, match="block_epochs"):
            PruneConfig(sparsity=0.5, method="sparsegpt", block_epochs=bad)
    with pytest.raises(OptionError, match="calibrated method"):
        PruneConfig(sparsity=0.5, block_epochs=2)
    assert PruneConfig(sparsity=0.5, method="sparsegpt", block_epochs=2).as_dict()["block_epochs"] == 2


def test_cli_fits_blocks_and_says_so(tmp_path: Path) -> None:
    args = [
        "prune", str(MLP), str(tmp_path / "out.onnx"), "--sparsity", "0.7", "--method", "sparsegpt",
        "--calibration", str(FIXTURES / "mlp_digits.calib.npz"), "--block-epochs", "2", "--json", str(tmp_path / "r.json"),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "block reconstruction (2 epochs): fitted 3 block(s), their relative output errors" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    blocks = report["result"]["blocks"] if "result" in report else report["blocks"]
    assert blocks["fitted"] == 3 and blocks["epochs"] == 2 and len(blocks["records"]) == 3
    assert blocks["error_after"] <= blocks["error_before"]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "out.onnx")).metadata_props}
    assert json.loads(meta["onnxprune.summary"])["blocks"]["fitted"] == 3


def test_cli_says_why_blocks_were_skipped(tmp_path: Path) -> None:
    args = [
        "prune", str(LSTM), str(tmp_path / "out.onnx"), "--sparsity", "0.5", "--method", "sparsegpt",
        "--calibration", str(FIXTURES / "lstm_mnist1d.calib.npz"), "--samples", "32", "--block-epochs", "1",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "fitted 1 block(s)" in result.output and "skipped 1: no gradient kernel for LSTM" in result.output


def test_cli_block_epochs_without_a_calibrated_method_is_a_one_line_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = fails_cleanly(
        tmp_path, OptionError.exit_code, "prune", MLP, "out.onnx", "--sparsity", "0.5", "--block-epochs", "3"
    )
    assert "--block-epochs" in message and "--method" in message
