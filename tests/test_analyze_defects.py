"""`onnxprune analyze` defects: MACs per recurrent weight, output paths checked before the
sweep and written atomically, and one fidelity metric shared with `onnxprune eval`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime
from onnxprune.cli_analyze import analyze_command
from onnxprune.config import PruneConfig
from onnxprune.data import open_data
from onnxprune.evaluation import evaluate
from onnxprune.passes.unstructured import prune_weights
from onnxprune.sensitivity.sweep import analyze_sensitivity

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = FIXTURES / "mlp_digits.onnx"
LSTM = FIXTURES / "lstm_mnist1d.onnx"


# --------------------------------------------------------------------------- MACs per weight


def test_lstm_w_and_r_each_get_the_macs_of_their_own_product():
    from onnxprune.compute import count_compute
    from onnxprune.sensitivity.planning import macs_per_weight
    from onnxprune.structure.analysis import input_shapes_for

    model = onnx.load(str(LSTM))
    counted = count_compute(model, input_shapes=input_shapes_for(model))
    lstm = next(n for n in counted.nodes if n.op_type == "LSTM")
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    costs = macs_per_weight(LSTM, ["lstm.W", "lstm.R", "fc.weight"])
    w_macs, r_macs = costs["lstm.W"] * sizes["lstm.W"], costs["lstm.R"] * sizes["lstm.R"]
    assert w_macs > 0 and r_macs > 0
    assert w_macs + r_macs == pytest.approx(lstm.macs)
    # X[T=40, B=1, I=1], H=64, 4 gates, 1 direction: W·x_t is 4·64·1 per step, R·h_{t-1} is 4·64·64
    assert w_macs == pytest.approx(40 * 4 * 64 * 1)
    assert r_macs == pytest.approx(40 * 4 * 64 * 64)
    gemm = next(n for n in counted.nodes if n.op_type == "Gemm")
    assert costs["fc.weight"] * sizes["fc.weight"] == pytest.approx(gemm.macs)


def test_lstm_flops_plan_keeps_half_of_the_macs_of_w_and_r_together():
    from onnxprune.sensitivity.planning import macs_per_weight, plan_from

    sens = analyze_sensitivity(LSTM)
    plan = plan_from(sens, keep_flops=0.5)
    costs = macs_per_weight(LSTM, [c.weight for c in sens.curves])
    total = sum(costs[c.weight] * c.size for c in sens.curves)
    kept = sum(costs[c.weight] * c.size * (1 - plan.sparsity[c.weight]) for c in sens.curves)
    assert kept / total == pytest.approx(0.5, abs=1e-6)
    assert plan.sparsity["lstm.R"] > 0.0  # R does 98 % of the work: it must be pruned to reach the target


# --------------------------------------------------------------------------- output paths


def _forbid_sweeps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import onnxprune.sensitivity.sweep as sweep

    called: list[str] = []

    def fail(name: str):
        def sweep_called(*args: object, **kwargs: object) -> None:
            called.append(name)
            raise AssertionError(f"{name} ran although an output path is unusable")

        return sweep_called

    monkeypatch.setattr(sweep, "analyze_sensitivity", fail("analyze_sensitivity"))
    monkeypatch.setattr(sweep, "analyze_groups", fail("analyze_groups"))
    return called


def _bad_paths(tmp_path: Path) -> dict[str, Path]:
    regular = tmp_path / "regular.txt"
    regular.write_text("x")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {"inside a file": regular / "plan.json", "a folder": folder, "missing folder": tmp_path / "no" / "p.json"}


@pytest.mark.parametrize("option", ["--plan-out", "--json", "--report"])
@pytest.mark.parametrize("kind", ["inside a file", "a folder", "missing folder"])
@pytest.mark.parametrize("structural", [False, True])
def test_an_unusable_output_path_exits_6_before_any_sweep(tmp_path, monkeypatch, option, kind, structural):
    called = _forbid_sweeps(monkeypatch)
    bad = _bad_paths(tmp_path)[kind]
    args = [str(MLP), "--data", str(FIXTURES / "mlp_digits.calib.npz"), "--target-sparsity", "0.5", "--no-cache"]
    args += [option, str(bad)] + (["--structural"] if structural else [])
    result = CliRunner().invoke(analyze_command, args)
    assert result.exit_code == 6, result.output
    assert called == []
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in result.output
    assert not list(tmp_path.glob("**/*.tmp")) and not list(tmp_path.glob("**/.*.tmp"))


def test_an_output_over_the_model_or_given_twice_exits_6_before_any_sweep(tmp_path, monkeypatch):
    called = _forbid_sweeps(monkeypatch)
    model = tmp_path / "m.onnx"
    model.write_bytes(MLP.read_bytes())
    over_model = CliRunner().invoke(analyze_command, [str(model), "--json", str(model), "--no-cache"])
    assert over_model.exit_code == 6 and "--json" in over_model.stderr
    assert model.read_bytes() == MLP.read_bytes()
    twice = [str(model), "--target-sparsity", "0.5", "--no-cache"]
    twice += ["--plan-out", str(tmp_path / "same.json"), "--json", str(tmp_path / "same.json")]
    result = CliRunner().invoke(analyze_command, twice)
    assert result.exit_code == 6 and len(result.stderr.strip().splitlines()) == 1
    assert called == []


def test_outputs_are_written_atomically_and_leave_no_temporary_file(tmp_path, monkeypatch):
    replaced: list[Path] = []
    real_replace = os.replace

    def recording_replace(src: object, dst: object, **kwargs: object) -> None:
        replaced.append(Path(dst))  # type: ignore[arg-type]
        real_replace(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", recording_replace)
    out = tmp_path / "out"
    out.mkdir()
    plan, data, page = out / "plan.json", out / "a.json", out / "a.html"
    (out / "plan.json").write_text("old")  # replaced, not appended to
    args = [str(MLP), "--target-sparsity", "0.6", "--no-cache", "--workers", "1"]
    args += ["--plan-out", str(plan), "--json", str(data), "--report", str(page)]
    result = CliRunner().invoke(analyze_command, args)
    assert result.exit_code == 0, result.output
    assert {plan, data, page} <= set(replaced)
    assert sorted(p.name for p in out.iterdir()) == ["a.html", "a.json", "plan.json"]
    assert set(json.loads(plan.read_text())) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert json.loads(data.read_text())["plan"]["fraction"] == pytest.approx(0.6, rel=5e-5)  # 4 significant digits


# --------------------------------------------------------------------------- one metric


def _two_output_model(path: Path) -> None:
    """X[N, 16] -> Y1 = X·W1 (large values), Y2 = X·W2 (small values): two outputs of very
    different scales, so concatenating them per sample hides Y2 entirely."""
    rng = np.random.default_rng(0)
    w1 = (10.0 * rng.standard_normal((16, 32))).astype(np.float32)
    w2 = (0.1 * rng.standard_normal((16, 16))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["y1"], name="mm1"), helper.make_node("MatMul", ["x", "W2"], ["y2"])],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["n", 32]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 16]),
        ],
        initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_analyze_loss_of_a_two_output_model_is_one_minus_eval_cosine(tmp_path):
    model, data = tmp_path / "two.onnx", tmp_path / "data.npz"
    _two_output_model(model)
    np.savez(data, x=np.random.default_rng(1).standard_normal((96, 16)).astype(np.float32))
    specs = runtime.input_specs(runtime.session(str(model)))
    sens = analyze_sensitivity(model, data=open_data(str(data), specs=specs), levels=(0.7,))
    assert [c.weight for c in sens.curves] == ["W1", "W2"]

    cli = tmp_path / "curves.json"
    args = [str(model), "--data", str(data), "--levels", "0.7", "--no-cache", "--workers", "1", "--json", str(cli)]
    result = CliRunner().invoke(analyze_command, args)
    assert result.exit_code == 0, result.output
    reported = {c["weight"]: c["loss"][1] for c in json.loads(cli.read_text())["curves"]}

    for curve in sens.curves:
        pruned_model = onnx.load(str(model))
        prune_weights(pruned_model, PruneConfig(plan={curve.weight: 0.7}, min_size=0))
        pruned = tmp_path / f"pruned_{curve.weight}.onnx"
        onnx.save(pruned_model, str(pruned))
        cosine = evaluate(model, [pruned], data=str(data)).models[1].fidelity["overall"]["cosine"]
        assert curve.loss[1] == pytest.approx(1.0 - cosine, abs=1e-9)
        assert reported[curve.weight] == pytest.approx(1.0 - cosine, abs=1e-9)
    w2 = next(c for c in sens.curves if c.weight == "W2")
    assert w2.loss[1] > 0.01  # the small output counts as much as the large one


def test_curves_cached_with_the_old_cosine_are_measured_again(tmp_path):
    model, data = tmp_path / "two.onnx", tmp_path / "data.npz"
    _two_output_model(model)
    np.savez(data, x=np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32))
    specs = runtime.input_specs(runtime.session(str(model)))
    dataset = open_data(str(data), specs=specs)
    first = analyze_sensitivity(model, data=dataset, levels=(0.7,), cache_dir=tmp_path / "c")
    (cached,) = (tmp_path / "c").glob("*.json")
    saved = json.loads(cached.read_text())
    cached.write_text(
        json.dumps({**saved, "version": 1, "curves": [{**c, "loss": [0.0, 9.0]} for c in saved["curves"]]})
    )
    again = analyze_sensitivity(model, data=dataset, levels=(0.7,), cache_dir=tmp_path / "c")
    assert not again.cached and [c.loss for c in again.curves] == [c.loss for c in first.curves]
    assert analyze_sensitivity(model, data=dataset, levels=(0.7,), cache_dir=tmp_path / "c").cached
