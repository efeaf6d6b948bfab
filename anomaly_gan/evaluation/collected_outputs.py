"""What the test loop yields for one test set, collected batch by batch, and its metrics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from anomaly_gan.evaluation.intervals import auroc_interval
from anomaly_gan.evaluation.localization import pixel_metrics
from anomaly_gan.evaluation.metrics import image_metrics, metrics_by_defect_type


@dataclass
class CollectedOutputs:
    """Per-image scores and labels of one test set, plus anomaly maps while needed.

    Fed with what the model's ``test_step`` returns (``scores``, ``labels``,
    ``defect_types``, ``image_paths``, ``anomaly_maps``, ``masks``). Maps are kept as float16
    on the CPU (half the memory) and only until the pixel metrics are computed.
    """

    scores: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)
    image_paths: list[str] = field(default_factory=list)
    maps: list[Tensor] = field(default_factory=list)
    masks: list[Tensor] = field(default_factory=list)

    def add(self, outputs: Mapping[str, Any]) -> None:
        self.scores.append(outputs["scores"].detach().float().cpu())
        self.labels.append(outputs["labels"].detach().long().cpu())
        self.defect_types.extend(outputs["defect_types"])
        self.image_paths.extend(str(path) for path in outputs["image_paths"])
        self.maps.append(outputs["anomaly_maps"].detach().to(torch.float16).cpu())
        self.masks.append(outputs["masks"].detach().to(torch.bool).cpu())

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def all_scores(self) -> Tensor:
        return torch.cat(self.scores) if self.scores else torch.empty(0)

    @property
    def all_labels(self) -> Tensor:
        return torch.cat(self.labels) if self.labels else torch.empty(0, dtype=torch.long)

    def evaluate(self, threshold: float) -> dict[str, Any]:
        """Image metrics, per-defect-type metrics and pixel metrics; frees the maps."""
        scores, labels = self.all_scores, self.all_labels
        metrics = image_metrics(scores, labels, threshold)
        # How far the AUROC could move with another draw of test images of the same counts.
        interval = auroc_interval(labels, scores)
        metrics["auroc_interval"] = list(interval) if interval is not None else None
        metrics["by_defect_type"] = metrics_by_defect_type(
            scores, labels, self.defect_types, threshold
        )
        if self.maps:
            metrics.update(pixel_metrics(torch.cat(self.maps).float(), torch.cat(self.masks)))
        self.maps, self.masks = [], []
        return metrics
