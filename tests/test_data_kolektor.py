"""KolektorSDD: labels from mask pixels, a seeded split of normals grouped by part."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_gan.data import DatasetError, KolektorDataModule
from tests.test_data_fixtures import make_kolektor

DEFECTIVE = {("kos01", "Part2.jpg"), ("kos02", "Part0.jpg"), ("kos05", "Part3.jpg")}


@pytest.fixture(scope="module")
def kolektor_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_kolektor(tmp_path_factory.mktemp("kolektor"))


def _dm(root: Path, **kwargs) -> KolektorDataModule:
    defaults = {"image_size": 16, "batch_size": 4, "val_fraction": 0.2, "cache": False}
    return KolektorDataModule(root=str(root), **{**defaults, **kwargs})


def _parts(samples) -> set[str]:
    return {s.image_path.parent.name for s in samples}


def test_defective_views_are_those_with_nonzero_masks(kolektor_root: Path) -> None:
    dm = _dm(kolektor_root)
    dm.setup()
    test = dm.test_samples["kolektor"]
    anomalous = {(s.image_path.parent.name, s.image_path.name) for s in test if s.label == 1}
    assert anomalous == DEFECTIVE
    assert all(s.mask_path.name.endswith("_label.bmp") for s in test if s.label == 1)
    everything = dm.train_samples + dm.val_samples + test
    assert len(everything) == 8 * 4 and len({s.image_path for s in everything}) == 32


def test_normals_split_by_part_seeded_and_never_on_both_sides(kolektor_root: Path) -> None:
    def split(seed: int) -> tuple[set[str], set[str], set[str]]:
        dm = _dm(kolektor_root, seed=seed, test_normal_fraction=0.25)
        dm.setup()
        test_normals = [s for s in dm.test_samples["kolektor"] if s.label == 0]
        return _parts(dm.train_samples), _parts(dm.val_samples), _parts(test_normals)

    train, val, test = split(0)
    assert len(test) == 2 and len(val) == 1 and len(train) == 5  # of 8 parts
    assert not (train & val) and not (train & test) and not (val & test)
    assert split(0) == (train, val, test)
    assert split(3) != (train, val, test)


def test_grayscale_source_loads_as_one_or_three_channels(kolektor_root: Path) -> None:
    for channels in (1, 3):
        dm = _dm(kolektor_root, channels=channels)
        dm.setup()
        batch = next(iter(dm.train_dataloader()))
        assert batch["image"].shape == (4, channels, 16, 16)
        test_batch = next(iter(dm.test_dataloader()[0]))
        assert test_batch["mask"].shape[1:] == (1, 16, 16)


def test_mask_without_image_and_image_without_mask(tmp_path: Path) -> None:
    root = make_kolektor(tmp_path, n_parts=2, views=2, defective=[(1, 1)])
    (root / "kos02" / "Part1.jpg").unlink()
    with pytest.raises(DatasetError, match="has no image") as error:
        _dm(root).setup()
    assert str(root / "kos02" / "Part1_label.bmp") in str(error.value)
    (root / "kos02" / "Part1_label.bmp").unlink()
    (root / "kos01" / "Part0_label.bmp").unlink()
    with pytest.raises(DatasetError, match="has no mask") as error:
        _dm(root).setup()
    assert str(root / "kos01" / "Part0.jpg") in str(error.value)


def test_layout_errors_and_single_category(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        _dm(tmp_path / "missing").setup()
    assert str(tmp_path / "missing") in str(error.value)
    assert "kosNN" in str(error.value) and "data.download=true" in str(error.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="No kosNN part folders"):
        _dm(tmp_path / "other").setup()
    with pytest.raises(ValueError, match="single category"):
        _dm(tmp_path, test_categories=["kolektor", "bottle"])
