"""Data-free calibration inputs: procedural samples that look like what a model was trained on.

Without calibration data, layer-wise calibration still needs inputs whose statistics resemble
the real ones; Gaussian white noise is a poor stand-in (no spatial correlation, no edges,
no flat regions). Following Lazarevich et al. 2021, *Post-training deep neural network pruning
via layer-wise calibration* (data-free calibration on synthetic images), every model input gets
samples from a generator chosen by what the input looks like and what reads it:

- **Images** (float, rank 4, ``[N, C, H, W]`` with ``C`` in {1, 3, 4}, else NHWC with the last
  dim in {1, 3, 4}): a *dead leaves* model painted over a smooth colour gradient, plus 1/f
  noise. Up to 64 leaves (ellipses and rotated rectangles, aspect ratio log-uniform in
  [0.3, 3], flat random colours) fall in random order; later leaves occlude earlier ones. Radii follow the scale-invariant power law
  ``p(r) ∝ r^-3`` on ``[r_min, r_max]`` (sampled by inverting the CDF,
  ``r = (r_min^-2 + u (r_max^-2 - r_min^-2))^(-1/2)``), which gives the occlusion statistics
  of natural images. The gradient is a linear ramp between two random colours along a random
  direction; the noise has an amplitude spectrum ``|F(f)| ∝ 1/|f|`` (power ``1/f^2``, as in
  natural images), one texture per image shared by its channels, amplitude in [0.02, 0.12]
  with a gain in [0.8, 1.2] per channel. Colours are a luminance plus small
  per-channel offsets, so channels are correlated as in photographs. **Values are in [0, 1]**:
  the model's expected scaling (ImageNet mean/std, [-1, 1], [0, 255]) is unknown here, so the
  caller must normalise if the model expects something else. A uint8 image input gets the
  same images in [0, 255].
- **Token ids** (integer inputs that reach input 1 of a ``Gather`` whose data input 0 is a
  stored tensor, possibly through Cast/Unsqueeze/Squeeze/Reshape/Flatten/Identity): uniform
  random ids in ``[0, vocab)``, ``vocab`` = the table's size along the Gather axis (the
  smallest such table if several). By name, before that: inputs whose name contains "mask"
  (and bool inputs) are all 1/True, "type" (token_type_ids) 0, "position" ``0, 1, 2, ...``
  along the last axis (capped at the last row of its table); any other integer input is 0.
- **Other float inputs** (signals ``[N, 40]``, features ``[N, 64]``): if the graph's first
  BatchNormalization reads the input directly or through one transparent op (Identity, Cast,
  Reshape, Flatten, Unsqueeze, Squeeze, Transpose), samples are Gaussian with its running
  mean and variance per channel, which are exactly the statistics of the real data at that
  point. Otherwise each series along the last axis is a smooth random process: 4 sinusoids
  with log-uniform frequencies in [0.5/L, 0.25] cycles per step and random phases, plus 2
  Gaussian bumps, plus 5 % white noise, standardised to mean 0 and variance 1, then
  ``x = sqrt(1 - o^2) s + o z`` with a random level ``z ~ N(0, 1)`` per series and
  ``o = OFFSET = 0.7``, so every value has mean 0 and variance 1. Real signals are smooth and
  correlated in time, so this exercises the model's filters closer to real data than white
  noise does; unit variance matches standardised features. The random level is there because
  the real mean is unknown: zero-mean inputs would leave the constant direction out of a
  layer's ``XᵀX``, and a reconstruction (SparseGPT) would then not preserve the layer's
  response to an offset (on the 8x8-digits MLP fed in [0, 1], SparseGPT at 50 % keeps 97 %
  accuracy with it and 60 % without).

Shapes: fixed dims are kept; a dynamic non-batch dim takes its size from ``shapes``
(``--input-shape``; a size given for one input also fills the same named dim of the others),
else integer and bool inputs (sequences of ids) default to :data:`DEFAULT_SEQUENCE` (128),
and a float input is a DataError asking for ``--input-shape``.

Reproducibility: block ``k`` of :data:`BLOCK` samples of input ``i`` is drawn from
``default_rng([seed, k, i])``, so samples do not depend on the batch size asked for. Blocks
are made when first read and kept in memory (``samples`` x the input size, like an ``.npz``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.batch_axes import UNDECIDED
from onnxprune.data.checks import check_specs, format_dims
from onnxprune.data.dataset import Dataset, Feeds, read_only, regroup
from onnxprune.data.layout import FeedLayout
from onnxprune.errors import DataError, OptionError, opt
from onnxprune.graph.index import Scope
from onnxprune.ops import TransformContext, spec_of
from onnxprune.runtime import MAX_INPUT_ELEMENTS, InputSpec, check_given_shapes, is_dynamic, shape_hint

log = logging.getLogger(__name__)

#: Default number of data-free samples.
DATA_FREE_SAMPLES = 128
#: Samples are drawn in blocks of this many, each block from its own seeded generator.
BLOCK = 64
#: Length given to a dynamic dim of an integer (token-like) input when no shape is given.
DEFAULT_SEQUENCE = 128
#: Channel counts that make a rank-4 float input an image.
IMAGE_CHANNELS = (1, 3, 4)
#: Leaves per image (each image paints a random number of them, up to this).
LEAVES = 64
#: Standard deviation of the random level of each smooth series; the rest of its unit variance is the signal.
OFFSET = 0.7


@dataclass(frozen=True, eq=False)
class InputPlan:
    """How one input's samples are made.

    kind: "images" (layout "NCHW" or "NHWC"; ``fill`` 255 for uint8 images scaled to [0, 255]), "token-ids" (``vocab``), "positions",
        "constant" (``fill``), "batchnorm" (``mean``/``std`` of the sample shape) or "smooth".
    shape: the per-sample shape (dims after the batch dim).
    """

    name: str
    dtype: type
    kind: str
    shape: tuple[int, ...]
    layout: str = ""
    vocab: int = 0
    fill: int = 0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def describe(self) -> str:
        dims = "x".join(map(str, self.shape)) or "scalar"
        if self.kind == "images":
            return f"procedural images {self.layout} {dims} in [0, {self.fill or 1}]"
        if self.kind == "token-ids":
            return f"token ids uniform in [0, {self.vocab}) {dims}"
        if self.kind == "positions":
            return f"position ids 0..{self.shape[-1] - 1 if self.shape else 0}"
        if self.kind == "constant":
            return f"constant {self.fill} {dims}"
        if self.kind == "batchnorm":
            return f"Gaussian with the first BatchNormalization's running mean/var {dims}"
        return f"smooth random signals (unit variance) {dims}"


class DataFreeDataset(Dataset):
    """Reproducible procedural samples for every input of a model (see module docstring).

    ``plans`` maps each input name to its :class:`InputPlan`; ``generators`` to a one-line
    description of it, for reports.
    """

    kind = "data-free"

    def __init__(
        self,
        *,
        specs: Sequence[InputSpec],
        plans: Sequence[InputPlan],
        samples: int,
        seed: int,
        batch_axes: Mapping[str, int | None] | None = None,
    ) -> None:
        kinds = sorted({_SOURCE_WORDS[plan.kind] for plan in plans}, key=list(_SOURCE_WORDS.values()).index)
        super().__init__(specs=specs, source=f"data-free ({', '.join(kinds)}; seed {seed})", batch_axes=batch_axes)
        self.synthetic = True
        self.plans: dict[str, InputPlan] = {plan.name: plan for plan in plans}
        self.generators: dict[str, str] = {plan.name: plan.describe() for plan in plans}
        self._samples = samples
        self._seed = seed
        self._cache: list[Feeds] = []

    def num_samples(self) -> int:
        return self._samples

    def _blocks(self) -> Iterator[Feeds]:
        """Blocks of samples, made on first use and kept (a calibration pass reads them many times)."""
        for block in range(math.ceil(self._samples / BLOCK)):
            if block == len(self._cache):
                count = min(BLOCK, self._samples - block * BLOCK)
                feeds: Feeds = {}
                for index, spec in enumerate(self.specs):
                    rng = np.random.default_rng([self._seed, block, index])
                    feeds[spec.name] = _generate(self.plans[spec.name], rng, count)
                self._cache.append(read_only(feeds))
            yield self._cache[block]

    def _batch_chunks(self, batch_size: int) -> Iterator[Feeds]:
        return regroup(self._blocks(), batch_size)


_SOURCE_WORDS = {
    "images": "procedural images",
    "token-ids": "token ids",
    "positions": "position ids",
    "constant": "constant ids/masks",
    "batchnorm": "BatchNorm-matched signals",
    "smooth": "smooth random signals",
}


def data_free(
    model: onnx.ModelProto,
    specs: Sequence[InputSpec],
    *,
    samples: int = DATA_FREE_SAMPLES,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    batch_axes: Mapping[str, int | None] | None = None,
) -> DataFreeDataset:
    """Data-free calibration samples for ``model`` whose inputs are ``specs`` (see module docstring).

    samples: how many samples (default 128). seed: seeds every generator.
    shapes: full input shapes for dynamic dims (``--input-shape``; the batch dim is ignored).

    Raises OptionError for a bad count, seed or shape (or more values in all than
    :data:`~onnxprune.runtime.MAX_INPUT_ELEMENTS`), DataError for a dynamic float dim without a shape.
    """
    specs = tuple(specs)
    check_specs(specs)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise OptionError(f"the number of data-free samples must be an integer >= 1, got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"seed must be an integer >= 0, got {seed!r}")
    sample_shapes = resolve_sample_shapes(specs, shapes or {}, batch_axes)
    _check_size(sample_shapes, int(samples))
    scope = Scope.build(model.graph)
    plans = [_plan(scope, spec, sample_shapes[spec.name]) for spec in specs]
    for plan in plans:
        log.info("data-free input '%s': %s", plan.name, plan.describe())
    return DataFreeDataset(specs=specs, plans=plans, samples=int(samples), seed=int(seed), batch_axes=batch_axes)


# --------------------------------------------------------------------------- shapes


def _check_size(sample_shapes: Mapping[str, tuple[int, ...]], samples: int) -> None:
    """The samples are kept in memory (module docstring): refuse more values than
    :data:`~onnxprune.runtime.MAX_INPUT_ELEMENTS` in all, before any is made."""
    per_sample = sum(math.prod(shape) for shape in sample_shapes.values())
    if samples * per_sample > MAX_INPUT_ELEMENTS:
        raise OptionError(
            f"{samples} data-free samples of {per_sample:,} values each ({samples * per_sample:,} in all) are more "
            f"than the {MAX_INPUT_ELEMENTS:,} (2^30) onnxprune keeps in memory: give fewer {opt('samples')} or "
            f"smaller {opt('input_shapes')}"
        )


def _is_integer(spec: InputSpec) -> bool:
    return spec.dtype is np.bool_ or np.issubdtype(spec.dtype, np.integer)


def resolve_sample_shapes(
    specs: Sequence[InputSpec],
    shapes: Mapping[str, Sequence[int]],
    batch_axes: Mapping[str, int | None] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of each input (its dims without the batch axis,
    :mod:`onnxprune.batch_axes`): fixed dims, ``shapes``, named dims shared with a given
    shape, else :data:`DEFAULT_SEQUENCE` for integer inputs (see module docstring)."""
    layout = FeedLayout.of(specs, batch_axes)
    axes = {lay.name: lay.axis if lay.batched else None for lay in layout.inputs}
    for lay in layout.inputs:
        if lay.axis == UNDECIDED:
            raise lay.undecided_error()
    declared = {spec.name: spec.dims for spec in specs}
    checked = check_given_shapes(declared, shapes, skip_batch=True, batch_axes=axes)

    named: dict[str, int] = {}
    given: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.name not in checked:
            continue
        full = checked[spec.name]
        given[spec.name] = layout[spec.name].item_of(full)
        for dim, size in zip(layout[spec.name].item_dims, given[spec.name], strict=True):
            if isinstance(dim, str) and dim:
                named.setdefault(dim, size)
    out: dict[str, tuple[int, ...]] = {}
    # integer inputs first: their default sequence length names dims that float inputs may share
    for spec in sorted(specs, key=lambda s: not _is_integer(s)):
        if spec.name in given:
            out[spec.name] = given[spec.name]
            continue
        dims = []
        for dim in layout[spec.name].item_dims:
            if not is_dynamic(dim):
                dims.append(int(dim))
            elif isinstance(dim, str) and dim in named:
                dims.append(named[dim])
            elif _is_integer(spec):
                dims.append(DEFAULT_SEQUENCE)
                if isinstance(dim, str) and dim:
                    named[dim] = DEFAULT_SEQUENCE
            else:
                example = shape_hint(spec.dims, axes[spec.name])
                raise DataError(
                    f"data-free samples for input '{spec.name}' {format_dims(spec.dims)} need a size for its dynamic "
                    f"dimension {dim}: give {opt('input_shapes')} {spec.name}:{example} (N a number)"
                )
        out[spec.name] = tuple(dims)
    return {spec.name: out[spec.name] for spec in specs}


