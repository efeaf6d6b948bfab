"""Metrics on known inputs (image metrics, pixel AUROC, AUPRO) and the test evaluator."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from anomaly_gan.evaluation.artifacts import ExtremeSamples
from anomaly_gan.evaluation.evaluator import TestEvaluator
from anomaly_gan.evaluation.image_scores import read_image_scores
from anomaly_gan.evaluation.localization import AUPRO, aupro, pixel_metrics
from anomaly_gan.evaluation.metrics import image_metrics
from anomaly_gan.models import Ganomaly
from anomaly_gan.scoring import threshold_from_normals


def _masks() -> torch.Tensor:
    masks = torch.zeros(40, 32, 32)
    for i in range(0, 40, 2):  # every other image has one square defect
        masks[i, i % 20 : i % 20 + 6, 4:10] = 1
    return masks


def test_aupro_perfect_random_and_half_found() -> None:
    torch.manual_seed(0)
    masks = _masks()
    perfect = masks + 0.01 * torch.rand_like(masks)
    assert float(aupro(perfect, masks)) == pytest.approx(1.0, abs=0.01)
    # Random maps: PRO ~ FPR, so the normalised area up to 0.3 is ~0.15.
    assert float(aupro(torch.rand_like(masks), masks)) == pytest.approx(0.15, abs=0.03)
    # Half of the regions found perfectly, half missed entirely (scored below all normals).
    half = perfect.clone()
    half[::4] = -masks[::4]
    assert float(aupro(half, masks)) == pytest.approx(0.5, abs=0.03)


def test_aupro_metric_accumulates_batches_like_one_call() -> None:
    masks = _masks()
    maps = masks * torch.rand_like(masks) + 0.3 * torch.rand_like(masks)
    metric = AUPRO()
    for start in range(0, 40, 7):
        metric.update(maps[start : start + 7, None], masks[start : start + 7, None])
    assert float(metric.compute()) == pytest.approx(float(aupro(maps, masks)), abs=1e-6)


def test_pixel_metrics_without_masks_are_none() -> None:
    metrics = pixel_metrics(torch.rand(3, 1, 8, 8), torch.zeros(3, 1, 8, 8))
    assert metrics == {"pixel_auroc": None, "aupro": None}


def test_pixel_auroc_matches_ranking() -> None:
    masks = _masks()
    metrics = pixel_metrics(masks * 5 + torch.rand_like(masks), masks)  # raw scale > 1
    assert metrics["pixel_auroc"] == pytest.approx(1.0)


def test_image_metrics_at_validation_threshold() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 10.0, 20.0, 0.25])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    metrics = image_metrics(scores, labels, threshold=0.28)
    assert metrics["confusion_matrix"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["auroc"] == pytest.approx(8 / 9)  # one anomaly ranks under one normal
    assert metrics["f1_max_oracle"] >= metrics["f1"]


def test_threshold_is_a_quantile_of_normal_scores() -> None:
    normal = torch.arange(101, dtype=torch.float32)
    assert threshold_from_normals(normal, 0.95) == pytest.approx(95.0)
    assert math.isnan(threshold_from_normals(torch.empty(0), 0.95))
    with pytest.raises(ValueError, match="threshold_quantile"):
        threshold_from_normals(normal, 1.5)


# ------------------------------------------------------------------ the test evaluator
class LabelledImages(Dataset):
    """Random images in the data modules' batch format; every third one is anomalous."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 32, 32, generator=generator) * 2 - 1
        self.labels = torch.tensor([int(i % 3 == 0) for i in range(n)])
        self.masks = torch.zeros(n, 1, 32, 32)
        self.masks[self.labels == 1, :, 8:16, 8:16] = 1
        self.images[self.labels == 1, :, 8:16, 8:16] = 1.0  # a bright square defect

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.images[index],
            "label": self.labels[index],
            "mask": self.masks[index],
            "image_path": f"img{index}.png",
            "defect_type": "spot" if self.labels[index] else "good",
        }


class CountingEvaluator(TestEvaluator):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[int, int]] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.batches.append((dataloader_idx, batch_idx))
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)


