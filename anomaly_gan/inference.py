"""Score image files with a trained checkpoint: ``python predict.py ckpt_path=... input=...``.

The model, its threshold and its pre-processing come from the checkpoint
(:mod:`anomaly_gan.models.checkpoint`). Images go through :class:`AnomalyImageDataset`, the
reader and pre-processing training used (OpenCV decode, truncation check, channel
conversion, INTER_AREA resize, [-1, 1]), so a file scores exactly as it would have in a test
set. A file that cannot be read becomes an error row naming the file and the reason; the
other files are still scored. Results go to ``<output>/predictions.csv``, overlays
(:mod:`anomaly_gan.evaluation.overlays`) to ``<output>/overlays/*.png``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import torch
from torch import Tensor

from anomaly_gan.data.dataset import NORMAL, AnomalyImageDataset, DatasetError, Sample
from anomaly_gan.data.mvtec import IMAGE_EXTENSIONS
from anomaly_gan.evaluation.overlays import map_scale, overlay_name, write_overlay
from anomaly_gan.models.checkpoint import LoadedModel, load_model

log = logging.getLogger(__name__)

CSV_NAME = "predictions.csv"
OVERLAY_DIR = "overlays"
CSV_COLUMNS = ("path", "score", "threshold", "anomalous", "map_scale", "overlay", "error")


class InferenceError(ValueError):
    """An input the user can fix (no such file, no images, nothing could be scored)."""


@dataclass
class Prediction:
    """One CSV row: a score and a verdict, or the reason the file could not be scored."""

    path: Path
    score: float | None = None
    anomalous: bool | None = None
    map_scale: str = ""
    overlay: Path | None = None
    error: str | None = None


@dataclass
class PredictionSummary:
    """What :func:`predict` wrote; ``n_scored == 0`` means nothing could be scored."""

    csv_path: Path
    output_dir: Path
    threshold: float
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def n_scored(self) -> int:
        return sum(p.error is None for p in self.predictions)

    @property
    def n_errors(self) -> int:
        return sum(p.error is not None for p in self.predictions)

    @property
    def n_anomalous(self) -> int:
        return sum(bool(p.anomalous) for p in self.predictions)


def resolve_device(device: str) -> torch.device:
    """``auto`` = the first CUDA GPU if there is one, else the CPU; or any torch device name."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise InferenceError(f"device={device!r}: {error}. Use auto, cpu or cuda[:N].") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device={device!r} but no CUDA GPU is available; use device=cpu.")
    return chosen