# --------------------------------------------------------------------------- what reads an input


def _stored(scope: Scope, name: str) -> onnx.TensorProto | None:
    """The initializer or Constant tensor ``name`` visible from ``scope``, also behind a Cast."""
    owner = scope.resolve(name)
    if owner is None:
        return None
    tensor = owner.stored_tensor(name)
    if tensor is not None:
        return tensor
    node = owner.producers.get(name)
    if node is not None and spec_of(node).converts_values(node) and node.input:
        return _stored(owner, node.input[0])
    return None


def embedding_vocab(scope: Scope, name: str) -> int | None:
    """The smallest table size of the embedding Gathers ``name`` indexes (through id-preserving ops)."""
    vocabs = []
    frontier, seen = [(scope, name)], set()
    while frontier:
        where, tensor = frontier.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        owner = where.resolve(tensor) or where
        for use in owner.uses.get(tensor, []):
            node = use.node
            spec = spec_of(node)
            lookup = spec.embedding_lookup(node)
            if lookup is not None and use.index == lookup[1]:
                table_input, _, axis = lookup
                table = _stored(use.scope, node.input[table_input])
                if table is not None and table.dims:
                    vocabs.append(int(table.dims[axis]))
            elif spec.keeps_order(node) and use.index == 0 and node.output and node.output[0]:
                frontier.append((use.scope, node.output[0]))
    return min(vocabs) if vocabs else None


