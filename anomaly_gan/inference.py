"""Score new images with a trained checkpoint: ``python predict.py ckpt_path=... input=...``.

A checkpoint is self-sufficient: it names its architecture class (``anomaly_gan.class_path``,
written by the core's ``on_save_checkpoint``), holds the model's hyperparameters, its weights,
the decision ``threshold`` (a buffer chosen on validation normals) and the datamodule's
``image_size`` / ``channels``. It is read with ``torch.load(weights_only=True)``: no pickled
code runs, and only subclasses of :class:`GanAnomalyModule` are ever built from it.

Images go through :class:`AnomalyImageDataset`, the reader and pre-processing training used
(OpenCV decode, truncation check, channel conversion, INTER_AREA resize, [-1, 1]), so a
file scores exactly as it would have in a test set. A file that cannot be read becomes an
error row naming the file and the reason; the other files are still scored.

Overlays (``<output>/overlays/*.png``) show the anomaly map over the input at the input's
own resolution. Colour = ``map / map_scale`` clipped to [0, 1] (jet, half transparent):

- when the score has a reconstruction term (``scorer.reconstruction_weight`` w > 0) and a
  threshold is stored, ``map_scale = threshold / w``: the mean per-pixel error at which the
  reconstruction term alone reaches the decision threshold. Full red marks a pixel whose
  error is at least that large, and the colours mean the same in every image;
- otherwise (GANomaly's latent-only score, or a checkpoint without a threshold) the map is
  not on the score's scale, so each overlay is scaled by its own maximum: it shows *where*
  the reconstruction differs most, not *how much*. The CSV's ``map_scale`` column says which
  scale each overlay used.
"""

from __future__ import annotations

import csv
import importlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from anomaly_gan.data.dataset import NORMAL, AnomalyImageDataset, DatasetError, Sample, read_image
from anomaly_gan.data.mvtec import IMAGE_EXTENSIONS
from anomaly_gan.models.core import GanAnomalyModule

log = logging.getLogger(__name__)

CSV_NAME = "predictions.csv"
OVERLAY_DIR = "overlays"
CSV_COLUMNS = ("path", "score", "threshold", "anomalous", "map_scale", "overlay", "error")
OVERLAY_ALPHA = 0.5


