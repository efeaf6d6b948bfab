"""The shared GAN core: batch-independent scores, D re-initialisation, non-finite losses."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.image import structural_similarity_index_measure

from anomaly_gan.losses import GeneratorLoss
from anomaly_gan.models import Ganomaly, NonFiniteLossError, SkipSelfAttentionGan
from anomaly_gan.nets import DepthwiseSeparableConv2d, dcgan_init
from anomaly_gan.scoring import AnomalyScore


class RandomImages(Dataset):
    """Real tensors in the batch format of the data modules; ``poison`` makes them NaN."""

    def __init__(self, n: int = 16, size: int = 32, channels: int = 3) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, channels, size, size, generator=generator) * 2 - 1
        self.poison = False

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index].clone()
        if self.poison:
            image[:] = float("nan")
        return {
            "image": image,
            "label": torch.tensor(0),
            "mask": torch.zeros(1, *image.shape[1:]),
            "image_path": f"img{index}.png",
            "defect_type": "good",
        }


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kwargs})


def _trained_model(tmp_path: Path, scorer: AnomalyScore) -> Ganomaly:
    model = Ganomaly(image_size=32, channels=3, scorer=scorer)
    loader = DataLoader(RandomImages(), batch_size=8)
    _trainer(tmp_path, max_steps=4, enable_checkpointing=False, limit_val_batches=0).fit(
        model, loader
    )
    return model.eval()


@pytest.mark.parametrize(
    "scorer",
    [AnomalyScore(), AnomalyScore(0.0, 1.0, "l1"), AnomalyScore(0.1, 0.9, "l2")],
    ids=["latent", "reconstruction_l1", "mix"],
)
def test_eval_score_does_not_depend_on_batch_mates(tmp_path: Path, scorer: AnomalyScore) -> None:
    model = _trained_model(tmp_path, scorer)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        alone = torch.cat([model(images[i : i + 1]) for i in range(6)])
        together = model(images)
        reordered = model(images.flip(0)).flip(0)
        with_others = model(torch.cat([images, torch.randn(5, 3, 32, 32) * 3]))[:6]
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reordered, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_others, alone, rtol=1e-5, atol=1e-6)
    # The check has teeth: in train mode (the GANomaly reference code's test-time setting;
    # docs/reference-code.md, section 5)
    # BatchNorm uses batch statistics and the same image scores differently.
    model.train()
    with torch.no_grad():
        in_train_mode = model(torch.cat([images, torch.randn(5, 3, 32, 32) * 3]))[:6]
    assert not torch.allclose(in_train_mode, alone, rtol=1e-3)


def test_dcgan_init_reaches_every_layer() -> None:
    model = Ganomaly(image_size=64, channels=3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert convs and norms
    for conv in convs:
        assert conv.weight.mean().abs() < 0.01 and 0.015 < conv.weight.std() < 0.025
    for norm in norms:
        assert (norm.weight - 1).abs().max() < 0.15 and torch.all(norm.bias == 0)


def test_depthwise_separable_convs_keep_a_spread_batchnorm_can_see() -> None:
    """With DCGAN's N(0, 0.02) a depthwise-separable block shrank its input's variance
    ~1e-4-fold, below BatchNorm's eps, and eval-mode reconstructions collapsed."""
    torch.manual_seed(0)
    model = SkipSelfAttentionGan(image_size=32, channels=3, base_width=16)
    dscs = [m for m in model.modules() if isinstance(m, DepthwiseSeparableConv2d)]
    assert dscs
    for dsc in dscs:
        assert float(dsc.depthwise.weight.detach().std()) > 0.1  # PyTorch default, not 0.02
    first_dsc = model.generator.encoder[0][0][0]
    with torch.no_grad():
        spread = float(first_dsc(torch.randn(8, 3, 32, 32)).var())
    assert spread > 100 * 1e-5  # BatchNorm2d eps
    # every other conv of both networks still gets the DCGAN init
    dense = [
        m for m in model.discriminator.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
    ]
    assert all(
        0.015 < float(m.weight.detach().std()) < 0.025 for m in dense if m.weight.numel() > 500
    )


