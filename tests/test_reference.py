"""The no-learning reference: built from training normals only, scored by the model's scorer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomaly_gan.data import SyntheticDataModule
from anomaly_gan.evaluation.reference import (
    PCA_COMPONENTS,
    MeanReconstruction,
    PcaReconstruction,
    reference_metrics,
)
from anomaly_gan.evaluation.results import format_results_table

SCORER = {
    "latent_weight": 0.0,
    "reconstruction_weight": 1.0,
    "reconstruction_norm": "l1",
    "map_sigma": 1.0,
    "smooth_difference": True,
    "normalize_map": True,
    "pooling": "top_k",
    "top_k_fraction": 0.05,
}


def _datamodule(tmp_path: Path, cache_dir: Path, **kwargs) -> SyntheticDataModule:
    datamodule = SyntheticDataModule(
        root=cache_dir / "synthetic_reference",
        image_size=32,
        channels=3,
        n_train=48,
        n_test_good=10,
        n_test_per_defect=5,
        val_fraction=0.2,
        cache=False,
        **kwargs,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_pca_reconstructs_its_own_subspace_and_mean_is_the_training_mean() -> None:
    torch.manual_seed(0)
    basis = torch.randn(3, 2 * 8 * 8)
    train = (torch.randn(40, 3) @ basis).view(40, 2, 8, 8) + 0.5
    pca = PcaReconstruction(train, max_components=3)
    inside = (torch.randn(5, 3) @ basis).view(5, 2, 8, 8) + 0.5
    assert torch.allclose(pca(inside), inside, atol=1e-3)
    assert torch.allclose(MeanReconstruction(train)(inside)[0], train.mean(0), atol=1e-6)
    pca.k = 1  # fewer directions than the data has: no longer exact
    assert (pca(inside) - inside).abs().max() > 0.1


def test_reference_block_uses_training_normals_only(tmp_path: Path, cache_dir: Path) -> None:
    datamodule = _datamodule(tmp_path, cache_dir)
    first = reference_metrics(datamodule, SCORER)
    block = first["textile"]
    for name in ("mean", "pca"):
        assert -1e-6 <= block[name]["auroc"] <= 1 + 1e-6
    assert block["best"] in ("mean", "pca")
    assert block["auroc"] == max(block["mean"]["auroc"], block["pca"]["auroc"])
    # k: the largest candidate below the number of training normals, as results.json says.
    n_train = len(datamodule.train_samples)
    assert block["pca"]["k"] == max(k for k in PCA_COMPONENTS if k < n_train)
    assert "largest" in block["pca"]["k_chosen_by"]

    # Test labels never reach k or the threshold: flipping them mirrors the AUROC and
    # changes nothing else the reference chose.
    for samples in datamodule.test_samples.values():
        for index, sample in enumerate(samples):
            samples[index] = type(sample)(
                sample.image_path, 1 - sample.label, sample.defect_type, sample.mask_path
            )
    flipped = reference_metrics(datamodule, SCORER)["textile"]
    assert flipped["pca"]["k"] == block["pca"]["k"]
    assert flipped["pca"]["auroc"] == pytest.approx(1 - block["pca"]["auroc"], abs=1e-5)
    assert flipped["mean"]["auroc"] == pytest.approx(1 - block["mean"]["auroc"], abs=1e-5)

    # Other training normals give another reference: it is fitted on them.
    other = _datamodule(tmp_path, cache_dir, seed=1)
    assert other.train_samples != datamodule.train_samples
    changed = reference_metrics(other, SCORER)["textile"]
    assert changed["mean"] != block["mean"] or changed["pca"] != block["pca"]


def test_reference_localises_on_the_map_the_model_shows(tmp_path: Path, cache_dir: Path) -> None:
    # The built-in data has defect masks: each reference gets pixel AUROC and AUPRO, on the
    # plain error map or on the pooled score map, whichever model.scorer.localization_map says.
    datamodule = _datamodule(tmp_path, cache_dir)
    blocks = {
        shown: reference_metrics(datamodule, {**SCORER, "localization_map": shown})["textile"]
        for shown in ("error", "score")
    }
    for block in blocks.values():
        for name in ("mean", "pca"):
            assert 0.0 <= block[name]["pixel_auroc"] <= 1.0
            assert 0.0 <= block[name]["aupro"] <= 1.0
    # Same image score either way; only the map (and so the pixel metrics) differs.
    assert blocks["error"]["auroc"] == pytest.approx(blocks["score"]["auroc"])
    assert blocks["error"]["mean"]["pixel_auroc"] != blocks["score"]["mean"]["pixel_auroc"]


def test_summary_flags_a_model_that_does_not_beat_the_reference() -> None:
    metrics = {"auroc": 0.70, "n_normal": 5, "n_anomalous": 5}
    results = {
        "status": "completed",
        "categories": {
            "weak": {**metrics, "reference": {"auroc": 0.69, "lift": 0.01, "best": "pca"}},
            "strong": {**metrics, "reference": {"auroc": 0.50, "lift": 0.20, "best": "mean"}},
        },
    }
    table = format_results_table(results)
    assert "lift" in table.splitlines()[0]
    warnings = [line for line in table.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: weak: lift +0.010")
