"""model.memory=encoder: the generator encoder's features of the training normals, matched in
place, summed into the score; rebuilt at every validation and saved with the weights."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from anomaly_gan.data import SyntheticDataModule
from anomaly_gan.evaluation.reference import (
    _calibrated,
    _error_maps,
    fit_pca,
    normal_images,
    reference_metrics,
    stack_loader,
    standardise_by,
)
from anomaly_gan.feature_memory import (
    FeatureMemory,
    UntrainedMemory,
    greedy_coreset,
    local_features,
)
from anomaly_gan.models import Anogan, Ganomaly, SkipGanomaly
from anomaly_gan.models.checkpoint import load_model
from anomaly_gan.nets.autoencoder import ConvAutoencoder
from anomaly_gan.nets.dcgan import GanomalyGenerator
from anomaly_gan.nets.unet import Pix2PixUnet, SelfAttentionUnet
from anomaly_gan.onnx_export import export_onnx, verify_onnx
from tests.conftest import short_trainer, small_synthetic_module


def _datamodule(cache_dir: Path, image_size: int = 32) -> SyntheticDataModule:
    return small_synthetic_module(cache_dir / f"synthetic_memory_{image_size}", image_size)


_trainer = short_trainer


def _own_scores(model: Ganomaly, images: torch.Tensor) -> torch.Tensor:
    """The model's score with its companion, without the memory."""
    output, latent_in, latent_out = model.reconstruct(images)
    own = model.scorer.score(
        model.latent_distance(latent_in, latent_out),
        model.scorer.score_map(images, output.reconstruction),
    )
    return model.companion.combine(own, images)


@pytest.mark.parametrize(
    "options",
    [{}, {"memory_coreset": 0.5, "memory_neighbourhood": 1}],
    ids=["every_vector_in_place", "coreset_and_neighbourhood"],
)
def test_memory_holds_the_trained_encoders_features_of_training_normals_and_travels(
    tmp_path: Path, cache_dir: Path, options: dict
) -> None:
    datamodule = _datamodule(cache_dir)
    model = Ganomaly(image_size=32, channels=3, companion="pca", memory="encoder", **options)
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=datamodule)

    memory = model.memory
    assert memory is not None and memory.calibrated and torch.isfinite(model.threshold)
    train, validation = normal_images(datamodule)
    model.eval()
    with torch.no_grad():
        features = model.memory_features(train)
        # The bank is the final encoder's features of the 32 training normals, per position
        # (the coreset's share of them where one is asked for).
        kept = 16 if options else 32
        assert memory.bank.shape == (8 * 8, kept, features.shape[1])
        expected = features.flatten(2).permute(2, 0, 1)
        if options:
            index = greedy_coreset(expected, kept).unsqueeze(2)
            expected = torch.gather(expected, 1, index.expand(-1, -1, expected.shape[2]))
        remembered = memory.bank.float() + memory.bank_mean  # kept centred per position
        assert torch.allclose(remembered, expected, atol=2e-3, rtol=1e-2)
        if not options:  # every vector kept and matched in place
            # A training normal finds itself in place (up to float16 rounding); a
            # validation normal does not.
            itself = memory.raw_scores(features).max()
            assert itself < memory.raw_scores(model.memory_features(validation)).min() / 10

    datamodule.setup("test")
    images = next(iter(datamodule.test_dataloader()[0]))["image"]
    with torch.no_grad():
        summed = model(images)
        own = _own_scores(model, images)
        memory_scores = memory.raw_scores(model.memory_features(images))
        assert torch.allclose(summed, memory.combine(own, memory_scores))
        assert not torch.allclose(summed, own)
    summary = memory.summary()
    assert summary["summed"] is True and summary["vectors_per_position"] == kept

    checkpoint = tmp_path / "memory.ckpt"
    trainer.save_checkpoint(checkpoint)
    loaded = load_model(checkpoint)
    assert loaded.model.memory is not None and loaded.model.memory.bank.shape == memory.bank.shape
    with torch.no_grad():
        assert torch.allclose(loaded.model(images), summed, atol=1e-5)
    # The bank and the nearest-neighbour search are part of the exported graph.
    onnx_path = export_onnx(loaded, tmp_path / "memory.onnx")
    assert max(verify_onnx(loaded, onnx_path, batch_sizes=(3,)).values()) <= 1e-4


