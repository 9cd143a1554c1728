"""Augmentation that moves image and mask together, on torchvision.transforms.v2.

``build_transforms(preset, crop_size)`` returns a callable ``(image, mask[, instances])`` →
the same, transformed. Images are wrapped as ``tv_tensors.Image`` and masks as ``tv_tensors.Mask``,
so every geometric transform samples its parameters once and applies them to both; masks are
always resampled with nearest-neighbour interpolation (torchvision's mask kernels) and stay
integer. Pixels that a geometric transform brings in from outside the image are filled with
``image_fill`` in the image, ``ignore_index`` in the mask and 0 (background) in instance labels.

Presets:
    ``none``: nothing (a random crop only if ``crop_size`` is given; validation uses no crop).
    ``light``: horizontal and vertical flips, random 90° rotations (+ random crop).
    ``strong``: ``light`` + random scale/rotation (``RandomAffine``), the U-Net paper's elastic
    deformation (:class:`RandomElasticGrid`), brightness/contrast/gamma jitter, Gaussian blur and
    Gaussian noise. The intensity transforms here work for any channel count (``v2.ColorJitter``
    takes only 1 or 3 channels) and expect images scaled to about ``[0, 1]``.

Composable from config: a list of preset names and ``{"name": ..., **kwargs}`` dicts naming any
``torchvision.transforms.v2`` class or one of this module's (:data:`CUSTOM_TRANSFORMS`), e.g.
``["light", {"name": "RandomElasticGrid", "sigma": 8, "p": 0.5}]``; a transform with a ``fill``
parameter gets the image/mask fill above unless the dict sets one, and transforms with an ``interpolation``
parameter get bilinear (for the image; masks always use nearest) unless the dict sets one, and
``RandomApply``-style ``transforms`` lists are built recursively.

Rare-class crop sampling (``crop_sampling``, :class:`RandomClassCrop`): where a training crop is cut::

    uniform         every position equally likely (torchvision's RandomCrop)
    class_balanced  in training (ClassPresence of the training masks given): with probability ratio,
                    a class drawn uniformly among the training set's classes, an image holding it,
                    one of its pixels, the crop centred on it (clamped to the padded image); else a
                    uniform image and crop. Alone (no ClassPresence): a class present in this mask.
    rare_class      as class_balanced over the training set, classes drawn by DAFormer's rare class
                    sampling, p(c) ∝ exp((1 - pixel frequency of c) / 0.01)
    foreground      with probability ratio: a pixel of any class but 0 (background), crop centred on it

    pipeline: [MirrorPad] -> crop (uniform or RandomClassCrop) -> preset / listed transforms
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pixelwise.errors import ConfigError, ShapeError, check_choice, unknown_name
from pixelwise.modes import IGNORE_INDEX

PRESETS = ("none", "light", "strong")
CropSampling = Literal["uniform", "class_balanced", "rare_class", "foreground"]
"""Where a random training crop is cut (see :class:`RandomClassCrop`)."""
CROP_SAMPLINGS: tuple[CropSampling, ...] = typing.get_args(CropSampling)
DEFAULT_CROP_SAMPLING_RATIO = 0.5
"""Share of crops centred on a chosen pixel (the rest uniform): MONAI's RandCropByPosNegLabel default
``pos=1, neg=1`` and nnU-Net's foreground oversampling (a third of each batch) lie around it."""
DATA_SET_SAMPLINGS = ("class_balanced", "rare_class")
"""The crop samplings that draw classes over the whole training set (see :class:`ClassPresence`)."""
RARE_CLASS_TEMPERATURE = 0.01
"""``T`` of rare class sampling, ``p(c) ∝ exp((1 - f_c) / T)``: DAFormer's value. Classes under about 1 % of
the pixels share most draws; a class at 5 % gets e^-4 of the rarest's."""
BACKGROUND = 0
"""The class that ``foreground`` sampling does not centre on."""
ELASTIC_GRID = 3
"""U-Net paper: displacements sampled on a coarse 3 x 3 grid ..."""
ELASTIC_SIGMA_PX = 10.0
"""... from a Gaussian with 10 pixels standard deviation, then interpolated bicubically to every pixel."""


