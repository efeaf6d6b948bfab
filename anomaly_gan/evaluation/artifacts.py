"""Per-run figures written next to ``results.json`` (and handed to loggers such as W&B).

The sample grid shows the best and worst cases of a test set: the lowest- and
highest-scored normals and anomalies. :class:`ExtremeSamples` keeps them while the test
loop runs (a few candidate rows per group), so nothing is read or scored a second time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from anomaly_gan.data import denormalize
from anomaly_gan.evaluation.collected_outputs import CollectedOutputs
from anomaly_gan.evaluation.plots import (
    SampleRow,
    plot_confusion_matrix,
    plot_roc,
    plot_sample_grid,
    plot_score_histogram,
)

PLOTS_DIR = "plots"
GROUPS = ((0, "normal"), (1, "anomalous"))


def safe_name(name: str) -> str:
    """``name`` as one file or folder name (test set names may hold slashes or spaces)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass
class _Candidate:
    """One image that may end up in the sample grid (CPU tensors, model input scale)."""

    score: float
    index: int  # position in the test set: ties are broken by it
    defect_type: str
    image: Tensor  # (C, H, W)
    reconstruction: Tensor  # (C, H, W)
    anomaly_map: Tensor  # (H, W)
    mask: Tensor | None  # (H, W); None for normal images

    @property
    def key(self) -> tuple[float, int]:
        return _key(self.score, self.index)


class ExtremeSamples:
    """Streaming choice of the ``per_group`` lowest- and highest-scored normals and anomalies.

    Fed batch by batch with the model's ``test_step`` outputs; holds at most
    ``4 * per_group`` images. :meth:`rows` orders them as the grid shows them: per group
    (normal, anomalous) the best cases, then the worst ones not already shown (a normal is
    best when scored low, an anomaly when scored high).
    """

    def __init__(self, per_group: int = 2) -> None:
        self.per_group = per_group
        self.seen = 0
        # label -> (ascending lowest, descending highest)
        self._low: dict[int, list[_Candidate]] = {label: [] for label, _ in GROUPS}
        self._high: dict[int, list[_Candidate]] = {label: [] for label, _ in GROUPS}

    def add(self, outputs: Mapping[str, Any]) -> None:
        scores = outputs["scores"].detach().float().cpu().tolist()
        labels = outputs["labels"].detach().long().cpu().tolist()
        first, made = self.seen, {}
        self.seen += len(scores)

        def candidate(position: int) -> _Candidate:
            if position not in made:
                made[position] = _Candidate(
                    score=scores[position],
                    index=first + position,
                    defect_type=str(outputs["defect_types"][position]),
                    image=outputs["images"][position].detach().float().cpu(),
                    reconstruction=outputs["reconstructions"][position].detach().float().cpu(),
                    anomaly_map=outputs["anomaly_maps"][position, 0].detach().float().cpu(),
                    mask=(
                        outputs["masks"][position, 0].detach().float().cpu()
                        if labels[position]
                        else None
                    ),
                )
            return made[position]

        for label, _ in GROUPS:
            fresh = [
                (_key(score, first + i), i)
                for i, (score, own) in enumerate(zip(scores, labels, strict=True))
                if own == label
            ]
            if not fresh:
                continue
            for kept, highest in ((self._low, False), (self._high, True)):
                pool = [(c.key, c) for c in kept[label]] + fresh
                pool.sort(key=lambda entry: entry[0], reverse=highest)
                kept[label] = [
                    entry if isinstance(entry, _Candidate) else candidate(entry)
                    for _, entry in pool[: self.per_group]
                ]

    def rows(self) -> list[SampleRow]:
        chosen: list[tuple[str, _Candidate]] = []
        for label, name in GROUPS:
            low, high = self._low[label], self._high[label]
            best, worst = (low, high) if label == 0 else (high, low)
            shown = {c.index for c in best}
            chosen += [(f"{name}, best", c) for c in best]
            chosen += [(f"{name}, worst", c) for c in worst if c.index not in shown]
        as_numpy = lambda t: denormalize(t).permute(1, 2, 0).clamp(0, 1).numpy()  # noqa: E731
        return [
            SampleRow(
                title=f"{title}\n{c.defect_type} {c.score:.4g}",
                image=as_numpy(c.image),
                reconstruction=as_numpy(c.reconstruction),
                anomaly_map=c.anomaly_map.numpy(),
                mask=None if c.mask is None else c.mask.numpy(),
            )
            for title, c in chosen
        ]


def _key(score: float, index: int) -> tuple[float, int]:
    """Sort key of an image: its score (NaN as the highest, where torch.sort puts it), then
    its position in the test set."""
    return (math.inf if math.isnan(score) else score, index)


def write_test_artifacts(
    run_dir: Path,
    category: str,
    metrics: Mapping[str, Any],
    outputs: CollectedOutputs,
    samples: ExtremeSamples | None,
    threshold: float,
) -> dict[str, str]:
    """ROC, score histogram, confusion matrix and sample grid of one test set.

    Returns the files written, relative to ``run_dir`` (``results.json``'s ``artifacts``).
    """
    folder = run_dir / PLOTS_DIR / safe_name(category)
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
    rows = samples.rows() if samples is not None else []
    if rows:
        map_max = max(float(row.anomaly_map.max()) for row in rows) or 1.0
        files["samples"] = plot_sample_grid(
            rows, folder / "samples.png", f"{category}: best and worst cases", map_max
        )
    return {key: str(path.relative_to(run_dir)) for key, path in files.items()}
