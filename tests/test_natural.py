"""Data-free calibration inputs (:mod:`onnxprune.data.natural`).

Every data set is fed to a real onnxruntime session: the fixtures, a hand-built BERT-like
embedding model (out-of-range ids make onnxruntime's Gather fail), BatchNormalization models
whose outputs must come out standardised, and image models. Statistics that tell procedural
data from white noise (neighbouring-pixel and lag-1 correlation) are asserted directly.
"""

from __future__ import annotations

import builders as b
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.data.natural import DEFAULT_SEQUENCE, OFFSET, DataFreeDataset, data_free, procedural_images
from onnxprune.errors import DataError, OptionError
from onnxprune.runtime import InputSpec, input_specs, session

FIXTURES = ("cnn_digits", "cnn_digits_const", "mlp_digits", "mlp_digits_fp16", "transformer_mnist1d", "lstm_mnist1d")
INT64, INT32, FLOAT = TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT

# --------------------------------------------------------------------------- helpers


def sess_of(model):
    return session(model.SerializeToString())


def make(model, **kwargs):
    return data_free(model, input_specs(sess_of(model)), **kwargs)


def everything(dataset, batch_size=32):
    batches = list(dataset.batches(batch_size))
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def neighbour_correlation(array, axis):
    """Pearson correlation of each value with its next neighbour along ``axis``."""
    first = np.take(array, np.arange(array.shape[axis] - 1), axis=axis).ravel()
    second = np.take(array, np.arange(1, array.shape[axis]), axis=axis).ravel()
    return float(np.corrcoef(first, second)[0, 1])


def unshaped(name, elem_type=FLOAT):
    return helper.make_tensor_value_info(name, elem_type, None)


def image_model(dims):
    """ReduceMean over the pixels of an image input (runs any layout)."""
    return b.model(
        [b.node("ReduceMean", ["input"], ["out"], "mean", axes=[1, 2, 3], keepdims=0)],
        [b.value("input", dims)],
        [b.value("out", [dims[0]])],
    )


VOCAB, TYPES, POSITIONS, WIDTH = 50, 2, 200, 8


def embedding_model(*, ids_type=INT64):
    """BERT-like embeddings: word (through Cast for int32 ids) + position + token type, times the mask."""
    nodes, ids = [], "input_ids"
    if ids_type != INT64:
        nodes.append(b.node("Cast", ["input_ids"], ["ids64"], "cast_ids", to=INT64))
        ids = "ids64"
    nodes += [
        b.node("Gather", ["word_table", ids], ["words"], "word_embedding"),
        b.node("Gather", ["position_table", "position_ids"], ["positions"], "position_embedding"),
        b.node("Gather", ["type_table", "token_type_ids"], ["types"], "type_embedding"),
        b.node("Add", ["words", "positions"], ["sum1"], "add1"),
        b.node("Add", ["sum1", "types"], ["sum2"], "add2"),
        b.node("Cast", ["attention_mask"], ["mask_f"], "cast_mask", to=FLOAT),
        b.node("Unsqueeze", ["mask_f", "axis2"], ["mask3"], "unsqueeze_mask"),
        b.node("Mul", ["sum2", "mask3"], ["out"], "apply_mask"),
    ]
    return b.model(
        nodes,
        [
            b.value("input_ids", ["batch", "sequence"], ids_type),
            b.value("attention_mask", ["batch", "sequence"], INT64),
            b.value("token_type_ids", ["batch", "sequence"], INT64),
            b.value("position_ids", ["batch", "sequence"], INT64),
        ],
        [b.value("out", ["batch", "sequence", WIDTH])],
        [
            b.init("word_table", b.rand([VOCAB, WIDTH], 1)),
            b.init("position_table", b.rand([POSITIONS, WIDTH], 2)),
            b.init("type_table", b.rand([TYPES, WIDTH], 3)),
            b.ints("axis2", [2]),
        ],
    )


