"""Pixel-level metrics from anomaly maps: pixel AUROC and AUPRO.

The published GANomaly code and anomalib's GANomaly stop at image level
(docs/reference-code.md, section 5); every architecture here also yields a per-pixel anomaly
map (the reconstruction error), so defects can be located and localisation measured against
the ground-truth masks.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc

#: Above this many pixels the pixel AUROC is computed with 1,000 fixed thresholds (binned,
#: constant memory) instead of exactly.
EXACT_PIXEL_LIMIT = 20_000_000


class AUPRO(Metric):
    """Area under the per-region-overlap curve up to a false-positive rate (Bergmann 2020).

    PRO(t) is the mean, over connected ground-truth regions, of the fraction of the region's
    pixels scored >= t; FPR(t) is the fraction of normal pixels scored >= t. The curve is
    integrated over FPR in [0, ``fpr_limit``] and divided by ``fpr_limit`` (1.0 is perfect).
    Unlike pixel AUROC it weighs a small defect as much as a large one.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, fpr_limit: float = 0.3, num_thresholds: int = 300, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < fpr_limit <= 1:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.fpr_limit = fpr_limit
        self.num_thresholds = num_thresholds
        self.add_state("maps", default=[], dist_reduce_fx="cat")
        self.add_state("masks", default=[], dist_reduce_fx="cat")

    def update(self, maps: Tensor, masks: Tensor) -> None:
        """maps, masks: (B, 1, H, W) or (B, H, W); masks are 0/1."""
        self.maps.append(maps.detach().reshape(maps.shape[0], *maps.shape[-2:]).float())
        self.masks.append(masks.detach().reshape(masks.shape[0], *masks.shape[-2:]) > 0.5)

    def compute(self) -> Tensor:
        maps = torch.cat(self.maps) if isinstance(self.maps, list) else self.maps
        masks = torch.cat(self.masks) if isinstance(self.masks, list) else self.masks
        return aupro(maps, masks, self.fpr_limit, self.num_thresholds)


def _regions(masks: np.ndarray) -> list[np.ndarray]:
    """Flat pixel indices of every 8-connected ground-truth region, over all images."""
    regions: list[np.ndarray] = []
    plane = masks.shape[1] * masks.shape[2]
    for index, mask in enumerate(masks):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for label in range(1, count):
            regions.append(index * plane + np.flatnonzero(labels == label))
    return regions


def aupro(maps: Tensor, masks: Tensor, fpr_limit: float = 0.3, num_thresholds: int = 300) -> Tensor:
    """Normalised area under the PRO curve for FPR <= ``fpr_limit``; NaN without regions."""
    maps = maps.detach().double().cpu()
    masks = masks.detach().bool().cpu()
    flat_scores = maps.flatten()
    flat_masks = masks.flatten()
    regions = _regions(masks.numpy())
    negatives = flat_scores[~flat_masks]
    if not regions or negatives.numel() == 0:
        return torch.tensor(float("nan"))
    negatives_sorted = negatives.sort().values
    # Thresholds at FPR levels spanning [0, fpr_limit] (a little past it, to interpolate).
    levels = torch.linspace(0.0, min(1.0, fpr_limit * 1.05), num_thresholds, dtype=torch.float64)
    thresholds = torch.quantile(negatives_sorted, (1.0 - levels).clamp(0, 1))
    thresholds = torch.unique(thresholds).flip(0)  # descending -> FPR ascending
    n_neg = negatives_sorted.numel()
    fpr = (n_neg - torch.searchsorted(negatives_sorted, thresholds)) / n_neg
    overlaps = torch.zeros_like(thresholds)
    for pixels in regions:
        region = flat_scores[torch.from_numpy(pixels)].sort().values
        overlaps += (region.numel() - torch.searchsorted(region, thresholds)) / region.numel()
    pro = overlaps / len(regions)
    if fpr[0] > 0:  # the curve starts at (0, 0): a threshold above every score
        fpr, pro = torch.cat([fpr.new_zeros(1), fpr]), torch.cat([pro.new_zeros(1), pro])
    # Cut the curve exactly at fpr_limit.
    inside = fpr <= fpr_limit
    fpr_in, pro_in = fpr[inside], pro[inside]
    if (~inside).any():
        after = int(torch.nonzero(~inside)[0])
        before = after - 1
        span = fpr[after] - fpr[before]
        weight = (fpr_limit - fpr[before]) / span if span > 0 else 0.0
        pro_at_limit = pro[before] + weight * (pro[after] - pro[before])
        fpr_in = torch.cat([fpr_in, fpr_in.new_tensor([fpr_limit])])
        pro_in = torch.cat([pro_in, pro_at_limit.reshape(1)])
    return (torch.trapezoid(pro_in, fpr_in) / fpr_limit).float()


def pixel_metrics(maps: Tensor, masks: Tensor, fpr_limit: float = 0.3) -> dict[str, Any]:
    """Pixel AUROC and AUPRO for one test set; ``None`` when no image has a defect mask."""
    masks = masks.detach().reshape(maps.shape[0], *maps.shape[-2:]).cpu() > 0.5
    maps = maps.detach().reshape(maps.shape[0], *maps.shape[-2:]).cpu().float()
    if not masks.any() or masks.all():
        return {"pixel_auroc": None, "aupro": None}
    flat_maps = maps.flatten()
    low, high = flat_maps.min(), flat_maps.max()
    # Min-max into [0, 1] over the whole set so torchmetrics does not apply a sigmoid.
    unit = (flat_maps - low) / (high - low) if high > low else torch.zeros_like(flat_maps)
    thresholds = None if unit.numel() <= EXACT_PIXEL_LIMIT else 1000
    auroc = binary_auroc(unit, masks.flatten().long(), thresholds=thresholds)
    return {
        "pixel_auroc": float(auroc),
        "aupro": float(aupro(maps, masks, fpr_limit)),
        "aupro_fpr_limit": fpr_limit,
    }
