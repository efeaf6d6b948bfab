"""Synthetic defects pasted into training inputs: the generator learns to *repair* them.

An autoencoder trained to reproduce its input also reproduces a defect it never saw (a
U-Net copies it straight through its skip connections), so its reconstruction error on a
defect is no larger than on normal texture. Corrupting the generator's input with random
local defects while the reconstruction loss still compares against the clean image
teaches it to replace whatever does not look normal by normal texture — the idea behind
denoising autoencoders, RIAD's inpainting and DRAEM's reconstructive network. Only normal
training images are used; nothing here looks at test images or labels.

Five defect kinds, each a soft-edged mask blended into the image:

- ``blob``: an ellipse darker or brighter than its surroundings (holes, stains, spots);
- ``line``: a thin random segment (cracks, scratches);
- ``patch``: a rectangle of texture cut from another place of another image of the batch
  (CutPaste: a defect with realistic texture but the wrong structure there);
- ``noise``: an ellipse whose pixels get Gaussian noise of 0.3-1 times the image's own
  standard deviation (texture disturbed without a change of mean brightness: wear,
  contamination, a rough or porous spot);
- ``shift``: an ellipse of the image itself moved by 2-6 px (a local deformation, a cut,
  a misplaced edge: right texture and brightness, wrong geometry).

Training corruption draws from the first three by default (``TRAINING_KINDS``). The
synthetic defects that *choose* things without labels (``model.companion=auto``,
``val/synthetic_auroc``) are noise ellipses (``VALIDATION_KINDS``): over a pool of
no-learning detectors on four real inspection sets, choosing by them lost the least against
choosing by the real defects (the whole pool's and the PCA reference's ``k`` choice
together), and leaving one set out they were chosen in every fold
(``bench/synthetic_fidelity.py``; docs/what-works.md, "Do synthetic defects rank
detectors as the real defects do?"). For the PCA's ``k`` alone the plain rule "the
largest" lost even less, and is what the reference now uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

KINDS = ("blob", "line", "patch", "noise", "shift")
#: What training corruption draws from unless ``model.corruption.kinds`` says otherwise.
TRAINING_KINDS = ("blob", "line", "patch")
#: What the synthetic defects of label-free choices (validation) draw from.
VALIDATION_KINDS = ("noise",)


@dataclass(frozen=True)
class SyntheticDefects:
    """Random local defects for a training batch in [-1, 1]; every field is a config key.

    Args:
        probability: chance that an image of the batch is corrupted at all.
        max_defects: each corrupted image gets 1..max_defects defects.
        min_size, max_size: defect extent as a fraction of the image side.
        min_contrast, max_contrast: intensity change of blobs and lines, in [-1, 1] units
            (the whole range is 2); the sign is random (darker or brighter).
        kinds: which of ``blob``, ``line``, ``patch``, ``noise``, ``shift`` to draw from
            (uniformly).
    """

    probability: float = 0.5
    max_defects: int = 3
    min_size: float = 0.04
    max_size: float = 0.25
    min_contrast: float = 0.2
    max_contrast: float = 0.8
    kinds: tuple[str, ...] = TRAINING_KINDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(
                f"model.corruption.probability must be in [0, 1], got {self.probability}"
            )
        if self.max_defects < 1:
            raise ValueError(f"model.corruption.max_defects must be >= 1, got {self.max_defects}")
        if not 0.0 < self.min_size <= self.max_size <= 1.0:
            raise ValueError(
                "model.corruption needs 0 < min_size <= max_size <= 1, got "
                f"min_size={self.min_size}, max_size={self.max_size}"
            )
        if not 0.0 <= self.min_contrast <= self.max_contrast <= 2.0:
            raise ValueError(
                "model.corruption needs 0 <= min_contrast <= max_contrast <= 2, got "
                f"min_contrast={self.min_contrast}, max_contrast={self.max_contrast}"
            )
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(
                f"model.corruption.kinds={list(self.kinds)}: expected a non-empty subset of "
                f"{list(KINDS)}"
            )

    @classmethod
    def from_config(cls, config: SyntheticDefects | dict[str, Any]) -> SyntheticDefects:
        if isinstance(config, cls):
            return config
        return cls(**{k: v for k, v in dict(config).items() if k != "_target_"})

    def to_config(self) -> dict[str, Any]:
        return {**asdict(self), "kinds": list(self.kinds)}

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A corrupted copy of ``image`` (B, C, H, W); ``image`` itself is left untouched."""
        batch, _, height, width = image.shape
        corrupted = image.clone()
        rand = _Random(generator)
        rows = torch.arange(height, dtype=image.dtype, device=image.device).view(-1, 1)
        cols = torch.arange(width, dtype=image.dtype, device=image.device).view(1, -1)
        side = min(height, width)
        for index in range(batch):
            if rand.uniform() >= self.probability:
                continue
            for _ in range(rand.integer(1, self.max_defects)):
                kind = self.kinds[rand.integer(0, len(self.kinds) - 1)]
                extent = side * rand.uniform(self.min_size, self.max_size)
                centre = (rand.uniform(0, height - 1), rand.uniform(0, width - 1))
                if kind == "patch":
                    self._paste_patch(corrupted, image, index, extent, centre, rand)
                    continue
                if kind == "line":
                    mask = _segment(rows, cols, centre, extent, rand)
                else:
                    mask = _ellipse(rows, cols, centre, extent, rand)
                current = corrupted[index]
                if kind == "noise":
                    spread = float(image[index].std()) * rand.uniform(0.3, 1.0)
                    noise = spread * torch.randn(
                        current.shape, generator=generator, dtype=image.dtype
                    ).to(image.device)
                    corrupted[index] = (current + noise * mask).clamp(-1.0, 1.0)
                elif kind == "shift":
                    dy, dx = (
                        rand.integer(2, 6) * (1 if rand.uniform() < 0.5 else -1) for _ in "yx"
                    )
                    moved = torch.roll(current, shifts=(dy, dx), dims=(1, 2))
                    corrupted[index] = current * (1 - mask) + moved * mask
                else:  # blob, line: a darker or brighter mark
                    contrast = rand.uniform(self.min_contrast, self.max_contrast)
                    sign = 1.0 if rand.uniform() < 0.5 else -1.0
                    corrupted[index] = (current + sign * contrast * mask).clamp(-1.0, 1.0)
        return corrupted

    @staticmethod
    def _paste_patch(
        corrupted: Tensor,
        image: Tensor,
        index: int,
        extent: float,
        centre: tuple[float, float],
        rand: _Random,
    ) -> None:
        batch, _, height, width = image.shape
        patch_h = max(2, min(height, round(extent * rand.uniform(0.5, 1.5))))
        patch_w = max(2, min(width, round(extent * rand.uniform(0.5, 1.5))))
        source = rand.integer(0, batch - 1)
        src_top = rand.integer(0, height - patch_h)
        src_left = rand.integer(0, width - patch_w)
        top = min(max(0, round(centre[0] - patch_h / 2)), height - patch_h)
        left = min(max(0, round(centre[1] - patch_w / 2)), width - patch_w)
        patch = image[source, :, src_top : src_top + patch_h, src_left : src_left + patch_w]
        if rand.uniform() < 0.5:  # a rotated texture is wrong even on a uniform surface
            patch = patch.transpose(1, 2) if patch_h == patch_w else patch.flip(1)
        corrupted[index, :, top : top + patch_h, left : left + patch_w] = patch


