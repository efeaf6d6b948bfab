"""Skip-GANomaly on the shared core.

Akcay, Atapour-Abarghouei, Breckon, "Skip-GANomaly: Skip Connected and Adversarially Trained
Encoder-Decoder Anomaly Detection", IJCNN 2019, as its published code builds it
(docs/reference-code.md, section 3). Generator: pix2pix U-Net of depth log2(image size)
(recapped by Sun et al. 2025, "Skip.Self attention GAN for anomaly detection", Sec. 2).
Discriminator: the DCGAN/GANomaly discriminator; its last feature map (the
input of its 1-logit convolution) gives the latent loss and the latent part of the score,
so :meth:`generate` returns no latent codes of its own and the core uses the
discriminator's features.

Paper setting (docs/reference-code.md, section 3): BCE adversarial / L1 context / L2 latent
with weights 1 / 50 / 1 (conf/loss/bce_l1.yaml); score 0.9 · mean squared reconstruction
error + 0.1 · latent distance.

What trains by default: this class, like ``model=skip_ganomaly``, uses GANomaly's feature
matching instead of BCE (``GeneratorLoss()``, conf/loss/feature_matching_l1.yaml); the
paper's loss is ``model=skip_ganomaly_paper`` (or ``loss=`` here). The class's other
defaults are still the paper's (width 64, every skip, the 0.9 / 0.1 score, as
``model=skip_ganomaly_paper``); ``model=skip_ganomaly`` narrows width and skips and scores
with the difference map.

Choices and fixes:
- Discriminator: the reference's is "DCGAN encoder to nz features, then a 1-output
  classifier"; we reuse :class:`DcganDiscriminator` (the same DCGAN encoder, one logit),
  so the latent features are its last conv map, (B, 512, 4, 4) at 64 px with width 64.
- No "noise" input: the reference adds an uninitialised ``torch.empty`` tensor to the
  image; our generator sees the image alone.
- The discriminator step never reuses a graph an optimizer step modified: the core runs
  D on the detached reconstruction, steps it, then makes a fresh D pass for G's loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from anomaly_gan.models.core import GanAnomalyModule, GeneratorOutput
from anomaly_gan.nets.blocks import check_image_size
from anomaly_gan.nets.dcgan import DcganDiscriminator, supported_dcgan_sizes
from anomaly_gan.nets.unet import Pix2PixUnet, supported_pix2pix_sizes
from anomaly_gan.scoring import AnomalyScore


def supported_sizes() -> list[int]:
    """Sizes both networks accept: powers of two from 32 to 512."""
    return sorted(set(supported_pix2pix_sizes()) & set(supported_dcgan_sizes()))


class SkipGanomaly(GanAnomalyModule):
    """U-Net generator + DCGAN discriminator; latent loss on the discriminator's features."""

    # default_loss: the core's GeneratorLoss(), what model=skip_ganomaly composes.
    default_scorer = AnomalyScore(
        latent_weight=0.1, reconstruction_weight=0.9, reconstruction_norm="l2"
    )

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        base_width: int = 64,
        max_width: int = 512,
        skip_levels: Sequence[int] | None = None,
        **core: Any,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, **core)
        check_image_size(image_size, supported_sizes(), "Skip-GANomaly")
        self.generator = Pix2PixUnet(image_size, channels, base_width, max_width, skip_levels)
        self.discriminator = DcganDiscriminator(image_size, channels, base_width)
        self.init_weights()

    def generate(self, image: Tensor) -> GeneratorOutput:
        # latent_in/out None: the core compares the discriminator's features of x and x̂.
        return GeneratorOutput(self.generator(image))
