"""The evaluator: a base model and candidates, compared on size, compute, speed and quality.

For every model (``models[0]`` is the base):

- **size**: bytes on disk (external data included), deflate-compressed bytes, the bytes the
  float tensors would take as ONNX ``sparse_initializer`` (COO, where smaller), parameters
  and non-zeros in total and per tensor (:mod:`onnxprune.stats`);
- **compute**: MACs of Conv/ConvTranspose/Gemm/MatMul/RNNs at batch 1 and the data's
  sample shape, dense and non-zero-aware (:mod:`onnxprune.compute`);
- **latency**: interleaved onnxruntime runs, candidate/base paired ratios
  (:mod:`onnxprune.latency`);
- **accuracy** (with labels: top-1/top-5 of a classifier output, or a user metric) and
  **fidelity** to the base (top-1 agreement, cosine, relative L2, max abs error per output
  and overall, :mod:`onnxprune.metrics`), on the same batches of the same data for every
  model (:mod:`onnxprune.data`);
- **structure**: what onnxprune's structural pass recorded in the model's ``metadata_props``
  (``onnxprune.structure`` and ``onnxprune.structure.options``, JSON): parameters and MACs
  before and after, per changed channel group its channels before and after, dead channels
  and parameters removed, the blocked groups with their reasons, and the exact check's
  max |Δ| (:func:`onnxprune.provenance.read_structure`).

Each candidate gets plain-language warnings where the numbers are easy to misread.
"""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from onnxprune import runtime
from onnxprune.compressed_size import mode_of
from onnxprune.compute import ComputeStats, count_compute
from onnxprune.data import Dataset, ImageOptions, load_labels, open_data
from onnxprune.envelope import dumps, envelope
from onnxprune.errors import DataError, Message, OnnxPruneError, OptionError, UnsupportedModelError, opt
from onnxprune.graph.model_io import load_model_with_files
from onnxprune.graph.outputs import write_file
from onnxprune.latency import LatencySettings, LatencyStats, measure_latency
from onnxprune.metrics import OutputFidelity, TopK, overall
from onnxprune.passes.base import Progress
from onnxprune.provenance import STRUCTURE_KEY, STRUCTURE_OPTIONS_KEY, read_recipe, read_structure  # noqa: F401 - re-exported
from onnxprune.stats import LayerSize, file_stats, layer_stats, param_stats, sparse_bytes

log = logging.getLogger(__name__)

#: A user metric: ``metric(outputs, labels) -> float`` with ``outputs`` the chosen output of
#: every sample (concatenated) and ``labels`` the labels (or None).
Metric = Callable[[np.ndarray, np.ndarray | None], float]

