"""Simple non-learned baselines a GAN detector must beat (issue: defaults that detect defects).

- distance to the mean training image (per-image L2 distance);
- PCA reconstruction error with ``k`` components fitted on the training normals.

Both see exactly the images (split, size, channels, normalisation) the models see.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from anomaly_gan.evaluation.metrics import image_metrics


def _stack(loader: Any) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for batch in loader:
        images.append(batch["image"].flatten(1).double())
        labels.append(batch["label"])
    return torch.cat(images), torch.cat(labels)


def mean_image_scores(train: Tensor, test: Tensor) -> Tensor:
    return (test - train.mean(0)).square().sum(1).sqrt()


def pca_scores(train: Tensor, test: Tensor, components: int = 32) -> Tensor:
    """Squared error of the projection onto the top ``components`` principal directions."""
    mean = train.mean(0)
    _, _, directions = torch.linalg.svd(train - mean, full_matrices=False)  # (k, D)
    basis = directions[: min(components, directions.shape[0])]
    centred = test - mean
    reconstruction = centred @ basis.T @ basis
    return (centred - reconstruction).square().sum(1)


def baseline_metrics(datamodule: Any, components: int = 32) -> dict[str, dict[str, Any]]:
    """Image metrics of both baselines on every test set of a (set-up) data module."""
    datamodule.setup("fit")
    train, _ = _stack(datamodule.train_dataloader())
    results: dict[str, dict[str, Any]] = {}
    for name, loader in zip(
        datamodule.test_category_names, datamodule.test_dataloader(), strict=True
    ):
        test, labels = _stack(loader)
        results[name] = {
            "mean_image_distance": image_metrics(
                mean_image_scores(train, test), labels, float("nan")
            ),
            f"pca{components}": image_metrics(
                pca_scores(train, test, components), labels, float("nan")
            ),
        }
    return results
