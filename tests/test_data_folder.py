"""Generic folder datasets: normal/abnormal/mask folders of a user's own line."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_gan.data import DatasetError, DataWarning, FolderDataModule
from tests.test_data_fixtures import make_folder


def _dm(root: Path, **kwargs) -> FolderDataModule:
    defaults = {
        "abnormal_dir": "bad",
        "mask_dir": "bad_masks",
        "image_size": 8,
        "batch_size": 2,
        "val_fraction": 0.25,
        "cache": False,
    }
    return FolderDataModule(root=str(root), **{**defaults, **kwargs})


def test_folder_split_masks_and_batches(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    dm = _dm(root, category="line1", eval_batch_size=16)
    dm.setup()
    test = dm.test_samples["line1"]
    held_out = [s for s in test if s.label == 0]
    assert len(held_out) == 2 and len(dm.train_samples) + len(dm.val_samples) == 8
    assert not {s.image_path for s in held_out} & {s.image_path for s in dm.train_samples}
    anomalous = [s for s in test if s.label == 1]
    assert [(s.image_path.name, s.mask_path.name) for s in anomalous] == [
        (f"ng_{i:02d}.png", f"ng_{i:02d}_mask.png") for i in range(3)
    ]
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape == (5, 3, 8, 8)
    assert (batch["mask"].sum(dim=(1, 2, 3)) > 0).tolist() == [s.label == 1 for s in test]

    again = _dm(root, category="line1")
    again.setup()
    assert again.test_samples["line1"] == test  # seeded


def test_normal_test_dir_and_absolute_paths(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "line", n_normal=6)
    extra = make_folder(tmp_path / "extra", n_normal=2, n_abnormal=0)
    dm = _dm(root, normal_test_dir=str(extra / "good"), mask_dir=None)
    dm.setup()
    assert len(dm.train_samples) + len(dm.val_samples) == 6
    test = dm.test_samples["folder"]
    assert [s.label for s in test] == [0, 0, 1, 1, 1]
    assert all(s.mask_path is None for s in test)


def test_mask_without_image_and_image_without_mask(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "bad" / "ng_01.png").unlink()
    with pytest.raises(DatasetError, match="has no image") as error:
        _dm(root).setup()
    assert str(root / "bad_masks" / "ng_01_mask.png") in str(error.value)
    (root / "bad_masks" / "ng_01_mask.png").unlink()
    (root / "bad_masks" / "ng_02_mask.png").unlink()
    with pytest.raises(DatasetError, match="has no mask") as error:
        _dm(root).setup()
    assert str(root / "bad" / "ng_02.png") in str(error.value)


def test_missing_folders_and_empty_training_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data\.normal_dir") as error:
        _dm(tmp_path, normal_dir="ok").setup()
    assert str(tmp_path / "ok") in str(error.value)
    (tmp_path / "good").mkdir()
    with pytest.raises(DatasetError, match="No images in") as error:
        _dm(tmp_path).setup()
    assert str(tmp_path / "good") in str(error.value)
    with pytest.raises(ValueError, match=r"data\.download=true is not available"):
        _dm(tmp_path, download=True)
    with pytest.raises(ValueError, match=r"data\.abnormal_dir"):
        _dm(tmp_path, abnormal_dir=None)


def test_normals_only_warns_that_metrics_are_undefined(tmp_path: Path) -> None:
    root = make_folder(tmp_path, n_abnormal=0)
    with pytest.warns(DataWarning, match="normal images only"):
        _dm(root, abnormal_dir=None, mask_dir=None).setup()
