"""Captures that start where the last one stopped (:mod:`onnxprune.frontier`): the same
statistics as a capture from the graph inputs, each node run once per batch over a model's
waves, and the frontier dropped (or given up) whenever it could be stale or does not fit."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from builders import init, model, node, rand, value
from onnx import helper, numpy_helper

import onnxprune
from onnxprune import frontier as frontier_module
from onnxprune import tails as tails_module
from onnxprune.capture import capture
from onnxprune.frontier import Frontier
from onnxprune.graph.discovery import discover
from onnxprune.graph.index import Scope
from onnxprune.passes.layers import calib_layer
from onnxprune.tails import Tails

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _chain() -> onnx.ModelProto:
    """x -> MatMul(W1) -> Relu = h1 -> MatMul(W2) -> Relu = h2 -> MatMul(W3) -> Add(h1) = y,
    with a shape computed from the input and a constant reshape on the way."""
    nodes = [
        node("MatMul", ["x", "W1"], ["a1"], "mm1"),
        node("Relu", ["a1"], ["h1"], "relu1"),
        node("Shape", ["x"], ["xs"], "shape"),
        node("Reshape", ["h1", "flat"], ["h1r"], "reshape"),  # a constant shape: never kept
        node("MatMul", ["h1r", "W2"], ["a2"], "mm2"),
        node("Relu", ["a2"], ["h2"], "relu2"),
        node("MatMul", ["h2", "W3"], ["a3"], "mm3"),
        node("Add", ["a3", "h1"], ["s"], "sum"),
        node("Reshape", ["s", "xs"], ["y"], "out"),  # reads the input's shape at the end
    ]
    inits = [
        init("W1", rand((8, 8), seed=1)),
        init("W2", rand((8, 8), seed=2)),
        init("W3", rand((8, 8), seed=3)),
        numpy_helper.from_array(np.array([-1, 8], dtype=np.int64), "flat"),
    ]
    return model(nodes, [value("x", ["n", 8])], [value("y", ["n", 8])], inits)


def _two_layers(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    """``nodes`` from ``x [n, 8]`` to ``y [n, 8]`` with the weights W1 and W2 (8 x 8)."""
    inits = [init("W1", rand((8, 8), 1)), init("W2", rand((8, 8), 2))]
    return model(nodes, [value("x", ["n", 8])], [value("y", ["n", 8])], inits)


def _spec(m: onnx.ModelProto, name: str):
    weight = next(w for w in discover(m).weights if w.name == name)
    layer, why = calib_layer(m, Scope.build(m.graph), weight)
    assert layer is not None, why
    return layer.spec


BATCHES = [{"x": rand((16, 8), seed=5)}, {"x": rand((24, 8), seed=6)}]


def _prune(m: onnx.ModelProto, name: str) -> None:
    """Zero the small half of a weight in place (what a wave writes)."""
    tensor = next(t for t in m.graph.initializer if t.name == name)
    w = numpy_helper.to_array(tensor)
    tensor.CopyFrom(numpy_helper.from_array(np.where(np.abs(w) > np.median(np.abs(w)), w, 0).astype(w.dtype), name))


def _same(a, b) -> None:
    for field in ("H", "mean", "sqnorm"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("memory", [0, 512, None])  # every value on disk; one batch of h1 held; all held
def test_waves_from_the_frontier_give_the_statistics_of_runs_from_the_inputs(tmp_path, memory):
    m, plain = _chain(), _chain()
    frontier = Frontier(m, tmp_path, memory=memory)
    runs = []
    real = Frontier.begin

    def begin(self, names):
        segment = real(self, names)
        runs.append([m.graph.node[i].name for i in segment.nodes])
        return segment

    frontier.begin = begin.__get__(frontier)  # type: ignore[method-assign]
    for weight in ("W1", "W2", "W3"):
        spec = _spec(m, weight)
        got = capture(m, [spec], BATCHES, frontier=frontier)[spec.key]
        want = capture(plain, [_spec(plain, weight)], BATCHES)[spec.key]
        _same(got, want)
        _prune(m, weight)  # the wave writes its weight; the next wave reads the model as pruned
        _prune(plain, weight)
    assert frontier.segments_run == 3
    # every node that computes a layer input runs once over the three waves (the constant
    # reshape's shape is a stored tensor; the input's shape is read by the last node only)
    assert runs == [[], ["mm1", "relu1", "reshape"], ["mm2", "relu2"]]
    kept = set(frontier.kept)
    assert kept == {"h1", "h2"}  # read later by the sum and mm3: the frontier; 'a2' was consumed
    assert all(name in frontier.kept for name in kept)
    files = len(list(tmp_path.glob("*.npy")))
    held = sum(len(batches) for batches in frontier.held.values())
    assert files + held == len(kept) * len(BATCHES)
    assert held == {0: 0, 512: 1, None: len(kept) * len(BATCHES)}[memory]
    assert frontier.held_bytes == sum(v.nbytes for batches in frontier.held.values() for v in batches.values())
    assert frontier.held_bytes <= frontier.memory
    frontier.reset("done")
    assert not frontier.held and frontier.held_bytes == 0 and not list(tmp_path.glob("*.npy"))


def test_a_changed_upstream_weight_drops_the_frontier(tmp_path):
    m = _chain()
    frontier = Frontier(m, tmp_path)
    capture(m, [_spec(m, "W2")], BATCHES, frontier=frontier)
    assert frontier.kept
    _prune(m, "W1")  # upstream of what the frontier holds: its values are stale now
    spec = _spec(m, "W3")
    got = capture(m, [spec], BATCHES, frontier=frontier)[spec.key]
    want = capture(_copy_of(m), [spec], BATCHES)[spec.key]
    _same(got, want)
    assert frontier.enabled and set(frontier.kept) == {"h1", "h2"}  # started again from the inputs


def _copy_of(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out


def _outputs_with(m: onnx.ModelProto, name: str, value: np.ndarray) -> list[np.ndarray]:
    """``y`` of every batch of :data:`BATCHES`, run whole by onnxruntime with the initializer
    ``name`` of a copy of ``m`` replaced by ``value``."""
    changed = _copy_of(m)
    next(t for t in changed.graph.initializer if t.name == name).CopyFrom(numpy_helper.from_array(value, name))
    sess = onnxruntime.InferenceSession(changed.SerializeToString(), providers=["CPUExecutionProvider"])
    return [sess.run(["y"], feeds)[0] for feeds in BATCHES]


def test_a_rewired_node_in_the_region_drops_the_frontier(tmp_path):
    m = _chain()
    frontier = Frontier(m, tmp_path)
    capture(m, [_spec(m, "W2")], BATCHES, frontier=frontier)
    relu = next(n for n in m.graph.node if n.name == "relu1")
    relu.op_type = "Sigmoid"  # the same output name, another value
    spec = _spec(m, "W3")
    got = capture(m, [spec], BATCHES, frontier=frontier)[spec.key]
    _same(got, capture(_copy_of(m), [spec], BATCHES)[spec.key])


def test_other_batches_run_from_the_inputs_and_the_frontier_starts_again(tmp_path):
    m = _chain()
    frontier = Frontier(m, tmp_path)
    capture(m, [_spec(m, "W2")], BATCHES, frontier=frontier)
    other = [{"x": rand((7, 8), seed=11)}]
    spec = _spec(m, "W3")
    got = capture(m, [spec], other, frontier=frontier)[spec.key]
    _same(got, capture(_copy_of(m), [spec], other)[spec.key])
    assert frontier.enabled and not frontier.kept and not list(tmp_path.glob("*.npy"))


def test_past_the_budget_the_frontier_is_given_up_and_captures_run_from_the_inputs(tmp_path, caplog):
    m = _chain()
    frontier = Frontier(m, tmp_path, budget=16 * 8 * 4)  # one batch of one value
    caplog.set_level("INFO", logger="onnxprune.frontier")
    first = capture(m, [_spec(m, "W2")], BATCHES, frontier=frontier)
    assert not frontier.enabled and not frontier.kept and not list(tmp_path.glob("*.npy"))
    assert "would pass" in caplog.text
    _same(first[_spec(m, "W2").key], capture(_copy_of(m), [_spec(m, "W2")], BATCHES)[_spec(m, "W2").key])
    spec = _spec(m, "W3")
    _same(capture(m, [spec], BATCHES, frontier=frontier)[spec.key], capture(_copy_of(m), [spec], BATCHES)[spec.key])
    assert frontier.segments_run == 0


def test_a_frontier_value_that_is_not_a_tensor_gives_it_up(tmp_path):
    """A sequence crossing the cut (made before the layer, read after it) cannot be fed back."""
    nodes = [
        node("SequenceConstruct", ["x"], ["seq"], "pack"),
        helper.make_node("SequenceAt", ["seq", "zero"], ["x1"], name="unpack1"),
        node("MatMul", ["x1", "W1"], ["a1"], "mm1"),
        node("Relu", ["a1"], ["h1"], "relu1"),
        node("MatMul", ["h1", "W2"], ["a2"], "mm2"),
        helper.make_node("SequenceAt", ["seq", "zero"], ["back"], name="unpack2"),
        node("Add", ["a2", "back"], ["y"], "sum"),
    ]
    inits = [init("W1", rand((8, 8), seed=1)), init("W2", rand((8, 8), seed=2))]
    inits.append(numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"))
    m = model(nodes, [value("x", ["n", 8])], [value("y", ["n", 8])], inits)
    frontier = Frontier(m, tmp_path)
    spec = _spec(m, "W2")
    got = capture(m, [spec], BATCHES, frontier=frontier)[spec.key]
    _same(got, capture(_copy_of(m), [spec], BATCHES)[spec.key])
    assert not frontier.enabled and not list(tmp_path.glob("*.npy"))


def test_a_frontier_of_another_model_is_refused(tmp_path):
    m = _chain()
    with pytest.raises(onnxprune.OptionError, match="another model"):
        capture(_copy_of(m), [_spec(m, "W2")], BATCHES, frontier=Frontier(m, tmp_path))


def test_a_generator_counts_as_a_value_of_the_inputs(tmp_path):
    """A random draw is made once and kept, not folded as a constant."""
    nodes = [
        helper.make_node("RandomNormal", [], ["noise"], name="draw", shape=[1, 8], seed=3.0),
        node("Add", ["x", "noise"], ["xn"], "jitter"),
        node("MatMul", ["xn", "W1"], ["a1"], "mm1"),
        node("MatMul", ["a1", "W2"], ["a2"], "mm2"),
        node("Add", ["a2", "noise"], ["y"], "sum"),
    ]
    m = _two_layers(nodes)
    frontier = Frontier(m, tmp_path)
    capture(m, [_spec(m, "W1")], BATCHES, frontier=frontier)
    assert "noise" in frontier.kept


@pytest.mark.parametrize("name", ["mlp_digits", "transformer_mnist1d"])
def test_a_calibrated_run_with_the_frontier_matches_one_without(name, monkeypatch):
    source = FIXTURES / f"{name}.onnx"
    data = onnxprune.calibration_data(source, FIXTURES / f"{name}.calib.npz", samples=32)
    config = onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt", allocator="uniform")
    begun: dict[bool, list[int]] = {False: [], True: []}  # the model's frontier, the dense model's (frozen)
    real = Frontier.begin

    def counted(self, names):
        segment = real(self, names)
        begun[self.frozen].append(len(segment.nodes))
        return segment

    monkeypatch.setattr(Frontier, "begin", counted)
    with_frontier, _ = onnxprune.prune(onnx.load(str(source)), config, calibration=data)
    nodes = len(onnx.load(str(source)).graph.node)
    for counts in begun.values():
        assert len(counts) > 1 and sum(counts) <= nodes  # on each side, each node at most once
    monkeypatch.setattr(frontier_module, "FRONTIER_DISK_BYTES", 0)  # nothing fits: every capture from the inputs
    begun.update({False: [], True: []})
    without, _ = onnxprune.prune(onnx.load(str(source)), config, calibration=data)
    a = {t.name: numpy_helper.to_array(t) for t in with_frontier.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in without.graph.initializer}
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype.kind == "f":
            assert np.mean((a[key] == 0) != (b[key] == 0)) < 0.01, key  # float rounding may flip a tie
            np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-4)
        else:
            np.testing.assert_array_equal(a[key], b[key])


def test_a_scalar_value_of_the_inputs_is_kept_as_a_scalar(tmp_path):
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["level"], name="level", keepdims=0),  # 0-d, of the inputs
        node("Sub", ["x", "level"], ["centred"], "centre"),
        node("MatMul", ["centred", "W1"], ["a1"], "mm1"),
        node("MatMul", ["a1", "W2"], ["a2"], "mm2"),
        node("Add", ["a2", "level"], ["y"], "sum"),
    ]
    m = _two_layers(nodes)
    frontier = Frontier(m, tmp_path)
    capture(m, [_spec(m, "W2")], BATCHES, frontier=frontier)
    assert frontier.kept["level"].ndim == 0
    got = Tails(m, BATCHES, tmp_path / "tails").outputs("W2", np.zeros((8, 8), np.float32))
    np.testing.assert_allclose(got["y"][0], np.broadcast_to(BATCHES[0]["x"].mean(), (16, 8)), rtol=1e-6)


@pytest.mark.parametrize("name", ["W1", "W2", "W3"])
def test_a_tail_gives_the_outputs_of_the_whole_model_with_the_weight_replaced(name, tmp_path):
    m = _chain()
    tails = Tails(m, BATCHES, tmp_path)
    for weight in ("W1", "W2", "W3"):  # the frontier advances weight by weight, as the probe goes
        new = rand((8, 8), seed=40)
        got = tails.outputs(weight, new)
        for index, want in enumerate(_outputs_with(m, weight, new)):
            np.testing.assert_allclose(got["y"][index], want, rtol=1e-5, atol=1e-6)
        if weight == name:
            break
    assert tails.frontier.enabled


def test_a_tail_from_a_later_batch_runs_those_only_and_keeps_the_frontier_whole(tmp_path):
    """``start=1``: the tail runs batch 1 only (batch 0 is read up to the cut), and the next
    weight's tail, from batch 0, still reads the frontier the first one grew."""
    m = _chain()
    tails = Tails(m, BATCHES, tmp_path, ["W1", "W2"])
    new = rand((8, 8), seed=40)
    seen: list[int] = []
    tails.outputs("W1", new, each=lambda index, outputs: seen.append(index) or False, start=1)
    assert seen == [1]
    got = tails.outputs("W2", new)
    for index, want in enumerate(_outputs_with(m, "W2", new)):
        np.testing.assert_allclose(got["y"][index], want, rtol=1e-5, atol=1e-6)
    assert tails.frontier.enabled and tails.frontier.segments_run == 2


