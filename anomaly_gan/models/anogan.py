"""AnoGAN on the shared core.

Schlegl, Seeböck, Waldstein, Schmidt-Erfurth, Langs, "Unsupervised Anomaly Detection with
Generative Adversarial Networks to Guide Marker Discovery", IPMI 2017.

- Sec. 2.1: a DCGAN learns the manifold of normal images: generator ``G: z -> image`` from
  noise ``z ~ U(-1, 1)^latent_dim`` (the DCGAN decoder, :class:`DcganDecoder`), and a
  discriminator (:class:`DcganDiscriminator`), trained adversarially on normal images only.
  There is no encoder: nothing maps an image to its latent code.
- Sec. 2.2: so each test image ``x`` is mapped to the latent space by gradient descent on
  ``z`` (``search_steps`` = Γ = 500 steps), ``G`` and ``D`` frozen, minimising
  ``L(z) = (1 − λ) · L_R(z) + λ · L_D(z)`` with the residual loss
  ``L_R = Σ |x − G(z)|`` and the discrimination loss ``L_D = Σ |f(x) − f(G(z))|``, ``f`` the
  discriminator's intermediate features (feature matching), ``λ = 0.1``.
- Sec. 2.3: anomaly score ``A(x) = (1 − λ) · R(x) + λ · D(x)``, the same combination at the
  final ``z``; the residual image ``|x − G(z)|`` locates the anomaly.

In this project the score is the scorer's (conf/model/scorer/anogan.yaml): ``0.9 ·`` mean
``|x − G(z*)|`` + ``0.1 ·`` :meth:`Anogan.latent_distance`, which is ``A(x)`` divided by the
number of image elements ``C·H·W`` (a constant, so rankings and the threshold rule are the
paper's). The anomaly map is the residual; the "latent codes" of :class:`GeneratorOutput`
are ``f(x)`` and ``f(G(z*))``.

Choices where the text leaves room (docs/what-works.md, "AnoGAN"):

- Search optimiser: Adam on ``z`` (``search_lr`` 0.05), each step followed by clamping
  ``z`` into ``[-1, 1]``, the support of the training prior (``G`` never saw codes outside
  it). On a DCGAN trained on the synthetic textile, the mean loss of normal images after
  100 / 300 / 500 steps was 537 / 512 / 508 at lr 0.01, 512 / 507 / 506 at 0.05 and
  509 / 507 / 506 at 0.1: 0.05 has converged by the 500 steps and nearly by 100.
- Initial ``z``: one fixed draw from ``U(-1, 1)`` (seeded by ``search_seed``), the same for
  every image, so a score never depends on the image's batch or its position in it. The
  per-image losses are summed (each ``z_i`` gets its own image's gradient only), Adam is
  elementwise and the networks run in eval mode, so batching changes speed only.
- Width 64 (``ngf = ndf = 64``, the DCGAN reference code's), as every ``model=<name>_paper``:
  AnoGAN exists here only in its paper's form.
- Generator loss: the non-saturating DCGAN loss, BCE(D(G(z)), real) (conf/loss/dcgan.yaml).
- Validation during training searches ``validation_search_steps`` (100) steps, a fifth of the
  test's: its ``val/con`` (residual after the search) chooses the checkpoint and it
  calibrates the scorer provisionally. Before the test, :meth:`Anogan.on_test_start`
  recalibrates the scorer on the validation normals with the full ``search_steps``, so the
  threshold in results.json is on the test scores' scale (scores fall as the search goes
  on). A checkpoint file keeps the provisional calibration (``calibrated_steps`` says with
  how many steps): ``predict.py`` flags fewer images with it than the test would;
  ``model.validation_search_steps=500`` calibrates every checkpoint with the full search.
  The synthetic-defect copies of validation are off (``validation_defects=False``): they
  would double its searches.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_gan.losses import GeneratorLoss
from anomaly_gan.models.core import GanAnomalyModule, GeneratorOutput
from anomaly_gan.nets.dcgan import DcganDecoder, DcganDiscriminator, dcgan_plan

log = logging.getLogger(__name__)

#: AnoGAN's score (Sec. 2.3, λ = 0.1), as conf/model/scorer/anogan.yaml: the classes' default.
ANOGAN_SCORER: dict[str, Any] = {
    "latent_weight": 0.1,
    "reconstruction_weight": 0.9,
    "reconstruction_norm": "l1",
    "map_sigma": 0.0,
    "smooth_difference": False,
    "normalize_map": False,
    "pooling": "mean",
    "top_k_fraction": 0.01,
    "per_channel": False,
    "map_sigma_fraction": None,
    "map_std_floor": 0.1,
    "localization_map": "score",
    "localization_sigma": 1.0,
}

#: The DCGAN generator objective: non-saturating BCE only (conf/loss/dcgan.yaml).
DCGAN_LOSS = GeneratorLoss(w_adv=1.0, w_con=0.0, w_enc=0.0, adversarial="bce")

#: Why ``python export.py`` refuses AnoGAN (see :attr:`GanAnomalyModule.export_refusal`).
EXPORT_REFUSAL = (
    "AnoGAN scores an image by optimising its latent code (search_steps Adam steps through "
    "the generator and discriminator), a loop with gradients that an ONNX graph cannot "
    "hold. Score with `python predict.py ckpt_path=... input=...` instead, or export an "
    "encoder-based model (ganomaly, skip_ganomaly, skip_sa, mife, baseline)."
)


@dataclass
class LatentSearch:
    """Result of :func:`search_latent` for a batch of B images."""

    latent: Tensor  # (B, latent_dim, 1, 1): z* after the last step
    reconstruction: Tensor  # (B, C, H, W): G(z*)
    real_features: Tensor  # (B, F): f(x)
    fake_features: Tensor  # (B, F): f(G(z*))
    loss: Tensor  # (B,): L(z*) per image, the paper's sums
    initial_loss: Tensor  # (B,): L(z_1), before the first step


def search_loss(
    image: Tensor,
    fake: Tensor,
    real_features: Tensor,
    fake_features: Tensor,
    feature_weight: float,
) -> Tensor:
    """Schlegl Sec. 2.2 per image, (B,): ``(1 − λ) Σ|x − G(z)| + λ Σ|f(x) − f(G(z))|``.

    Summed in float32: under bf16-mixed the networks' outputs are bfloat16, and a sum over
    thousands of elements in bfloat16 would round away the small steps the search makes.
    """
    residual = (image.float() - fake.float()).abs().flatten(1).sum(dim=1)
    discrimination = (real_features.float() - fake_features.float()).abs().flatten(1).sum(dim=1)
    return (1.0 - feature_weight) * residual + feature_weight * discrimination


@contextlib.contextmanager
def _frozen(*networks: nn.Module) -> Iterator[None]:
    """Eval mode for the search (BatchNorm running statistics: no batch mixing, no updates),
    restored afterwards; the weights are never stepped (gradients go to ``z`` only)."""
    modes = [network.training for network in networks]
    for network in networks:
        network.eval()
    try:
        yield
    finally:
        for network, mode in zip(networks, modes, strict=True):
            network.train(mode)


def search_latent(
    generator: nn.Module,
    discriminator: nn.Module,
    image: Tensor,
    initial: Tensor,
    steps: int,
    lr: float,
    feature_weight: float,
) -> LatentSearch:
    """Map each image to the latent code whose generation matches it best (Sec. 2.2).

    ``initial`` is ``z_1`` for every image, (B, latent_dim, 1, 1). Works under
    ``torch.no_grad`` and ``torch.inference_mode`` (Lightning's validation and test loops):
    the search leaves inference mode and works on a normal-tensor copy of the images.
    """
    with torch.inference_mode(False), torch.enable_grad(), _frozen(generator, discriminator):
        image = image.detach().clone()  # an inference tensor cannot be saved for backward
        with torch.no_grad():
            real_features = discriminator(image)[1].flatten(1)
        latent = initial.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=lr)
        initial_loss: Tensor | None = None
        for _ in range(steps):
            fake = generator(latent)
            loss = search_loss(
                image, fake, real_features, discriminator(fake)[1].flatten(1), feature_weight
            )
            if initial_loss is None:
                initial_loss = loss.detach()
            # Summed: image i's loss depends on z_i alone, so each z_i gets its own gradient.
            # autograd.grad computes d/dz only: no weight gradients, nothing accumulates in .grad.
            (latent.grad,) = torch.autograd.grad(loss.sum(), latent)
            optimizer.step()
            with torch.no_grad():
                latent.clamp_(-1.0, 1.0)  # stay in the support of the prior U(-1, 1)
        with torch.no_grad():
            latent = latent.detach()
            fake = generator(latent)
            fake_features = discriminator(fake)[1].flatten(1)
            loss = search_loss(image, fake, real_features, fake_features, feature_weight)
    return LatentSearch(
        latent=latent,
        reconstruction=fake,
        real_features=real_features,
        fake_features=fake_features,
        loss=loss,
        initial_loss=loss if initial_loss is None else initial_loss,
    )


class Anogan(GanAnomalyModule):
    """DCGAN trained on normal images; test images mapped to ``z`` by gradient descent.

    Args (besides the core's, :class:`GanAnomalyModule`):
        latent_dim: size of ``z`` (DCGAN: 100).
        base_width, max_width: DCGAN widths (``ngf = ndf``); 64 = the DCGAN reference.
        search_steps: Γ, Adam steps of the latent search per scored image (paper: 500).
        validation_search_steps: steps at the validations during training (at most
            ``search_steps``): they only choose the checkpoint (``val/con``, the residual
            after the search) and calibrate provisionally; the test recalibrates the
            scorer with ``search_steps`` (:meth:`on_test_start`).
        search_lr: Adam learning rate of the search.
        feature_weight: λ of the search loss (paper: 0.1); the score's weights are the
            scorer's (``model.scorer.latent_weight`` / ``reconstruction_weight``).
        search_seed: seed of the one initial ``z_1`` every image starts from.
    """

    default_loss = DCGAN_LOSS
    default_scorer = ANOGAN_SCORER
    export_refusal = EXPORT_REFUSAL

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        latent_dim: int = 100,
        base_width: int = 64,
        max_width: int | None = None,
        search_steps: int = 500,
        validation_search_steps: int = 100,
        search_lr: float = 0.05,
        feature_weight: float = 0.1,
        search_seed: int = 0,
        validation_defects: bool = False,
        **core: Any,
    ) -> None:
        if core.get("corruption"):
            raise ValueError(
                "model=anogan takes no corruption: its generator maps noise, not an input "
                "image, to an image (use model/corruption=none)."
            )
        if core.pop("companion", None):
            raise ValueError(
                "model=anogan takes no companion: its scores come from a per-image latent "
                "search whose scale changes with the number of search steps, so they cannot "
                "be standardised once on validation normals (leave model.companion unset)."
            )
        if core.pop("memory", None):
            raise ValueError(
                "model=anogan takes no feature memory: its generator maps noise to an image "
                "and has no encoder whose features could be remembered (leave model.memory "
                "unset)."
            )
        for key, value in (
            ("search_steps", search_steps),
            ("validation_search_steps", validation_search_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"model.{key} must be an integer >= 0, got {value!r}")
        if not search_lr > 0:
            raise ValueError(f"model.search_lr must be > 0, got {search_lr!r}")
        if not 0.0 <= feature_weight <= 1.0:
            raise ValueError(f"model.feature_weight (λ) must be in [0, 1], got {feature_weight}")
        super().__init__(
            image_size=image_size,
            channels=channels,
            validation_defects=validation_defects,
            companion=None,
            **core,
        )
        if self.loss_fn.w_con or self.loss_fn.w_enc or self.loss_fn.w_ssim:
            raise ValueError(
                f"model=anogan trains a DCGAN: its generator has no input to reconstruct and no "
                f"encoder, so loss.w_con, loss.w_enc and loss.w_ssim must be 0 (got "
                f"{self.loss_fn.w_con}, {self.loss_fn.w_enc}, {self.loss_fn.w_ssim}); use "
                f"loss=dcgan."
            )
        self.generator = DcganDecoder(image_size, channels, latent_dim, base_width, max_width)
        self.discriminator = DcganDiscriminator(image_size, channels, base_width, max_width)
        self.init_weights()
        # Σ|f(x) − f(G(z))| / (C·H·W) = mean|Δf| · (features per image element); f(x) is
        # the discriminator's last feature map, (B, widths[-1], k, k).
        plan = dcgan_plan(image_size, base_width, max_width)
        features = plan.widths[-1] * plan.bottleneck_size**2
        self.features_per_element = features / (channels * image_size * image_size)
        # How many search steps the scorer's calibration (threshold, map statistics) used;
        # travels in the checkpoint with it. 0: not calibrated yet.
        self.register_buffer("calibrated_steps", torch.tensor(0))
        self._steps_now: int | None = None  # the search length of the current loop

    # ------------------------------------------------------------------- latent space
    def sample_latent(
        self, batch: int, like: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """``z ~ U(-1, 1)``, (B, latent_dim, 1, 1), the prior of Sec. 2.1, on ``like``'s
        device and dtype (a seeded ``generator`` draws on the CPU, then moves)."""
        shape = (batch, self.hparams.latent_dim, 1, 1)
        if generator is not None:
            return (torch.rand(shape, generator=generator) * 2 - 1).to(like)
        return torch.rand(shape, device=like.device, dtype=like.dtype) * 2 - 1

    def initial_latent(self, image: Tensor) -> Tensor:
        """``z_1`` of the search: one seeded draw, the same for every image of the batch."""
        seeded = torch.Generator().manual_seed(self.hparams.search_seed)
        return self.sample_latent(1, image, seeded).expand(image.shape[0], -1, -1, -1)

    def search(self, image: Tensor, steps: int | None = None) -> LatentSearch:
        """:func:`search_latent` with this model's networks and settings."""
        if steps is None:
            steps = self.hparams.search_steps if self._steps_now is None else self._steps_now
        return search_latent(
            self.generator,
            self.discriminator,
            image,
            self.initial_latent(image),
            steps,
            self.hparams.search_lr,
            self.hparams.feature_weight,
        )

    # ------------------------------------------------------------------ scoring hooks
    def generate(self, image: Tensor) -> GeneratorOutput:
        """G(z*) after the latent search; the latent pair is ``f(x)``, ``f(G(z*))``."""
        found = self.search(image)
        return GeneratorOutput(found.reconstruction, found.real_features, found.fake_features)

    def latent_distance(self, latent_in: Tensor, latent_out: Tensor) -> Tensor:
        """``Σ|f(x) − f(G(z*))| / (C·H·W)`` per image, (B,): the discrimination loss on the
        residual's per-element scale, so the scorer's ``0.1 · latent + 0.9 · mean residual``
        is ``A(x) / (C·H·W)``. For a tiled frame (codes of its tiles side by side) the mean
        over its tiles."""
        difference = latent_in.float() - latent_out.float()  # float32 under bf16-mixed too
        return difference.abs().flatten(1).mean(dim=1) * self.features_per_element

    # ---------------------------------------------------------------------- validation
    @property
    def validation_steps(self) -> int:
        """Search steps at the validations during training."""
        return min(self.hparams.validation_search_steps, self.hparams.search_steps)

    @contextlib.contextmanager
    def _searching(self, steps: int) -> Iterator[None]:
        self._steps_now = steps
        try:
            yield
        finally:
            self._steps_now = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The core's validation (``val/con``, calibration maps) with the shorter search."""
        with self._searching(self.validation_steps):
            super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        calibrating = bool(self._val_maps)
        super().on_validation_epoch_end()
        if calibrating:
            self.calibrated_steps.fill_(self.validation_steps)

    def on_test_start(self) -> None:
        """Recalibrate on the validation normals with the test's search, when the weights
        under test were calibrated with a shorter one (``validation_search_steps``).

        Scores fall as the search goes on, so a threshold set on 100-step scores would sit
        above the 500-step scores of the test's normal images. Validation normals only: no
        test image or label is involved. Needs the datamodule (``train.py`` passes it);
        without one the provisional calibration stays and a warning says so.
        """
        steps = self.hparams.search_steps
        if int(self.calibrated_steps) >= steps:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        loader = datamodule.val_dataloader() if datamodule is not None else None
        if not loader:
            log.warning(
                "AnoGAN: the scorer was calibrated with %d-step searches, the test searches "
                "%d steps, and no validation data is at hand to recalibrate: the threshold "
                "is conservative (set model.validation_search_steps=%d to calibrate with the "
                "full search during training).",
                int(self.calibrated_steps),
                steps,
                steps,
            )
            return
        maps: list[Tensor] = []
        latent: list[Tensor] = []
        localization: list[Tensor] = []
        # The test steps' precision (autocast under bf16-mixed): the threshold is set on
        # scores computed as the test's are. Hooks run outside it unless asked.
        with self.trainer.precision_plugin.test_step_context():
            for batch in loader:
                image = self.memory_format(batch["image"].to(self.device))
                output, latent_in, latent_out = self.reconstruct(image)
                maps.append(self.scorer.error_map(image, output.reconstruction))
                latent.append(self.latent_distance(latent_in, latent_out))
                if self.scorer.localization_map == "error":
                    localization.append(
                        self.scorer.localization_error(image, output.reconstruction)
                    )
        if not maps:
            return
        self.scorer.calibrate(
            torch.cat(maps),
            torch.cat(latent),
            self.hparams.threshold_quantile,
            torch.cat(localization) if localization else None,
        )
        log.info(
            "AnoGAN: scorer recalibrated on %d validation normals with the test's %d-step "
            "search (checkpoint calibrated with %d steps); threshold %.6g.",
            sum(len(m) for m in maps),
            steps,
            int(self.calibrated_steps),
            float(self.threshold),
        )
        self.calibrated_steps.fill_(steps)

    # ------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """One DCGAN update on a batch of normal images: D on real vs G(z), then G.

        Same order and safeguards as the core's step (fresh D pass for G's loss, finite
        check before each step, D re-initialised under ``d_reinit_floor``); only the
        generator's input differs: random ``z`` instead of the image.
        """
        d_opt, g_opt = self.optimizers()
        image = self.memory_format(batch["image"])
        batch_size = image.shape[0]
        # Drawn from the global generator: seed_everything makes a run repeatable.
        fake = self.generator(self.sample_latent(batch_size, image))

        d_loss = self._discriminator_step(image, fake, d_opt, batch_idx)

        self.toggle_optimizer(g_opt)
        fake_logits, fake_features = self.discriminator(fake)
        if self.loss_fn.adversarial == "bce":
            adversarial = F.binary_cross_entropy_with_logits(
                fake_logits, torch.ones_like(fake_logits)
            )
        else:  # feature matching without pairs: the batch means (Salimans et al. 2016)
            with torch.no_grad():
                _, real_features = self.discriminator(image)
            adversarial = F.mse_loss(fake_features.mean(dim=0), real_features.mean(dim=0))
        g_loss = self.loss_fn.w_adv * adversarial
        self._ensure_finite({"g_adv": adversarial, "g": g_loss}, batch_idx)
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        self._clip(g_opt)
        g_opt.step()
        self.untoggle_optimizer(g_opt)

        self.log("train/d", d_loss, prog_bar=True, batch_size=batch_size)
        self.log("train/g", g_loss, prog_bar=True, batch_size=batch_size)
        self.log("train/g_adv", adversarial, batch_size=batch_size)
        self._maybe_reset_discriminator(d_loss, d_opt)


__all__ = ["ANOGAN_SCORER", "DCGAN_LOSS", "Anogan", "LatentSearch", "search_latent", "search_loss"]
