"""Error-curve allocation in the calibrated pass (:mod:`onnxprune.passes.curve_allocation`) and the
exact counts of the solvers: the overall count, the caps, uniform as before, the option's
errors, what the result, JSON and metadata record, and a measured gain on the LSTM fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_contract import cli, error_line
from onnx import numpy_helper

import onnxprune
from onnxprune.graph import tensors
from onnxprune.graph.discovery import discover
from onnxprune.passes import curve_allocation
from onnxprune.passes.curve_allocation import OutputProbe, probe_batches
from onnxprune.reconstruct.masks import row_counts
from onnxprune.reconstruct.methods import METHODS, LayerProblem
from onnxprune.sparsity import count_for_amount

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LSTM = FIXTURES / "lstm_mnist1d.onnx"
CALIB = FIXTURES / "lstm_mnist1d.calib.npz"


def _calib(samples: int = 128) -> onnxprune.Dataset:
    return onnxprune.calibration_data(LSTM, CALIB, samples=samples)


def _accuracy(path: Path) -> float:
    x = np.load(FIXTURES / "lstm_mnist1d.test.npz")["input"]
    y = np.load(FIXTURES / "lstm_mnist1d.test_labels.npy")
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return float(np.mean(logits.argmax(1) == y))


def _stored_zeros(path: Path, names: set[str]) -> dict[str, int]:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return {
        t.name: int(np.count_nonzero(onnx.numpy_helper.to_array(t) == 0))
        for t in model.graph.initializer
        if t.name in names
    }


@pytest.fixture(scope="module")
def calib() -> onnxprune.Dataset:
    return _calib()


def _prune(tmp_path: Path, calib: onnxprune.Dataset, name: str, **options: object) -> onnxprune.PruneRun:
    config = onnxprune.PruneConfig(method="sparsegpt", **options)  # type: ignore[arg-type]
    return onnxprune.prune_file(LSTM, tmp_path / f"{name}.onnx", config, calibration=calib)


@pytest.mark.parametrize("amount", [0.5, 0.7])
def test_curves_keep_the_exact_overall_count(tmp_path: Path, calib: onnxprune.Dataset, amount: float):
    """The layers get different sparsities, and the zeros stored in the output sum to
    floor(amount · Σ n) exactly; the result, the stored tensors and onnxruntime agree."""
    run = _prune(tmp_path, calib, "curves", sparsity=amount)
    pruned = run.result.pruned
    total = sum(layer.numel for layer in pruned)
    stored = _stored_zeros(run.saved.path, {layer.name for layer in pruned})
    assert sum(stored.values()) == run.result.zeros_after == count_for_amount(total, amount)
    assert all(stored[layer.name] == layer.zeros_after == round(layer.target * layer.numel) for layer in pruned)
    assert len({layer.target for layer in pruned}) > 1  # not uniform
    assert all(layer.method == "sparsegpt" and layer.curve_weight is not None for layer in pruned)
    out = ort.InferenceSession(str(run.saved.path), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.load(FIXTURES / "lstm_mnist1d.test.npz")["input"][:8]}
    )[0]
    assert np.isfinite(out).all()


def test_curves_respect_the_cap(tmp_path: Path, calib: onnxprune.Dataset):
    """No layer is given more than max_layer_sparsity, and the count stays exact."""
    free = _prune(tmp_path, calib, "free", sparsity=0.7)
    assert max(layer.sparsity_after for layer in free.result.pruned) > 0.705  # the cap below binds (0.711)
    run = _prune(tmp_path, calib, "capped", sparsity=0.7, max_layer_sparsity=0.705)
    assert max(layer.sparsity_after for layer in run.result.pruned) <= 0.705
    assert run.result.zeros_after == count_for_amount(run.result.weights_total, 0.7)


@pytest.mark.parametrize("amount", [0.5, 0.7])
def test_curves_stay_in_the_trust_region_around_the_probed_level(
    tmp_path: Path, calib: onnxprune.Dataset, amount: float
) -> None:
    """No layer is given more than t + TRUST·(1 − t): the probe is measured at t only."""
    from onnxprune.passes.curve_allocation import TRUST

    run = _prune(tmp_path, calib, "trust", sparsity=amount)
    top = amount + TRUST * (1 - amount)
    assert max(layer.sparsity_after for layer in run.result.pruned) <= top + 1e-9
    assert max(layer.sparsity_after for layer in run.result.pruned) > amount  # it still moves weights


def test_uniform_gives_every_layer_its_own_count(tmp_path: Path, calib: onnxprune.Dataset):
    """``allocator="uniform"`` is the allocation as before: floor(amount · n) per layer (now
    exact also where a row-wise count does not divide it: 0.7 · 64 columns), nothing recorded."""
    run = _prune(tmp_path, calib, "uniform", sparsity=0.7, allocator="uniform")
    pruned = run.result.pruned
    stored = _stored_zeros(run.saved.path, {layer.name for layer in pruned})
    for layer in pruned:
        assert stored[layer.name] == layer.zeros_after == count_for_amount(layer.numel, 0.7), layer.key
        assert layer.target == 0.7 and layer.curve_weight is None and layer.probe is None
    assert run.result.allocation == {"mode": "uniform"}
    assert run.result.config["allocator"] == "uniform"


def test_curves_beat_uniform_on_the_lstm(tmp_path: Path, calib: onnxprune.Dataset):
    """Measured on the fixture's held-out test set (top-1): at 50 % uniform SparseGPT gives
    91.1 %, error-curve allocation 94.5 % (dense 95.3 %; damping 0.1)."""
    uniform = _prune(tmp_path, calib, "uniform", sparsity=0.5, allocator="uniform")
    curves = _prune(tmp_path, calib, "curves", sparsity=0.5)
    assert _accuracy(curves.saved.path) > _accuracy(uniform.saved.path) + 0.015


def test_result_json_and_metadata_record_the_allocation(tmp_path: Path):
    out, report = tmp_path / "out.onnx", tmp_path / "out.json"
    result = cli(
        "prune", LSTM, out, "--sparsity", "0.5", "--method", "sparsegpt", "--calibration", CALIB, "--json", report
    )
    assert result.exit_code == 0, result.output
    assert "allocated" in result.stdout and "allocation: curves" in result.stdout
    data = json.loads(report.read_text())
    assert data["config"]["allocator"] == "curves" and data["allocation"]["mode"] == "curves"
    layers = data["allocation"]["layers"]
    assert set(layers) == {layer["key"] for layer in data["layers"] if layer["pruned"]}
    for layer in data["layers"]:
        if layer["pruned"]:
            assert layer["curve_weight"] == layers[layer["key"]]["weight"] > 0
            assert layer["target"] == layers[layer["key"]]["allocated"]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["onnxprune.options"])["allocator"] == "curves"


def test_the_default_allocator():
    curves = {"sparsity": 0.5}
    assert onnxprune.PruneConfig(**curves, method="sparsegpt").resolved_allocator == "curves"
    assert onnxprune.PruneConfig(**curves, method="wanda").resolved_allocator == "curves"
    assert onnxprune.PruneConfig(**curves, method="refit").resolved_allocator == "curves"
    assert onnxprune.PruneConfig(**curves).resolved_allocator == "uniform"  # magnitude
    assert onnxprune.PruneConfig(**curves, bias_correction=True).resolved_allocator == "uniform"
    assert onnxprune.PruneConfig(**curves, method="sparsegpt", scope="global").resolved_allocator == "uniform"
    assert onnxprune.PruneConfig(pattern=(2, 4), method="sparsegpt").resolved_allocator == "uniform"
    plan = onnxprune.PruneConfig(sparsity=0.5, plan={"fc.weight": 0.3}, method="sparsegpt")
    assert plan.resolved_allocator == "uniform"
    assert onnxprune.PruneConfig(**curves, method="sparsegpt").as_dict()["allocator"] == "curves"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"pattern": (2, 4), "method": "sparsegpt"}, "N:M pattern"),
        ({"sparsity": 0.5, "plan": {"fc.weight": 0.3}, "method": "sparsegpt"}, "plan"),
        ({"sparsity": 0.5, "scope": "global", "method": "sparsegpt"}, "scope"),
        ({"sparsity": 0.5}, "method"),
        ({"plan": {"fc.weight": 0.3}, "method": "sparsegpt"}, "plan"),
    ],
)
def test_curves_refuses_what_it_cannot_split(options: dict[str, object], fragment: str):
    with pytest.raises(onnxprune.OptionError, match=fragment):
        onnxprune.PruneConfig(**options, allocator="curves")  # type: ignore[arg-type]
    with pytest.raises(onnxprune.OptionError, match="allocator"):
        onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt", allocator="greedy")


def test_the_cli_names_the_flag(tmp_path: Path):
    out = tmp_path / "out.onnx"
    base = ("prune", LSTM, out, "--method", "sparsegpt", "--calibration", CALIB, "--allocation", "curves")
    message = error_line(cli(*base, "--pattern", "2:4"), 2, "--allocation curves", "--pattern")
    assert "allocator" not in message
    error_line(cli(*base, "--sparsity", "0.5", "--scope", "global"), 2, "--allocation curves", "--scope global")
    error_line(cli("prune", LSTM, out, "--sparsity", "0.5", "--allocation", "curves"), 2, "--method")
    assert not out.exists()


def test_nm_is_not_allocated(tmp_path: Path, calib: onnxprune.Dataset):
    """2:4 keeps its pattern in every layer: no allocation, the same result as before."""
    run = _prune(tmp_path, calib, "nm", pattern=(2, 4))
    assert run.result.allocation == {"mode": "uniform"}
    assert all(layer.pattern == "2:4" or layer.target == 0.5 for layer in run.result.pruned)


def test_data_free_calibration_allocates_too(tmp_path: Path):
    """On synthetic inputs the probe runs on synthetic data; measured on the fixtures it still
    helps (LSTM 50 %: uniform 88.9 %, curves 93.2 %), so curves stays the default there."""
    data = onnxprune.calibration_data(LSTM, data_free=True, samples=64)
    run = _prune(tmp_path, data, "free", sparsity=0.5)
    assert run.result.allocation is not None and run.result.allocation["mode"] == "curves"
    assert run.result.zeros_after == count_for_amount(run.result.weights_total, 0.5)


# the solvers' exact counts (LayerProblem.count)


def test_row_counts_spread_the_remainder():
    scores = np.arange(12.0).reshape(4, 3)[::-1].copy()  # row 3 has the smallest scores
    counts = row_counts(scores, 6)
    assert counts.sum() == 6 and counts.max() - counts.min() <= 1
    assert counts.tolist() == [1, 1, 2, 2]  # the extra ones to the rows whose next score is smallest
    with pytest.raises(ValueError, match="count"):
        row_counts(scores, 13)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "admm"])
@pytest.mark.parametrize("row_wise", [True, False])
def test_solvers_prune_exactly_the_count(method: str, row_wise: bool):
    """44.8 of 64 columns per row: a fraction rounded per row would give 44 · rows; the count gives
    exactly what is asked, rows differing by at most one."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64))
    x = rng.standard_normal((256, 64))
    h = x.T @ x
    count = count_for_amount(w.size, 0.7)
    problem = LayerProblem(
        w=w,
        goal=w,
        H=h,
        sqnorm=np.diagonal(h).copy(),
        mask=None,
        amount=0.7,
        nm=None,
        percdamp=0.01,
        blocksize=16,
        row_wise=row_wise,
        count=count,
    )
    new = METHODS[method].solve(problem)
    assert np.count_nonzero(new == 0) == count == 716
    if row_wise:
        per_row = np.count_nonzero(new == 0, axis=1)
        assert per_row.max() - per_row.min() <= 1


