"""Deterministic preprocessing shared by every dataset.

The generators end in Tanh, so images are mapped to [-1, 1] (mean 0.5, std 0.5 on [0, 1]
pixels). Preprocessing is split in two stages so the expensive one can be cached:

1. ``Geometry.resize_image`` / ``resize_mask`` (``anomaly_gan.data.geometry``): decode-size
   array -> the run's shape (``data.resize``: a square, or a larger tile frame). Done once
   per file and cached (``anomaly_gan.data.cache``), because decoding and shrinking a
   1024 px PNG costs far more than a whole training step on a 64 px image.
2. ``build_normalize_transform``: optional augmentations, normalisation, an optional random
   crop (training tiles), CHW tensor. Cheap, runs on every access so random augmentations
   stay random.

``normalization`` says how pixel values reach [-1, 1]:

- ``fixed``: (x/255 - 0.5) / 0.5 for every image (the papers);
- ``per_image``: subtract the image's own mean and divide by ``PER_IMAGE_SPREAD`` times its
  own standard deviation, clipped to [-1, 1]. Lighting and exposure differ from image to
  image in real inspection (the magnetic tiles range from dark grey to near white); with
  fixed normalisation a model spends its capacity and its score on brightness, not on
  defects. On the magnetic tiles this single switch moved GANomaly from 0.59 to 0.86 image
  AUROC (docs/what-works.md).

``build_transform`` chains both for callers that want the one-shot pipeline. One module
builds them so image size, channels and normalisation have a single source of truth: the
data config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from anomaly_gan.data.geometry import IMAGE_INTERPOLATION, MASK_INTERPOLATION

NORMALIZE_MEAN = 0.5
NORMALIZE_STD = 0.5
MAX_PIXEL_VALUE = 255.0
NORMALIZATIONS = ("fixed", "per_image")
#: per_image: mean ± this many standard deviations maps to ±1 (a few pixels clip).
PER_IMAGE_SPREAD = 3.0
# Names that go into cache keys: a change of interpolation must not reuse old arrays.
INTERPOLATION_NAMES = {cv2.INTER_AREA: "area", cv2.INTER_NEAREST: "nearest"}


class PerImageStandardize(A.ImageOnlyTransform):
    """(x - mean(x)) / (``spread`` · std(x)), clipped to [-1, 1]; over all channels at once,
    so colour relations survive. Image only: masks pass unchanged."""

    def __init__(self, spread: float = PER_IMAGE_SPREAD, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.spread = spread

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        values = img.astype(np.float32)
        scale = self.spread * float(values.std()) + 1e-6
        return np.clip((values - float(values.mean())) / scale, -1.0, 1.0)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("spread",)


def build_augmentations(specs: Sequence[Any] | None) -> list[A.BasicTransform]:
    """``data.augmentations`` -> albumentations transforms for the training normals.

    Each entry names an albumentations class and its arguments, e.g.
    ``{name: HorizontalFlip, p: 0.5}`` or ``{name: Affine, translate_percent: 0.03}``. Plain
    names and numbers (not ``_target_`` objects) keep the list in checkpoints and sweeps.
    Only transforms that keep a normal image normal belong here: flips and 90° turns for
    textures and symmetric parts, small shifts; not colour jitter when colour can be a defect.
    """
    transforms: list[A.BasicTransform] = []
    for index, spec in enumerate(specs or ()):
        key = f"data.augmentations[{index}]"
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise ValueError(
                f"{key}={spec!r}: expected a mapping with the albumentations class under "
                "'name' and its arguments beside it, e.g. {name: HorizontalFlip, p: 0.5}."
            )
        arguments = {k: v for k, v in spec.items() if k != "name"}
        cls = getattr(A, spec["name"], None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise ValueError(
                f"{key}.name={spec['name']!r} is not an albumentations transform (e.g. "
                "HorizontalFlip, VerticalFlip, RandomRotate90, Affine)."
            )
        try:
            transforms.append(cls(**arguments))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{key}: {spec['name']}({arguments}) failed: {error}") from error
    return transforms


def check_normalization(normalization: str) -> str:
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"data.normalization={normalization!r}: expected one of {', '.join(NORMALIZATIONS)}"
            " (fixed = the papers' (x - 0.5) / 0.5; per_image = each image's own mean/std)."
        )
    return normalization


def _normalize_steps(channels: int, normalization: str) -> list[A.BasicTransform]:
    mean = (NORMALIZE_MEAN,) * channels
    std = (NORMALIZE_STD,) * channels
    steps: list[A.BasicTransform] = [
        A.Normalize(mean=mean, std=std, max_pixel_value=MAX_PIXEL_VALUE)
    ]
    if check_normalization(normalization) == "per_image":
        steps.append(PerImageStandardize())
    return steps


def build_normalize_transform(
    channels: int,
    augmentations: Sequence[A.BasicTransform] | None = None,
    seed: int | None = None,
    normalization: str = "fixed",
    crop: int | None = None,
) -> A.Compose:
    """Augment (optional) an already-resized image, normalise to [-1, 1], make a CHW tensor.

    ``crop``: cut a random ``crop`` × ``crop`` window *after* normalising (``data.resize=tile``
    trains on tiles of a frame); ``per_image`` statistics are then the whole frame's, as at
    test time, when every tile of the frame is scored.

    ``augmentations`` (default: none) see the resized uint8/float image and its mask;
    anomaly detection trains on normals only, so random augmentation is off unless a
    config asks for it. ``seed`` seeds albumentations' own generators (it does not use the
    global numpy state); data loader workers reseed it per worker (``seed_worker``).
    ``strict=True`` turns invalid transform arguments into errors instead of warnings.
    """
    cropping = [A.RandomCrop(crop, crop)] if crop is not None else []
    return A.Compose(
        [
            *(augmentations or ()),
            *_normalize_steps(channels, normalization),
            *cropping,
            ToTensorV2(),
        ],
        strict=True,
        seed=seed,
    )


def build_transform(
    image_size: int,
    channels: int,
    augmentations: Sequence[A.BasicTransform] | None = None,
    normalization: str = "fixed",
) -> A.Compose:
    """Resize to a square, normalise to [-1, 1] and convert to a CHW tensor (uncached).

    Images are resized with INTER_AREA; masks passed as ``mask=`` use nearest neighbour.
    The datasets use ``resize_image`` + ``build_normalize_transform`` instead so the
    resized array can be cached; this one-shot pipeline gives the same pixels.
    """
    return A.Compose(
        [
            A.Resize(
                image_size,
                image_size,
                interpolation=IMAGE_INTERPOLATION,
                mask_interpolation=MASK_INTERPOLATION,
            ),
            *(augmentations or ()),
            *_normalize_steps(channels, normalization),
            ToTensorV2(),
        ],
        strict=True,
    )


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Map a normalised image (or generator output) from [-1, 1] back to [0, 1] for display."""
    return (image * NORMALIZE_STD + NORMALIZE_MEAN).clamp(0.0, 1.0)