def test_discriminator_reinitialised_below_floor(tmp_path: Path) -> None:
    model = Ganomaly(image_size=32, channels=3, d_reinit_floor=1e9)  # every step is "too good"
    before = [p.detach().clone() for p in model.discriminator.parameters()]
    trainer = _trainer(tmp_path, max_steps=6, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, DataLoader(RandomImages(), batch_size=8))
    assert model.d_reinit_count == 3  # max_steps counts both optimizers: 3 batches
    assert trainer.logged_metrics["train/d_reinit"] == 3
    d_opt = trainer.optimizers[0]
    assert len(d_opt.state) == 0, "Adam moments of the discarded discriminator were kept"
    # Fresh DCGAN init each time: weights moved away from the first init and keep its scale.
    after = list(model.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    first_conv = model.discriminator.features[0].weight.detach()
    assert 0.015 < float(first_conv.std()) < 0.025


def test_no_reinitialisation_with_floor_zero(tmp_path: Path) -> None:
    model = Ganomaly(image_size=32, channels=3, d_reinit_floor=0)
    trainer = _trainer(tmp_path, max_steps=4, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, DataLoader(RandomImages(), batch_size=8))
    assert model.d_reinit_count == 0


class PoisonAtEpoch(Callback):
    def __init__(self, dataset: RandomImages, epoch: int) -> None:
        self.dataset, self.epoch = dataset, epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dataset.poison = trainer.current_epoch >= self.epoch


def test_non_finite_loss_stops_with_named_term_and_keeps_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    dataset = RandomImages()
    val_dataset = RandomImages(n=8)
    # Plain DataLoaders list no normals to fit a PCA companion or a feature memory on:
    # unfitted ones keep NaN buffers ("not fitted"), which are not the weights this test
    # checks.
    model = Ganomaly(image_size=32, channels=3, companion=None, memory=None)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[checkpoint, PoisonAtEpoch(dataset, 1)])
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, DataLoader(dataset, batch_size=8), DataLoader(val_dataset, batch_size=8))
    message = str(error.value)
    assert "train/d=nan" in message
    assert "global step 4" in message and "epoch 1" in message
    assert "last.ckpt" in message
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert all(torch.isfinite(p).all() for p in model.parameters()), "bad update was applied"


def test_deferred_checks_stop_before_the_next_checkpoint(tmp_path: Path) -> None:
    """The accelerator path, forced on CPU: losses read every log_every_n_steps (here never
    within the run) and before each validation and checkpoint. The error names the first
    bad step, and no checkpoint holds weights from after it."""
    dataset = RandomImages()
    model = Ganomaly(
        image_size=32, channels=3, companion=None, memory=None
    )  # plain DataLoaders (above)
    model.sync_free_checks = True
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(
        tmp_path,
        max_epochs=3,
        log_every_n_steps=50,
        callbacks=[checkpoint, PoisonAtEpoch(dataset, 1)],
    )
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, DataLoader(dataset, batch_size=8), DataLoader(RandomImages(8), 8))
    message = str(error.value)
    assert "train/d=nan at global step 4 (epoch 1, batch 0)" in message
    assert "Found at global step 8" in message and "last.ckpt" in message
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4  # saved after epoch 0, the last good weights
    tensors = state["state_dict"].values()
    assert all(torch.isfinite(v).all() for v in tensors if v.is_floating_point())


@pytest.mark.parametrize(("every", "expected"), [(1, 3), (2, 2)])
def test_deferred_discriminator_reinit(tmp_path: Path, every: int, expected: int) -> None:
    """Deferred, D is re-initialised at most once per read: every step with
    log_every_n_steps=1 (as on CPU); with 2, after batch 2 and at the end of training."""
    model = Ganomaly(image_size=32, channels=3, d_reinit_floor=1e9)
    model.sync_free_checks = True
    trainer = _trainer(
        tmp_path,
        max_steps=6,
        log_every_n_steps=every,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(RandomImages(n=24), batch_size=8))
    assert model.d_reinit_count == expected
    assert len(trainer.optimizers[0].state) == 0, "Adam moments of the old D were kept"