class InstanceMask(tv_tensors.Mask):
    """Instance labels: a mask (nearest interpolation) whose fill is 0, background, instead of ignore_index."""


class _RandomImageTransform(v2.Transform):
    """Base of the image-only transforms: applied with probability ``p``; masks pass through unchanged."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{type(self).__name__}: p must be a probability in [0, 1], got {p}.")
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"apply": bool(torch.rand(()) < self.p), **self.sample()}

    def sample(self) -> dict[str, Any]:
        return {}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"] or isinstance(inpt, tv_tensors.Mask) or not isinstance(inpt, torch.Tensor):
            return inpt
        return tv_tensors.wrap(self.apply(inpt.as_subclass(torch.Tensor), params), like=inpt)

    def apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


class RandomBrightness(_RandomImageTransform):
    """Add ``U(-delta, delta)`` to every pixel of every channel."""

    def __init__(self, delta: float = 0.1, p: float = 0.5) -> None:
        super().__init__(p)
        self.delta = delta

    def sample(self) -> dict[str, Any]:
        return {"shift": _uniform(-self.delta, self.delta)}

    def apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return image + params["shift"]


class RandomContrast(_RandomImageTransform):
    """Scale deviations from the image mean by ``U(1 - amount, 1 + amount)`` (one mean over all channels)."""

    def __init__(self, amount: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p)
        self.amount = amount

    def sample(self) -> dict[str, Any]:
        return {"factor": _uniform(1 - self.amount, 1 + self.amount)}

    def apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        mean = image.mean(dim=(-3, -2, -1), keepdim=True)
        return mean + (image - mean) * params["factor"]


class RandomGamma(_RandomImageTransform):
    """Raise the image (negative values clamped to 0) to a power drawn log-uniformly from ``gamma``."""

    def __init__(self, gamma: Sequence[float] = (0.7, 1.5), p: float = 0.5) -> None:
        super().__init__(p)
        if len(gamma) != 2 or min(gamma) <= 0:
            raise ConfigError(f"RandomGamma: gamma must be (low, high) with low > 0, got {gamma!r}.")
        self.gamma = tuple(gamma)

    def sample(self) -> dict[str, Any]:
        return {"gamma": math.exp(_uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))}

    def apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return image.clamp_min(0) ** params["gamma"]


class RandomGaussianNoise(_RandomImageTransform):
    """Add zero-mean Gaussian noise with a standard deviation drawn from ``U(0, sigma)``; no clipping."""

    def __init__(self, sigma: float = 0.03, p: float = 0.5) -> None:
        super().__init__(p)
        self.sigma = sigma

    def sample(self) -> dict[str, Any]:
        return {"sigma": _uniform(0.0, self.sigma)}

    def apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return image + params["sigma"] * torch.randn_like(image)


class RandomRot90(v2.Transform):
    """Rotate image and masks together by 0, 90, 180 or 270 degrees (H and W swap for odd turns)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"turns": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or params["turns"] == 0:
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt.as_subclass(torch.Tensor), params["turns"], dims=(-2, -1)), like=inpt)


class RandomElasticGrid(v2.Transform):
    """The U-Net paper's elastic deformation, applied to image and masks together.

    Random displacement vectors on a coarse ``grid x grid`` grid, drawn from a Gaussian with
    ``sigma`` pixels standard deviation, interpolated bicubically to a smooth per-pixel field
    (Ronneberger et al. 2015: 3 x 3 grid, 10 px). Unlike ``v2.ElasticTransform`` (Simard's
    per-pixel noise blurred by a Gaussian), the strength does not depend on the image size.

    Args:
        grid: coarse grid points per side.
        sigma: standard deviation of the displacements, in pixels.
        p: probability of deforming a sample.
        fill: value for pixels pulled in from outside, per tv_tensor type (see ``v2.RandomAffine``).
    """

    def __init__(
        self, grid: int = ELASTIC_GRID, sigma: float = ELASTIC_SIGMA_PX, p: float = 0.5, fill: Any = 0
    ) -> None:
        super().__init__()
        if grid < 2:
            raise ConfigError(f"RandomElasticGrid: grid must be at least 2, got {grid}.")
        self.grid, self.sigma, self.p, self.fill = int(grid), float(sigma), p, fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        if not bool(torch.rand(()) < self.p):
            return {"displacement": None}
        coarse = torch.randn(1, 2, self.grid, self.grid) * self.sigma
        pixels = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
        # grid_sample coordinates span [-1, 1] over the image: one pixel is 2 / size
        scale = torch.tensor([2.0 / width, 2.0 / height]).view(1, 2, 1, 1)
        return {"displacement": (pixels * scale).permute(0, 2, 3, 1)}  # [1, H, W, 2] as (dx, dy)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["displacement"] is None:
            return inpt
        return self._call_kernel(TF.elastic, inpt, params["displacement"], fill=_fill_for(self.fill, inpt))