class _Random:
    """Python-side draws from one torch generator, so a seeded run corrupts alike."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] (both ends included)."""
        return int(torch.randint(low, high + 1, (), generator=self.generator))


def _ellipse(
    rows: Tensor, cols: Tensor, centre: tuple[float, float], extent: float, rand: _Random
) -> Tensor:
    """Soft ellipse of diameter ~extent at a random angle, 1 inside, fading over ~1 px."""
    radius_a = max(1.0, extent / 2)
    radius_b = max(1.0, radius_a * rand.uniform(0.3, 1.0))
    angle = rand.uniform(0.0, math.pi)
    dy, dx = rows - centre[0], cols - centre[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    radius = ((u / radius_a) ** 2 + (v / radius_b) ** 2).sqrt()
    return (1.0 - (radius - 1.0) * min(radius_a, radius_b)).clamp(0.0, 1.0)


def _segment(
    rows: Tensor, cols: Tensor, centre: tuple[float, float], extent: float, rand: _Random
) -> Tensor:
    """Soft line segment of length ~2·extent and width 1–2 px through ``centre``."""
    angle = rand.uniform(0.0, math.pi)
    half_length = extent
    half_width = rand.uniform(0.5, 1.0)
    dy, dx = rows - centre[0], cols - centre[1]
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = (-dx * math.sin(angle) + dy * math.cos(angle)).abs()
    inside_length = (half_length - along.abs()).clamp(0.0, 1.0)
    inside_width = (half_width + 0.5 - across).clamp(0.0, 1.0)
    return inside_length * inside_width
