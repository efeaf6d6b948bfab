"""DCGAN encoder, decoder and discriminator, and the GANomaly generator built from them.

Akcay, Atapour-Abarghouei, Breckon, "GANomaly: Semi-Supervised Anomaly Detection via
Adversarial Training", ACCV 2018, Sec. 3, with the layer details of its published code
(docs/reference-code.md, section 2): the encoder halves the map with Conv(4, 2, 1) until it
is 4x4 (no BatchNorm on the first layer, no conv bias), and a final convolution maps it to
the latent vector; the decoder mirrors it with transposed convolutions, BatchNorm and ReLU,
ending in Tanh.

For powers of two (32, 64, 128, 256, 512) the layers are exactly the reference ones. Other
multiples of 16 (48, 80, ...) halve the map while it is even and larger than 4, and the
final convolution's kernel equals the remaining map size (3, 5, 7, ...), where the reference
code would crash; the decoder mirrors that plan, so every multiple of 16 works.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from torch import Tensor, nn

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 512


def supported_dcgan_sizes() -> list[int]:
    """Image sizes the DCGAN networks are built for: multiples of 16 from 32 to 512."""
    return list(range(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE + 1, 16))


@dataclass(frozen=True)
class DcganPlan:
    """Channel widths after each strided convolution and the bottleneck map size."""

    widths: tuple[int, ...]
    bottleneck_size: int


def dcgan_plan(image_size: int, base_width: int = 64, max_width: int | None = None) -> DcganPlan:
    """Lay out the DCGAN pyramid for ``image_size`` or refuse the size with the allowed ones."""
    if image_size not in supported_dcgan_sizes():
        raise ValueError(
            f"Image size {image_size} is not supported by the DCGAN/GANomaly networks: "
            f"use a multiple of 16 from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} "
            f"({', '.join(map(str, supported_dcgan_sizes()))}); set data.image_size."
        )
    width, size = base_width, image_size // 2
    widths = [width]
    while size > 4 and size % 2 == 0:
        width = width * 2 if max_width is None else min(width * 2, max_width)
        widths.append(width)
        size //= 2
    return DcganPlan(widths=tuple(widths), bottleneck_size=size)


class _DcganStack(nn.Module):
    """What the DCGAN encoder and decoder share: their arguments and one :class:`DcganPlan`.

    Subclasses build their layers in :meth:`build` from the plan, so an encoder and a
    decoder made with the same arguments always mirror each other.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int,
        base_width: int = 64,
        max_width: int | None = None,
    ) -> None:
        super().__init__()
        self.plan = dcgan_plan(image_size, base_width, max_width)
        self.build(self.plan, channels, latent_dim)

    def build(self, plan: DcganPlan, channels: int, latent_dim: int) -> None:
        raise NotImplementedError


class DcganEncoder(_DcganStack):
    """Image -> (B, latent_dim, 1, 1). ``features`` is everything but the last convolution."""

    def build(self, plan: DcganPlan, channels: int, latent_dim: int) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(channels, plan.widths[0], 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for in_width, out_width in zip(plan.widths, plan.widths[1:], strict=False):
            layers += [
                nn.Conv2d(in_width, out_width, 4, 2, 1, bias=False),
                nn.BatchNorm2d(out_width),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        # (B, widths[-1], k, k) -> (B, latent_dim, 1, 1)
        self.head = nn.Conv2d(plan.widths[-1], latent_dim, plan.bottleneck_size, 1, 0, bias=False)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.features(image))

    def maps(self, image: Tensor, smallest: int = 0) -> list[Tensor]:
        """The activated map of every stride-2 block, from side S/2 down, stopping after
        the first of side ``smallest`` or less (the feature memory's input)."""
        maps: list[Tensor] = []
        current = image
        for layer in self.features:
            current = layer(current)
            if isinstance(layer, nn.LeakyReLU):
                maps.append(current)
                if current.shape[-1] <= smallest:
                    break
        return maps


class DcganDecoder(_DcganStack):
    """(B, latent_dim, 1, 1) -> image in [-1, 1]; the mirror of :class:`DcganEncoder`."""

    def build(self, plan: DcganPlan, channels: int, latent_dim: int) -> None:
        widths = plan.widths[::-1]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], plan.bottleneck_size, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for in_width, out_width in itertools.pairwise(widths):
            layers += [
                nn.ConvTranspose2d(in_width, out_width, 4, 2, 1, bias=False),
                nn.BatchNorm2d(out_width),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, latent: Tensor) -> Tensor:
        return self.main(latent)


class DcganDiscriminator(nn.Module):
    """DCGAN encoder with one output logit; returns ``(logits (B,), features (B, C, k, k))``.

    The features (output of the last LeakyReLU) feed GANomaly's feature-matching adversarial
    loss and Skip-GANomaly's latent loss. Logits, not probabilities: the BCE is computed
    with ``binary_cross_entropy_with_logits``, the numerically safe form of sigmoid + BCE.
    """

    def __init__(
        self, image_size: int, channels: int, base_width: int = 64, max_width: int | None = None
    ) -> None:
        super().__init__()
        encoder = DcganEncoder(image_size, channels, 1, base_width, max_width)
        self.features = encoder.features
        self.classifier = encoder.head

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features(image)
        logits = self.classifier(features).flatten()  # (B, 1, 1, 1) -> (B,)
        return logits, features


class GanomalyGenerator(nn.Module):
    """Encoder -> decoder -> second encoder (separate weights).

    Returns ``(reconstruction, latent_in, latent_out)`` with latents of shape (B, latent_dim):
    GANomaly scores an image by how far the re-encoded reconstruction drifts from the input's
    latent code.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int = 100,
        base_width: int = 64,
        max_width: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder_in = DcganEncoder(image_size, channels, latent_dim, base_width, max_width)
        self.decoder = DcganDecoder(image_size, channels, latent_dim, base_width, max_width)
        self.encoder_out = DcganEncoder(image_size, channels, latent_dim, base_width, max_width)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        latent_in = self.encoder_in(image)  # (B, nz, 1, 1)
        reconstruction = self.decoder(latent_in)
        latent_out = self.encoder_out(reconstruction)
        return reconstruction, latent_in.flatten(1), latent_out.flatten(1)

    def encoder_maps(self, image: Tensor, smallest: int = 0) -> list[Tensor]:
        """The first encoder's block maps (:meth:`DcganEncoder.maps`)."""
        return self.encoder_in.maps(image, smallest)


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


__all__ = [
    "DcganDecoder",
    "DcganDiscriminator",
    "DcganEncoder",
    "DcganPlan",
    "GanomalyGenerator",
    "count_parameters",
    "dcgan_plan",
    "supported_dcgan_sizes",
]
