"""The data layer: npz / readers / iterables / synthetic / image folders, validation, labels.

Every data set is fed to a real onnxruntime session where that says something (accuracy
on the fixtures, per-channel means of preprocessed images, fixed batch sizes). Images are
written with Pillow into ``tmp_path``; expected pixel values are computed by hand.
"""

from __future__ import annotations

import json
import logging
import sys

import builders as b
import numpy as np
import pytest
from onnx import TensorProto

from onnxprune.data import (
    ImageOptions,
    batch_size_for,
    check_feeds,
    find_images,
    fixed_batch_size,
    load_labels,
    open_data,
    parse_image_options,
)
from onnxprune.errors import DataError, OptionError
from onnxprune.runtime import InputSpec, input_specs, session

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

# --------------------------------------------------------------------------- helpers


def identity_model(dims, elem_type=TensorProto.FLOAT, name="input"):
    return b.model(
        [b.node("Identity", [name], ["out"], "id")], [b.value(name, dims, elem_type)], [b.value("out", dims, elem_type)]
    )


def add_model(dims_a=("n", 4), dims_b=("n", 4)):
    return b.model(
        [b.node("Add", ["a", "b"], ["out"], "add")],
        [b.value("a", dims_a), b.value("b", dims_b)],
        [b.value("out", ["n", 4])],
    )


def channel_mean_model(dims):
    """GlobalAveragePool over an NCHW input: out[n, c, 0, 0] = mean of channel c."""
    return b.model(
        [b.node("GlobalAveragePool", ["input"], ["out"], "gap")],
        [b.value("input", dims)],
        [b.value("out", ["n", dims[1], 1, 1])],
    )


def run(model, feeds):
    return session(model.SerializeToString()).run(None, feeds)[0]


def specs_of(model):
    return input_specs(session(model.SerializeToString()))


def concat(batches):
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


class Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, ``per`` samples a call."""

    def __init__(self, array, per, name="input"):
        self.array, self.per, self.name = array, per, name
        self.calls = 0
        self.position = 0

    def get_next(self):
        self.calls += 1
        if self.position >= len(self.array):
            return None
        chunk = self.array[self.position : self.position + self.per]
        self.position += self.per
        return {self.name: chunk}


@pytest.fixture(scope="module")
def cnn_specs(fixtures_dir):
    return input_specs(session(fixtures_dir / "cnn_digits.onnx"))


@pytest.fixture(scope="module")
def cnn_test(fixtures_dir):
    return np.load(fixtures_dir / "cnn_digits.test.npz")["input"]


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- npz


def test_npz_batches_cover_all_samples_in_order_and_reproduce_accuracy(fixtures_dir, cnn_specs, cnn_test):
    data = open_data(fixtures_dir / "cnn_digits.test.npz", specs=cnn_specs)
    assert (data.kind, data.synthetic, data.labels, data.num_samples()) == ("npz", False, None, 450)
    assert data.source.endswith("cnn_digits.test.npz")
    batches = list(data.batches(64))
    assert [len(batch["input"]) for batch in batches] == [64] * 7 + [2]
    assert all(set(batch) == {"input"} and batch["input"].dtype == np.float32 for batch in batches)
    np.testing.assert_array_equal(concat(batches)["input"], cnn_test)
    again = list(data.batches(64))
    assert all(np.array_equal(x["input"], y["input"]) for x, y in zip(batches, again, strict=True))
    assert not batches[0]["input"].flags.writeable

    labels = load_labels(fixtures_dir / "cnn_digits.test_labels.npy", num_samples=data.num_samples())
    sess = session(fixtures_dir / "cnn_digits.onnx")
    predicted = np.concatenate([sess.run(None, batch)[0].argmax(axis=1) for batch in data.batches(100)])
    manifest = json.loads((fixtures_dir / "manifest.json").read_text())
    assert np.mean(predicted == labels) == pytest.approx(manifest["models"]["cnn_digits"]["accuracy"], abs=1e-4)


def test_npz_wrong_names_lists_missing_unknown_and_model_inputs(tmp_path, cnn_specs, cnn_test):
    path = save_npz(tmp_path / "d.npz", x=cnn_test, extra=cnn_test)
    with pytest.raises(
        DataError, match=r"missing input\(s\) input; unknown input\(s\) x, extra; the model's inputs are: input"
    ):
        open_data(path, specs=cnn_specs)


def test_npz_wrong_rank(tmp_path, cnn_specs, cnn_test):
    path = save_npz(tmp_path / "d.npz", input=cnn_test.reshape(450, 64))
    with pytest.raises(
        DataError, match=r"'input' has rank 2 \(shape 450x64\) but the model declares \[batch, 1, 8, 8\]"
    ):
        open_data(path, specs=cnn_specs)


def test_npz_wrong_fixed_dim_names_dim_expected_and_got(tmp_path, cnn_specs, cnn_test):
    path = save_npz(tmp_path / "d.npz", input=cnn_test[:, :, :, :7])
    with pytest.raises(DataError, match=r"'input' dim 3 is 7 but the model fixes it at 8"):
        open_data(path, specs=cnn_specs)


def test_npz_int_data_for_float_input(tmp_path, cnn_specs, cnn_test):
    path = save_npz(tmp_path / "d.npz", input=cnn_test.astype(np.int64))
    with pytest.raises(DataError, match=r"input 'input' must be float32 .*got int64"):
        open_data(path, specs=cnn_specs)


def test_float64_and_float16_are_cast_to_float32_with_a_log(tmp_path, cnn_specs, cnn_test, caplog):
    for dtype in (np.float64, np.float16):
        path = save_npz(tmp_path / f"{np.dtype(dtype).name}.npz", input=cnn_test.astype(dtype))
        with caplog.at_level(logging.INFO, logger="onnxprune.data"):
            data = open_data(path, specs=cnn_specs)
        assert f"casting input 'input' from {np.dtype(dtype).name} to float32" in caplog.text
        got = concat(list(data.batches(128)))["input"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, cnn_test.astype(dtype).astype(np.float32))


def test_int32_is_cast_safely_to_int64_but_floats_are_not_ints():
    specs = specs_of(identity_model(["n", 5], TensorProto.INT64, name="ids"))
    data = open_data({"ids": np.arange(10, dtype=np.int32).reshape(2, 5)}, specs=specs)
    (batch,) = data.batches(8)
    assert batch["ids"].dtype == np.int64
    with pytest.raises(DataError, match=r"'ids' must be int64 .*got float32"):
        open_data({"ids": np.zeros((2, 5), np.float32)}, specs=specs)
    with pytest.raises(DataError, match=r"'ids' must be int32 .*got int64"):  # int64 -> int32 could overflow
        check_feeds({"ids": np.zeros((2, 5), np.int64)}, [InputSpec("ids", np.int32, ("n", 5))])


def test_npz_unequal_sample_counts_name_arrays_and_counts(tmp_path):
    specs = specs_of(add_model())
    path = save_npz(tmp_path / "d.npz", a=np.zeros((10, 4), np.float32), b=np.zeros((9, 4), np.float32))
    with pytest.raises(DataError, match=r"different numbers of samples \(a has 10, b has 9\)"):
        open_data(path, specs=specs)


def test_npz_empty_not_a_zip_and_missing_files_name_the_path(tmp_path, cnn_specs):
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(DataError, match=rf"{empty} holds no arrays"):
        open_data(empty, specs=cnn_specs)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DataError, match=rf"{garbage} is not a readable \.npz"):
        open_data(garbage, specs=cnn_specs)
    with pytest.raises(DataError, match=rf"data file {tmp_path / 'missing.npz'} does not exist"):
        open_data(tmp_path / "missing.npz", specs=cnn_specs)
    zero = save_npz(tmp_path / "zero.npz", input=np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="holds 0 samples"):
        open_data(zero, specs=cnn_specs)


def test_npy_feeds_a_single_input_model_only(tmp_path, cnn_specs, cnn_test):
    path = tmp_path / "x.npy"
    np.save(path, cnn_test[:20])
    data = open_data(path, specs=cnn_specs)
    assert data.kind == "npy" and data.num_samples() == 20
    with pytest.raises(DataError, match="holds one unnamed array but the model has 2 inputs"):
        open_data(path, specs=specs_of(add_model()))


def test_samples_caps_real_data_to_the_first_samples(fixtures_dir, cnn_specs, cnn_test):
    data = open_data(fixtures_dir / "cnn_digits.test.npz", specs=cnn_specs, samples=100)
    assert data.num_samples() == 100
    np.testing.assert_array_equal(concat(list(data.batches(32)))["input"], cnn_test[:100])


# --------------------------------------------------------------------------- batch sizes


def test_fixed_batch_one_model_gets_batches_of_one_whatever_is_asked():
    model = identity_model([1, 4])
    specs = specs_of(model)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    assert batch_size_for(specs, 32) == 1 and fixed_batch_size(specs) == 1
    batches = list(open_data({"input": x}, specs=specs).batches(32))
    assert len(batches) == 10 and all(batch["input"].shape == (1, 4) for batch in batches)
    outputs = np.concatenate([run(model, batch) for batch in batches])
    np.testing.assert_array_equal(outputs, x)


def test_fixed_batch_above_one_needs_a_multiple():
    specs = specs_of(identity_model([5, 4]))
    batches = list(open_data({"input": np.ones((10, 4), np.float32)}, specs=specs).batches(3))
    assert [len(batch["input"]) for batch in batches] == [5, 5]
    data = open_data({"input": np.ones((12, 4), np.float32)}, specs=specs)
    with pytest.raises(DataError, match="12 samples, not a multiple of the model's fixed batch size 5"):
        data.batches(8)
    reader = open_data(Reader(np.ones((12, 4), np.float32), per=4), specs=specs)
    with pytest.raises(DataError, match="batch 2 has 2 samples but the model fixes the batch size at 5"):
        list(reader.batches(8))


def test_batch_size_for_requested_and_disagreeing_inputs():
    dynamic = [InputSpec("x", np.float32, ("n", 3))]
    assert batch_size_for(dynamic, 16) == 16 and fixed_batch_size(dynamic) is None
    with pytest.raises(OptionError, match="batch size must be an integer >= 1"):
        batch_size_for(dynamic, 0)
    clash = [InputSpec("a", np.float32, (1, 3)), InputSpec("b", np.float32, (4, 3))]
    assert batch_size_for(clash, 8) == 1  # b's batch axis is undecided: a fixes batch 1
    with pytest.raises(OptionError, match=r"cannot tell which axis of input 'b' \[4, 3\] holds the batch.*b:K"):
        open_data({"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 3), np.float32)}, specs=clash)
    with pytest.raises(DataError, match=r"fix different batch sizes \(a=1, b=4\)"):
        batch_size_for(clash, 8, {"b": 0})


# --------------------------------------------------------------------------- readers and iterables


def test_reader_is_read_once_regrouped_and_replayed_identically():
    model = identity_model(["n", 3])
    x = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    reader = Reader(x, per=7)
    data = open_data(reader, specs=specs_of(model))
    assert data.kind == "reader" and data.source == "CalibrationDataReader Reader"
    assert data.num_samples() is None and reader.calls == 0  # lazy
    first = list(data.batches(16))
    assert [len(batch["input"]) for batch in first] == [16, 16, 16, 2]
    np.testing.assert_array_equal(concat(first)["input"], x)
    assert data.num_samples() == 50 and reader.calls == 9  # 8 batches of <= 7 samples, then None
    second = list(data.batches(16))
    assert reader.calls == 9
    assert all(np.array_equal(p["input"], q["input"]) for p, q in zip(first, second, strict=True))
    np.testing.assert_array_equal(np.concatenate([run(model, batch) for batch in second]), x)
    assert [len(batch["input"]) for batch in data.batches(5)] == [5] * 10


def test_reader_partly_read_then_replayed_resumes_and_caps_at_samples():
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    reader = Reader(x, per=4)
    data = open_data(reader, specs=specs_of(identity_model(["n", 3])))
    assert next(iter(data.batches(2)))["input"].tolist() == x[:2].tolist()
    assert reader.calls == 1
    np.testing.assert_array_equal(concat(list(data.batches(3)))["input"], x)
    capped_reader = Reader(x, per=4)
    capped = open_data(capped_reader, specs=specs_of(identity_model(["n", 3])), samples=10)
    np.testing.assert_array_equal(concat(list(capped.batches(8)))["input"], x[:10])
    assert capped.num_samples() == 10 and capped_reader.calls == 3


def test_reader_buffers_reused_by_the_reader_do_not_change_the_cache():
    buffer = np.zeros((2, 3), np.float32)

    class Reusing:
        def __init__(self):
            self.n = 0

        def get_next(self):
            if self.n == 3:
                return None
            buffer[:] = self.n
            self.n += 1
            return {"input": buffer}

    data = open_data(Reusing(), specs=specs_of(identity_model(["n", 3])))
    assert concat(list(data.batches(6)))["input"][:, 0].tolist() == [0, 0, 1, 1, 2, 2]


def test_generator_and_list_of_dicts():
    specs = specs_of(add_model())
    rng = np.random.default_rng(1)
    items = [{"a": rng.standard_normal((n, 4)).astype(np.float32), "b": np.ones((n, 4), np.float32)} for n in (3, 5, 1)]
    expected = concat(items)
    for source in (items, (item for item in items)):
        data = open_data(source, specs=specs)
        assert data.kind == "iterable"
        for _ in range(2):
            batches = list(data.batches(4))
            assert [len(batch["a"]) for batch in batches] == [4, 4, 1]
            for name in "ab":
                np.testing.assert_array_equal(concat(batches)[name], expected[name])
        assert data.num_samples() == 9


def test_stream_items_are_validated_by_index():
    specs = specs_of(add_model())
    good = {"a": np.ones((2, 4), np.float32), "b": np.ones((2, 4), np.float32)}
    data = open_data([good, {"a": good["a"]}], specs=specs)
    with pytest.raises(
        DataError, match=r"iterable list \(item 1\): missing input\(s\) b; the model's inputs are: a, b"
    ):
        list(data.batches(4))
    with pytest.raises(DataError, match=r"\(item 0\): expected a dict of input name -> array, got tuple"):
        list(open_data([(1, 2)], specs=specs).batches(4))
    with pytest.raises(DataError, match="gave no samples"):
        list(open_data([], specs=specs).batches(4))


def test_stream_batches_are_cut_where_the_sample_shape_changes():
    model = identity_model(["n", "seq"])
    items = [{"input": np.full((3, 5), 1, np.float32)}, {"input": np.full((2, 7), 2, np.float32)}]
    batches = list(open_data(items, specs=specs_of(model)).batches(4))
    assert [batch["input"].shape for batch in batches] == [(3, 5), (2, 7)]
    assert all(run(model, batch).shape == batch["input"].shape for batch in batches)


def test_check_feeds_names_and_counts():
    specs = [InputSpec("a", np.float32, ("n", 2)), InputSpec("b", np.int64, ("n",))]
    fed = check_feeds({"b": [1, 2], "a": np.zeros((2, 2), np.float32)}, specs)
    assert list(fed) == ["a", "b"] and fed["b"].dtype == np.int64
    with pytest.raises(
        DataError, match=r"data: missing input\(s\) b; unknown input\(s\) c; the model's inputs are: a, b"
    ):
        check_feeds({"a": np.zeros((2, 2), np.float32), "c": 1}, specs)
    with pytest.raises(DataError, match="holds <U1 values"):
        check_feeds({"a": np.zeros((2, 2), np.float32), "b": np.array(["x", "y"])}, specs)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_reproducible_marked_and_independent_of_batch_size():
    model = identity_model(["n", 3, 4])
    specs = specs_of(model)
    data = open_data(None, specs=specs, seed=3, samples=100)
    assert (data.kind, data.synthetic, data.source, data.num_samples()) == (
        "synthetic",
        True,
        "synthetic (seed 3)",
        100,
    )
    by_7 = concat(list(data.batches(7)))["input"]
    by_64 = concat(list(data.batches(64)))["input"]
    assert by_7.shape == (100, 3, 4) and by_7.dtype == np.float32
    np.testing.assert_array_equal(by_7, by_64)
    np.testing.assert_array_equal(
        by_7, concat(list(open_data(None, specs=specs, seed=3, samples=100).batches(10)))["input"]
    )
    assert not np.array_equal(
        by_7, concat(list(open_data(None, specs=specs, seed=4, samples=100).batches(10)))["input"]
    )
    assert abs(by_7.mean()) < 0.1 and by_7.std() == pytest.approx(1.0, abs=0.1)
    assert open_data(None, specs=specs).num_samples() == 64
    np.testing.assert_array_equal(run(model, next(iter(data.batches(5)))), by_7[:5])


def test_synthetic_dtypes_follow_the_runtime_convention():
    specs = [
        InputSpec("input_ids", np.int64, ("n", 6)),
        InputSpec("attention_mask", np.int64, ("n", 6)),
        InputSpec("flags", np.bool_, ("n", 2)),
        InputSpec("half", np.float16, ("n", 2)),
    ]
    (batch,) = open_data(None, specs=specs, samples=3).batches(8)
    assert (batch["input_ids"] == 0).all() and (batch["attention_mask"] == 1).all() and batch["flags"].all()
    assert batch["half"].dtype == np.float16 and batch["input_ids"].shape == (3, 6)


def test_synthetic_dynamic_dims_come_from_shapes_or_fail_with_a_hint():
    model = identity_model(["n", "seq", 4])
    specs = specs_of(model)
    with pytest.raises(OptionError, match=r"dynamic dimension\(s\) seq: give input_shapes input:1xNx4"):
        open_data(None, specs=specs)
    data = open_data(None, specs=specs, samples=6, shapes={"input": (99, 10, 4)})
    batches = list(data.batches(4))
    assert [batch["input"].shape for batch in batches] == [(4, 10, 4), (2, 10, 4)]
    assert run(model, batches[0]).shape == (4, 10, 4)
    with pytest.raises(OptionError, match="does not fit the model's declared shape"):
        open_data(None, specs=specs, shapes={"input": (1, 10, 5)})
    with pytest.raises(OptionError, match="names unknown input"):
        open_data(None, specs=specs, shapes={"other": (1, 2)})


def test_option_errors_for_counts_and_image_options_on_non_images(cnn_specs, fixtures_dir):
    with pytest.raises(OptionError, match="number of samples must be an integer >= 1"):
        open_data(None, specs=cnn_specs, samples=0)
    with pytest.raises(OptionError, match="image preprocessing options apply only to a folder of images"):
        open_data(fixtures_dir / "cnn_digits.test.npz", specs=cnn_specs, image_options=ImageOptions(size=8))
    with pytest.raises(DataError, match="cannot read samples from a int"):
        open_data(5, specs=cnn_specs)
    scalar = open_data(None, specs=[InputSpec("s", np.float32, ())], samples=3)  # one value per run
    assert [batch["s"].shape for batch in scalar.batches(8)] == [()] * 3


# --------------------------------------------------------------------------- images


def write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)
    return path


def solid(h, w, rgb):
    return np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3)).copy()


def test_solid_colour_gives_known_normalized_values_through_onnxruntime(tmp_path):
    write(tmp_path / "a.png", solid(10, 12, (200, 100, 50)))
    write(tmp_path / "b.png", solid(20, 9, (0, 255, 51)))
    model = channel_mean_model(["n", 3, 8, 8])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    data = open_data(tmp_path, specs=specs_of(model), image_options=ImageOptions(mean=mean, std=std))
    assert (data.kind, data.num_samples(), data.labels, data.class_names) == ("images", 2, None, None)
    (batch,) = data.batches(8)
    assert batch["input"].shape == (2, 3, 8, 8) and batch["input"].dtype == np.float32
    expected = (np.array([[200, 100, 50], [0, 255, 51]]) / 255 - mean) / std
    np.testing.assert_allclose(batch["input"], np.broadcast_to(expected[:, :, None, None], (2, 3, 8, 8)), atol=1e-5)
    np.testing.assert_allclose(run(model, batch)[:, :, 0, 0], expected, atol=1e-5)


def test_bgr_reverses_channels_and_nhwc_is_inferred_or_chosen(tmp_path):
    write(tmp_path / "a.png", solid(4, 4, (10, 20, 30)))
    nchw = open_data(tmp_path, specs=specs_of(identity_model(["n", 3, 4, 4])), image_options=ImageOptions(scale=1.0))
    assert next(iter(nchw.batches(1)))["input"][0, :, 0, 0].tolist() == [10, 20, 30]
    bgr = ImageOptions(scale=1.0, channels="BGR", mean=(1, 2, 3))
    nhwc = open_data(tmp_path, specs=specs_of(identity_model(["n", 4, 4, 3])), image_options=bgr)
    (batch,) = nhwc.batches(1)
    assert batch["input"].shape == (1, 4, 4, 3) and batch["input"][0, 2, 3].tolist() == [29, 18, 7]
    dynamic = open_data(
        tmp_path, specs=specs_of(identity_model(["n", "h", "w", "c"])), image_options=ImageOptions(layout="NHWC")
    )
    assert next(iter(dynamic.batches(1)))["input"].shape == (1, 4, 4, 3)


def test_centre_crop_and_shorter_side_resize_are_pixel_exact(tmp_path):
    rows, cols = np.meshgrid(np.arange(10), np.arange(12), indexing="ij")
    image = np.stack([rows * 20, cols * 20, np.full_like(rows, 7)], axis=-1)
    write(tmp_path / "grid.png", image)
    specs = specs_of(identity_model(["n", 3, "h", "w"]))
    crop = open_data(tmp_path, specs=specs, image_options=ImageOptions(crop=(4, 6), scale=1.0))
    (batch,) = crop.batches(1)
    # top = round((10 - 4) / 2) = 3, left = round((12 - 6) / 2) = 3
    np.testing.assert_array_equal(batch["input"][0], image[3:7, 3:9].transpose(2, 0, 1))

    write(tmp_path / "small" / "two.png", np.array([[[0, 0, 0], [100, 100, 100]], [[200, 200, 200], [50, 50, 50]]]))
    nearest = ImageOptions(size=4, resample="nearest", scale=1.0, channels="GRAY")
    (up,) = open_data(
        tmp_path / "small", specs=specs_of(identity_model(["n", 1, "h", "w"])), image_options=nearest
    ).batches(1)
    np.testing.assert_array_equal(up["input"][0, 0], np.kron([[0, 100], [200, 50]], np.ones((2, 2))))

    write(tmp_path / "wide" / "w.png", solid(20, 40, (9, 9, 9)))
    wide = open_data(tmp_path / "wide", specs=specs, image_options=ImageOptions(size=10))
    assert next(iter(wide.batches(1)))["input"].shape == (1, 3, 10, 20)
    write(tmp_path / "tall" / "t.png", solid(45, 20, (9, 9, 9)))
    tall = open_data(tmp_path / "tall", specs=specs, image_options=ImageOptions(size=10))
    assert next(iter(tall.batches(1)))["input"].shape == (1, 3, 22, 10)  # int(10 * 45 / 20)
    cropped = open_data(
        tmp_path / "wide", specs=specs_of(identity_model(["n", 3, 10, 10])), image_options=ImageOptions(size=10)
    )
    (batch,) = cropped.batches(1)  # crop inferred from the model's fixed 10x10
    assert batch["input"].shape == (1, 3, 10, 10) and np.allclose(batch["input"], 9 / 255)


def test_images_for_a_fixed_batch_float16_input(tmp_path, caplog):
    for i in range(4):
        write(tmp_path / f"{i}.png", solid(3, 3, (i, i, i)))
    model = identity_model([2, 3, 3, 3], TensorProto.FLOAT16)
    with caplog.at_level(logging.INFO, logger="onnxprune.data"):
        data = open_data(tmp_path, specs=specs_of(model), image_options=ImageOptions(scale=1.0))
    assert "casting images from float32 to the model's float16" in caplog.text
    batches = list(data.batches(3))
    assert [batch["input"].shape for batch in batches] == [(2, 3, 3, 3)] * 2
    assert all(batch["input"].dtype == np.float16 for batch in batches)
    assert [run(model, batch)[:, 0, 0, 0].tolist() for batch in batches] == [[0, 1], [2, 3]]


def test_grayscale_is_inferred_from_one_channel_and_rank_three(tmp_path):
    write(tmp_path / "g.png", np.full((6, 6), 128), mode="L")
    for dims in (["n", 1, 6, 6], ["n", 6, 6]):
        (batch,) = open_data(tmp_path, specs=specs_of(identity_model(dims))).batches(4)
        assert batch["input"].shape == (1, *dims[1:]) and np.allclose(batch["input"], 128 / 255)
    with pytest.raises(DataError, match="has 1 channels in layout NCHW, but RGB images give 3"):
        open_data(tmp_path, specs=specs_of(identity_model(["n", 1, 6, 6])), image_options=ImageOptions(channels="RGB"))


def test_jpeg_uppercase_extension_and_uint8_dtype(tmp_path):
    Image.fromarray(solid(16, 16, (180, 60, 90))).save(tmp_path / "photo.JPG", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    options = ImageOptions(scale=1.0, dtype="uint8")
    data = open_data(
        tmp_path, specs=specs_of(identity_model(["n", 3, 16, 16], TensorProto.UINT8)), image_options=options
    )
    (batch,) = data.batches(2)
    assert batch["input"].dtype == np.uint8 and batch["input"].shape == (1, 3, 16, 16)
    assert np.abs(batch["input"][0].reshape(3, -1).mean(axis=1) - [180, 60, 90]).max() < 3


def test_class_subfolders_give_sorted_labels_and_class_names(tmp_path):
    colours = {"cat": (255, 0, 0), "ant": (0, 255, 0), "dog": (0, 0, 255)}
    for name, rgb in colours.items():
        for i in range(2):
            write(tmp_path / name / f"{i}.png", solid(5, 5, rgb))
    write(tmp_path / "dog" / "deeper" / "x.bmp", solid(5, 5, colours["dog"]))
    write(tmp_path / ".hidden" / "h.png", solid(5, 5, (1, 1, 1)))
    (tmp_path / "cat" / "._0.png").write_bytes(b"macOS resource fork, not a png")
    model = channel_mean_model(["n", 3, 5, 5])
    data = open_data(tmp_path, specs=specs_of(model))
    assert data.class_names == ("ant", "cat", "dog")
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    means = np.concatenate([run(model, batch)[:, :, 0, 0] for batch in data.batches(3)])
    assert (means.argmax(axis=1) == np.array([1, 1, 0, 0, 2, 2, 2])).all()  # ant green, cat red, dog blue
    capped = open_data(tmp_path, specs=specs_of(model), samples=3)
    assert capped.num_samples() == 3 and capped.labels.tolist() == [0, 0, 1]


def test_flat_folder_is_recursive_and_sorted_without_labels(tmp_path):
    write(tmp_path / "b.png", solid(2, 2, (0, 0, 0)))
    write(tmp_path / "sub" / "a.png", solid(2, 2, (0, 0, 0)))
    write(tmp_path / "a.png", solid(2, 2, (0, 0, 0)))
    files, labels, classes = find_images(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.png", "b.png", "sub/a.png"]
    assert labels is None and classes is None


def test_image_folder_errors(tmp_path):
    specs = specs_of(identity_model(["n", 3, "h", "w"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images found in .*empty \(looked for \.jpg, \.jpeg, \.png"):
        open_data(tmp_path / "empty", specs=specs)

    write(tmp_path / "bad" / "a.png", solid(4, 4, (1, 2, 3)))
    (tmp_path / "bad" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n corrupt")
    data = open_data(tmp_path / "bad", specs=specs)  # the first image is fine; decoding is per batch
    with pytest.raises(DataError, match=r"cannot read image .*b\.png"):
        list(data.batches(1))
    (tmp_path / "bad" / "0.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read image .*0\.png"):
        open_data(tmp_path / "bad", specs=specs)

    write(tmp_path / "sizes" / "a.png", solid(4, 4, (1, 2, 3)))
    write(tmp_path / "sizes" / "b.png", solid(4, 6, (1, 2, 3)))
    with pytest.raises(DataError, match=r"b\.png gives a 3x4x6 sample but .*a\.png gives 3x4x4: give an exact size"):
        list(open_data(tmp_path / "sizes", specs=specs).batches(2))
    with pytest.raises(DataError, match=r"smaller than the 5x5 crop"):
        list(open_data(tmp_path / "sizes", specs=specs, image_options=ImageOptions(crop=5)).batches(2))
    with pytest.raises(DataError, match="a 5x5 crop does not fit input 'input'"):
        open_data(
            tmp_path / "sizes", specs=specs_of(identity_model(["n", 3, 4, 4])), image_options=ImageOptions(crop=5)
        )
    with pytest.raises(DataError, match=r"a folder of images feeds one input, but the model has 2 \(a, b\)"):
        open_data(tmp_path / "sizes", specs=specs_of(add_model()))
    with pytest.raises(OptionError, match="image input 'x' is not a model input; the model's inputs are: input"):
        open_data(tmp_path / "sizes", specs=specs, input_name="x")
    with pytest.raises(OptionError, match="image mean has 2 values but RGB images have 3"):
        open_data(tmp_path / "sizes", specs=specs, image_options=ImageOptions(mean=(1, 2)))


def test_missing_pillow_is_a_data_error(tmp_path, monkeypatch):
    write(tmp_path / "a.png", solid(4, 4, (1, 2, 3)))
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(DataError, match=r"reading images needs Pillow: pip install 'onnxprune\[images\]'"):
        open_data(tmp_path, specs=specs_of(identity_model(["n", 3, 4, 4])))


def test_parse_image_options():
    options = parse_image_options(
        size="256", crop="224", mean="0.485,0.456,0.406", std="0.229, 0.224, 0.225", scale="1/255"
    )
    assert options == ImageOptions(size=256, crop=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert parse_image_options(size="224x200", layout="nhwc", channels="bgr") == ImageOptions(
        size=(224, 200), layout="NHWC", channels="BGR"
    )
    assert parse_image_options() == ImageOptions()
    assert parse_image_options(scale="0.5").scale == 0.5
    for kwargs, message in (
        ({"size": "224x"}, "must look like 224 or 224x224"),
        ({"crop": "1x2x3"}, "must look like 224 or 224x224"),
        ({"mean": "a,b"}, "numbers separated by commas"),
        ({"std": "1,0,1"}, "must not contain 0"),
        ({"layout": "CHW"}, "layout must be one of NCHW, NHWC"),
        ({"channels": "RGBA"}, "channels must be one of RGB, BGR, GRAY"),
        ({"resample": "cubic"}, "resample must be one of"),
        ({"dtype": "str"}, "dtype must be a float or integer type"),
    ):
        with pytest.raises(OptionError, match=message):
            parse_image_options(**kwargs)


# --------------------------------------------------------------------------- labels


def test_labels_in_every_format(tmp_path, fixtures_dir):
    expected = np.load(fixtures_dir / "cnn_digits.test_labels.npy")
    assert load_labels(fixtures_dir / "cnn_digits.test_labels.npy", num_samples=450).tolist() == expected.tolist()
    y = np.array([3, 0, 2, 2, 1])
    np.savez(tmp_path / "single.npz", whatever=y)
    np.savez(tmp_path / "keyed.npz", x=np.zeros((5, 2)), labels=y)
    np.save(tmp_path / "float.npy", y.astype(np.float32))
    np.save(tmp_path / "column.npy", y[:, None])
    (tmp_path / "lines.txt").write_text("3\n0\n2\n\n2\n1\n")
    (tmp_path / "one_line.txt").write_text("3 0  2\t2 1")
    (tmp_path / "commas.csv").write_text("3,0,2,2,1\n")
    (tmp_path / "header.csv").write_text("label\n3\n0\n2\n2\n1\n")
    for name in (
        "single.npz",
        "keyed.npz",
        "float.npy",
        "column.npy",
        "lines.txt",
        "one_line.txt",
        "commas.csv",
        "header.csv",
    ):
        labels = load_labels(tmp_path / name, num_samples=5)
        assert labels.dtype == np.int64 and labels.tolist() == y.tolist(), name
    assert load_labels(tmp_path / "lines.txt", num_samples=None).tolist() == y.tolist()


def test_one_hot_labels_become_argmax(tmp_path):
    y = np.array([2, 0, 1])
    np.save(tmp_path / "onehot.npy", np.eye(3, dtype=np.float32)[y])
    (tmp_path / "soft.txt").write_text("0.1 0.2 0.7\n0.8 0.1 0.1\n0 1 0\n")
    assert load_labels(tmp_path / "onehot.npy", num_samples=3).tolist() == y.tolist()
    assert load_labels(tmp_path / "soft.txt", num_samples=3).tolist() == y.tolist()
    (tmp_path / "pairs.csv").write_text("0,3\n1,5\n2,4\n")
    with pytest.raises(DataError, match="3x2 table whose rows are not one-hot"):
        load_labels(tmp_path / "pairs.csv", num_samples=3)


def test_class_names_only_with_a_list(tmp_path):
    (tmp_path / "names.txt").write_text("dog\ncat\ndog\n")
    with pytest.raises(DataError, match=r"line 1: 'dog' is not a class index \(give class indices\)"):
        load_labels(tmp_path / "names.txt", num_samples=3)
    assert load_labels(tmp_path / "names.txt", num_samples=3, class_names=["cat", "dog"]).tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="'dog' is not a class index \\(it is not a known class name\\)"):
        load_labels(tmp_path / "names.txt", num_samples=3, class_names=["cat", "cow"])


def test_label_errors(tmp_path):
    np.save(tmp_path / "y.npy", np.arange(449))
    with pytest.raises(DataError, match=rf"^{tmp_path / 'y.npy'} has 449 labels but the data has 450 samples"):
        load_labels(tmp_path / "y.npy", num_samples=450)
    with pytest.raises(DataError, match=rf"labels file {tmp_path / 'nope.npy'} does not exist"):
        load_labels(tmp_path / "nope.npy", num_samples=None)
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"is not a readable \.npy file"):
        load_labels(tmp_path / "broken.npy", num_samples=None)
    np.savez(tmp_path / "two.npz", a=np.arange(3), b=np.arange(3))
    with pytest.raises(DataError, match="holds arrays a, b; name the labels labels or label or y"):
        load_labels(tmp_path / "two.npz", num_samples=None)
    np.save(tmp_path / "frac.npy", np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="non-integer values"):
        load_labels(tmp_path / "frac.npy", num_samples=None)
    np.save(tmp_path / "neg.npy", np.array([-1, 1]))
    with pytest.raises(DataError, match="negative values"):
        load_labels(tmp_path / "neg.npy", num_samples=None)
    (tmp_path / "labels.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"must be \.npy, \.npz, \.txt or \.csv"):
        load_labels(tmp_path / "labels.json", num_samples=None)