def _has_statistics(node: onnx.NodeProto) -> bool:
    return spec_of(node).running_statistics(node) is not None


def _passes_channels(node: onnx.NodeProto) -> bool:
    """``node`` keeps its input's elements in order, or only permutes its axes (Transpose)."""
    spec = spec_of(node)
    return spec.keeps_order(node) or (spec.keeps_values and not spec.keeps_layout)


def _first_batchnorm(scope: Scope, name: str) -> tuple[onnx.NodeProto, onnx.NodeProto | None] | None:
    """The first op with running statistics (graph order: a BatchNormalization) reading ``name``
    directly or through one transparent op."""
    order = {id(node): index for index, node in enumerate(scope.graph.node)}
    found = []
    for use in scope.uses.get(name, []):
        if use.scope is not scope or use.index != 0:
            continue
        if _has_statistics(use.node):
            found.append((use.node, None))
        elif _passes_channels(use.node) and use.node.output:
            for inner in scope.uses.get(use.node.output[0], []):
                if inner.scope is scope and inner.index == 0 and _has_statistics(inner.node):
                    found.append((inner.node, use.node))
    if not found:
        return None
    return min(found, key=lambda pair: order.get(id(pair[0]), len(order)))


def _channel_axis(scope: Scope, via: onnx.NodeProto | None, shape: tuple[int, ...]) -> int | str | None:
    """Where the channel axis 1 of what the BN reads lies in the input's per-sample ``shape``:
    a per-sample axis, "one" (a new axis or the batch axis: one channel for everything), "flat"
    (the channels of the sample in C order: ``via`` keeps the order of the elements but merges
    or splits axes), or None (not known). The op table says how ``via`` moves axes
    (:meth:`~onnxprune.ops.spec.OpSpec.transform`: output axis -> input axis)."""
    if via is None:
        return 0
    spec = spec_of(via)
    if spec.keeps_layout:
        return 0
    moved = spec.transform(TransformContext(via, 0, (None, *shape), scope.const_value))
    if moved is not None and len(moved.axis_map) > 1:
        source = moved.axis_map[1]
        if source == 0 or (source is None and moved.shape[1] == 1):
            return "one"
        if source is not None:
            return source - 1
    return "flat" if spec.keeps_order(via) else None