def test_a_weight_in_a_constant_node_runs_its_tail_with_the_new_value(tmp_path):
    m = _chain()
    w2 = next(t for t in m.graph.initializer if t.name == "W2")
    m.graph.node.insert(0, helper.make_node("Constant", [], ["W2"], name="w2", value=w2))
    m.graph.initializer.remove(w2)
    new = rand((8, 8), seed=41)
    got = Tails(m, BATCHES, tmp_path).outputs("W2", new)
    np.testing.assert_allclose(got["y"][1], _outputs_with(_chain(), "W2", new)[1], rtol=1e-5, atol=1e-6)


def test_a_tail_computes_the_constants_it_reads_instead_of_being_fed_them(tmp_path, monkeypatch):
    """Weights in Constant nodes, one of them transposed on the way (a value of constants only):
    the tail's model makes them itself, so onnxruntime sees them as constants; it is fed only
    values of the inputs."""
    m = _chain()
    for name in ("W2", "W3"):
        tensor = next(t for t in m.graph.initializer if t.name == name)
        m.graph.initializer.remove(tensor)
        m.graph.node.insert(0, helper.make_node("Constant", [], [f"{name}t"], name=f"c{name}", value=tensor))
        m.graph.node.insert(1, helper.make_node("Transpose", [f"{name}t"], [name], name=f"t{name}"))
    made: list[onnx.ModelProto] = []
    real = tails_module.capture_session

    def recorded(source):  # type: ignore[no-untyped-def]
        made.append(onnx.load_from_string(source.model))
        return real(source)

    monkeypatch.setattr(tails_module, "capture_session", recorded)
    whole = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    tails = Tails(m, BATCHES, tmp_path, ["W1", "W2"])
    for name in ("W1", "W2"):
        got = tails.outputs(name, np.zeros((8, 8), np.float32) if name == "W1" else rand((8, 8), seed=42))
        if name == "W1":  # h1 = 0: y = Relu(0 W2) W3 + 0 = 0
            np.testing.assert_array_equal(got["y"][1], np.zeros((24, 8), np.float32))
    tail = made[-1]
    assert {i.name for i in tail.graph.input} == {"x", "h1r", "h1", "xs"}  # no weight among them
    assert {n.name for n in tail.graph.node} >= {"cW3", "tW3"}
    assert {t.name for t in tail.graph.initializer} == {"W2"}  # the replaced one
    changed = _copy_of(m)
    changed.graph.node.remove(next(n for n in changed.graph.node if n.name == "tW2"))
    changed.graph.initializer.append(numpy_helper.from_array(rand((8, 8), seed=42), "W2"))
    want = onnxruntime.InferenceSession(changed.SerializeToString(), providers=["CPUExecutionProvider"])
    for index, feeds in enumerate(BATCHES):
        np.testing.assert_allclose(got["y"][index], want.run(["y"], feeds)[0], rtol=1e-5, atol=1e-6)
        assert not np.allclose(got["y"][index], whole.run(["y"], feeds)[0])


