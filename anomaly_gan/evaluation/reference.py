"""The no-learning reference every run is measured against.

A GAN detector earns its keep only if it beats the same score recipe applied to a
reconstruction that involves no learning at all. Two such reconstructions are built from
the *training normals* alone:

- ``mean``: every image is "reconstructed" as the mean training image;
- ``pca``: every image is reconstructed from its projection onto the top ``k`` principal
  directions of the training normals. ``k`` is chosen without test labels: synthetic
  defects (:mod:`anomaly_gan.corruption`) are pasted into the validation normals and the
  ``k`` whose score separates them best from the clean validation normals wins.

Both are scored by a copy of the model's own scorer (same map norm, smoothing, per-pixel
standardisation by validation normals, pooling; its latent term has no counterpart here and
is left out), at the model's resolution, normalisation and image pre-processing, since the
images come from the same data module. ``lift = model AUROC - better reference AUROC``
says at once whether the GAN learnt something the recipe alone does not give.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc

from anomaly_gan.corruption import SyntheticDefects
from anomaly_gan.evaluation.metrics import image_metrics
from anomaly_gan.evaluation.results import MIN_LIFT
from anomaly_gan.scoring import AnomalyScore

__all__ = ["MIN_LIFT", "lift", "reference_metrics"]

log = logging.getLogger(__name__)

#: Candidate PCA sizes; those >= the number of training normals are dropped.
PCA_COMPONENTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Seed of the synthetic defects that choose ``k`` (fixed: the choice is reproducible).
SELECTION_SEED = 0


class MeanReconstruction:
    """Reconstructs every image as the mean training image."""

    name = "mean"

    def __init__(self, train: Tensor) -> None:
        self.mean = train.mean(dim=0, keepdim=True)  # (1, C, H, W)

    def __call__(self, images: Tensor) -> Tensor:
        return self.mean.to(images.dtype).expand_as(images)


class PcaReconstruction:
    """Projection onto the top ``k`` principal directions of the training normals.

    The directions come from the eigen-decomposition of the N×N Gram matrix (N training
    images), so a 256 px colour image (D ≈ 200,000 values) never needs a D×D matrix.
    """

    name = "pca"

    def __init__(self, train: Tensor, max_components: int) -> None:
        flat = train.flatten(1).float()  # (N, D)
        self.mean = flat.mean(dim=0)
        centred = flat - self.mean
        eigenvalues, eigenvectors = torch.linalg.eigh((centred @ centred.T).double())
        order = eigenvalues.flip(0)
        vectors = eigenvectors.flip(1)
        keep = int((order > order[0].clamp_min(1e-12) * 1e-9).sum())
        keep = max(1, min(keep, max_components))
        # (D, N) @ (N, k) / sqrt(lambda): orthonormal directions in image space.
        self.directions = (centred.T.double() @ vectors[:, :keep]) / order[:keep].sqrt()
        self.directions = self.directions.float()
        self.k = keep

    def __call__(self, images: Tensor) -> Tensor:
        flat = images.flatten(1).float() - self.mean
        basis = self.directions[:, : self.k]  # (D, k)
        return ((flat @ basis) @ basis.T + self.mean).view_as(images).to(images.dtype)


def reference_scorer(scorer_config: dict[str, Any]) -> AnomalyScore:
    """The model's scorer without its latent term (a fixed reconstruction has no latent code)."""
    config = {key: value for key, value in dict(scorer_config).items() if key != "_target_"}
    config.update(latent_weight=0.0, reconstruction_weight=1.0)
    return AnomalyScore.from_config(config)


def _images(datamodule: Any, samples: list[Any]) -> tuple[Tensor, Tensor]:
    """All images and labels of ``samples``, as the data module pre-processes them."""
    loader = DataLoader(datamodule._dataset(samples), batch_size=64, shuffle=False)
    images, labels = [], []
    for batch in loader:
        images.append(batch["image"])
        labels.append(batch["label"])
    return torch.cat(images), torch.cat(labels)