def test_the_probe_feeds_or_writes_or_runs_the_tail_of_the_weight_alike(calib: onnxprune.Dataset, tmp_path: Path):
    """A main-graph initializer is probed by feeding it to one shared session, or with a folder
    by running its tail only; a weight stored elsewhere (a body, a Constant) by writing it into
    the model: all give the same change, and the model is left as it was."""
    model = onnx.load(str(LSTM))
    before = model.SerializeToString()
    inventory = discover(model)
    weights = list(inventory.prunable)
    feeds = probe_batches(calib, 8)  # four batches: the tails' dense values are kept per batch
    shared, alone = OutputProbe(model, weights, feeds), OutputProbe(model, [], feeds)
    tails = OutputProbe(model, weights, feeds, tmp_path / "probe")
    assert shared.fed == {w.name for w in weights} and not alone.fed
    assert tails.tailed == shared.fed and not tails.fed
    for weight in weights:
        values = tensors.read_array(inventory.proto(weight))
        pruned = np.where(np.abs(values) < np.median(np.abs(values)), 0, values).astype(values.dtype)
        fed, written = shared.measure(weight, inventory, pruned).change, alone.measure(weight, inventory, pruned).change
        assert fed > 0 and fed == pytest.approx(written, rel=1e-4)
        assert tails.measure(weight, inventory, pruned).change == pytest.approx(fed, rel=1e-4)
    tails.close()
    assert model.SerializeToString() == before
    assert not list((tmp_path / "probe").glob("*.npy"))


