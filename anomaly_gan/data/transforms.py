"""Deterministic preprocessing shared by every dataset.

The generators end in Tanh, so images are mapped to [-1, 1] (mean 0.5, std 0.5 on [0, 1]
pixels). Preprocessing is split in two stages so the expensive one can be cached:

1. ``resize_image`` / ``resize_mask``: decode-size array -> ``image_size`` square. Done once
   per file and cached (``anomaly_gan.data.cache``), because decoding and shrinking a
   1024 px PNG costs far more than a whole training step on a 64 px image.
2. ``build_normalize_transform``: optional augmentations, normalisation, CHW tensor. Cheap,
   runs on every access so random augmentations stay random.

``build_transform`` chains both for callers that want the one-shot pipeline. One module
builds them so image size, channels and normalisation have a single source of truth: the
data config.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

NORMALIZE_MEAN = 0.5
NORMALIZE_STD = 0.5
MAX_PIXEL_VALUE = 255.0
# INTER_AREA: no aliasing when shrinking; masks use nearest neighbour so they stay binary.
IMAGE_INTERPOLATION = cv2.INTER_AREA
MASK_INTERPOLATION = cv2.INTER_NEAREST
# Names that go into cache keys: a change of interpolation must not reuse old arrays.
INTERPOLATION_NAMES = {cv2.INTER_AREA: "area", cv2.INTER_NEAREST: "nearest"}


def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """(H, W, C) -> (image_size, image_size, C) with INTER_AREA, keeping the channel axis.

    Same pixels as ``A.Resize(interpolation=cv2.INTER_AREA)`` (both call ``cv2.resize``).
    """
    resized = cv2.resize(
        image, (image_size, image_size), interpolation=IMAGE_INTERPOLATION
    )  # cv2 drops a trailing axis of size 1
    return resized[:, :, None] if resized.ndim == 2 else resized


def resize_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """(H, W) 0/1 mask -> (image_size, image_size) with nearest neighbour (stays 0/1)."""
    return cv2.resize(mask, (image_size, image_size), interpolation=MASK_INTERPOLATION)


def build_normalize_transform(
    channels: int,
    augmentations: Sequence[A.BasicTransform] | None = None,
    seed: int | None = None,
) -> A.Compose:
    """Augment (optional) an already-resized image, normalise to [-1, 1], make a CHW tensor.

    ``augmentations`` (default: none) see the resized uint8/float image and its mask;
    anomaly detection trains on normals only, so random augmentation is off unless a
    config asks for it. ``seed`` seeds albumentations' own generators (it does not use the
    global numpy state); data loader workers reseed it per worker (``seed_worker``).
    ``strict=True`` turns invalid transform arguments into errors instead of warnings.
    """
    mean = (NORMALIZE_MEAN,) * channels
    std = (NORMALIZE_STD,) * channels
    return A.Compose(
        [
            *(augmentations or ()),
            A.Normalize(mean=mean, std=std, max_pixel_value=MAX_PIXEL_VALUE),
            ToTensorV2(),
        ],
        strict=True,
        seed=seed,
    )


def build_transform(
    image_size: int,
    channels: int,
    augmentations: Sequence[A.BasicTransform] | None = None,
) -> A.Compose:
    """Resize to a square, normalise to [-1, 1] and convert to a CHW tensor (uncached).

    Images are resized with INTER_AREA; masks passed as ``mask=`` use nearest neighbour.
    The datasets use ``resize_image`` + ``build_normalize_transform`` instead so the
    resized array can be cached; this one-shot pipeline gives the same pixels.
    """
    mean = (NORMALIZE_MEAN,) * channels
    std = (NORMALIZE_STD,) * channels
    return A.Compose(
        [
            A.Resize(
                image_size,
                image_size,
                interpolation=IMAGE_INTERPOLATION,
                mask_interpolation=MASK_INTERPOLATION,
            ),
            *(augmentations or ()),
            A.Normalize(mean=mean, std=std, max_pixel_value=MAX_PIXEL_VALUE),
            ToTensorV2(),
        ],
        strict=True,
    )


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Map a normalised image (or generator output) from [-1, 1] back to [0, 1] for display."""
    return (image * NORMALIZE_STD + NORMALIZE_MEAN).clamp(0.0, 1.0)