#: A candidate whose non-zero MACs are this much lower but whose latency ratio is above
#: FLAT_RATIO is called "flat".
FLOPS_DROP = 0.10
FLAT_RATIO = 0.95
#: An int8 candidate whose latency ratio's median is above SLOWER_RATIO (and 10th percentile
#: above 1) is called slower than its base, in so many words.
SLOWER_RATIO = 1.05
#: Element types of quantized weights.
INTEGER_DTYPES = frozenset({"int8", "uint8"})
#: Accuracy drops above this (absolute) are called out.
ACCURACY_DROP = 0.01


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate (every field has a sensible default).

    batch_size: samples per onnxruntime run for accuracy and fidelity.
    samples: use only the first N samples of the data (synthetic: how many to make, default 64).
    output: the classifier output for accuracy (default: the first output).
    input_shapes: shapes for synthetic data and for compute (``{"x": (1, 3, 224, 224)}``).
    batch_axes: the batch axis of inputs it cannot be inferred for (``--batch-axis``,
        :mod:`onnxprune.batch_axes`; None: no batch axis).
    latency: how to time, or None to skip latency.
    latency_batch: samples per timed run (1: per-sample latency).
    compressed: deflate-compressed sizes: "estimate" (or True; from a sample of blocks,
        :mod:`onnxprune.compressed_size`), "exact" (every byte), "off" (or False).
    image_options, input_name: preprocessing for a folder of images, and the input it feeds.
    seed: seeds synthetic data.
    """

    batch_size: int = 32
    samples: int | None = None
    output: str | None = None
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    batch_axes: Mapping[str, int | None] = field(default_factory=dict)
    latency: LatencySettings | None = field(default_factory=LatencySettings)
    latency_batch: int = 1
    compressed: bool | str = True
    image_options: ImageOptions | None = None
    input_name: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "latency_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name.replace('_', ' ')} must be an integer >= 1, got {value!r}")
        try:
            mode_of(self.compressed)
        except ValueError as exc:
            raise OptionError(str(exc)) from None


@dataclass
class ModelReport:
    """Every number measured for one model."""

    name: str
    path: str
    role: str  # "base" | "candidate"
    file_bytes: int
    compressed_bytes: int | None
    parameters: int
    nonzeros: int
    layers: list[LayerSize]
    compute: ComputeStats | None
    compute_error: str | None = None
    latency: LatencyStats | None = None
    accuracy: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    structure: dict[str, Any] | None = None  # the structural pass's provenance (see read_structure)
    recipe: dict[str, Any] | None = None  # how it was made: its recipe (provenance.read_recipe)
    compressed_exact: bool = True  # False: compressed_bytes is a sampled estimate
    compressed_error: float = 0.0  # the estimate's relative standard error

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzeros / self.parameters if self.parameters else 0.0

    @property
    def sparse_bytes(self) -> int:
        return sparse_bytes(self.layers)

    @property
    def dense_weight_bytes(self) -> int:
        return sum(layer.dense_bytes for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        compute = self.compute.to_dict() if self.compute is not None else None
        if compute is None and self.compute_error:
            compute = {"error": self.compute_error}
        return {
            "name": self.name,
            "path": self.path,
            "role": self.role,
            "size": {
                "file_bytes": self.file_bytes,
                "compressed_bytes": self.compressed_bytes,
                "compressed_exact": self.compressed_exact,
                "compressed_relative_error": self.compressed_error,
                "sparse_bytes": self.sparse_bytes,
                "dense_weight_bytes": self.dense_weight_bytes,
            },
            "params": {"parameters": self.parameters, "nonzeros": self.nonzeros, "sparsity": self.sparsity},
            "layers": [
                {
                    "name": layer.name,
                    "scope": layer.scope,
                    "shape": list(layer.shape),
                    "dtype": layer.dtype,
                    "parameters": layer.parameters,
                    "nonzeros": layer.nonzeros,
                    "sparsity": 1 - layer.nonzeros / layer.parameters if layer.parameters else 0.0,
                    "dense_bytes": layer.dense_bytes,
                    "coo_bytes": layer.coo_bytes,
                }
                for layer in self.layers
            ],
            "compute": compute,
            "latency": self.latency.to_dict() if self.latency is not None else None,
            "accuracy": self.accuracy,
            "fidelity": self.fidelity,
            "warnings": list(self.warnings),
            "structure": self.structure,
            "recipe": self.recipe,
        }


@dataclass
class EvalResult:
    """The evaluation of a base model and its candidates; ``to_dict()`` is the JSON report."""

    models: list[ModelReport]
    data: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any]
    created: str
    version: str

    @property
    def base(self) -> ModelReport:
        return self.models[0]

    @property
    def candidates(self) -> list[ModelReport]:
        return self.models[1:]

    def to_dict(self) -> dict[str, Any]:
        """Every number, in the JSON envelope of the ``eval`` command (:mod:`onnxprune.envelope`)."""
        return envelope(
            "eval",
            {
                "created": self.created,
                "environment": self.environment,
                "data": self.data,
                "settings": self.settings,
                "models": [m.to_dict() for m in self.models],
            },
        )

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON, atomically (a temporary file, then rename)."""
        return write_file(dumps(self.to_dict()), path, what="JSON", example="eval.json")


ModelPath = str | os.PathLike[str]


