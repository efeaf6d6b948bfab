"""Export generator + scoring to ONNX: ``python export.py ckpt_path=<file.ckpt>``.

The exported graph is :class:`ScoringModule`: image (B, C, S, S) in [-1, 1] -> anomaly score
per image (B,) and anomaly map (B, 1, S, S), both exactly what ``model.score`` and
``model.scorer.anomaly_map`` give in PyTorch (eval mode: BatchNorm running statistics, so a
score never depends on its batch mates). The batch axis is dynamic.

Everything a deployment needs besides the graph travels in the ONNX file's metadata
(``metadata_props``): decision threshold, image size, channels, normalisation, model class,
the overlay ``map_scale`` (see :mod:`anomaly_gan.evaluation.overlays`). Pre-processing
outside Python: read the image, convert to RGB (``channels`` 3) or luminance (1), resize to
S×S with area interpolation, ``pixel / 255 * 2 - 1``, CHW; anomalous when
``score >= threshold``.

Architectures that score by an optimisation loop are refused with the reason
(``GanAnomalyModule.export_refusal``; AnoGAN's latent search).

The fused self-attention (``F.scaled_dot_product_attention`` in
:class:`~anomaly_gan.nets.blocks.SelfAttention2d`, used by Skip-SA and MIFE) exports as is
with torch's current (``dynamo``) exporter; no fallback is needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from anomaly_gan.data.transforms import NORMALIZE_MEAN, NORMALIZE_STD, PER_IMAGE_SPREAD
from anomaly_gan.models.checkpoint import LoadedModel, load_model
from anomaly_gan.models.core import GanAnomalyModule

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
INPUT_NAME = "image"
OUTPUT_NAMES = ("scores", "anomaly_map")
# The ONNX protobuf limit is 2 GiB; below this the weights stay inside the one .onnx file.
_SINGLE_FILE_LIMIT = 1.8 * 2**30


class ExportError(RuntimeError):
    """The export failed or its result does not match PyTorch."""


class ScoringModule(nn.Module):
    """Generator + scoring as one graph: ``image -> (scores (B,), anomaly_map (B, 1, H, W))``.

    Wraps a trained :class:`GanAnomalyModule` (kept in eval mode) so exporters and
    serving code see a plain ``nn.Module`` with tensors in and tensors out.
    """

    def __init__(self, model: GanAnomalyModule) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        scores, _, anomaly_map = self.model.score_with_map(image)
        return scores, anomaly_map


def default_output(ckpt_path: str | Path, fmt: str = "onnx") -> Path:
    """``<ckpt dir>/<ckpt stem>.<fmt>``: the export lies next to its checkpoint."""
    path = Path(ckpt_path)
    return path.with_name(f"{path.stem}.{fmt}")


def metadata(loaded: LoadedModel) -> dict[str, str]:
    """What a deployment needs besides the graph (ONNX ``metadata_props``, strings)."""
    threshold = loaded.threshold
    scale = loaded.model.scorer.map_scale()
    return {
        "anomaly_gan.class_path": loaded.class_path,
        "anomaly_gan.checkpoint": loaded.checkpoint_path.name,
        "anomaly_gan.threshold": repr(threshold) if math.isfinite(threshold) else "nan",
        "anomaly_gan.decision": "anomalous when score >= threshold",
        "anomaly_gan.image_size": str(loaded.preprocessing.image_size),
        "anomaly_gan.channels": str(loaded.preprocessing.channels),
        "anomaly_gan.normalization": json.dumps(
            {
                "scale": "pixel / 255",
                "mean": NORMALIZE_MEAN,
                "std": NORMALIZE_STD,
                "then": (
                    f"per image: (x - mean(x)) / ({PER_IMAGE_SPREAD} * std(x)), clip to [-1, 1]"
                    if loaded.preprocessing.normalization == "per_image"
                    else "nothing"
                ),
            }
        ),
        "anomaly_gan.channel_order": "RGB" if loaded.preprocessing.channels == 3 else "gray",
        "anomaly_gan.resize": _resize_description(loaded),
        "anomaly_gan.map_scale": "per-image max" if scale is None else repr(scale),
        "anomaly_gan.scorer": json.dumps(loaded.model.scorer.to_config()),
    }


def _resize_description(loaded: LoadedModel) -> str:
    """How a file is resized before the graph sees it (``data.resize``), OpenCV INTER_AREA."""
    prep = loaded.preprocessing
    height, width = prep.geometry.shape
    return {
        "squash": f"to {width}x{height} (width x height), aspect ignored",
        "pad": f"longer side to {prep.image_size}, border pixels repeated to {width}x{height}",
        "crop": f"shorter side to {prep.image_size}, centre {width}x{height} kept",
        "tile": f"to {width}x{height}; the graph scores its {prep.image_size} px tiles itself",
    }[prep.resize] + ", OpenCV INTER_AREA"


def _example(loaded: LoadedModel, batch: int, seed: int = 0) -> Tensor:
    prep = loaded.preprocessing
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, prep.channels, *prep.geometry.shape, generator=generator) * 2 - 1


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs every optimisation pass at INFO; under Hydra's INFO logging that
    buries the result, so its loggers are held at WARNING for the duration."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(loaded: LoadedModel, output: str | Path, opset: int = 20) -> Path:
    """Write ``ScoringModule(model)`` as ONNX with a dynamic batch axis and the metadata."""
    import onnx

    refusal = loaded.model.export_refusal
    if refusal:  # e.g. AnoGAN: its score is an optimisation loop, not a graph
        raise ExportError(
            f"{loaded.class_path} from {loaded.checkpoint_path} cannot be exported to ONNX: "
            f"{refusal}"
        )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    module = ScoringModule(loaded.model.cpu()).eval()
    # Batch 2, not 1: the exporter would specialise a size-1 axis to a constant.
    example = _example(loaded, batch=2)
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    try:
        with _quiet_exporter(), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter chatter (deprecations, opset notes)
            torch.onnx.export(
                module,
                (example,),
                str(output),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
                external_data=n_bytes > _SINGLE_FILE_LIMIT,
                verbose=False,
            )
    except Exception as error:
        raise ExportError(
            f"torch.onnx.export failed for {loaded.class_path} from {loaded.checkpoint_path} "
            f"(opset {opset}): {type(error).__name__}: {error}"
        ) from error
    graph = onnx.load(str(output), load_external_data=False)
    for key, value in metadata(loaded).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(output))
    return output


def verify_onnx(
    loaded: LoadedModel,
    onnx_path: str | Path,
    batch_sizes: Sequence[int] = (3, 5),
    atol: float = 1e-4,
) -> dict[str, float]:
    """Run the ONNX file with onnxruntime and compare with PyTorch; raise if off by > atol.

    Returns the largest differences, ``{"scores": ..., "anomaly_map": ...}``: absolute for
    values up to 1, relative above (standardised anomaly maps are z-scores in the tens,
    where float32 rounding alone exceeds an absolute 1e-4).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    module = ScoringModule(loaded.model.cpu()).eval()
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for batch in batch_sizes:
        image = _example(loaded, batch, seed=batch)
        with torch.no_grad():
            expected = module(image)
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})
        for name, ours, theirs in zip(OUTPUT_NAMES, expected, got, strict=True):
            if tuple(theirs.shape) != tuple(ours.shape):
                raise ExportError(
                    f"{onnx_path}: output {name} has shape {tuple(theirs.shape)} for a batch of "
                    f"{batch}, PyTorch gives {tuple(ours.shape)}."
                )
            reference = ours.numpy()
            error = np.abs(theirs - reference) / np.maximum(1.0, np.abs(reference))
            worst[name] = max(worst[name], float(error.max()))
    bad = {name: diff for name, diff in worst.items() if not diff <= atol}
    if bad:
        raise ExportError(
            f"{onnx_path}: onnxruntime differs from PyTorch by {bad} (tolerance {atol}) on "
            f"batches of {list(batch_sizes)}."
        )
    return worst


def export(
    ckpt_path: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    opset: int = 20,
    verify: bool = True,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export a checkpoint (``python export.py``); returns what was written and checked."""
    if fmt not in FORMATS:
        raise ExportError(f"format={fmt!r} is not supported; use one of {', '.join(FORMATS)}.")
    loaded = load_model(ckpt_path, "cpu")
    path = export_onnx(loaded, output or default_output(ckpt_path, fmt), opset=opset)
    result: dict[str, Any] = {"path": str(path), "class_path": loaded.class_path}
    if verify:
        result["max_abs_diff"] = verify_onnx(loaded, path, atol=atol)
    return result


__all__ = [
    "FORMATS",
    "ExportError",
    "ScoringModule",
    "default_output",
    "export",
    "export_onnx",
    "metadata",
    "verify_onnx",
]
