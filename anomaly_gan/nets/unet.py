"""U-Net generators: pix2pix U-Net (Skip-GANomaly) and the self-attention U-Net (Skip-SA).

Both map an image in [-1, 1] to a reconstruction in [-1, 1] (Tanh), with an encoder
level's map concatenated into the decoder level of the same resolution. ``skip_levels``
chooses which levels keep that skip (``None``: all of them, as in the papers): a
full-resolution skip lets the decoder copy a defect straight from the input, so the
reconstruction error no longer shows it (docs/what-works.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_gan.nets.blocks import (
    SelfAttention2d,
    check_image_size,
    check_levels,
    dsc_block,
    powers_of_two,
)

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 512


def _widths(depth: int, base_width: int, max_width: int) -> list[int]:
    """Channel width of each level: ``base_width`` doubling per level, capped at max_width."""
    if base_width < 1 or max_width < base_width:
        raise ValueError(
            f"model.base_width={base_width} and model.max_width={max_width}: "
            "need 1 <= base_width <= max_width"
        )
    return [min(base_width * 2**level, max_width) for level in range(depth)]


# ------------------------------------------------------------------------ pix2pix U-Net
def supported_pix2pix_sizes() -> list[int]:
    """Powers of two: the U-Net halves the map log2(size) times down to 1×1."""
    return powers_of_two(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


class Pix2PixUnet(nn.Module):
    """pix2pix U-Net of depth log2(image size), BatchNorm, no dropout (Skip-GANomaly G).

    Akcay, Atapour-Abarghouei, Breckon, "Skip-GANomaly: Skip Connected and Adversarially
    Trained Encoder-Decoder Anomaly Detection", IJCNN 2019, as its published code builds it
    (docs/reference-code.md, section 3; recapped by Sun et al. 2025, Sec. 2): down level =
    LeakyReLU(0.2) -> Conv(4, 2, 1) -> BN (no activation/BN on the first level, no BN on the
    innermost one, which reaches 1×1); up level = ReLU -> ConvTranspose(4, 2, 1) -> BN, Tanh
    on the last. Widths 64, 128, 256, 512, 512, ... (``base_width`` doubling, capped at
    ``max_width``). Every up level except the innermost receives ``cat([skip, up], 1)``
    when its level is in ``skip_levels`` (1 = the first down level, at half resolution, to
    depth − 1; ``None`` = all, as in pix2pix), the up path alone otherwise.

    Unlike the pix2pix code, activations are not in-place, so the skip carries the
    down level's output before the next level's LeakyReLU (pix2pix's in-place LeakyReLU
    silently rectifies the skip as well).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        base_width: int = 64,
        max_width: int = 512,
        skip_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_image_size(image_size, supported_pix2pix_sizes(), "the Skip-GANomaly U-Net")
        depth = int(math.log2(image_size))
        widths = _widths(depth, base_width, max_width)
        self.depth = depth
        self.skip_levels = check_levels(skip_levels, depth - 1, "model.skip_levels")
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(depth):
            in_width = channels if level == 0 else widths[level - 1]
            down: list[nn.Module] = [] if level == 0 else [nn.LeakyReLU(0.2)]
            down.append(nn.Conv2d(in_width, widths[level], 4, 2, 1, bias=False))
            if 0 < level < depth - 1:
                down.append(nn.BatchNorm2d(widths[level]))
            self.down.append(nn.Sequential(*down))

            has_skip = level + 1 in self.skip_levels  # the innermost level never has one
            up_in = 2 * widths[level] if has_skip else widths[level]
            up_out = channels if level == 0 else widths[level - 1]
            up: list[nn.Module] = [
                nn.ReLU(),
                nn.ConvTranspose2d(up_in, up_out, 4, 2, 1, bias=level == 0),
            ]
            up.append(nn.Tanh() if level == 0 else nn.BatchNorm2d(up_out))
            self.up.append(nn.Sequential(*up))

    def forward(self, image: Tensor) -> Tensor:
        skips: list[Tensor] = []
        x = image
        for down in self.down:
            x = down(x)  # (B, C_l, S / 2^(l+1), same)
            skips.append(x)
        x = self.up[-1](skips[-1])  # innermost: 1×1 -> 2×2
        for level in range(self.depth - 2, -1, -1):
            if level + 1 in self.skip_levels:
                x = torch.cat([skips[level], x], 1)  # (B, C_l, s, s) -> (B, 2·C_l, s, s)
            # -> (B, C_(l-1), 2s, 2s); level 0 -> (B, channels, S, S)
            x = self.up[level](x)
        return x

    def encoder_maps(self, image: Tensor, smallest: int = 0) -> list[Tensor]:
        """The down path's level maps, activated (the LeakyReLU(0.2) the next level would
        apply), from side S/2 down, stopping after the first of side ``smallest`` or less."""
        maps: list[Tensor] = []
        x = image
        for down in self.down:
            x = down(x)
            maps.append(F.leaky_relu(x, 0.2))
            if x.shape[-1] <= smallest:
                break
        return maps


