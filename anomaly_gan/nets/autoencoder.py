"""The MIFE paper's generators: the Baseline autoencoder and the MIFE U-Net autoencoder.

Toker, Korkmaz, "Combining Generative Models and Attention Networks for Anomaly Detection in
Industrial Settings", Sections II.B–C, layer for layer:

- Encoder E: five blocks Conv2d(4, stride 2, pad 1) -> BatchNorm2d -> LeakyReLU(0.2),
  widths channels -> 64 -> 128 -> 256 -> 512 -> 1024, so the last map is image/32;
  flatten -> Linear -> latent (100).
- Decoder: Linear back to (1024, image/32, image/32), then five ConvTranspose2d(4, 2, 1)
  1024 -> 512 -> 256 -> 128 -> 64 -> channels, BatchNorm + ReLU between them, Tanh last.
- MIFE only: SelfAttention2d after blocks 4 and 5, and decoder step k receives
  ``cat([d_prev, skip], 1)`` with the encoder block of the same resolution, doubling its
  input channels (the paper's ``torch.cat([d_prev, skip_3], 1)``, skips indexed from 0).

Choices where the paper is silent: LeakyReLU slope 0.2; the decoder's Linear is followed by
BatchNorm + ReLU (mirroring an encoder block); the decoder uses ReLU (DCGAN); with
skips, all five decoder steps take a skip, the first one block 5's (attended) map next to
the Linear's output. ``skip_levels`` keeps only some of them (block numbers 1–5): the
full-resolution skips let the decoder copy defects (docs/what-works.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from anomaly_gan.nets.blocks import SelfAttention2d, check_image_size, check_levels

N_BLOCKS = 5
DOWNSAMPLING = 2**N_BLOCKS
MAX_IMAGE_SIZE = 512


def supported_autoencoder_sizes() -> list[int]:
    """Multiples of 32 (five stride-2 convolutions) from 32 to 512."""
    return list(range(DOWNSAMPLING, MAX_IMAGE_SIZE + 1, DOWNSAMPLING))


class ConvEncoder(nn.Module):
    """Five strided conv blocks (+ optional self-attention) and a Linear to the latent code.

    Returns ``(latent (B, latent_dim), block maps)``; block k's map is (B, 64·2^(k-1), S/2^k,
    S/2^k) with ``base_width`` 64, after its self-attention when k is in
    ``attention_levels``.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int = 100,
        base_width: int = 64,
        attention_levels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        check_image_size(image_size, supported_autoencoder_sizes(), "the MIFE/Baseline encoder")
        self.attention_levels = check_levels(attention_levels, N_BLOCKS, "model.attention_levels")
        self.widths = [base_width * 2**k for k in range(N_BLOCKS)]  # 64 ... 1024
        self.bottleneck_size = image_size // DOWNSAMPLING
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleList()
        in_width = channels
        for level, width in enumerate(self.widths, start=1):
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_width, width, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.LeakyReLU(0.2),
                )
            )
            self.attention.append(
                SelfAttention2d(width) if level in self.attention_levels else nn.Identity()
            )
            in_width = width
        # (B, 1024, s, s) -> (B, 1024·s·s) -> (B, latent_dim)
        self.to_latent = nn.Linear(self.widths[-1] * self.bottleneck_size**2, latent_dim)

    def forward(self, image: Tensor) -> tuple[Tensor, list[Tensor]]:
        maps = self.block_maps(image, smallest=0)
        return self.to_latent(maps[-1].flatten(1)), maps

    def block_maps(self, image: Tensor, smallest: int = 0) -> list[Tensor]:
        """The blocks' (attended) maps from side S/2 down, stopping after the first of side
        ``smallest`` or less (0: all five; without the Linear to the latent)."""
        maps: list[Tensor] = []
        x = image
        for block, attention in zip(self.blocks, self.attention, strict=True):
            x = attention(block(x))
            maps.append(x)
            if x.shape[-1] <= smallest:
                break
        return maps


