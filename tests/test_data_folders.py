"""Data folders: ONNX test-data sets and per-sample .npy/.npz files (onnxprune.data.folders).

Small arrays are written into ``tmp_path``; every refusal is checked for its one-line
message, the fragments that say which file and what to do.
"""

from __future__ import annotations

import io
import os
import types
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

from onnxprune.data.folders import (
    MAX_TENSOR_FILE_BYTES,
    FolderSample,
    folder_kind,
    natural_key,
    read_sample_files,
    read_test_data,
)
from onnxprune.errors import DataError, OptionError

A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = np.array([[1, 2]], dtype=np.int64)


def write_pb(path, array, name=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(numpy_helper.from_array(np.asarray(array), name).SerializeToString())
    return path


def write_set(root, index, tensors, *, outputs=()):
    """test_data_set_<index>/input_<k>.pb for each (name, array) in ``tensors``."""
    folder = root / f"test_data_set_{index}"
    for k, (name, array) in enumerate(tensors):
        write_pb(folder / f"input_{k}.pb", array, name)
    for k, array in enumerate(outputs):
        write_pb(folder / f"output_{k}.pb", array, f"out{k}")
    return folder


def error(call, *args, **kwargs):
    """The DataError message of ``call`` (consumed when it is a generator), checked to be one line."""
    with pytest.raises(DataError) as info:
        result = call(*args, **kwargs)
        if isinstance(result, types.GeneratorType):
            list(result)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- folder_kind


def test_kind_of_a_folder_of_sets(tmp_path):
    write_set(tmp_path, 0, [("a", A)])
    (tmp_path / "README.md").write_text("held-out samples")
    assert folder_kind(tmp_path) == "test-data"


def test_kind_of_a_single_set_folder(tmp_path):
    folder = write_set(tmp_path, 0, [("a", A)])
    assert folder_kind(folder) == "test-data"


def test_kind_of_a_samples_folder(tmp_path):
    np.savez(tmp_path / "sample_0.npz", a=A)
    np.save(tmp_path / "labels.npy", np.zeros(1, dtype=np.int64))
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    assert folder_kind(tmp_path) == "samples"


def test_kind_of_an_images_folder(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "img.JPG").write_bytes(b"not decoded here")
    assert folder_kind(tmp_path) == "images"
    np.save(tmp_path / "mean.npy", A)  # an array beside images does not make a samples folder
    assert folder_kind(tmp_path) == "images"
    only_labels = tmp_path / "only_labels"
    only_labels.mkdir()
    np.save(only_labels / "labels.npy", np.zeros(1, dtype=np.int64))
    assert folder_kind(only_labels) == "images"  # left to the image reader, which says it found none


def test_kind_of_an_empty_folder(tmp_path):
    assert folder_kind(tmp_path) is None
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    assert folder_kind(tmp_path) is None  # hidden entries are not looked at


def test_a_set_named_folder_without_pb_files_is_not_test_data(tmp_path):
    (tmp_path / "test_data_set_0").mkdir()
    (tmp_path / "test_data_set_0" / "img.png").write_bytes(b"x")
    assert folder_kind(tmp_path) == "images"


def test_kind_of_no_folder(tmp_path):
    assert "does not exist" in error(folder_kind, tmp_path / "missing")
    (tmp_path / "file.npz").write_bytes(b"x")
    assert "file.npz is no folder" in error(folder_kind, tmp_path / "file.npz")


# --------------------------------------------------------------------------- test-data sets


def test_sets_are_read_in_natural_order_and_outputs_are_ignored(tmp_path):
    root = tmp_path / "heldout"
    for index in (10, 2, 1):
        write_set(root, index, [("a", A + index), ("b", B * index)], outputs=[np.zeros(3, np.float32)])
    samples = list(read_test_data(root, ["a", "b"]))
    assert [s.source for s in samples] == [
        "heldout/test_data_set_1",
        "heldout/test_data_set_2",
        "heldout/test_data_set_10",
    ]
    assert all(isinstance(s, FolderSample) and list(s.arrays) == ["a", "b"] for s in samples)
    np.testing.assert_array_equal(samples[2].arrays["a"], A + 10)
    assert samples[2].arrays["a"].dtype == np.float32 and samples[2].arrays["a"].shape == (2, 3)
    np.testing.assert_array_equal(samples[1].arrays["b"], B * 2)
    assert samples[1].arrays["b"].dtype == np.int64


def test_a_single_set_folder(tmp_path):
    folder = write_set(tmp_path, 3, [("", A)], outputs=[A])
    (samples,) = read_test_data(folder, ["x"])
    assert samples.source == "test_data_set_3"
    np.testing.assert_array_equal(samples.arrays["x"], A)


def test_inputs_are_matched_by_tensor_name_before_position(tmp_path):
    write_set(tmp_path, 0, [("b", B), ("a", A)])  # swapped files, named
    (sample,) = read_test_data(tmp_path, ["a", "b"])
    assert list(sample.arrays) == ["a", "b"]
    np.testing.assert_array_equal(sample.arrays["a"], A)
    np.testing.assert_array_equal(sample.arrays["b"], B)


def test_inputs_are_matched_by_position_when_names_are_unknown(tmp_path):
    write_set(tmp_path, 0, [("input.1", A), ("", B)])  # an exporter's name, and none
    (sample,) = read_test_data(tmp_path, ["a", "b"])
    np.testing.assert_array_equal(sample.arrays["a"], A)
    np.testing.assert_array_equal(sample.arrays["b"], B)


def test_input_numbers_order_naturally(tmp_path):
    names = [f"x{k}" for k in range(11)]
    folder = tmp_path / "test_data_set_0"
    for k in range(11):
        write_pb(folder / f"input_{k}.pb", np.full(1, k, np.int64))
    (sample,) = read_test_data(tmp_path, names)
    assert [int(sample.arrays[name][0]) for name in names] == list(range(11))


def test_a_name_and_a_position_that_conflict(tmp_path):
    write_set(tmp_path / "data", 0, [("b", A), ("", B)])
    message = error(read_test_data, tmp_path / "data", ["a", "b"])
    assert message.startswith("data/test_data_set_0: input_0.pb (by its tensor name 'b') and input_1.pb")
    assert "(by its position 1) both feed input 'b'" in message
    assert "the model's inputs are: a, b" in message
    assert "name each tensor after the input it feeds" in message


def test_two_files_of_one_number(tmp_path):
    folder = write_set(tmp_path, 0, [("a", A)])
    write_pb(folder / "input_00.pb", A, "a")
    message = error(read_test_data, tmp_path, ["a"])
    assert "test_data_set_0: input_0.pb and input_00.pb are both input number 0" in message


def test_a_missing_input(tmp_path):
    write_set(tmp_path / "data", 0, [("a", A)])
    message = error(read_test_data, tmp_path / "data", ["a", "b"])
    assert message.startswith("data/test_data_set_0: no file feeds input(s) b (files: input_0.pb)")
    assert "the model's inputs are: a, b" in message
    assert "add input_<k>.pb for each" in message


def test_an_extra_input(tmp_path):
    write_set(tmp_path / "data", 0, [("a", A), ("", B)])
    message = error(read_test_data, tmp_path / "data", ["a"])
    assert message.startswith("data/test_data_set_0: input_1.pb feeds no model input")
    assert "no tensor name" in message and "position 1 is past the model's 1 input(s) (a)" in message
    write_set(tmp_path / "named", 0, [("a", A), ("c", B)])
    assert "its tensor name 'c' is no model input" in error(read_test_data, tmp_path / "named", ["a"])


def test_a_set_without_inputs(tmp_path):
    write_set(tmp_path / "data", 0, [("a", A)])
    write_set(tmp_path / "data", 1, [], outputs=[A])
    samples = read_test_data(tmp_path / "data", ["a"])
    assert next(samples).source == "data/test_data_set_0"  # lazy: set 1 is read only when asked for
    with pytest.raises(DataError, match=r"^data/test_data_set_1 holds no input_<k>\.pb files"):
        next(samples)


def test_a_folder_without_sets_and_one_with_both_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert "holds no test_data_set_<n>/ folders and no input_<k>.pb files" in error(read_test_data, tmp_path, ["a"])
    write_set(tmp_path, 0, [("a", A)])
    write_pb(tmp_path / "input_0.pb", A, "a")
    message = error(read_test_data, tmp_path, ["a"])
    assert "holds both test_data_set_* folders and input_*.pb files (input_0.pb): keep one layout" in message


@pytest.mark.parametrize("content", [b"\xff\xff\xff\xff", b"\x0a\x80"], ids=["garbage", "truncated"])
def test_a_malformed_pb_file(tmp_path, content):
    folder = write_set(tmp_path / "data", 0, [("a", A)])
    (folder / "input_0.pb").write_bytes(content)
    message = error(read_test_data, tmp_path / "data", ["a"])
    assert message.startswith("data/test_data_set_0/input_0.pb is no serialized onnx.TensorProto (")
    assert "write it again with onnx.numpy_helper.from_array" in message


def test_an_empty_pb_file_has_no_element_type(tmp_path):
    folder = write_set(tmp_path, 0, [("a", A)])
    (folder / "input_0.pb").write_bytes(b"")
    message = error(read_test_data, tmp_path, ["a"])
    assert "test_data_set_0/input_0.pb holds a tensor of element type UNDEFINED" in message


def test_external_data_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(A.tobytes())
    tensor = TensorProto(name="a", data_type=TensorProto.FLOAT, dims=[2, 3])
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../secret.bin")
    folder = tmp_path / "data" / "test_data_set_0"
    folder.mkdir(parents=True)
    (folder / "input_0.pb").write_bytes(tensor.SerializeToString())
    message = error(read_test_data, tmp_path / "data", ["a"])
    assert message.startswith("data/test_data_set_0/input_0.pb keeps its values in external data")
    assert "store them in the file itself" in message


@pytest.mark.parametrize(
    ("data_type", "shown"),
    [(TensorProto.STRING, "STRING"), (TensorProto.COMPLEX64, "COMPLEX64"), (999, "999 (no type ONNX defines)")],
)
def test_tensors_that_hold_no_real_numbers_are_refused(tmp_path, data_type, shown):
    tensor = TensorProto(name="a", data_type=data_type, dims=[1])
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    (folder / "input_0.pb").write_bytes(tensor.SerializeToString())
    message = error(read_test_data, tmp_path, ["a"])
    assert f"input_0.pb holds a tensor of element type {shown}" in message
    assert "give booleans, integers or floats" in message


def test_a_payload_that_does_not_match_the_dims_is_refused(tmp_path):
    tensor = numpy_helper.from_array(A, "a")
    del tensor.dims[:]
    tensor.dims.extend([4, 3])  # 12 values declared, 6 stored
    folder = tmp_path / "data" / "test_data_set_0"
    folder.mkdir(parents=True)
    (folder / "input_0.pb").write_bytes(tensor.SerializeToString())
    message = error(read_test_data, tmp_path / "data", ["a"])
    assert message.startswith("data/test_data_set_0/input_0.pb has dims [4, 3] (12 FLOAT values, 48 bytes)")
    assert "raw_data holds 24 bytes" in message
    assert "the file is corrupt or was written by hand" in message
    assert "the model is malformed" not in message
    typed = TensorProto(name="a", data_type=TensorProto.INT64, dims=[3], int64_data=[1, 2])
    (folder / "input_0.pb").write_bytes(typed.SerializeToString())
    assert "has dims [3] (3 INT64 values, 3 in int64_data) but its int64_data holds 2" in error(
        read_test_data, tmp_path / "data", ["a"]
    )


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = write_pb(tmp_path / "elsewhere" / "secret.pb", A, "a")
    folder = tmp_path / "data" / "test_data_set_0"
    folder.mkdir(parents=True)
    (folder / "input_0.pb").symlink_to(outside)
    message = error(read_test_data, tmp_path / "data", ["a"])
    assert message.startswith("data/test_data_set_0/input_0.pb is a symbolic link to ")
    assert "secret.pb, outside the data folder: refusing to read it" in message
    linked_set = tmp_path / "linked"
    linked_set.mkdir()
    (linked_set / "test_data_set_0").symlink_to(outside.parent, target_is_directory=True)
    (outside.parent / "input_0.pb").write_bytes(outside.read_bytes())
    assert "outside the data folder" in error(read_test_data, linked_set, ["a"])


def test_a_symlink_inside_the_folder_is_read(tmp_path):
    folder = write_set(tmp_path, 0, [("a", A)])
    other = tmp_path / "test_data_set_1"
    other.mkdir()
    (other / "input_0.pb").symlink_to(folder / "input_0.pb")
    assert [s.source for s in read_test_data(tmp_path, ["a"])] == [
        f"{tmp_path.name}/test_data_set_0",
        f"{tmp_path.name}/test_data_set_1",
    ]


def test_a_pb_file_larger_than_protobuf_parses_is_refused_unread(tmp_path):
    folder = write_set(tmp_path, 0, [("a", A)])
    with open(folder / "input_0.pb", "r+b") as stream:  # sparse: no disk space used
        stream.truncate(MAX_TENSOR_FILE_BYTES + 1)
    message = error(read_test_data, tmp_path, ["a"])
    assert "input_0.pb is 2,147,483,648 bytes, more than the 2,147,483,647 a protobuf message can hold" in message


def test_a_fifo_is_refused(tmp_path):
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    os.mkfifo(folder / "input_0.pb")
    assert "input_0.pb is no regular file" in error(read_test_data, tmp_path, ["a"])


def test_limit_stops_after_that_many_sets(tmp_path):
    for index in range(3):
        write_set(tmp_path, index, [("a", A)])
    (tmp_path / "test_data_set_2" / "input_0.pb").write_bytes(b"\xff")  # never read
    assert len(list(read_test_data(tmp_path, ["a"], limit=2))) == 2
    with pytest.raises(OptionError, match="integer >= 1, got 0"):
        read_test_data(tmp_path, ["a"], limit=0)


# --------------------------------------------------------------------------- per-sample files


def test_npz_samples_in_natural_order(tmp_path):
    root = tmp_path / "samples"
    root.mkdir()
    for index in (10, 2, 1):
        np.savez(root / f"sample_{index}.npz", b=B * index, a=A + index)
    (root / "README.md").write_text("one sample a file")
    np.save(root / "val_labels.npy", np.arange(3))
    (root / "nested").mkdir()
    np.savez(root / "nested" / "sample_0.npz", a=A, b=B)  # not recursive
    samples = list(read_sample_files(root, ["a", "b"]))
    assert [s.source for s in samples] == ["samples/sample_1.npz", "samples/sample_2.npz", "samples/sample_10.npz"]
    assert list(samples[0].arrays) == ["a", "b"]
    np.testing.assert_array_equal(samples[2].arrays["a"], A + 10)
    np.testing.assert_array_equal(samples[1].arrays["b"], B * 2)
    assert samples[1].arrays["b"].dtype == np.int64


def test_npy_samples_for_a_one_input_model(tmp_path):
    for index in range(3):
        np.save(tmp_path / f"x_{index:03d}.npy", A[index % 2])
    samples = list(read_sample_files(tmp_path, ["input"]))
    assert [s.source.rsplit("/", 1)[1] for s in samples] == ["x_000.npy", "x_001.npy", "x_002.npy"]
    np.testing.assert_array_equal(samples[1].arrays["input"], A[1])
    assert samples[1].arrays["input"].shape == (3,)  # as stored: no batch axis added


def test_npy_samples_for_a_model_of_several_inputs(tmp_path):
    np.save(tmp_path / "s0.npy", A)
    message = error(read_sample_files, tmp_path, ["a", "b"])
    assert "holds .npy files (s0.npy), one unnamed array each, but the model has 2 inputs (a, b)" in message
    assert "np.savez(path, a=..., b=...)" in message


def test_mixed_npy_and_npz_are_refused(tmp_path):
    np.save(tmp_path / "s0.npy", A)
    np.savez(tmp_path / "s1.npz", a=A)
    message = error(read_sample_files, tmp_path, ["a"])
    assert "mixes .npy files (s0.npy) and .npz files (s1.npz): keep one kind of sample file in a folder" in message


def test_unknown_and_missing_keys(tmp_path):
    root = tmp_path / "samples"
    root.mkdir()
    np.savez(root / "s0.npz", a=A, c=B)
    message = error(read_sample_files, root, ["a", "b"])
    assert message.startswith("samples/s0.npz: missing input(s) b; unknown key(s) c; the model's inputs are: a, b")
    assert "np.savez(path, a=..., b=...)" in message


def test_a_bad_sample_file_is_refused_when_read(tmp_path):
    root = tmp_path / "samples"
    root.mkdir()
    np.savez(root / "s0.npz", a=A)
    (root / "s1.npz").write_bytes(b"not a zip")
    samples = read_sample_files(root, ["a"])
    assert next(samples).source == "samples/s0.npz"
    with pytest.raises(
        DataError, match=r"^samples/s1\.npz is no readable \.npz file \(.*\): np\.savez\(path, a=\.\.\.\)$"
    ):
        next(samples)


def test_sample_arrays_must_be_numbers(tmp_path):
    np.savez(tmp_path / "s0.npz", a=np.array(["x"]))
    assert "s0.npz: its array 'a' holds <U1 values; give booleans, integers or floats" in error(
        read_sample_files, tmp_path, ["a"]
    )
    buffer = io.BytesIO()  # an object array in an npz (np.savez of numpy < 1.25 takes no allow_pickle)
    np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "s0.npz", "w") as archive:
        archive.writestr("a.npy", buffer.getvalue())
    message = error(read_sample_files, tmp_path, ["a"])  # never unpickled
    assert "s0.npz: its array 'a' cannot be read (Object arrays cannot be loaded when allow_pickle=False)" in message


