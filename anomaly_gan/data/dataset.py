"""A map-style dataset over a list of ``Sample`` records.

Scanning (which files exist, which label each has) is kept apart from reading, so every
dataset layout (MVTec AD, VisA, KolektorSDD, folders, synthetic) only has to produce
``Sample`` lists. Reading decodes and resizes each file once and keeps the result in an
``ImageCache`` (memory + disk), so epochs after the first do no image decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from anomaly_gan.data.cache import Decoded, ImageCache
from anomaly_gan.data.geometry import IMAGE_INTERPOLATION, MASK_INTERPOLATION, Geometry
from anomaly_gan.data.transforms import INTERPOLATION_NAMES, build_normalize_transform

NORMAL = 0
ANOMALOUS = 1
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND"
# JPEG entropy-coded data can never contain FF D9 (FF is byte-stuffed), so a complete file
# has its end marker near the end; a little slack allows padding some cameras append.
_END_MARKER_WINDOW = 1024


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


# ---------------------------------------------------------------------------- decoding
def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(
            f"Cannot read {what} {path}: {error.strerror or error}. Check that the file "
            "exists and is readable, or remove it from the dataset."
        ) from error


def _check_complete(path: Path, data: bytes, what: str) -> None:
    """Refuse truncated JPEG/PNG files: OpenCV decodes a cut JPEG with only a warning."""
    tail = data[-_END_MARKER_WINDOW:]
    truncated = (data.startswith(_JPEG_MAGIC) and _JPEG_END not in tail) or (
        data.startswith(_PNG_MAGIC) and _PNG_END not in tail
    )
    if truncated:
        raise DatasetError(
            f"{what.capitalize()} {path} is truncated (its end-of-image marker is missing; "
            "an interrupted copy or download?). Fix: replace or remove the file, or set "
            "data.skip_corrupt=true to skip bad files with a warning."
        )


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    data = _read_bytes(path, what)
    _check_complete(path, data, what)
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags) if data else None
    if decoded is None:
        raise DatasetError(
            f"Cannot read {what} {path}: the file is empty, truncated or not an image format "
            "OpenCV can decode. Replace or remove this file, or set data.skip_corrupt=true "
            "to skip bad files with a warning."
        )
    return decoded


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
    its precision and shares the 8-bit normalisation. Grayscale and colour files both
    load as ``channels`` (1: luminance, 3: RGB), so ``data.channels`` alone decides what
    the model sees.
    """
    image = _decode(path, cv2.IMREAD_UNCHANGED, "image")
    if image.dtype == np.uint16:
        image = image.astype(np.float32) / 257.0
    elif image.dtype != np.uint8:
        raise DatasetError(
            f"Image {path} has pixel type {image.dtype}; only 8-bit and 16-bit images are "
            "supported. Convert it to an 8-bit or 16-bit PNG."
        )
    return _to_channels(image, channels, path)


def mask_size_error(
    mask_path: Path, mask_size: tuple[int, int], image_path: Path, image_size: tuple[int, int]
) -> DatasetError:
    """The error for a mask whose (height, width) differs from its image's: a mispairing
    (or a resized copy) that would score the defect in the wrong place."""
    (mask_h, mask_w), (image_h, image_w) = mask_size, image_size
    return DatasetError(
        f"Mask {mask_path} is {mask_w}x{mask_h} but its image {image_path} is "
        f"{image_w}x{image_h} (width x height). Each mask must match its image; check the "
        "pairing, or set data.skip_corrupt=true to skip such pairs with a warning."
    )


def read_mask(path: Path) -> np.ndarray:
    """Read a ground-truth mask as uint8 (H, W) with values 0/1 (any non-zero pixel = defect).

    Binarising here covers masks stored as 255, as class indices (VisA) or anti-aliased.
    """
    mask = _decode(path, cv2.IMREAD_GRAYSCALE, "mask")
    return (mask > 0).astype(np.uint8)


