"""The bootstrap interval of an image AUROC and of a lift (a paired AUROC difference)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from anomaly_gan.evaluation.intervals import auroc_interval
from anomaly_gan.evaluation.results import format_results_table


def _overlapping(n_normal: int, n_defective: int, shift: float, seed: int = 0):
    """Scores of normals ~ N(0, 1) and defects ~ N(shift, 1), and their labels."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.cat(
        [
            torch.randn(n_normal, generator=generator),
            torch.randn(n_defective, generator=generator) + shift,
        ]
    )
    labels = torch.cat([torch.zeros(n_normal), torch.ones(n_defective)]).long()
    return labels, scores


def test_interval_holds_the_auroc_and_narrows_with_more_images() -> None:
    labels, scores = _overlapping(20, 60, shift=1.0)
    low, high = auroc_interval(labels, scores)
    point = float(binary_auroc((scores - scores.min()) / (scores.max() - scores.min()), labels))
    assert low < point < high
    assert low >= 0.0 and high <= 1.0
    # Twenty times the images: a much narrower interval around the same separation.
    big_labels, big_scores = _overlapping(400, 1200, shift=1.0)
    big_low, big_high = auroc_interval(big_labels, big_scores)
    assert big_high - big_low < (high - low) / 3
    # Seeded: the same scores give the same interval.
    assert auroc_interval(labels, scores) == (low, high)


def test_perfect_separation_has_no_spread_and_a_missing_class_has_no_interval() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1])
    assert auroc_interval(labels, torch.tensor([0.1, 0.2, 0.3, 0.8, 0.9])) == (1.0, 1.0)
    assert auroc_interval(torch.zeros(4).long(), torch.rand(4)) is None


def test_lift_interval_is_paired() -> None:
    labels, model = _overlapping(30, 90, shift=2.0)
    # Against itself the difference is exactly zero on every resample.
    assert auroc_interval(labels, model, baseline=model) == (0.0, 0.0)
    # A reference that ranks the defects worse: the whole interval lies above zero, and it
    # is narrower than the two unpaired intervals would suggest (shared images cancel).
    generator = torch.Generator().manual_seed(1)
    reference = model + 1.5 * torch.randn(model.shape, generator=generator)
    low, high = auroc_interval(labels, model, baseline=reference)
    assert 0.0 < low < high
    model_low, model_high = auroc_interval(labels, model)
    reference_low, reference_high = auroc_interval(labels, reference)
    assert high - low < (model_high - model_low) + (reference_high - reference_low)


def test_bad_input_is_refused_with_what_was_expected() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="one score per label"):
        auroc_interval(labels, torch.rand(3))
    with pytest.raises(ValueError, match="level must be in"):
        auroc_interval(labels, torch.rand(4), level=1.0)


def test_summary_shows_the_lift_interval() -> None:
    metrics = {"auroc": 0.70, "n_normal": 5, "n_anomalous": 5}
    reference = {"auroc": 0.69, "lift": 0.01, "best": "pca", "lift_interval": [-0.08, 0.1]}
    table = format_results_table(
        {"status": "completed", "categories": {"weak": {**metrics, "reference": reference}}}
    )
    assert "+0.010 [-0.080, +0.100]" in table.splitlines()[2]
    (warning,) = [line for line in table.splitlines() if line.startswith("warning:")]
    assert warning.endswith("(95 % interval over the test images [-0.080, +0.100])")
    # A lift of exactly nothing (floating-point dust below zero) reads as +0.000.
    reference.update(lift=0.0, lift_interval=[-1e-17, 0.0])
    table = format_results_table(
        {"status": "completed", "categories": {"weak": {**metrics, "reference": reference}}}
    )
    assert "+0.000 [+0.000, +0.000]" in table