def _scores(
    scorer: AnomalyScore, reconstruct: Any, images: Tensor, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Error maps (B, 1, H, W) and scores (B,) of a calibrated scorer."""
    maps = torch.cat(
        [scorer.error_map(chunk, reconstruct(chunk)) for chunk in images.split(batch_size)]
    )
    return maps, scorer.score_error_maps(maps)


def _calibrated(
    scorer_config: dict[str, Any], reconstruct: Any, normals: Tensor, quantile: float
) -> AnomalyScore:
    scorer = reference_scorer(scorer_config)
    maps = torch.cat([scorer.error_map(chunk, reconstruct(chunk)) for chunk in normals.split(64)])
    scorer.calibrate(maps, torch.zeros(maps.shape[0]), quantile)
    return scorer


def choose_pca_components(
    train: Tensor, validation: Tensor, scorer_config: dict[str, Any], quantile: float
) -> tuple[int, dict[int, float]]:
    """``k`` with the best AUROC of clean vs synthetically defective validation normals.

    The scorer's per-pixel statistics come from the even-numbered validation images; the
    odd-numbered ones, clean and with pasted defects, are scored. Ties go to the smaller ``k``.
    """
    candidates = [k for k in PCA_COMPONENTS if k < train.shape[0]] or [1]
    if validation.shape[0] < 4:
        return candidates[min(len(candidates) - 1, 4)], {}
    reference, held_out = validation[0::2], validation[1::2]
    generator = torch.Generator().manual_seed(SELECTION_SEED)
    corrupted = SyntheticDefects(probability=1.0)(held_out, generator=generator)
    pair = torch.cat([held_out, corrupted])
    labels = torch.cat([torch.zeros(len(held_out)), torch.ones(len(corrupted))]).long()
    pca = PcaReconstruction(train, max(candidates))
    available = pca.k
    aurocs: dict[int, float] = {}
    for k in (c for c in candidates if c <= available):
        pca.k = k
        scorer = _calibrated(scorer_config, pca, reference, quantile)
        _, scores = _scores(scorer, pca, pair)
        unit = (scores - scores.min()) / (scores.max() - scores.min()).clamp_min(1e-12)
        aurocs[k] = float(binary_auroc(unit.float(), labels))
    best = max(aurocs, key=lambda k: (aurocs[k], -k))
    return best, aurocs


def reference_metrics(
    datamodule: Any, scorer_config: dict[str, Any], threshold_quantile: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Image metrics of the mean and PCA references on every test set of ``datamodule``.

    Uses the training normals to build the reconstructions and the validation normals to
    calibrate the scorer and choose ``k``; test labels only to compute the metrics.
    """
    train, _ = _images(datamodule, datamodule.train_samples)
    val_samples = datamodule.val_samples or datamodule.train_samples
    validation, _ = _images(datamodule, val_samples)
    k, selection = choose_pca_components(train, validation, scorer_config, threshold_quantile)
    pca = PcaReconstruction(train, k)
    references = {"mean": MeanReconstruction(train), "pca": pca}
    scorers = {
        name: _calibrated(scorer_config, reconstruct, validation, threshold_quantile)
        for name, reconstruct in references.items()
    }
    results: dict[str, dict[str, Any]] = {}
    for name, loader in zip(
        datamodule.test_category_names, datamodule.test_dataloader(), strict=True
    ):
        images, labels = [], []
        for batch in loader:
            images.append(batch["image"])
            labels.append(batch["label"])
        test, test_labels = torch.cat(images), torch.cat(labels)
        block: dict[str, Any] = {}
        for ref_name, reconstruct in references.items():
            scorer = scorers[ref_name]
            _, scores = _scores(scorer, reconstruct, test)
            metrics = image_metrics(scores, test_labels, float(scorer.threshold))
            block[ref_name] = {
                key: metrics.get(key) for key in ("auroc", "average_precision", "f1", "recall")
            }
        block["pca"]["k"] = pca.k
        block["pca"]["k_chosen_by"] = (
            "synthetic defects pasted into validation normals (AUROC per k: "
            + ", ".join(f"{c}: {a:.3f}" for c, a in selection.items())
            + ")"
            if selection
            else "default (fewer than 4 validation normals)"
        )
        aurocs = {n: block[n]["auroc"] for n in references if block[n]["auroc"] is not None}
        if aurocs:
            best = max(aurocs, key=aurocs.__getitem__)
            block["best"], block["auroc"] = best, aurocs[best]
        else:
            block["best"], block["auroc"] = None, None
        results[name] = block
    return results


def lift(model_auroc: float | None, reference: dict[str, Any]) -> float | None:
    """``model AUROC - better reference AUROC`` (None where either is undefined)."""
    ref = reference.get("auroc")
    if model_auroc is None or ref is None or math.isnan(model_auroc):
        return None
    return model_auroc - ref