MEAN = np.array([-2.0, 0.5, 3.0, 10.0], dtype=np.float32)
VAR = np.array([0.25, 1.0, 4.0, 9.0], dtype=np.float32)


def batchnorm_model(dims, *, via=None):
    """BatchNormalization (scale 1, bias 0, running MEAN/VAR) on the input, directly or after ``via``."""
    nodes, inits, source = [], [], "input"
    if via == "Reshape":
        nodes.append(b.node("Reshape", ["input", "shape"], ["reshaped"], "reshape"))
        inits.append(b.ints("shape", [0, 4, -1]))
        source = "reshaped"
    elif via == "Unsqueeze":
        nodes.append(b.node("Unsqueeze", ["input", "axes"], ["reshaped"], "unsqueeze"))
        inits.append(b.ints("axes", [3]))
        source = "reshaped"
    nodes.append(b.node("BatchNormalization", [source, "scale", "bias", "mean", "var"], ["out"], "bn", epsilon=1e-5))
    inits += [
        b.init("scale", np.ones(4, np.float32)),
        b.init("bias", np.zeros(4, np.float32)),
        b.init("mean", MEAN),
        b.init("var", VAR),
    ]
    return b.model(nodes, [b.value("input", dims)], [unshaped("out")], inits)


def signal_model(dims):
    return b.model(
        [b.node("MatMul", ["input", "w"], ["out"], "linear")],
        [b.value("input", dims)],
        [b.value("out", [dims[0], 16])],
        [b.init("w", b.rand([dims[-1], 16], 5))],
    )


# --------------------------------------------------------------------------- the fixtures


@pytest.mark.parametrize("name", FIXTURES)
def test_fixtures_run_in_onnxruntime(fixtures_dir, name):
    path = fixtures_dir / f"{name}.onnx"
    sess = session(str(path))
    dataset = data_free(onnx.load(path), input_specs(sess), samples=40)
    real = np.load(fixtures_dir / f"{name}.test.npz")["input"]
    feeds = everything(dataset, batch_size=16)
    assert feeds["input"].shape == (40, *real.shape[1:])
    assert feeds["input"].dtype == np.float32
    logits = sess.run(None, feeds)[0]
    assert logits.shape[0] == 40 and np.isfinite(logits).all()
    # the classifier does not answer one class for everything: the inputs vary like data
    assert len(np.unique(logits.argmax(axis=1))) >= 3
    plan = dataset.plans["input"]
    if real.ndim == 4:  # [batch, 1, 8, 8] digits: procedural grey images
        assert (plan.kind, plan.layout) == ("images", "NCHW")
        assert feeds["input"].min() >= 0.0 and feeds["input"].max() <= 1.0
    else:  # [batch, 64] / [batch, 40] without a leading BatchNormalization: smooth signals
        assert plan.kind == "smooth"
        signal = feeds["input"]
        np.testing.assert_allclose(signal.std(axis=1), np.sqrt(1 - OFFSET**2), rtol=1e-3)  # the signal part
        assert signal.mean(axis=1).std() > 0.4  # each series at its own random level


def test_dataset_contract(fixtures_dir):
    path = fixtures_dir / "cnn_digits.onnx"
    dataset = data_free(onnx.load(path), input_specs(session(str(path))))
    assert isinstance(dataset, DataFreeDataset)
    assert dataset.kind == "data-free" and dataset.synthetic
    assert dataset.source.startswith("data-free (procedural images")
    assert dataset.num_samples() == 128
    assert "procedural images" in dataset.generators["input"]
    batch = next(iter(dataset.batches(8)))
    assert not batch["input"].flags.writeable


# --------------------------------------------------------------------------- reproducibility


