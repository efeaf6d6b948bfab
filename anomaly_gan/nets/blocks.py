"""Building blocks shared by the U-Nets and autoencoders: size checks, DSC, self-attention.

- :func:`check_image_size` — every network refuses an unsupported ``data.image_size`` when it
  is built, listing the sizes that work (the error is raised where the bad value enters).
- :class:`DepthwiseSeparableConv2d` — the DSC of Liu, Lan, Zhang et al., "SAGAN: Skip-Attention
  GAN for Anomaly Detection" (ICIP 2021) that Skip-SA uses in every generator level (Sun, Liu,
  Ma, Na, Zhang, "Skip.Self attention GAN for anomaly detection", IJSCC 2025, Sec. 3.2).
- :class:`SelfAttention2d` — the self-attention of Zhang, Goodfellow, Metaxas, Odena,
  "Self-Attention Generative Adversarial Networks" (ICML 2019), used by Skip-SA's encoder
  (Sun et al. 2025, Sec. 3.1) and by MIFE after encoder blocks 4 and 5 (Toker, Korkmaz,
  "Combining Generative Models and Attention Networks for Anomaly Detection in Industrial
  Settings", Sec. II.C).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_image_size(image_size: int, supported: Sequence[int], network: str) -> None:
    """Raise ``ValueError`` naming ``data.image_size`` and every size ``network`` supports."""
    if image_size not in supported:
        raise ValueError(
            f"Image size {image_size} is not supported by {network}: use one of "
            f"{', '.join(map(str, supported))}; set data.image_size."
        )


def powers_of_two(low: int, high: int) -> list[int]:
    """Powers of two from ``low`` to ``high`` inclusive (both powers of two)."""
    sizes, size = [], low
    while size <= high:
        sizes.append(size)
        size *= 2
    return sizes


def check_levels(levels: Iterable[int] | None, depth: int, key: str) -> tuple[int, ...]:
    """Validate 1-based encoder level numbers (e.g. ``model.attention_levels``).

    ``None`` means every level (the papers' setting for attention and skips). Negative
    numbers count from the deepest level, as Python indexes (-1 = ``depth``), so one config
    value means "the deepest level" at every image size.
    """
    if levels is None:
        return tuple(range(1, depth + 1))
    given = [int(level) for level in levels]
    if any(level == 0 or abs(level) > depth for level in given):
        raise ValueError(
            f"{key}={list(levels)}: levels are numbered 1 (the highest resolution) to "
            f"{depth} (the deepest level of this network), or -1 (the deepest) to -{depth}"
        )
    return tuple(sorted({level if level > 0 else depth + 1 + level for level in given}))


class DepthwiseSeparableConv2d(nn.Module):
    """3x3 depthwise convolution (one filter per channel) then a 1x1 pointwise convolution.

    Same receptive field as a 3x3 convolution with about ``1/out + 1/9`` of its weights
    (Skip-SA, Section 3.2: "to reduce the number of model parameters"). No bias: a
    BatchNorm always follows it in our networks. ``keeps_default_init``: the DCGAN init
    would shrink its output below BatchNorm's eps (:mod:`anomaly_gan.nets.init`).
    """

    keeps_default_init = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def dsc_block(in_channels: int, out_channels: int, activation: nn.Module) -> nn.Sequential:
    """DSC -> BatchNorm -> activation: one of the two convolutions of a Skip-SA level."""
    return nn.Sequential(
        DepthwiseSeparableConv2d(in_channels, out_channels),
        nn.BatchNorm2d(out_channels),
        activation,
    )


class SelfAttention2d(nn.Module):
    """Self-attention over all H·W positions of a feature map (Zhang et al. 2018, SAGAN).

    query/key: 1x1 convolutions to ``C // reduction`` channels; value: 1x1 convolution to C;
    attention = softmax over the N = H·W key positions of ``query · key`` (unscaled, as in
    SAGAN); output ``gamma * attention(value) + x`` with the learnt scalar ``gamma``
    initialised to 0, so a fresh module is the identity and the network learns how much
    non-local evidence to mix in.

    Computed with ``F.scaled_dot_product_attention`` (``scale=1``), never as an explicit
    N×N matrix, so memory stays O(N) instead of the N×N map (16.7M entries per image at
    64×64, 268M at 128×128). Which fused kernel can take the C/8-wide query and key
    depends on the device:

    - CPU (flash kernel), CUDA's flash kernel and ONNX export: query, key and value must
      share one head size, so query and key are zero-padded from C/8 to C. The padded
      features add exactly 0 to every dot product: the result is unchanged, at the cost of
      C instead of C/8 multiply-adds per query·key product.
    - CUDA, memory-efficient kernel: takes a value head size different from query/key's
      when both are multiples of its GEMM alignment (8 covers bf16, fp16 and fp32 on every
      architecture). There the padding is skipped (``pad_query_key`` None, the default):
      the query·key products cost C/8, about 1.8× fewer multiply-adds for the whole
      attention, and the numbers are the padded path's (tests/test_architectures.py).
      ``pad_query_key=True`` forces the padding (e.g. to compare the two on a GPU).
    """

    #: Head sizes the CUDA memory-efficient kernel accepts unpadded are multiples of this.
    UNPADDED_ALIGNMENT = 8

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"SelfAttention2d: channels={channels}, reduction={reduction}")
        self.inner_channels = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, self.inner_channels, 1)
        self.key = nn.Conv2d(channels, self.inner_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        #: None: pad except where the CUDA memory-efficient kernel takes C/8 (class docstring);
        #: True / False force it.
        self.pad_query_key: bool | None = None

    def pads_query_key(self, x: Tensor) -> bool:
        """Whether this input's query and key are zero-padded to C (class docstring)."""
        if self.pad_query_key is not None:
            return self.pad_query_key
        exporting = torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
        aligned = (
            self.inner_channels % self.UNPADDED_ALIGNMENT == 0
            and x.shape[1] % self.UNPADDED_ALIGNMENT == 0
        )
        return not (x.is_cuda and aligned and not exporting)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        pad = channels - self.inner_channels if self.pads_query_key(x) else 0

        def tokens(projection: Tensor) -> Tensor:
            # (B, c, H, W) -> (B, 1, N, c): one head, contiguous rows for the fused kernels.
            return projection.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()

        query = tokens(self.query(x))  # (B, 1, N, C/8)
        key = tokens(self.key(x))
        if pad:  # (B, 1, N, C/8) -> (B, 1, N, C)
            query, key = F.pad(query, (0, pad)), F.pad(key, (0, pad))
        value = tokens(self.value(x))  # (B, 1, N, C)
        attended = F.scaled_dot_product_attention(query, key, value, scale=1.0)
        # (B, 1, N, C) -> (B, C, H, W)
        attended = attended.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return self.gamma * attended + x


__all__ = [
    "DepthwiseSeparableConv2d",
    "SelfAttention2d",
    "check_image_size",
    "check_levels",
    "dsc_block",
    "powers_of_two",
]