# ---------------------------------------------------------------- self-attention U-Net
def supported_attention_unet_sizes(depth: int) -> list[int]:
    """Multiples of 2^depth (each level max-pools once) from 32 to 512."""
    step = 2**depth
    return [size for size in range(step, MAX_IMAGE_SIZE + 1, step) if size >= MIN_IMAGE_SIZE]


class SelfAttentionUnet(nn.Module):
    """Skip-SA generator (Sun, Liu, Ma, Na, Zhang, "Skip.Self attention GAN for anomaly
    detection", IJSCC 2025, Sec. 3.2, Fig. 4).

    Encoder level l (1..depth): two DSC blocks (DSC -> BN -> LeakyReLU(0.2)) that raise the
    width to ``w_l``, self-attention (on the levels in ``attention_levels``; paper: all),
    then 2×2 max-pool. The attended map, before pooling, is the level's skip (levels in
    ``skip_levels``; ``None`` = all, as in the paper).
    Bottleneck: two DSC blocks at ``min(2 w_depth, max_width)``.
    Decoder level l (depth..1): bilinear ×2 upsampling, ``cat([up, skip_l], 1)``, two DSC
    blocks (DSC -> BN -> ReLU) that reduce the width to ``w_l``. Last: 1×1 conv -> Tanh.

    The paper lists "two DSC then upsampling" per decoder level; upsampling first lets the
    concatenated maps share a size and is the same chain of operations.
    Widths ``w_l``: ``base_width`` doubling per level, capped at ``max_width``; depth 5 by
    default (the five encoder blocks of the Skip-GANomaly generator it modifies, Section 2).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        depth: int = 5,
        base_width: int = 64,
        max_width: int = 512,
        attention_levels: Sequence[int] | None = None,
        attention_reduction: int = 8,
        skip_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"model.depth must be >= 1, got {depth}")
        check_image_size(
            image_size,
            supported_attention_unet_sizes(depth),
            f"the Skip-SA U-Net of depth {depth}",
        )
        widths = _widths(depth, base_width, max_width)
        self.attention_levels = check_levels(attention_levels, depth, "model.attention_levels")
        self.skip_levels = check_levels(skip_levels, depth, "model.skip_levels")

        self.encoder = nn.ModuleList()
        self.attention = nn.ModuleList()
        in_width = channels
        for level, width in enumerate(widths, start=1):
            self.encoder.append(
                nn.Sequential(
                    dsc_block(in_width, width, nn.LeakyReLU(0.2)),
                    dsc_block(width, width, nn.LeakyReLU(0.2)),
                )
            )
            self.attention.append(
                SelfAttention2d(width, attention_reduction)
                if level in self.attention_levels
                else nn.Identity()
            )
            in_width = width
        bottleneck_width = min(2 * widths[-1], max_width)
        self.bottleneck = nn.Sequential(
            dsc_block(widths[-1], bottleneck_width, nn.LeakyReLU(0.2)),
            dsc_block(bottleneck_width, bottleneck_width, nn.LeakyReLU(0.2)),
        )
        self.decoder = nn.ModuleList()
        below = bottleneck_width
        for level in range(depth, 0, -1):
            width = widths[level - 1]
            skip_width = width if level in self.skip_levels else 0
            self.decoder.append(
                nn.Sequential(
                    dsc_block(below + skip_width, width, nn.ReLU()),
                    dsc_block(width, width, nn.ReLU()),
                )
            )
            below = width
        self.to_image = nn.Sequential(nn.Conv2d(widths[0], channels, 1), nn.Tanh())

    def forward(self, image: Tensor) -> Tensor:
        skips = self.encoder_maps(image)  # each level's attended map, (B, w_l, s, s)
        x = F.max_pool2d(skips[-1], 2)  # (B, w_l, s, s) -> (B, w_l, s/2, s/2)
        x = self.bottleneck(x)
        levels = range(len(skips), 0, -1)
        for convs, skip, level in zip(self.decoder, reversed(skips), levels, strict=True):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if level in self.skip_levels:
                x = torch.cat([x, skip], 1)  # (B, w_below + w_l, s, s)
            x = convs(x)  # -> (B, w_l, s, s)
        return self.to_image(x)  # (B, w_1, S, S) -> (B, channels, S, S)

    def encoder_maps(self, image: Tensor, smallest: int = 0) -> list[Tensor]:
        """The encoder levels' attended maps (before their max-pool), from side S down,
        stopping after the first of side ``smallest`` or less (0: every level)."""
        maps: list[Tensor] = []
        x = image
        for convs, attention in zip(self.encoder, self.attention, strict=True):
            x = attention(convs(x))
            maps.append(x)
            if x.shape[-1] <= smallest:
                break
            x = F.max_pool2d(x, 2)
        return maps


__all__ = [
    "Pix2PixUnet",
    "SelfAttentionUnet",
    "supported_attention_unet_sizes",
    "supported_pix2pix_sizes",
]