def test_reproducible_and_independent_of_batch_size():
    model = embedding_model()
    shapes = {"input_ids": (1, 12)}
    one = everything(make(model, samples=150, seed=3, shapes=shapes), batch_size=7)
    two = everything(make(model, samples=150, seed=3, shapes=shapes), batch_size=64)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    other = everything(make(model, samples=150, seed=4, shapes=shapes))
    assert not np.array_equal(one["input_ids"], other["input_ids"])
    images = image_model(["n", 3, 16, 16])
    first = everything(make(images, samples=70, seed=1), batch_size=70)["input"]
    again = everything(make(images, samples=70, seed=1), batch_size=5)["input"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, everything(make(images, samples=70, seed=2))["input"])
    cached = make(images, samples=70, seed=1)  # read twice: the second pass replays the kept blocks
    np.testing.assert_array_equal(everything(cached, batch_size=9)["input"], first)
    np.testing.assert_array_equal(everything(cached, batch_size=70)["input"], first)
    # samples differ from each other (no block repeats another)
    assert not np.array_equal(first[:5], first[64:69])


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("dims", "layout", "spatial"),
    [(["n", 3, 32, 32], "NCHW", (2, 3)), (["n", 32, 24, 3], "NHWC", (1, 2)), (["n", 1, 28, 28], "NCHW", (2, 3))],
)
def test_images_are_natural_looking(dims, layout, spatial):
    model = image_model(dims)
    dataset = make(model, samples=48)
    assert dataset.plans["input"].layout == layout
    x = everything(dataset)["input"]
    assert x.shape == (48, *dims[1:]) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert x.std() > 0.1  # not flat
    assert np.ptp(x.reshape(48, -1), axis=1).min() > 0.1  # every image has contrast
    for axis in spatial:
        assert neighbour_correlation(x, axis) > 0.5
    white = np.random.default_rng(0).uniform(size=x.shape)
    assert abs(neighbour_correlation(white, spatial[0])) < 0.1  # the statistic does tell noise apart
    means = sess_of(model).run(None, {"input": x})[0]
    np.testing.assert_allclose(means, x.mean(axis=(1, 2, 3)), rtol=1e-5)


def test_colour_images_have_correlated_but_distinct_channels():
    x = procedural_images(np.random.default_rng(0), 16, 3, 32, 32)
    red, green = x[:, 0].ravel(), x[:, 1].ravel()
    assert 0.3 < np.corrcoef(red, green)[0, 1] < 0.999


def test_float16_images_and_a_fixed_batch_dimension():
    model = b.model(
        [b.node("Identity", ["input"], ["out"], "id")],
        [b.value("input", [2, 3, 8, 8], TensorProto.FLOAT16)],
        [b.value("out", [2, 3, 8, 8], TensorProto.FLOAT16)],
    )
    batches = list(make(model, samples=6).batches(32))
    assert [batch["input"].shape for batch in batches] == [(2, 3, 8, 8)] * 3
    assert all(batch["input"].dtype == np.float16 for batch in batches)
    assert sess_of(model).run(None, batches[0])[0].shape == (2, 3, 8, 8)


def test_uint8_images_span_0_to_255():
    model = b.model(
        [b.node("Cast", ["image"], ["out"], "cast", to=FLOAT)],
        [b.value("image", ["n", 20, 20, 3], TensorProto.UINT8)],
        [b.value("out", ["n", 20, 20, 3])],
    )
    dataset = make(model, samples=16)
    assert (dataset.plans["image"].kind, dataset.plans["image"].layout) == ("images", "NHWC")
    x = everything(dataset)["image"]
    assert x.dtype == np.uint8 and x.max() > 200 and x.min() < 50
    np.testing.assert_array_equal(sess_of(model).run(None, {"image": x})[0], x.astype(np.float32))


# --------------------------------------------------------------------------- token ids