def test_evaluator_scores_each_batch_once_and_owns_metrics_and_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Ganomaly(
        image_size=32, channels=3, scorer={"latent_weight": 0.0, "reconstruction_weight": 1.0}
    )
    model.scorer.threshold.fill_(0.5)
    calls = []
    score_with_map = model.score_with_map
    monkeypatch.setattr(
        model, "score_with_map", lambda image: calls.append(len(image)) or score_with_map(image)
    )
    loaders = [DataLoader(LabelledImages(10, seed), batch_size=4) for seed in (0, 1)]
    evaluator = CountingEvaluator(tmp_path)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[evaluator],
    )
    trainer.test(model, dataloaders=loaders, verbose=False)

    # 3 batches per test set, each scored once and handed to the evaluator once.
    assert calls == [4, 4, 2, 4, 4, 2]
    assert evaluator.batches == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert set(evaluator.results) == {"test_0", "test_1"}

    # The metrics are those of the model's own scores.
    model.eval()
    for name, seed in (("test_0", 0), ("test_1", 1)):
        data = LabelledImages(10, seed)
        batch = [data[i] for i in range(10)]
        with torch.no_grad():
            scores, _, _ = score_with_map(torch.stack([item["image"] for item in batch]))
        expected = image_metrics(scores, data.labels, 0.5)
        metrics = evaluator.results[name]
        for key in ("auroc", "average_precision", "confusion_matrix", "n_anomalous"):
            assert metrics[key] == pytest.approx(expected[key]), key
        assert metrics["pixel_auroc"] is not None
        assert trainer.logged_metrics[f"test/{name}/auroc"] == pytest.approx(expected["auroc"])
        figures = {"roc", "histogram", "confusion_matrix", "samples"}
        assert set(evaluator.artifacts[name]) == figures | {"scores"}
        for relative in evaluator.artifacts[name].values():
            assert (tmp_path / relative).is_file()
        # The per-image table holds the scores the metrics were computed from.
        table = read_image_scores(tmp_path / evaluator.artifacts[name]["scores"])
        assert torch.allclose(table.scores.float(), scores.float())
        assert torch.equal(table.labels, data.labels.long())


def _extremes_reference(scores: torch.Tensor, labels: torch.Tensor, per_group: int):
    """What the sample grid showed before the streaming buffer: sorted over the whole set."""
    chosen = []
    for label, name in ((0, "normal"), (1, "anomalous")):
        indices = torch.nonzero(labels == label).flatten()
        if indices.numel() == 0:
            continue
        order = indices[torch.argsort(scores[indices], stable=True)]
        low, high = order[:per_group].tolist(), order.flip(0)[:per_group].tolist()
        best, worst = (low, high) if label == 0 else (high, low)
        chosen += [(f"{name}, best", i) for i in best]
        chosen += [(f"{name}, worst", i) for i in worst if i not in best]
    return chosen


@pytest.mark.parametrize("n,per_group", [(23, 2), (5, 2), (3, 1), (40, 3)])
def test_streaming_sample_buffer_picks_what_sorting_everything_picks(
    n: int, per_group: int
) -> None:
    generator = torch.Generator().manual_seed(n)
    scores = torch.randint(0, 6, (n,), generator=generator).float()  # many ties
    labels = (torch.rand(n, generator=generator) < 0.4).long()
    maps = torch.rand(n, 1, 4, 4, generator=generator)
    samples = ExtremeSamples(per_group)
    for start in range(0, n, 4):
        part = slice(start, start + 4)
        samples.add(
            {
                "scores": scores[part],
                "labels": labels[part],
                "anomaly_maps": maps[part],
                "masks": (maps[part] > 0.5).float(),
                "images": torch.zeros(len(scores[part]), 3, 4, 4),
                "reconstructions": torch.zeros(len(scores[part]), 3, 4, 4),
                "defect_types": [f"kind{start + i}" for i in range(len(scores[part]))],
                "image_paths": [f"{start + i}.png" for i in range(len(scores[part]))],
            }
        )
    rows = samples.rows()
    expected = _extremes_reference(scores, labels, per_group)
    assert [row.title.split("\n")[0] for row in rows] == [title for title, _ in expected]
    assert [row.title.split("\n")[1].split()[0] for row in rows] == [
        f"kind{i}" for _, i in expected
    ]
    for row, (_, index) in zip(rows, expected, strict=True):
        assert np.array_equal(row.anomaly_map, maps[index, 0].numpy())
        assert (row.mask is not None) == bool(labels[index])
