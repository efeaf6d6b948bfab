"""GANomaly on the shared core.

Akcay, Atapour-Abarghouei, Breckon, "GANomaly: Semi-Supervised Anomaly Detection via
Adversarial Training", ACCV 2018, Sec. 3.

Generator: DCGAN encoder -> decoder -> second encoder; discriminator: DCGAN encoder with
one logit.

Defaults are the project's, those of ``model=ganomaly`` (conf/model/ganomaly.yaml): latent
100, ``base_width=None`` = the CPU-friendly width for the image size (64 at 32 px, 32 at
64 px, 16 from 128 px; :func:`anomaly_gan.resolvers.default_base_width`), losses
feature-matching adversarial / L1 context / L2 encoder with weights 1 / 50 / 1
(``GeneratorLoss()``, conf/loss/feature_matching_l1.yaml, also the paper's) and the
difference-map score (:data:`anomaly_gan.scoring.DEFAULT_SCORER`). The reference setting
(docs/reference-code.md, section 2: width 64, latent-distance score) is
``model=ganomaly_paper`` (conf/model/ganomaly_paper.yaml).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anomaly_gan.models.core import GanAnomalyModule, GeneratorOutput
from anomaly_gan.nets.dcgan import DcganDiscriminator, GanomalyGenerator


class Ganomaly(GanAnomalyModule):
    default_memory = "encoder"

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        latent_dim: int = 100,
        base_width: int | None = None,
        max_width: int | None = None,
        **core: Any,
    ) -> None:
        core.setdefault("memory", self.default_memory)
        super().__init__(image_size=image_size, channels=channels, **core)
        base_width = self.resolve_base_width(base_width)
        self.generator = GanomalyGenerator(image_size, channels, latent_dim, base_width, max_width)
        self.discriminator = DcganDiscriminator(image_size, channels, base_width, max_width)
        self.init_weights()

    def generate(self, image: Tensor) -> GeneratorOutput:
        reconstruction, latent_in, latent_out = self.generator(image)
        return GeneratorOutput(reconstruction, latent_in, latent_out)
