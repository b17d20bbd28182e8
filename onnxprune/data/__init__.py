"""Evaluation and calibration data: samples for a model's inputs, in batches, checked against the model.

::

    from onnxprune.data import open_data, load_labels
    from onnxprune.runtime import input_specs, session

    specs = input_specs(session("model.onnx"))
    data = open_data("test.npz", specs=specs)          # or a folder of images, a reader, None
    labels = load_labels("test_labels.npy", num_samples=data.num_samples())
    for feeds in data.batches(32):                       # same batches, same order, every time
        ...

Modules: :mod:`.layout` (the data contract: what files and readers may hold per input, and
each input's batch axis, :mod:`onnxprune.batch_axes`), :mod:`.checks` (does a feed fit the
model), :mod:`.dataset` (the ``Dataset`` and its batching rules), :mod:`.sources`
(npz/npy/in-memory arrays, readers and iterables, synthetic data, ``open_data``),
:mod:`.folders` (ONNX test-data folders, folders of per-sample files), :mod:`.images` (image
folders and their preprocessing), :mod:`.labels` (class labels).
"""

from __future__ import annotations

from onnxprune.data.checks import batch_size_for, check_feeds, fixed_batch_size
from onnxprune.data.dataset import Dataset
from onnxprune.data.folders import folder_kind, read_sample_files, read_test_data
from onnxprune.data.images import IMAGE_EXTENSIONS, ImageFolderDataset, ImageOptions, find_images, parse_image_options
from onnxprune.data.labels import load_labels
from onnxprune.data.layout import FeedLayout
from onnxprune.data.natural import DataFreeDataset, data_free
from onnxprune.data.sources import SYNTHETIC_SAMPLES, ArrayDataset, StreamDataset, SyntheticDataset, open_data

__all__ = [
    "IMAGE_EXTENSIONS",
    "SYNTHETIC_SAMPLES",
    "ArrayDataset",
    "DataFreeDataset",
    "Dataset",
    "FeedLayout",
    "ImageFolderDataset",
    "ImageOptions",
    "StreamDataset",
    "SyntheticDataset",
    "batch_size_for",
    "check_feeds",
    "data_free",
    "find_images",
    "fixed_batch_size",
    "folder_kind",
    "load_labels",
    "open_data",
    "parse_image_options",
    "read_sample_files",
    "read_test_data",
]
