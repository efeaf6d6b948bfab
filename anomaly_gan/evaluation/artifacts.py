"""Per-run figures written next to ``results.json`` (and handed to loggers such as W&B)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from anomaly_gan.data import AnomalyImageDataset, denormalize
from anomaly_gan.evaluation.plots import (
    SampleRow,
    plot_confusion_matrix,
    plot_roc,
    plot_sample_grid,
    plot_score_histogram,
)
from anomaly_gan.evaluation.test_set import TestSetOutputs

PLOTS_DIR = "plots"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _extremes(scores: torch.Tensor, labels: torch.Tensor, per_group: int) -> list[tuple[str, int]]:
    """Highest- and lowest-scored normals and anomalies: the best and worst cases."""
    chosen: list[tuple[str, int]] = []
    for label, name in ((0, "normal"), (1, "anomalous")):
        indices = torch.nonzero(labels == label).flatten()
        if indices.numel() == 0:
            continue
        order = indices[torch.argsort(scores[indices])]
        low, high = order[:per_group].tolist(), order.flip(0)[:per_group].tolist()
        best, worst = (low, high) if label == 0 else (high, low)
        chosen += [(f"{name}, best", i) for i in best]
        chosen += [(f"{name}, worst", i) for i in worst if i not in best]
    return chosen


@torch.no_grad()
def sample_rows(
    model: Any, datamodule: Any, category: str, outputs: TestSetOutputs, per_group: int = 2
) -> list[SampleRow]:
    """Re-score the few images shown (cheaper than keeping every map of the test set)."""
    samples = {str(s.image_path): s for s in datamodule.test_samples[category]}
    scores, labels = outputs.all_scores, outputs.all_labels
    picked = _extremes(scores, labels, per_group)
    dataset = AnomalyImageDataset(
        [samples[outputs.image_paths[i]] for _, i in picked],
        datamodule.image_size,
        datamodule.channels,
        normalization=getattr(datamodule, "normalization", "fixed"),
    )
    rows: list[SampleRow] = []
    was_training = model.training
    model.eval()
    for (title, index), item in zip(picked, dataset, strict=True):
        image = item["image"].unsqueeze(0).to(model.device)
        score, output, anomaly_map = model.score_with_map(image)
        as_numpy = lambda t: denormalize(t[0]).permute(1, 2, 0).clamp(0, 1).cpu().numpy()  # noqa: E731
        rows.append(
            SampleRow(
                title=f"{title}\n{item['defect_type']} {float(score):.4g}",
                image=as_numpy(image),
                reconstruction=as_numpy(output.reconstruction),
                anomaly_map=anomaly_map[0, 0].cpu().numpy(),
                mask=item["mask"][0].numpy() if labels[index] else None,
            )
        )
    model.train(was_training)
    return rows


def write_test_artifacts(model: Any, datamodule: Any, run_dir: Path) -> dict[str, dict[str, str]]:
    """ROC, score histogram, confusion matrix and sample grid for every test category."""
    written: dict[str, dict[str, str]] = {}
    threshold = float(model.threshold)
    for category, outputs in model.test_outputs.items():
        metrics = model.test_results[category]
        folder = run_dir / PLOTS_DIR / _safe(category)
        scores, labels = outputs.all_scores, outputs.all_labels
        files: dict[str, Path] = {}
        if metrics.get("auroc") is not None:
            files["roc"] = plot_roc(scores, labels, folder / "roc.png", f"{category}: ROC")
        files["histogram"] = plot_score_histogram(
            scores, labels, threshold, folder / "score_histogram.png", f"{category}: scores"
        )
        files["confusion_matrix"] = plot_confusion_matrix(
            metrics.get("confusion_matrix"), folder / "confusion_matrix.png", category
        )
        rows = sample_rows(model, datamodule, category, outputs)
        if rows:
            map_max = max(float(row.anomaly_map.max()) for row in rows) or 1.0
            files["samples"] = plot_sample_grid(
                rows, folder / "samples.png", f"{category}: best and worst cases", map_max
            )
        written[category] = {key: str(path.relative_to(run_dir)) for key, path in files.items()}
    return written