def _channel_stats(
    scope: Scope, via: onnx.NodeProto | None, shape: tuple[int, ...], mean: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-element mean and std over the input's per-sample ``shape`` for a BN with these stats."""
    channels = mean.size
    std = np.sqrt(np.maximum(var, 0.0))
    axis = _channel_axis(scope, via, shape)
    if axis is None:
        return None
    if axis == "one":
        if channels != 1:
            return None
        return np.full(shape, mean[0], np.float64), np.full(shape, std[0], np.float64)
    if axis == "flat":
        total = int(np.prod(shape, dtype=np.int64))
        if total == 0 or total % channels:
            return None
        per = total // channels
        return np.repeat(mean, per).reshape(shape), np.repeat(std, per).reshape(shape)
    assert isinstance(axis, int)
    if not 0 <= axis < len(shape) or shape[axis] != channels:
        return None
    view = [1] * len(shape)
    view[axis] = channels
    return (
        np.broadcast_to(mean.reshape(view), shape).copy(),
        np.broadcast_to(std.reshape(view), shape).copy(),
    )


def _batchnorm_plan(scope: Scope, spec: InputSpec, shape: tuple[int, ...]) -> InputPlan | None:
    hit = _first_batchnorm(scope, spec.name)
    if hit is None:
        return None
    bn, via = hit
    statistics = spec_of(bn).running_statistics(bn) or ()
    if len(bn.input) <= max(statistics, default=len(bn.input)):
        return None
    tensors = [_stored(scope, bn.input[i]) for i in statistics]
    if any(t is None for t in tensors):
        return None
    try:
        mean, var = (numpy_helper.to_array(t).astype(np.float64).ravel() for t in tensors)
    except (ValueError, OSError, TypeError) as exc:  # external data that is not loaded
        log.debug("BatchNormalization %s: cannot read running stats (%s)", bn.name, exc)
        return None
    if mean.size != var.size or not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
        return None
    stats = _channel_stats(scope, via, shape, mean, var)
    if stats is None:
        log.debug("BatchNormalization %s: its channels do not map onto input '%s'", bn.name, spec.name)
        return None
    return InputPlan(spec.name, spec.dtype, "batchnorm", shape, mean=stats[0], std=stats[1])


def image_layout(shape: tuple[int, ...]) -> str | None:
    """ "NCHW" or "NHWC" for a per-sample shape that looks like an image, else None."""
    if len(shape) != 3:
        return None
    if shape[0] in IMAGE_CHANNELS:
        return "NCHW"
    if shape[2] in IMAGE_CHANNELS:
        return "NHWC"
    return None


def _plan(scope: Scope, spec: InputSpec, shape: tuple[int, ...]) -> InputPlan:
    lower = spec.name.lower()
    if spec.dtype is np.bool_:
        return InputPlan(spec.name, spec.dtype, "constant", shape, fill=1)
    if spec.dtype is np.uint8 and image_layout(shape) is not None:  # 8-bit images: [0, 255]
        return InputPlan(spec.name, spec.dtype, "images", shape, layout=image_layout(shape), fill=255)
    if np.issubdtype(spec.dtype, np.integer):
        vocab = embedding_vocab(scope, spec.name)
        if "mask" in lower:
            return InputPlan(spec.name, spec.dtype, "constant", shape, fill=1)
        if "type" in lower:
            return InputPlan(spec.name, spec.dtype, "constant", shape, fill=0)
        if "position" in lower and shape:
            return InputPlan(spec.name, spec.dtype, "positions", shape, vocab=vocab or 0)
        if vocab is not None and vocab > 0:
            return InputPlan(spec.name, spec.dtype, "token-ids", shape, vocab=vocab)
        return InputPlan(spec.name, spec.dtype, "constant", shape, fill=0)
    if not np.issubdtype(spec.dtype, np.floating):
        raise DataError(f"input '{spec.name}' has dtype {np.dtype(spec.dtype).name}, which data-free mode cannot make")
    layout = image_layout(shape)
    if layout is not None:
        return InputPlan(spec.name, spec.dtype, "images", shape, layout=layout)
    return _batchnorm_plan(scope, spec, shape) or InputPlan(spec.name, spec.dtype, "smooth", shape)


# --------------------------------------------------------------------------- generators


def _generate(plan: InputPlan, rng: np.random.Generator, count: int) -> np.ndarray:
    shape = (count, *plan.shape)
    if plan.kind == "images":
        if plan.layout == "NCHW":
            images = procedural_images(rng, count, *plan.shape)
        else:
            height, width, channels = plan.shape
            images = procedural_images(rng, count, channels, height, width).transpose(0, 2, 3, 1)
        return np.rint(images * plan.fill).astype(plan.dtype) if plan.fill else images.astype(plan.dtype)
    if plan.kind == "token-ids":
        return rng.integers(0, plan.vocab, size=shape).astype(plan.dtype)
    if plan.kind == "positions":
        ids = np.arange(plan.shape[-1])
        if plan.vocab:
            ids = np.minimum(ids, plan.vocab - 1)
        return np.broadcast_to(ids, shape).astype(plan.dtype)
    if plan.kind == "constant":
        return np.full(shape, plan.fill, dtype=plan.dtype)
    if plan.kind == "batchnorm":
        return (plan.mean + plan.std * rng.standard_normal(shape)).astype(plan.dtype)
    return smooth_signals(rng, count, plan.shape).astype(plan.dtype)


def _colours(rng: np.random.Generator, shape: tuple[int, ...], channels: int) -> np.ndarray:
    """Random colours ``[*shape, channels]`` in [0, 1]: a luminance plus small per-channel offsets."""
    luminance = rng.uniform(0.0, 1.0, (*shape, 1))
    if channels == 1:
        return luminance
    return np.clip(luminance + rng.normal(0.0, 0.15, (*shape, channels)), 0.0, 1.0)


def pink_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Noise over the last two axes with amplitude spectrum ∝ 1/|f|, standardised per image."""
    height, width = shape[-2:]
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    gain = np.zeros_like(radius)
    np.divide(1.0, radius, out=gain, where=radius > 0)
    spectrum = np.fft.rfft2(rng.standard_normal(shape, dtype=np.float32)) * gain.astype(np.float32)
    noise = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
    noise -= noise.mean(axis=(-2, -1), keepdims=True)
    scale = noise.std(axis=(-2, -1), keepdims=True)
    return np.divide(noise, scale, out=np.zeros_like(noise), where=scale > 0)


def procedural_images(rng: np.random.Generator, count: int, channels: int, height: int, width: int) -> np.ndarray:
    """``count`` dead-leaves images over colour gradients with 1/f noise, float32 NCHW in [0, 1]."""
    size = max(height, width, 1)
    y = ((np.arange(height, dtype=np.float32) + 0.5) / size)[None, :, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / size)[None, None, :]
    # background: linear ramp between two colours along a random direction
    angle = rng.uniform(0.0, 2.0 * np.pi, (count, 1, 1))
    ramp = x * np.cos(angle) + y * np.sin(angle)
    low, high = ramp.min(axis=(1, 2), keepdims=True), ramp.max(axis=(1, 2), keepdims=True)
    ramp = (ramp - low) / np.maximum(high - low, 1e-12)
    start, end = _colours(rng, (count,), channels), _colours(rng, (count,), channels)
    image = start[:, None, None, :] + (end - start)[:, None, None, :] * ramp[..., None]  # [count, H, W, C]
    # dead leaves: radii with p(r) ∝ r^-3 on [r_min, r_max], in units of the longer side
    r_min, r_max = max(1.0 / size, 0.03), 0.6
    leaves = (count, LEAVES)
    u = rng.uniform(0.0, 1.0, leaves)
    radius = (r_min**-2 + u * (r_max**-2 - r_min**-2)) ** -0.5
    centre_y = rng.uniform(-0.1, 1.1, leaves) * height / size
    centre_x = rng.uniform(-0.1, 1.1, leaves) * width / size
    is_ellipse = rng.uniform(0.0, 1.0, leaves) < 0.5
    tilt = rng.uniform(0.0, np.pi, leaves)
    stretch = np.sqrt(np.exp(rng.uniform(np.log(0.3), np.log(3.0), leaves)))  # half-axes r*stretch, r/stretch
    painted = rng.integers(LEAVES // 4, LEAVES + 1, count)
    colours = _colours(rng, leaves, channels)
    rows, cols = y[0, :, 0], x[0, 0, :]
    for i in range(count):
        for leaf in range(painted[i]):
            reach = radius[i, leaf] * max(stretch[i, leaf], 1.0 / stretch[i, leaf])  # bounding circle
            top, bottom = np.searchsorted(rows, [centre_y[i, leaf] - reach, centre_y[i, leaf] + reach])
            left, right = np.searchsorted(cols, [centre_x[i, leaf] - reach, centre_x[i, leaf] + reach])
            if top >= bottom or left >= right:
                continue
            dy = rows[top:bottom, None] - centre_y[i, leaf]
            dx = cols[None, left:right] - centre_x[i, leaf]
            cos, sin = np.cos(tilt[i, leaf]), np.sin(tilt[i, leaf])
            along = np.square((dx * cos + dy * sin) / (radius[i, leaf] * stretch[i, leaf]))
            across = np.square((dy * cos - dx * sin) * stretch[i, leaf] / radius[i, leaf])
            extent = along + across if is_ellipse[i, leaf] else np.maximum(along, across)
            image[i, top:bottom, left:right][extent <= 1.0] = colours[i, leaf]
    image = image.transpose(0, 3, 1, 2)
    # 1/f noise: a luminance texture, with a random gain per channel
    amplitude = rng.uniform(0.02, 0.12, (count, 1, 1, 1)) * rng.uniform(0.8, 1.2, (count, channels, 1, 1))
    image = image + amplitude * pink_noise(rng, (count, 1, height, width))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def smooth_signals(rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth random series along the last axis of ``shape``, each at a random level (module docstring), float64."""
    length = shape[-1] if shape else 1
    if length < 4:
        return rng.standard_normal((count, *shape))
    rows = count * int(np.prod(shape[:-1], dtype=np.int64))
    t = np.arange(length, dtype=np.float64)
    waves, bumps = 4, 2
    freq = np.exp(rng.uniform(np.log(0.5 / length), np.log(0.25), (rows, waves, 1)))
    phase = rng.uniform(0.0, 2.0 * np.pi, (rows, waves, 1))
    amp = rng.uniform(0.5, 1.5, (rows, waves, 1))
    series = (amp * np.sin(2.0 * np.pi * freq * t + phase)).sum(axis=1)
    centre = rng.uniform(0.0, length, (rows, bumps, 1))
    width = rng.uniform(1.0, max(length / 4.0, 1.0), (rows, bumps, 1))
    height = rng.normal(0.0, 1.5, (rows, bumps, 1))
    series += (height * np.exp(-0.5 * ((t - centre) / width) ** 2)).sum(axis=1)
    series += 0.05 * rng.standard_normal((rows, length))
    series -= series.mean(axis=1, keepdims=True)
    series /= series.std(axis=1, keepdims=True)
    series = np.sqrt(1.0 - OFFSET**2) * series + OFFSET * rng.standard_normal((rows, 1))
    return series.reshape(count, *shape)
