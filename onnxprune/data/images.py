"""A folder of images as samples for one model input, with explicit preprocessing.

Each image goes through, in this order (torchvision's ``Resize`` / ``CenterCrop`` /
``ToTensor`` / ``Normalize`` conventions)::

    decode → convert to RGB or L (grayscale; BGR is RGB with the channel order reversed)
           → resize: an int s scales the shorter side to s (the longer one to int(s·long/short)),
             (h, w) resizes to exactly h × w
           → centre crop (h, w): top = round((H − h)/2), left = round((W − w)/2)
           → float32 → x · scale → (x − mean) / std, per channel in the output channel order
           → layout NCHW (channels first) or NHWC → dtype (integer dtypes are rounded and clipped)

What the options leave open is taken from the model input's fixed dims: the layout (where
the channel axis is the only one of size 1 or 3; NCHW otherwise), the channels (1 → GRAY,
3 → RGB) and the target height and width: without size or crop, images are resized to
exactly the input's H × W; with a size but no crop, they are centre-cropped to it. A rank-3
input (N, H, W) takes grayscale images without a channel axis. With neither options nor
fixed dims, every image must come out the same shape.

Files: every ``.jpg .jpeg .png .bmp .webp .ppm .pgm .tif .tiff`` (any case) under the
folder, recursively, hidden files and folders skipped, sorted by relative path. When the
folder holds no images itself but has subfolders, it is read as torchvision's
``ImageFolder``: ``root/<class>/**/image``, the label of an image is the index of its class
folder in the sorted list of class folders. Images are decoded per batch. Pillow is needed
(the ``images`` extra) and imported only here, when a folder is opened.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from onnxprune.data.checks import check_array, format_dims, input_names
from onnxprune.data.dataset import Dataset, Feeds
from onnxprune.errors import DataError, OptionError
from onnxprune.runtime import InputSpec, is_dynamic

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
LAYOUTS = ("NCHW", "NHWC")
CHANNELS = ("RGB", "BGR", "GRAY")
RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise OptionError(f"image {what} must be a positive int or (height, width), got {value!r}")
    return int(value[0]), int(value[1])


def _floats(value: Any, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = (value,) if isinstance(value, (int, float)) else value
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise OptionError(f"image {what} must be numbers, one per channel, got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise OptionError(f"image {what} must be finite numbers, one per channel, got {value!r}")
    return out


@dataclass(frozen=True)
class ImageOptions:
    """How images become a model input (see module docstring). None means: from the model.

    size: resize; an int scales the shorter side to it, (h, w) resizes exactly.
    crop: (h, w) centre crop (an int: square).
    scale: multiplies pixel values 0..255 (default 1/255).
    mean, std: per output channel (or one value for all), applied after ``scale``.
    layout: "NCHW" or "NHWC". channels: "RGB", "BGR" or "GRAY".
    dtype: of the fed array (default float32). resample: Pillow filter name (default bilinear).
    """

    size: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None
    channels: str | None = None
    dtype: str = "float32"
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if self.size is not None and not (isinstance(self.size, (int, np.integer)) and not isinstance(self.size, bool)):
            object.__setattr__(self, "size", _pair(self.size, "size"))
        elif self.size is not None:
            if self.size < 1:
                raise OptionError(f"image size must be >= 1, got {self.size}")
            object.__setattr__(self, "size", int(self.size))
        if self.crop is not None:
            object.__setattr__(self, "crop", _pair(self.crop, "crop"))
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise OptionError(f"image scale must be a finite number, got {self.scale!r}")
        if self.scale == 0:
            raise OptionError("image scale must not be 0 (it multiplies every pixel)")
        object.__setattr__(self, "mean", _floats(self.mean, "mean"))
        object.__setattr__(self, "std", _floats(self.std, "std"))
        if self.std is not None and 0.0 in self.std:
            raise OptionError(f"image std must not contain 0 (it divides), got {self.std}")
        for field, allowed in (("layout", LAYOUTS), ("channels", CHANNELS)):
            value = getattr(self, field)
            if value is not None:
                if not isinstance(value, str) or value.upper() not in allowed:
                    raise OptionError(f"image {field} must be one of {', '.join(allowed)}, got {value!r}")
                object.__setattr__(self, field, value.upper())
        if not isinstance(self.resample, str) or self.resample.lower() not in RESAMPLE:
            raise OptionError(f"image resample must be one of {', '.join(RESAMPLE)}, got {self.resample!r}")
        object.__setattr__(self, "resample", self.resample.lower())
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise OptionError(f"image dtype {self.dtype!r} is not a numpy dtype (e.g. float32, uint8)") from None
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise OptionError(f"image dtype must be a float or integer type, got {dtype.name}")
        object.__setattr__(self, "dtype", dtype.name)


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise OptionError(f"image {what} '{text}' must look like 224 or 224x224 (height x width)") from None
    if len(values) > 2 or any(v < 1 for v in values):
        raise OptionError(f"image {what} '{text}' must look like 224 or 224x224 (height x width), sizes >= 1")
    return values


def _parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(Fraction(p.strip())) for p in text.split(","))
    except (ValueError, ZeroDivisionError):
        raise OptionError(
            f"image {what} '{text}' must be numbers separated by commas, e.g. 0.485,0.456,0.406"
        ) from None


def parse_image_options(
    *,
    size: str | None = None,
    crop: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    layout: str | None = None,
    channels: str | None = None,
    scale: str | float | None = None,
    dtype: str | None = None,
    resample: str | None = None,
) -> ImageOptions:
    """Image options from command-line strings: size "256" (shorter side) or "224x224",
    crop "224" or "224x224", mean/std "0.485,0.456,0.406", scale "1/255" or "0.0039"."""
    options: dict[str, Any] = {}
    if size is not None:
        sizes = _parse_ints(size, "size")
        options["size"] = sizes[0] if len(sizes) == 1 else sizes
    if crop is not None:
        crops = _parse_ints(crop, "crop")
        options["crop"] = crops * 2 if len(crops) == 1 else crops
    if mean is not None:
        options["mean"] = _parse_floats(mean, "mean")
    if std is not None:
        options["std"] = _parse_floats(std, "std")
    if scale is not None:
        (options["scale"],) = _parse_floats(scale, "scale") if isinstance(scale, str) else (float(scale),)
    for name, value in (("layout", layout), ("channels", channels), ("dtype", dtype), ("resample", resample)):
        if value is not None:
            options[name] = value
    return ImageOptions(**options)


def _pillow() -> ModuleType:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install 'onnxprune[images]'") from None
    return Image


# ---------------------------------------------------------------------------------------
# Files and classes


def is_image(name: str) -> bool:
    """Whether ``name`` is an image file this reader takes (not hidden, a known extension)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(folder: Path) -> list[Path]:
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(top) / name for name in files if is_image(name))
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def find_images(root: Path) -> tuple[list[Path], np.ndarray | None, tuple[str, ...] | None]:
    """Image files under ``root``, their labels and class names (None for a flat folder).

    See the module docstring for the class-folder convention. Raises DataError when there
    are no images.
    """
    entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    flat = any(entry.is_file() and is_image(entry.name) for entry in entries)
    classes = [entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    files: list[Path] = []
    labels: np.ndarray | None = None
    if flat or not classes:
        files = _walk(root)
        if flat and classes:
            log.info("%s holds images itself, so its subfolders are not classes: no labels", root)
        class_names = None
    else:
        label_list: list[int] = []
        for index, name in enumerate(classes):
            found = _walk(root / name)
            if not found:
                log.warning("class folder %s holds no images (it keeps class index %d)", root / name, index)
            files.extend(found)
            label_list.extend([index] * len(found))
        labels = np.asarray(label_list, dtype=np.int64)
        class_names = tuple(classes)
    if not files:
        raise DataError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    return files, labels, class_names


# ---------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class _Plan:
    """The resolved pipeline for one model input."""

    mode: str  # Pillow mode: "RGB" or "L"
    bgr: bool
    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    scale: float
    mean: np.ndarray | None
    std: np.ndarray | None
    channels_first: bool
    channel_axis: bool
    dtype: np.dtype
    resample: str


def _is_channel_dim(dim: int | str | None) -> bool:
    return not is_dynamic(dim) and dim in (1, 3)


def _plan(spec: InputSpec, options: ImageOptions, *, source: str) -> _Plan:
    """Resolve what the options leave open from ``spec`` (see module docstring)."""
    dims = spec.dims
    if len(dims) == 4:
        layout = options.layout
        if layout is None:
            layout = "NHWC" if _is_channel_dim(dims[3]) and not _is_channel_dim(dims[1]) else "NCHW"
        channel_dim, height, width = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        channels = options.channels or ("GRAY" if channel_dim == 1 else "RGB")
        count = 1 if channels == "GRAY" else 3
        if not is_dynamic(channel_dim) and channel_dim != count:
            raise DataError(
                f"{source}: input '{spec.name}' {format_dims(dims)} has {channel_dim} channels in layout {layout}, "
                f"but {channels} images give {count}: set the channels/layout to match the model"
            )
    elif len(dims) == 3:
        if options.channels not in (None, "GRAY"):
            raise DataError(
                f"{source}: input '{spec.name}' {format_dims(dims)} has no channel axis, so it takes GRAY images, "
                f"not {options.channels}"
            )
        layout, channels, count, height, width = "NCHW", "GRAY", 1, dims[1], dims[2]
    else:
        raise DataError(
            f"{source}: input '{spec.name}' {format_dims(dims)} has rank {len(dims)}; images feed a rank-4 input "
            "(NCHW or NHWC) or a rank-3 grayscale one (N, H, W)"
        )
    target = None if is_dynamic(height) or is_dynamic(width) else (int(height), int(width))
    resize, crop = options.size, options.crop
    if crop is None and target is not None:
        if resize is None:
            resize = target
            log.info("%s: resizing images to the model's %dx%d (give a size and crop to keep aspect)", source, *target)
        else:
            crop = target
    if crop is not None and target is not None and crop != target:
        raise DataError(
            f"{source}: a {crop[0]}x{crop[1]} crop does not fit input '{spec.name}' {format_dims(dims)}, "
            f"which takes {target[0]}x{target[1]} (height x width) images"
        )
    if crop is not None and resize is not None:
        short = (resize, resize) if isinstance(resize, int) else resize
        if crop[0] > short[0] or crop[1] > short[1]:
            raise DataError(
                f"{source}: images resized to {'x'.join(map(str, short))} are smaller than the "
                f"{crop[0]}x{crop[1]} crop: give a larger size"
            )
    for what, values in (("mean", options.mean), ("std", options.std)):
        if values is not None and len(values) not in (1, count):
            raise OptionError(f"image {what} has {len(values)} values but {channels} images have {count} channel(s)")
    return _Plan(
        mode="L" if channels == "GRAY" else "RGB",
        bgr=channels == "BGR",
        resize=resize,
        crop=crop,
        scale=float(options.scale),
        mean=None if options.mean is None else np.asarray(options.mean, dtype=np.float32),
        std=None if options.std is None else np.asarray(options.std, dtype=np.float32),
        channels_first=layout == "NCHW",
        channel_axis=len(dims) == 4,
        dtype=np.dtype(options.dtype),
        resample=options.resample,
    )


def preprocess(image: Any, plan: _Plan, *, path: Path, pil: ModuleType) -> np.ndarray:
    """One decoded Pillow image → one sample array (see module docstring)."""
    image = image.convert(plan.mode)
    if plan.resize is not None:
        width, height = image.size
        if isinstance(plan.resize, int):
            if width <= height:
                size = (plan.resize, int(plan.resize * height / width))
            else:
                size = (int(plan.resize * width / height), plan.resize)
        else:
            size = (plan.resize[1], plan.resize[0])
        if size != image.size:
            image = image.resize(size, getattr(pil.Resampling, plan.resample.upper()))
    if plan.crop is not None:
        width, height = image.size
        crop_h, crop_w = plan.crop
        if crop_h > height or crop_w > width:
            raise DataError(
                f"image {path} is {height}x{width} (height x width) after resizing, smaller than the "
                f"{crop_h}x{crop_w} crop: give a resize size at least as large as the crop"
            )
        top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)
        image = image.crop((left, top, left + crop_w, top + crop_h))
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2 and plan.channel_axis:
        array = array[:, :, None]
    if plan.bgr:
        array = array[:, :, ::-1]
    array = array * np.float32(plan.scale)
    if plan.mean is not None:
        array = array - plan.mean
    if plan.std is not None:
        array = array / plan.std
    if plan.channels_first and plan.channel_axis:
        array = array.transpose(2, 0, 1)
    if np.issubdtype(plan.dtype, np.integer):
        info = np.iinfo(plan.dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(plan.dtype)
    return np.ascontiguousarray(array, dtype=plan.dtype)


class ImageFolderDataset(Dataset):
    """A folder of images feeding one model input (see module docstring)."""

    kind = "images"

    def __init__(
        self,
        root: Path,
        *,
        specs: Sequence[InputSpec],
        options: ImageOptions,
        input_name: str | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(specs=specs, source=str(root))
        self.spec = self._image_input(input_name)
        self.options = options
        self._pil = _pillow()
        self._plan = _plan(self.spec, options, source=self.source)
        files, labels, self.class_names = find_images(root)
        if limit is not None:
            files = files[:limit]
            labels = None if labels is None else labels[:limit]
        self.files: tuple[Path, ...] = tuple(files)
        self.labels = labels
        first = self._load(self.files[0])
        self.sample_shape: tuple[int, ...] = first.shape
        dtype = check_array(
            self.spec.name, (1, *first.shape), first.dtype, self.spec, source=f"images in {root}", check_batch=False
        )
        if dtype != first.dtype:
            log.info("%s: casting images from %s to the model's %s", root, first.dtype.name, dtype.name)
        self._dtype = dtype
        log.info(
            "%s: %d images -> %s %s%s",
            root,
            len(self.files),
            self.spec.name,
            "x".join(map(str, first.shape)),
            f", {len(self.class_names)} classes" if self.class_names else "",
        )

    def _image_input(self, input_name: str | None) -> InputSpec:
        names = [spec.name for spec in self.specs]
        if input_name is not None and input_name not in names:
            raise OptionError(
                f"image input '{input_name}' is not a model input; the model's inputs are: {', '.join(names)}"
            )
        if len(self.specs) > 1:
            raise DataError(
                f"a folder of images feeds one input, but the model has {len(self.specs)} ({input_names(self.specs)}): "
                "give a .npz with every input, or a CalibrationDataReader"
            )
        return self.specs[0]

    def num_samples(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> np.ndarray:
        pil = self._pil
        try:
            with pil.open(path) as image:
                image.load()
                return preprocess(image, self._plan, path=path, pil=pil)
        except (OSError, SyntaxError, ValueError, pil.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None

    def _batch_chunks(self, batch_size: int) -> Iterator[Feeds]:
        for start in range(0, len(self.files), batch_size):
            samples = []
            for path in self.files[start : start + batch_size]:
                sample = self._load(path)
                if sample.shape != self.sample_shape:
                    raise DataError(
                        f"image {path} gives a {'x'.join(map(str, sample.shape))} sample but {self.files[0]} gives "
                        f"{'x'.join(map(str, self.sample_shape))}: give an exact size (HxW) or a crop so all match"
                    )
                samples.append(sample)
            yield {self.spec.name: np.stack(samples).astype(self._dtype, copy=False)}