def test_the_reference_sums_the_same_memory_on_an_untrained_encoder(
    tmp_path: Path, cache_dir: Path
) -> None:
    datamodule = _datamodule(cache_dir)
    model = Ganomaly(image_size=32, channels=3, companion="pca", memory="encoder")
    assert model.untrained_memory() is None  # no memory is summed in before a validation
    _trainer(tmp_path).fit(model, datamodule=datamodule)

    state = torch.random.get_rng_state()
    untrained = model.untrained_memory(seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's randomness untouched
    torch.manual_seed(5)
    initial = Ganomaly(**model.hparams).generator.state_dict()
    for name, tensor in untrained.generator.state_dict().items():
        assert torch.equal(tensor, initial[name]), name  # the architecture at its init
    trained = model.generator.state_dict()["encoder_in.features.0.weight"]
    assert not torch.equal(
        untrained.generator.state_dict()["encoder_in.features.0.weight"], trained
    )

    datamodule.setup("test")
    block = reference_metrics(
        datamodule,
        model.scorer.to_config(),
        companion=True,
        memory=model.untrained_memory(seed=5),
    )["textile"]
    detectors = ("mean", "pca", "mean+pca", "mean+memory", "pca+memory", "mean+pca+memory")
    assert block["auroc"] == max(block[name]["auroc"] for name in detectors)
    assert "memory" in block and "untrained encoder" in block["memory"]
    # The model shows its own reconstruction's map, neither the companion's nor the
    # memory's: each sum localises as the detector in the generator's place.
    shown_as = {"mean+pca": "mean", "mean+memory": "mean", "pca+memory": "pca"}
    shown_as["mean+pca+memory"] = "mean"
    for name, shown in shown_as.items():
        for key in ("pixel_auroc", "aupro"):
            assert block[name][key] == block[shown][key], (name, key)
    assert block["mean"]["pixel_auroc"] != block["pca"]["pixel_auroc"]

    # pca+memory is the PCA reference's score and the untrained memory's, each standardised
    # by the validation normals, with the bank built from the training normals only.
    train, validation = normal_images(datamodule)
    untrained.fit(train)
    assert untrained.memory.bank.shape[1] == train.shape[0]
    test, labels, _ = stack_loader(datamodule.test_dataloader()[0])
    memory_part = standardise_by(untrained.raw_scores(test), untrained.raw_scores(validation))
    pca = fit_pca(train)
    scorer, pca_held_out = _calibrated(model.scorer.to_config(), pca, validation, 0.95)
    pca_part = standardise_by(scorer.score_error_maps(_error_maps(scorer, pca, test)), pca_held_out)
    summed_auroc = binary_auroc(pca_part + memory_part, labels.int()).item()
    assert block["pca+memory"]["auroc"] == pytest.approx(summed_auroc, abs=1e-6)
    # With model.memory_weight the reference weighs its untrained memory the same.
    heavy = model.untrained_memory(seed=5)
    assert heavy.memory.weight == model.memory.weight == 1.0
    heavy.memory.weight = 2.0
    weighed = reference_metrics(datamodule, model.scorer.to_config(), companion=True, memory=heavy)[
        "textile"
    ]
    twice = binary_auroc(pca_part + 2.0 * memory_part, labels.int()).item()
    assert weighed["pca+memory"]["auroc"] == pytest.approx(twice, abs=1e-6)
    without = reference_metrics(datamodule, model.scorer.to_config())
    assert "pca+memory" not in without["textile"]  # only where the model sums a memory in
    assert without["textile"]["pca"]["auroc"] == block["pca"]["auroc"]


def test_the_memory_does_not_change_what_the_model_learns(tmp_path: Path, cache_dir: Path) -> None:
    # Rebuilding the bank at validation runs the encoder in eval mode (BatchNorm statistics
    # untouched) and reads the normals under a forked RNG (Skip-GANomaly's training defects
    # draw from the global one).
    weights = {}
    for memory in ("encoder", None):
        L.seed_everything(3)
        model = SkipGanomaly(image_size=32, channels=3, memory=memory)
        _trainer(tmp_path).fit(model, datamodule=_datamodule(cache_dir))
        weights[memory] = model.generator.state_dict()
    for name, tensor in weights["encoder"].items():
        assert torch.equal(tensor, weights[None][name]), name


def test_matching_is_in_place_and_the_bank_is_a_seeded_capped_subset() -> None:
    features = torch.randn(10, 4, 3, 3)
    memory = FeatureMemory(max_normals=10)
    memory.fit(features)
    assert torch.allclose(memory.raw_scores(features), torch.zeros(10), atol=1e-2)
    # Every vector of this image exists in the bank, but at another position.
    moved = features[:1].roll(1, dims=-1)
    assert memory.raw_scores(moved).item() > 0.5

    capped = FeatureMemory(max_normals=4, seed=1)
    capped.fit(features)
    again = FeatureMemory(max_normals=4, seed=1)
    again.fit(features)
    assert capped.bank.shape == (9, 4, 4) and torch.equal(capped.bank, again.bank)
    # The same 4 images a run keeps in memory for its validations (read_memory_normals).
    kept = capped.kept(features).flatten(2).permute(2, 0, 1)
    assert torch.equal((kept - capped.bank_mean).half(), capped.bank)
    state = capped.state_dict()
    fresh = FeatureMemory(max_normals=4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.bank, capped.bank) and not fresh.calibrated
    with pytest.raises(ValueError, match=r"model\.image_size"):
        capped.raw_scores(torch.randn(2, 4, 5, 5))


def test_the_coreset_keeps_a_share_of_each_positions_vectors_that_covers_the_rest() -> None:
    # Five tight clusters per position, 8 images each: a greedy k-centre coreset of 5 keeps
    # one vector of every cluster, so every training image lies next to the bank; the
    # first 5 images (one per cluster too) or a random 5 would not cover them all.
    torch.manual_seed(0)
    centres = torch.randn(5, 4, 3, 3) * 10
    features = centres.repeat(8, 1, 1, 1) + 0.01 * torch.randn(40, 4, 3, 3)
    memory = FeatureMemory(coreset=0.125)
    memory.fit(features)
    assert memory.bank.shape == (9, 5, 4) and memory.coreset_size(40) == 5
    assert memory.raw_scores(features).max() < 0.1
    # The bank holds the chosen training vectors of each position (float16), nothing else.
    vectors = features.flatten(2).permute(2, 0, 1)
    index = greedy_coreset(vectors, 5)
    assert index.shape == (9, 5) and torch.equal(index, greedy_coreset(vectors, 5))
    chosen = torch.gather(vectors, 1, index.unsqueeze(2).expand(-1, -1, 4))
    assert torch.allclose(memory.bank.float() + memory.bank_mean, chosen, atol=0.02)
    assert all(len(set(row.tolist())) == 5 for row in index)
    assert {int(i) % 5 for i in index[0]} == set(range(5))  # one per cluster
    random_five = FeatureMemory(max_normals=5, seed=3)  # a seeded subset of whole images
    random_five.fit(features)
    assert random_five.raw_scores(features).max() > 1.0

    # Repeated vectors are never chosen twice; a share of 1 keeps the bank as it was.
    repeated = torch.ones(6, 2, 1, 1)
    assert sorted(greedy_coreset(repeated.flatten(2).permute(2, 0, 1), 6)[0].tolist()) == list(
        range(6)
    )
    whole, plain = FeatureMemory(coreset=1.0), FeatureMemory()
    whole.fit(features)
    plain.fit(features)
    assert torch.equal(whole.bank, plain.bank) and whole.bank.shape == (9, 40, 4)
    for bad in (0, 0.0, 1.5, True, "half"):
        with pytest.raises(ValueError, match=r"model\.memory_coreset"):
            FeatureMemory(coreset=bad)

    # The model passes it on, and its no-learning reference keeps the same share.
    model = Ganomaly(image_size=32, channels=3, memory="encoder", memory_coreset=0.25)
    assert model.memory.coreset == 0.25 and model.hparams.memory_coreset == 0.25
    untrained = UntrainedMemory(model.generator, model.memory, torch.device("cpu"))
    untrained.fit(torch.randn(20, 3, 32, 32))
    assert untrained.memory.bank.shape[:2] == (8 * 8, 5)


def test_the_memory_weight_scales_its_standardised_score_in_the_sum() -> None:
    memory = FeatureMemory(weight=0.5)
    memory.calibrate(torch.tensor([1.0, 3.0]), torch.tensor([10.0, 30.0]), torch.tensor([10.0]))
    own, raw = torch.tensor([5.0]), torch.tensor([50.0])
    own_z = (own - memory.own_center) / memory.own_scale
    memory_z = (raw - memory.memory_center) / memory.memory_scale
    assert torch.allclose(memory.combine(own, raw), own_z + 0.5 * memory_z)
    assert memory.summary()["weight"] == 0.5
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match=r"model\.memory_weight"):
            FeatureMemory(weight=bad)
    model = Ganomaly(image_size=32, channels=3, memory="encoder", memory_weight=0.5)
    assert model.memory.weight == 0.5 and model.hparams.memory_weight == 0.5


