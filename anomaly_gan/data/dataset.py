"""A map-style dataset over a list of ``Sample`` records.

Scanning (which files exist, which label each has) is kept apart from reading, so every
dataset layout (MVTec AD, synthetic, ...) only has to produce ``Sample`` lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from anomaly_gan.data.transforms import build_transform

NORMAL = 0
ANOMALOUS = 1


class DatasetError(ValueError):
    """A problem with the data on disk that the user can fix (path, layout, bad file)."""


@dataclass(frozen=True)
class Sample:
    """One image on disk: label 0 = normal, 1 = anomalous; ``mask_path`` None = no mask."""

    image_path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None

    def __post_init__(self) -> None:
        if self.label not in (NORMAL, ANOMALOUS):
            raise ValueError(
                f"Sample label must be {NORMAL} (normal) or {ANOMALOUS} (anomalous), "
                f"got {self.label!r} for {self.image_path}"
            )


def _to_channels(image: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """Convert a cv2 image (gray, BGR or BGRA) to (H, W, channels), RGB order for colour."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        gray = image
        if channels == 1:
            return gray[:, :, None]
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise DatasetError(
            f"Image {path} has shape {image.shape}; expected grayscale, BGR or BGRA. "
            "Convert it to a standard 1-, 3- or 4-channel image or remove it."
        )
    bgr = image[:, :, :3]  # an alpha channel carries no appearance, drop it
    if channels == 1:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image(path: Path, channels: int) -> np.ndarray:
    """Read any 8/16-bit gray/BGR/BGRA file as (H, W, channels) on a 0..255 scale.

    8-bit stays uint8; 16-bit becomes float32 divided by 257 (65535 -> 255) so it keeps
    its precision and shares the 8-bit normalisation.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(
            f"Cannot read image {path}: the file is missing, truncated or not an image "
            "format OpenCV can decode. Remove or replace this file and run again."
        )
    if image.dtype == np.uint16:
        image = image.astype(np.float32) / 257.0
    elif image.dtype != np.uint8:
        raise DatasetError(
            f"Image {path} has pixel type {image.dtype}; only 8-bit and 16-bit images are "
            "supported. Convert it to an 8-bit or 16-bit PNG."
        )
    return _to_channels(image, channels, path)


def read_mask(path: Path) -> np.ndarray:
    """Read a ground-truth mask as uint8 (H, W) with values 0/1 (any non-zero pixel = defect)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(
            f"Cannot read mask {path}: the file is missing, truncated or not an image. "
            "Remove or replace it (or remove its image) and run again."
        )
    return (mask > 0).astype(np.uint8)


class AnomalyImageDataset(Dataset):
    """Reads ``Sample`` records into the batch contract shared by all models.

    Item: ``image`` float32 (C, H, W) in [-1, 1]; ``label`` int64 0-dim; ``mask`` float32
    (1, H, W) of 0/1 (zeros when there is no mask); ``image_path``; ``defect_type``.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, channels: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.samples = list(samples)
        self.image_size = image_size
        self.channels = channels
        self.transform = build_transform(image_size, channels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = read_image(sample.image_path, self.channels)
        if sample.mask_path is None:
            out = self.transform(image=image)
            mask = torch.zeros(1, self.image_size, self.image_size, dtype=torch.float32)
        else:
            raw_mask = read_mask(sample.mask_path)
            if raw_mask.shape != image.shape[:2]:
                raise DatasetError(
                    f"Mask {sample.mask_path} is {raw_mask.shape[1]}x{raw_mask.shape[0]} "
                    f"but its image {sample.image_path} is {image.shape[1]}x{image.shape[0]}"
                    " (width x height). Each mask must match its image; check the pairing."
                )
            out = self.transform(image=image, mask=raw_mask)
            mask = out["mask"].to(torch.float32).unsqueeze(0)  # (H, W) -> (1, H, W)
        return {
            "image": out["image"].to(torch.float32),
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "mask": mask,
            "image_path": str(sample.image_path),
            "defect_type": sample.defect_type,
        }
