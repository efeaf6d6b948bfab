"""Checkpoint -> model: rebuild a trained detector from its ``.ckpt`` file alone.

A checkpoint written by ``train.py`` is self-sufficient: it names its architecture class
(``anomaly_gan.class_path``, written by the core's ``on_save_checkpoint``), holds the model's
hyperparameters, its weights, the decision ``threshold`` (a buffer chosen on validation
normals) and the datamodule's ``image_size`` / ``channels`` / ``normalization`` / ``resize``
(and tile frame). It is read with ``torch.load(weights_only=True)``: no pickled code runs.
The class comes from the
architecture registry (:mod:`anomaly_gan.models.registry`); a class path outside it (a
user's own subclass) is imported, and only subclasses of :class:`GanAnomalyModule` are ever
built. A checkpoint without ``anomaly_gan.class_path`` is refused with the fix.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anomaly_gan.data.geometry import Geometry
from anomaly_gan.models import registry
from anomaly_gan.models.core import GanAnomalyModule

CLASS_PATH_KEY = "anomaly_gan.class_path"


class CheckpointError(ValueError):
    """A checkpoint file the user can fix (missing, foreign, or naming no usable class)."""


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects, read from the checkpoint (the datamodule's hyperparameters)."""

    image_size: int
    channels: int
    normalization: str = "fixed"
    resize: str = "squash"
    frame: tuple[int, int] | None = None

    @property
    def geometry(self) -> Geometry:
        """The shape every file is resized to before scoring (``data.resize``)."""
        return Geometry(self.image_size, self.resize, self.frame)


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


def _known_classes() -> str:
    return ", ".join(registry.class_path(cls) for cls in registry.ARCHITECTURES.values())


def _architecture_class(class_path: str, checkpoint: Path) -> type[GanAnomalyModule]:
    """The registered class the checkpoint names; else its own (imported) subclass."""
    registered = registry.by_class_path(class_path)
    if registered is not None:
        return registered
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(
            f"Checkpoint {checkpoint} names the model class {class_path!r}, which cannot be "
            f"imported ({error}). Use the anomaly_gan version that trained it; this one knows "
            f"{_known_classes()}."
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, GanAnomalyModule)):
        raise CheckpointError(
            f"Checkpoint {checkpoint} names {class_path!r}, which is not a GanAnomalyModule "
            "subclass; refusing to build it."
        )
    return cls


def _class_path(checkpoint: dict[str, Any], path: Path) -> str:
    class_path = (checkpoint.get("anomaly_gan") or {}).get("class_path")
    if not class_path:
        raise CheckpointError(
            f"Checkpoint {path} lacks {CLASS_PATH_KEY!r}: it does not say which model class "
            "its weights belong to (train.py writes it into every checkpoint). Add it and save "
            "again: ckpt = torch.load(path, weights_only=True); ckpt['anomaly_gan'] = "
            "{'class_path': '<class>'}; torch.save(ckpt, path), with <class> one of "
            f"{_known_classes()}; or train the model again with this version."
        )
    return str(class_path)


def _preprocessing(
    checkpoint: dict[str, Any], hparams: dict[str, Any], path: Path
) -> Preprocessing:
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    image_size = data.get("image_size", hparams.get("image_size"))
    channels = data.get("channels", hparams.get("channels"))
    if image_size is None or channels is None:
        raise CheckpointError(
            f"Checkpoint {path} records no image_size/channels (neither "
            "'datamodule_hyper_parameters' nor the model hyperparameters have them)."
        )
    for key in ("image_size", "channels"):
        if key in data and key in hparams and data[key] != hparams[key]:
            raise CheckpointError(
                f"Checkpoint {path}: datamodule {key}={data[key]} but model {key}={hparams[key]}."
            )
    frame = data.get("frame")
    return Preprocessing(
        int(image_size),
        int(channels),
        str(data.get("normalization", "fixed")),
        str(data.get("resize", "squash")),
        (int(frame[0]), int(frame[1])) if frame else None,
    )


#: Hyperparameters a checkpoint written before they existed lacks, and what it was trained
#: with: no feature memory (now GANomaly's, Skip-GANomaly's and the Baseline's default), and
#: a memory that kept every vector, matched in place and weighed 1.
HPARAMS_BEFORE_THEY_EXISTED: dict[str, Any] = {
    "memory": None,
    "memory_coreset": 1.0,
    "memory_neighbourhood": 0,
    "memory_weight": 1.0,
    "memory_strides": None,
}


def load_model(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the trained model (eval mode, on ``device``) from a checkpoint file alone."""
    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={checkpoint_path}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a bad or foreign file
        raise CheckpointError(
            f"ckpt_path={path} could not be loaded as a checkpoint ({type(error).__name__}: "
            f"{error}). Point it at a .ckpt written by train.py (outputs/train/<time>/"
            "checkpoints/)."
        ) from error
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(
        checkpoint
    ):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"ckpt_path={path} is not a Lightning checkpoint written by train.py: it needs "
            f"'state_dict' and 'hyper_parameters', it has {keys}."
        )
    hparams = {**HPARAMS_BEFORE_THEY_EXISTED, **checkpoint["hyper_parameters"]}
    cls = _architecture_class(_class_path(checkpoint, path), path)
    model = cls(**hparams)
    model.on_load_checkpoint(checkpoint)  # the same fix-ups Lightning's own loading applies
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"Checkpoint {path}: the weights do not fit {cls.__name__} built from its own "
            f"hyperparameters ({error})."
        ) from error
    model.eval().to(device)
    return LoadedModel(
        model=model,
        preprocessing=_preprocessing(checkpoint, hparams, path),
        class_path=registry.class_path(cls),
        checkpoint_path=path,
    )


__all__ = ["CLASS_PATH_KEY", "CheckpointError", "LoadedModel", "Preprocessing", "load_model"]
