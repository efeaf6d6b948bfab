"""Train and evaluate a GAN anomaly detector: ``python train.py [group=option] [key=value]``.

Examples::

    python train.py                                          # GANomaly on built-in data
    python train.py data=mvtec data.root=/data/mvtec data.category=bottle
    python train.py -m loss.w_adv=0.5,1 loss.w_con=0.3,50    # Hydra sweep
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from anomaly_gan.training import train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        results = train(cfg)
    except Exception:
        # In a sweep, one failed job (recorded as failed in its results.json) must not stop
        # the others; a single run still exits with the error.
        if HydraConfig.get().mode == RunMode.MULTIRUN and cfg.get("continue_sweep_on_failure"):
            log.exception("Job failed; its results.json records the error. Sweep continues.")
            return float("nan")  # a sweeper (Optuna) marks the trial failed
        raise
    # A sweeper (e.g. Optuna) optimises what main returns: a validation quantity, never test.
    value = (results.get("checkpoint") or {}).get("monitor_value")
    return float("nan") if value is None else value


if __name__ == "__main__":
    main()