def _branches() -> onnx.ModelProto:
    """A trunk ``t = Relu(x W1)`` read by two branches, ``a = (t Wc) Wa`` and ``r = Relu(t Wb)``,
    summed: ``y = a + r``. Probed Wa first, the trunk ends inside the region (both its readers are
    in it), yet Wb's tail reads it."""
    nodes = [
        node("MatMul", ["x", "W1"], ["m1"], "mm1"),
        node("Relu", ["m1"], ["t"], "trunk"),
        node("MatMul", ["t", "Wc"], ["c"], "mmc"),
        node("MatMul", ["c", "Wa"], ["a"], "mma"),
        node("MatMul", ["t", "Wb"], ["b"], "mmb"),
        node("Relu", ["b"], ["r"], "relub"),
        node("Add", ["a", "r"], ["y"], "sum"),
    ]
    inits = [init(name, rand((8, 8), seed)) for seed, name in enumerate(("W1", "Wc", "Wa", "Wb"), start=11)]
    return model(nodes, [value("x", ["n", 8])], [value("y", ["n", 8])], inits)


@pytest.mark.parametrize("told", [True, False])
def test_tails_told_their_order_read_a_value_of_a_parallel_branch_instead_of_running_the_trunk_again(
    told, tmp_path, monkeypatch
):
    m = _branches()
    segments: list[set[str]] = []
    begin = Frontier.begin

    def recorded(self, names):
        segment = begin(self, names)
        segments.append({self.model.graph.node[i].name for i in segment.nodes})
        return segment

    monkeypatch.setattr(Frontier, "begin", recorded)
    tails = Tails(m, BATCHES, tmp_path, ["Wa", "Wb"] if told else [])
    for name in ("Wa", "Wb"):
        new = rand((8, 8), seed=50)
        got = tails.outputs(name, new)
        for index, want in enumerate(_outputs_with(m, name, new)):
            np.testing.assert_allclose(got["y"][index], want, rtol=1e-5, atol=1e-6)
    assert {"mm1", "trunk"} <= segments[0]
    # told, the trunk is kept for Wb's cut; not told, Wb's segment runs it again from the inputs
    assert ({"mm1", "trunk"} & segments[1]) == (set() if told else {"mm1", "trunk"})
    assert ("t" in tails.frontier.kept) == told
    assert tails.frontier.retain == set()  # every cut read: nothing retained any more