@pytest.mark.parametrize("ids_type", [INT64, INT32])
def test_embedding_ids_in_range_and_bert_like_inputs(ids_type):
    model = embedding_model(ids_type=ids_type)
    dataset = make(model, samples=64)
    feeds = everything(dataset)
    ids = feeds["input_ids"]
    assert ids.shape == (64, DEFAULT_SEQUENCE)  # a dynamic sequence defaults to 128
    assert ids.dtype == (np.int64 if ids_type == INT64 else np.int32)
    assert ids.min() >= 0 and ids.max() < VOCAB
    assert len(np.unique(ids)) == VOCAB  # uniform over the whole table (8192 draws of 50 ids)
    assert dataset.plans["input_ids"].vocab == VOCAB
    assert (feeds["attention_mask"] == 1).all()
    assert (feeds["token_type_ids"] == 0).all()
    np.testing.assert_array_equal(feeds["position_ids"], np.broadcast_to(np.arange(DEFAULT_SEQUENCE), (64, 128)))
    out = sess_of(model).run(None, feeds)[0]  # onnxruntime rejects an out-of-range Gather index
    assert out.shape == (64, DEFAULT_SEQUENCE, WIDTH) and np.isfinite(out).all()


def test_a_given_sequence_length_fills_the_shared_dimension():
    model = embedding_model()
    feeds = everything(make(model, samples=4, shapes={"attention_mask": (1, 9)}))
    assert {name: array.shape for name, array in feeds.items()} == {
        "input_ids": (4, 9),
        "attention_mask": (4, 9),
        "token_type_ids": (4, 9),
        "position_ids": (4, 9),
    }
    assert sess_of(model).run(None, feeds)[0].shape == (4, 9, WIDTH)
    # position ids longer than the position table stop at its last row
    feeds = everything(make(model, samples=2, shapes={"position_ids": (1, POSITIONS + 10)}))
    assert feeds["position_ids"][0, -1] == POSITIONS - 1 and feeds["position_ids"][0, 5] == 5
    assert np.isfinite(sess_of(model).run(None, feeds)[0]).all()


def test_embedding_table_as_a_constant_node_and_a_plain_int_input():
    table = b.rand([7, 4], 0)
    model = b.model(
        [
            b.constant("table", table),
            b.node("Unsqueeze", ["tokens", "axes"], ["tokens2"], "unsqueeze"),
            b.node("Gather", ["table", "tokens2"], ["emb"], "gather"),
            b.node("Cast", ["step"], ["step_f"], "cast", to=FLOAT),
            b.node("Add", ["emb", "step_f"], ["out"], "add"),
        ],
        [b.value("tokens", ["n", 5], INT64), b.value("step", ["n", 1, 1, 1], INT64)],
        [unshaped("out")],
        [b.ints("axes", [1])],
    )
    dataset = make(model, samples=200)
    feeds = everything(dataset)
    assert dataset.plans["tokens"].kind == "token-ids" and dataset.plans["tokens"].vocab == 7
    assert set(np.unique(feeds["tokens"])) == set(range(7))
    assert (feeds["step"] == 0).all()  # an int that indexes nothing
    assert sess_of(model).run(None, feeds)[0].shape == (200, 1, 5, 4)


# --------------------------------------------------------------------------- other float inputs


@pytest.mark.parametrize(("dims", "via"), [(["n", 4, 20], None), (["n", 80], "Reshape"), (["n", 4, 6], "Unsqueeze")])
def test_batchnorm_running_stats_are_matched(dims, via):
    model = batchnorm_model(dims, via=via)
    dataset = make(model, samples=1000)
    assert dataset.plans["input"].kind == "batchnorm"
    x = everything(dataset, batch_size=256)["input"]
    per_channel = x.reshape(1000, 4, -1)
    assert (np.abs(per_channel.mean(axis=(0, 2)) - MEAN) < 0.1 * np.sqrt(VAR)).all()
    np.testing.assert_allclose(per_channel.var(axis=(0, 2)), VAR, rtol=0.1)
    # in onnxruntime the BatchNormalization output is standardised, as on real data
    out = sess_of(model).run(None, {"input": x})[0].reshape(1000, 4, -1)
    np.testing.assert_allclose(out.mean(axis=(0, 2)), 0.0, atol=0.1)
    np.testing.assert_allclose(out.std(axis=(0, 2)), 1.0, atol=0.1)


