"""Image-level detection metrics, all computed by torchmetrics on the whole test set.

Scores are collected for the full test set first and min-max scaled into [0, 1] once:
a monotone map that leaves every ranking metric unchanged and keeps torchmetrics from
treating raw scores outside [0, 1] as logits (it would apply a sigmoid, which saturates
and creates ties for large reconstruction errors).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_confusion_matrix,
    binary_f1_score,
    binary_precision,
    binary_precision_recall_curve,
    binary_recall,
)


def unit_interval(scores: Tensor) -> Tensor:
    """``scores`` min-max scaled into [0, 1] (all zeros when they are all equal)."""
    low, high = scores.min(), scores.max()
    if high <= low:
        return torch.zeros_like(scores)
    return (scores - low) / (high - low)


def image_metrics(scores: Tensor, labels: Tensor, threshold: float) -> dict[str, Any]:
    """Threshold-free and at-threshold metrics for one test set (labels: 1 = anomalous).

    ``f1_max_oracle`` is the best F1 over all thresholds, chosen with the test labels; it
    is reported for comparison with papers that do so, never used to pick anything.
    """
    scores = scores.detach().double().flatten().cpu()
    labels = labels.detach().long().flatten().cpu()
    n_anomalous = int(labels.sum())
    n_normal = int(labels.numel() - n_anomalous)
    result: dict[str, Any] = {
        "n_images": int(labels.numel()),
        "n_normal": n_normal,
        "n_anomalous": n_anomalous,
        "threshold": None if math.isnan(threshold) else threshold,
    }
    both_classes = n_normal > 0 and n_anomalous > 0
    unit = unit_interval(scores).float()
    if both_classes:
        result["auroc"] = float(binary_auroc(unit, labels))
        result["average_precision"] = float(binary_average_precision(unit, labels))
        precision, recall, _ = binary_precision_recall_curve(unit, labels)
        f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        result["f1_max_oracle"] = float(f1.max())
    else:
        result.update(auroc=None, average_precision=None, f1_max_oracle=None)

    if math.isnan(threshold):
        result.update(precision=None, recall=None, f1=None, accuracy=None, confusion_matrix=None)
        return result
    predictions = (scores >= threshold).long()
    result["precision"] = float(binary_precision(predictions, labels))
    result["recall"] = float(binary_recall(predictions, labels))
    result["f1"] = float(binary_f1_score(predictions, labels))
    result["accuracy"] = float(binary_accuracy(predictions, labels))
    (tn, fp), (fn, tp) = binary_confusion_matrix(predictions, labels).tolist()
    result["confusion_matrix"] = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    return result


def metrics_by_defect_type(
    scores: Tensor, labels: Tensor, defect_types: list[str], threshold: float
) -> dict[str, dict[str, Any]]:
    """Normals against each defect type alone: which kinds of defect the model finds."""
    kinds = sorted(
        {kind for kind, label in zip(defect_types, labels.tolist(), strict=True) if label}
    )
    normal = labels == 0
    per_type = {}
    for kind in kinds:
        chosen = normal | torch.tensor([t == kind for t in defect_types], dtype=torch.bool)
        per_type[kind] = image_metrics(scores[chosen], labels[chosen], threshold)
    return per_type
