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
training starts, ``k`` the largest candidate below their number; it is
saved in the checkpoint and exported with the model. Its honest reference is the best
no-learning detector of either recipe: the mean image and the PCA scored alone, and the same
sum with the mean image in the generator's place (with the PCA there, the sum ranks as the
PCA alone); ``lift`` still says what the GAN adds.

With ``model.companion=auto`` the PCA term is summed in only where it helps on data the run
may look at: at every validation the model's score alone and the sum are each asked to
separate the clean validation normals from copies with synthetic defects pasted in
(``val/synthetic_auroc``, no test image), and the PCA's weight is set to 1 when the sum
separates them better, to 0 otherwise. The PCA helped on two of four real sets and hurt on
the other two (docs/what-works.md); ``auto`` is the label-free way to choose per set. The
choice and the two AUROCs it was made on are buffers, saved with each checkpoint.
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
    reference_scorer,
)
from anomaly_gan.nets.pca import PcaReconstruction
from anomaly_gan.scoring import full_precision, separation_auroc

#: ``model.companion`` values: always sum the PCA's score in, or only where the validation's
#: synthetic defects say the sum separates better (module docstring).
COMPANIONS = ("pca", "auto")

#: Buffers a checkpoint written before they existed lacks, and their values then
#: (``companion=pca`` always summed the PCA in).
LATER_BUFFERS = {
    "pca_weight": 1.0,
    "synthetic_auroc_model": math.nan,
    "synthetic_auroc_with_pca": math.nan,
}


def check_companion(companion: str | None) -> None:
    """Raise an actionable error for an unknown ``model.companion``."""
    if companion is not None and companion not in COMPANIONS:
        raise ValueError(
            f"model.companion must be null (the model's score alone), pca (summed with the "
            f"PCA reference's score) or auto (summed only where the validation's synthetic "
            f"defects say it helps), got {companion!r}"
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
        choose: ``model.companion=auto``: :meth:`choose_weight` sets the PCA's weight at
            each validation; otherwise it stays 1 (``pca``).
    """

    def __init__(self, scorer_config: dict[str, Any], tile: int, choose: bool = False) -> None:
        super().__init__()
        self.pca = PcaReconstruction()
        self.scorer = reference_scorer(scorer_config)
        self.tile = tile
        self.choose = choose
        for name in ("model_center", "model_scale", "pca_center", "pca_scale"):
            self.register_buffer(name, torch.tensor(math.nan))
        # The PCA term's weight (1: summed in, 0: the model's score alone) and, under
        # ``choose``, the synthetic-defect AUROCs it was chosen on.
        for name, value in LATER_BUFFERS.items():
            self.register_buffer(name, torch.tensor(value))
        self._calibrated = False

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        for name, value in LATER_BUFFERS.items():
            state_dict.setdefault(prefix + name, torch.tensor(value))
        scale = state_dict.get(prefix + "model_scale")
        self._calibrated = scale is not None and bool(torch.isfinite(scale).all())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def fitted(self) -> bool:
        return self.pca.fitted

    @property
    def calibrated(self) -> bool:
        """Fitted and standardised by a validation: only then is the sum a score. (A plain
        flag, set by :meth:`calibrate` and on loading, not a read of a tensor: ONNX export
        traces the scoring and cannot branch on buffer values.)"""
        return self.fitted and self._calibrated

    @torch.no_grad()
    def fit(self, train: Tensor) -> None:
        """Fit the PCA on training normals as the reference does
        (:func:`~anomaly_gan.evaluation.reference.fit_pca`)."""
        tiled = tuple(train.shape[-2:]) != (self.tile, self.tile)
        pca = fit_pca(train, self.tile if tiled else None)
        pca.truncate()
        self.pca = pca.to(self.pca_center.device)

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
        """Calibrate on the validation normals and return their held-out standardised
        scores (B, 2): the model's and the PCA's (:meth:`total` sums them).

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
        self._calibrated = True
        return self._stacked(model_scores, pca_scores)

    def _stacked(self, model_scores: Tensor, pca_scores: Tensor) -> Tensor:
        return torch.stack(
            [
                standardised(model_scores, self.model_center, self.model_scale),
                standardised(pca_scores, self.pca_center, self.pca_scale),
            ],
            dim=1,
        )

    def standardised_parts(self, model_scores: Tensor, error_maps: Tensor) -> Tensor:
        """The model's and the PCA's standardised scores (B, 2), from the model's scores and
        this companion's raw error maps."""
        return self._stacked(model_scores, self.scorer.score_error_maps(error_maps))

    def total(self, parts: Tensor) -> Tensor:
        """The image score (B,): the model's standardised score plus the PCA's, weighted."""
        return parts[:, 0] + self.pca_weight * parts[:, 1]

    @torch.no_grad()
    def choose_weight(self, normal_parts: Tensor, defect_parts: Tensor) -> None:
        """``companion=auto``: sum the PCA in only if the sum separates the held-out clean
        validation normals from the synthetic-defect copies better than the model alone.

        ``normal_parts``/``defect_parts``: :meth:`calibrate`'s and :meth:`standardised_parts`'
        (B, 2) of the two groups. A tie keeps the model's score alone.
        """
        alone = separation_auroc(normal_parts[:, 0], defect_parts[:, 0])
        summed = separation_auroc(normal_parts.sum(1), defect_parts.sum(1))
        self.synthetic_auroc_model.fill_(alone)
        self.synthetic_auroc_with_pca.fill_(summed)
        self.pca_weight.fill_(1.0 if summed > alone else 0.0)

    def summary(self) -> dict[str, Any]:
        """What ``results.json`` says about the companion of the tested checkpoint."""
        summary: dict[str, Any] = {
            "mode": "auto" if self.choose else "pca",
            "pca_k": self.pca.k if self.fitted else None,
            "pca_summed": self.calibrated and bool(self.pca_weight > 0),
        }
        if not self.calibrated:
            summary["note"] = (
                "not calibrated: no validation standardised the two scores, so the score is "
                "the model's alone"
                if self.fitted
                else "not fitted: the run's data module lists no normal images (plain "
                "DataLoaders), so the score is the model's alone"
            )
            return summary
        if self.choose:
            summary["chosen_by"] = (
                "val/synthetic_auroc of the clean held-out validation normals against "
                "copies with synthetic defects (no test image): the model's score alone "
                f"{float(self.synthetic_auroc_model):.4f}, with the PCA's summed in "
                f"{float(self.synthetic_auroc_with_pca):.4f}"
            )
        return summary

    def combine_maps(self, model_scores: Tensor, error_maps: Tensor) -> Tensor:
        """Summed scores (B,) from the model's scores and this companion's raw error maps."""
        return self.total(self.standardised_parts(model_scores, error_maps))

    def combine(self, model_scores: Tensor, images: Tensor) -> Tensor:
        """Summed scores (B,) of ``images``, given the model's own scores of them."""
        return self.combine_maps(model_scores, self.error_map(images))
