"""MIFE and its Baseline.

Toker, Korkmaz, "Combining Generative Models and Attention Networks for Anomaly Detection in
Industrial Settings", Sections II.B–D.

Generators: :class:`ConvAutoencoder` exactly as stated — five Conv(4, 2, 1) + BN +
LeakyReLU blocks 3 -> 64 -> ... -> 1024, Linear to a 100-d latent, Linear back and five
mirrored ConvTranspose layers, Tanh. MIFE adds self-attention after blocks 4 and 5 and
concatenates each encoder block's map into the decoder step of the same resolution.

Losses (II.D): L2 reconstruction, BCE adversarial, L2 encoder term
``||E(x) − E(G(x))||₂`` with E the generator's own encoder applied again to the
reconstruction (so :meth:`generate` returns ``latent_in = E(x)``, ``latent_out = E(G(x))``).
Score (eq. 5): mean absolute reconstruction error.

Defaults are the project's, those of ``model=mife`` / ``model=baseline``
(conf/model/mife.yaml, conf/model/baseline.yaml): ``base_width=None`` = the CPU-friendly
width for the image size (64 at 32 px, 32 at 64 px, 16 from 128 px;
:func:`anomaly_gan.resolvers.default_base_width`), MIFE's deepest skip only
(``skip_levels=(-1,)``), GANomaly's loss form (feature matching + L1, 1 / 50 / 1:
``GeneratorLoss()``, conf/loss/feature_matching_l1.yaml) and the difference-map score
(:data:`anomaly_gan.scoring.DEFAULT_SCORER`). The paper setting (width 64, MIFE's five
skips, BCE + L2 loss, the L1 score of eq. 5) is ``model=mife_paper`` /
``model=baseline_paper`` (conf/model/<name>_paper.yaml).

Choices where the paper is silent:
- Discriminator: not described; we use the DCGAN/GANomaly discriminator.
- Loss weights: not given; GANomaly's pattern w_adv 1 / w_con 50 / w_enc 1
  (conf/loss/bce_l2.yaml).
- Decoder activations (BN + ReLU) and the Linear's activation, see
  :mod:`anomaly_gan.nets.autoencoder`; 1-channel data replaces the 3 of the first and
  last layers with ``channels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from anomaly_gan.models.core import GanAnomalyModule, GeneratorOutput
from anomaly_gan.nets.autoencoder import ConvAutoencoder, supported_autoencoder_sizes
from anomaly_gan.nets.blocks import check_image_size
from anomaly_gan.nets.dcgan import DcganDiscriminator, supported_dcgan_sizes


def supported_sizes() -> list[int]:
    """Sizes both networks accept: multiples of 32 from 32 to 512."""
    return sorted(set(supported_autoencoder_sizes()) & set(supported_dcgan_sizes()))


class _AutoencoderGan(GanAnomalyModule):
    """What MIFE and Baseline share: networks and the E(x) / E(G(x)) latent pair.

    Has no ``__init__`` of its own, so each subclass's hyperparameters are exactly its
    arguments (Lightning's ``save_hyperparameters`` merges every ``__init__`` in the chain,
    and a checkpoint reloads by passing them back to the subclass).
    """

    generator: ConvAutoencoder

    def _build(
        self,
        name: str,
        latent_dim: int,
        base_width: int | None,
        skip_levels: Sequence[int] | None,
        attention_levels: Sequence[int],
    ) -> None:
        image_size, channels = self.hparams.image_size, self.hparams.channels
        base_width = self.resolve_base_width(base_width)
        check_image_size(image_size, supported_sizes(), name)
        self.generator = ConvAutoencoder(
            image_size, channels, latent_dim, base_width, skip_levels, attention_levels
        )
        self.discriminator = DcganDiscriminator(image_size, channels, base_width)
        self.init_weights()

    def generate(self, image: Tensor) -> GeneratorOutput:
        reconstruction, latent_in = self.generator(image)  # (B, C, S, S), (B, latent_dim)
        latent_out = self.generator.encode(reconstruction)  # E(G(x)), (B, latent_dim)
        return GeneratorOutput(reconstruction, latent_in, latent_out)


class Mife(_AutoencoderGan):
    """U-Net autoencoder with self-attention after encoder blocks 4 and 5 (II.C).

    ``skip_levels``: encoder blocks (1–5, -1 = 5) concatenated into the decoder; the default
    is the deepest only (``model=mife``), ``None`` = all five (the paper, ``model=mife_paper``).
    """

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        latent_dim: int = 100,
        base_width: int | None = None,
        attention_levels: Sequence[int] = (4, 5),
        skip_levels: Sequence[int] | None = (-1,),
        **core: Any,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, **core)
        self._build("MIFE", latent_dim, base_width, skip_levels, attention_levels)


class MifeBaseline(_AutoencoderGan):
    """The MIFE paper's Baseline: the same autoencoder with no skips and no attention (II.B)."""

    default_memory = "encoder"

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        latent_dim: int = 100,
        base_width: int | None = None,
        **core: Any,
    ) -> None:
        core.setdefault("memory", self.default_memory)
        super().__init__(image_size=image_size, channels=channels, **core)
        self._build("the MIFE Baseline", latent_dim, base_width, (), ())
