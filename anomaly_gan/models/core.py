"""The shared GAN training core: one two-optimizer LightningModule for every architecture.

An architecture subclasses :class:`GanAnomalyModule`, builds ``self.generator`` and
``self.discriminator`` in its ``__init__`` and implements :meth:`generate` (what its
generator returns). Training, validation and logging live here once; the scorer
(:class:`~anomaly_gan.scoring.AnomalyScore`, ``self.scorer``) owns the score, its state and
its calibration on validation normals. Test metrics and figures belong to the evaluation
callback that training adds to the test run; it receives what
:meth:`GanAnomalyModule.test_step` returns and nothing else.

The manual step follows Lightning's GAN example and the GANomaly reference:

1. the generator reconstructs the batch once;
2. discriminator step (inside ``toggle_optimizer``): BCE on real vs detached fake;
3. generator step (inside ``toggle_optimizer``): a *fresh* discriminator pass on the
   fake, so the loss never reuses a graph that an optimizer step already modified (the
   Skip-GANomaly reference code's in-place error; docs/reference-code.md, section 5);
4. the discriminator is re-initialised when its loss falls under ``d_reinit_floor``
   (GANomaly: a discriminator that wins outright gives the generator no signal).

Steps 2–4 stop on a non-finite loss before the update it would spoil. On CPU both checks
read the losses every step; on an accelerator they read them every ``log_every_n_steps``
steps and before every validation and checkpoint (:mod:`anomaly_gan.models.step_checks`),
so the step never waits for the device.

Mixed precision (``trainer.precision=bf16-mixed``): the losses are autocast-safe (BCE on
logits, L1/L2 in float32 under autocast) and the scorer computes its maps, statistics and
threshold in float32 (:mod:`anomaly_gan.scoring`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from anomaly_gan.corruption import VALIDATION_KINDS, SyntheticDefects
from anomaly_gan.evaluation.reference import lists_normal_images, training_normals
from anomaly_gan.feature_memory import (
    FeatureMemory,
    UntrainedMemory,
    check_memory,
    check_strides,
    encoder_features,
)
from anomaly_gan.losses import GeneratorLoss, discriminator_loss, distance
from anomaly_gan.models.step_checks import (
    DeferredStepChecks,
    NonFinite,
    StepPlace,
    stacked_terms,
)
from anomaly_gan.nets.init import dcgan_init
from anomaly_gan.pca_companion import PcaCompanion, check_companion
from anomaly_gan.resolvers import default_base_width
from anomaly_gan.scoring import (
    DEFAULT_SCORER,
    AnomalyScore,
    separation_auroc,
    threshold_from_normals,
)
from anomaly_gan.tiling import TileLayout, split_tiles, stitch_tiles

log = logging.getLogger(__name__)

#: Seed of the synthetic defects scored at validation (``validation_defects``); batch i
#: uses this + i, so every validation of a run, and every run, sees the same defects.
VALIDATION_DEFECT_SEED = 1234

#: Tiles one generator call reconstructs when a frame is scored tile by tile (bounds memory).
TILE_CHUNK = 256

#: Scorer buffers that checkpoints from before the scorer was a module keep at top level.
LEGACY_SCORER_BUFFERS = ("threshold", "map_mean", "map_std")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; raised before the optimizer step it would spoil."""


@dataclass
class GeneratorOutput:
    """What an architecture's generator gives back for a batch.

    ``latent_in``/``latent_out`` are the generator's own latent codes (GANomaly's two
    encoders). Architectures without them leave both ``None`` and the core uses the
    discriminator's last features of input and reconstruction instead (Skip-GANomaly).
    """

    reconstruction: Tensor
    latent_in: Tensor | None = None
    latent_out: Tensor | None = None