def test_a_forged_npy_header_is_refused_before_allocating(tmp_path):
    np.save(tmp_path / "s0.npy", A)
    data = (tmp_path / "s0.npy").read_bytes().replace(b"(2, 3)", b"(9999999, 99999)", 1)
    (tmp_path / "s0.npy").write_bytes(data)
    assert "declares shape (9999999, 99999)" in error(read_sample_files, tmp_path, ["a"])


def test_a_sample_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.npz"
    np.savez(outside, a=A)
    root = tmp_path / "samples"
    root.mkdir()
    (root / "s0.npz").symlink_to(outside)
    message = error(read_sample_files, root, ["a"])
    assert message.startswith("samples/s0.npz is a symbolic link to ")
    assert "outside the data folder: refusing to read it" in message


def test_a_folder_without_sample_files(tmp_path):
    (tmp_path / "README.md").write_text("x")
    np.save(tmp_path / "labels.npy", np.arange(2))
    assert "holds no .npy or .npz sample files" in error(read_sample_files, tmp_path, ["a"])


def test_limit_stops_after_that_many_files(tmp_path):
    for index in range(3):
        np.savez(tmp_path / f"s{index}.npz", a=A)
    (tmp_path / "s2.npz").write_bytes(b"broken, never read")
    assert len(list(read_sample_files(tmp_path, ["a"], limit=2))) == 2


def test_unprintable_names_stay_on_one_line(tmp_path):
    np.savez(tmp_path / "s\n0.npz", a=A)
    np.save(tmp_path / "t.npy", A)
    message = error(read_sample_files, tmp_path, ["a"])
    assert "'s\\n0.npz'" in message


def test_natural_key():
    names = ["s10", "S2", "s1", "s02", "a"]
    assert sorted(names, key=natural_key) == ["a", "s1", "S2", "s02", "s10"]