def test_batchnorm_whose_channels_do_not_fit_falls_back_to_smooth_signals():
    model = batchnorm_model(["n", 4, 10], via="Reshape")  # 4 x 10 -> [n, 4, -1] fits ...
    assert make(model, samples=2).plans["input"].kind == "batchnorm"
    model = batchnorm_model(["n", 3, 10])  # ... 3 channels against 4 running means does not
    specs = [InputSpec("input", np.float32, ("n", 3, 10))]
    assert data_free(model, specs, samples=2).plans["input"].kind == "smooth"


def test_smooth_signals_are_correlated_in_time_with_unit_variance():
    model = signal_model(["n", 6, 100])
    dataset = make(model, samples=64)
    assert dataset.plans["input"].kind == "smooth"
    x = everything(dataset)["input"]
    assert x.shape == (64, 6, 100)
    np.testing.assert_allclose(x.var(axis=2), 1 - OFFSET**2, rtol=1e-3)  # within a series: the signal
    levels = x.mean(axis=2)
    assert abs(levels.mean()) < 0.15 and 0.6 < levels.std() < 0.8  # level ~ N(0, OFFSET^2)
    assert 0.85 < x.var() < 1.15  # unit variance overall
    assert neighbour_correlation(x - levels[..., None], 2) > 0.5  # smooth in time, not white noise
    assert abs(np.corrcoef(x[:, 0].ravel(), x[:, 1].ravel())[0, 1]) < 0.2  # series are independent
    assert sess_of(model).run(None, {"input": x})[0].shape == (64, 6, 16)


# --------------------------------------------------------------------------- bad input


def test_dynamic_float_dimension_needs_a_shape():
    model = b.model(
        [b.node("ReduceMean", ["input"], ["out"], "mean", axes=[1], keepdims=0)],
        [b.value("input", ["n", "time"])],
        [b.value("out", ["n"])],
    )
    with pytest.raises(DataError, match=r"give input_shapes input:1xN"):
        make(model)
    x = everything(make(model, samples=3, shapes={"input": (1, 33)}))["input"]
    assert x.shape == (3, 33)


def test_bad_options_are_option_errors():
    model = signal_model(["n", 8])
    with pytest.raises(OptionError, match="unknown input"):
        make(model, shapes={"nope": (1, 8)})
    with pytest.raises(OptionError, match="does not fit"):
        make(model, shapes={"input": (1, 9)})
    with pytest.raises(OptionError, match="samples"):
        make(model, samples=0)
    with pytest.raises(OptionError, match="seed"):
        make(model, seed=-1)


# --------------------------------------------------------------------------- end to end


def test_cli_prunes_with_data_free_calibration(fixtures_dir, tmp_path):
    """SparseGPT calibrated on data-free signals keeps the digits MLP accurate at 50 % sparsity (overall)."""
    out = tmp_path / "pruned.onnx"
    args = ["prune", fixtures_dir / "mlp_digits.onnx", out, "--sparsity", "0.5", "--method", "sparsegpt"]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--data-free"]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pruned = onnx.load(out)
    weights = [numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name.endswith("weight")]
    weights = [w for w in weights if w.ndim == 2]
    # allocation by error curves (the default with data) splits 50 % unevenly; the total is exact
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert weights and abs(zeros / sum(w.size for w in weights) - 0.5) < 0.01
    assert len({round(float((w == 0).mean()), 2) for w in weights}) > 1
    x = np.load(fixtures_dir / "mlp_digits.test.npz")["input"]
    labels = np.load(fixtures_dir / "mlp_digits.test_labels.npy")
    accuracy = (session(str(out)).run(None, {"input": x})[0].argmax(axis=1) == labels).mean()
    assert accuracy > 0.9