# ---------------------------------------------------------------------------- dataset
class AnomalyImageDataset(Dataset):
    """Reads ``Sample`` records into the batch contract shared by all models.

    Item: ``image`` float32 (C, H, W) in [-1, 1]; ``label`` int64 0-dim; ``mask`` float32
    (1, H, W) of 0/1 (zeros when there is no mask); ``image_path``; ``defect_type``.

    ``cache`` (optional, may be shared by several datasets) keeps the decoded, resized
    arrays; without it every access decodes the file again. ``geometry`` (or a plain
    ``image_size``: a square) says the arrays' shape (``anomaly_gan.data.geometry``).
    ``augmentations`` run on the resized array; ``seed`` seeds them in this process, and
    ``seed_worker`` reseeds them in each DataLoader worker. ``normalization``: ``fixed`` or
    ``per_image`` (transforms). ``random_tiles``: in tile geometry, return a random
    ``image_size`` crop of the frame instead of the frame (training).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        geometry: Geometry | int,
        channels: int,
        cache: ImageCache | None = None,
        augmentations: Sequence[A.BasicTransform] | None = None,
        seed: int | None = 0,
        normalization: str = "fixed",
        random_tiles: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.samples = list(samples)
        self.geometry = geometry if isinstance(geometry, Geometry) else Geometry(int(geometry))
        self.image_size = self.geometry.image_size
        self.channels = channels
        self.cache = cache
        self.normalization = normalization
        crop = self.image_size if random_tiles and self.geometry.tiled else None
        self.output_shape = (crop, crop) if crop is not None else self.geometry.shape
        self.transform = build_normalize_transform(
            channels, augmentations, seed=seed, normalization=normalization, crop=crop
        )
        interpolation = INTERPOLATION_NAMES[IMAGE_INTERPOLATION]
        key = self.geometry.cache_key()
        self._image_settings = (*key, channels, interpolation)
        self._mask_settings = (*key, INTERPOLATION_NAMES[MASK_INTERPOLATION])

    def __len__(self) -> int:
        return len(self.samples)

    def seed_transforms(self, seed: int) -> None:
        """Reseed the augmentation generators (called once per DataLoader worker)."""
        self.transform.set_random_seed(seed)

    # ------------------------------------------------------------------ reading
    def _cached(
        self, path: Path, kind: str, settings: tuple[Any, ...], build: Callable[[], Decoded]
    ) -> Decoded:
        if self.cache is None:
            return build()
        return self.cache.get(path, kind, settings, build)

    def _decode_image(self, path: Path) -> Decoded:
        image = read_image(path, self.channels)
        return Decoded(self.geometry.resize_image(image), (image.shape[0], image.shape[1]))

    def _decode_mask(self, path: Path) -> Decoded:
        mask = read_mask(path)
        return Decoded(self.geometry.resize_mask(mask), (mask.shape[0], mask.shape[1]))

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Resized (image (H, W, C), mask (H, W) or None) of one sample, through the cache.

        Raises ``DatasetError`` naming the file when it cannot be decoded or when a mask
        does not match its image's size.
        """
        sample = self.samples[index]
        image = self._cached(
            sample.image_path,
            "image",
            self._image_settings,
            lambda: self._decode_image(sample.image_path),
        )
        if sample.mask_path is None:
            return image.array, None
        mask_path = sample.mask_path
        mask = self._cached(
            mask_path, "mask", self._mask_settings, lambda: self._decode_mask(mask_path)
        )
        if mask.source_size != image.source_size:
            raise mask_size_error(mask_path, mask.source_size, sample.image_path, image.source_size)
        return image.array, mask.array

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, raw_mask = self.load_arrays(index)
        # Copies: cached arrays are shared read-only and augmentations may work in place.
        if raw_mask is None:
            out = self.transform(image=image.copy())
            mask = torch.zeros(1, *self.output_shape, dtype=torch.float32)
        else:
            out = self.transform(image=image.copy(), mask=raw_mask.copy())
            mask = out["mask"].to(torch.float32).unsqueeze(0)  # (H, W) -> (1, H, W)
        return {
            "image": out["image"].to(torch.float32),
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "mask": mask,
            "image_path": str(sample.image_path),
            "defect_type": sample.defect_type,
        }