def test_a_retained_value_over_the_budget_is_not_kept_and_the_frontier_goes_on(tmp_path):
    m = _branches()
    tails = Tails(m, BATCHES, tmp_path, ["Wa", "Wb"])
    # room for the frontier's own values (c and r over both batches) but not for the trunk as well
    tails.frontier.budget = sum(b["x"].nbytes for b in BATCHES) * 2
    tails.frontier.memory = 0  # all on disk, to see the files go
    new = rand((8, 8), seed=51)
    got = tails.outputs("Wa", new)
    assert tails.frontier.enabled and "t" not in tails.frontier.kept
    # the trunk's files of the first batch are gone with it: only what is kept stays on disk
    assert {p.name.split("_b")[0] for p in tmp_path.glob("*_b*.npy")} == {k.stem for k in tails.frontier.kept.values()}
    np.testing.assert_allclose(got["y"][1], _outputs_with(m, "Wa", new)[1], rtol=1e-5, atol=1e-6)
    got = tails.outputs("Wb", new)  # the trunk computed again: still right
    np.testing.assert_allclose(got["y"][0], _outputs_with(m, "Wb", new)[0], rtol=1e-5, atol=1e-6)


def test_a_sub_models_large_tensors_reach_its_session_as_arrays_with_the_same_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The weights of a sub-model at or above the size limit are stubs declaring external data in
    its bytes, and their values go to the session as arrays; the outputs are the model's own."""
    monkeypatch.setattr(frontier_module, "SHARED_MIN_BYTES", 8 * 8 * 4)  # the 8 x 8 float32 weights
    m = _chain()
    graph = frontier_module.Graph.of(m)
    source = frontier_module.sub_model(m, graph, range(len(m.graph.node)), {}, ["y"])
    assert set(source.shared) == {"W1", "W2", "W3"}  # "flat", 16 bytes, stays in the bytes
    for name in ("W1", "W2", "W3"):
        np.testing.assert_array_equal(source.shared[name], numpy_helper.to_array(_initializer(m, name)))
    written = onnx.load_from_string(source.model)
    stubs = {t.name: t for t in written.graph.initializer}
    assert all(stubs[n].data_location == onnx.TensorProto.EXTERNAL and not stubs[n].raw_data for n in source.shared)
    assert numpy_helper.to_array(stubs["flat"]).tolist() == [-1, 8]
    x = rand((6, 8), seed=9)
    want = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = frontier_module.capture_session(source).run(None, {"x": x})
    np.testing.assert_array_equal(got[0], want[0])


