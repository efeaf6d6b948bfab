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

Defaults are the project's, those of ``model=skip_ganomaly`` (conf/model/skip_ganomaly.yaml):
``base_width=None`` = the CPU-friendly width for the image size (64 at 32 px, 32 at 64 px,
16 from 128 px; :func:`anomaly_gan.resolvers.default_base_width`), no skip connections
(``skip_levels=()``: the U-Net's encoder and decoder without the bridges that let it copy a
defect into the reconstruction; chosen on four real sets, docs/what-works.md; ``(-1,)``
keeps the deepest), GANomaly's feature matching + L1 loss instead of BCE, with the
discriminator-feature term counted once (:attr:`SkipGanomaly.default_loss`, ``w_adv=0``,
conf/loss/feature_matching_once_l1.yaml: here the adversarial and the latent term are the
same quantity; chosen on four real sets, docs/what-works.md), synthetic defects pasted into
half of the training inputs (:attr:`SkipGanomaly.default_corruption`,
conf/model/corruption/defects.yaml: the generator learns to repair what does not look
normal; chosen on four real sets, docs/what-works.md; ``corruption=None`` trains on clean
inputs) and the difference-map score
(:data:`anomaly_gan.scoring.DEFAULT_SCORER`). The paper setting above (width 64, every skip,
its loss and the 0.9 / 0.1 score, clean training inputs) is ``model=skip_ganomaly_paper``
(conf/model/skip_ganomaly_paper.yaml).

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

from anomaly_gan.corruption import SyntheticDefects
from anomaly_gan.losses import GeneratorLoss
from anomaly_gan.models.core import GanAnomalyModule, GeneratorOutput
from anomaly_gan.nets.blocks import check_image_size
from anomaly_gan.nets.dcgan import DcganDiscriminator, supported_dcgan_sizes
from anomaly_gan.nets.unet import Pix2PixUnet, supported_pix2pix_sizes


def supported_sizes() -> list[int]:
    """Sizes both networks accept: powers of two from 32 to 512."""
    return sorted(set(supported_pix2pix_sizes()) & set(supported_dcgan_sizes()))


class SkipGanomaly(GanAnomalyModule):
    """U-Net generator + DCGAN discriminator; latent loss on the discriminator's features."""

    #: conf/loss/feature_matching_once_l1.yaml: the latent pair is D's features, so feature
    #: matching's adversarial term would repeat the latent term; it is counted once.
    default_loss = GeneratorLoss(w_adv=0.0)
    #: conf/model/corruption/defects.yaml: defects in the training input unless the caller
    #: passes ``corruption`` (``None`` or ``{}``: clean inputs, as the paper trains).
    default_corruption = SyntheticDefects()
    default_memory = "encoder"

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        base_width: int | None = None,
        max_width: int = 512,
        skip_levels: Sequence[int] | None = (),
        **core: Any,
    ) -> None:
        core.setdefault("corruption", self.default_corruption)
        core.setdefault("memory", self.default_memory)
        super().__init__(image_size=image_size, channels=channels, **core)
        base_width = self.resolve_base_width(base_width)
        check_image_size(image_size, supported_sizes(), "Skip-GANomaly")
        self.generator = Pix2PixUnet(image_size, channels, base_width, max_width, skip_levels)
        self.discriminator = DcganDiscriminator(image_size, channels, base_width)
        self.init_weights()

    def generate(self, image: Tensor) -> GeneratorOutput:
        # latent_in/out None: the core compares the discriminator's features of x and x̂.
        return GeneratorOutput(self.generator(image))
