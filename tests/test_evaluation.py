"""Metrics on known inputs: image metrics, pixel AUROC and AUPRO."""

from __future__ import annotations

import math

import pytest
import torch

from anomaly_gan.evaluation.localization import AUPRO, aupro, pixel_metrics
from anomaly_gan.evaluation.metrics import image_metrics, threshold_from_normals


def _masks() -> torch.Tensor:
    masks = torch.zeros(40, 32, 32)
    for i in range(0, 40, 2):  # every other image has one square defect
        masks[i, i % 20 : i % 20 + 6, 4:10] = 1
    return masks


def test_aupro_perfect_random_and_half_found() -> None:
    torch.manual_seed(0)
    masks = _masks()
    perfect = masks + 0.01 * torch.rand_like(masks)
    assert float(aupro(perfect, masks)) == pytest.approx(1.0, abs=0.01)
    # Random maps: PRO ~ FPR, so the normalised area up to 0.3 is ~0.15.
    assert float(aupro(torch.rand_like(masks), masks)) == pytest.approx(0.15, abs=0.03)
    # Half of the regions found perfectly, half missed entirely (scored below all normals).
    half = perfect.clone()
    half[::4] = -masks[::4]
    assert float(aupro(half, masks)) == pytest.approx(0.5, abs=0.03)


def test_aupro_metric_accumulates_batches_like_one_call() -> None:
    masks = _masks()
    maps = masks * torch.rand_like(masks) + 0.3 * torch.rand_like(masks)
    metric = AUPRO()
    for start in range(0, 40, 7):
        metric.update(maps[start : start + 7, None], masks[start : start + 7, None])
    assert float(metric.compute()) == pytest.approx(float(aupro(maps, masks)), abs=1e-6)


def test_pixel_metrics_without_masks_are_none() -> None:
    metrics = pixel_metrics(torch.rand(3, 1, 8, 8), torch.zeros(3, 1, 8, 8))
    assert metrics == {"pixel_auroc": None, "aupro": None}


def test_pixel_auroc_matches_ranking() -> None:
    masks = _masks()
    metrics = pixel_metrics(masks * 5 + torch.rand_like(masks), masks)  # raw scale > 1
    assert metrics["pixel_auroc"] == pytest.approx(1.0)


def test_image_metrics_at_validation_threshold() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 10.0, 20.0, 0.25])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    metrics = image_metrics(scores, labels, threshold=0.28)
    assert metrics["confusion_matrix"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["auroc"] == pytest.approx(8 / 9)  # one anomaly ranks under one normal
    assert metrics["f1_max_oracle"] >= metrics["f1"]


def test_threshold_is_a_quantile_of_normal_scores() -> None:
    normal = torch.arange(101, dtype=torch.float32)
    assert threshold_from_normals(normal, 0.95) == pytest.approx(95.0)
    assert math.isnan(threshold_from_normals(torch.empty(0), 0.95))
    with pytest.raises(ValueError, match="threshold_quantile"):
        threshold_from_normals(normal, 1.5)
