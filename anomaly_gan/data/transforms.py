"""Deterministic preprocessing shared by every dataset.

The generators end in Tanh, so images are mapped to [-1, 1] (mean 0.5, std 0.5 on [0, 1]
pixels). One function builds the pipeline so that image size, channels and normalisation
have a single source of truth: the data config.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import torch
from albumentations.pytorch import ToTensorV2

NORMALIZE_MEAN = 0.5
NORMALIZE_STD = 0.5
MAX_PIXEL_VALUE = 255.0


def build_transform(
    image_size: int,
    channels: int,
    augmentations: Sequence[A.BasicTransform] | None = None,
) -> A.Compose:
    """Resize to a square, normalise to [-1, 1] and convert to a CHW tensor.

    Images are resized with INTER_AREA (no aliasing when shrinking); masks passed as
    ``mask=`` use nearest neighbour so they stay binary. ``augmentations`` (default: none)
    run on the resized uint8/float image before normalisation; anomaly detection trains
    on normals only, so random augmentation is off unless a config asks for it.
    ``strict=True`` turns invalid transform arguments into errors instead of warnings.
    """
    mean = (NORMALIZE_MEAN,) * channels
    std = (NORMALIZE_STD,) * channels
    return A.Compose(
        [
            A.Resize(
                image_size,
                image_size,
                interpolation=cv2.INTER_AREA,
                mask_interpolation=cv2.INTER_NEAREST,
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
