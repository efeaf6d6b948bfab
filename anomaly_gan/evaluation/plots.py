"""Figures for one run (ROC, score histogram, confusion matrix, sample grid) and for reports.

Matplotlib with the Agg backend, so plotting works on headless cluster nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc

DPI = 110


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout(rect=(0, 0, 1, 0.97) if figure._suptitle else (0, 0, 1, 1))
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _unit(scores: torch.Tensor) -> torch.Tensor:
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low) if high > low else torch.zeros_like(scores)


def plot_roc(scores: torch.Tensor, labels: torch.Tensor, path: Path, title: str) -> Path:
    unit = _unit(scores.float())
    fpr, tpr, _ = binary_roc(unit, labels.long())
    auroc = float(binary_auroc(unit, labels.long()))
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.plot(fpr.numpy(), tpr.numpy(), label=f"AUROC {auroc:.3f}")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    axis.legend(loc="lower right")
    return _save(figure, path)


def plot_score_histogram(
    scores: torch.Tensor, labels: torch.Tensor, threshold: float | None, path: Path, title: str
) -> Path:
    figure, axis = plt.subplots(figsize=(5, 3.5))
    values = scores.float().numpy()
    bins = np.histogram_bin_edges(values, bins=30)
    for label, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        chosen = values[labels.numpy() == label]
        if chosen.size:
            axis.hist(chosen, bins=bins, alpha=0.6, label=f"{name} ({chosen.size})", color=colour)
    if threshold is not None and np.isfinite(threshold):
        axis.axvline(threshold, color="black", linestyle="--", label="threshold (validation)")
    axis.set(xlabel="anomaly score", ylabel="images", title=title)
    axis.legend()
    return _save(figure, path)


def draw_confusion_matrix(
    axis: plt.Axes, matrix: Mapping[str, int] | str | None, title: str
) -> None:
    """2x2 counts: rows = truth (normal, anomalous), columns = prediction.

    A string instead of counts (``failed``, ``missing``) is written in an empty matrix.
    """
    axis.set_title(title, fontsize=9)
    axis.set_xticks([0, 1], ["normal", "anomalous"], fontsize=8)
    axis.set_yticks([0, 1], ["normal", "anomalous"], fontsize=8)
    axis.set_xlabel("predicted", fontsize=8)
    axis.set_ylabel("true", fontsize=8)
    if not matrix or isinstance(matrix, str):
        axis.text(0.5, 0.5, matrix or "n/a", ha="center", va="center", transform=axis.transAxes)
        axis.imshow(np.zeros((2, 2)), cmap="Greys", vmin=0, vmax=1)
        return
    counts = np.array([[matrix["tn"], matrix["fp"]], [matrix["fn"], matrix["tp"]]])
    axis.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, counts.max()))
    for (row, column), value in np.ndenumerate(counts):
        dark = value > counts.max() / 2
        axis.text(
            column, row, str(value), ha="center", va="center", color="white" if dark else "black"
        )


def plot_confusion_matrix(matrix: Mapping[str, int] | None, path: Path, title: str) -> Path:
    figure, axis = plt.subplots(figsize=(3.6, 3.4))
    draw_confusion_matrix(axis, matrix, title)
    return _save(figure, path)


@dataclass
class SampleRow:
    """One row of a sample grid; images are (H, W, C) floats in [0, 1], map/mask (H, W)."""

    title: str
    image: np.ndarray
    reconstruction: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray | None = None


def plot_sample_grid(rows: Sequence[SampleRow], path: Path, title: str, map_max: float) -> Path:
    """Input | reconstruction | anomaly-map overlay (mask outlined), one row per image."""
    figure, axes = plt.subplots(len(rows), 3, figsize=(7, 2.3 * len(rows)), squeeze=False)
    for axis_row, row in zip(axes, rows, strict=True):
        gray = row.image.shape[-1] == 1
        cmap = "gray" if gray else None
        axis_row[0].imshow(row.image.squeeze(-1) if gray else row.image, cmap=cmap)
        axis_row[1].imshow(
            row.reconstruction.squeeze(-1) if gray else row.reconstruction, cmap=cmap
        )
        axis_row[2].imshow(row.image.squeeze(-1) if gray else row.image, cmap=cmap)
        axis_row[2].imshow(row.anomaly_map, cmap="jet", alpha=0.5, vmin=0, vmax=map_max)
        if row.mask is not None and row.mask.any():
            axis_row[2].contour(row.mask, levels=[0.5], colors="white", linewidths=0.8)
        axis_row[0].set_ylabel(row.title, fontsize=7)
        for axis in axis_row:
            axis.set_xticks([])
            axis.set_yticks([])
    for axis, name in zip(axes[0], ("input", "reconstruction", "anomaly map"), strict=True):
        axis.set_title(name, fontsize=9)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def plot_auroc_lines(
    table: Mapping[str, Mapping[str, float | None]], categories: Sequence[str], path: Path
) -> Path:
    """AUROC per category, one line per model (the skip-SA paper's Fig. 8)."""
    lines = [
        Line(model, [by_category.get(c) for c in categories], group=model)
        for model, by_category in table.items()
    ]
    return plot_lines(lines, categories, path, ylabel="image AUROC", title="AUROC per category")


@dataclass
class Line:
    """One series of :func:`plot_lines`; a ``group`` shares one colour (a model's published
    and reproduced lines), ``published`` lines are dashed with open markers."""

    label: str
    values: Sequence[float | None]
    group: str
    published: bool = False
    marker: str = "o"


def plot_lines(
    lines: Sequence[Line], x_labels: Sequence[str], path: Path, ylabel: str, title: str
) -> Path:
    """Values per x label, one line each; a None is a gap (a cell with no run)."""
    figure, axis = plt.subplots(figsize=(max(5, 0.6 * len(x_labels) + 3), 4.2))
    positions = np.arange(len(x_labels))
    colours: dict[str, str] = {}
    for line in lines:
        colour = colours.setdefault(line.group, f"C{len(colours) % 10}")
        axis.plot(
            positions,
            [np.nan if v is None else v for v in line.values],
            color=colour,
            linestyle="--" if line.published else "-",
            marker=line.marker,
            markerfacecolor="none" if line.published else colour,
            label=line.label,
        )
    rotated = len(x_labels) > 4
    axis.set_xticks(
        positions, x_labels, rotation=45 if rotated else 0, ha="right" if rotated else "center"
    )
    axis.set(ylabel=ylabel, ylim=(0, 1.02), title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


def plot_confusion_grid(
    matrices: Mapping[tuple[str, str], Mapping[str, int] | str | None],
    models: Sequence[str],
    classes: Sequence[str],
    path: Path,
) -> Path:
    """One confusion matrix per model (rows) x test class (columns) (the MIFE paper's Fig. 2)."""
    figure, axes = plt.subplots(
        len(models), len(classes), figsize=(3.2 * len(classes), 3.0 * len(models)), squeeze=False
    )
    for i, model in enumerate(models):
        for j, test_class in enumerate(classes):
            draw_confusion_matrix(
                axes[i][j], matrices.get((model, test_class)), f"{model} / {test_class}"
            )
    return _save(figure, path)
