"""The :class:`Predictor`: images of any size in, class probabilities or label maps out.

It wraps a model (a pixelwise model, any callable ``[N, C, H, W] → [N, K, H, W]`` logits, a run or
``save_pretrained`` directory, or an ``.onnx`` file), normalises the input the way the model was
trained, predicts in overlapping tiles (:mod:`~pixelwise.inference.tiling`), blends them
(:mod:`~pixelwise.inference.stitch`), optionally with test-time augmentation
(:mod:`~pixelwise.inference.tta`: flips and input scales), and gives probabilities (softmax; sigmoid
for one class).

Scales (the model's own input ``scale`` times each TTA scale) are applied per tile: each tile is
resized, predicted, and its logits resized back to the tile, so memory stays bounded by the tile
size whatever the image size::

    image ─► tiles ─► [flip ─► resize ×s ─► model ─► resize back ─► softmax ─► un-flip] ─► mean ─► blend
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import warnings
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pixelwise.data.transforms import shift_image
from pixelwise.errors import ConfigError, InputSizeError, check_choice
from pixelwise.inference import backends
from pixelwise.inference.stitch import StitchOptions, iter_bands
from pixelwise.inference.tiling import (
    BLEND_MODES,
    PADDING_MODES,
    ArraySource,
    AxisPlan,
    RowSource,
    check_margin,
    fit_tile,
    read_window,
    scan_axis,
    valid_axis,
)
from pixelwise.inference.tta import NO_TTA, check_tta_scales, multiscale_average, tta_transforms

BINARY_THRESHOLD = 0.5
"""Probability above which a one-class (sigmoid) model labels a pixel 1."""
MAX_UINT8_CLASSES = 256
"""Label maps are uint8 up to this many classes, int32 beyond."""
PRECISIONS = ("fp32", "bf16", "int8")
"""Numeric precisions :class:`RuntimeOptions` accepts."""


def labels_from_scores(scores: np.ndarray, threshold: float = BINARY_THRESHOLD) -> np.ndarray:
    """``[K, H, W]`` probabilities → ``[H, W]`` labels: argmax, or ``> threshold`` when ``K == 1``.

    The labels are uint8 for up to 256 classes, int32 beyond.
    """
    if scores.shape[0] == 1:
        return (scores[0] > threshold).astype(np.uint8)
    return scores.argmax(0).astype(np.uint8 if scores.shape[0] <= MAX_UINT8_CLASSES else np.int32)


DEFAULT_OVERLAP = 0.25
"""Fraction of a tile shared with its neighbour."""
DEFAULT_BLEND = "gaussian"
"""How overlapping tiles are blended (one of ``BLEND_MODES``)."""
DEFAULT_BATCH_SIZE = 2
"""Tiles per forward pass: 2 streamed a 64 Mpx image as fast as 4 on a 2-core CPU with 260 MB less
peak memory (docs/RESULTS.md); raise it on a GPU."""
DEFAULT_PADDING_MODE = "reflect"
"""Where tiles reach beyond the image: mirror it, as the U-Net paper does."""
DEFAULT_BACKEND = "auto"
"""Which runtime executes the model (one of ``backends.BACKENDS``): ``auto`` starts with PyTorch and moves to
ONNX Runtime on the CPU once a job has predicted ``auto_backend.SWITCH_PIXELS`` pixels."""
DEFAULT_PRECISION = "fp32"
"""Numeric precision of the forward pass (one of ``PRECISIONS``)."""


@dataclasses.dataclass(frozen=True)
class TilingOptions:
    """How an image is cut into tiles, batched and blended back.

    Args:
        tile_size: tile side in pixels; None predicts the whole image at once. Images no larger
            than a tile run whole. For UNet2015 it is the input tile (rounded up to a valid size).
        overlap: fraction of a tile shared with its neighbour (MONAI's scan; unused by UNet2015,
            whose output tiles abut exactly).
        blend: ``"gaussian"`` (MONAI's window, σ = tile/8), ``"linear"`` (tent) or ``"none"`` (mean).
        batch_size: tiles per forward pass (see :data:`DEFAULT_BATCH_SIZE`).
        padding_mode: where tiles reach beyond the image (UNet2015's border, or images smaller than
            the tile with ``"constant"``): ``"reflect"`` mirrors the image, as the U-Net paper does;
            ``"constant"`` reproduces MONAI (zero after normalisation, tiles padded to full size).
        margin: output pixels dropped at tile edges that face another tile (padded CNNs see zeros
            there); neighbouring tiles must overlap by ``2·margin``. 0 keeps MONAI's blending.
        fit_tiles: shrink the tile (to no less than half, in steps of the model's ``input_multiple``)
            where that covers the image with the same overlap fraction and less computation
            (:func:`~pixelwise.inference.tiling.fit_tile`); False keeps MONAI's exact tile layout.

    Raises:
        ConfigError: an unknown blend or padding mode, or a size or fraction out of range (names the option).
    """

    tile_size: int | None = None
    overlap: float = DEFAULT_OVERLAP
    blend: str = DEFAULT_BLEND
    batch_size: int = DEFAULT_BATCH_SIZE
    padding_mode: str = DEFAULT_PADDING_MODE
    margin: int = 0
    fit_tiles: bool = True

    def __post_init__(self) -> None:
        check_choice("blend", self.blend, BLEND_MODES)
        check_choice("padding_mode", self.padding_mode, PADDING_MODES)
        if self.tile_size is not None:
            check_int("tile_size", self.tile_size, 1, ", or None for whole images")
        check_fraction("overlap", self.overlap)
        check_int("batch_size", self.batch_size, 1)
        object.__setattr__(self, "overlap", float(self.overlap))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "margin", int(self.margin))


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How and where the model runs.

    Args:
        backend: ``"auto"`` (default): ONNX Runtime for an ``.onnx`` file or int8; otherwise PyTorch, which on
            the CPU in fp32 (not compiled) hands over to ONNX Runtime, when installed, once the predictor has
            run 2 Mpx (:data:`~pixelwise.inference.auto_backend.SWITCH_PIXELS`, about the export's cost) and
            the exported graph matches PyTorch to 1e-4 (:mod:`~pixelwise.inference.auto_backend`);
            ``"torch"``: PyTorch only (outputs identical from the first call to the last);
            ``"onnxruntime"``: ONNX Runtime from the start (torch models are exported to a temporary file).
        precision: ``"fp32"``; ``"bf16"`` (torch autocast); ``"int8"`` (quantized ONNX model).
        device: torch device; default (None) CUDA when available for modules, else CPU. Stored as a
            :class:`torch.device` once checked.
        compile: run the model through ``torch.compile``.
        fold_bn: merge BatchNorm into the convolutions before it (:func:`fold_batchnorm`).
        fuse_activations: on the CPU in fp32, run each convolution with the ReLU/ReLU6/SiLU after it as one
            oneDNN kernel (:func:`~pixelwise.inference.fuse_activation.fuse_conv_activations`; the same
            output, one pass less over each feature map).
        channels_last: NHWC memory layout for torch modules (default on: about 10 % faster for a
            ResNet-34 U-Net on a 2-core CPU; turn it off if a model runs slower so).

    Raises:
        ConfigError: an unknown backend or precision, or a device this machine lacks.
    """

    backend: str = DEFAULT_BACKEND
    precision: str = DEFAULT_PRECISION
    device: str | torch.device | None = None
    compile: bool = False
    fold_bn: bool = True
    channels_last: bool = True
    fuse_activations: bool = True

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, backends.BACKENDS)
        check_choice("precision", self.precision, PRECISIONS)
        object.__setattr__(self, "device", check_device(self.device))


@dataclasses.dataclass(frozen=True)
class NormalizationOptions:
    """How [0, 1] images are brought to what the model was trained on.

    Args:
        mean, std: per-channel normalisation of [0, 1] inputs; default (None) the loaded model's, else none.
        scale: the model's input scale (images are resized by it per tile; scores resized back);
            a loaded model's own scale takes precedence.
    """

    mean: Any = None
    std: Any = None
    scale: float = 1.0


_DEPRECATED_GROUPS = {
    "tiling": (TilingOptions, {f.name for f in dataclasses.fields(TilingOptions)}),
    "runtime": (RuntimeOptions, {f.name for f in dataclasses.fields(RuntimeOptions)}),
    "normalization": (NormalizationOptions, {f.name for f in dataclasses.fields(NormalizationOptions)}),
}
"""Which option group each of the old flat ``Predictor`` keywords belongs to."""


def _from_flat_keywords(groups: dict[str, Any], flat: dict[str, Any]) -> tuple[dict[str, Any], bool | None]:
    """Fold the deprecated flat keywords (``tile_size=``, ``device=``, ``progress=`` …) into their groups.

    Warns once per call with a :class:`DeprecationWarning` naming the new spelling.

    Raises:
        TypeError: a keyword that never was a ``Predictor`` argument.
    """
    if not flat:
        return groups, None
    progress = flat.pop("progress", None)
    hints = [] if progress is None else [f"predictor.with_progress({progress!r})"]
    for group, (cls, names) in _DEPRECATED_GROUPS.items():
        given = {name: flat.pop(name) for name in list(flat) if name in names}
        if given:
            base = groups[group] or cls()
            groups[group] = dataclasses.replace(base, **given)
            shown = ", ".join(f"{name}={value!r}" for name, value in given.items())
            hints.append(f"{group}={cls.__name__}({shown})")
    if flat:
        raise TypeError(f"Predictor() got an unexpected keyword argument {next(iter(flat))!r}")
    warnings.warn(
        f"Predictor's flat keywords are deprecated and will be removed in the next release; write {', '.join(hints)}.",
        DeprecationWarning,
        stacklevel=3,
    )
    return groups, progress


class Predictor:
    """Tiled, blended, optionally test-time-augmented prediction for images of any size.

    Args:
        model: a module or any callable mapping float ``[N, C, H, W]`` to logits ``[N, K, H, W]``;
            a :class:`~pixelwise.evaluate.LoadedModel`; a run / ``save_pretrained`` directory (its
            mean, std, scale and classes are used); or an ``.onnx`` file (run by ONNX Runtime).
        tiling: tile size, overlap, blending, batching and padding (:class:`TilingOptions`);
            default: whole images at once.
        runtime: backend, precision, device, compilation and layout (:class:`RuntimeOptions`).
        normalization: mean, std and input scale (:class:`NormalizationOptions`); default the loaded model's.
        tta: ``"hflip"`` (2: left-right flip), ``"flips"`` (4 flips) or ``"d4"`` (8 rotations/flips):
            probabilities are averaged; ``"none"``: no TTA; None (default): the mode stored with a
            loaded model or run directory (``TrainConfig.tta``), else none. :attr:`tta` is the mode used.
        tta_scales: input scales for multi-scale TTA, e.g. ``(0.75, 1, 1.25)`` (or ``"0.75,1,1.25"``):
            each tile is resized by ``scale × s`` (``scale``: the model's own), predicted, and its logits
            resized back (bilinear; antialiased); the probabilities are averaged over the scales and the
            ``tta`` transforms (``len(tta_scales) × transforms`` forward passes). Up to 8 scales in
            (0, 4]; None (default) or ``(1,)``: no resizing. With tiles, a scale below 1 sees no more
            context than the tile holds: give larger tiles to benefit from it.
        **deprecated: the flat keywords of earlier releases (``tile_size=``, ``overlap=``, ``blend=``,
            ``batch_size=``, ``padding_mode=``, ``margin=``, ``fit_tiles=``, ``backend=``, ``precision=``,
            ``device=``, ``compile=``, ``fold_bn=``, ``channels_last=``, ``mean=``, ``std=``, ``scale=``,
            ``progress=``), accepted for one more release with a :class:`DeprecationWarning`.

    A progress bar over tiles is :meth:`with_progress`: a configured copy; a predictor is never
    changed after it is built.

    Raises:
        ConfigError: an option out of range or unknown (names it), or a scale (``scale`` or ``tta_scales``)
            that the exact tiling of a valid-convolution model (UNet2015) forbids.

    Example:
        >>> tiling = TilingOptions(tile_size=512)
        >>> predictor = Predictor.from_pretrained("runs/cells", tiling=tiling, tta="flips")  # doctest: +SKIP
        >>> labels = predictor.predict_labels(image)  # [H, W] uint8  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        *,
        tiling: TilingOptions | None = None,
        runtime: RuntimeOptions | None = None,
        normalization: NormalizationOptions | None = None,
        tta: str | None = None,
        tta_scales: str | Sequence[float] | None = None,
        **deprecated: Any,
    ) -> None:
        groups = {"tiling": tiling, "runtime": runtime, "normalization": normalization}
        groups, progress = _from_flat_keywords(groups, deprecated)
        tiling = groups["tiling"] or TilingOptions()
        runtime = groups["runtime"] or RuntimeOptions()
        normalization = groups["normalization"] or NormalizationOptions()
        if tta is not None:
            tta_transforms(tta)  # an unknown mode fails before the model is loaded
        self.tiling, self.runtime = tiling, runtime
        self.tta_scales = check_tta_scales(tta_scales)
        self.tile_size, self.overlap, self.margin = tiling.tile_size, tiling.overlap, tiling.margin
        precision = runtime.precision
        backend = backends.engine(runtime.backend, model, precision)
        self._engine = backend
        self._temp = tempfile.TemporaryDirectory(prefix="pixelwise-onnx-") if backend == "onnxruntime" else None
        loaded = backends.resolve(model, backend, precision)
        self.tta: str | None = _chosen_tta(tta, loaded.tta)
        """The test-time augmentation used: ``tta`` if given, else the model's stored one (None: none)."""
        self.classes = loaded.classes
        self.scale = float(normalization.scale if loaded.scale is None else loaded.scale)
        self.mask_offset = loaded.mask_offset
        self.geometry = loaded.geometry
        _check_exact_tiling_scales(self.geometry, self.scale, self.tta_scales)
        self.in_channels: int | None = getattr(loaded.module, "in_channels", None)
        # only models that state their stride get fitted tiles: others may need the exact size asked for
        multiple = int(getattr(loaded.module, "input_multiple", 0))
        self.tile_multiple = multiple if tiling.fit_tiles and self.geometry is None else 0
        mean = loaded.mean if normalization.mean is None else normalization.mean
        std = loaded.std if normalization.std is None else normalization.std
        self.device = backends.default_device(loaded, backend) if runtime.device is None else runtime.device
        self.channels_last = bool(runtime.channels_last) and backend == "torch"
        self._autocast = backends.autocast(precision, backend, self.device)
        if mean is not None and self.in_channels is None:
            self.in_channels = int(torch.as_tensor(mean).numel())
        self._mean = None if mean is None else _channel_vector(mean, self.device)
        self._std = None if std is None else _channel_vector(std, self.device)
        self._forward = backends.prepare(
            loaded,
            backend,
            precision,
            self.device,
            self.in_channels,
            runtime.fold_bn,
            self.channels_last,
            runtime.compile,
            self._temp,
            fuse_activations=runtime.fuse_activations,
            switch=runtime.backend == "auto",
        )
        fill = None
        if self._mean is not None and tiling.padding_mode == "constant":
            fill = self._mean.flatten().cpu().numpy()  # zero after normalisation, as MONAI pads its input
        self.options = StitchOptions(
            tiling.blend, self.margin, tiling.batch_size, tiling.padding_mode, fill, self.device, bool(progress)
        )
        """The stitching settings derived from ``tiling`` (read them; :meth:`with_progress` gives a changed copy)."""

    @property
    def backend(self) -> str:
        """What runs the next forward pass: ``"torch"`` or ``"onnxruntime"`` (``"auto"`` may switch, see
        :attr:`backend_note`)."""
        return getattr(self._forward, "backend", self._engine)

    @property
    def backend_note(self) -> str:
        """Why :attr:`backend` is what it is: for ``"auto"``, the switch and its checked difference, or why not."""
        note = getattr(self._forward, "note", None)
        if note is not None:
            return note
        if self.runtime.backend != "auto":
            return f"{self.backend}, as asked"
        if self.backend == "onnxruntime":
            return "onnxruntime (auto: .onnx files and int8 run on ONNX Runtime)"
        return "torch (auto moves to ONNX Runtime only for a torch module run in fp32 on the CPU, not compiled)"

    def with_progress(self, progress: bool = True) -> Predictor:
        """A copy of this predictor that shows (or hides) a progress bar over tiles; this one is unchanged.

        The copy shares the loaded model, so it costs nothing to make.
        """
        clone = copy.copy(self)
        clone.options = dataclasses.replace(self.options, progress=bool(progress))
        return clone

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> Predictor:
        """A predictor for a run directory, ``save_pretrained`` directory or ``.onnx`` file (see :class:`Predictor`)."""
        return cls(Path(path), **kwargs)

    # -- geometry ------------------------------------------------------------------------------
    def plans(self, height: int, width: int) -> tuple[AxisPlan, AxisPlan]:
        """The tile plans along the rows and the columns of an ``height × width`` image."""
        if self.geometry is not None:
            plans = (valid_axis(n, self.tile_size, self.geometry) for n in (height, width))
        else:
            pad = self.options.padding_mode == "constant"
            plans = (scan_axis(n, self._tile_for(n), self.overlap, pad) for n in (height, width))
        plan_y, plan_x = plans
        for plan in (plan_y, plan_x):
            check_margin(plan, self.margin)
        return plan_y, plan_x

    def _tile_for(self, size: int) -> int | None:
        if self.tile_size is None or not self.tile_multiple:
            return self.tile_size
        return fit_tile(size, self.tile_size, self.overlap, self.tile_multiple, self.margin)

    # -- prediction ----------------------------------------------------------------------------
    def _tile_scores(self, tiles: torch.Tensor) -> torch.Tensor:
        # before the flips of TTA: the offset lives in the image's own frame
        tiles = shift_image(tiles, self.mask_offset)
        x = tiles if self._mean is None else (tiles - self._mean) / self._std
        if self.channels_last and self.backend == "torch":  # ONNX Runtime takes NCHW (it would copy back)
            x = x.contiguous(memory_format=torch.channels_last)
        return multiscale_average(self._probabilities, x, self.tta_scales, self.tta)

    def _probabilities(self, x: torch.Tensor, tta_scale: float = 1.0) -> torch.Tensor:
        """Probabilities of ``x`` resized by the model's scale × ``tta_scale``, resized back to ``x``'s size."""
        size = x.shape[-2:]
        scale = self.scale * tta_scale
        with self._autocast():
            if scale != 1:
                # antialias matters when shrinking; when enlarging it is plain bilinear (up to rounding)
                scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
                x = F.interpolate(x, size=scaled, mode="bilinear", antialias=True)
            logits = self._forward(x).float()
        if scale != 1:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(1)

    def bands(self, image: Any) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(row0, probabilities)`` bands top to bottom (``float32 [K, rows, W]``), see :func:`iter_bands`.

        ``image`` is anything :meth:`predict` takes, or a :class:`~pixelwise.inference.tiling.RowSource`.
        """
        source = self.as_source(image)
        plan_y, plan_x = self.plans(*source.shape[1:])
        return iter_bands(self._tile_scores, source, plan_y, plan_x, self.options)

    def predict(self, image: Any) -> np.ndarray:
        """Class probabilities ``float32 [K, H, W]`` of one image.

        Shape: ``image`` is a NumPy ``[H, W]`` or ``[H, W, C]`` array (uint8 / uint16 scaled to
        [0, 1]; floats taken as they are) or a float tensor ``[C, H, W]`` (or ``[H, W]``) in [0, 1].

        Raises:
            InputSizeError: wrong number of dimensions or channels, or an empty image.
            ConfigError: the image holds NaN or infinite values (names how many pixels).
        """
        source = self.as_source(image)
        out = None
        for row0, scores in self.bands(source):
            if out is None:
                out = np.empty((scores.shape[0], source.shape[1], scores.shape[2]), dtype=np.float32)
            out[:, row0 : row0 + scores.shape[1]] = scores
        return out

    def batch_key(self, image: Any) -> Hashable | None:
        """A key shared by the images one forward pass can predict together: their channel count and one-tile plans
        (the tile is the whole image); None for an image that needs several tiles (use :meth:`predict`).

        ``image``: anything :meth:`predict` takes.
        """
        source = self.as_source(image)
        plan_y, plan_x = self.plans(*source.shape[1:])
        if len(plan_y.starts) == 1 and len(plan_x.starts) == 1:
            return source.shape[0], plan_y, plan_x
        return None

    def predict_batch(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Class probabilities ``float32 [K, H, W]`` of several images of one :meth:`batch_key`, in one forward pass.

        Each result is what :meth:`predict` gives for that image alone: its one tile is read and its scores blended
        back by :func:`iter_bands` itself (batched kernels may round the last float bit differently).

        Raises:
            ConfigError: the images do not share one batch key.
        """
        sources = [self.as_source(image) for image in images]
        keys = {self.batch_key(source) for source in sources}
        if len(keys) != 1 or None in keys:
            raise ConfigError("predict_batch takes images of one batch_key (one tile each, same size); use predict.")
        _, plan_y, plan_x = keys.pop()
        options = dataclasses.replace(self.options, progress=False)  # no tile bar per small image
        y0, x0 = plan_y.starts[0] - plan_y.context, plan_x.starts[0] - plan_x.context
        window = (y0, y0 + plan_y.tile_in, x0, x0 + plan_x.tile_in, options.padding_mode, options.fill)
        with torch.inference_mode():
            tiles = np.stack([read_window(source, *window) for source in sources])
            scores = self._tile_scores(torch.from_numpy(tiles).to(options.device)).float()
        return [_stitched(scores[b : b + 1], source, plan_y, plan_x, options) for b, source in enumerate(sources)]

    def predict_labels(self, image: Any) -> np.ndarray:
        """Label map ``[H, W]`` (uint8, or int32 beyond 256 classes) of one image; see :meth:`predict`."""
        source = self.as_source(image)
        out = None
        for row0, scores in self.bands(source):
            labels = labels_from_scores(scores)
            if out is None:
                out = np.empty((source.shape[1], scores.shape[2]), dtype=labels.dtype)
            out[row0 : row0 + labels.shape[0]] = labels
        return out

    def as_source(self, image: Any) -> RowSource:
        """``image`` as a ``[C, H, W]`` :class:`RowSource`, its channel count checked against the model.

        Arrays and tensors are also checked for NaN and ±inf (one ``np.isfinite`` pass, floats only);
        a :class:`RowSource` given as it is is read band by band and left to its reader to check.

        Raises:
            InputSizeError: not an image, or the wrong number of channels.
            ConfigError: an array or tensor holding NaN or infinite values.
        """
        if hasattr(image, "read") and hasattr(image, "shape") and len(image.shape) == 3:
            source = image
        elif isinstance(image, torch.Tensor):
            array = image.detach().cpu().numpy()
            array = array[0] if array.ndim == 4 and array.shape[0] == 1 else array
            source = ArraySource(array[None] if array.ndim == 2 else array)
        elif isinstance(image, np.ndarray):
            source = ArraySource(image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0))
        else:
            raise InputSizeError(f"cannot predict a {type(image).__name__}; pass a NumPy array or a torch tensor.")
        shape = tuple(source.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputSizeError(
                f"image of shape {list(np.shape(image))} is not an image; give a NumPy [H, W] or [H, W, C] array "
                "or a tensor [C, H, W]."
            )
        if self.in_channels is not None and shape[0] != self.in_channels:
            raise InputSizeError(
                f"the image has {shape[0]} channels (shape {list(np.shape(image))}) but the model expects "
                f"{self.in_channels}; convert the image (gray ↔ RGB) or use a model trained on such images. "
                "NumPy images are [H, W, C], tensors [C, H, W]."
            )
        if isinstance(source, ArraySource) and source is not image:
            count = nonfinite_pixels(source.array)
            if count:
                raise ConfigError(nonfinite_message("the image", count))
        return source


def _chosen_tta(tta: str | None, stored: str | None) -> str | None:
    """The TTA mode to run: ``tta``, else ``stored``; ``"none"`` (either one) and None give None.

    Raises:
        ConfigError: a name outside :data:`~pixelwise.modes.TTA_MODES`.
    """
    chosen = stored if tta is None else tta
    if chosen is not None:
        tta_transforms(chosen)
    return None if chosen == NO_TTA else chosen


def _check_exact_tiling_scales(geometry: Any, scale: float, tta_scales: tuple[float, ...] | None) -> None:
    """Refuse input scales for a valid-convolution model: a resized tile is no longer a valid input size.

    Raises:
        ConfigError: ``scale`` or a TTA scale other than 1 with a ``geometry`` (names the option).
    """
    if geometry is None:
        return
    name = type(geometry).__name__
    if scale != 1:
        raise ConfigError(f"scale={scale} cannot be combined with the exact tiling of {name}; use scale=1.")
    if any(s != 1 for s in tta_scales or ()):
        raise ConfigError(
            f"tta_scales={tta_scales} cannot be combined with the exact tiling of {name} (a resized tile is no "
            "longer a valid input size); use tta_scales=None, or flips alone (tta='d4')."
        )


def _channel_vector(values: Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1).to(device)


def _shown(option: str, value: Any) -> str:
    """``--tile -1`` for command-line options, ``tile_size=-1`` for Python arguments."""
    return f"{option} {value!r}" if option.startswith("--") else f"{option}={value!r}"


def check_int(option: str, value: Any, minimum: int, hint: str = "") -> None:
    """Raise unless ``value`` is a whole number (not a bool) ``≥ minimum``; ``hint`` ends the message.

    Raises:
        ConfigError: names ``option``, the value and the valid range.
    """
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or value < minimum:
        raise ConfigError(f"{_shown(option, value)} is out of range; give an int ≥ {minimum}{hint}.")


def check_fraction(option: str, value: Any) -> None:
    """Raise unless ``0 ≤ value < 1`` (NaN refused).

    Raises:
        ConfigError: names ``option``, the value and the valid range.
    """
    try:
        valid = 0 <= float(value) < 1
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(f"{_shown(option, value)} is out of range; give a fraction of the tile in [0, 1), e.g. 0.25.")


def check_device(device: str | torch.device | None, option: str = "device") -> torch.device | None:
    """``device`` as a :class:`torch.device` (None stays None), checked to exist on this machine.

    Raises:
        ConfigError: not a device string, or a CUDA / MPS device that is not available here.
    """
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(
            f"{_shown(option, device)} is not a torch device; give cpu, cuda, cuda:N (N: GPU index) or mps."
        ) from error
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(resolved.type)
    if available is not None and not available():
        check = "torch.cuda.is_available()" if resolved.type == "cuda" else "torch.backends.mps.is_available()"
        raise ConfigError(
            f"{_shown(option, device)}, but no {resolved.type.upper()} GPU is visible ({check} is False); "
            f"pass {_shown(option, 'cpu')}, or leave {option} out to use a GPU only when there is one."
        )
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(
            f"{_shown(option, device)}, but only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
            f"give an index below {torch.cuda.device_count()}."
        )
    return resolved


def nonfinite_pixels(array: np.ndarray) -> int:
    """The number of pixels of a ``[C, H, W]`` array with a NaN or ±inf value in any channel.

    One ``np.isfinite`` pass for float arrays; integer arrays cannot hold NaN and give 0 at once.
    """
    if array.dtype.kind not in "fc":
        return 0
    return int(np.count_nonzero(~np.isfinite(array).all(axis=0)))


def nonfinite_message(what: str, count: int) -> str:
    """The error message for ``count`` NaN or infinite pixels in ``what`` (e.g. "image 'a.tif'")."""
    return (
        f"{what} has {count} NaN or infinite pixel{'s' if count != 1 else ''}, which would make every "
        "probability NaN; replace them first, e.g. numpy.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0) "
        "for an image in [0, 1]."
    )


def _stitched(
    scores: torch.Tensor, source: Any, plan_y: AxisPlan, plan_x: AxisPlan, options: StitchOptions
) -> np.ndarray:
    """``scores`` of the one tile of ``source`` blended by ``iter_bands``, as :meth:`Predictor.predict` does."""
    out = None
    for row0, band in iter_bands(lambda _tiles: scores, source, plan_y, plan_x, options):
        if out is None:
            out = np.empty((band.shape[0], source.shape[1], band.shape[2]), dtype=np.float32)
        out[:, row0 : row0 + band.shape[1]] = band
    return out