# --------------------------------------------------------------------------- inputs
def list_inputs(input_path: str | Path) -> list[Path]:
    """One image file, or every image file under a folder (recursively, sorted)."""
    path = Path(input_path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InferenceError(f"input={input_path}: no such file or folder.")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise InferenceError(
            f"input={input_path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})."
        )
    return files


def _read_items(
    dataset: AnomalyImageDataset, predictions: list[Prediction]
) -> Iterator[tuple[int, Tensor]]:
    """(index, image tensor) of every readable file; unreadable ones get their error set."""
    for index, prediction in enumerate(predictions):
        try:
            yield index, dataset[index]["image"]
        except (DatasetError, cv2.error, OSError) as error:
            prediction.error = str(error)
            log.warning("Not scored: %s", error)


def _batches(
    items: Iterator[tuple[int, Tensor]], batch_size: int
) -> Iterator[tuple[list[int], Tensor]]:
    indices: list[int] = []
    images: list[Tensor] = []
    for index, image in items:
        indices.append(index)
        images.append(image)
        if len(images) == batch_size:
            yield indices, torch.stack(images)
            indices, images = [], []
    if images:
        yield indices, torch.stack(images)


# ---------------------------------------------------------------------------- predict
@torch.no_grad()
def score_images(
    loaded: LoadedModel,
    paths: Sequence[Path],
    batch_size: int = 32,
    overlay_dir: Path | None = None,
    input_root: Path | None = None,
) -> list[Prediction]:
    """Score every file (batch after batch, eval mode); unreadable files get ``error`` set.

    Scores do not depend on batch mates (eval-mode BatchNorm), so ``batch_size`` changes
    speed only.
    """
    if batch_size < 1:
        raise InferenceError(f"batch_size must be >= 1, got {batch_size}.")
    model, prep = loaded.model, loaded.preprocessing
    model.eval()
    device = model.device
    predictions = [Prediction(path=Path(p)) for p in paths]
    samples = [Sample(Path(p), NORMAL, "unknown") for p in paths]
    # No cache: a file is scored once, and a disk cache would keep copies of user images.
    dataset = AnomalyImageDataset(
        samples, prep.geometry, prep.channels, cache=None, normalization=prep.normalization
    )
    threshold = loaded.threshold
    scale = map_scale(model)
    used_names: set[str] = set()
    for indices, images in _batches(_read_items(dataset, predictions), batch_size):
        images = images.to(device)
        scores, _, maps = model.score_with_map(images)
        for row, index in enumerate(indices):
            prediction = predictions[index]
            prediction.score = float(scores[row])
            if math.isfinite(threshold):
                # The test metrics' rule (evaluation.metrics.image_metrics): score >= threshold.
                prediction.anomalous = prediction.score >= threshold
            if overlay_dir is None:
                continue
            anomaly_map = maps[row, 0].float().cpu().numpy()
            image_scale = scale if scale is not None else float(anomaly_map.max())
            prediction.map_scale = (
                f"{image_scale:.6g}" if scale is not None else f"{image_scale:.6g} (own max)"
            )
            name = overlay_name(prediction.path, input_root, used_names)
            prediction.overlay = write_overlay(
                prediction.path, anomaly_map, image_scale, prep.channels, overlay_dir / name
            )
    return predictions


def write_csv(predictions: Sequence[Prediction], threshold: float, path: Path) -> Path:
    """One row per input file: score and verdict, or the error that prevented them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for p in predictions:
            verdict = "" if p.anomalous is None else ("yes" if p.anomalous else "no")
            writer.writerow(
                [
                    str(p.path),
                    "" if p.score is None else repr(p.score),
                    "" if p.error or not math.isfinite(threshold) else repr(threshold),
                    verdict,
                    p.map_scale,
                    "" if p.overlay is None else str(p.overlay),
                    p.error or "",
                ]
            )
    return path


def predict(
    ckpt_path: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    batch_size: int = 32,
    device: str = "auto",
    overlay: bool = True,
) -> PredictionSummary:
    """Score one image or a folder; write ``predictions.csv`` (+ ``overlays/``) to ``output_dir``.

    Raises :class:`InferenceError` when no file could be scored (after writing the CSV with
    every file's error), so the command exits non-zero, and
    :class:`~anomaly_gan.models.checkpoint.CheckpointError` for an unusable checkpoint.
    """
    loaded = load_model(ckpt_path, resolve_device(device))
    paths = list_inputs(input_path)
    output = Path(output_dir)
    root = Path(input_path).expanduser()
    threshold = loaded.threshold
    if not math.isfinite(threshold):
        log.warning(
            "Checkpoint %s stores no decision threshold (trained without validation normals, "
            "data.val_fraction=0): the 'anomalous' column stays empty; rank by score instead.",
            loaded.checkpoint_path,
        )
    predictions = score_images(
        loaded,
        paths,
        batch_size=batch_size,
        overlay_dir=output / OVERLAY_DIR if overlay else None,
        input_root=root if root.is_dir() else None,
    )
    summary = PredictionSummary(
        csv_path=write_csv(predictions, threshold, output / CSV_NAME),
        output_dir=output,
        threshold=threshold,
        predictions=predictions,
    )
    if summary.n_scored == 0:
        raise InferenceError(
            f"None of the {len(paths)} image(s) under input={input_path} could be scored; "
            f"every error is listed in {summary.csv_path}."
        )
    return summary


__all__ = [
    "CSV_COLUMNS",
    "InferenceError",
    "Prediction",
    "PredictionSummary",
    "list_inputs",
    "predict",
    "resolve_device",
    "score_images",
    "write_csv",
]
