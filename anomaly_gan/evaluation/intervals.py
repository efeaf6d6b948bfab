"""How far an image AUROC, or a lift, could move with another draw of test images.

Inspection test sets are small: the MVTec 3D-AD tyres' report part holds 17 normal
images, and one image more or less ranked above a defect moves the AUROC by several
hundredths. A lift of +0.03 over the no-learning reference means little if another test
set of the same size could as well give -0.05. The interval here is a stratified
percentile bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", ch. 13):
normal and defective images are resampled with replacement separately, so every resample
keeps the test set's class counts, and the AUROC (torchmetrics) is recomputed on each.
For a lift the *same* resamples score the model and the reference, so what both rank alike
cancels (a paired interval). It is seeded: the same scores give the same interval.

It covers the test images only: the seed-to-seed spread of training is a separate
source of variation (run several seeds for it).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from anomaly_gan.evaluation.metrics import unit_interval

#: Bootstrap resamples (with 2000 the interval's ends move by about 0.005-0.007 (one std)
#: between resampling seeds on a 17 + 61 image set).
RESAMPLES = 2000
#: Two-sided coverage of the interval.
LEVEL = 0.95
#: Seed of the resampling (fixed: an interval is reproducible from the scores alone).
SEED = 0


def _unit(scores: Tensor) -> Tensor:
    """Min-max scaled into [0, 1] (rank-preserving; torchmetrics reads scores outside it
    as logits), as :func:`.metrics.image_metrics` scales them."""
    return unit_interval(scores.detach().double().flatten().cpu()).float()


def auroc_interval(
    labels: Tensor,
    scores: Tensor,
    baseline: Tensor | None = None,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float] | None:
    """The ``level`` percentile-bootstrap interval of the image AUROC of ``scores``, or of
    ``AUROC(scores) - AUROC(baseline)`` when ``baseline`` (the same images' scores by
    another detector) is given. None when either class is missing.

    Args:
        labels: (N,) 1 = defective, 0 = normal.
        scores, baseline: (N,) one score per image, larger = more anomalous.
    """
    labels = labels.detach().long().flatten().cpu()
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    normal = torch.nonzero(labels == 0).flatten()
    defective = torch.nonzero(labels == 1).flatten()
    if normal.numel() == 0 or defective.numel() == 0:
        return None
    detectors = [_unit(scores)] + ([_unit(baseline)] if baseline is not None else [])
    if any(d.numel() != labels.numel() for d in detectors):
        raise ValueError(
            f"auroc_interval needs one score per label: {labels.numel()} labels, "
            f"{[d.numel() for d in detectors]} scores"
        )
    generator = torch.Generator().manual_seed(seed)
    resampled_labels = torch.cat(
        [torch.zeros(normal.numel()), torch.ones(defective.numel())]
    ).long()
    values = torch.empty(resamples, dtype=torch.float64)
    for index in range(resamples):
        picked = torch.cat(
            [
                normal[torch.randint(normal.numel(), (normal.numel(),), generator=generator)],
                defective[
                    torch.randint(defective.numel(), (defective.numel(),), generator=generator)
                ],
            ]
        )
        aurocs = [float(binary_auroc(d[picked], resampled_labels)) for d in detectors]
        values[index] = aurocs[0] - (aurocs[1] if baseline is not None else 0.0)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    # float32 AUROCs of a perfect ranking can come out a rounding step above 1.
    floor = -1.0 if baseline is not None else 0.0
    return max(float(low), floor), min(float(high), 1.0)
