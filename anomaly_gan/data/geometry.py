"""How an image of any size and aspect ratio becomes the array the model sees (``data.resize``).

Inspection images are rarely square (a 500×1250 px part, a 341×256 tyre patch) and small
defects are a few pixels wide at the source resolution. Squashing everything to a 64 px
square distorts the part and shrinks a hairline crack below one pixel. Four modes:

- ``squash`` (default, the papers): resize to ``image_size`` × ``image_size``, aspect ignored;
- ``pad``: keep the aspect ratio, the longer side becomes ``image_size``; the rest is filled
  by repeating the border pixels (no artificial edge for the model to "find");
- ``crop``: keep the aspect ratio, the shorter side becomes ``image_size``; the centred
  square is kept (what lies outside it is never inspected: use only when the part is
  centred);
- ``tile``: keep the aspect ratio at a higher resolution: every image is resized to one
  *frame* of height × width whose shorter side is ``tile_scale`` × ``image_size`` and whose
  aspect ratio is the median of the training images'. The model trains on random
  ``image_size`` crops of the frame (more, and more detailed, samples from a small set)
  and scores every overlapping tile of a test frame; the tiles' reconstructions are
  stitched back into one frame (:mod:`anomaly_gan.tiling`), so the anomaly map covers the
  whole image and the score pools over all of it.

Every mode yields one array shape for all images of a run, so batches stack. Masks follow
their images with nearest-neighbour resizing and zero padding.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

RESIZE_MODES = ("squash", "pad", "crop", "tile")
# INTER_AREA: no aliasing when shrinking; masks use nearest neighbour so they stay binary.
IMAGE_INTERPOLATION = cv2.INTER_AREA
MASK_INTERPOLATION = cv2.INTER_NEAREST


def check_resize(resize: object, tile_scale: object) -> None:
    """Reject unknown ``data.resize`` modes and a ``data.tile_scale`` below 1, naming the key."""
    if resize not in RESIZE_MODES:
        raise ValueError(
            f"data.resize={resize!r}: expected one of {', '.join(RESIZE_MODES)} (squash = "
            "square, aspect ignored; pad / crop = keep the aspect ratio; tile = keep it at "
            "tile_scale x image_size and score overlapping tiles)."
        )
    if isinstance(tile_scale, bool) or not isinstance(tile_scale, int | float) or tile_scale < 1:
        raise ValueError(
            f"data.tile_scale must be a number >= 1 (the frame's shorter side in multiples of "
            f"data.image_size), got {tile_scale!r}. Example: data.tile_scale=2."
        )


@dataclass(frozen=True)
class Geometry:
    """Target shape of every image: ``image_size`` is the model's input side; ``frame`` the
    (height, width) of the whole image in ``tile`` mode (``None`` otherwise)."""

    image_size: int
    resize: str = "squash"
    frame: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_resize(self.resize, 1)
        if (self.resize == "tile") != (self.frame is not None):
            raise ValueError("Geometry: a frame is given exactly when resize='tile'.")
        if self.frame is not None and min(self.frame) < self.image_size:
            raise ValueError(
                f"Geometry: frame {self.frame} is smaller than one {self.image_size} px tile."
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of every array this geometry produces."""
        return self.frame if self.frame is not None else (self.image_size, self.image_size)

    @property
    def tiled(self) -> bool:
        return self.frame is not None

    def cache_key(self) -> tuple[object, ...]:
        """What a cached array depends on (squash keeps the old key: ``image_size`` alone)."""
        if self.resize == "squash":
            return (self.image_size,)
        return (self.resize, *self.shape)

    # ------------------------------------------------------------------ resizing
    def resize_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) -> the geometry's (height, width, C), keeping the channel axis."""
        return _keep_channel_axis(self._apply(image, IMAGE_INTERPOLATION, cv2.BORDER_REPLICATE))

    def resize_mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) 0/1 mask -> the geometry's (height, width); padding is 0 (normal)."""
        return self._apply(mask, MASK_INTERPOLATION, cv2.BORDER_CONSTANT)

    def _apply(self, array: np.ndarray, interpolation: int, border: int) -> np.ndarray:
        height, width = array.shape[:2]
        side = self.image_size
        if self.resize == "squash":
            return cv2.resize(array, (side, side), interpolation=interpolation)
        if self.resize == "tile":
            frame_h, frame_w = self.shape
            return cv2.resize(array, (frame_w, frame_h), interpolation=interpolation)
        if self.resize == "pad":
            scale = side / max(height, width)
            new_h, new_w = _scaled(height, scale, side), _scaled(width, scale, side)
            resized = cv2.resize(array, (new_w, new_h), interpolation=interpolation)
            top, left = (side - new_h) // 2, (side - new_w) // 2
            return cv2.copyMakeBorder(
                resized, top, side - new_h - top, left, side - new_w - left, border, value=0
            )
        # crop
        scale = side / min(height, width)
        new_h, new_w = max(side, round(height * scale)), max(side, round(width * scale))
        resized = cv2.resize(array, (new_w, new_h), interpolation=interpolation)
        top, left = (new_h - side) // 2, (new_w - side) // 2
        return np.ascontiguousarray(resized[top : top + side, left : left + side])


def _scaled(length: int, scale: float, limit: int) -> int:
    return min(limit, max(1, round(length * scale)))


def _keep_channel_axis(resized: np.ndarray) -> np.ndarray:
    # cv2 drops a trailing axis of size 1
    return resized[:, :, None] if resized.ndim == 2 else resized


def tile_frame(
    sizes: Sequence[tuple[int, int]], image_size: int, tile_scale: float
) -> tuple[int, int]:
    """The (height, width) frame for ``tile`` mode: shorter side ``tile_scale × image_size``,
    the median aspect ratio (height / width) of ``sizes``; never smaller than one tile."""
    short = max(image_size, round(tile_scale * image_size))
    if not sizes:
        return short, short
    aspect = statistics.median(height / width for height, width in sizes)
    if aspect >= 1:
        return max(short, round(short * aspect)), short
    return short, max(short, round(short / aspect))