def evaluate(
    base: ModelPath,
    candidates: Sequence[ModelPath] = (),
    *,
    data: Any = None,
    labels: str | os.PathLike[str] | np.ndarray | Sequence[int] | None = None,
    options: EvalOptions | None = None,
    metric: Metric | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Evaluate ``base`` and each of ``candidates`` (see the module docstring).

    data: a ``.npz`` (keyed by input name), a folder of images, an onnxruntime
        ``CalibrationDataReader``, an iterable of feed dicts, or None for synthetic data
        (fidelity only). labels: a ``.npy``/``.npz``/``.txt`` file or an array, one class
        index per sample (image class folders carry their own). metric: an extra
        ``metric(outputs, labels) -> float`` on the chosen output, per model. progress:
        ``progress(done, total, stage)`` (:data:`onnxprune.passes.base.Progress`), stage
        ``"data"``, ``"size"`` or ``"latency"``.
    """
    from onnxprune import __version__

    options = options or EvalOptions()
    paths = [Path(base), *(Path(c) for c in candidates)]
    sessions = [_session(p) for p in paths]
    _check_same_interface(paths, sessions)
    output_names = [o.name for o in sessions[0].get_outputs()]
    chosen, dataset, label_array = _inputs(paths[0], sessions[0], data, labels, options)

    quality = _quality(sessions, dataset, label_array, chosen, output_names, options, metric, progress)
    sample_shapes = quality.pop("sample_shapes")
    first_batch = quality.pop("first_batch")
    feed_shapes = dataset.layout.feed_shapes(sample_shapes)  # one sample per run

    reports = []
    for index, path in enumerate(paths):
        reports.append(_static_report(path, "base" if index == 0 else "candidate", feed_shapes, options))
        if progress is not None:
            progress(index + 1, len(paths), "size")
    del sessions
    gc.collect()

    for index, report in enumerate(reports):
        report.accuracy = quality["accuracy"][index]
        report.fidelity = quality["fidelity"][index]

    if options.latency is not None:
        feeds = dataset.layout.take(first_batch, options.latency_batch)
        total = len(paths) * options.latency.least_repeats

        def step(n: int, _done: list[int] = [0]) -> None:  # noqa: B006 - a counter local to this call
            _done[0] += n
            if progress is not None:
                progress(min(_done[0], total), total, "latency")

        stats = measure_latency([str(p) for p in paths], feeds, settings=options.latency, progress=step)
        for report, latency in zip(reports, stats, strict=True):
            report.latency = latency

    for report in reports[1:]:
        report.warnings = [*report.warnings, *candidate_warnings(reports[0], report, dataset.synthetic)]
    result = EvalResult(
        models=reports,
        data={
            "kind": dataset.kind,
            "source": dataset.source,
            "samples": quality["samples"],
            "batch_size": options.batch_size,
            "synthetic": dataset.synthetic,
            "labels": _label_source(labels, dataset),
            "output": chosen,
        },
        settings={
            "warmup": options.latency.warmup if options.latency else None,
            "repeats": options.latency.repeats if options.latency else None,
            "threads": options.latency.threads if options.latency else None,
            "latency_batch": options.latency_batch if options.latency else None,
            "input_shapes": {name: list(shape) for name, shape in feed_shapes.items()},
        },
        environment={
            **runtime.environment(),
            "threads": options.latency.threads if options.latency else None,
            "providers_used": list(options.latency.providers or ("CPUExecutionProvider",))
            if options.latency
            else ["CPUExecutionProvider"],
        },
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        version=__version__,
    )
    log.info("evaluated %d model(s) on %s", len(reports), dataset.source)
    return result


def check_evaluation(
    base: ModelPath,
    *,
    data: Any = None,
    labels: str | os.PathLike[str] | np.ndarray | Sequence[int] | None = None,
    options: EvalOptions | None = None,
) -> Dataset:
    """Fail now, as :func:`evaluate` of ``base`` would, on evaluation inputs that cannot work:
    the output chosen, the data (opened and checked against ``base``'s inputs) and the labels.
    A model with the same inputs and outputs (what pruning makes) fails the same way, so this
    runs before pruning, when nothing is written yet. Returns the data, opened (a pruned
    output is validated on it)."""
    path = Path(base)
    session = _session(path)
    _, dataset, _ = _inputs(path, session, data, labels, options or EvalOptions())
    del session
    gc.collect()
    return dataset


def _inputs(
    path: Path, session: ort.InferenceSession, data: Any, labels: Any, options: EvalOptions
) -> tuple[str, Dataset, np.ndarray | None]:
    """The output to score, the data and the labels of an evaluation of the model ``session``
    runs (checked against its inputs and outputs)."""
    output_names = [o.name for o in session.get_outputs()]
    if not output_names:
        raise UnsupportedModelError(f"'{path}' has no graph outputs: there is nothing to evaluate")
    if options.output is not None and options.output not in output_names:
        raise OptionError(
            f"{opt('output')} '{options.output}' names no output of {path.name}; its outputs are: {', '.join(output_names)}"
        )
    dataset = open_data(
        data,
        specs=runtime.input_specs(session),
        image_options=options.image_options,
        input_name=options.input_name,
        samples=options.samples,
        seed=options.seed,
        shapes=options.input_shapes or None,
        batch_axes=options.batch_axes or None,
    )
    label_array = _labels(labels, dataset, first=options.samples)
    if label_array is not None and dataset.synthetic:
        raise OptionError(f"labels were given with synthetic data: give the data they label with {opt('data')}")
    return options.output or output_names[0], dataset, label_array


# --------------------------------------------------------------------------- models


def _session(path: Path) -> ort.InferenceSession:
    if not path.is_file():
        raise OptionError(f"model '{path}' does not exist or is not a file")
    try:
        return runtime.session(path, optimize=True)
    except OnnxPruneError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"onnxruntime cannot load '{path}' ({first}); check that it is a valid model"
        ) from exc


def _check_same_interface(paths: Sequence[Path], sessions: Sequence[ort.InferenceSession]) -> None:
    """Candidates must take the base's inputs and give its outputs (names and types)."""

    def interface(sess: ort.InferenceSession) -> tuple[list[str], list[str]]:
        inputs = [f"{i.name}: {i.type}{list(i.shape)}" for i in sess.get_inputs()]
        return inputs, [o.name for o in sess.get_outputs()]

    base_in, base_out = interface(sessions[0])
    for path, sess in zip(paths[1:], sessions[1:], strict=True):
        cand_in, cand_out = interface(sess)
        if cand_in != base_in:
            raise DataError(
                f"'{path.name}' takes inputs {', '.join(cand_in)} but the base '{paths[0].name}' takes "
                f"{', '.join(base_in)}: candidates must take the base's inputs"
            )
        if cand_out != base_out:
            raise DataError(
                f"'{path.name}' gives outputs {cand_out} but the base gives {base_out}: candidates must have "
                "the base's outputs"
            )


def _static_report(
    path: Path, role: str, feed_shapes: Mapping[str, tuple[int, ...]], options: EvalOptions
) -> ModelReport:
    """Size, parameters and compute of one model (loaded once, then freed)."""
    model, files = load_model_with_files(path)
    params = param_stats(model)
    layers = layer_stats(model)
    compute: ComputeStats | None = None
    error = None
    shapes = dict(feed_shapes)
    for name, shape in options.input_shapes.items():
        shapes.setdefault(name, tuple(shape))
    try:
        compute = count_compute(model, input_shapes=shapes)
    except OnnxPruneError as exc:
        error = str(exc)
        log.warning("compute of %s not counted: %s", path.name, exc)
    structure, problem = read_structure(model)
    recipe = read_recipe(model)
    if problem:  # a warning of the report (printed by the CLI, shown in the HTML): logged once more only with -v
        log.info("%s: %s", path.name, problem)
    del model
    stats = file_stats(files, compressed=options.compressed)
    return ModelReport(
        name=path.name,
        path=str(path),
        role=role,
        file_bytes=stats.bytes,
        compressed_bytes=stats.compressed,
        compressed_exact=stats.compressed_exact,
        compressed_error=stats.compressed_error,
        parameters=params.parameters,
        nonzeros=params.nonzeros,
        layers=layers,
        compute=compute,
        compute_error=error,
        warnings=[problem] if problem else [],
        structure=structure,
        recipe=recipe,
    )


# --------------------------------------------------------------------------- data


def _labels(labels: Any, dataset: Dataset, *, first: int | None = None) -> np.ndarray | None:
    """The labels of ``dataset``; with ``first`` (only the first samples are used), a file
    with a label for every sample of the full data gives the first ``first`` of them."""
    count = dataset.num_samples()
    if labels is None:
        return dataset.labels
    if isinstance(labels, (str, os.PathLike)):
        if first is not None and count is not None and count == first:
            loaded = load_labels(labels, num_samples=None, class_names=dataset.class_names)
            if len(loaded) > count:
                return loaded[:count]
        return load_labels(labels, num_samples=count, class_names=dataset.class_names)
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] > 1:
        array = array.argmax(axis=1)
    array = array.reshape(-1)
    if array.dtype.kind not in "iu":
        raise DataError(f"labels must be integer class indices, got {array.dtype}")
    if count is not None and array.size != count:
        raise DataError(f"the labels have {array.size} entries but the data has {count} samples")
    return array.astype(np.int64)


def _label_source(labels: Any, dataset: Dataset) -> str | None:
    if isinstance(labels, (str, os.PathLike)):
        return str(labels)
    if labels is not None:
        return "in-memory labels"
    if dataset.labels is not None:
        return "class folders"
    return None


def _quality(
    sessions: Sequence[ort.InferenceSession],
    dataset: Dataset,
    labels: np.ndarray | None,
    chosen: str,
    output_names: Sequence[str],
    options: EvalOptions,
    metric: Metric | None,
    progress: Progress | None,
) -> dict[str, Any]:
    """Run every model on the same batches; accuracy per model, fidelity per candidate."""
    n_models = len(sessions)
    topk = [TopK(f"output '{chosen}'") for _ in range(n_models)]
    fidelity = [{name: OutputFidelity() for name in output_names} for _ in range(n_models)]
    kept: list[list[np.ndarray]] = [[] for _ in range(n_models)]
    chosen_index = list(output_names).index(chosen)
    total = dataset.num_samples()
    done = 0
    first_batch: dict[str, np.ndarray] | None = None
    for feeds in dataset.batches(options.batch_size):
        if first_batch is None:
            first_batch = {name: np.array(a) for name, a in feeds.items()}
        count = dataset.count(feeds)
        outputs = [_run(sess, feeds, index) for index, sess in enumerate(sessions)]
        for index, outs in enumerate(outputs):
            if labels is not None:
                batch_labels = labels[done : done + count]
                if batch_labels.size != count:
                    raise DataError(f"there are {labels.size} labels but the data has more samples than that")
                try:
                    topk[index].update(outs[chosen_index], batch_labels)
                except ValueError as exc:
                    raise DataError(
                        f"cannot score accuracy: {exc}; choose a classifier output with {opt('output')}"
                    ) from exc
            if metric is not None:
                kept[index].append(np.asarray(outs[chosen_index]))
            if index:
                for name, ref, cand in zip(output_names, outputs[0], outs, strict=True):
                    try:
                        fidelity[index][name].update(np.asarray(ref), np.asarray(cand))
                    except ValueError as exc:
                        raise DataError(f"output '{name}' of candidate {index}: {exc}") from exc
        done += count
        if progress is not None:
            progress(done, total if total is not None else done, "data")
    if first_batch is None:
        raise DataError(f"{dataset.source} has no samples")
    if labels is not None and labels.size != done:
        raise DataError(f"the labels have {labels.size} entries but the data has {done} samples")

    accuracy: list[dict[str, Any] | None] = []
    for index in range(n_models):
        if labels is None and metric is None:
            accuracy.append(None)
            continue
        entry: dict[str, Any] = {"top1": None, "top5": None, "samples": done, "metric": None}
        if labels is not None:
            entry["top1"], entry["top5"] = topk[index].top1, topk[index].top5
        if metric is not None:
            value = metric(np.concatenate(kept[index]), labels)
            entry["metric"] = {"name": getattr(metric, "__name__", "metric"), "value": float(value)}
        accuracy.append(entry)
    fidelities: list[dict[str, Any] | None] = [None]
    for index in range(1, n_models):
        per_output = fidelity[index]
        fidelities.append(
            {
                "outputs": {name: acc.result().to_dict() for name, acc in per_output.items()},
                "overall": overall(per_output).to_dict(),
            }
        )
    sample_shapes = dataset.layout.item_shapes(first_batch)
    return {
        "accuracy": accuracy,
        "fidelity": fidelities,
        "samples": done,
        "sample_shapes": sample_shapes,
        "first_batch": first_batch,
    }


def _run(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray], index: int) -> list[np.ndarray]:
    try:
        return sess.run(None, dict(feeds))
    except Exception as exc:
        which = "the base model" if index == 0 else f"candidate {index}"
        raise DataError(
            f"{which} fails on the data ({runtime.ort_message(exc)}); check the data's shapes and dtypes"
        ) from exc