class GanAnomalyModule(L.LightningModule):
    """Adversarially trained autoencoder for anomaly detection (base class).

    Every default, here and in the architectures, is the project's: a class built with only
    ``image_size`` and ``channels`` is the model ``python train.py model=<name>`` trains at
    that size (tests/test_config.py). The papers' settings are ``model=<name>_paper``
    (conf/model/<name>_paper.yaml), or the same arguments passed explicitly.

    Args:
        image_size: side of the square input; comes from ``data.image_size``.
        channels: 1 or 3; comes from ``data.channels``.
        loss: generator objective (``loss`` config group); ``None``: :attr:`default_loss`,
            ``GeneratorLoss()`` = conf/loss/feature_matching_l1.yaml.
        scorer: how a test image becomes an anomaly score (``model/scorer`` group); the
            model builds its own scorer module from these settings (a given scorer's
            calibration is not copied). ``None``: :attr:`default_scorer`,
            :data:`~anomaly_gan.scoring.DEFAULT_SCORER` = conf/model/scorer/difference_map.yaml.
        lr, betas: Adam settings shared by both optimizers (GANomaly: 2e-4, (0.5, 0.999)).
        d_reinit_floor: re-initialise D when its loss falls below this; 0 disables.
        threshold_quantile: decision threshold = this quantile of validation-normal scores.
        gradient_clip_val: clip both networks' gradient norm (manual optimisation cannot use
            ``Trainer(gradient_clip_val=...)``); ``None`` disables.
        corruption: synthetic defects pasted into the generator's *training* input while
            the loss compares with the clean image (``anomaly_gan.corruption``); ``None``
            trains a plain autoencoder, as the papers do.
        validation_defects: at every validation also score a copy of each validation image
            with synthetic defects pasted in (fixed seed per batch, so every validation
            sees the same ones) and log ``val/synthetic_auroc``: how well the current
            weights and the calibrated scorer separate the copies from the clean images,
            both of the validation normals the calibration held out. No test image is
            involved; ``callbacks.model_checkpoint.monitor=val/synthetic_auroc`` (mode max)
            chooses the checkpoint on it.
        compile: ``torch.compile`` the generator and the discriminator (in place, so
            checkpoints keep their keys) when training starts. The first steps then compile
            (tens of seconds to minutes, again for eval mode and for each step's frozen
            network); worth it for long GPU runs, rarely on CPU (a 2-batch ``debug=fast``
            run took 119 s compiled against 11 s eager on 2 shared cores, same metrics).
            Measure on the GPU at hand (``bench/speed.py``) before relying on it.
        companion: ``"pca"``: sum the model's score with the score of the no-learning PCA
            reference, each standardised by the validation normals
            (:mod:`anomaly_gan.pca_companion`); the PCA is fitted on the training normals
            when training starts and saved with the weights. ``"auto"``: the same, but the
            PCA's score is summed in only when, at validation, the sum separates the
            synthetic defects better than the model alone (needs ``validation_defects``).
            ``None``: the model's score alone, as the papers score. ``"pca"`` is every
            architecture's default: chosen leave one set out on four real inspection sets
            (docs/what-works.md, "The GAN's score summed with the PCA reference's").
        memory: ``"encoder"``: sum a third detector into the score, the nearest-neighbour
            distance of the image's generator-encoder features to the training normals'
            features at the same position, each term standardised by the validation
            normals (:mod:`anomaly_gan.feature_memory`); the bank is rebuilt at every
            validation and saved with the weights. ``None``: no memory.
        memory_normals: training images the memory keeps (a seeded subset beyond it).
        memory_coreset: the share of each position's vectors the memory's bank keeps,
            chosen by greedy k-centre selection (1: all of them).
        memory_neighbourhood: positions around a test vector's own whose bank vectors it is
            also matched with (0: its own only).
        memory_weight: the memory's standardised score enters the sum times this.
        memory_strides: the encoder maps the memory reads, as divisors of the input side
            (None: 1/4 and 1/8).
        channels_last: keep weights and input batches in channels-last memory format, which
            GPU tensor-core convolutions prefer (cuDNN NHWC kernels), in bf16 above all. Off
            by default everywhere: whether it pays depends on the GPU and on the
            architecture (Skip-SA's depthwise convolutions, its attention reshapes); measure
            with ``bench/speed.py --device cuda --channels-last`` first.
    """

    default_loss = GeneratorLoss()
    default_scorer: Mapping[str, Any] = DEFAULT_SCORER
    #: ``model.memory`` when the caller does not say: an architecture whose class passes
    #: it on (``core.setdefault("memory", self.default_memory)``) sets "encoder" where
    #: leaving one set out chose it (docs/what-works.md, "The encoder's feature memory").
    default_memory: str | None = None

    #: Why ``python export.py`` refuses this architecture (an actionable message), or None:
    #: its scoring is one feed-forward graph and exports to ONNX.
    export_refusal: str | None = None

    def __init__(
        self,
        image_size: int,
        channels: int,
        loss: GeneratorLoss | dict[str, Any] | None = None,
        scorer: AnomalyScore | dict[str, Any] | None = None,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        d_reinit_floor: float = 1e-5,
        threshold_quantile: float = 0.95,
        gradient_clip_val: float | None = None,
        corruption: SyntheticDefects | dict[str, Any] | None = None,
        validation_defects: bool = True,
        compile: bool = False,
        channels_last: bool = False,
        companion: str | None = "pca",
        memory: str | None = None,
        memory_normals: int = 1024,
        memory_coreset: float = 1.0,
        memory_neighbourhood: int = 0,
        memory_weight: float = 1.0,
        memory_strides: list[int] | None = None,
    ) -> None:
        super().__init__()
        check_companion(companion)
        check_memory(memory)
        if companion == "auto" and not validation_defects:
            raise ValueError(
                "model.companion=auto chooses on the validation's synthetic defects, but "
                "model.validation_defects is false: set it true, or use model.companion=pca"
            )
        if channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {channels}")
        if not 0.0 < threshold_quantile <= 1.0:
            raise ValueError(
                f"model.threshold_quantile must be in (0, 1], got {threshold_quantile}"
            )
        self.automatic_optimization = False
        self.loss_fn = GeneratorLoss.from_config(loss) if loss else self.default_loss
        # Its buffers (decision threshold, per-pixel statistics of validation normals for
        # ``model.scorer.normalize_map``; NaN / identity until the first validation) travel
        # inside the checkpoint with the weights they were computed for.
        self.scorer = AnomalyScore.from_config(scorer or self.default_scorer, image_size)
        self.corruption = SyntheticDefects.from_config(corruption) if corruption else None
        #: The PCA reference summed into the score (``companion``), or None.
        self.companion = (
            PcaCompanion(self.scorer.to_config(), image_size, choose=companion == "auto")
            if companion
            else None
        )
        #: The generator encoder's feature memory summed into the score (``memory``), or None.
        self.memory = (
            FeatureMemory(
                memory_normals,
                coreset=memory_coreset,
                neighbourhood=memory_neighbourhood,
                weight=memory_weight,
                strides=check_strides(memory_strides, image_size),
            )
            if memory
            else None
        )
        #: The training normals the memory's bank is rebuilt from at every validation.
        self._memory_normals: Tensor | None = None
        self.save_hyperparameters(ignore=["loss", "scorer", "corruption"])
        # Plain dicts, so checkpoints reload without unpickling our classes.
        self.hparams["loss"] = self.loss_fn.to_config()
        self.hparams["scorer"] = self.scorer.to_config()
        self.hparams["corruption"] = self.corruption.to_config() if self.corruption else None
        self.generator: nn.Module
        self.discriminator: nn.Module
        self.d_reinit_count = 0
        self._val_maps: list[Tensor] = []
        self._val_latent: list[Tensor] = []
        self._val_localization: list[Tensor] = []
        self._defect_maps: list[Tensor] = []
        self._defect_latent: list[Tensor] = []
        self._companion_maps: list[Tensor] = []
        self._companion_defect_maps: list[Tensor] = []
        self._memory_scores: list[Tensor] = []
        self._memory_defect_scores: list[Tensor] = []
        self.validation_defects = (
            SyntheticDefects(probability=1.0, kinds=VALIDATION_KINDS)
            if validation_defects
            else None
        )
        #: None: read the step's losses every step on CPU and defer the reads on an
        #: accelerator (module docstring); True / False force one way (tests use True on CPU).
        self.sync_free_checks: bool | None = None
        self._deferred_checks = DeferredStepChecks()

    @property
    def defers_step_checks(self) -> bool:
        """Whether the step's checks are read later (:attr:`sync_free_checks`)."""
        if self.sync_free_checks is not None:
            return self.sync_free_checks
        return self.device.type != "cpu"

    def on_fit_start(self) -> None:
        """Fit the PCA companion on the data module's training normals (once: a resumed run
        keeps the checkpoint's) and keep them for the feature memory, decoding them once for
        both. Without one of the project's data modules (plain DataLoaders) there are no
        listed normals to fit them on: the score stays the model's alone, with a warning."""
        fit_pca = self.companion is not None and not self.companion.fitted
        if self.memory is not None:
            self._check_memory_generator()
        if not fit_pca and self.memory is None:
            return
        datamodule = self.trainer.datamodule
        if not self._lists_normals(datamodule, fit_pca):
            return
        # Reading the normals draws loader seeds from the global RNG: fork it, so that the
        # model trains on the same batches, and to the same weights, with or without them.
        with torch.random.fork_rng(devices=[]):
            normals = training_normals(datamodule)
        if self.memory is not None:
            self._keep_memory_normals(normals)
        if fit_pca:
            self.companion.fit(normals)
            log.info(
                "model.companion=%s: PCA of the training normals with k=%d (the largest "
                "candidate below their number).",
                self.hparams.companion,
                self.companion.pca.k,
            )

    def _lists_normals(self, datamodule: Any, fit_pca: bool) -> bool:
        """Whether ``datamodule`` lists its normal images, which the PCA companion (when
        ``fit_pca``) and the feature memory are fitted on; if not (plain DataLoaders), warn
        for each that the score is the model's alone."""
        if lists_normal_images(datamodule):
            return True
        found = "plain DataLoaders" if datamodule is None else type(datamodule).__name__
        for key, needed, consequence in (
            ("companion", fit_pca, "the PCA is not summed in"),
            ("memory", self.memory is not None, "no memory is summed in"),
        ):
            if needed:
                log.warning(
                    "model.%s=%s needs one of anomaly_gan.data's data modules, which list the "
                    "normal images to fit it on; this run has %s, so %s and the score is the "
                    "model's alone. Pass model.%s=null to silence this.",
                    key,
                    self.hparams[key],
                    found,
                    consequence,
                    key,
                )
        return False

    def _check_memory_generator(self) -> None:
        """``model.memory`` needs a generator that gives its encoder's maps."""
        if not callable(getattr(self.generator, "encoder_maps", None)):
            raise ValueError(
                f"model.memory={self.hparams.memory} needs a generator with an encoder; "
                f"{type(self).__name__}'s has none: set model.memory=null"
            )

    def read_memory_normals(self, datamodule: Any) -> None:
        """Keep the training normals of ``datamodule`` for the feature memory
        (``model.memory``), as :meth:`on_fit_start` does: before a validation re-scores a
        trained run with it (``bench/memory_rescore.py``). Each validation then rebuilds
        the bank."""
        if self.memory is None:
            raise ValueError("model.memory is null: there is no feature memory to build")
        self._check_memory_generator()
        if not lists_normal_images(datamodule):
            raise ValueError(
                f"model.memory needs one of anomaly_gan.data's data modules, which list the "
                f"training normals; got {type(datamodule).__name__}"
            )
        with torch.random.fork_rng(devices=[]):
            self._keep_memory_normals(training_normals(datamodule))

    def _keep_memory_normals(self, normals: Tensor) -> None:
        """Keep the images the memory's bank is built from; frames larger than the model's
        input (``data.resize=tile``) leave the memory out, with a warning."""
        size = self.hparams.image_size
        if tuple(normals.shape[-2:]) != (size, size):
            # A default (GANomaly's, ...) must not stop a tiled run: it runs without.
            log.warning(
                "model.memory=%s compares whole images of the model's size (%d×%d), but the "
                "data module gives %d×%d frames (data.resize=tile), so no memory is summed in "
                "and the score is the model's alone. Pass model.memory=null to silence this.",
                self.hparams.memory,
                size,
                size,
                normals.shape[-2],
                normals.shape[-1],
            )
            return
        # Only the images the bank keeps stay in memory for the whole run.
        self._memory_normals = self.memory.kept(normals)
        # The encoder must give the maps model.memory_strides names: say so now, not at
        # the first validation after an epoch of training.
        training = self.generator.training
        self.generator.eval()
        with torch.no_grad():
            self.memory_features(self._memory_normals[:1].to(self.device))
        self.generator.train(training)

    def memory_features(self, image: Tensor) -> Tensor:
        """The feature memory's local features (B, C, S/s, S/s; s the smallest of
        ``model.memory_strides``, 4 by default) of square images of the model's size
        (:func:`~anomaly_gan.feature_memory.local_features`)."""
        return encoder_features(self.generator, image, self.memory.strides)

    def untrained_memory(self, seed: int = 0) -> UntrainedMemory | None:
        """The feature memory's no-learning reference (:class:`UntrainedMemory`): a new
        model of these hyper-parameters, initialised under ``seed`` (the global random state
        is left as it was), lends its generator; None where no memory is summed in."""
        if self.memory is None or not self.memory.calibrated:
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(self)(**self.hparams)
        return UntrainedMemory(fresh.generator, self.memory, self.device)

    @torch.no_grad()
    def _refit_memory(self) -> None:
        """Rebuild the memory's bank from the training normals with the current encoder
        (eval mode), so the validation that follows calibrates these weights' memory."""
        if self.memory is None or self._memory_normals is None:
            return
        training = self.generator.training
        self.generator.eval()
        features = [
            self.memory_features(self.memory_format(chunk.to(self.device)))
            for chunk in self._memory_normals.split(64)
        ]
        self.generator.train(training)
        self.memory.fit(torch.cat(features))

    @property
    def fitted_memory(self) -> FeatureMemory | None:
        """The feature memory once its bank is built, else None."""
        return self.memory if self.memory is not None and self.memory.fitted else None

    def setup(self, stage: str) -> None:
        """Apply ``channels_last`` and ``compile`` once the trainer has the model."""
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)
        if stage == "fit" and self.hparams.compile:
            for network in (self.generator, self.discriminator):
                if getattr(network, "_compiled_call_impl", None) is None:
                    network.compile()

    def memory_format(self, image: Tensor) -> Tensor:
        """``image`` in the memory format the networks expect (``channels_last``); every step
        calls it on its batch (a LightningModule ``on_after_batch_transfer`` would make
        Lightning warn beside a data module)."""
        if self.hparams.channels_last and image.dim() == 4:
            return image.contiguous(memory_format=torch.channels_last)
        return image

    def resolve_base_width(self, base_width: int | None) -> int:
        """``base_width``, or the project's width for this image size when ``None``
        (:func:`~anomaly_gan.resolvers.default_base_width`, the rule the configs'
        ``${ag.width_for_size:32,${data.image_size}}`` applies). The width is written into
        the hyperparameters, so they and a checkpoint name the width the model was built with.
        """
        if base_width is None:
            base_width = default_base_width(self.hparams.image_size)
        self.hparams["base_width"] = base_width
        return base_width

    @property
    def threshold(self) -> Tensor:
        """The decision threshold (scalar buffer of the scorer; NaN before validation)."""
        return self.scorer.threshold

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read older checkpoints: their scorer buffers sit at the top of the state dict
        (``threshold``, ``map_mean``, ``map_std``, from before the scorer was a module), and
        those from before map standardisation lack ``map_mean``/``map_std`` (identity)."""
        state = checkpoint.get("state_dict", {})
        for name in LEGACY_SCORER_BUFFERS:
            if name in state:
                state.setdefault(f"scorer.{name}", state.pop(name))
        for name in ("map_mean", "map_std"):
            state.setdefault(f"scorer.{name}", getattr(self.scorer, name).detach().clone())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name the architecture class, so inference rebuilds the model from the file alone.

        With deferred step checks, first read them: a non-finite loss raises here, before
        the file is written (no checkpoint ever holds weights from after a bad update).
        """
        if self.defers_step_checks:
            found = self._deferred_checks.first_non_finite()
            if found is not None:
                raise self._non_finite_error(found, deferred=True)
        checkpoint["anomaly_gan"] = {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
        }

    # ----------------------------------------------------------------- architecture hooks
    def generate(self, image: Tensor) -> GeneratorOutput:
        """Run the generator; every architecture says here what it returns."""
        raise NotImplementedError

    def init_weights(self) -> None:
        """DCGAN init on every layer of both networks (through ``apply``)."""
        self.generator.apply(dcgan_init)
        self.discriminator.apply(dcgan_init)

    def reset_discriminator(self) -> None:
        self.discriminator.apply(dcgan_init)

    # ----------------------------------------------------------------------- shared maths
    def latent_pair(
        self,
        image: Tensor,
        output: GeneratorOutput,
        real_features: Tensor | None = None,
        fake_features: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The two codes the encoder loss and the latent score compare, (B, D) each."""
        if output.latent_in is not None and output.latent_out is not None:
            return output.latent_in, output.latent_out
        if real_features is None:
            _, real_features = self.discriminator(image)
        if fake_features is None:
            _, fake_features = self.discriminator(output.reconstruction)
        return real_features.flatten(1), fake_features.flatten(1)

    def latent_distance(self, latent_in: Tensor, latent_out: Tensor) -> Tensor:
        """The score's latent term per image, (B,), from the latent pair: the scorer's
        (GANomaly's mean squared distance) unless an architecture measures its pair otherwise
        (AnoGAN: the L1 feature distance of its latent search)."""
        return self.scorer.latent_distance(latent_in, latent_out)

    def score(self, image: Tensor) -> tuple[Tensor, GeneratorOutput]:
        """Per-image anomaly scores (B,) and the generator output they came from."""
        scores, output, _ = self.score_with_map(image)
        return scores, output

    def reconstruct(self, image: Tensor) -> tuple[GeneratorOutput, Tensor, Tensor]:
        """Generator output and latent pair of whole images, (B, C, H, W).

        An image of the model's input size goes through the generator at once. A larger
        frame (``data.resize=tile``) is cut into overlapping tiles (:mod:`anomaly_gan.tiling`);
        their reconstructions are stitched back into one frame, and each image's latent codes
        are its tiles' codes side by side, so the latent distance is their mean.
        """
        size = self.hparams.image_size
        if tuple(image.shape[-2:]) == (size, size):
            output = self.generate(image)
            return output, *self.latent_pair(image, output)
        layout = TileLayout.for_frame(image.shape[-2], image.shape[-1], size)
        parts: list[Tensor] = []
        codes_in: list[Tensor] = []
        codes_out: list[Tensor] = []
        tiles_of_batch = split_tiles(image, layout)
        # Exported graphs keep the batch axis dynamic: no chunking by its length there.
        exporting = torch.compiler.is_exporting()
        for tiles in (tiles_of_batch,) if exporting else tiles_of_batch.split(TILE_CHUNK):
            output = self.generate(tiles)
            latent_in, latent_out = self.latent_pair(tiles, output)
            parts.append(output.reconstruction)
            codes_in.append(latent_in.flatten(1))
            codes_out.append(latent_out.flatten(1))
        batch = image.shape[0]
        latent_in = torch.cat(codes_in).reshape(batch, -1)
        latent_out = torch.cat(codes_out).reshape(batch, -1)
        reconstruction = stitch_tiles(torch.cat(parts), layout)
        return GeneratorOutput(reconstruction, latent_in, latent_out), latent_in, latent_out

    def score_with_map(self, image: Tensor) -> tuple[Tensor, GeneratorOutput, Tensor]:
        """Scores (B,), generator output and the anomaly map (B, 1, H, W) users see
        (``model.scorer.localization_map``), each map computed once."""
        output, latent_in, latent_out = self.reconstruct(image)
        score_map = self.scorer.score_map(image, output.reconstruction)
        latent_distance = self.latent_distance(latent_in, latent_out)
        scores = self.scorer.score(latent_distance, score_map)
        if self.companion is not None and self.companion.calibrated:
            scores = self.companion.combine(scores, image)
        if self.memory is not None and self.memory.calibrated:
            scores = self.memory.combine(
                scores, self.memory.raw_scores(self.memory_features(image))
            )
        anomaly_map = self.scorer.anomaly_map(image, output.reconstruction, score_map)
        return scores, output, anomaly_map

    def anomaly_map(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """The per-pixel map users see and pixel metrics score (``localization_map``)."""
        return self.scorer.anomaly_map(image, reconstruction)

    def forward(self, image: Tensor) -> Tensor:
        """Anomaly score per image; call in eval mode (as Lightning's loops do)."""
        return self.score(image)[0]

    # ------------------------------------------------------------------------- training
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for D and G; the fused CUDA kernel (one launch per step instead of several
        per parameter) when the parameters are on CUDA, the default loop elsewhere."""
        betas = tuple(self.hparams.betas)
        optimizers = []
        for network in (self.discriminator, self.generator):
            parameters = list(network.parameters())
            fused = bool(parameters) and all(parameter.is_cuda for parameter in parameters)
            optimizers.append(
                torch.optim.Adam(parameters, lr=self.hparams.lr, betas=betas, fused=fused or None)
            )
        return optimizers

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        d_opt, g_opt = self.optimizers()
        image = self.memory_format(batch["image"])
        # The generator may see a corrupted input; D and every loss term see the clean one.
        source = self.corruption(image) if self.corruption is not None else image
        output = self.generate(source)
        fake = output.reconstruction

        d_loss = self._discriminator_step(image, fake, d_opt, batch_idx)

        # Generator step: a fresh pass through the updated (and now frozen) discriminator.
        self.toggle_optimizer(g_opt)
        with torch.no_grad():
            _, real_features = self.discriminator(image)
        fake_logits, fake_features = self.discriminator(fake)
        latent_in, latent_out = self.latent_pair(image, output, real_features, fake_features)
        terms = self.loss_fn.terms(
            image, fake, fake_logits, real_features, fake_features, latent_in, latent_out
        )
        g_loss = self.loss_fn.total(terms)
        self._ensure_finite({**terms, "g": g_loss}, batch_idx)
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        self._clip(g_opt)
        g_opt.step()
        self.untoggle_optimizer(g_opt)

        batch_size = image.shape[0]
        self.log("train/d", d_loss, prog_bar=True, batch_size=batch_size)
        self.log("train/g", g_loss, prog_bar=True, batch_size=batch_size)
        self.log_dict(
            {f"train/{name}": value for name, value in terms.items()}, batch_size=batch_size
        )
        self._maybe_reset_discriminator(d_loss, d_opt)

    def _discriminator_step(
        self, image: Tensor, fake: Tensor, d_opt: Any, batch_idx: int
    ) -> Tensor:
        """One discriminator update, real vs (detached) fake, inside ``toggle_optimizer``;
        returns its loss. Every architecture's step starts with it."""
        self.toggle_optimizer(d_opt)
        real_logits, _ = self.discriminator(image)
        fake_logits, _ = self.discriminator(fake.detach())
        d_loss = discriminator_loss(real_logits, fake_logits)
        self._ensure_finite({"d": d_loss}, batch_idx)
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        self._clip(d_opt)
        d_opt.step()
        self.untoggle_optimizer(d_opt)
        return d_loss

    def _clip(self, optimizer: Any) -> None:
        if self.hparams.gradient_clip_val:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.hparams.gradient_clip_val,
                gradient_clip_algorithm="norm",
            )

    def _maybe_reset_discriminator(self, d_loss: Tensor, d_opt: Any) -> None:
        """Re-initialise D below ``d_reinit_floor``: at once on CPU; on an accelerator with
        the lowest D loss of the steps since the last read (at most one re-initialisation
        per ``log_every_n_steps`` steps, up to that many steps late)."""
        if self.defers_step_checks:
            self._deferred_checks.add_discriminator_loss(d_loss)
            if self._deferred_checks.steps >= max(1, int(self.trainer.log_every_n_steps)):
                self._read_step_checks(d_opt)
        elif self.hparams.d_reinit_floor:
            self._reinit_discriminator_below_floor(d_loss.item(), d_opt)
        self.log("train/d_reinit", float(self.d_reinit_count), batch_size=1)

    def _reinit_discriminator_below_floor(self, d_loss: float, d_opt: Any) -> None:
        floor = self.hparams.d_reinit_floor
        if not (floor and d_loss < floor):
            return
        self.reset_discriminator()
        # Adam's moments belong to the discarded weights.
        d_opt.optimizer.state.clear()
        self.d_reinit_count += 1
        log.info(
            "Discriminator loss %.3g fell below d_reinit_floor=%.3g by step %d: "
            "discriminator re-initialised (%d so far).",
            d_loss,
            floor,
            self.global_step,
            self.d_reinit_count,
        )

    def _read_step_checks(self, d_opt: Any | None = None) -> None:
        """Read the deferred checks (one sync): raise on a non-finite loss; with ``d_opt``
        also re-initialise D if its lowest loss fell under the floor."""
        found = self._deferred_checks.first_non_finite()
        if found is not None:
            raise self._non_finite_error(found, deferred=True)
        if d_opt is not None:
            lowest = self._deferred_checks.lowest_discriminator_loss()
            if lowest is not None:
                self._reinit_discriminator_below_floor(lowest, d_opt)

    def _ensure_finite(self, terms: dict[str, Tensor], batch_idx: int) -> None:
        place = StepPlace(self.global_step, self.current_epoch, batch_idx)
        if self.defers_step_checks:
            self._deferred_checks.add_terms(terms, place)
            return
        if bool(torch.isfinite(stacked_terms(terms)).all()):
            return
        found = NonFinite(place, {name: value.item() for name, value in terms.items()})
        raise self._non_finite_error(found, deferred=False)

    def _non_finite_error(self, found: NonFinite, deferred: bool) -> NonFiniteLossError:
        bad = [
            f"train/{name}={value}"
            for name, value in found.values.items()
            if not math.isfinite(value)
        ]
        checkpoint = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or (
            "none saved yet"
        )
        place = found.place
        where = f"at global step {place.global_step} (epoch {place.epoch}, batch {place.batch})"
        if deferred:
            stopped = (
                f"Found at global step {self.global_step}: on {self.device.type} the losses "
                "are read every trainer.log_every_n_steps steps and before each validation "
                "and checkpoint, so the weights in memory took the updates since, but none was "
                f"saved: the last checkpoint ({checkpoint}) holds the last good weights."
            )
        else:
            stopped = (
                "Training stopped before this update, so the last checkpoint "
                f"({checkpoint}) holds the last good weights."
            )
        return NonFiniteLossError(
            f"Non-finite loss {', '.join(bad)} {where}. {stopped} "
            "Lower model.lr, set model.gradient_clip_val, or check the input images."
        )

    def _flush_step_checks(self) -> None:
        """Read what the steps since the last read left (accelerators); before a validation,
        a checkpoint, an epoch's end and the end of training."""
        if not self.defers_step_checks or self._trainer is None:
            return
        d_opt = self.optimizers()[0] if len(self.trainer.optimizers) == 2 else None
        self._read_step_checks(d_opt)

    def on_train_epoch_end(self) -> None:
        self._flush_step_checks()

    def on_train_end(self) -> None:
        self._flush_step_checks()

    def on_validation_start(self) -> None:
        self._flush_step_checks()

    # ----------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_maps, self._val_latent, self._val_localization = [], [], []
        self._defect_maps, self._defect_latent = [], []
        self._companion_maps, self._companion_defect_maps = [], []
        self._memory_scores, self._memory_defect_scores = [], []
        self._refit_memory()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image = self.memory_format(batch["image"])
        output, latent_in, latent_out = self.reconstruct(image)
        self._val_maps.append(self.scorer.error_map(image, output.reconstruction).detach())
        self._val_latent.append(self.latent_distance(latent_in, latent_out).detach())
        companion = self.fitted_companion
        if companion is not None:
            self._companion_maps.append(companion.error_map(image).detach())
        memory = self.fitted_memory
        if memory is not None:
            self._memory_scores.append(memory.raw_scores(self.memory_features(image)))
        if self.scorer.localization_map == "error":
            self._val_localization.append(
                self.scorer.localization_error(image, output.reconstruction).detach()
            )
        batch_size = image.shape[0]
        self.log(
            "val/con",
            distance(output.reconstruction, image, self.loss_fn.reconstruction),
            prog_bar=True,
            batch_size=batch_size,
        )
        self.log(
            "val/enc", distance(latent_out, latent_in, self.loss_fn.encoder), batch_size=batch_size
        )
        if self.validation_defects is not None:
            seeded = torch.Generator().manual_seed(VALIDATION_DEFECT_SEED + batch_idx)
            defective = self.validation_defects(image, generator=seeded)
            output, latent_in, latent_out = self.reconstruct(defective)
            self._defect_maps.append(
                self.scorer.error_map(defective, output.reconstruction).detach()
            )
            self._defect_latent.append(self.latent_distance(latent_in, latent_out).detach())
            if companion is not None:
                self._companion_defect_maps.append(companion.error_map(defective).detach())
            if memory is not None:
                self._memory_defect_scores.append(
                    memory.raw_scores(self.memory_features(defective))
                )

    def on_validation_epoch_end(self) -> None:
        """Calibrate the scorer on the validation normals (:meth:`AnomalyScore.calibrate`).

        Runs before ModelCheckpoint saves, so each checkpoint carries its own values.
        """
        if not self._val_maps:
            return
        maps = self.all_gather(torch.cat(self._val_maps))
        latent = self.all_gather(torch.cat(self._val_latent))
        localization = (
            self.all_gather(torch.cat(self._val_localization)) if self._val_localization else None
        )
        quantile = self.hparams.threshold_quantile
        scores = self.scorer.calibrate(maps, latent, quantile, localization)
        defect_scores = self._defect_scores() if self._defect_maps else None
        if self._companion_maps:  # the threshold is on the summed scores
            normal_parts = self.companion.calibrate(
                scores, self._gathered_maps(self._companion_maps), quantile
            )
            if defect_scores is not None:
                companion_maps = self._gathered_maps(self._companion_defect_maps)
                held_out = self.companion.scorer.held_out(companion_maps.shape[0])
                defect_parts = self.companion.standardised_parts(
                    defect_scores, companion_maps[held_out]
                )
                if self.companion.choose:
                    self.companion.choose_weight(normal_parts, defect_parts)
                    self.log("val/synthetic_auroc_model", self.companion.synthetic_auroc_model)
                    self.log(
                        "val/synthetic_auroc_with_pca", self.companion.synthetic_auroc_with_pca
                    )
                    self.log("val/pca_weight", self.companion.pca_weight)
                defect_scores = self.companion.total(defect_parts)
            scores = self.companion.total(normal_parts)
            self.threshold.fill_(threshold_from_normals(scores, quantile))
        if self._memory_scores:  # the threshold is on the sum with the memory's score
            memory_scores = self.all_gather(torch.cat(self._memory_scores)).flatten()
            held_out = self.scorer.held_out(memory_scores.shape[0])
            scores = self.memory.calibrate(scores, memory_scores, memory_scores[held_out])
            if defect_scores is not None:
                defect_memory = self.all_gather(torch.cat(self._memory_defect_scores)).flatten()
                defect_scores = self.memory.combine(defect_scores, defect_memory[held_out])
            self.threshold.fill_(threshold_from_normals(scores, quantile))
        self.log("val/score", scores.mean())
        self.log("val/threshold", self.threshold.float())
        if defect_scores is not None:
            # The calibrated scores: the clean normals the calibration held out for the
            # threshold against copies of the same images with pasted defects.
            self.log("val/synthetic_auroc", separation_auroc(scores, defect_scores))
        self._val_maps, self._val_latent, self._val_localization = [], [], []
        self._defect_maps, self._defect_latent = [], []
        self._companion_maps, self._companion_defect_maps = [], []
        self._memory_scores, self._memory_defect_scores = [], []

    @property
    def fitted_companion(self) -> PcaCompanion | None:
        """The PCA companion once it is fitted (:meth:`on_fit_start`), else None."""
        return self.companion if self.companion is not None and self.companion.fitted else None

    def _gathered_maps(self, maps: list[Tensor]) -> Tensor:
        gathered = self.all_gather(torch.cat(maps))
        return gathered.reshape(-1, *gathered.shape[-3:])

    def _defect_scores(self) -> Tensor:
        """The model's own calibrated scores of the synthetic-defect copies of the
        validation normals its calibration held out (:meth:`AnomalyScore.held_out`): a copy
        of an image the per-pixel statistics came from would score optimistically low, and
        on a small set (5 validation normals) that alone pushed the AUROC below 0.5."""
        maps = self._gathered_maps(self._defect_maps)
        latent = self.all_gather(torch.cat(self._defect_latent)).flatten()
        held_out = self.scorer.held_out(maps.shape[0])
        return self.scorer.score_error_maps(maps[held_out], latent[held_out])

    # ----------------------------------------------------------------------------- test
    def test_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """Score a test batch once; what it returns is all the evaluation callback sees.

        Per image: ``scores`` (B,), ``anomaly_maps`` (B, 1, H, W), ``labels`` (B,),
        ``masks`` (B, 1, H, W), ``defect_types`` and ``image_paths`` (lists of B), and for
        the sample grid ``images`` and ``reconstructions`` (B, C, H, W, model input scale).
        """
        image = self.memory_format(batch["image"])
        scores, output, maps = self.score_with_map(image)
        return {
            "scores": scores,
            "anomaly_maps": maps,
            "labels": batch["label"],
            "masks": batch["mask"],
            "defect_types": list(batch["defect_type"]),
            "image_paths": [str(path) for path in batch["image_path"]],
            "images": image,
            # float32 for the figures (numpy has no bfloat16) whatever the step's precision
            "reconstructions": output.reconstruction.float(),
        }
