"""Skip-SA: Skip-GANomaly with self-attention in the generator's encoder.

Sun, Liu, Ma, Na, Zhang, "Skip.Self attention GAN for anomaly detection", Int. J. Systems,
Control and Communications 16(1), 2025, Section 3. Generator: :class:`SelfAttentionUnet` (two
depthwise-separable convolutions, self-attention, max-pool per encoder level; the attended
map is the skip; two DSC + bilinear upsampling per decoder level; 1×1 convolution to the
image). Discriminator: as in GANomaly (Section 3.2); the latent loss compares its last
features of x and x̂ (Section 2, eq. 3), so :meth:`generate` returns no latent codes.

Paper setting (Section 4.2): BCE adversarial, L1 context, L2 latent (eq. 7) with w_adv 0.5,
w_ctx 0.3 (our w_con), w_lat 0.2 (our w_enc), conf/loss/skip_sa_paper.yaml, used by
``model=skip_sa_paper``; Adam 2e-4; 10,000 iterations (see conf/model/skip_sa.yaml for the
trainer override).

Defaults are the project's, those of ``model=skip_sa`` (conf/model/skip_sa.yaml):
``base_width=None`` = the CPU-friendly width for the image size (64 at 32 px, 32 at 64 px,
16 from 128 px; :func:`anomaly_gan.resolvers.default_base_width`), attention on levels 3–5
(``attention_levels=(3, 4, 5)``: levels 1–2 at full and half resolution cost minutes per
step on CPU at 128 px), no skips (``skip_levels=()``, chosen on four real sets; ``(-1,)``
keeps the deepest), Skip-GANomaly's weights 1 / 50 / 1 with GANomaly's feature matching
instead of BCE (``GeneratorLoss()``, conf/loss/feature_matching_l1.yaml: with the paper's
weights the generator barely learns to reconstruct, docs/what-works.md) and the
difference-map score
(:data:`anomaly_gan.scoring.DEFAULT_SCORER`), summed with the no-learning PCA reference's score
(``companion="pca"``, :mod:`anomaly_gan.pca_companion`, every architecture's default; for
Skip-SA it helped every held-out set of four real sets). The paper setting (width 64, attention and
skips on every level, its loss, the 0.9 / 0.1 score alone) is ``model=skip_sa_paper``
(conf/model/skip_sa_paper.yaml).

Choices where the paper is silent:
- depth 5 (the five encoder blocks of the Skip-GANomaly generator it modifies), widths
  64, 128, 256, 512, 512 (``base_width`` doubling, capped at ``max_width``), a bottleneck of
  two DSC blocks; attention on every level (``attention_levels: null``), as the paper's
  "self-attention into each convolutional layer of the encoder" says.
- Score: Skip-GANomaly's 0.9 · reconstruction (L2) + 0.1 · latent (the paper reports AUROC
  without giving its score function).
- Cost: attention at full resolution is O(N²) time in N = H·W (memory O(N) through the
  fused kernel); at 128 px the first level dominates a training step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from anomaly_gan.models.core import GanAnomalyModule, GeneratorOutput
from anomaly_gan.nets.blocks import check_image_size
from anomaly_gan.nets.dcgan import DcganDiscriminator, supported_dcgan_sizes
from anomaly_gan.nets.unet import SelfAttentionUnet, supported_attention_unet_sizes


def supported_sizes(depth: int = 5) -> list[int]:
    """Sizes both networks accept: multiples of 2^depth (and of 16) from 32 to 512."""
    return sorted(set(supported_attention_unet_sizes(depth)) & set(supported_dcgan_sizes()))


class SkipSelfAttentionGan(GanAnomalyModule):
    """Self-attention U-Net generator + DCGAN discriminator (latent loss on its features)."""

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        depth: int = 5,
        base_width: int | None = None,
        max_width: int = 512,
        attention_levels: Sequence[int] | None = (3, 4, 5),
        attention_reduction: int = 8,
        skip_levels: Sequence[int] | None = (),
        **core: Any,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, **core)
        base_width = self.resolve_base_width(base_width)
        check_image_size(image_size, supported_sizes(depth), f"Skip-SA (depth {depth})")
        self.generator = SelfAttentionUnet(
            image_size,
            channels,
            depth,
            base_width,
            max_width,
            attention_levels,
            attention_reduction,
            skip_levels,
        )
        self.discriminator = DcganDiscriminator(image_size, channels, base_width)
        self.init_weights()

    def generate(self, image: Tensor) -> GeneratorOutput:
        return GeneratorOutput(self.generator(image))
