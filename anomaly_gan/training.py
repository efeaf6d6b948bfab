"""The train-then-test pipeline behind ``python train.py`` (thin Hydra entry point).

compose config -> seed -> instantiate data, model, callbacks, loggers, trainer -> fit ->
test the checkpoint chosen on validation normals -> write ``results.json``. Whatever
happens, the run directory ends with a ``results.json`` that says how the run ended.
"""

from __future__ import annotations

import logging
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from anomaly_gan.evaluation.results import format_results_table, write_results

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


def _config_summary(cfg: DictConfig) -> dict[str, Any]:
    data = cfg.data
    return {
        "task_name": cfg.get("task_name"),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "data": data._target_.rsplit(".", 1)[-1],
        "category": data.get("category"),
        "image_size": data.image_size,
        "channels": data.channels,
        "seed": cfg.seed,
        "loss": OmegaConf.to_container(cfg.loss, resolve=True),
        "scorer": OmegaConf.to_container(cfg.model.scorer, resolve=True),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "max_steps": cfg.trainer.get("max_steps"),
        "tags": list(cfg.get("tags") or []),
    }


def _choose_checkpoint(trainer: L.Trainer, selection: str) -> tuple[str | None, dict[str, Any]]:
    if selection not in ("best", "last"):
        raise ValueError(f"test_checkpoint must be 'best' or 'last', got {selection!r}")
    callback = trainer.checkpoint_callback
    info: dict[str, Any] = {"selection": selection}
    if callback is None:
        info["path"] = None
        info["note"] = "no ModelCheckpoint callback: tested the final weights"
        return None, info
    path = callback.best_model_path if selection == "best" else callback.last_model_path
    path = path or callback.last_model_path or None
    info.update(path=path, monitor=getattr(callback, "monitor", None))
    if selection == "best" and callback.best_model_score is not None:
        info["monitor_value"] = float(callback.best_model_score)
    return path, info


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; returns what was written to ``results.json``."""
    run_dir = Path(cfg.paths.output_dir)
    started = time.monotonic()
    results: dict[str, Any] = {
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_dir": str(run_dir.resolve()),
        "config": _config_summary(cfg),
    }
    try:
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        # Plain Python containers, so checkpoints hold no OmegaConf objects and reload with
        # torch.load(weights_only=True).
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        model = hydra.utils.instantiate(cfg.model, _convert_="all")
        trainer = hydra.utils.instantiate(
            cfg.trainer,
            callbacks=_instantiate_group(cfg.get("callbacks")),
            logger=_instantiate_group(cfg.get("logger")) or False,
        )
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

        trainer.fit(model, datamodule=datamodule)
        ckpt_path, results["checkpoint"] = _choose_checkpoint(trainer, cfg.test_checkpoint)
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        results["threshold"] = {
            "value": float(model.threshold),
            "quantile": model.hparams.threshold_quantile,
            "source": "validation normals",
            "n_validation": len(datamodule.val_samples),
        }
        results["n_train"] = len(datamodule.train_samples)
        results["categories"] = model.test_results
        results["status"] = "completed"
    except BaseException as error:
        results["status"] = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        results["error"] = {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": traceback.format_exc(),
        }
        raise
    finally:
        results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        results["duration_s"] = round(time.monotonic() - started, 2)
        path = write_results(run_dir, results)
        log.info("Results written to %s", path)
    print(format_results_table(results))
    print(f"results: {path}")
    return results
