"""The PCA companion: a model's score summed with the no-learning PCA reference's score.

On four real inspection sets a GAN's reconstruction and a PCA reconstruction of the training
normals score within a few hundredths of each other, but they miss *different* images
(docs/what-works.md, "The GAN's score summed with the PCA reference's"). With
``model.companion=pca`` the image score is

    score(x) = (s_model(x) − μ_model) / σ_model + (s_pca(x) − μ_pca) / σ_pca

where ``s_pca`` is the model's own recipe (:class:`~anomaly_gan.scoring.AnomalyScore`, no
latent term) on the PCA reconstruction of ``x``, and μ, σ are the mean and standard
deviation of each detector's scores of the validation normals that its calibration held out
(the odd-numbered ones, as the threshold). The PCA is the reference's own
(:func:`~anomaly_gan.evaluation.reference.fit_pca`): fitted on the training normals when
training starts, ``k`` chosen on synthetic defects pasted into validation normals; it is
saved in the checkpoint and exported with the model. Its honest reference is the best
no-learning detector of either recipe: the mean image and the PCA scored alone, and the same
sum with the mean image in the generator's place (with the PCA there, the sum ranks as the
PCA alone); ``lift`` still says what the GAN adds.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from anomaly_gan.evaluation.reference import (
    TiledReconstruction,
    centre_and_spread,
    fit_pca,
    normal_images,
    reference_scorer,
)
from anomaly_gan.nets.pca import PcaReconstruction
from anomaly_gan.scoring import full_precision

#: ``model.companion`` values.
COMPANIONS = ("pca",)


def check_companion(companion: str | None) -> None:
    """Raise an actionable error for an unknown ``model.companion``."""
    if companion is not None and companion not in COMPANIONS:
        raise ValueError(
            f"model.companion must be null (the model's score alone) or one of "
            f"{', '.join(COMPANIONS)}, got {companion!r}"
        )


def standardised(scores: Tensor, center: Tensor, scale: Tensor) -> Tensor:
    """``scores`` in units of the held-out validation normals' spread, from their mean (the
    calibrated buffers: the exported graph carries them)."""
    return (scores.float() - center) / scale


class PcaCompanion(nn.Module):
    """The PCA reference as a second detector beside the model (module docstring).

    Args:
        scorer_config: the model's scorer settings; the companion scores its PCA
            reconstruction with a copy of them (no latent term).
        tile: the model's input side: frames larger than it (``data.resize=tile``) are
            reconstructed tile by tile, as the model and the reference do.
    """

    def __init__(self, scorer_config: dict[str, Any], tile: int) -> None:
        super().__init__()
        self.pca = PcaReconstruction()
        self.scorer = reference_scorer(scorer_config)
        self.tile = tile
        #: How ``k`` was chosen (the validation AUROC of every ``k`` tried); not saved.
        self.selection: dict[int, float] = {}
        for name in ("model_center", "model_scale", "pca_center", "pca_scale"):
            self.register_buffer(name, torch.tensor(math.nan))

    @property
    def fitted(self) -> bool:
        return self.pca.fitted

    @torch.no_grad()
    def fit(self, train: Tensor, validation: Tensor, threshold_quantile: float) -> None:
        """Fit the PCA on training normals and choose ``k`` on validation normals, as the
        reference does (:func:`~anomaly_gan.evaluation.reference.fit_pca`)."""
        tiled = tuple(train.shape[-2:]) != (self.tile, self.tile)
        config = self.scorer.to_config()
        pca, self.selection = fit_pca(
            train, validation, config, threshold_quantile, self.tile if tiled else None
        )
        pca.truncate()
        self.pca = pca.to(self.pca_center.device)

    def fit_on(self, datamodule: Any, threshold_quantile: float) -> None:
        """:meth:`fit` on the training and validation normals of ``datamodule``."""
        self.fit(*normal_images(datamodule), threshold_quantile)

    def reconstruct(self, images: Tensor) -> Tensor:
        """The PCA reconstruction of images or of tiled frames, same shape, in float32
        (autocast off: a bf16 projection would add its own error to the map)."""
        with full_precision(images.device.type):
            if tuple(images.shape[-2:]) == (self.tile, self.tile):
                return self.pca(images.float())
            return TiledReconstruction(self.pca, self.tile)(images.float())

    def error_map(self, images: Tensor) -> Tensor:
        """The companion scorer's raw error maps (B, 1, H, W) of ``images``."""
        return self.scorer.error_map(images, self.reconstruct(images))

    @torch.no_grad()
    def calibrate(
        self, model_scores: Tensor, error_maps: Tensor, threshold_quantile: float
    ) -> Tensor:
        """Calibrate on the validation normals and return their summed held-out scores.

        ``model_scores``: the model's scores of the validation normals its own calibration
        held out (what :meth:`AnomalyScore.calibrate` returns); ``error_maps``: this
        companion's :meth:`error_map` of *all* the validation normals, in the same order
        (its scorer holds out the same images).
        """
        pca_scores = self.scorer.calibrate(
            error_maps, error_maps.new_zeros(error_maps.shape[0]), threshold_quantile
        )
        for prefix, scores in (("model", model_scores), ("pca", pca_scores)):
            centre, spread = centre_and_spread(scores)
            getattr(self, f"{prefix}_center").fill_(centre)
            getattr(self, f"{prefix}_scale").fill_(spread)
        return standardised(model_scores, self.model_center, self.model_scale) + standardised(
            pca_scores, self.pca_center, self.pca_scale
        )

    def combine_maps(self, model_scores: Tensor, error_maps: Tensor) -> Tensor:
        """Summed scores (B,) from the model's scores and this companion's raw error maps."""
        pca_scores = self.scorer.score_error_maps(error_maps)
        return standardised(model_scores, self.model_center, self.model_scale) + standardised(
            pca_scores, self.pca_center, self.pca_scale
        )

    def combine(self, model_scores: Tensor, images: Tensor) -> Tensor:
        """Summed scores (B,) of ``images``, given the model's own scores of them."""
        return self.combine_maps(model_scores, self.error_map(images))
