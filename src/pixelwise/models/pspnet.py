"""PSPNet (Zhao et al. 2017): a pyramid pooling module on the deepest encoder feature adds
global context at several scales; the prediction is upsampled from that single stride."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import ConvBnAct, NormSpec, check_head_upsampling, resolve_norm
from pixelwise.models.encoders import TimmEncoder, WeightsSpec
from pixelwise.models.registry import register_model


class PyramidPoolingModule(nn.Module):
    """Per bin size ``b``, ``AdaptiveAvgPool(b) → 1×1 ConvBnAct`` upsampled back to the input size
    (bilinear, corners aligned as in SMP), concatenated, followed by the input itself (SMP's order).

    Each branch has ``in_channels // len(bins)`` channels, so the output has about ``2·in_channels``.

    Shape: ``[N, C, h, w] → [N, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, bins: Sequence[int], branch_norm: NormSpec = False) -> None:
        super().__init__()
        branch_channels = max(in_channels // len(bins), 1)
        # The bin-1 branch is a 1×1 map: BatchNorm sees one value per channel there and raises in train mode
        # with batch size 1, so it never gets a normalisation (a biased conv instead), as in SMP. The other
        # branches get ``branch_norm``: none by default (their statistics are noisy), SMP normalises them.
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                ConvBnAct(in_channels, branch_channels, 1, use_batchnorm=branch_norm if b > 1 else False),
            )
            for b in bins
        )
        self.out_channels = in_channels + len(bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=True) for branch in self.branches]
        return torch.cat([*pooled, x], dim=1)


class PSPDecoder(nn.Sequential):
    """Pyramid pooling on the deepest feature → 1×1 ConvBnAct to ``out_channels`` → Dropout2d.

    The output keeps the deepest feature's stride (:attr:`output_stride`).

    Shape: features shallow to deep → ``[N, out_channels, H / output_stride, W / output_stride]``.
    """

    def __init__(
        self,
        encoder: TimmEncoder,
        bins: Sequence[int],
        out_channels: int,
        use_batchnorm: NormSpec,
        dropout: float,
        branch_norm: NormSpec = False,
    ) -> None:
        bins = tuple(bins)
        if not bins or not all(isinstance(b, int) and b >= 1 for b in bins):
            raise ConfigError(f"psp_bins={bins!r} must be one or more positive integers, e.g. (1, 2, 3, 6).")
        ppm = PyramidPoolingModule(encoder.out_channels[-1], bins, branch_norm)
        super().__init__(
            ppm, ConvBnAct(ppm.out_channels, out_channels, 1, use_batchnorm=use_batchnorm), nn.Dropout2d(dropout)
        )
        self.out_channels = out_channels
        self.output_stride = encoder.reductions[-1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(features[-1])


@register_model("pspnet")
class PSPNet(EncoderDecoderModel):
    """PSPNet: encoder → pyramid pooling module → 1×1 conv → 3×3 conv head → bilinear upsampling.

    With ``psp_branch_norm=True`` it is segmentation_models_pytorch 0.6's ``PSPNet`` exactly (same layers,
    parameters and order of operations in the decoder and head; SMP's encoder also keeps the unused
    stages deeper than ``encoder_depth``, pixelwise's does not).

    Args:
        encoder_depth: the default 3 pools features of stride 8, as segmentation_models_pytorch does.
        psp_bins: output sizes of the pyramid's adaptive average poolings (SMP: always ``(1, 2, 3, 6)``).
        psp_out_channels: channels after the pyramid pooling module's 1×1 projection.
        psp_use_batchnorm: BatchNorm in that projection (the bool form of ``decoder_use_norm``).
        psp_dropout: Dropout2d probability before the head.
        decoder_use_norm: SMP 0.6's normalisation option (``"batchnorm"``, ``"identity"``, ``"layernorm"``,
            ``"instancenorm"``, ``"inplace"``, a bool or a dict ``{"type": ..., **options}``) for the
            projection and, with ``psp_branch_norm``, the pooled branches. None (default):
            ``psp_use_batchnorm`` decides; given, it wins (``psp_use_batchnorm=False`` with a normalising
            ``decoder_use_norm`` is a ConfigError).
        psp_branch_norm: also normalise the pooled branches larger than 1×1, as SMP does (the 1×1 branch
            never is); False (default) keeps them unnormalised, which trains more steadily at batch size 1.
        upsampling: the head's bilinear upsampling factor; it must be the deepest stride (SMP's default 8
            at ``encoder_depth=3``) so that the output has the input's size. None (default): that stride.
        aux_head: add an auxiliary FCN head (3×3 conv-BN-ReLU, dropout 0.1, 1×1 conv) on the second-deepest
            encoder feature for the training loss (``forward_with_aux``), as torchvision's ``aux_loss=True`` and
            MMSegmentation's ``auxiliary_head``; ``forward`` ignores it (see
            :class:`~pixelwise.models.base.AuxiliaryFCNHead`).
        aux_params: see :class:`~pixelwise.models.base.EncoderDecoderModel`.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    The options SMP also has keep pixelwise's order (``encoder_depth`` second, ``encoder_freeze`` fourth;
    ``decoder_use_norm`` and ``upsampling`` after ``activation``): pass them by name.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W (and ``[N, aux classes]``
    labels with ``aux_params``).

    Example:
        >>> model = PSPNet("resnet34", encoder_depth=4, classes=3, psp_bins=(1, 2, 4))
        >>> smp_like = PSPNet("resnet34", classes=3, psp_branch_norm=True)
    """

    head_align_corners = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 3,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        psp_bins: Sequence[int] = (1, 2, 3, 6),
        psp_out_channels: int = 512,
        psp_use_batchnorm: bool = True,
        psp_dropout: float = 0.2,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
        decoder_use_norm: NormSpec = None,
        psp_branch_norm: bool = False,
        upsampling: int | None = None,
        aux_params: Mapping[str, Any] | None = None,
        aux_head: bool = False,
    ) -> None:
        norm = resolve_norm(decoder_use_norm, psp_use_batchnorm, defaulted="use_batchnorm", alias="psp_use_batchnorm")
        decoder = partial(
            PSPDecoder,
            bins=psp_bins,
            out_channels=psp_out_channels,
            use_batchnorm=norm,
            dropout=psp_dropout,
            branch_norm=norm if psp_branch_norm else False,
        )
        super().__init__(
            decoder,
            encoder_name,
            encoder_depth,
            encoder_weights,
            encoder_freeze,
            in_channels,
            classes,
            activation,
            aux_params=aux_params,
            aux_head=aux_head,
        )
        check_head_upsampling("PSPNet", upsampling, self.decoder.output_stride)