def mirror_index(start: int, stop: int, size: int) -> np.ndarray:
    """Indices into an axis of length ``size`` for positions ``start ≤ i < stop``, reflected at
    both ends (``-1 → 1``, ``size → size - 2``) as often as needed; all 0 when ``size == 1``."""
    positions = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = positions % period
    return np.where(folded < size, folded, period - folded)


def shift_image(image: torch.Tensor, offset: Sequence[float]) -> torch.Tensor:
    """Translate ``image`` (``[..., H, W]``) by ``offset = (dy, dx)`` pixels, sub-pixel steps included:
    ``out[y, x] = image[y - dy, x - dx]``, linearly interpolated, edge pixels repeated beyond the border.

    The registration of images onto masks drawn ``mask_offset`` away from the structures they mark
    (:attr:`pixelwise.training.TrainConfig.mask_offset`): ``shift_image(image, mask_offset)``
    moves what the image shows to where its mask puts it. Made of padding and slicing only, so it
    also runs inside an exported ONNX graph.
    """
    out = image
    for dim, step in ((-2, float(offset[0])), (-1, float(offset[1]))):
        if step == 0:
            continue
        whole = math.floor(-step)  # out[i] = (1 - f)·image[i + whole] + f·image[i + whole + 1]
        fraction = -step - whole
        reach = abs(whole) + 1
        pad = [0, 0, 0, 0]
        pad[0 if dim == -1 else 2 : 2 if dim == -1 else 4] = [reach, reach]
        padded = F.pad(out[None] if out.ndim == 2 else out, pad, mode="replicate")
        padded = padded[0] if out.ndim == 2 else padded
        length = out.shape[dim]
        low = padded.narrow(dim, reach + whole, length)
        out = low if fraction == 0 else (1 - fraction) * low + fraction * padded.narrow(dim, reach + whole + 1, length)
    return out


class MirrorPad(v2.Transform):
    """Pad by ``border`` pixels on every side: the image mirrored (as ``numpy.pad(mode="reflect")``,
    repeated for images smaller than the border), masks with ``fill`` (``ignore_index``; instances 0).

    The U-Net paper's context for pixels near the image border: a valid-convolution model
    (:class:`pixelwise.UNet2015`) sees ``border`` pixels beyond its output tile, mirrored where the
    image ends, while the padded mask keeps those pixels out of the loss.
    """

    def __init__(self, border: int, fill: Any = 0) -> None:
        super().__init__()
        if isinstance(border, bool) or int(border) != border or border < 0:
            raise ConfigError(f"MirrorPad: border must be an int ≥ 0, got {border!r}.")
        self.border, self.fill = int(border), fill

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or not self.border:
            return inpt
        b = self.border
        if isinstance(inpt, tv_tensors.Mask):
            padded = F.pad(inpt.as_subclass(torch.Tensor), (b, b, b, b), value=_fill_for(self.fill, inpt))
            return tv_tensors.wrap(padded, like=inpt)
        height, width = inpt.shape[-2:]
        rows = torch.from_numpy(mirror_index(-b, height + b, height))
        cols = torch.from_numpy(mirror_index(-b, width + b, width))
        return tv_tensors.wrap(inpt.as_subclass(torch.Tensor)[..., rows, :][..., cols], like=inpt)


