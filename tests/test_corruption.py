"""Synthetic training defects: local, seeded, never touching evaluation or the loss target."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from anomaly_gan.corruption import SyntheticDefects
from anomaly_gan.models import Ganomaly, SkipGanomaly
from tests.test_core import RandomImages, _trainer


def _flat_batch(batch: int = 8, size: int = 32) -> Tensor:
    """Smooth images, so every pasted defect shows up as a changed pixel."""
    ramp = torch.linspace(-0.3, 0.3, size)
    return (ramp.view(1, 1, size, 1) + 0 * ramp.view(1, 1, 1, size)).repeat(batch, 1, 1, 1)


@pytest.mark.parametrize("kind", ["blob", "line", "patch", "noise", "shift"])
def test_each_kind_changes_a_small_region_and_keeps_the_range(kind: str) -> None:
    images = _flat_batch() if kind != "patch" else torch.rand(8, 3, 32, 32) * 2 - 1
    corrupt = SyntheticDefects(probability=1.0, max_defects=1, kinds=(kind,))
    out = corrupt(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert out.min() >= -1.0 and out.max() <= 1.0
    changed = (out - images).abs().amax(dim=1) > 1e-6  # (B, H, W)
    per_image = changed.flatten(1).float().mean(dim=1)
    assert (per_image > 0).sum() >= 6, "almost every image must get its defect"
    assert per_image.max() < 0.5, "a defect is local, not a whole-image change"


def test_noise_disturbs_texture_without_moving_brightness() -> None:
    """A ``noise`` defect raises the local spread while the image's mean stays put, unlike
    a blob, which moves it: the kind for wear or a rough spot rather than a stain."""
    images = torch.zeros(16, 1, 64, 64)
    images[..., ::2] = 0.2  # a fine texture of std 0.1, so the noise has a scale to follow
    images -= 0.1
    noisy = SyntheticDefects(probability=1.0, max_defects=1, kinds=("noise",))
    out = noisy(images, torch.Generator().manual_seed(0))
    change = out - images
    assert change.abs().amax() > 0.03, "the noise must show"
    assert change.abs().amax() < 1.0, "its size follows the image's own std (0.1), not the range"
    changed = change.abs() > 0
    local_mean = change.sum(dim=(1, 2, 3)) / changed.sum(dim=(1, 2, 3)).clamp(min=1)
    assert local_mean.abs().max() < 0.05, "zero-mean noise: brightness is not the cue"
    assert local_mean.mean().abs() < 0.01
    blob = SyntheticDefects(probability=1.0, max_defects=1, kinds=("blob",))
    blob_change = blob(images, torch.Generator().manual_seed(0)) - images
    blob_mean = blob_change.sum(dim=(1, 2, 3)) / (blob_change != 0).sum(dim=(1, 2, 3)).clamp(min=1)
    assert blob_mean.abs().min() > 0.05


def test_label_free_choices_use_noise_training_the_three_shapes() -> None:
    from anomaly_gan.corruption import KINDS, TRAINING_KINDS, VALIDATION_KINDS

    assert SyntheticDefects().kinds == TRAINING_KINDS == ("blob", "line", "patch")
    assert VALIDATION_KINDS == ("noise",) and set(VALIDATION_KINDS) <= set(KINDS)
    model = Ganomaly(image_size=32, channels=3)
    assert model.validation_defects is not None
    assert model.validation_defects.kinds == VALIDATION_KINDS


def test_input_is_not_modified_and_probability_zero_is_identity() -> None:
    images = torch.rand(6, 1, 32, 32) * 2 - 1
    before = images.clone()
    SyntheticDefects(probability=1.0)(images, torch.Generator().manual_seed(1))
    assert torch.equal(images, before)
    assert torch.equal(SyntheticDefects(probability=0.0)(images), images)


def test_same_seed_same_defects_other_seed_other_defects() -> None:
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    corrupt = SyntheticDefects(probability=1.0)
    first = corrupt(images, torch.Generator().manual_seed(3))
    again = corrupt(images, torch.Generator().manual_seed(3))
    other = corrupt(images, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"probability": 1.5}, "probability"),
        ({"max_defects": 0}, "max_defects"),
        ({"min_size": 0.5, "max_size": 0.1}, "min_size"),
        ({"max_contrast": 3.0}, "max_contrast"),
        ({"kinds": ["blob", "smudge"]}, "kinds"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"model.corruption.*{key}"):
        SyntheticDefects(**kwargs)


class _RecordingSkipGanomaly(SkipGanomaly):
    """Keeps what the generator was fed during training steps (real model, real training)."""

    def generate(self, image: Tensor):  # type: ignore[override]
        if self.training:
            self.seen.append(image.detach().clone())
        return super().generate(image)


def test_generator_sees_corrupted_input_but_learns_the_clean_target(tmp_path: Path) -> None:
    model = _RecordingSkipGanomaly(
        image_size=32, channels=3, corruption={"probability": 1.0, "kinds": ["blob"]}
    )
    model.seen = []
    dataset = RandomImages(n=8)
    _trainer(tmp_path, max_steps=4, enable_checkpointing=False, limit_val_batches=0).fit(
        model, DataLoader(dataset, batch_size=8)
    )
    assert len(model.seen) == 2  # max_steps counts both optimizers' steps
    for fed in model.seen:
        assert not torch.equal(fed, dataset.images), "the generator must see corrupted input"
    # The corruption setting travels in the checkpoint hyper-parameters as a plain dict.
    assert model.hparams["corruption"]["kinds"] == ["blob"]


def test_evaluation_never_corrupts(tmp_path: Path) -> None:
    clean = Ganomaly(image_size=32, channels=3).eval()
    corrupting = Ganomaly(image_size=32, channels=3, corruption={"probability": 1.0}).eval()
    corrupting.load_state_dict(clean.state_dict())
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(clean(images), corrupting(images))


def test_skip_ganomaly_repairs_defects_by_default_and_reloads_either_way() -> None:
    """Skip-GANomaly's default (chosen on four real sets) pastes defects into its training
    input; ``corruption=None`` (``model/corruption=none``, the paper config) trains on clean
    inputs, and each setting survives the checkpoint's hparams round trip."""
    default = SkipGanomaly(image_size=32, channels=3)
    assert default.corruption == SyntheticDefects()
    clean = SkipGanomaly(image_size=32, channels=3, corruption=None)
    assert clean.corruption is None and clean.hparams["corruption"] is None
    for model in (default, clean):
        assert SkipGanomaly(**model.hparams).corruption == model.corruption
    # The other architectures keep clean inputs unless asked.
    assert Ganomaly(image_size=32, channels=3).corruption is None
