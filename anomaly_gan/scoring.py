"""Anomaly scores: how an image's reconstruction and latent codes become one number.

Scores are per image and computed in eval mode, so an image's score never depends on
the other images in its batch (the GANomaly reference code scored in train mode, with
BatchNorm using test-batch statistics). Raw scores are kept: ranking metrics do not need
normalisation, and the decision threshold is learnt on the same raw scale from
validation normals. (anomalib min-max normalises batch by batch, which makes scores
depend on batch order.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import Tensor
from torchvision.transforms.v2.functional import gaussian_blur


@dataclass(frozen=True)
class AnomalyScore:
    """``latent_weight * latent distance + reconstruction_weight * reconstruction error``.

    - latent distance (GANomaly): mean((latent_in - latent_out)^2) over the latent code;
    - reconstruction error: mean over pixels of the per-pixel anomaly map, with the
      |x - x_hat| (l1) or (x - x_hat)^2 (l2) error averaged over channels;
    - Skip-GANomaly's score is the mix 0.9 * reconstruction (l2) + 0.1 * latent.
    """

    latent_weight: float = 1.0
    reconstruction_weight: float = 0.0
    reconstruction_norm: Literal["l1", "l2"] = "l2"
    #: Gaussian smoothing of the anomaly map (pixels); 0 = raw per-pixel error.
    map_sigma: float = 0.0
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

    @classmethod
    def from_config(cls, config: AnomalyScore | dict[str, Any]) -> AnomalyScore:
        if isinstance(config, cls):
            return config
        return cls(**{k: v for k, v in dict(config).items() if k != "_target_"})

    def to_config(self) -> dict[str, Any]:
        return asdict(self)

    def anomaly_map(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """Per-pixel reconstruction error, (B, C, H, W) -> (B, 1, H, W), optionally smoothed."""
        error = self._pixel_error(image, reconstruction)
        if self.map_sigma > 0:
            kernel = 2 * math.ceil(3 * self.map_sigma) + 1
            error = gaussian_blur(error, [kernel, kernel], [self.map_sigma, self.map_sigma])
        return error

    def _pool(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """(B, C, H, W) -> (B,): the image-level reconstruction term."""
        if self.pooling == "mean":  # smoothing does not change a mean: skip it
            return self._pixel_error(image, reconstruction).flatten(1).mean(dim=1)
        pixels = self.anomaly_map(image, reconstruction).flatten(1)
        if self.pooling == "max":
            return pixels.amax(dim=1)
        k = max(1, round(self.top_k_fraction * pixels.shape[1]))
        return pixels.topk(k, dim=1).values.mean(dim=1)

    def _pixel_error(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        error = (image - reconstruction).abs()
        if self.reconstruction_norm == "l2":
            error = error.square()
        return error.mean(dim=1, keepdim=True)

    def __call__(
        self, image: Tensor, reconstruction: Tensor, latent_in: Tensor, latent_out: Tensor
    ) -> Tensor:
        """One score per image, (B,); larger means more anomalous."""
        score = image.new_zeros(image.shape[0])
        if self.latent_weight:
            latent_distance = (latent_in - latent_out).flatten(1).square().mean(dim=1)
            score = score + self.latent_weight * latent_distance
        if self.reconstruction_weight:
            score = score + self.reconstruction_weight * self._pool(image, reconstruction)
        return score
