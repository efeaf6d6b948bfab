"""Export a trained checkpoint (generator + scoring) to ONNX: ``python export.py ckpt_path=<ckpt>``.

Examples::

    python export.py ckpt_path=outputs/train/<time>/checkpoints/last.ckpt        # -> last.onnx
    python export.py ckpt_path=model.ckpt output=/deploy/model.onnx opset=20

The graph maps an image batch (B, C, S, S) in [-1, 1] to scores (B,) and anomaly maps
(B, 1, S, S); the batch axis is dynamic. The threshold and pre-processing are stored in the
file's metadata. With ``verify=true`` (default) onnxruntime is checked against PyTorch.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import logging
import sys

import hydra
from omegaconf import DictConfig

from anomaly_gan.models.checkpoint import CheckpointError
from anomaly_gan.onnx_export import ExportError, export

log = logging.getLogger("export")


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        result = export(
            ckpt_path=cfg.ckpt_path,
            fmt=cfg.format,
            output=cfg.output,
            opset=cfg.opset,
            verify=cfg.verify,
            atol=cfg.atol,
        )
    except (CheckpointError, ExportError) as error:
        log.error("%s", error)
        sys.exit(1)
    log.info("Exported %s to %s", result["class_path"], result["path"])
    if "max_abs_diff" in result:
        log.info("onnxruntime vs PyTorch, largest |difference|: %s", result["max_abs_diff"])


if __name__ == "__main__":
    main()
