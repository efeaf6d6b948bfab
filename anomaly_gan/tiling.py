"""Cut a frame into overlapping square tiles and stitch per-tile results back together.

``data.resize=tile`` (:mod:`anomaly_gan.data.geometry`) gives images larger than the model's
input. The model reconstructs every ``tile`` × ``tile`` window at a stride of half a tile
(the last window in each direction is moved back to end at the border, so every pixel is
covered and no padding is invented) and the windows' outputs are averaged where they
overlap. Averaging overlaps removes the seams a non-overlapping grid leaves at tile borders,
which a reconstruction score would otherwise read as defects.

Positions depend only on the frame and tile sizes, so they are constants in a traced or
exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Stride between neighbouring tiles as a fraction of the tile side.
TILE_STRIDE_FRACTION = 0.5


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of ``tile`` covering ``[0, length)``; the last ends at
    ``length``. ``length < tile`` is an error (a frame is never smaller than a tile)."""
    if length < tile:
        raise ValueError(f"cannot tile a side of {length} px with {tile} px tiles")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one frame lie: frame (height, width), tile side, start offsets."""

    height: int
    width: int
    tile: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def for_frame(cls, height: int, width: int, tile: int) -> TileLayout:
        stride = max(1, int(tile * TILE_STRIDE_FRACTION))
        return cls(
            height,
            width,
            tile,
            tuple(tile_starts(height, tile, stride)),
            tuple(tile_starts(width, tile, stride)),
        )

    @property
    def count(self) -> int:
        """Tiles per frame."""
        return len(self.rows) * len(self.cols)


def split_tiles(images: Tensor, layout: TileLayout) -> Tensor:
    """(B, C, H, W) -> (B * count, C, tile, tile); the tiles of image b are rows
    ``b * count ... (b + 1) * count - 1``, in row-major order of their positions."""
    size = layout.tile
    tiles = [
        images[:, :, top : top + size, left : left + size]
        for top in layout.rows
        for left in layout.cols
    ]
    return torch.stack(tiles, dim=1).flatten(0, 1)


def stitch_tiles(tiles: Tensor, layout: TileLayout) -> Tensor:
    """Inverse of :func:`split_tiles`: (B * count, C, tile, tile) -> (B, C, H, W), the mean of
    every tile that covers a pixel."""
    size = layout.tile
    per_image = tiles.unflatten(0, (-1, layout.count))
    batch, channels = per_image.shape[0], per_image.shape[2]
    total = tiles.new_zeros(batch, channels, layout.height, layout.width)
    coverage = tiles.new_zeros(1, 1, layout.height, layout.width)
    index = 0
    for top in layout.rows:
        for left in layout.cols:
            total[:, :, top : top + size, left : left + size] += per_image[:, index]
            coverage[:, :, top : top + size, left : left + size] += 1
            index += 1
    return total / coverage