@dataclasses.dataclass(frozen=True)
class ClassPresence:
    """Which training images hold which classes, and how often to centre a crop on each class: what
    data-set-level rare-class sampling needs.

    A class ``c`` is drawn with probability ``class_probability[c]``, then an image that holds it, then
    one of its pixels, and the crop is centred there. ``class_balanced`` draws classes uniformly
    (class-uniform sampling, Zhu et al., CVPR 2019, for Cityscapes); ``rare_class`` draws them with
    DAFormer's rare class sampling (Hoyer et al., CVPR 2022), ``p(c) ∝ exp((1 - f_c) / T)`` over the
    pixel frequencies ``f_c``. The draw factors into two independent parts, so the sampler and the crop
    transform share no state; a crop in a share ``ratio`` of the samples is centred on class ``c`` with
    probability ``ratio * p(c)``::

        image i drawn with weight  w_i = (1 - ratio) / N + ratio * q_i,  q_i = sum over c in i of p(c) / N_c
        its crop centred with      probability ratio * q_i / w_i,
          on class c in i with     probability (p(c) / N_c) / q_i

    where ``N`` is the number of images and ``N_c`` the number holding class ``c``.

    Attributes:
        present: ``bool [N, K]``, image ``i`` holds a pixel of class ``c`` (``ignore_index`` excluded).
        class_probability: ``float64 [K]``, ``p(c)``: sums to 1, 0 for a class in no image.
    """

    present: np.ndarray
    class_probability: np.ndarray

    @property
    def class_weights(self) -> np.ndarray:
        """``float64 [K]``: ``p(c) / N_c`` (0 for a class in no image)."""
        holding = self.present.sum(axis=0)
        return np.divide(self.class_probability, holding, out=np.zeros(holding.shape), where=holding > 0)

    def image_weights(self, ratio: float) -> np.ndarray:
        """``float64 [N]``: the probability of drawing each image (sums to 1)."""
        return (1.0 - ratio) / len(self.present) + ratio * (self.present @ self.class_weights)

    def centre_probability(self, classes: np.ndarray, ratio: float) -> float:
        """Probability that a crop of an image holding ``classes`` (ids) is centred on a chosen class."""
        chosen = ratio * float(self.class_weights[classes].sum())
        return chosen / ((1.0 - ratio) / len(self.present) + chosen) if chosen > 0 else 0.0


def class_presence(
    masks: Iterable[np.ndarray | torch.Tensor], num_classes: int, sampling: str = "class_balanced"
) -> ClassPresence:
    """:class:`ClassPresence` of masks of class ids (values outside ``0..num_classes-1`` are not classes).

    Args:
        masks: ``[H, W]`` class ids per image, read once.
        num_classes: K.
        sampling: ``class_balanced`` (every class present equally often) or ``rare_class`` (DAFormer's
            ``exp((1 - f_c) / RARE_CLASS_TEMPERATURE)``).
    """
    check_choice("crop_sampling", sampling, DATA_SET_SAMPLINGS)
    rows = [_class_pixels(np.asarray(mask), num_classes) for mask in masks]
    pixels = np.stack(rows) if rows else np.zeros((0, num_classes), dtype=np.int64)
    present, total = pixels > 0, pixels.sum(axis=0)
    seen = total > 0
    scores = np.zeros(num_classes)
    if sampling == "rare_class":
        frequency = total / max(total.sum(), 1)
        scores[seen] = np.exp((frequency[seen] - frequency[seen].min()) / -RARE_CLASS_TEMPERATURE)
    else:
        scores[seen] = 1.0
    return ClassPresence(present, scores / scores.sum() if seen.any() else scores)


