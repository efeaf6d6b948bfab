"""Adversarial autoencoder losses shared by every architecture.

One generator objective, ``w_adv * adversarial + w_con * contextual + w_enc * encoder``,
covers the papers' settings (full citations and the published code's defaults:
docs/reference-code.md, sections 1–3):

- GANomaly (Akcay, Atapour-Abarghouei, Breckon, ACCV 2018, Sec. 3): feature-matching
  adversarial term, L1 context term, L2 encoder term between the generator's two latent
  codes; weights 1 / 50 / 1 (conf/loss/feature_matching_l1.yaml, every model's default but
  Skip-GANomaly's, conf/loss/feature_matching_once_l1.yaml: 0 / 50 / 1).
- Skip-GANomaly (Akcay et al., IJCNN 2019) and Skip-SA (Sun et al. 2025, Sec. 3.3, 4.2): BCE
  adversarial term, L1 context term, L2 "latent" term on the discriminator's last features
  (paper's w_lat is our w_enc); weights 1 / 50 / 1 (conf/loss/bce_l1.yaml) and 0.5 / 0.3 /
  0.2 (conf/loss/skip_sa_paper.yaml).
- MIFE / Baseline (Toker, Korkmaz, Sec. II.D): L2 reconstruction, BCE adversarial, L2
  encoder term (conf/loss/bce_l2.yaml).

An optional fourth term, ``w_ssim * (1 - SSIM(x_hat, x))`` (off in every config), is the
structural-similarity loss of Bergmann, Löwe, Fauser, Sattlegger, Steger, "Improving
Unsupervised Defect Segmentation by Applying Structural Similarity to Autoencoders" (VISAPP
2019, Sec. 3): a per-pixel L1/L2 loss lets an autoencoder blur texture it cannot place, a
term on local means, contrasts and correlations asks for the texture's structure.

Which latent pair the encoder term compares is the architecture's business (see
``GanAnomalyModule.latent_pair``); the loss only measures it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

Norm = Literal["l1", "l2"]
AdversarialForm = Literal["feature_matching", "bce"]


def distance(a: Tensor, b: Tensor, norm: Norm) -> Tensor:
    """Mean absolute (l1) or mean squared (l2) difference over every element."""
    if norm == "l1":
        return F.l1_loss(a, b)
    return F.mse_loss(a, b)


def ssim_loss(reconstruction: Tensor, image: Tensor) -> Tensor:
    """1 - SSIM (Gaussian window, sigma 1.5, 11 px), in float32 whatever the autocast.

    Images normalised per image or per data set have no fixed range and are centred on 0,
    where SSIM's luminance ratio is ill-conditioned; both images are therefore shifted by the
    batch's minimum to [0, max - min] and that span is the dynamic range, as for pixel values
    in [0, 1]. Both are read as detached tensors: no device synchronisation.
    """
    image = image.float()
    low = image.amin().detach()
    data_range = (image.amax().detach() - low).clamp_min(1e-6)
    similarity = structural_similarity_index_measure(
        reconstruction.float() - low,
        image - low,
        data_range=data_range,  # type: ignore[arg-type]
    )
    return 1.0 - similarity


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """0.5 * (BCE(D(x), 1) + BCE(D(G(x)), 0)), as in the GANomaly reference."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


@dataclass(frozen=True)
class GeneratorLoss:
    """Weights and forms of the generator objective; every field is a ``loss.*`` config key.

    The defaults are conf/loss/feature_matching_l1.yaml (GANomaly's loss), the loss every
    ``model=<name>`` config selects and every model class uses when given none; the papers'
    other settings are conf/loss/{bce_l1,bce_l2,skip_sa_paper}.yaml (``model=<name>_paper``).
    """

    w_adv: float = 1.0
    w_con: float = 50.0
    w_enc: float = 1.0
    reconstruction: Norm = "l1"
    adversarial: AdversarialForm = "feature_matching"
    encoder: Norm = "l2"
    w_ssim: float = 0.0

    def __post_init__(self) -> None:
        for key in ("w_adv", "w_con", "w_enc", "w_ssim"):
            if getattr(self, key) < 0:
                raise ValueError(f"loss.{key} must be >= 0, got {getattr(self, key)}")
        for key, allowed in (
            ("reconstruction", ("l1", "l2")),
            ("encoder", ("l1", "l2")),
            ("adversarial", ("feature_matching", "bce")),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"loss.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}"
                )

    @classmethod
    def from_config(cls, config: GeneratorLoss | dict[str, Any]) -> GeneratorLoss:
        """Accept an instance or a plain mapping (the form stored in checkpoints)."""
        if isinstance(config, cls):
            return config
        return cls(**{k: v for k, v in dict(config).items() if k != "_target_"})

    def to_config(self) -> dict[str, Any]:
        return asdict(self)

    def terms(
        self,
        image: Tensor,
        reconstruction: Tensor,
        fake_logits: Tensor,
        real_features: Tensor,
        fake_features: Tensor,
        latent_in: Tensor,
        latent_out: Tensor,
    ) -> dict[str, Tensor]:
        """The unweighted terms, keyed by the names they are logged under (``g_*``).

        ``g_ssim`` is computed (and logged) only when ``w_ssim`` is above 0.
        """
        if self.adversarial == "feature_matching":
            adversarial = F.mse_loss(fake_features, real_features)
        else:
            adversarial = F.binary_cross_entropy_with_logits(
                fake_logits, torch.ones_like(fake_logits)
            )
        terms = {
            "g_adv": adversarial,
            "g_con": distance(reconstruction, image, self.reconstruction),
            "g_enc": distance(latent_out, latent_in, self.encoder),
        }
        if self.w_ssim > 0:
            terms["g_ssim"] = ssim_loss(reconstruction, image)
        return terms

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        total = (
            self.w_adv * terms["g_adv"] + self.w_con * terms["g_con"] + self.w_enc * terms["g_enc"]
        )
        if self.w_ssim > 0:
            total = total + self.w_ssim * terms["g_ssim"]
        return total
