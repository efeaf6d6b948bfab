"""Every image and mask of a run checked at ``setup``, before the first training step.

Without this a bad file is found when a loader first decodes it: hours into a long run,
or never when it falls in the batch that ``drop_last`` drops. The check is cheap enough to
run on every start: PNG and JPEG files are read at their header (size, channels, bit
depth) and their last kilobyte (the end-of-image marker an interrupted copy loses), many
files at once; other formats (BMP, TIFF) are decoded whole. What it refuses, by name:

- unreadable, empty, truncated or non-image files;
- masks whose size differs from their image's;
- pixel formats the loader cannot convert: bit depths other than 1-8 and 16 (float or
  32-bit TIFFs, 12-bit JPEGs), more than four channels.

What it converts, and says so when a set mixes them: grey and colour files (to
``data.channels``), alpha channels (dropped), 16-bit files (to the 8-bit range, / 257). A
file with intact header and end marker but damaged pixel data in between still fails when
it is first decoded, with an error naming it.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from anomaly_gan.data.dataset import (
    _JPEG_MAGIC,
    _PNG_MAGIC,
    DatasetError,
    Sample,
    _check_complete,
    _decode,
    mask_size_error,
)

#: Header bytes read from every file (a PNG's IHDR is in the first 33).
_HEAD = 64 * 1024
#: Tail bytes read: where the end-of-image marker must be (dataset._END_MARKER_WINDOW).
_TAIL = 1024
#: PNG colour type -> channels OpenCV decodes it to (grey+alpha and palette+tRNS: BGRA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}


@dataclass(frozen=True)
class FileInfo:
    """What a file decodes to: size, channels (1, 3, 4 = with alpha) and bits per sample."""

    width: int
    height: int
    channels: int
    bit_depth: int

    def describe(self) -> str:
        colour = {1: "grey", 3: "colour", 4: "colour+alpha"}.get(self.channels, "?")
        return f"{self.bit_depth}-bit {colour}"


def _unsupported(path: Path, what: str) -> DatasetError:
    return DatasetError(
        f"Image {path} is {what}; only 8-bit and 16-bit grey or colour images (with or "
        "without alpha) can be read. Fix: convert it (e.g. to an 8-bit or 16-bit PNG) or "
        "remove it, or set data.skip_corrupt=true to skip such files with a warning."
    )


def _read_head_and_tail(path: Path, what: str) -> bytes:
    """The file's first ``_HEAD`` bytes and last ``_TAIL`` bytes (the whole file if small)."""
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size <= _HEAD + _TAIL:
                return stream.read()
            head = stream.read(_HEAD)
            stream.seek(size - _TAIL)
            return head + stream.read()
    except OSError as error:
        raise DatasetError(
            f"Cannot read {what} {path}: {error.strerror or error}. Check that the file "
            "exists and is readable, or remove it from the dataset."
        ) from error


def _not_an_image(path: Path, what: str) -> DatasetError:
    return DatasetError(
        f"Cannot read {what} {path}: the file is empty, truncated or not an image format "
        "OpenCV can decode. Replace or remove this file, or set data.skip_corrupt=true to "
        "skip bad files with a warning."
    )


def probe_file(path: Path, what: str = "image") -> FileInfo:
    """Check one file without decoding its pixels (PNG, JPEG) and say what it holds.

    Raises ``DatasetError`` naming the file when it is unreadable, truncated or, for an
    image, in a pixel format the loader cannot convert.
    """
    data = _read_head_and_tail(path, what)
    _check_complete(path, data, what)
    if data.startswith(_PNG_MAGIC):
        if data[12:16] != b"IHDR" or len(data) < 26:
            raise _not_an_image(path, what)
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
            raise _not_an_image(path, what)
        info = FileInfo(width, height, _PNG_CHANNELS[colour], 16 if depth == 16 else 8)
    elif data.startswith(_JPEG_MAGIC):
        try:
            with Image.open(path) as image:  # reads the markers up to the frame header only
                width, height = image.size
                bits, layers = getattr(image, "bits", 8), getattr(image, "layers", 3)
        except (OSError, ValueError, SyntaxError) as error:
            raise _not_an_image(path, what) from error
        if what == "image" and bits != 8:
            raise _unsupported(path, f"a {bits}-bit JPEG")
        info = FileInfo(width, height, 1 if layers == 1 else 3, 8)
    else:  # BMP, TIFF, ...: small or rare here; decode the whole file
        array = _decode(path, cv2.IMREAD_UNCHANGED, what)
        channels = 1 if array.ndim == 2 else array.shape[2]
        depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(array.dtype)
        if what == "image" and depth is None:
            raise _unsupported(path, f"of pixel type {array.dtype}")
        info = FileInfo(array.shape[1], array.shape[0], channels, depth or 8)
    if what == "image" and info.channels not in (1, 3, 4):
        raise _unsupported(path, f"{info.channels}-channel")
    return info


@dataclass
class Verification:
    """The outcome of ``verify_samples``: unusable samples with the reason, and what the
    images that can be used hold."""

    bad: dict[Sample, str]
    images: dict[Path, FileInfo]


def _check_sample(sample: Sample) -> tuple[FileInfo | None, str | None]:
    try:
        image = probe_file(sample.image_path, "image")
        if sample.mask_path is not None:
            mask = probe_file(sample.mask_path, "mask")
            if (mask.width, mask.height) != (image.width, image.height):
                raise mask_size_error(
                    sample.mask_path,
                    (mask.height, mask.width),
                    sample.image_path,
                    (image.height, image.width),
                )
    except DatasetError as error:
        return None, str(error)
    return image, None


def verify_samples(samples: Iterable[Sample], workers: int | None = None) -> Verification:
    """Check every sample's image and mask, many files at once (I/O bound: threads)."""
    unique = list(dict.fromkeys(samples))
    workers = workers or min(16, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as pool:
        outcomes = list(pool.map(_check_sample, unique))
    bad = {s: reason for s, (_, reason) in zip(unique, outcomes, strict=True) if reason}
    images = {s.image_path: info for s, (info, _) in zip(unique, outcomes, strict=True) if info}
    return Verification(bad, images)


def mixed_formats(images: dict[Path, FileInfo], group: str, shown: int = 3) -> str | None:
    """A sentence naming the images of ``group`` whose format differs from most of them
    (None: all alike).

    Such files are converted like the rest; the sentence lets a user spot a set that was
    assembled from two sources (e.g. 16-bit files among 8-bit ones). Groups are checked
    apart: a test set of another category may well differ from the training images.
    """
    kinds = Counter(info.describe() for info in images.values())
    if len(kinds) < 2:
        return None
    common = kinds.most_common(1)[0][0]
    parts = []
    for kind, count in kinds.most_common()[1:]:
        paths = [str(p) for p, info in images.items() if info.describe() == kind][:shown]
        more = f" and {count - len(paths)} more" if count > len(paths) else ""
        parts.append(f"{count} {kind} ({', '.join(paths)}{more})")
    return (
        f"The {group} mix pixel formats: most of the {len(images)} are {common}, but "
        f"{'; '.join(parts)}. They are converted like the rest (grey/colour to data.channels, "
        "alpha dropped, 16-bit scaled to 8-bit by / 257); check that they belong to the set "
        "(a 16-bit file holding 10- or 12-bit data comes out dark)."
    )
