"""Sensitivity curves, their cache, the executors (process pool and a Ray cluster on loopback),
plans from the curves, and `onnxprune analyze`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ray_heads import RAY, ray_head

from onnxprune import runtime
from onnxprune.cli_analyze import analyze_command
from onnxprune.config import load_plan
from onnxprune.data import open_data
from onnxprune.errors import OptionError
from onnxprune.sensitivity.executors import ProcessExecutor, SerialExecutor
from onnxprune.sensitivity.planning import measure_plan, plan_from, tightened_until
from onnxprune.sensitivity.sweep import analyze_sensitivity
from onnxprune.sensitivity.tasks import output_loss, weight_error

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = FIXTURES / "mlp_digits.onnx"


def _data(name: str = "mlp_digits", samples: int = 128):
    path = FIXTURES / f"{name}.onnx"
    specs = runtime.input_specs(runtime.session(str(path)))
    return open_data(str(FIXTURES / f"{name}.test.npz"), specs=specs, samples=samples)


def _labels(name: str = "mlp_digits", samples: int = 128) -> np.ndarray:
    return np.load(FIXTURES / f"{name}.test_labels.npy")[:samples]


def test_weight_error_is_the_pruned_energy_share():
    w = np.array([[3.0, -1.0], [0.5, -2.0]])
    assert weight_error(w, 0.0) == 0.0
    assert weight_error(w, 0.5) == pytest.approx((0.25 + 1.0) / (9 + 1 + 0.25 + 4))
    curve = [weight_error(w, s) for s in (0.25, 0.5, 0.75)]
    assert curve == sorted(curve)


def test_output_loss_is_accuracy_drop_or_one_minus_cosine():
    dense = (np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]),)
    pruned = [np.array([[1.0, 2.0], [0.0, 3.0], [1.0, 0.0]])]
    assert output_loss(dense, pruned, np.array([0, 1, 0])) == pytest.approx(1 / 3)
    assert output_loss(dense, [dense[0].copy()], None) == pytest.approx(0.0, abs=1e-12)
    assert output_loss(dense, [-dense[0]], None) == pytest.approx(2.0)


def test_curves_with_data_are_the_same_in_a_process_pool_and_cached(tmp_path):
    data, labels = _data(), _labels()
    serial = analyze_sensitivity(MLP, data=data, labels=labels, levels=(0.3, 0.6, 0.9), executor=SerialExecutor())
    assert [c.weight for c in serial.curves] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    for curve in serial.curves:
        assert curve.kind == "accuracy drop" and curve.levels == (0.0, 0.3, 0.6, 0.9) and curve.loss[0] == 0.0
    assert max(c.loss[-1] for c in serial.curves) > 0.05  # 90 % of one layer costs accuracy somewhere
    pooled = analyze_sensitivity(
        MLP, data=data, labels=labels, levels=(0.3, 0.6, 0.9), executor=ProcessExecutor(2), cache_dir=tmp_path
    )
    assert [c.loss for c in pooled.curves] == [c.loss for c in serial.curves]
    assert not pooled.cached and len(list(tmp_path.glob("*.json"))) == 1
    start = time.perf_counter()
    again = analyze_sensitivity(MLP, data=data, labels=labels, levels=(0.3, 0.6, 0.9), cache_dir=tmp_path)
    assert again.cached and time.perf_counter() - start < 2.0
    assert [c.loss for c in again.curves] == [c.loss for c in serial.curves]
    other = analyze_sensitivity(MLP, data=data, labels=labels, levels=(0.3, 0.5), cache_dir=tmp_path)
    assert not other.cached  # other options: measured again


def test_data_free_curves_need_no_data():
    sens = analyze_sensitivity(MLP, levels=(0.5, 0.9))
    assert all(c.kind == "weight error" for c in sens.curves)
    assert all(0.0 < c.loss[1] < c.loss[2] < 1.0 for c in sens.curves)


def test_a_plan_hits_the_target_and_max_loss_is_checked_on_the_data():
    data, labels = _data(samples=450), _labels(samples=450)
    sens = analyze_sensitivity(MLP, data=data, labels=labels)
    plan = plan_from(sens, target=0.7)
    sizes = {c.weight: c.size for c in sens.curves}
    overall = sum(plan.sparsity[name] * size for name, size in sizes.items()) / sum(sizes.values())
    assert overall == pytest.approx(0.7, rel=5e-5)  # plan levels have 4 significant digits
    budget = 0.005
    checked, measured = tightened_until(MLP, sens, plan_from(sens, max_loss=budget), budget, data=data, labels=labels)
    assert measured <= budget
    assert measured == pytest.approx(measure_plan(MLP, checked.sparsity, data=data, labels=labels))
    assert checked.fraction > 0.3  # not an empty plan that trivially holds


@pytest.mark.slow
@pytest.mark.skipif(not RAY.exists(), reason="ray is not installed")
def test_ray_cluster_on_loopback_runs_the_same_tasks(tmp_path):
    """A Ray head of our own on 127.0.0.1 (its process group is ended afterwards; other
    Ray clusters on the machine are left alone), reached through RayExecutor(address)."""
    ray = pytest.importorskip("ray")
    short = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    # Auth explicitly off for this head and this process (ray is imported with RAY_AUTH_MODE
    # unset, see conftest.py): `ray start` turns token authentication on wherever it finds a
    # token (a stray ~/.ray/auth_token), and an explicit address then fails.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["RAY_AUTH_MODE"] = "disabled"
    try:
        with ray_head(temp_dir=short, env=env, num_cpus=2) as port:
            try:
                from onnxprune.sensitivity.executors import RayExecutor

                executor = RayExecutor(f"127.0.0.1:{port}")
                data, labels = _data(samples=64), _labels(samples=64)
                remote = analyze_sensitivity(MLP, data=data, labels=labels, levels=(0.5, 0.9), executor=executor)
                local = analyze_sensitivity(MLP, data=data, labels=labels, levels=(0.5, 0.9), executor=SerialExecutor())
                assert [c.loss for c in remote.curves] == [c.loss for c in local.curves]
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_ray_address_that_answers_nothing_is_a_one_line_error():
    pytest.importorskip("ray")
    from onnxprune.sensitivity.executors import RayExecutor

    with pytest.raises(OptionError, match="cannot connect to the Ray cluster"):
        RayExecutor("127.0.0.1:9")


def test_analyze_command_prints_curves_and_writes_a_plan(tmp_path):
    plan_path, report = tmp_path / "plan.json", tmp_path / "a.json"
    args = [str(MLP), "--data", str(FIXTURES / "mlp_digits.calib.npz"), "--target-sparsity", "0.6"]
    args += ["--plan-out", str(plan_path), "--json", str(report), "--cache-dir", str(tmp_path / "c"), "--workers", "1"]
    result = CliRunner().invoke(analyze_command, args)
    assert result.exit_code == 0, result.output
    assert "loss@0.5" in result.output and "fc2.weight" in result.output and "plan: 60.0%" in result.output
    plan = load_plan(plan_path)
    assert set(plan) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    data = json.loads(report.read_text())
    assert data["plan"]["fraction"] == pytest.approx(0.6, rel=5e-5) and len(data["curves"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-sparsity", "0.5", "--max-loss", "0.01"], "not several"),
        (["--plan-out", "p.json"], "--plan-out needs"),
        (["--labels", "y.npy"], "--labels needs --data"),
        (["--max-loss", "0.01"], "--max-loss needs --data"),
        (["--levels", "0.5,abc"], "--levels takes"),
    ],
)
def test_analyze_errors_are_one_line(extra, message):
    result = CliRunner().invoke(analyze_command, [str(MLP), *extra, "--no-cache"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_layer_plan_for_a_flops_budget_keeps_that_share_of_the_macs():
    from onnxprune.sensitivity.planning import macs_per_weight

    sens = analyze_sensitivity(FIXTURES / "cnn_digits.onnx")
    costs = macs_per_weight(FIXTURES / "cnn_digits.onnx", [c.weight for c in sens.curves])
    plan = plan_from(sens, keep_flops=0.5)
    total = sum(costs[c.weight] * c.size for c in sens.curves)
    kept = sum(costs[c.weight] * c.size * (1 - plan.sparsity[c.weight]) for c in sens.curves)
    assert kept / total == pytest.approx(0.5, rel=5e-5)
    assert costs["block.conv1.weight"] > costs["fc1.weight"]  # a conv weight is reused at every position


def test_structural_curves_and_group_plans(tmp_path):
    from onnxprune.sensitivity.planning import group_curves, measure_group_plan, plan_groups, tightened_groups
    from onnxprune.sensitivity.sweep import analyze_groups

    path = FIXTURES / "transformer_mnist1d.onnx"
    specs = runtime.input_specs(runtime.session(str(path)))
    data = open_data(str(FIXTURES / "transformer_mnist1d.calib.npz"), specs=specs, samples=64)
    sens = analyze_groups(path, data=data, cache_dir=tmp_path, repeats=5)
    names = [c.weight for c in sens.curves]
    assert names == [
        "/layers.0/attn/q_proj/MatMul",
        "/layers.0/ff1/MatMul",
        "/layers.1/attn/q_proj/MatMul",
        "/layers.1/ff1/MatMul",
    ]
    for curve in sens.curves:
        assert curve.levels == (0.0, 0.25, 0.5, 0.75) and curve.loss[0] == 0.0
        assert curve.macs_saved is not None and curve.latency_saved is not None
        assert 0.0 < curve.macs_saved[1] < curve.macs_saved[2] < curve.macs_saved[3] < 1.0
        assert curve.loss[3] > curve.loss[1] >= 0.0
    assert analyze_groups(path, data=data, cache_dir=tmp_path, repeats=5).cached
    half = plan_groups(sens, target=0.5)
    assert half.fraction == pytest.approx(0.5, rel=5e-5)
    flops = plan_groups(sens, keep_flops=0.8)
    assert flops.removed == pytest.approx(0.2, rel=5e-5)  # predicted share of the MACs saved (4 digits)
    # beyond what the groups' highest measured levels (0.75) save: said in the option's own terms
    top = sum(c.size * c.cost * 0.75 for c in group_curves(sens, saving="macs"))
    assert 0.0 < top < 0.9
    with pytest.raises(OptionError, match=rf"keep_flops 0\.1 is out of reach: .* saves about {100 * top:.1f}%"):
        plan_groups(sens, keep_flops=0.1)
    budget = 0.02
    checked, measured = tightened_groups(path, sens, plan_groups(sens, max_loss=budget), budget, data=data, labels=None)
    assert measured <= budget
    assert measured == pytest.approx(measure_group_plan(path, checked.sparsity, data=data, labels=None))


def test_analyze_structural_command_writes_a_plan_prune_accepts(tmp_path):
    plan_path, out, report = tmp_path / "g.json", tmp_path / "small.onnx", tmp_path / "g.html"
    model = FIXTURES / "mlp_digits.onnx"
    args = [str(model), "--structural", "--data", str(FIXTURES / "mlp_digits.calib.npz"), "--samples", "64"]
    args += ["--target-sparsity", "0.5", "--plan-out", str(plan_path), "--report", str(report), "--no-cache"]
    result = CliRunner().invoke(analyze_command, args)
    assert result.exit_code == 0, result.output
    assert "latency saved" in result.output and "--structured --plan" in result.output
    assert "Channel groups" in report.read_text() or "channel group" in report.read_text().lower()
    plan = json.loads(plan_path.read_text())
    assert set(plan) == {"/fc1/Gemm", "/fc2/Gemm"}
    from onnxprune.cli import main

    pruned = CliRunner().invoke(main, ["prune", str(model), str(out), "--structured", "--plan", str(plan_path)])
    assert pruned.exit_code == 0, pruned.output
    assert out.exists()


def test_structural_analysis_needs_data_and_latency_needs_structural():
    runner = CliRunner()
    result = runner.invoke(analyze_command, [str(MLP), "--structural", "--no-cache"])
    assert result.exit_code == 2 and "--structural measures each group's loss on data" in result.output
    result = runner.invoke(analyze_command, [str(MLP), "--target-latency", "0.7", "--no-cache"])
    assert result.exit_code == 2 and "add --structural" in result.output
