"""Anomaly scores: how an image's reconstruction and latent codes become one number.

Scores are per image and computed in eval mode, so an image's score never depends on
the other images in its batch (the GANomaly reference code scored in train mode, with
BatchNorm using test-batch statistics). Raw scores are kept: ranking metrics do not need
normalisation, and the decision threshold is learnt on the same raw scale from
validation normals. (anomalib min-max normalises batch by batch, which makes scores
depend on batch order.) Both defects: docs/reference-code.md, section 5.

Two options make the reconstruction term follow defects rather than texture noise:

- ``smooth_difference``: smooth the signed difference x − x̂ before taking |·| or (·)².
  Zero-mean texture error (stripes, grain) cancels inside the kernel; a defect that is
  consistently darker or brighter than its reconstruction stays.
- ``normalize_map``: divide each pixel's error, after subtracting its mean, by its
  standard deviation over *validation normals* (statistics kept in the model's
  ``map_mean`` / ``map_std`` buffers, computed at every validation). Tile borders and other
  places a model never reconstructs well stop dominating the score. Uses normal images
  only, never test labels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import Tensor
from torchvision.transforms.v2.functional import gaussian_blur


@dataclass(frozen=True)
class AnomalyScore:
    """``latent_weight * latent distance + reconstruction_weight * pooled anomaly map``.

    - latent distance (GANomaly): mean((latent_in - latent_out)^2) over the latent code;
    - anomaly map: per-pixel |x - x_hat| (l1) or (x - x_hat)^2 (l2) averaged over
      channels, optionally smoothed and standardised (module docstring), pooled to one
      number per image;
    - Skip-GANomaly's score is the mix 0.9 * reconstruction (l2) + 0.1 * latent.
    """

    latent_weight: float = 1.0
    reconstruction_weight: float = 0.0
    reconstruction_norm: Literal["l1", "l2"] = "l2"
    #: Gaussian smoothing of the anomaly map (pixels); 0 = raw per-pixel error.
    map_sigma: float = 0.0
    #: Smooth the signed difference (true) or the error (false); needs ``map_sigma`` > 0.
    smooth_difference: bool = False
    #: Standardise each pixel by validation-normal error statistics (module docstring).
    normalize_map: bool = False
    #: How the anomaly map becomes the reconstruction term: ``mean`` over all pixels (the
    #: papers), ``max``, or ``top_k`` = mean of the highest ``top_k_fraction`` of pixels. A
    #: small defect barely moves the mean; max / top-k of a smoothed map follows it.
    pooling: Literal["mean", "max", "top_k"] = "mean"
    top_k_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.latent_weight < 0 or self.reconstruction_weight < 0:
            raise ValueError("model.scorer weights must be >= 0")
        if self.latent_weight == 0 and self.reconstruction_weight == 0:
            raise ValueError(
                "model.scorer: latent_weight and reconstruction_weight are both 0; "
                "set at least one of them above 0"
            )
        if self.reconstruction_norm not in ("l1", "l2"):
            raise ValueError(
                f"model.scorer.reconstruction_norm={self.reconstruction_norm!r}: "
                "expected 'l1' or 'l2'"
            )
        if self.pooling not in ("mean", "max", "top_k"):
            raise ValueError(
                f"model.scorer.pooling={self.pooling!r}: expected 'mean', 'max' or 'top_k'"
            )
        if not 0 < self.top_k_fraction <= 1:
            raise ValueError(
                f"model.scorer.top_k_fraction must be in (0, 1], got {self.top_k_fraction}"
            )
        if self.map_sigma < 0:
            raise ValueError(f"model.scorer.map_sigma must be >= 0, got {self.map_sigma}")
        if self.smooth_difference and self.map_sigma == 0:
            raise ValueError(
                "model.scorer.smooth_difference=true needs model.scorer.map_sigma > 0 "
                "(e.g. map_sigma=2)"
            )

    @classmethod
    def from_config(cls, config: AnomalyScore | dict[str, Any]) -> AnomalyScore:
        if isinstance(config, cls):
            return config
        return cls(**{k: v for k, v in dict(config).items() if k != "_target_"})

    def to_config(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------------------ the map
    def error_map(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """Per-pixel error before standardisation, (B, C, H, W) -> (B, 1, H, W)."""
        difference = (image - reconstruction).mean(dim=1, keepdim=True)
        if self.smooth_difference:
            return self._norm(self._blur(difference))
        error = self._norm(image - reconstruction).mean(dim=1, keepdim=True)
        return self._blur(error) if self.map_sigma > 0 else error

    def standardize(
        self, error_map: Tensor, mean: Tensor | None = None, std: Tensor | None = None
    ) -> Tensor:
        """(error - mean) / std per pixel when ``normalize_map``; unchanged otherwise."""
        if not self.normalize_map or mean is None or std is None:
            return error_map
        return (error_map - mean) / std

    def anomaly_map(
        self,
        image: Tensor,
        reconstruction: Tensor,
        mean: Tensor | None = None,
        std: Tensor | None = None,
    ) -> Tensor:
        """The map shown to users and scored against masks, (B, 1, H, W)."""
        return self.standardize(self.error_map(image, reconstruction), mean, std)

    def pool(self, anomaly_map: Tensor) -> Tensor:
        """(B, 1, H, W) -> (B,): the image-level reconstruction term."""
        pixels = anomaly_map.flatten(1)
        if self.pooling == "mean":
            return pixels.mean(dim=1)
        if self.pooling == "max":
            return pixels.amax(dim=1)
        k = max(1, round(self.top_k_fraction * pixels.shape[1]))
        return pixels.topk(k, dim=1).values.mean(dim=1)

    @staticmethod
    def latent_distance(latent_in: Tensor, latent_out: Tensor) -> Tensor:
        return (latent_in - latent_out).flatten(1).square().mean(dim=1)

    def combine(self, latent_distance: Tensor, anomaly_map: Tensor) -> Tensor:
        """One score per image from its latent distance (B,) and anomaly map (B, 1, H, W)."""
        score = latent_distance.new_zeros(latent_distance.shape[0])
        if self.latent_weight:
            score = score + self.latent_weight * latent_distance
        if self.reconstruction_weight:
            score = score + self.reconstruction_weight * self.pool(anomaly_map)
        return score

    def __call__(
        self,
        image: Tensor,
        reconstruction: Tensor,
        latent_in: Tensor,
        latent_out: Tensor,
        mean: Tensor | None = None,
        std: Tensor | None = None,
    ) -> Tensor:
        """One score per image, (B,); larger means more anomalous."""
        return self.combine(
            self.latent_distance(latent_in, latent_out),
            self.anomaly_map(image, reconstruction, mean, std),
        )

    # ---------------------------------------------------------------------- helpers
    def _norm(self, difference: Tensor) -> Tensor:
        return difference.square() if self.reconstruction_norm == "l2" else difference.abs()

    def _blur(self, values: Tensor) -> Tensor:
        kernel = 2 * math.ceil(3 * self.map_sigma) + 1
        return gaussian_blur(values, [kernel, kernel], [self.map_sigma, self.map_sigma])
