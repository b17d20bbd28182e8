"""Where a wave's layer solves run (``workers``, ``ray``) changes nothing in the output: the same
bits serially, in a process pool and on a local Ray; a task's error comes back as itself."""

from __future__ import annotations

import importlib.util
import pickle
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.config import check_amount
from onnxprune.errors import DataError, OnnxPruneError, OptionError
from onnxprune.executors import ProcessExecutor, SerialExecutor
from onnxprune.executors import pool as pool_module
from onnxprune.reconstruct.layer import LayerTask, UseMeans, reference_terms, solve_layer
from onnxprune.reconstruct.methods import SPARSEGPT, Method

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HAS_RAY = importlib.util.find_spec("ray") is not None
#: a transformer in waves (residual targets, cross-statistics after the first wave, several layers
#: per wave), and an LSTM in one wave (parallel mode: its grouped gates and the classifier solved in
#: the executor, its recurrent R, whose damping is chosen closed loop, here in order)
MODELS = {"transformer_mnist1d": True, "lstm_mnist1d": False}
_SERIAL: dict[str, bytes] = {}


def _prune(name: str, out: Path, **where: object) -> bytes:
    calib = onnxprune.calibration_data(FIXTURES / f"{name}.onnx", FIXTURES / f"{name}.calib.npz", samples=64)
    config = onnxprune.PruneConfig(
        sparsity=0.5, method="sparsegpt", bias_correction=True, allocator="uniform", sequential=MODELS[name], **where
    )
    run = onnxprune.prune_file(FIXTURES / f"{name}.onnx", out, config, calibration=calib)
    return run.saved.path.read_bytes()


def _serial(name: str, tmp_path: Path) -> bytes:
    if name not in _SERIAL:
        _SERIAL[name] = _prune(name, tmp_path / f"{name}.serial.onnx")
    return _SERIAL[name]


def _assert_same_bits(got: bytes, expected: bytes) -> None:
    """Every initializer byte for byte (named in the failure), then the whole file."""
    a, b = onnx.load_from_string(got), onnx.load_from_string(expected)
    ours = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    theirs = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ours.keys() == theirs.keys()
    differ = [name for name in ours if ours[name].tobytes() != theirs[name].tobytes()]
    assert not differ, f"initializers that differ: {differ}"
    assert got == expected


def test_the_serial_run_changes_weights(tmp_path: Path) -> None:
    """The comparison below is not between two untouched models."""
    pruned = onnx.load_from_string(_serial("transformer_mnist1d", tmp_path))
    dense = onnx.load(FIXTURES / "transformer_mnist1d.onnx")
    before = {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer}
    changed = [
        t.name
        for t in pruned.graph.initializer
        if t.name in before and not np.array_equal(numpy_helper.to_array(t), before[t.name])
    ]
    assert len(changed) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_a_process_pool_gives_the_serial_bits(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []  # the waves the pool really ran (a wave of one task runs here)
    run = pool_module._run
    monkeypatch.setattr(pool_module, "_run", lambda *args: sizes.append(len(args[2])) or run(*args))
    _assert_same_bits(_prune(name, tmp_path / "pool.onnx", workers=2), _serial(name, tmp_path))
    assert sizes and max(sizes) >= 2, sizes


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")
def test_a_local_ray_gives_the_serial_bits(tmp_path: Path) -> None:
    name = "transformer_mnist1d"
    _assert_same_bits(_prune(name, tmp_path / "ray.onnx", ray="local"), _serial(name, tmp_path))


def _task(seed: int = 0, *, method: Method = SPARSEGPT) -> LayerTask:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 96))
    w = rng.standard_normal((1, 24, 96))
    h = (x.T @ x)[None]
    cw, energy = reference_terms(w, h * 0.9, h * 1.1)
    return LayerTask(
        weight=f"w{seed}",
        w=w,
        magnitude=np.abs(w) < np.median(np.abs(w)),
        H=h,
        sqnorm=np.diagonal(h, axis1=1, axis2=2).copy(),
        method=method,
        percdamp=0.1,
        blocksize=32,
        exact_refit=True,
        row_wise=True,
        count=w.size // 2,
        amount=0.5,
        CW=cw,
        energy_ref=energy,
        uses=(UseMeans(x.mean(axis=0)[None], x.mean(axis=0)[None] * 1.01),),
    )


