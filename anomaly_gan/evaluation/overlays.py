"""Anomaly-map overlays for ``predict.py``: the map over the input, at the input's resolution.

Colour = ``map / map_scale`` clipped to [0, 1] (jet, half transparent):

- the default map (``scorer.localization_map="error"``, the plain error |x − x̂|):
  ``map_scale`` is the error that almost no pixel of the validation normals reaches (their
  99.9th percentile, set at every validation). Full red marks an error beyond what normal
  parts show, and the colours mean the same in every image;
- a map that is the score's own (``localization_map="score"``): when the score has a
  reconstruction term (``scorer.reconstruction_weight`` w > 0) and a threshold is stored,
  ``map_scale = threshold / w``: the mean per-pixel error at which the reconstruction term
  alone reaches the decision threshold. Full red marks a pixel whose error is at least that
  large, and the colours mean the same in every image;
- otherwise (a latent-only score, or a checkpoint without a threshold or, for the error
  map, without its validation scale) the map is
  not on the score's scale, so each overlay is scaled by its own maximum: it shows *where*
  the reconstruction differs most, not *how much*. The predictions CSV's ``map_scale``
  column says which scale each overlay used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from anomaly_gan.data.dataset import read_image

if TYPE_CHECKING:
    from anomaly_gan.models.core import GanAnomalyModule

OVERLAY_ALPHA = 0.5


class OverlayError(RuntimeError):
    """An overlay could not be written."""


def map_scale(model: GanAnomalyModule) -> float | None:
    """The map value that colours full red, or None for "each overlay by its own maximum".

    ``threshold / reconstruction_weight``: the mean per-pixel error at which the score's
    reconstruction term alone reaches the decision threshold (module docstring).
    """
    return model.scorer.map_scale()


def overlay_name(path: Path, root: Path | None, used: set[str]) -> str:
    """A unique ``.png`` name for ``path``: its folders under ``root`` joined by ``__``."""
    relative = path.relative_to(root) if root is not None else Path(path.name)
    stem = "__".join(relative.with_suffix("").parts)
    name, counter = f"{stem}.png", 1
    while name in used:  # a.png and a.jpg in one folder
        counter += 1
        name = f"{stem}_{counter}.png"
    used.add(name)
    return name


def write_overlay(
    image_path: Path, anomaly_map: np.ndarray, scale: float, channels: int, destination: Path
) -> Path:
    """Anomaly map (H, W) / ``scale`` in jet over the original image, at its resolution."""
    original = read_image(image_path, channels)  # (H, W, C) on 0..255, RGB for colour
    original = np.clip(original, 0, 255).astype(np.uint8)
    bgr = (
        cv2.cvtColor(original[:, :, 0], cv2.COLOR_GRAY2BGR)
        if original.shape[2] == 1
        else cv2.cvtColor(original, cv2.COLOR_RGB2BGR)
    )
    height, width = bgr.shape[:2]
    resized = cv2.resize(anomaly_map.astype(np.float32), (width, height), cv2.INTER_LINEAR)
    unit = np.clip(resized / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(resized)
    heat = cv2.applyColorMap(np.round(unit * 255).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(bgr, 1 - OVERLAY_ALPHA, heat, OVERLAY_ALPHA, 0)
    ok, encoded = cv2.imencode(".png", blended)
    if not ok:
        raise OverlayError(f"OpenCV could not encode the overlay for {image_path}.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(encoded.tobytes())
    return destination


__all__ = ["OVERLAY_ALPHA", "OverlayError", "map_scale", "overlay_name", "write_overlay"]