def test_the_memory_reads_the_encoder_maps_its_strides_name(cache_dir: Path) -> None:
    model = Ganomaly(image_size=64, channels=3, memory="encoder", memory_strides=[8, 16])
    assert model.memory.strides == (8, 16) and model.memory.summary()["strides"] == [8, 16]
    model.eval()
    with torch.no_grad():
        deep = model.memory_features(torch.randn(2, 3, 64, 64))
        maps = model.generator.encoder_maps(torch.randn(1, 3, 64, 64), smallest=4)
    assert deep.shape[-2:] == (8, 8)  # the finer of the two: 1/8 of 64 px
    widths = {m.shape[-1]: m.shape[1] for m in maps}
    assert deep.shape[1] == widths[8] + widths[4]
    untrained = UntrainedMemory(model.generator, model.memory, torch.device("cpu"))
    untrained.fit(torch.randn(6, 3, 64, 64))
    assert untrained.memory.bank.shape[:2] == (8 * 8, 6)
    assert Ganomaly(image_size=64, channels=3, memory="encoder").memory.strides == (4, 8)
    for bad in ([], [4, 4], [3], [1], [True]):
        with pytest.raises(ValueError, match=r"model\.memory_strides"):
            Ganomaly(image_size=64, channels=3, memory="encoder", memory_strides=bad)
    # Strides the encoder has no maps for (1/32 of 64 px: 2 px) are refused when the
    # training normals are read, before any training.
    too_deep = Ganomaly(image_size=64, channels=3, memory="encoder", memory_strides=[16, 32])
    with pytest.raises(ValueError, match=r"model\.memory_strides \[16, 32\]"):
        too_deep.read_memory_normals(_datamodule(cache_dir, image_size=64))