def test_a_task_gives_the_same_bits_after_pickling_and_in_any_memory_layout() -> None:
    """What a worker receives is an unpickled copy, laid out as pickle made it: the solve
    normalizes the layout (BLAS or numpy's own loops would otherwise sum differently)."""
    task = _task()
    here = solve_layer(task)
    there = solve_layer(pickle.loads(pickle.dumps(task)))
    fortran = solve_layer(replace(task, w=np.asfortranarray(task.w), H=np.asfortranarray(task.H)))
    strided = solve_layer(replace(task, w=np.repeat(task.w, 2, axis=2)[:, :, ::2]))
    assert np.count_nonzero(here.new == 0) == task.w.size // 2
    for other in (there, fortran, strided):
        assert other.new.tobytes() == here.new.tobytes()
        assert (other.err_num, other.err_den, other.mag_num) == (here.err_num, here.err_den, here.mag_num)
        assert [d.tobytes() for d in other.deltas] == [d.tobytes() for d in here.deltas]


@pytest.mark.slow
def test_results_come_back_in_task_order_whatever_finishes_first() -> None:
    tasks = [_task(seed) for seed in range(4)]
    expected = [solve_layer(t).new.tobytes() for t in tasks]
    seen: list[tuple[int, int, str]] = []
    with ProcessExecutor(2) as executor:
        got = executor.map(solve_layer, tasks, lambda done, total, label: seen.append((done, total, label)))
        again = executor.map(solve_layer, tasks[::-1])  # the same pool serves a second wave
    assert [s.new.tobytes() for s in got] == expected
    assert [s.new.tobytes() for s in again] == expected[::-1]
    assert [d for d, _, _ in seen] == [1, 2, 3, 4] and sorted(label for _, _, label in seen) == ["w0", "w1", "w2", "w3"]


def _refuse(problem: object) -> np.ndarray:
    raise DataError("layer 'w1' has no rows to fit: give more calibration samples")


REFUSING = Method(name="refusing", help="raises", solve=_refuse)


@pytest.mark.slow
def test_an_error_in_a_pool_worker_is_the_same_error_in_one_line() -> None:
    tasks = [_task(0), _task(1, method=REFUSING), _task(2)]
    with pytest.raises(DataError) as serial:
        SerialExecutor().map(solve_layer, tasks)
    with ProcessExecutor(2) as executor, pytest.raises(DataError) as pooled:
        executor.map(solve_layer, tasks)
    assert str(pooled.value) == str(serial.value) == "layer 'w1' has no rows to fit: give more calibration samples"
    with ProcessExecutor(2) as executor, pytest.raises(OptionError, match=r"^sparsity must be a fraction"):
        executor.map(check_amount, [0.5, 2.0, 0.25])  # an onnxprune function's own error


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")
def test_an_error_on_ray_is_the_same_error_in_one_line() -> None:
    from onnxprune.executors import RayExecutor

    with pytest.raises(OptionError) as serial:
        check_amount(2.0)
    with RayExecutor("local") as executor:
        assert executor.map(check_amount, [0.5, 0.25]) == [0.5, 0.25]
        with pytest.raises(OptionError) as remote:
            executor.map(check_amount, [0.5, 2.0, 0.25])
    assert type(remote.value) is OptionError
    assert str(remote.value) == str(serial.value) and "\n" not in str(remote.value)


def _cli(*args: str) -> object:
    model = FIXTURES / "mlp_digits.onnx"
    return CliRunner().invoke(main, ["prune", str(model), *args], catch_exceptions=False)


def test_ray_without_the_ray_package_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray sees
    calib = str(FIXTURES / "mlp_digits.calib.npz")
    result = _cli(
        str(tmp_path / "o.onnx"), "--sparsity", "0.5", "--method", "sparsegpt", "--calibration", calib, "--ray", "local"
    )
    assert result.exit_code == OptionError.exit_code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "--ray needs the ray package: pip install 'onnxprune[ray]'" in lines[0]
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ("--workers", "2"),
            "--workers/--ray run the layer solves of a calibrated --method (wanda, sparsegpt, admm or refit)",
        ),
        (("--method", "sparsegpt", "--workers", "0"), "--workers must be an integer >= 1, got 0"),
        (("--method", "sparsegpt", "--workers", "2", "--ray", "local"), "give --workers or --ray, not both"),
    ],
)
def test_placement_flags_are_checked(tmp_path: Path, extra: tuple[str, ...], message: str) -> None:
    result = _cli(
        str(tmp_path / "o.onnx"), "--sparsity", "0.5", "--calibration", str(FIXTURES / "mlp_digits.calib.npz"), *extra
    )
    assert result.exit_code == OptionError.exit_code, result.output
    assert re.search(re.escape(message), result.output), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_placement_is_not_in_the_stamped_options() -> None:
    base = onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt")
    assert replace(base, workers=3).as_dict() == replace(base, ray="local").as_dict() == base.as_dict()
    with pytest.raises(OnnxPruneError, match=r"^ray must be a cluster address"):
        replace(base, ray=" ")