class ConvDecoder(nn.Module):
    """Linear back to (1024, s, s), then five ConvTranspose2d(4, 2, 1) up to the image.

    Step k (0..4) works at encoder block 5 − k's resolution; when that block is in
    ``skip_levels`` its input is ``cat([d_prev, skip], 1)``, twice the width of the no-skip
    (Baseline, ``skip_levels=()``) step.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int = 100,
        base_width: int = 64,
        skip_levels: Sequence[int] | None = (),
    ) -> None:
        super().__init__()
        check_image_size(image_size, supported_autoencoder_sizes(), "the MIFE/Baseline decoder")
        widths = [base_width * 2**k for k in range(N_BLOCKS)][::-1]  # 1024 ... 64
        self.skip_levels = check_levels(skip_levels, N_BLOCKS, "model.skip_levels")
        self.bottleneck_size = image_size // DOWNSAMPLING
        self.widths = widths
        size = self.bottleneck_size
        self.from_latent = nn.Linear(latent_dim, widths[0] * size**2)
        self.from_latent_act = nn.Sequential(nn.BatchNorm2d(widths[0]), nn.ReLU())
        outs = [*widths[1:], channels]  # 512, 256, 128, 64, channels
        self.steps = nn.ModuleList()
        for step, (in_width, out_width) in enumerate(zip(widths, outs, strict=True)):
            last = step == N_BLOCKS - 1
            factor = 2 if N_BLOCKS - step in self.skip_levels else 1
            layers: list[nn.Module] = [
                nn.ConvTranspose2d(factor * in_width, out_width, 4, 2, 1, bias=last)
            ]
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out_width), nn.ReLU()]
            self.steps.append(nn.Sequential(*layers))

    def forward(self, latent: Tensor, skips: Sequence[Tensor] | None = None) -> Tensor:
        if self.skip_levels and (skips is None or len(skips) != N_BLOCKS):
            raise ValueError(f"this decoder needs the {N_BLOCKS} encoder maps as skips")
        size = self.bottleneck_size
        # (B, latent_dim) -> (B, 1024, s, s)
        x = self.from_latent_act(self.from_latent(latent).view(-1, self.widths[0], size, size))
        for step, layer in enumerate(self.steps):
            if N_BLOCKS - step in self.skip_levels:
                # (B, C, s, s) + skip (B, C, s, s) -> (B, 2C, s, s)
                x = torch.cat([x, skips[N_BLOCKS - 1 - step]], 1)
            x = layer(x)  # (B, ·, s, s) -> (B, C/2, 2s, 2s)
        return x


class ConvAutoencoder(nn.Module):
    """Generator G = decoder(encoder(x)); MIFE with skips + attention, Baseline without.

    ``skip_levels``: encoder blocks (1–5) whose maps reach the decoder; ``()`` for none,
    ``None`` for all five.

    ``forward`` returns ``(reconstruction, latent (B, latent_dim))``; :meth:`encode` gives
    E(·) alone, used on the reconstruction for the encoder loss ||E(x) − E(G(x))||₂ (II.D).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int = 100,
        base_width: int = 64,
        skip_levels: Sequence[int] | None = (),
        attention_levels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(image_size, channels, latent_dim, base_width, attention_levels)
        self.decoder = ConvDecoder(image_size, channels, latent_dim, base_width, skip_levels)

    def encode(self, image: Tensor) -> Tensor:
        return self.encoder(image)[0]

    def encoder_maps(self, image: Tensor, smallest: int = 0) -> list[Tensor]:
        """The encoder's block maps (:meth:`ConvEncoder.block_maps`)."""
        return self.encoder.block_maps(image, smallest)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        latent, maps = self.encoder(image)
        skips = maps if self.decoder.skip_levels else None
        return self.decoder(latent, skips), latent


__all__ = ["ConvAutoencoder", "ConvDecoder", "ConvEncoder", "supported_autoencoder_sizes"]