def test_a_neighbourhood_matches_each_vector_with_the_bank_around_its_position() -> None:
    torch.manual_seed(1)
    features = torch.randn(12, 3, 5, 4)  # a map that is not square
    queries = torch.randn(4, 3, 5, 4)
    plain, around = FeatureMemory(), FeatureMemory(neighbourhood=1)
    plain.fit(features)
    around.fit(features)
    assert torch.equal(plain.bank, around.bank)
    # Brute force: every test position against the bank of every position within one row
    # and one column of it.
    stored = (around.bank.float() + around.bank_mean).view(5, 4, 12, 3)
    expected = torch.zeros(4)
    for y in range(5):
        for x in range(4):
            near = stored[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].reshape(-1, 3)
            distance = torch.cdist(queries[:, :, y, x], near).amin(1)
            expected = torch.maximum(expected, distance)
    assert torch.allclose(around.raw_scores(queries), expected, atol=1e-3)
    # An image moved by one column is close to the bank around each position, not in place.
    moved = features[:1].roll(1, dims=-1)
    assert around.raw_scores(moved).item() < plain.raw_scores(moved).item()
    assert around.raw_scores(features).max() < 1e-2  # a training image still matches itself
    for bad in (-1, 0.5, True):
        with pytest.raises(ValueError, match=r"model\.memory_neighbourhood"):
            FeatureMemory(neighbourhood=bad)
    model = Ganomaly(image_size=32, channels=3, memory="encoder", memory_neighbourhood=2)
    assert model.memory.neighbourhood == 2 and model.hparams.memory_neighbourhood == 2