def _class_pixels(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """``int64 [num_classes]``: the pixels of each class in ``mask``."""
    values = mask.ravel()
    return np.bincount(values[(values >= 0) & (values < num_classes)], minlength=num_classes)[:num_classes]


class RandomClassCrop(v2.RandomCrop):
    """A random crop that contains a chosen class's pixel in a set share of samples (rare-class sampling).

    Each call first draws torchvision's uniform crop (``v2.RandomCrop(size, pad_if_needed=True)``:
    images smaller than ``size`` are padded, image ``fill``, mask ``ignore_index``, instances 0).
    Then, with probability ``ratio``, a pixel is chosen and the crop is moved so that it is centred
    on that pixel (top-left corner ``pixel - size // 2``), clamped to lie inside the (padded) image,
    as MONAI's ``RandCropByLabelClasses`` / ``RandCropByPosNegLabel`` do; the pixel is therefore
    always inside the crop. The pixel:

    - ``class_balanced`` with ``presence`` (training: the :class:`ClassPresence` of the training masks,
      with images drawn by its ``image_weights``): class-uniform sampling over the data set. The crop
      is centred with probability ``presence.centre_probability`` on a class present in this mask,
      drawn with weight ``1 / N_c`` (images holding it), so that ``ratio / K'`` of all crops are
      centred on each class, however rare (see :class:`ClassPresence`).
    - ``class_balanced`` alone: with probability ``ratio``, a class drawn uniformly among the classes
      present in this mask (``ignore_index`` excluded), then one of its pixels uniformly (MONAI's
      ``RandCropByLabelClasses`` with equal ``ratios``). On data whose images each hold many classes
      (CamVid: about ten) a rare class gains little this way; the data-set-level form is the one
      training uses.
    - ``rare_class`` (``presence`` required): as ``class_balanced`` with ``presence``, classes drawn by
      DAFormer's rare class sampling, weighted towards the classes with the fewest pixels.
    - ``foreground``: a pixel uniformly among those of classes other than ``BACKGROUND`` (0) and
      ``ignore_index`` (MONAI's ``RandCropByPosNegLabel`` with ``pos / (pos + neg) = ratio``).

    A mask with no such pixel gets the uniform crop. Mask pixels set to ``ignore_index`` by an earlier
    :class:`MirrorPad` are never chosen, so with a valid-convolution model the chosen pixel also lies
    inside the output tile (the crop's centre, at least ``border`` pixels from its edges). Only the
    semantic mask (``tv_tensors.Mask``, not :class:`InstanceMask`) is looked at; image, mask and
    instance labels are cut at the same window. Random numbers come from torch's global generator,
    so seeds and DataLoader workers repeat exactly.

    Unlike MMSeg's ``RandomCrop(cat_max_ratio=...)`` (re-draws up to 10 uniform crops until no class
    covers more than that share), this chooses the crop from the mask directly and needs no retries.

    Args:
        size: crop size, ``int`` or ``(H, W)``.
        sampling: ``class_balanced``, ``rare_class`` or ``foreground`` (``uniform`` is plain ``v2.RandomCrop``).
        ratio: probability in ``[0, 1]`` that a crop is centred on a chosen pixel.
        ignore_index: mask value never chosen (None: 255).
        fill: padding value per tv_tensor type (as ``v2.RandomCrop``).
        presence: the training set's :class:`ClassPresence` (``class_balanced``, ``rare_class``): draw
            classes over the data set, not within each image.

    Raises:
        ConfigError: unknown ``sampling`` (with the closest names) or ``ratio`` outside ``[0, 1]``.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        sampling: str = "class_balanced",
        ratio: float = DEFAULT_CROP_SAMPLING_RATIO,
        ignore_index: int | None = IGNORE_INDEX,
        fill: Any = 0,
        presence: ClassPresence | None = None,
    ) -> None:
        super().__init__(size, pad_if_needed=True, fill=fill)
        check_choice("crop_sampling", sampling, CROP_SAMPLINGS)
        check_probability("crop_sampling_ratio", ratio)
        self.sampling, self.ratio = sampling, float(ratio)
        self.ignore_index = IGNORE_INDEX if ignore_index is None else int(ignore_index)
        if sampling == "rare_class" and presence is None:
            raise ConfigError(
                "crop_sampling='rare_class' draws classes by their pixel frequency over the training set: pass "
                "presence=class_presence(masks, num_classes, 'rare_class') (training does), or use 'class_balanced'."
            )
        self.presence = presence if sampling in DATA_SET_SAMPLINGS else None

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # torchvision's own parameters give the padding (pad_if_needed); only the position may change
        params = super().make_params(flat_inputs)
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask) and not isinstance(x, InstanceMask)]
        if self.presence is not None:
            pixel = self._choose_over_data_set(masks[0].as_subclass(torch.Tensor)) if masks else None
        elif self.sampling == "uniform" or not bool(torch.rand(()) < self.ratio):
            return params
        else:
            pixel = self.choose_pixel(masks[0].as_subclass(torch.Tensor)) if masks else None
        if pixel is None:
            return params
        pad_left, pad_top, pad_right, pad_bottom = params["padding"]
        height, width = v2.query_size(flat_inputs)
        params["top"] = _centred_start(pixel[0] + pad_top, params["height"], height + pad_top + pad_bottom)
        params["left"] = _centred_start(pixel[1] + pad_left, params["width"], width + pad_left + pad_right)
        return params

    def choose_pixel(self, mask: torch.Tensor) -> tuple[int, int] | None:
        """The ``(row, column)`` to centre on, drawn as ``sampling`` says; None when the mask has no candidate.

        Shape:
            ``mask``: ``[H, W]`` (or ``[..., H, W]``: the first plane is used).
        """
        # NumPy, single-threaded: torch's threaded kernels (nonzero, bincount) take tens of milliseconds
        # on a CamVid-sized mask when the loader shares the cores with training; the draws stay torch's
        labels = mask.reshape(-1, *mask.shape[-2:])[0].cpu().numpy()
        flat = labels.ravel().astype(np.int64, copy=False)
        if self.sampling == "foreground":
            candidates = (flat != self.ignore_index) & (flat != BACKGROUND)
        else:
            low = int(flat.min())  # bincount needs values ≥ 0
            counts = np.bincount(flat - low)
            if 0 <= self.ignore_index - low < counts.size:
                counts[self.ignore_index - low] = 0
            present = np.flatnonzero(counts)
            if present.size == 0:
                return None
            candidates = flat == int(present[int(torch.randint(present.size, ()))]) + low
        positions = np.flatnonzero(candidates)
        if positions.size == 0:
            return None
        index = int(positions[int(torch.randint(positions.size, ()))])
        return divmod(index, labels.shape[-1])

    def _choose_over_data_set(self, mask: torch.Tensor) -> tuple[int, int] | None:
        """The pixel to centre on under class-uniform sampling over the data set (None: a uniform crop)."""
        labels = mask.reshape(-1, *mask.shape[-2:])[0].cpu().numpy()
        weights = self.presence.class_weights
        present = np.flatnonzero((_class_pixels(labels, len(weights)) > 0) & (weights > 0))
        if present.size == 0 or not bool(torch.rand(()) < self.presence.centre_probability(present, self.ratio)):
            return None
        cumulative = np.cumsum(weights[present])
        chosen = int(
            present[min(np.searchsorted(cumulative, float(torch.rand(())) * cumulative[-1], "right"), present.size - 1)]
        )
        positions = np.flatnonzero(labels.ravel() == chosen)
        index = int(positions[int(torch.randint(positions.size, ()))])
        return divmod(index, labels.shape[-1])


def _centred_start(position: int, size: int, extent: int) -> int:
    """First index of a window of ``size`` centred on ``position`` and kept inside ``[0, extent)``."""
    return min(max(position - size // 2, 0), extent - size)


def check_probability(option: str, value: float) -> None:
    """Raise ConfigError naming ``option`` unless ``value`` is a number in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{option}={value!r} must be a probability in [0, 1] (e.g. {option}: 0.5).")


def _fill_for(fill: Any, inpt: Any) -> Any:
    """The fill for ``inpt`` from a number or a ``{type: value}`` dict (nearest type in the MRO, else "others")."""
    if not isinstance(fill, dict):
        return fill
    for cls in type(inpt).__mro__:
        if cls in fill:
            return fill[cls]
    return fill.get("others")


CUSTOM_TRANSFORMS: dict[str, type[v2.Transform]] = {
    cls.__name__: cls
    for cls in (
        RandomRot90,
        RandomElasticGrid,
        RandomBrightness,
        RandomContrast,
        RandomGamma,
        RandomGaussianNoise,
        MirrorPad,
    )
}


def _torchvision_transforms() -> dict[str, type[v2.Transform]]:
    return {
        name: obj
        for name, obj in vars(v2).items()
        if inspect.isclass(obj) and issubclass(obj, v2.Transform) and not name.startswith("_")
    }


def _preset(name: str, fill: dict) -> list[dict[str, Any]]:
    light = [
        {"name": "RandomHorizontalFlip", "p": 0.5},
        {"name": "RandomVerticalFlip", "p": 0.5},
        {"name": "RandomRot90"},
    ]
    if name == "none":
        return []
    if name == "light":
        return light
    affine = {"name": "RandomAffine", "degrees": 20, "scale": (0.8, 1.25), "fill": fill}
    return [
        *light,
        {"name": "RandomApply", "transforms": [affine], "p": 0.5},
        {"name": "RandomElasticGrid", "p": 0.5},
        {"name": "RandomBrightness", "delta": 0.1},
        {"name": "RandomContrast", "amount": 0.2},
        {"name": "RandomGamma", "gamma": (0.7, 1.5)},
        {
            "name": "RandomApply",
            "transforms": [{"name": "GaussianBlur", "kernel_size": 5, "sigma": (0.1, 1.0)}],
            "p": 0.25,
        },
        {"name": "RandomGaussianNoise", "sigma": 0.03, "p": 0.5},
    ]


def _build(spec: Any, fill: dict) -> list[v2.Transform]:
    """Turn one config entry (preset name, transform name, or ``{"name": ..., **kwargs}``) into transforms."""
    if isinstance(spec, v2.Transform):
        return [spec]
    if isinstance(spec, str):
        if spec in PRESETS:
            return [t for entry in _preset(spec, fill) for t in _build(entry, fill)]
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(
            f"augmentation entry {spec!r} is not understood; give a preset ({', '.join(PRESETS)}), a transform "
            "name, or a dict like {'name': 'RandomHorizontalFlip', 'p': 0.5}."
        )
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    known = {**_torchvision_transforms(), **CUSTOM_TRANSFORMS}
    if name not in known:
        raise unknown_name(
            "transform", name, known, hint="Names are torchvision.transforms.v2 classes or pixelwise's own."
        )
    cls = known[name]
    parameters = inspect.signature(cls).parameters
    if "fill" in parameters and "fill" not in kwargs:
        kwargs["fill"] = dict(fill)  # torchvision converts the values in place: give each transform its own
    if "interpolation" in parameters and "interpolation" not in kwargs:
        # RandomAffine / RandomRotation default to nearest; images deserve bilinear (masks stay nearest anyway)
        kwargs["interpolation"] = v2.InterpolationMode.BILINEAR
    if isinstance(kwargs.get("transforms"), list):  # RandomApply / RandomChoice / RandomOrder / Compose
        kwargs["transforms"] = [t for entry in kwargs["transforms"] for t in _build(entry, fill)]
    try:
        return [cls(**kwargs)]
    except (TypeError, ValueError) as error:
        accepted = ", ".join(p for p in parameters if p not in ("self", "args", "kwargs"))
        raise ConfigError(
            f"cannot build transform {name} from {spec!r}: {error}. {name} accepts: {accepted}."
        ) from error


class SegmentationTransform:
    """A composed augmentation pipeline applied to an image and its masks together.

    Call as ``transform(image, mask)`` → ``(image, mask)`` or ``transform(image, mask, instances)``
    → ``(image, mask, instances)``.

    Shape:
        ``image``: float ``[C, H, W]``; ``mask``: integer ``[H, W]`` (returned as int64);
        ``instances``: integer ``[H, W]`` (returned as int32). Output H, W may differ from the input's
        (crops, 90° rotations of non-square images).

    Raises:
        ShapeError: image and masks do not share H and W.
    """

    def __init__(self, transforms: list[v2.Transform]) -> None:
        self.transforms = list(transforms)
        self.pipeline = v2.Compose(self.transforms) if self.transforms else v2.Identity()

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, instances: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        same = instances is None or instances.shape == mask.shape
        if image.ndim != 3 or mask.shape != image.shape[1:] or not same:
            shapes = f"image {list(image.shape)}, mask {list(mask.shape)}" + (
                f", instances {list(instances.shape)}" if instances is not None else ""
            )
            raise ShapeError(f"augmentation expects image [C, H, W] and masks [H, W] of the same size; got {shapes}.")
        inputs = [tv_tensors.Image(image), tv_tensors.Mask(mask)]
        if instances is not None:
            inputs.append(InstanceMask(instances))
        if self.transforms:
            inputs = self.pipeline(*inputs)
        out = [t.as_subclass(torch.Tensor) for t in inputs]
        out[1] = out[1].long()
        if instances is not None:
            out[2] = out[2].int()
        return tuple(out)

    def __repr__(self) -> str:
        return f"SegmentationTransform({self.pipeline!r})"


def build_transforms(
    preset: str | dict | list = "none",
    crop_size: int | tuple[int, int] | None = None,
    ignore_index: int = IGNORE_INDEX,
    image_fill: float = 0.0,
    mirror_border: int = 0,
    crop_sampling: str = "uniform",
    crop_sampling_ratio: float = DEFAULT_CROP_SAMPLING_RATIO,
    class_presence: ClassPresence | None = None,
) -> SegmentationTransform:
    """Build an augmentation pipeline from a preset name or a config list (see the module docstring).

    Args:
        preset: ``"none"``, ``"light"``, ``"strong"``, one ``{"name": ..., **kwargs}`` dict, or a list of those.
        crop_size: if given, a random crop of this size (``int`` or ``(H, W)``) comes first, padding images
            smaller than it (image ``image_fill``, mask ``ignore_index``). Use it for training, not for validation.
        ignore_index: mask value of pixels brought in by padding, rotation, scaling and elastic deformation.
        image_fill: image value of those pixels.
        mirror_border: mirror-pad images by this many pixels first (:class:`MirrorPad`; masks get
            ``ignore_index``): the context a valid-convolution model (UNet2015) needs around its
            output tile, as in the U-Net paper. ``crop_size`` is then the model's input tile.
        crop_sampling: where the crop is cut: ``uniform`` (torchvision's ``RandomCrop``, exactly as
            before), ``class_balanced`` or ``foreground`` (rare-class sampling, see :class:`RandomClassCrop`).
        crop_sampling_ratio: share of crops centred on a chosen pixel (``class_balanced``, ``foreground``).
        class_presence: the training set's :class:`ClassPresence`: ``class_balanced`` then samples classes
            over the data set (draw the images with its ``image_weights``), not within each image.

    Returns:
        A :class:`SegmentationTransform`.

    Raises:
        ConfigError: unknown preset or transform name (with the closest names), bad transform arguments,
            unknown ``crop_sampling``, ``crop_sampling_ratio`` outside ``[0, 1]``, or a crop sampling
            other than ``uniform`` without ``crop_size``.

    Example:
        >>> augment = build_transforms("strong", crop_size=64)
        >>> image, mask = augment(torch.rand(3, 100, 90), torch.zeros(100, 90, dtype=torch.int64))
        >>> image.shape, mask.shape, mask.dtype
        (torch.Size([3, 64, 64]), torch.Size([64, 64]), torch.int64)
    """
    fill = {tv_tensors.Image: image_fill, tv_tensors.Mask: ignore_index, InstanceMask: 0}
    entries = preset if isinstance(preset, list) else [preset]
    for entry in entries:
        if (
            isinstance(entry, str)
            and entry not in PRESETS
            and entry not in {**_torchvision_transforms(), **CUSTOM_TRANSFORMS}
        ):
            raise unknown_name("augmentation preset or transform", entry, [*PRESETS, *CUSTOM_TRANSFORMS])
    transforms: list[v2.Transform] = [MirrorPad(mirror_border, fill)] if mirror_border else []
    transforms += _crop(crop_size, crop_sampling, crop_sampling_ratio, ignore_index, fill, class_presence)
    for entry in entries:
        transforms += _build(entry, fill)
    return SegmentationTransform(transforms)


def _crop(
    crop_size: int | tuple[int, int] | None,
    sampling: str,
    ratio: float,
    ignore_index: int,
    fill: dict,
    presence: ClassPresence | None = None,
) -> list[v2.Transform]:
    """The training crop: none, torchvision's uniform ``RandomCrop``, or a :class:`RandomClassCrop`."""
    check_choice("crop_sampling", sampling, CROP_SAMPLINGS)
    check_probability("crop_sampling_ratio", ratio)
    if crop_size is None:
        if sampling != "uniform":
            raise ConfigError(f"crop_sampling={sampling!r} needs a crop size (--crop N); or use crop_sampling=uniform.")
        return []
    if sampling == "uniform":  # the crop of earlier versions, same random numbers: earlier runs reproduce
        return [v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill)]
    return [RandomClassCrop(crop_size, sampling, ratio, ignore_index, fill=fill, presence=presence)]
