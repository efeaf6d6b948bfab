"""Score images with a trained checkpoint: ``python predict.py ckpt_path=<ckpt> input=<path>``.

Examples::

    python predict.py ckpt_path=outputs/train/<time>/checkpoints/last.ckpt input=/data/new
    python predict.py ckpt_path=model.ckpt input=part_0042.png output=/tmp/check overlay=false

Writes ``predictions.csv`` (path, score, threshold, anomalous yes/no, map_scale, overlay,
error) and ``overlays/*.png`` into ``output`` (default: ``outputs/predict/<time>/``). The
model, its threshold and its pre-processing come from the checkpoint. An unreadable image
gets an error row and a warning; the command fails only when no image could be scored.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import logging
import sys

import hydra
from omegaconf import DictConfig

from anomaly_gan.evaluation.overlays import OverlayError
from anomaly_gan.inference import InferenceError, predict
from anomaly_gan.models.checkpoint import CheckpointError

log = logging.getLogger("predict")


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        summary = predict(
            ckpt_path=cfg.ckpt_path,
            input_path=cfg.input,
            output_dir=cfg.output or cfg.paths.output_dir,
            batch_size=cfg.batch_size,
            device=cfg.device,
            overlay=cfg.overlay,
        )
    except (CheckpointError, InferenceError, OverlayError) as error:
        log.error("%s", error)
        sys.exit(1)
    log.info(
        "%d image(s) scored, %d anomalous at threshold %.6g, %d error(s): %s",
        summary.n_scored,
        summary.n_anomalous,
        summary.threshold,
        summary.n_errors,
        summary.csv_path,
    )


if __name__ == "__main__":
    main()