@pytest.mark.parametrize(
    "generator",
    [
        GanomalyGenerator(64, 3, base_width=16),
        Pix2PixUnet(64, 3, base_width=16, skip_levels=()),
        SelfAttentionUnet(64, 3, depth=4, base_width=16),
        ConvAutoencoder(64, 3, base_width=16),
    ],
    ids=["ganomaly", "skip_ganomaly", "skip_sa", "mife"],
)
def test_every_generator_gives_the_memory_its_maps_at_a_quarter_and_an_eighth(
    generator: torch.nn.Module,
) -> None:
    generator.eval()
    with torch.no_grad():
        maps = generator.encoder_maps(torch.randn(2, 3, 64, 64), smallest=8)
        assert maps[-1].shape[-1] == 8
        assert local_features(maps, 64).shape[-2:] == (16, 16)
        with pytest.raises(ValueError, match="side"):
            local_features(maps[:1], 64)


def test_bad_memory_settings_are_refused_and_tiled_frames_leave_it_out(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match=r"model\.memory"):
        Ganomaly(image_size=32, channels=3, memory="knn")
    with pytest.raises(ValueError, match=r"model\.memory_normals"):
        Ganomaly(image_size=32, channels=3, memory="encoder", memory_normals=0)
    with pytest.raises(ValueError, match=r"model=anogan takes no feature memory"):
        Anogan(image_size=32, channels=3, memory="encoder")
    # Frames larger than the model's input (as data.resize=tile gives): the memory, a
    # default, stays out with a warning instead of stopping the run.
    model = Ganomaly(image_size=32, channels=3, companion=None, memory="encoder")
    with caplog.at_level("WARNING"):
        model.read_memory_normals(_datamodule(cache_dir, image_size=64))
    assert "data.resize=tile" in caplog.text and "no memory is summed in" in caplog.text
    model._refit_memory()
    assert model.fitted_memory is None


def test_without_listed_normals_the_memory_stays_out_of_the_score(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datamodule = _datamodule(cache_dir)
    model = Ganomaly(image_size=32, channels=3, companion=None, memory="encoder")
    with caplog.at_level("WARNING"):
        _trainer(tmp_path).fit(
            model,
            train_dataloaders=datamodule.train_dataloader(),
            val_dataloaders=datamodule.val_dataloader(),
        )
    assert "model.memory=encoder needs one of anomaly_gan.data's data modules" in caplog.text
    assert model.fitted_memory is None and torch.isfinite(model.threshold)
    images = next(iter(datamodule.val_dataloader()))["image"]
    model.eval()
    with torch.no_grad():
        output, latent_in, latent_out = model.reconstruct(images)
        own = model.scorer.score(
            model.latent_distance(latent_in, latent_out),
            model.scorer.score_map(images, output.reconstruction),
        )
        assert torch.allclose(model(images), own)
    summary = model.memory.summary()
    assert summary["summed"] is False and "plain DataLoaders" in summary["note"]


def test_a_checkpoint_from_before_the_memory_loads_without_it(
    tmp_path: Path, cache_dir: Path
) -> None:
    """GANomaly's checkpoints written before the memory existed name no ``memory`` and hold
    no memory buffers: they load as trained (no memory), also into a model that has one."""
    datamodule = _datamodule(cache_dir)
    model = Ganomaly(image_size=32, channels=3, memory=None)
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=datamodule)
    path = tmp_path / "before.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["hyper_parameters"]["memory"]  # as written before the key existed
    torch.save(checkpoint, path)

    loaded = load_model(path).model
    assert loaded.memory is None
    images = next(iter(datamodule.val_dataloader()))["image"]
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-6)
    # Resuming it under today's default (memory=encoder): the memory starts empty.
    with_memory = Ganomaly(image_size=32, channels=3, memory="encoder")
    with_memory.load_state_dict(checkpoint["state_dict"], strict=True)
    assert with_memory.memory is not None and with_memory.fitted_memory is None
