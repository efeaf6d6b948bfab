"""The train-then-test pipeline behind ``python train.py`` (thin Hydra entry point).

compose config -> seed -> instantiate data, model, callbacks, loggers, trainer -> fit ->
test the checkpoint chosen on validation normals -> write ``results.json``. Whatever
happens, the run directory ends with a ``results.json`` that says how the run ended.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from anomaly_gan import resolvers as _resolvers  # noqa: F401  (registers the ${ag.*} resolvers)
from anomaly_gan.checkpointing import AtomicCheckpointIO, PreemptionCheckpoint, resume_point
from anomaly_gan.data.datamodule import AUTO_CHANNELS, AnomalyDataModule
from anomaly_gan.evaluation.evaluator import TestEvaluator
from anomaly_gan.evaluation.image_scores import table_rows
from anomaly_gan.evaluation.results import (
    IMAGE_METRICS,
    RESULTS_FILE,
    format_results_table,
    process_record,
    read_results,
    write_results,
)

log = logging.getLogger(__name__)


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (may be empty)."""
    if not group:
        return []
    return [
        hydra.utils.instantiate(entry)
        for entry in group.values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


def _choice(group: str, cfg_node: DictConfig) -> str:
    """The config-group option used (``skip_sa``), or the class name outside Hydra."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    return cfg_node._target_.rsplit(".", 1)[-1]


def _sweep_info() -> dict[str, Any]:
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra_cfg = HydraConfig.get()
    return {
        "sweep_dir": str(Path(hydra_cfg.sweep.dir).resolve()),
        "job_num": hydra_cfg.job.num,
        "overrides": list(hydra_cfg.overrides.task),
    }


def _fill_wandb_defaults(cfg: DictConfig, summary: dict[str, Any]) -> None:
    """Group W&B runs by sweep and tag them by model/data/category unless set explicitly."""
    sweep = _sweep_info()
    for entry in (cfg.get("logger") or {}).values():
        if not isinstance(entry, DictConfig) or not str(entry.get("_target_", "")).endswith(
            "WandbLogger"
        ):
            continue
        with open_dict(entry):
            if entry.get("group") is None and sweep:
                entry.group = Path(sweep["sweep_dir"]).name
            if entry.get("tags") is None:
                entry.tags = [
                    summary["model_name"],
                    summary["data_name"],
                    str(summary["category"]),
                    *summary["tags"],
                ]
            if entry.get("name") is None:
                suffix = f"-{sweep['job_num']}" if sweep else ""
                entry.name = f"{summary['model_name']}-{summary['category']}{suffix}"


def _log_to_wandb(trainer: L.Trainer, results: dict[str, Any], run_dir: Path) -> None:
    """Figures and a per-category table for W&B dashboards."""
    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        columns = [
            "test_set",
            "model",
            "train_category",
            "n_normal",
            "n_anomalous",
            *IMAGE_METRICS,
            "pixel_auroc",
            "aupro",
        ]
        config = results["config"]
        rows = [
            [
                name,
                config["model_name"],
                str(config["category"]),
                m.get("n_normal"),
                m.get("n_anomalous"),
                *(m.get(k) for k in IMAGE_METRICS),
                m.get("pixel_auroc"),
                m.get("aupro"),
            ]
            for name, m in results["categories"].items()
        ]
        logger.log_table(key="test/results", columns=columns, data=rows)
        for category, files in results.get("artifacts", {}).items():
            for kind, relative in files.items():
                key, path = f"test/{category}/{kind}", run_dir / relative
                if path.suffix == ".csv":  # the per-image scores, as a sortable table
                    header, rows = table_rows(path)
                    logger.log_table(key=key, columns=header, data=rows)
                else:
                    logger.log_image(key=key, images=[str(path)])


def _finish_wandb() -> None:
    """Close the W&B run so the next multirun job starts its own.

    A run that never imported ``wandb`` (any logger but W&B) has nothing to close and must
    not need the package: machines without it are common (cluster images).
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _config_summary(cfg: DictConfig) -> dict[str, Any]:
    data = cfg.data
    ema = (cfg.get("callbacks") or {}).get("generator_ema")
    corruption = cfg.model.get("corruption")
    return {
        "task_name": cfg.get("task_name"),
        "model_name": _choice("model", cfg.model),
        "data_name": _choice("data", cfg.data),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "data": data._target_.rsplit(".", 1)[-1],
        "category": data.get("category"),
        "test_categories": list(data.get("test_categories") or [data.get("category")]),
        "test_limit": data.get("test_limit"),
        "image_size": data.image_size,
        "channels": data.channels,
        "resize": data.get("resize", "squash"),
        "seed": cfg.seed,
        "loss": OmegaConf.to_container(cfg.loss, resolve=True),
        "scorer": OmegaConf.to_container(cfg.model.scorer, resolve=True),
        # synthetic defects in the training input (model/corruption), None: clean inputs
        "corruption": _without_target(corruption) if corruption else None,
        # pca: the score is summed with the PCA reference's (model.companion), None: alone
        "companion": cfg.model.get("companion"),
        # encoder: the feature memory's score is summed in (model.memory), None: no memory
        "memory": cfg.model.get("memory"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "max_steps": cfg.trainer.get("max_steps"),
        "iterations": cfg.get("iterations"),
        "validations": cfg.get("validations"),
        "patience": cfg.get("patience"),
        # decay of the generator's weight average (callbacks=ema), None: the plain weights
        "generator_ema": ema.get("decay") if ema else None,
        "tags": list(cfg.get("tags") or []),
    }


def _without_target(node: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(node, resolve=True)
    return {key: value for key, value in container.items() if key != "_target_"}


def _choose_checkpoint(trainer: L.Trainer, selection: str) -> tuple[str | None, dict[str, Any]]:
    if selection not in ("best", "last"):
        raise ValueError(f"test_checkpoint must be 'best' or 'last', got {selection!r}")
    callback = trainer.checkpoint_callback
    info: dict[str, Any] = {"selection": selection}
    if callback is None:
        info["path"] = None
        info["note"] = "no ModelCheckpoint callback: tested the final weights"
        return None, info
    last = callback.last_model_path or (
        str(Path(callback.dirpath) / "last.ckpt")
        if callback.dirpath and (Path(callback.dirpath) / "last.ckpt").is_file()
        else ""
    )
    path = (callback.best_model_path if selection == "best" else last) or last or None
    monitor = getattr(callback, "monitor", None)
    info.update(path=path, monitor=monitor)
    if selection == "best" and callback.best_model_score is not None:
        info["monitor_value"] = float(callback.best_model_score)
    # What chose the tested weights, in words: never a test image (issue 14).
    if selection == "best" and monitor and callback.best_model_path:
        extreme = "lowest" if getattr(callback, "mode", "min") == "min" else "highest"
        info["chosen_by"] = f"{extreme} {monitor} over the validations (validation normals only)"
    else:
        info["chosen_by"] = "the final weights (test_checkpoint=last or no better checkpoint)"
    return path, info


def _checkpoint_dir(cfg: DictConfig, run_dir: Path) -> Path:
    callback = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    return Path(callback.get("dirpath") or run_dir / "checkpoints")


def _test_trainer(cfg: DictConfig, trainer: L.Trainer, evaluator: TestEvaluator) -> L.Trainer:
    """The trainer that tests, with ``evaluator`` among its callbacks.

    After single-device training, the training trainer. After distributed training, a
    single-device one: distributed test loops shard (and pad) the test set across ranks;
    metrics such as AUROC need every score in one place, so the test runs once, on global
    rank 0.
    """
    if trainer.world_size == 1:
        if evaluator not in trainer.callbacks:
            trainer.callbacks.append(evaluator)
        return trainer
    return hydra.utils.instantiate(
        cfg.trainer,
        devices=1,
        num_nodes=1,
        strategy="auto",
        callbacks=[evaluator],
        logger=trainer.loggers or False,
        plugins=[LightningEnvironment()],
    )


def _positive_int_or_none(key: str, value: Any, meaning: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r}: expected a positive integer ({meaning}) or null.")
    return value


def _training_length(cfg: DictConfig) -> tuple[dict[str, Any], list[Callback]]:
    """Trainer arguments and callbacks for ``iterations``, ``validations``, ``patience``.

    ``iterations`` counts generator updates (batches), so a run trains as long on a set of
    50 images as on one of 5,000, unlike a number of epochs. Validation (which calibrates
    the scorer and chooses the checkpoint) then runs every ``ceil(iterations /
    validations)`` batches, across epoch ends, and ``iterations`` is rounded up to a
    multiple of that, so the last weights are always validated. Both optimizers step once
    per batch and Lightning counts every optimizer step: ``max_steps = 2 * iterations``.
    ``patience`` stops after that many validations without a lower ``val/con``
    (reconstruction error on validation normals). ``trainer.max_time`` caps either.
    An explicit ``trainer.max_epochs`` (the default is null) decides instead of
    ``iterations``: ``debug=fast``, the paper grids (``max_epochs: -1`` with ``max_steps``)
    and a user's ``trainer.max_epochs=30`` keep their meaning.
    """
    iterations = _positive_int_or_none(
        "iterations", cfg.get("iterations"), "generator updates, e.g. iterations=2000"
    )
    validations = _positive_int_or_none(
        "validations", cfg.get("validations", 20), "validations per run, e.g. validations=20"
    )
    patience = _positive_int_or_none(
        "patience", cfg.get("patience"), "validations without a lower val/con"
    )
    max_epochs = cfg.trainer.get("max_epochs")
    if iterations is not None and max_epochs is not None:
        log.info(
            "trainer.max_epochs=%s decides the training length; iterations=%d is not used "
            "(trainer.max_epochs=null trains for iterations).",
            max_epochs,
            iterations,
        )
        iterations = None
    if iterations is None and max_epochs is None and cfg.trainer.get("max_steps", -1) in (None, -1):
        raise ValueError(
            "No training length: iterations, trainer.max_epochs and trainer.max_steps are all "
            "unset. Set iterations=<generator updates> (the default is 250) or "
            "trainer.max_epochs=<epochs>."
        )
    length: dict[str, Any] = {}
    if iterations is not None:
        every = math.ceil(iterations / (validations or 1))
        rounded = every * math.ceil(iterations / every)
        if rounded != iterations:
            log.info(
                "iterations=%d rounded up to %d: a multiple of the validation interval (%d).",
                iterations,
                rounded,
                every,
            )
        length = {
            "max_steps": 2 * rounded,
            "max_epochs": -1,
            "val_check_interval": every,
            "check_val_every_n_epoch": None,
        }
    stopping: list[Callback] = []
    if patience is not None:
        stopping.append(EarlyStopping(monitor="val/con", mode="min", patience=patience))
    return length, stopping


#: The values ``matmul_precision`` takes (``torch.set_float32_matmul_precision``'s).
MATMUL_PRECISIONS = ("highest", "high", "medium")


def _matmul_precision(cfg: DictConfig) -> str:
    """``matmul_precision``, checked before any image is read."""
    value = cfg.get("matmul_precision", "high")
    if value not in MATMUL_PRECISIONS:
        raise ValueError(
            f"matmul_precision={value!r}: expected one of {', '.join(MATMUL_PRECISIONS)} "
            "(highest = true fp32, high = TF32 tensor cores, medium = bf16 inside fp32 "
            "matrix products), e.g. matmul_precision=high."
        )
    return str(value)


def _apply_matmul_precision(trainer: L.Trainer, value: str) -> None:
    """TF32 (``high``) for the fp32 matrix products of a CUDA run, before fit.

    Process-wide, so only when this trainer trains on CUDA: a CPU run keeps torch's default
    (``highest``), and its numbers stay those of the CPU tests. cuDNN convolutions follow
    ``torch.backends.cudnn.allow_tf32`` (torch's default: on) whatever this says.
    """
    if isinstance(trainer.accelerator, CUDAAccelerator):
        torch.set_float32_matmul_precision(value)
        log.info("fp32 matrix products on CUDA: matmul_precision=%s.", value)


def _preemption(trainer: L.Trainer | None) -> PreemptionCheckpoint | None:
    """The trainer's pre-emption callback (``callbacks.preemption``), if it has one."""
    callbacks = trainer.callbacks if trainer is not None else []
    return next((cb for cb in callbacks if isinstance(cb, PreemptionCheckpoint)), None)


def _record_skipped_files(
    results: dict[str, Any], datamodule: AnomalyDataModule, listed: int = 100
) -> None:
    """``n_skipped_files`` and the first ``listed`` of them (``data.skip_corrupt=true``):
    a run that trained on fewer files than the dataset holds says so in its results."""
    results["n_skipped_files"] = len(datamodule.skipped)
    if datamodule.skipped:
        results["skipped_files"] = [
            {"path": str(path), "error": reason} for path, reason in datamodule.skipped[:listed]
        ]


def _completed_before(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    if not cfg.get("skip_completed") or not (run_dir / RESULTS_FILE).is_file():
        return None
    previous = read_results(run_dir)
    return previous if previous.get("status") == "completed" else None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; returns what was written to ``results.json``."""
    run_dir = Path(cfg.paths.output_dir)
    previous = _completed_before(cfg, run_dir)
    if previous is not None:
        log.info(
            "%s says completed: skipping this job (skip_completed=false re-runs it).",
            run_dir / RESULTS_FILE,
        )
        print(format_results_table(previous))
        return previous

    started = time.monotonic()
    writes_results = rank_zero_only.rank == 0
    evaluator: TestEvaluator | None = None
    datamodule: AnomalyDataModule | None = None
    trainer: L.Trainer | None = None
    results: dict[str, Any] = {
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_dir": str(run_dir.resolve()),
        "process": process_record(),
        "config": _config_summary(cfg),
        **_sweep_info(),
    }
    if writes_results:  # a killed job is then visible as "running", never silently absent
        write_results(run_dir, results)
    try:
        _fill_wandb_defaults(cfg, results["config"])
        resume = resume_point(
            cfg.get("ckpt_path"),
            bool(cfg.get("auto_resume")),
            _checkpoint_dir(cfg, run_dir),
            run_dir,
        )
        results["resumed_from"] = None if resume.path is None else str(resume.path)
        if resume.skipped:
            results["skipped_checkpoints"] = resume.skipped
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        # Plain Python containers, so checkpoints hold no OmegaConf objects and reload with
        # torch.load(weights_only=True).
        length, stopping = _training_length(cfg)  # bad values stop before any image is read
        matmul_precision = _matmul_precision(cfg)
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        if cfg.data.get("channels") == AUTO_CHANNELS:
            # The model's input channels follow ${data.channels}: read them off the images.
            with open_dict(cfg):
                cfg.data.channels = datamodule.resolve_channels()
            results["config"]["channels"] = cfg.data.channels
        model = hydra.utils.instantiate(cfg.model, _convert_="all")
        trainer = hydra.utils.instantiate(
            cfg.trainer,
            callbacks=[*_instantiate_group(cfg.get("callbacks")), *stopping],
            logger=_instantiate_group(cfg.get("logger")) or False,
            plugins=[AtomicCheckpointIO()],
            **length,
        )
        _apply_matmul_precision(trainer, matmul_precision)
        results["config"]["precision"] = str(trainer.precision)
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

        fit_started = time.monotonic()
        trainer.fit(model, datamodule=datamodule, ckpt_path=results["resumed_from"])
        preemption = _preemption(trainer)
        if preemption is not None and preemption.received is not None:
            # The signal came after the last training batch (final validation): stop before
            # testing; the re-run resumes at the end of training and only tests.
            raise SIGTERMException
        results["fit_seconds"] = round(time.monotonic() - fit_started, 2)
        results["epochs"] = trainer.current_epoch
        results["global_step"] = trainer.global_step
        if not trainer.is_global_zero:  # other DDP ranks (SLURM/popen) are done
            writes_results = False
            return results
        ckpt_path, results["checkpoint"] = _choose_checkpoint(trainer, cfg.test_checkpoint)
        evaluator = TestEvaluator(run_dir, reference=bool(cfg.get("reference", True)))
        _test_trainer(cfg, trainer, evaluator).test(
            model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False
        )
        results["threshold"] = {
            "value": float(model.threshold),
            "quantile": model.hparams.threshold_quantile,
            "source": "validation normals",
            "n_validation": len(datamodule.val_samples),
        }
        results["n_train"] = len(datamodule.train_samples)
        results["categories"] = evaluator.results
        results["artifacts"] = evaluator.artifacts
        _log_to_wandb(trainer, results, run_dir)
        results["status"] = "completed"
    except BaseException as error:
        # Ctrl-C, a pre-emption signal (Lightning's SIGTERMException) or another exit: the
        # run was stopped, not broken, and resumes from its checkpoints.
        interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
        results["status"] = "interrupted" if interrupted else "failed"
        preemption = _preemption(trainer)
        if interrupted and preemption is not None and preemption.received is not None:
            results["interrupted_by"] = preemption.received.name
            results["global_step"] = trainer.global_step if trainer is not None else None
            results["checkpoint_on_interrupt"] = (
                None if preemption.saved is None else str(preemption.saved)
            )
        if evaluator is not None and evaluator.results and "categories" not in results:
            # Metrics are computed before figures: a failed figure never loses them.
            results["categories"] = evaluator.results
        results["error"] = {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": traceback.format_exc(),
        }
        if isinstance(error, SIGTERMException):  # a SystemExit with no code would exit 0
            signum = preemption.received if preemption and preemption.received else 15
            raise SystemExit(128 + int(signum)) from error
        raise
    finally:
        if datamodule is not None:
            _record_skipped_files(results, datamodule)
        results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        results["duration_s"] = round(time.monotonic() - started, 2)
        if writes_results:
            path = write_results(run_dir, results)
            log.info("Results written to %s", path)
        _finish_wandb()
    print(format_results_table(results))
    print(f"results: {path}")
    return results