# --------------------------------------------------------------------------- warnings


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _integer_weights(report: ModelReport) -> int:
    """Integer tensors counted as weights (the int8/uint8 copies a quantizer stores)."""
    return sum(1 for layer in report.layers if layer.dtype in INTEGER_DTYPES)


def candidate_warnings(base: ModelReport, cand: ModelReport, synthetic: bool) -> list[str]:
    """Plain-language notes on what the numbers of ``cand`` do and do not mean."""
    notes: list[str] = []
    ratio_stats = cand.latency.ratio if cand.latency is not None else None
    if (
        _integer_weights(cand) > _integer_weights(base)
        and ratio_stats is not None
        and ratio_stats.median > SLOWER_RATIO
        and ratio_stats.p10 > 1.0
    ):
        notes.append(
            f"int8 made it slower, not faster: this int8 model takes {ratio_stats.median:.2f}x the time of the "
            f"{'float ' if not _integer_weights(base) else ''}base (median of paired runs, 10th-90th percentile "
            f"{ratio_stats.p10:.2f}-{ratio_stats.p90:.2f}x): at this batch size and thread count the quantize and "
            "dequantize steps cost more than the integer kernels save; for speed ship the float model, or measure "
            "at the batch size you will run (" + opt("latency_batch") + ")"
        )
    same_shapes = [(layer.name, layer.shape) for layer in base.layers] == [
        (layer.name, layer.shape) for layer in cand.layers
    ]
    if same_shapes and cand.nonzeros < base.nonzeros:
        notes.append(
            f"onnxruntime will not run this faster: its {_pct(cand.sparsity)} zeros sit inside dense tensors (unstructured "
            "or N:M without sparse kernels) and every tensor "
            "keeps its dense shape; removing whole channels is what makes a model faster on every runtime: "
            "onnxprune prune IN OUT --structured --sparsity 0.3 (or --dead-channels where whole channels are "
            "already zero)"
        )
    if same_shapes and cand.file_bytes >= base.file_bytes * 0.99 and cand.nonzeros < base.nonzeros:
        smaller = (
            cand.compressed_bytes is not None
            and base.compressed_bytes
            and cand.compressed_bytes < base.compressed_bytes
        )
        notes.append(
            "the .onnx file is as large as the base's: zeros are stored densely"
            + (
                f"; compressed (as shipped) it is {_pct(1 - cand.compressed_bytes / base.compressed_bytes)} smaller"
                if smaller
                else ""
            )
        )
    if base.compute is not None and cand.compute is not None and base.compute.nonzero_macs:
        drop = 1 - cand.compute.nonzero_macs / base.compute.nonzero_macs
        ratio = cand.latency.ratio.median if cand.latency is not None and cand.latency.ratio is not None else None
        dense_drop = 1 - cand.compute.macs / base.compute.macs if base.compute.macs else 0.0
        if dense_drop >= FLOPS_DROP and ratio is not None and ratio > FLAT_RATIO:
            notes.append(
                f"dense MACs are {_pct(dense_drop)} lower but latency is flat (candidate/base {ratio:.2f}): the time "
                "goes to what channel removal does not shrink (per-node overhead, memory traffic, other ops); try a "
                "larger batch (" + opt("latency_batch") + ") or a larger model"
            )
        elif drop >= FLOPS_DROP and ratio is not None and ratio > FLAT_RATIO:
            notes.append(
                f"non-zero MACs are {_pct(drop)} lower but latency is flat (candidate/base {ratio:.2f}): dense kernels "
                "do the same work whatever the zeros"
            )
    if (
        base.accuracy
        and cand.accuracy
        and base.accuracy.get("top1") is not None
        and cand.accuracy.get("top1") is not None
    ):
        drop = base.accuracy["top1"] - cand.accuracy["top1"]
        if drop > ACCURACY_DROP:
            notes.append(
                f"top-1 accuracy drops by {100 * drop:.1f} points ({_pct(base.accuracy['top1'])} -> {_pct(cand.accuracy['top1'])})"
            )
    if cand.fidelity:
        nonfinite = cand.fidelity["overall"].get("nonfinite") or 0
        if nonfinite:
            notes.append(f"the candidate gives {nonfinite} NaN or infinite output values where the base does not")
    if synthetic:
        notes.append(
            f"measured on synthetic data: fidelity only; accuracy needs real data ({opt('data')}, {opt('labels')})"
        )
    return [Message(note) for note in notes]  # options named as fields; the CLI spells them as flags
