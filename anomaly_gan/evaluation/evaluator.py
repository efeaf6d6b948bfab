"""Test evaluation as one Lightning callback: metrics, logged values and figures.

The model's ``test_step`` scores each batch once and returns what evaluation needs
(:meth:`~anomaly_gan.models.core.GanAnomalyModule.test_step`); :class:`TestEvaluator`
receives those outputs in ``on_test_batch_end``, keeps them per test dataloader (one per
test category) and at the end of the test epoch computes the metrics, logs them as
``test/<category>/<metric>``, and writes the figures. ``train.py`` adds it to the trainer
that tests and reads :attr:`TestEvaluator.results` / :attr:`TestEvaluator.artifacts` into
``results.json``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from anomaly_gan.evaluation.artifacts import ExtremeSamples, write_test_artifacts
from anomaly_gan.evaluation.collected_outputs import CollectedOutputs
from anomaly_gan.evaluation.image_scores import ImageScores, scores_file, write_image_scores
from anomaly_gan.evaluation.intervals import auroc_interval
from anomaly_gan.evaluation.reference import lift, reference_metrics

if TYPE_CHECKING:
    from anomaly_gan.feature_memory import UntrainedMemory

log = logging.getLogger(__name__)


class TestEvaluator(Callback):
    """Collects test outputs, computes per-category metrics, writes the run's figures.

    Args:
        output_dir: the run directory; figures go to ``<output_dir>/plots/<category>/``.
            ``None`` computes and logs metrics only.
        samples_per_group: how many best and worst normals and anomalies the sample grid
            shows (each).
        reference: also score every test set with the no-learning references (mean and
            PCA reconstruction of the training normals, :mod:`anomaly_gan.evaluation.reference`)
            and store them, with the model's ``lift`` over the better one, under
            ``results[category]["reference"]``.

    After ``trainer.test``: :attr:`results` maps each test category to its metrics,
    :attr:`artifacts` to its figure files and its per-image score table
    (:mod:`.image_scores`; relative to ``output_dir``).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        output_dir: str | Path | None = None,
        samples_per_group: int = 2,
        reference: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.samples_per_group = samples_per_group
        self.reference = reference
        self.results: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[str, dict[str, str]] = {}
        self._outputs: dict[int, CollectedOutputs] = {}
        self._samples: dict[int, ExtremeSamples] = {}
        # Each test set's better reference: its name and its scores (test loader order).
        self._reference_scores: dict[str, tuple[str, Tensor]] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.results, self.artifacts = {}, {}
        self._outputs, self._samples, self._reference_scores = {}, {}, {}

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"TestEvaluator needs test_step to return a dict of per-image outputs; "
                f"{type(pl_module).__name__}.test_step returned {type(outputs).__name__}."
            )
        self._outputs.setdefault(dataloader_idx, CollectedOutputs()).add(outputs)
        if self.output_dir is not None:
            samples = self._samples.setdefault(
                dataloader_idx, ExtremeSamples(self.samples_per_group)
            )
            samples.add(outputs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Metrics per test set (one per test category), logged as test/<category>/<metric>."""
        names = list(getattr(trainer.datamodule, "test_category_names", []) or [])
        threshold = float(pl_module.threshold)
        named = {
            index: names[index] if index < len(names) else f"test_{index}"
            for index in sorted(self._outputs)
        }
        companion = getattr(pl_module, "companion", None)
        memory = getattr(pl_module, "memory", None)
        scored: dict[str, tuple[Tensor, Tensor]] = {}  # the lift's interval pairs them
        for index, name in named.items():
            scored[name] = (self._outputs[index].all_labels, self._outputs[index].all_scores)
            metrics = self._outputs[index].evaluate(threshold)
            if companion is not None:  # whether the PCA was summed in, and what chose it
                metrics["companion"] = companion.summary()
            if memory is not None:  # whether the feature memory was summed in
                metrics["memory"] = memory.summary()
            self.results[name] = metrics
            for key, value in metrics.items():
                if isinstance(value, float):
                    pl_module.log(f"test/{name}/{key}", value)
        if self.reference:
            self._add_reference(trainer, pl_module, scored)
        if self.output_dir is not None:
            # The per-image scores first: a figure that cannot be drawn must not lose them.
            for index, name in named.items():
                path = self._write_scores(self.output_dir, name, self._outputs[index], threshold)
                self.artifacts[name] = {"scores": str(path.relative_to(self.output_dir))}
            for index, name in named.items():  # figures once every metric is in
                self.artifacts[name].update(
                    write_test_artifacts(
                        self.output_dir,
                        name,
                        self.results[name],
                        self._outputs[index],
                        self._samples.get(index),
                        threshold,
                    )
                )
        self._outputs, self._samples, self._reference_scores = {}, {}, {}

    def _write_scores(
        self, run_dir: Path, name: str, outputs: CollectedOutputs, threshold: float
    ) -> Path:
        """``scores/<name>.csv``: every test image's score beside the better reference's."""
        reference_name, reference = self._reference_scores.get(name, (None, None))
        scores = ImageScores(
            outputs.image_paths,
            outputs.defect_types,
            outputs.all_labels,
            outputs.all_scores,
            reference,
        )
        return write_image_scores(scores_file(run_dir, name), scores, threshold, reference_name)

    def _add_reference(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        scored: dict[str, tuple[Tensor, Tensor]],
    ) -> None:
        """The no-learning references beside each test set's metrics, the model's lift and
        the lift's interval (the model's and the better reference's scores of the same
        images, resampled together: :mod:`.intervals`).

        A failure here is logged and recorded, never allowed to lose the model's metrics.
        """
        datamodule = trainer.datamodule
        best_scores: dict[str, tuple[Tensor, Tensor]] = {}
        try:
            references = reference_metrics(
                datamodule,
                pl_module.scorer.to_config(),
                float(pl_module.hparams.get("threshold_quantile", 0.95)),
                companion=getattr(pl_module, "fitted_companion", None) is not None,
                best_scores=best_scores,
                memory=untrained_memory(pl_module),
            )
        except Exception as error:  # the model's results must survive a failed reference
            log.warning(
                "No-learning reference failed (%s); results keep the model's metrics.", error
            )
            for metrics in self.results.values():
                metrics["reference"] = {
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(),
                }
            return
        for name, metrics in self.results.items():
            block = references.get(name)
            if block is None:
                continue
            block["lift"] = lift(metrics.get("auroc"), block)
            block["lift_interval"] = None
            model, reference = scored.get(name), best_scores.get(name)
            if model is not None and reference is not None and _same_images(model, reference):
                block["lift_interval"] = _lift_interval(model, reference[1])
                self._reference_scores[name] = (str(block["best"]), reference[1])
            metrics["reference"] = block
            if block["lift"] is not None:  # the printed table warns below MIN_LIFT
                pl_module.log(f"test/{name}/reference_auroc", float(block["auroc"]))
                pl_module.log(f"test/{name}/lift", float(block["lift"]))


def untrained_memory(pl_module: L.LightningModule) -> UntrainedMemory | None:
    """The feature memory's no-learning reference where the model sums a memory in."""
    make = getattr(pl_module, "untrained_memory", None)
    return make() if callable(make) else None


def _lift_interval(model: tuple[Tensor, Tensor], reference_scores: Tensor) -> list[float] | None:
    """The lift's paired bootstrap interval (the model's labels and scores, and the better
    reference's scores of the same images), or None where a class is missing."""
    labels, scores = model
    interval = auroc_interval(labels, scores, baseline=reference_scores)
    return list(interval) if interval is not None else None


def _same_images(model: tuple[Tensor, Tensor], reference: tuple[Tensor, Tensor]) -> bool:
    """Whether the model and the reference scored the same images in the same order (as far
    as the labels tell)."""
    labels, reference_labels = model[0], reference[0]
    return labels.shape == reference_labels.shape and torch.equal(
        labels.long().cpu(), reference_labels.long().cpu()
    )