def test_deferred_training_step_reads_nothing_from_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No host read (item, bool, float, tolist) from the core's code inside training_step
    when the checks are deferred: a GPU step would wait for the device at each one."""
    model = Ganomaly(image_size=32, channels=3)
    model.sync_free_checks = True
    ours = ("models/core.py", "models/step_checks.py", "losses.py", "scoring.py")
    reads: list[str] = []
    inside = [False]

    def recording(name: str) -> Any:
        original = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: Any) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            if inside[0] and caller.endswith(ours):
                reads.append(f"{name} in {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args)

        return read

    for name in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, recording(name))
    step = model.training_step

    def watched(*args: Any) -> None:
        inside[0] = True
        try:
            step(*args)
        finally:
            inside[0] = False

    monkeypatch.setattr(model, "training_step", watched)
    trainer = _trainer(
        tmp_path, max_steps=4, log_every_n_steps=50, enable_checkpointing=False, limit_val_batches=0
    )
    trainer.fit(model, DataLoader(RandomImages(), batch_size=8))
    assert reads == []
    assert trainer.global_step == 4


def test_threshold_travels_in_checkpoint(tmp_path: Path) -> None:
    model = Ganomaly(image_size=32, channels=3, threshold_quantile=0.9)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[checkpoint])
    trainer.fit(
        model,
        DataLoader(RandomImages(), batch_size=8),
        DataLoader(RandomImages(n=10), batch_size=4),
    )
    assert math.isfinite(float(model.threshold))
    restored = Ganomaly.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert float(restored.threshold) == pytest.approx(float(model.threshold))
    assert restored.hparams.threshold_quantile == 0.9


def test_dcgan_init_applies_to_linear_and_skips_parameterless() -> None:
    layer = torch.nn.Linear(200, 300)
    dcgan_init(layer)
    assert 0.015 < float(layer.weight.detach().std()) < 0.025 and torch.all(layer.bias == 0)
    dcgan_init(torch.nn.ReLU())  # no parameters: nothing to do, no error


# ------------------------------------------------------------------------------ the scorer
def test_scorer_buffers_are_model_state() -> None:
    model = Ganomaly(image_size=32, channels=3)
    state = model.state_dict()
    assert tuple(state["scorer.map_mean"].shape) == (1, 1, 32, 32)
    assert tuple(state["scorer.map_std"].shape) == (1, 1, 32, 32)
    assert math.isnan(float(state["scorer.threshold"]))
    assert not {"threshold", "map_mean", "map_std"} & set(state)
    assert model.threshold is model.scorer.threshold
    assert model.hparams["scorer"] == model.scorer.to_config()
    assert type(model.hparams["scorer"]) is dict
    # Each model owns its scorer: calibrating one leaves the class default untouched.
    model.scorer.threshold.fill_(1.0)
    assert math.isnan(float(Ganomaly(image_size=32, channels=3).threshold))


def test_scorer_calibrate_even_odd_split() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(9, 1, 4, 4, generator=generator)
    latent = torch.rand(9, generator=generator)
    scorer = AnomalyScore(0.5, 1.0, "l1", normalize_map=True, image_size=4)
    scores = scorer.calibrate(maps, latent, 0.9)
    # Statistics from the even-numbered images, threshold from the odd-numbered ones.
    reference = maps[0::2]
    spread = reference.std(dim=0, keepdim=True)
    std = spread.clamp_min(spread.mean() * 0.1)
    torch.testing.assert_close(scorer.map_mean, reference.mean(dim=0, keepdim=True))
    torch.testing.assert_close(scorer.map_std, std)
    held_out = (maps[1::2] - scorer.map_mean) / std
    expected = 0.5 * latent[1::2] + held_out.flatten(1).mean(dim=1)
    torch.testing.assert_close(scores, expected)
    assert float(scorer.threshold) == pytest.approx(
        float(torch.quantile(expected.double(), 0.9)), rel=1e-6
    )
    assert scorer.map_scale() == pytest.approx(float(scorer.threshold))  # weight 1

    # Without standardisation every image sets the threshold and the maps stay identity.
    plain = AnomalyScore(0.0, 2.0, "l1", image_size=4)
    assert plain.calibrate(maps, latent, 0.9).shape == (9,)
    assert torch.equal(plain.map_mean, torch.zeros(1, 1, 4, 4))
    assert plain.map_scale() == pytest.approx(float(plain.threshold) / 2)
    # A latent-only score has no map scale.
    assert AnomalyScore().map_scale() is None


def test_scorer_std_floor_bounds_quiet_pixels() -> None:
    # One pixel never varies over the normals: its std is floored at map_std_floor × mean.
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(8, 1, 4, 4, generator=generator)
    maps[:, :, 0, 0] = 0.3
    spread = maps[0::2].std(dim=0, keepdim=True)
    for floor in (0.1, 0.5):
        scorer = AnomalyScore(0, 1, "l1", normalize_map=True, map_std_floor=floor, image_size=4)
        scorer.calibrate(maps, torch.zeros(8), 0.9)
        assert float(scorer.map_std[0, 0, 0, 0]) == pytest.approx(float(spread.mean()) * floor)
        assert float(scorer.map_std.min()) >= float(spread.mean()) * floor * (1 - 1e-6)
    # A huge floor leaves one number for every pixel: only the per-pixel mean is removed.
    mean_only = AnomalyScore(0, 1, "l1", normalize_map=True, map_std_floor=1e6, image_size=4)
    mean_only.calibrate(maps, torch.zeros(8), 0.9)
    assert torch.unique(mean_only.map_std).numel() == 1
    assert mean_only.to_config()["map_std_floor"] == 1e6
    with pytest.raises(ValueError, match="map_std_floor must be > 0"):
        AnomalyScore(0, 1, normalize_map=True, map_std_floor=0)


def test_scorer_without_image_size_takes_the_maps_shape() -> None:
    maps = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    scorer = AnomalyScore(0.0, 1.0, "l1", normalize_map=True)
    assert tuple(scorer.map_mean.shape) == (1, 1, 1, 1)  # broadcasting identity
    scorer.calibrate(maps, torch.zeros(8), 0.95)
    assert tuple(scorer.map_mean.shape) == (1, 1, 6, 6)
    fresh = AnomalyScore(0.0, 1.0, "l1", normalize_map=True)
    fresh.load_state_dict(scorer.state_dict())
    assert torch.equal(fresh.map_std, scorer.map_std)
    assert torch.equal(fresh.threshold, scorer.threshold)


@pytest.mark.parametrize("drop_map_stats", [False, True], ids=["legacy", "pre_standardisation"])
def test_checkpoints_with_top_level_scorer_buffers_still_load(
    tmp_path: Path, drop_map_stats: bool
) -> None:
    scorer = AnomalyScore(0, 1, "l1", map_sigma=1, normalize_map=True)
    model = Ganomaly(image_size=32, channels=3, scorer=scorer)
    loader = DataLoader(RandomImages(n=16), batch_size=8)
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=2)
    trainer.fit(model, loader, loader)
    current = tmp_path / "current.ckpt"
    trainer.save_checkpoint(current)
    # Rewrite it as an older version wrote it: the buffers at the top of the state dict.
    checkpoint = torch.load(current, weights_only=True)
    state = checkpoint["state_dict"]
    for name in ("threshold", "map_mean", "map_std"):
        value = state.pop(f"scorer.{name}")
        if name == "threshold" or not drop_map_stats:
            state[name] = value
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)

    restored = Ganomaly.load_from_checkpoint(old, weights_only=True).eval()
    assert float(restored.threshold) == float(model.threshold)
    if drop_map_stats:  # identity statistics, as before map standardisation existed
        assert torch.equal(restored.scorer.map_mean, torch.zeros(1, 1, 32, 32))
        assert torch.equal(restored.scorer.map_std, torch.ones(1, 1, 32, 32))
    else:
        assert torch.equal(restored.scorer.map_mean, model.scorer.map_mean)
        images = next(iter(loader))["image"]
        with torch.no_grad():
            torch.testing.assert_close(restored(images), model.eval()(images))


def test_validation_defects_leave_training_and_calibration_untouched(tmp_path: Path) -> None:
    """Scoring pasted defects at validation is an extra measurement: with it on or off the
    same seed gives the same weights, threshold and map statistics."""
    states = []
    for validation_defects in (True, False):
        L.seed_everything(0)
        model = Ganomaly(
            image_size=32,
            channels=3,
            validation_defects=validation_defects,
            companion=None,
            memory=None,
        )
        trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
        loader = DataLoader(RandomImages(n=24), batch_size=8)
        trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
        assert ("val/synthetic_auroc" in trainer.callback_metrics) == validation_defects
        states.append(model.state_dict())
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name


def test_ssim_term_is_off_by_default_and_asks_for_structure_when_on() -> None:
    """``loss.w_ssim`` adds 1 - SSIM(x_hat, x) (Bergmann et al. 2019); 0 adds nothing."""
    torch.manual_seed(0)
    image = torch.rand(4, 3, 32, 32) * 4 - 2  # per-image normalised: no fixed range
    blurred = torch.nn.functional.avg_pool2d(image, 5, stride=1, padding=2)
    shifted = image + 0.05  # same structure, slightly brighter
    zero = torch.zeros(())
    plain = GeneratorLoss()
    assert "g_ssim" not in plain.terms(image, blurred, zero, zero, zero, zero, zero)

    loss = GeneratorLoss(w_ssim=3.0)
    reconstruction = blurred.clone().requires_grad_(True)
    terms = loss.terms(image, reconstruction, zero, zero, zero, zero, zero)
    low, span = float(image.min()), float(image.max() - image.min())
    expected = 1 - structural_similarity_index_measure(blurred - low, image - low, data_range=span)
    assert math.isclose(float(terms["g_ssim"].detach()), float(expected), rel_tol=1e-5)
    total = loss.total(terms)
    assert math.isclose(
        float(total.detach()),
        float(plain.total(terms).detach() + 3.0 * terms["g_ssim"].detach()),
        rel_tol=1e-6,
    )
    total.backward()
    assert reconstruction.grad is not None and reconstruction.grad.abs().sum() > 0
    # Blur loses the texture SSIM compares; a small brightness shift keeps it.
    same = loss.terms(image, image, zero, zero, zero, zero, zero)["g_ssim"]
    brighter = loss.terms(image, shifted, zero, zero, zero, zero, zero)["g_ssim"]
    assert float(same) < 1e-4 < float(brighter) < 0.05 < float(terms["g_ssim"].detach())
    with pytest.raises(ValueError, match=r"loss\.w_ssim must be >= 0"):
        GeneratorLoss(w_ssim=-1.0)


def test_synthetic_auroc_pastes_defects_only_into_the_held_out_validation_normals(
    tmp_path: Path,
) -> None:
    """``val/synthetic_auroc`` compares the clean validation normals the calibration held out
    with defect copies of *the same* images. Copies of the images the per-pixel statistics
    came from would score optimistically low (on a 5-image set that alone gave 0.1–0.3)."""
    from anomaly_gan.models.core import VALIDATION_DEFECT_SEED
    from anomaly_gan.scoring import separation_auroc

    dataset = RandomImages(n=6)
    images = dataset.images
    L.seed_everything(0)
    model = Ganomaly(image_size=32, channels=3)
    assert model.scorer.held_out(6) == slice(1, None, 2) and model.scorer.held_out(3) == slice(None)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    loader = DataLoader(dataset, batch_size=6)  # one batch: one defect seed
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    model.eval()
    seeded = torch.Generator().manual_seed(VALIDATION_DEFECT_SEED)
    with torch.no_grad():
        defective = model.validation_defects(images, generator=seeded)
        clean, copies = model(images[1::2]), model(defective[1::2])
        every_copy = model(defective)
    logged = float(trainer.callback_metrics["val/synthetic_auroc"])
    assert logged == pytest.approx(separation_auroc(clean, copies), abs=1e-6)
    assert separation_auroc(clean, every_copy) != pytest.approx(logged, abs=1e-6)