def _initializer(m: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def test_only_plain_little_endian_bytes_of_a_numpy_type_are_shared() -> None:
    """Small tensors, values in typed fields, bfloat16 and float8 (no numpy type onnxruntime takes;
    onnx 1.16 maps them to float32) and a tensor already external stay as they are; a large float32
    tensor in raw bytes is shared."""
    big = rand((128, 128), seed=1)
    raw = numpy_helper.from_array(big, "raw")
    small = numpy_helper.from_array(big[:2, :2].copy(), "small")
    typed = helper.make_tensor("typed", onnx.TensorProto.FLOAT, big.shape, big.reshape(-1).tolist())
    bf16 = helper.make_tensor("bf16", onnx.TensorProto.BFLOAT16, [len(big.tobytes()) // 2], big.tobytes(), raw=True)
    f8 = helper.make_tensor("f8", onnx.TensorProto.FLOAT8E4M3FN, [len(big.tobytes())], big.tobytes(), raw=True)
    external = onnx.TensorProto(name="external", data_type=onnx.TensorProto.FLOAT, dims=[4])
    external.data_location = onnx.TensorProto.EXTERNAL
    external.external_data.add(key="location", value="weights.bin")
    target = onnx.ModelProto()
    shared = frontier_module.add_initializers(target, [raw, small, typed, bf16, f8, external])
    assert list(shared) == ["raw"]
    np.testing.assert_array_equal(shared["raw"], big)
    kept = {t.name: t for t in target.graph.initializer}
    assert [t.name for t in target.graph.initializer] == ["raw", "small", "typed", "bf16", "f8", "external"]
    for name, tensor in (("small", small), ("typed", typed), ("bf16", bf16), ("f8", f8), ("external", external)):
        assert kept[name] == tensor
    assert kept["raw"].data_location == onnx.TensorProto.EXTERNAL and list(kept["raw"].dims) == [128, 128]


def test_a_stored_tensors_fingerprint_covers_its_bytes_and_its_other_fields() -> None:
    """The CRC of a tensor's raw bytes read in place, chained after that of its other fields:
    any change of either changes it, as a CRC of the whole serialized tensor would."""
    w = numpy_helper.from_array(rand((16, 16), seed=1), "W")
    crc = frontier_module._tensor_crc
    base = crc(w)
    assert crc(onnx.TensorProto.FromString(w.SerializeToString())) == base  # a copy: the same
    flipped = onnx.TensorProto.FromString(w.SerializeToString())
    data = bytearray(flipped.raw_data)
    data[37] ^= 1
    flipped.raw_data = bytes(data)
    reshaped = onnx.TensorProto.FromString(w.SerializeToString())
    del reshaped.dims[:]
    reshaped.dims.extend([8, 32])  # the same bytes
    renamed = onnx.TensorProto.FromString(w.SerializeToString())
    renamed.name = "V"
    typed = helper.make_tensor("W", onnx.TensorProto.FLOAT, [2], [1.0, 2.0])  # no raw bytes: serialized whole
    assert len({base, crc(flipped), crc(reshaped), crc(renamed)}) == 4
    assert crc(typed) == zlib.crc32(typed.SerializeToString())