class InferenceError(ValueError):
    """A checkpoint or an input the user can fix (wrong file, nothing to score)."""


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects, read from the checkpoint (the datamodule's hyperparameters)."""

    image_size: int
    channels: int
    normalization: str = "fixed"


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what it needs to score files."""

    model: GanAnomalyModule
    preprocessing: Preprocessing
    class_path: str
    checkpoint_path: Path

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)


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


# ----------------------------------------------------------------------- checkpoint
def _architectures() -> list[type[GanAnomalyModule]]:
    """Every concrete architecture class importable from :mod:`anomaly_gan.models`."""
    import anomaly_gan.models  # noqa: F401  (imports every architecture module)

    found: list[type[GanAnomalyModule]] = []
    pending = list(GanAnomalyModule.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("anomaly_gan.") and not cls.__name__.startswith("_"):
            found.append(cls)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _class_from_path(class_path: str, checkpoint: Path) -> type[GanAnomalyModule]:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise InferenceError(
            f"Checkpoint {checkpoint} names the model class {class_path!r}, which cannot be "
            f"imported ({error}). Use the anomaly_gan version that trained it."
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, GanAnomalyModule)):
        raise InferenceError(
            f"Checkpoint {checkpoint} names {class_path!r}, which is not a GanAnomalyModule "
            "subclass; refusing to build it."
        )
    return cls


def _build(cls: type[GanAnomalyModule], hparams: dict[str, Any]) -> GanAnomalyModule:
    return cls(**hparams)


def _guess_class(
    hparams: dict[str, Any], state_dict: dict[str, Tensor], checkpoint: Path
) -> type[GanAnomalyModule]:
    """For checkpoints written before the class was stored: the one class whose weights fit."""
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    matches = []
    for cls in _architectures():
        try:
            candidate = _build(cls, hparams)
        except (TypeError, ValueError):
            continue
        own = {key: tuple(value.shape) for key, value in candidate.state_dict().items()}
        if own == shapes:
            matches.append(cls)
    if len(matches) != 1:
        names = ", ".join(c.__name__ for c in matches) or "none"
        raise InferenceError(
            f"Checkpoint {checkpoint} has no 'anomaly_gan.class_path' entry and its weights "
            f"fit {len(matches)} architecture classes ({names}). Name the class in it: "
            "checkpoint['anomaly_gan'] = {'class_path': 'anomaly_gan.models.<module>.<Class>'} "
            "(torch.load, set, torch.save), or train it again with this version."
        )
    return matches[0]


def _preprocessing(
    checkpoint: dict[str, Any], hparams: dict[str, Any], path: Path
) -> Preprocessing:
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    image_size = data.get("image_size", hparams.get("image_size"))
    channels = data.get("channels", hparams.get("channels"))
    if image_size is None or channels is None:
        raise InferenceError(
            f"Checkpoint {path} records no image_size/channels (neither "
            "'datamodule_hyper_parameters' nor the model hyperparameters have them)."
        )
    for key in ("image_size", "channels"):
        if key in data and key in hparams and data[key] != hparams[key]:
            raise InferenceError(
                f"Checkpoint {path}: datamodule {key}={data[key]} but model {key}={hparams[key]}."
            )
    return Preprocessing(int(image_size), int(channels), str(data.get("normalization", "fixed")))


def load_model(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the trained model (eval mode, on ``device``) from a checkpoint file alone."""
    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise InferenceError(f"ckpt_path={checkpoint_path}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a bad or foreign file
        raise InferenceError(
            f"ckpt_path={path} could not be loaded as a checkpoint ({type(error).__name__}: "
            f"{error}). Point it at a .ckpt written by train.py (outputs/train/<time>/"
            "checkpoints/)."
        ) from error
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(
        checkpoint
    ):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise InferenceError(
            f"ckpt_path={path} is not a Lightning checkpoint written by train.py: it needs "
            f"'state_dict' and 'hyper_parameters', it has {keys}."
        )
    hparams = dict(checkpoint["hyper_parameters"])
    state_dict = checkpoint["state_dict"]
    class_path = (checkpoint.get("anomaly_gan") or {}).get("class_path")
    cls = (
        _class_from_path(class_path, path)
        if class_path
        else _guess_class(hparams, state_dict, path)
    )
    model = _build(cls, hparams)
    model.on_load_checkpoint(checkpoint)  # the same fix-ups Lightning's own loading applies
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise InferenceError(
            f"Checkpoint {path}: the weights do not fit {cls.__name__} built from its own "
            f"hyperparameters ({error})."
        ) from error
    model.eval().to(device)
    return LoadedModel(
        model=model,
        preprocessing=_preprocessing(checkpoint, hparams, path),
        class_path=f"{cls.__module__}.{cls.__qualname__}",
        checkpoint_path=path,
    )


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


# ------------------------------------------------------------------------- overlays
def map_scale(model: GanAnomalyModule) -> float | None:
    """The map value that colours full red, or None for "each overlay by its own maximum".

    ``threshold / reconstruction_weight``: the mean per-pixel error at which the score's
    reconstruction term alone reaches the decision threshold (module docstring).
    """
    weight = float(model.scorer.reconstruction_weight)
    threshold = float(model.threshold)
    if weight > 0 and math.isfinite(threshold) and threshold > 0:
        return threshold / weight
    return None


def _overlay_name(path: Path, root: Path | None, used: set[str]) -> str:
    relative = path.relative_to(root) if root is not None else Path(path.name)
    stem = "__".join(relative.with_suffix("").parts)
    name, counter = f"{stem}.png", 1
    while name in used:  # a.png and a.jpg in one folder
        counter += 1
        name = f"{stem}_{counter}.png"
    used.add(name)
    return name


def write_overlay(
    image_path: Path, anomaly_map: np.ndarray, scale: float, channels: int, destination: Path
) -> Path:
    """Anomaly map (H, W) / ``scale`` in jet over the original image, at its resolution."""
    original = read_image(image_path, channels)  # (H, W, C) on 0..255, RGB for colour
    original = np.clip(original, 0, 255).astype(np.uint8)
    bgr = (
        cv2.cvtColor(original[:, :, 0], cv2.COLOR_GRAY2BGR)
        if original.shape[2] == 1
        else cv2.cvtColor(original, cv2.COLOR_RGB2BGR)
    )
    height, width = bgr.shape[:2]
    resized = cv2.resize(anomaly_map.astype(np.float32), (width, height), cv2.INTER_LINEAR)
    unit = np.clip(resized / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(resized)
    heat = cv2.applyColorMap(np.round(unit * 255).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(bgr, 1 - OVERLAY_ALPHA, heat, OVERLAY_ALPHA, 0)
    ok, encoded = cv2.imencode(".png", blended)
    if not ok:
        raise InferenceError(f"OpenCV could not encode the overlay for {image_path}.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(encoded.tobytes())
    return destination


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
        samples, prep.image_size, prep.channels, cache=None, normalization=prep.normalization
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
            name = _overlay_name(prediction.path, input_root, used_names)
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
    every file's error), so the command exits non-zero.
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
    "LoadedModel",
    "Prediction",
    "PredictionSummary",
    "Preprocessing",
    "list_inputs",
    "load_model",
    "map_scale",
    "predict",
    "resolve_device",
    "score_images",
    "write_csv",
    "write_overlay",
]
