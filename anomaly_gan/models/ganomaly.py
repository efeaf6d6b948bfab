"""GANomaly on the shared core.

Akcay, Atapour-Abarghouei, Breckon, "GANomaly: Semi-Supervised Anomaly Detection via
Adversarial Training", ACCV 2018, Sec. 3.

Generator: DCGAN encoder -> decoder -> second encoder; discriminator: DCGAN encoder with
one logit. The class's defaults are the reference ones (docs/reference-code.md, section 2):
latent 100, width 64, losses feature-matching adversarial / L1 context / L2 encoder with
weights 1 / 50 / 1 (``GeneratorLoss()``, conf/loss/feature_matching_l1.yaml, which
``model=ganomaly`` trains with too), and the latent-distance score. ``model=ganomaly``
narrows the width for CPUs and scores with the difference map; ``model=ganomaly_paper`` is
the reference setting.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anomaly_gan.models.core import GanAnomalyModule, GeneratorOutput
from anomaly_gan.nets.dcgan import DcganDiscriminator, GanomalyGenerator


class Ganomaly(GanAnomalyModule):
    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        latent_dim: int = 100,
        base_width: int = 64,
        max_width: int | None = None,
        **core: Any,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, **core)
        self.generator = GanomalyGenerator(image_size, channels, latent_dim, base_width, max_width)
        self.discriminator = DcganDiscriminator(image_size, channels, base_width, max_width)
        self.init_weights()

    def generate(self, image: Tensor) -> GeneratorOutput:
        reconstruction, latent_in, latent_out = self.generator(image)
        return GeneratorOutput(reconstruction, latent_in, latent_out)