def test_the_probe_cuts_its_batches_to_the_byte_budget_and_keeps_its_sample_count(
    calib: onnxprune.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[int]] = []
    real = OutputProbe.__init__

    def spy(self, model, weights, feeds, folder=None, **kw):
        seen.append([calib.count(f) for f in feeds])
        real(self, model, weights, feeds, folder, **kw)

    monkeypatch.setattr(OutputProbe, "__init__", spy)
    monkeypatch.setattr(curve_allocation, "PROBE_REL_SE", 0.0)  # every probe runs all its samples
    monkeypatch.setattr(curve_allocation, "PROBE_SCREEN", False)
    config = onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt")
    base, _ = onnxprune.prune(onnx.load(str(LSTM)), config, calibration=calib)
    monkeypatch.setattr(curve_allocation, "BATCH_BYTES", 3 * 40 * 4 * 64 + 1)  # 3 samples' inputs: batches of 2
    cut, _ = onnxprune.prune(onnx.load(str(LSTM)), config, calibration=calib)
    # batches of PROBE_BATCH at most, cut to a power of two: exactly PROBE_SAMPLES in whole batches
    assert seen[0] == [curve_allocation.PROBE_BATCH] * (32 // curve_allocation.PROBE_BATCH) and seen[1] == [2] * 16
    zeros = [
        {t.name: int(np.count_nonzero(numpy_helper.to_array(t) == 0)) for t in m.graph.initializer} for m in (base, cut)
    ]
    assert zeros[0] == zeros[1]  # the same allocation


def test_a_layer_whose_floor_passes_the_trust_region_keeps_its_floor() -> None:
    """A layer with more zeros and dead inputs than t + TRUST·(1 − t) (PP-OCRv4 det: 70.8 % at
    t = 0.5, cap 66.7 %) is allocated at least its floor, and the overall count stays exact."""
    from types import SimpleNamespace

    from onnxprune.passes.curve_allocation import TRUST, _Measured, _Problem
    from onnxprune.passes.unstructured import Target

    t, size = 0.5, 1000
    assert t + TRUST * (1 - t) < 0.708
    levels = (0.0, 0.25, 0.5, 0.708, 0.8, 0.9)
    measured = {
        "dead": _Measured(levels, (0.0, 0.0, 0.0, 0.0, 0.1, 0.3), at_target=1e-9, floor=0.708, probe=1e-9),
        "live": _Measured(levels, (0.0, 0.01, 0.05, 0.2, 0.4, 0.8), at_target=0.05, floor=0.0, probe=0.05),
    }
    targets = {key: Target(count=count_for_amount(size, t), amount=t) for key in measured}
    by_key = {key: SimpleNamespace(numel=size) for key in measured}
    config = onnxprune.PruneConfig(sparsity=t, method="sparsegpt")
    new, _, _ = _Problem(t, config.max_layer_sparsity, targets, (), by_key).allocate(measured)  # type: ignore[arg-type, misc]
    assert new["dead"].count >= round(0.708 * size)
    assert new["dead"].count + new["live"].count == count_for_amount(2 * size, t)


def test_curves_are_not_measured_above_the_trust_region(tmp_path: Path, calib: onnxprune.Dataset) -> None:
    """At t = 0.5 the allocation never goes above 0.5 + (1 − 0.5)/3 = 0.667: every layer's levels
    stop at the first grid level past it (0.7), which the envelope needs at the bound."""
    run = _prune(tmp_path, calib, "short", sparsity=0.5)
    layers = run.result.allocation["layers"]  # type: ignore[index]
    assert all(0.667 < max(entry["levels"]) < 0.75 for entry in layers.values()), layers


@pytest.mark.parametrize("tailed", [False, True])
def test_the_probe_stops_once_the_change_is_known_and_scales_it_to_every_sample(
    calib: onnxprune.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tailed: bool
) -> None:
    """Eight batches of the same two samples: every batch moves the outputs alike (no spread),
    so the probe stops at PROBE_MIN_BATCHES batches with the change of all eight; batches that
    differ run on while the spread is high; without counts every batch runs."""
    model = onnx.load(str(LSTM))
    inventory = discover(model)
    weights = list(inventory.prunable)
    first = next(calib.batches(2))
    same = [first] * 8
    folder = (lambda name: tmp_path / name) if tailed else (lambda name: None)
    full = OutputProbe(model, weights, same, folder("full"))
    early = OutputProbe(model, weights, same, folder("early"), counts=[2] * 8)
    varied_feeds = list(calib.batches(2))[:8]
    varied = OutputProbe(model, weights, varied_feeds, folder("varied"), counts=[2] * 8)
    monkeypatch.setattr(curve_allocation, "PROBE_REL_SE", 1e-9)  # only a spread of zero settles
    for weight in weights:
        values = tensors.read_array(inventory.proto(weight))
        pruned = np.where(np.abs(values) < np.median(np.abs(values)), 0, values).astype(values.dtype)
        whole = full.measure(weight, inventory, pruned)
        stopped = early.measure(weight, inventory, pruned)
        assert whole.samples == 0 and whole.change > 0
        assert stopped.samples == 2 * curve_allocation.PROBE_MIN_BATCHES
        assert stopped.change == pytest.approx(whole.change, rel=1e-6)
        assert varied.measure(weight, inventory, pruned).samples == 16  # a spread: never settled
    for probe in (full, early, varied):
        probe.close()


def test_relative_error_of_the_per_sample_change() -> None:
    from onnxprune.passes.curve_allocation import _relative_error

    assert math.isnan(_relative_error([1.0], [2]))
    assert math.isnan(_relative_error([0.0, 0.0], [2, 2]))
    rates = np.array([1.0, 3.0, 2.0, 2.0])
    expected = rates.std(ddof=1) / 2 / rates.mean()
    assert _relative_error(list(rates * 4), [4] * 4) == pytest.approx(expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_squared_distance_over_chunks_matches_a_float64_sum(dtype, monkeypatch) -> None:
    monkeypatch.setattr(curve_allocation, "_CHUNK", 1000)  # 2.5 chunks, the last one short
    rng = np.random.default_rng(7)
    a = rng.standard_normal((5, 500)).astype(dtype)
    b = (a + rng.standard_normal(a.shape) * 1e-2).astype(dtype)
    wide_a, wide_b = a.astype(np.float64), b.astype(np.float64)
    assert curve_allocation._squared_distance(a, b) == pytest.approx(np.sum((wide_a - wide_b) ** 2), rel=1e-5)
    assert curve_allocation._squared_distance(a) == pytest.approx(np.sum(wide_a**2), rel=1e-6)
    assert curve_allocation._squared_distance(a[:0]) == 0.0


def test_progress_runs_forward_through_the_allocation_and_the_pass(calib: onnxprune.Dataset) -> None:
    """The allocation's steps come first, the pass's follow on the same total: never backwards."""
    from onnxprune.passes.calibrated import prune_calibrated

    seen: list[tuple[int, int]] = []
    model = onnx.load(str(LSTM))
    config = onnxprune.PruneConfig(method="sparsegpt", sparsity=0.5)
    prune_calibrated(model, config, calib, progress=lambda done, total, *_: seen.append((done, total)))
    assert len({total for _, total in seen}) == 1
    assert [done for done, _ in seen] == list(range(1, len(seen) + 1)) and seen[-1][0] == seen[-1][1]


class _Refusing:
    def run(self, *_: object) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad feed")


@pytest.mark.parametrize("tailed", [False, True])
def test_a_probe_that_onnxruntime_refuses_is_a_data_error(
    calib: onnxprune.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tailed: bool
) -> None:
    """A run of the probe that fails (its fed session, or a tail's) says so as the library's
    DataError, naming the way around it."""
    model = onnx.load(str(LSTM))
    inventory = discover(model)
    weight = next(iter(inventory.prunable))
    probe = OutputProbe(model, [weight], probe_batches(calib, 32), tmp_path / "probe" if tailed else None)
    if tailed:
        monkeypatch.setattr("onnxprune.tails.capture_session", lambda source: _Refusing())
    else:
        probe.session = _Refusing()  # type: ignore[assignment]
    values = tensors.read_array(inventory.proto(weight))
    with pytest.raises(onnxprune.DataError, match=r"bad feed.*allocation's probe.*uniform"):
        probe.measure(weight, inventory, values)
    probe.close()


def test_admm_curves_are_measured_by_sparsegpt_and_its_layers_solved_by_admm(
    tmp_path: Path, calib: onnxprune.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``admm`` has ``curves_by="sparsegpt"``: the allocation's many levels are SparseGPT's greedy
    solves; each layer is then solved once by ADMM (and the overall count stays exact)."""
    from onnxprune.reconstruct import methods

    calls: list[tuple[str, bool]] = []
    for name in ("admm", "sparsegpt"):
        method = METHODS[name]
        monkeypatch.setitem(
            METHODS._items,  # type: ignore[attr-defined]
            name,
            methods.Method(**{**method.__dict__, "solve": _recording(method.solve, name, calls)}),
        )
    config = onnxprune.PruneConfig(method="admm", sparsity=0.6)
    run = onnxprune.prune_file(LSTM, tmp_path / "admm.onnx", config, calibration=calib)
    solved = [layer for layer in run.result.layers if layer.method == "admm"]
    admm_calls = [exact for name, exact in calls if name == "admm"]
    assert solved and len(admm_calls) >= len(solved)  # one solve per group of each layer
    assert all(admm_calls)  # ADMM only for the layers' solves, with the exact refit
    assert any(name == "sparsegpt" and not exact for name, exact in calls)  # the curves, greedy
    assert run.result.allocation is not None and run.result.allocation["mode"] == "curves"
    numel = {w.name: w.numel for w in discover(onnx.load(str(LSTM))).prunable}
    total = sum(numel[layer.name] for layer in solved)
    assert sum(layer.zeros_after for layer in solved) == pytest.approx(0.6 * total, abs=len(solved))


def _recording(solve, name, calls):  # type: ignore[no-untyped-def]
    def wrapped(problem: LayerProblem) -> np.ndarray:
        calls.append((name, problem.exact_refit))
        return solve(problem)

    return wrapped


@pytest.mark.parametrize("tailed", [False, True])
def test_a_probe_cut_to_a_window_and_resumed_gives_the_change_of_every_batch(
    calib: onnxprune.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tailed: bool
) -> None:
    """The screen runs the first batches of every layer (a window of 4 of 8); a later round runs
    the tails again from batch 4 and resumes each probe there: the batches' changes, and the
    change scaled to all samples, are those of a probe that ran all 8 at once."""
    monkeypatch.setattr(curve_allocation, "PROBE_REL_SE", 0.0)  # no probe settles by its own rule
    model = onnx.load(str(LSTM))
    inventory = discover(model)
    weights = list(inventory.prunable)
    feeds = list(calib.batches(2))[:8]
    folder = (lambda name: tmp_path / name) if tailed else (lambda name: None)
    whole = OutputProbe(model, weights, feeds, folder("whole"), counts=[2] * 8)
    windowed = OutputProbe(model, weights, feeds, folder("windowed"), counts=[2] * 8, window=4)
    pruned = {}
    screened = {}
    for weight in weights:
        values = tensors.read_array(inventory.proto(weight))
        pruned[weight.key] = np.where(np.abs(values) < np.median(np.abs(values)), 0, values).astype(values.dtype)
        screened[weight.key] = windowed.measure(weight, inventory, pruned[weight.key])
        assert screened[weight.key].samples == 8 and len(screened[weight.key].moved) == 4
        assert not screened[weight.key].settled
    windowed.restart(weights, 4)
    with pytest.raises(ValueError, match="resumes at batch 4"):
        windowed.measure(weights[0], inventory, pruned[weights[0].key])
    for weight in weights:
        full = whole.measure(weight, inventory, pruned[weight.key])
        resumed = windowed.measure(weight, inventory, pruned[weight.key], before=screened[weight.key].moved)
        assert full.settled and resumed.settled and resumed.samples == full.samples == 16
        assert resumed.moved == pytest.approx(full.moved, rel=1e-5)
        assert resumed.change == pytest.approx(full.change, rel=1e-5)
    for probe in (whole, windowed):
        probe.close()


def test_the_probe_runs_past_the_screen_only_for_the_layers_the_allocation_is_unsure_of(
    tmp_path: Path, calib: onnxprune.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No layer uncertain: every probe stops at the screen (4 batches of 4 samples); every layer
    uncertain: every probe runs on to its own stopping rule, with the same changes and
    allocation as without a screen."""
    monkeypatch.setattr(curve_allocation, "PROBE_REL_SE", 0.0)  # the rule never settles: all 32 samples
    monkeypatch.setattr(curve_allocation, "uncertain", lambda curves, target, spans, tolerance: [])
    record = _prune(tmp_path, calib, "settled", sparsity=0.5).result.allocation
    assert record["probe_rounds"] == 0 and record["probe_refined"] == []  # type: ignore[index]
    settled = record["layers"]  # type: ignore[index]
    monkeypatch.setattr(curve_allocation, "uncertain", lambda curves, target, spans, tolerance: list(spans))
    record = _prune(tmp_path, calib, "unsure", sparsity=0.5).result.allocation
    unsure = record["layers"]  # type: ignore[index]
    assert record["probe_rounds"] == 1 and record["probe_refined"] == list(unsure)  # type: ignore[index]
    # without a scratch folder the probes feed one session, and the layers wait in memory
    monkeypatch.setattr("onnxprune.passes.calibrated._scratch", lambda: None)
    held = _prune(tmp_path, calib, "held", sparsity=0.5).result.allocation
    assert held["probe_refined"] == list(unsure)  # type: ignore[index]
    for key, entry in held["layers"].items():  # type: ignore[index]
        assert entry["probe"] == pytest.approx(unsure[key]["probe"], rel=1e-4)
    monkeypatch.undo()
    monkeypatch.setattr(curve_allocation, "PROBE_REL_SE", 0.0)
    monkeypatch.setattr(curve_allocation, "PROBE_SCREEN", False)
    plain = _prune(tmp_path, calib, "plain", sparsity=0.5).result.allocation["layers"]  # type: ignore[index]
    screen = curve_allocation.PROBE_MIN_BATCHES * curve_allocation.PROBE_BATCH
    assert {entry["probe_samples"] for entry in settled.values()} == {screen}
    assert {entry["probe_samples"] for entry in unsure.values()} == {curve_allocation.PROBE_SAMPLES}
    assert {entry["probe_samples"] for entry in plain.values()} == {curve_allocation.PROBE_SAMPLES}
    for key, entry in plain.items():
        assert unsure[key]["probe"] == pytest.approx(entry["probe"], rel=1e-5)
        assert unsure[key]["allocated"] == entry["allocated"]
    zeros = [_stored_zeros(tmp_path / f"{name}.onnx", set(plain)) for name in ("unsure", "plain")]
    assert zeros[0] and zeros[0] == zeros[1]


def test_a_probe_span_is_its_95_percent_interval() -> None:
    from onnxprune.passes.curve_allocation import Probed, _relative_error, _span

    moved = (4.0, 12.0, 8.0, 8.0)
    error = _relative_error(list(moved), [4] * 4)
    low, high = _span(Probed(1.0, 16, moved, False), [4] * 8)  # type: ignore[misc]
    assert high == pytest.approx(1 + 3.182 * error) and low == pytest.approx(max(1 - 3.182 * error, 0.0))
    assert _span(Probed(1.0, 4, (4.0,), False), [4] * 8) is None  # one batch: no spread known
    assert _span(Probed(0.0, 8, (0.0, 0.0), False), [4] * 8) is None  # nothing moved


@pytest.mark.parametrize(("per_col", "curves"), [(16, 8), (3, 1), (1, 1), (None, None)])
def test_the_curves_capture_half_the_rows_of_the_run(
    tmp_path: Path, calib: onnxprune.Dataset, monkeypatch, per_col: int | None, curves: int | None
) -> None:
    """The curves' capture draws half the rows per column the run's captures draw (at least one);
    every row stays every row; the waves' captures keep the run's own."""
    from onnxprune.passes import calibrated

    seen: dict[str, list[object]] = {"curves": [], "waves": []}

    def spy(module: object, where: str) -> None:
        real = module.capture  # type: ignore[attr-defined]

        def capture(*args: object, sampling: object, **kwargs: object) -> object:
            seen[where].append(sampling)
            return real(*args, sampling=sampling, **kwargs)

        monkeypatch.setattr(module, "capture", capture)

    spy(curve_allocation, "curves")
    spy(calibrated, "waves")
    run = _prune(tmp_path, calib, "rows", sparsity=0.5, capture_rows=per_col)
    assert all(layer.curve_weight is not None for layer in run.result.pruned)  # allocated by curves
    assert seen["curves"] and {s.per_col for s in seen["curves"]} == {curves}  # type: ignore[attr-defined]
    assert seen["waves"] and {s.per_col for s in seen["waves"]} == {per_col}  # type: ignore[attr-defined]


def test_small_layers_whose_probe_runs_most_of_the_model_are_kept_dense_unprobed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer whose tail is most of the model, under the cap, is neither solved at the grid nor
    probed: it keeps its existing zeros and the others share the whole count, exactly; the layers
    so kept stay under the cap, and the result records them (two such layers of 11.6 % each: one)."""
    model = FIXTURES / "cnn_digits.onnx"
    data = onnxprune.calibration_data(model, FIXTURES / "cnn_digits.calib.npz", samples=64)
    probed: list[str] = []
    measure = OutputProbe.measure

    def spy(self: OutputProbe, weight, *args, **kw):  # type: ignore[no-untyped-def]
        probed.append(weight.key)
        return measure(self, weight, *args, **kw)

    monkeypatch.setattr(OutputProbe, "measure", spy)
    monkeypatch.setattr(curve_allocation, "UNPROBED_TOTAL", 0.15)
    config = onnxprune.PruneConfig(method="sparsegpt", sparsity=0.5)
    run = onnxprune.prune_file(model, tmp_path / "unprobed.onnx", config, calibration=data)
    record = run.result.allocation
    unprobed = set(record["unprobed"])  # type: ignore[index]
    layers = {layer.name: layer for layer in run.result.pruned}
    total = sum(layer.numel for layer in layers.values())
    assert unprobed and not unprobed & set(probed) and not unprobed & set(record["layers"])  # type: ignore[index]
    assert len(unprobed) == 1 and sum(layers[key].numel for key in unprobed) <= 0.15 * total
    stored = _stored_zeros(run.saved.path, set(layers))
    assert all(stored[key] == layers[key].zeros_before for key in unprobed)  # dense: its own zeros only
    assert sum(stored.values()) == count_for_amount(total, 0.5)
    monkeypatch.setattr(curve_allocation, "UNPROBED_TOTAL", 0.0)
    again = onnxprune.prune_file(model, tmp_path / "probed.onnx", config, calibration=data).result.allocation
    assert again["unprobed"] == [] and unprobed <= set(again["layers"])  # type: ignore[index]


def test_the_next_layers_curve_is_solved_while_the_probe_measures_the_layer_before_it(
    tmp_path: Path, calib: onnxprune.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each layer's curve solve is submitted before the probe of the layer before it runs, and runs
    on a helper thread during that probe (the probe here waits until it has started: run one
    after the other, it never would); the output is the same bytes as with the solves made in
    the probe's own thread, one after the other."""
    import threading
    import time

    serial = tmp_path / "serial.onnx"
    real_start = curve_allocation._start_curve

    def in_this_thread(pool, layer, **kw):  # type: ignore[no-untyped-def]
        class Here:  # runs the submitted solve at once, in the caller's thread
            @staticmethod
            def submit(fn):  # type: ignore[no-untyped-def]
                from concurrent.futures import Future

                future: Future[object] = Future()
                future.set_result(fn())
                return future

        return real_start(Here(), layer, **kw)

    monkeypatch.setattr(curve_allocation, "_start_curve", in_this_thread)
    _prune(tmp_path, calib, "serial", sparsity=0.5)
    monkeypatch.undo()

    started: list[tuple[str, object]] = []  # (layer key, its future) in the order submitted
    solver_threads: set[str] = set()
    overlapped: list[bool] = []

    def start(pool, layer, **kw):  # type: ignore[no-untyped-def]
        begun = real_start(pool, layer, **kw)
        started.append((layer.weight.key, begun.future))
        return begun

    curve = curve_allocation._curve

    def curve_spy(*args, **kw):  # type: ignore[no-untyped-def]
        solver_threads.add(threading.current_thread().name)
        return curve(*args, **kw)

    measure = OutputProbe.measure

    def measure_spy(self: OutputProbe, weight, *args, **kw):  # type: ignore[no-untyped-def]
        keys = [key for key, _ in started]
        if weight.key in keys and not kw.get("before"):  # a first probe (the rounds resume later ones)
            following = started[keys.index(weight.key) + 1 :]
            if following and following[0][1] is not None:
                future = following[0][1]
                deadline = time.monotonic() + 30
                while not (future.running() or future.done()) and time.monotonic() < deadline:
                    time.sleep(0.001)
                overlapped.append(future.running() or future.done())
        return measure(self, weight, *args, **kw)

    monkeypatch.setattr(curve_allocation, "_start_curve", start)
    monkeypatch.setattr(curve_allocation, "_curve", curve_spy)
    monkeypatch.setattr(OutputProbe, "measure", measure_spy)
    run = _prune(tmp_path, calib, "overlapped", sparsity=0.5)
    assert len(started) >= 3 and len(overlapped) == len(started) - 1 and all(overlapped)
    assert solver_threads and threading.current_thread().name not in solver_threads
    assert run.saved.path.read_bytes() == serial.read_bytes()


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_curves_are_started_the_given_number_of_layers_ahead(ahead: int) -> None:
    """When layer ``i`` is yielded, the layers up to ``i + ahead`` have been started, no more."""
    started: list[int] = []
    seen = []
    for layer, begun in curve_allocation._started_ahead(range(5), lambda i: started.append(i) or i * 10, ahead):  # type: ignore[arg-type, func-returns-value]
        assert begun == layer * 10
        seen.append(layer)
        assert started == list(range(min(5, layer + ahead + 1)))
    assert seen == list(range(5))


def test_an_allocation_that_stops_leaves_the_helper_after_the_level_it_is_solving(
    tmp_path: Path, calib: onnxprune.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the probe (or a signal) while the helper solves the next layer's curve: the
    error comes out as it was, and the helper solves no level after the one it was on, so the
    way out does not wait for a whole curve (a wide layer's levels take minutes)."""
    import threading
    import time

    from onnxprune.errors import DataError

    real_start = curve_allocation._start_curve
    levels: list[str] = []  # the layer of each level solved
    second_started = threading.Event()
    order: list[str] = []

    def start(pool, layer, **kw):  # type: ignore[no-untyped-def]
        order.append(layer.weight.key)
        solve = kw["solve"]

        def counted(the_layer, *args, **options):  # type: ignore[no-untyped-def]
            levels.append(the_layer.weight.key)
            if len(order) > 1 and the_layer.weight.key == order[1]:
                second_started.set()
                time.sleep(0.3)  # the probe fails while this level runs
            return solve(the_layer, *args, **options)

        return real_start(pool, layer, **{**kw, "solve": counted})

    def failing(self: OutputProbe, weight, *args, **kw):  # type: ignore[no-untyped-def]
        assert second_started.wait(30)
        raise DataError("the probe failed")

    monkeypatch.setattr(curve_allocation, "_start_curve", start)
    monkeypatch.setattr(OutputProbe, "measure", failing)
    with pytest.raises(DataError, match="the probe failed"):
        _prune(tmp_path, calib, "stopped", sparsity=0.5)
    assert levels.count(order[1]) == 1  # its first level only
    assert len(set(levels)) == 2  # no third layer's curve ran
