"""model.companion=pca|auto: the PCA reference summed into the score, fitted on training
normals; ``auto`` sums it in only where the validation's synthetic defects say it helps."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from anomaly_gan.data import SyntheticDataModule
from anomaly_gan.evaluation.reference import normal_images, reference_metrics
from anomaly_gan.models import Anogan, Ganomaly, SkipGanomaly
from anomaly_gan.models.checkpoint import load_model
from anomaly_gan.onnx_export import export_onnx, verify_onnx
from anomaly_gan.pca_companion import PcaCompanion
from anomaly_gan.scoring import DEFAULT_SCORER
from tests.conftest import short_trainer, small_synthetic_module


def _datamodule(cache_dir: Path) -> SyntheticDataModule:
    return small_synthetic_module(cache_dir / "synthetic_companion")


_trainer = short_trainer


def test_companion_is_fitted_on_training_normals_and_travels_in_the_checkpoint(
    tmp_path: Path, cache_dir: Path
) -> None:
    datamodule = _datamodule(cache_dir)
    model = Ganomaly(image_size=32, channels=3, companion="pca", memory=None)
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=datamodule)

    train, validation = normal_images(datamodule)
    companion = model.companion
    assert companion is not None and companion.fitted
    # Built from the training normals: their mean, not the validation normals'.
    assert torch.allclose(companion.pca.mean, train.flatten(1).mean(0), atol=1e-5)
    assert not torch.allclose(companion.pca.mean, validation.flatten(1).mean(0), atol=1e-3)
    assert companion.pca.directions.shape[1] == companion.pca.k  # truncated to k
    # k: the largest candidate below the number of training normals (32 of them here).
    assert train.shape[0] == 32 and companion.pca.k == 16
    for name in ("model_center", "model_scale", "pca_center", "pca_scale"):
        assert torch.isfinite(getattr(companion, name)), name
    assert torch.isfinite(model.threshold)

    datamodule.setup("test")
    images = next(iter(datamodule.test_dataloader()[0]))["image"]
    model.eval()
    with torch.no_grad():
        summed = model(images)
        own = model.scorer.score(
            model.latent_distance(*model.reconstruct(images)[1:]),
            model.scorer.score_map(images, model.generate(images).reconstruction),
        )
        assert torch.allclose(summed, companion.combine(own, images))
        assert not torch.allclose(summed, own)

    checkpoint = tmp_path / "companion.ckpt"
    trainer.save_checkpoint(checkpoint)
    loaded = load_model(checkpoint)
    assert loaded.model.companion is not None and loaded.model.companion.pca.k == companion.pca.k
    with torch.no_grad():
        assert torch.allclose(loaded.model(images), summed, atol=1e-5)
    # The PCA and its standardisation are part of the exported graph.
    onnx_path = export_onnx(loaded, tmp_path / "companion.onnx")
    assert max(verify_onnx(loaded, onnx_path, batch_sizes=(3,)).values()) <= 1e-4


def test_the_companion_does_not_change_what_the_model_learns(
    tmp_path: Path, cache_dir: Path
) -> None:
    # Fitting the PCA reads the normals through loaders, which draw seeds from the global
    # RNG; Skip-GANomaly's training defects, drawn from it too, must not move with it.
    weights = {}
    for companion in ("pca", None):
        L.seed_everything(3)
        model = SkipGanomaly(image_size=32, channels=3, companion=companion)
        _trainer(tmp_path).fit(model, datamodule=_datamodule(cache_dir))
        weights[companion] = model.generator.state_dict()
    assert weights["pca"].keys() == weights[None].keys()
    for name, tensor in weights["pca"].items():
        assert torch.equal(tensor, weights[None][name]), name


def test_summed_scores_of_held_out_normals_are_centred() -> None:
    torch.manual_seed(0)
    train, validation = torch.rand(24, 1, 32, 32), torch.rand(12, 1, 32, 32)
    companion = PcaCompanion(dict(DEFAULT_SCORER), tile=32)
    companion.fit(train)
    maps = companion.error_map(validation)
    model_scores = torch.rand(6) * 10 + 3  # the model's held-out scores, any scale
    parts = companion.calibrate(model_scores, maps, threshold_quantile=0.95)
    summed = companion.total(parts)
    # Each term is standardised by the held-out normals, so their sum is centred on 0.
    assert summed.shape == (6,) and abs(float(summed.mean())) < 1e-4
    assert torch.allclose(companion.combine_maps(model_scores, maps[1::2]), summed, atol=1e-5)


def test_reference_of_a_companion_model_is_the_same_sum(cache_dir: Path) -> None:
    datamodule = _datamodule(cache_dir)
    datamodule.setup("test")
    plain = reference_metrics(datamodule, dict(DEFAULT_SCORER))
    summed = reference_metrics(datamodule, dict(DEFAULT_SCORER), companion=True)
    for name, block in summed.items():
        # The plain references are unchanged, the sum with the mean image joins them, and
        # the better reference is the best of the three.
        for reference in ("mean", "pca"):
            assert block[reference]["auroc"] == pytest.approx(plain[name][reference]["auroc"])
        assert "companion" in block and "mean+pca" not in plain[name]
        best = max(block[n]["auroc"] for n in ("mean", "pca", "mean+pca"))
        assert block["auroc"] == pytest.approx(best) and block[block["best"]]["auroc"] == best


def test_unknown_companion_and_anogan_companion_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"model\.companion"):
        Ganomaly(image_size=32, channels=3, companion="knn")
    with pytest.raises(ValueError, match=r"model\.companion"):
        Anogan(image_size=32, channels=3, companion="pca")
    with pytest.raises(ValueError, match=r"model\.validation_defects"):
        Ganomaly(image_size=32, channels=3, companion="auto", validation_defects=False)


def test_auto_sums_the_pca_in_only_where_it_separates_synthetic_defects_better() -> None:
    torch.manual_seed(0)
    companion = PcaCompanion(dict(DEFAULT_SCORER), tile=32, choose=True)
    train, validation = torch.rand(24, 1, 32, 32), torch.rand(12, 1, 32, 32)
    companion.fit(train)
    companion.calibrate(torch.rand(6), companion.error_map(validation), threshold_quantile=0.95)
    normals, noise = torch.randn(40, 2), torch.randn(40, 2)
    # The PCA separates the pasted defects, the model does not: the sum is kept.
    companion.choose_weight(normals, noise + torch.tensor([0.0, 3.0]))
    assert float(companion.pca_weight) == 1.0
    assert float(companion.synthetic_auroc_with_pca) > float(companion.synthetic_auroc_model)
    assert torch.allclose(companion.total(normals), normals.sum(1))
    # The model separates them and the PCA ranks them backwards: the model's score alone.
    companion.choose_weight(normals, noise + torch.tensor([3.0, -3.0]))
    assert float(companion.pca_weight) == 0.0
    assert torch.allclose(companion.total(normals), normals[:, 0])
    summary = companion.summary()
    assert summary["mode"] == "auto" and summary["pca_summed"] is False
    assert f"{float(companion.synthetic_auroc_model):.4f}" in summary["chosen_by"]


def test_auto_choice_is_made_at_validation_and_saved_with_the_checkpoint(
    tmp_path: Path, cache_dir: Path
) -> None:
    datamodule = _datamodule(cache_dir)
    model = Ganomaly(image_size=32, channels=3, companion="auto")
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=datamodule)
    companion = model.companion
    assert companion is not None and companion.choose
    metrics = trainer.callback_metrics
    alone, summed = metrics["val/synthetic_auroc_model"], metrics["val/synthetic_auroc_with_pca"]
    assert float(metrics["val/pca_weight"]) == float(summed > alone)
    # The logged synthetic AUROC is the chosen score's.
    assert float(metrics["val/synthetic_auroc"]) == pytest.approx(float(max(alone, summed)))

    checkpoint = tmp_path / "auto.ckpt"
    trainer.save_checkpoint(checkpoint)
    loaded = load_model(checkpoint).model
    assert loaded.companion is not None and loaded.companion.choose
    for name in ("pca_weight", "synthetic_auroc_model", "synthetic_auroc_with_pca"):
        assert torch.equal(getattr(loaded.companion, name), getattr(companion, name)), name
    # A checkpoint written before the choice existed (companion=pca) still loads, summed.
    state = torch.load(checkpoint, weights_only=False)
    for name in ("pca_weight", "synthetic_auroc_model", "synthetic_auroc_with_pca"):
        del state["state_dict"][f"companion.{name}"]
    state["hyper_parameters"]["companion"] = "pca"
    torch.save(state, tmp_path / "old.ckpt")
    old = load_model(tmp_path / "old.ckpt").model
    assert old.companion is not None and float(old.companion.pca_weight) == 1.0


def test_without_listed_normals_the_companion_stays_out_of_the_score(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Plain DataLoaders list no normal images to fit the PCA on (Skip-SA's default is
    companion=pca): the run warns and scores with the model alone instead of failing."""
    datamodule = _datamodule(cache_dir)
    model = Ganomaly(image_size=32, channels=3, companion="pca")
    with caplog.at_level("WARNING"):
        _trainer(tmp_path).fit(
            model,
            train_dataloaders=datamodule.train_dataloader(),
            val_dataloaders=datamodule.val_dataloader(),
        )
    assert "model.companion=pca needs one of anomaly_gan.data's data modules" in caplog.text
    assert model.companion is not None and not model.companion.fitted
    assert model.fitted_companion is None and torch.isfinite(model.threshold)
    images = next(iter(datamodule.val_dataloader()))["image"]
    model.eval()
    with torch.no_grad():
        own = model.scorer.score(
            model.latent_distance(*model.reconstruct(images)[1:]),
            model.scorer.score_map(images, model.generate(images).reconstruction),
        )
        assert torch.allclose(model(images), own)
    summary = model.companion.summary()
    assert summary["pca_summed"] is False and "plain DataLoaders" in summary["note"]
