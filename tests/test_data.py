"""Tests for anomaly_gan.data: real files written to tmp_path, no mocks."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from anomaly_gan.data import (
    SYNTHETIC_DEFECT_TYPES,
    AnomalyImageDataset,
    DatasetError,
    MVTecDataModule,
    Sample,
    SyntheticDataModule,
    generate_synthetic_dataset,
)
from anomaly_gan.data import synthetic as synthetic_module

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_SYNTHETIC = {"image_size": 32, "n_train": 4, "n_test_good": 2, "n_test_per_defect": 3}


# ---------------------------------------------------------------------------- helpers
def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _noise_image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def make_tiny_mvtec(
    root: Path, category: str = "widget", *, color: bool = True, n_train: int = 10
) -> Path:
    """A small MVTec-layout category: colour (BGR) or grayscale 20x24 images."""
    rng = np.random.default_rng(0)
    shape = (20, 24, 3) if color else (20, 24)
    base = root / category
    (base / "train" / "good").mkdir(parents=True)
    for i in range(n_train):
        # one upper-case extension: extensions are matched case-insensitively
        _write_image(
            base / "train" / "good" / f"{i:03d}.{'PNG' if i == 7 else 'png'}",
            _noise_image(rng, shape),
        )
    (base / "train" / "good" / "notes.txt").write_text("not an image, ignored")
    for i in range(2):
        _write_image(base / "test" / "good" / f"{i:03d}.png", _noise_image(rng, shape))
        _write_image(base / "test" / "crack" / f"{i:03d}.png", _noise_image(rng, shape))
        mask = np.zeros((20, 24), np.uint8)
        mask[5:12, 6:14] = 128 if i == 0 else 255  # any non-zero value means defect
        _write_image(base / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    _write_image(base / "test" / "hole" / "000.png", _noise_image(rng, shape))  # no mask
    return root


def _first_batch(loader: torch.utils.data.DataLoader) -> dict:
    return next(iter(loader))


# ---------------------------------------------------------------------------- synthetic
def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_synthetic_generation_is_deterministic_and_cached(tmp_path: Path) -> None:
    a = generate_synthetic_dataset(tmp_path / "a", seed=3, **TINY_SYNTHETIC)
    b = generate_synthetic_dataset(tmp_path / "b", seed=3, **TINY_SYNTHETIC)
    c = generate_synthetic_dataset(tmp_path / "c", seed=4, **TINY_SYNTHETIC)
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    n_png = 4 + 2 + 2 * 4 * 3  # train + test good + (image, mask) per defect
    assert sum(name.endswith(".png") for name in files_a) == n_png
    assert files_a == files_b  # byte-identical
    pngs = [name for name in files_a if name.endswith(".png") and "ground_truth" not in name]
    assert all(files_a[name] != files_c[name] for name in pngs)

    # same manifest -> nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    assert generate_synthetic_dataset(tmp_path / "a", seed=3, **TINY_SYNTHETIC) == a
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()} == stamps

    # different arguments -> regenerated in place, no leftovers beside it
    generate_synthetic_dataset(tmp_path / "a", seed=3, **{**TINY_SYNTHETIC, "n_train": 6})
    assert len(list((a / "train" / "good").glob("*.png"))) == 6
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["textile"]


def test_synthetic_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "textile"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        generate_synthetic_dataset(tmp_path, **TINY_SYNTHETIC)
    assert (foreign / "keep.txt").read_text() == "user data"


def test_synthetic_masks_mark_exactly_the_defect(tmp_path: Path) -> None:
    dm = SyntheticDataModule(
        root=str(tmp_path),
        generation_seed=1,
        source_size=32,
        n_train=4,
        n_test_good=2,
        n_test_per_defect=3,
        image_size=32,
    )
    dm.setup("test")
    samples = dm.test_samples["textile"]
    assert {s.defect_type for s in samples} == {"good", *SYNTHETIC_DEFECT_TYPES}
    for sample in samples:
        if sample.label == 0:
            assert sample.mask_path is None
            continue
        mask = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE) > 0
        low, high = synthetic_module.DEFECT_COVERAGE
        assert low <= mask.mean() <= high, sample
        # Rebuild the defect-free texture from the same per-image generator: pixels outside
        # the mask are untouched, pixels inside it changed visibly.
        group = 2 + SYNTHETIC_DEFECT_TYPES.index(sample.defect_type)
        rng = np.random.default_rng([1, group, int(sample.image_path.stem)])
        clean, _ = synthetic_module._woven_texture(rng, 32)
        clean_u8 = np.clip(np.round(clean * 255), 0, 255).astype(np.uint8)[:, :, ::-1]
        image = cv2.imread(str(sample.image_path))
        diff = np.abs(image.astype(int) - clean_u8.astype(int)).max(axis=2)
        assert diff[~mask].max() == 0, sample
        assert diff[mask].mean() > 8, sample


def test_synthetic_datamodule_yields_batches(tmp_path: Path) -> None:
    dm = SyntheticDataModule(
        root=str(tmp_path),
        n_train=12,
        n_test_good=2,
        n_test_per_defect=1,
        source_size=32,
        image_size=16,
        batch_size=4,
        val_fraction=0.25,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_samples), len(dm.val_samples)) == (9, 3)
    batches = list(dm.train_dataloader())
    assert [b["image"].shape for b in batches] == [torch.Size([4, 3, 16, 16])] * 2  # drop_last
    assert dm.hparams["generation_seed"] == 0 and dm.hparams["root"] == str(tmp_path)


# ---------------------------------------------------------------------------- MVTec layout
def test_mvtec_batch_contract(tmp_path: Path) -> None:
    root = make_tiny_mvtec(tmp_path)
    dm = MVTecDataModule(
        root=str(root),
        category="widget",
        image_size=16,
        channels=3,
        batch_size=4,
        eval_batch_size=8,
        val_fraction=0.2,
    )
    dm.setup()
    assert len(dm.train_samples) + len(dm.val_samples) == 10  # .PNG counted, .txt ignored
    assert dm.test_category_names == ["widget"]
    loaders = dm.test_dataloader()
    assert len(loaders) == 1
    batch = _first_batch(loaders[0])
    assert batch["image"].shape == (5, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["image"].min() < -0.5 and batch["image"].max() > 0.5  # really spans the range
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (5,)
    assert batch["mask"].shape == (5, 1, 16, 16) and batch["mask"].dtype == torch.float32
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["defect_type"] == ["crack", "crack", "good", "good", "hole"]
    assert batch["label"].tolist() == [1, 1, 0, 0, 1]
    assert all(isinstance(p, str) and Path(p).is_file() for p in batch["image_path"])
    defect_area = batch["mask"].sum(dim=(1, 2, 3))
    # both cracks (mask values 128 and 255) are binarised; good and mask-less defects are 0
    assert defect_area[0] > 0 and defect_area[0] == defect_area[1]
    assert defect_area[2:].tolist() == [0.0, 0.0, 0.0]


def test_channel_conversion_follows_config(tmp_path: Path) -> None:
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[:] = (200, 100, 50)  # B, G, R
    gray = np.full((8, 8), 90, np.uint8)
    _write_image(tmp_path / "bgr.png", bgr)
    _write_image(tmp_path / "gray.png", gray)
    _write_image(tmp_path / "bgra.png", np.dstack([bgr, np.full((8, 8), 7, np.uint8)]))
    _write_image(tmp_path / "gray16.png", np.full((8, 8), 65535, np.uint16))

    def item(name: str, channels: int) -> torch.Tensor:
        dataset = AnomalyImageDataset([Sample(tmp_path / name, 0, "good")], 4, channels)
        return dataset[0]["image"]

    def norm(value: float) -> float:
        return value / 127.5 - 1.0

    rgb = item("bgr.png", 3)
    assert rgb.shape == (3, 4, 4)
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([norm(50), norm(100), norm(200)]))
    luminance = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[0, 0]
    one = item("bgr.png", 1)
    assert one.shape == (1, 4, 4) and torch.allclose(one, torch.full_like(one, norm(luminance)))
    three = item("gray.png", 3)
    assert three.shape == (3, 4, 4) and torch.allclose(three, torch.full_like(three, norm(90)))
    assert torch.allclose(item("bgra.png", 3), rgb)  # alpha dropped
    assert torch.allclose(item("gray16.png", 1), torch.ones(1, 4, 4))  # 16-bit white -> 1


def test_datamodule_channels_from_source(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path / "colour")
    make_tiny_mvtec(tmp_path / "gray", color=False)
    for source, channels in (("colour", 1), ("gray", 3)):
        dm = MVTecDataModule(
            root=str(tmp_path / source),
            category="widget",
            image_size=8,
            channels=channels,
            batch_size=3,
        )
        dm.setup("fit")
        assert _first_batch(dm.train_dataloader())["image"].shape == (3, channels, 8, 8)


def test_train_val_split_is_disjoint_seeded_and_normal_only(tmp_path: Path) -> None:
    root = str(make_tiny_mvtec(tmp_path, n_train=20))

    def split(seed: int, val_fraction: float = 0.25) -> tuple[list[Path], list[Path]]:
        dm = MVTecDataModule(
            root=root, category="widget", image_size=8, seed=seed, val_fraction=val_fraction
        )
        dm.setup("fit")
        assert all(s.label == 0 and s.defect_type == "good" for s in dm.val_samples)
        return [s.image_path for s in dm.train_samples], [s.image_path for s in dm.val_samples]

    train, val = split(0)
    assert len(val) == 5 and len(train) == 15
    assert not set(train) & set(val) and len(set(train) | set(val)) == 20
    assert split(0) == (train, val)
    assert split(1)[1] != val
    assert len(split(0, val_fraction=0.01)[1]) == 1  # at least one when asked for
    assert split(0, val_fraction=0.0)[1] == []


def test_train_loader_shuffle_is_seeded(tmp_path: Path) -> None:
    root = str(make_tiny_mvtec(tmp_path, n_train=12))

    def order(seed: int) -> list[str]:
        dm = MVTecDataModule(
            root=root, category="widget", image_size=8, batch_size=5, val_fraction=0.0, seed=seed
        )
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert [len(b["image_path"]) for b in batches] == [5, 5]  # last partial batch dropped
        return [p for b in batches for p in b["image_path"]]

    assert order(0) == order(0)
    assert order(0) != order(1)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"channels": 2}, "data.channels"),
        ({"image_size": 0}, "data.image_size"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"batch_size": -1}, "data.batch_size"),
    ],
)
def test_invalid_arguments_name_the_config_key(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        MVTecDataModule(root=str(tmp_path), category="widget", **kwargs)


# ---------------------------------------------------------------------------- error messages
def test_missing_root_names_path_and_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    dm = MVTecDataModule(root=str(missing), category="bottle")
    with pytest.raises(DatasetError) as error:
        dm.setup()
    message = str(error.value)
    assert str(missing.absolute()) in message
    assert "train/good" in message and "data.root=" in message


def test_missing_category_lists_existing_ones(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path, "widget")
    make_tiny_mvtec(tmp_path, "gadget")
    with pytest.raises(DatasetError) as error:
        MVTecDataModule(root=str(tmp_path), category="bottle").setup()
    message = str(error.value)
    assert str(tmp_path / "bottle") in message
    assert "gadget, widget" in message and "data.category=" in message


def test_empty_train_folder_is_named(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path, n_train=0)
    with pytest.raises(DatasetError) as error:
        MVTecDataModule(root=str(tmp_path), category="widget").setup()
    assert str(tmp_path / "widget" / "train" / "good") in str(error.value)


def test_missing_test_folder_is_named(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path)
    test_dir = tmp_path / "widget" / "test"
    for path in sorted(test_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    test_dir.rmdir()
    with pytest.raises(DatasetError, match="Missing folder") as error:
        MVTecDataModule(root=str(tmp_path), category="widget").setup()
    assert str(test_dir) in str(error.value)


def test_truncated_image_names_the_file(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path, n_train=4)
    broken = tmp_path / "widget" / "train" / "good" / "001.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    dm = MVTecDataModule(
        root=str(tmp_path), category="widget", image_size=8, batch_size=4, val_fraction=0.0
    )
    with pytest.raises(DatasetError) as error:
        dm.setup()  # before any loader: a bad file is found before the first step
    assert str(broken) in str(error.value) and "replace" in str(error.value)


# ---------------------------------------------------------------------------- real images
def test_real_magnetic_tile_loads() -> None:
    if not (SHARED_DATA / "magnetic_tile").is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA / 'magnetic_tile'}")
    dm = MVTecDataModule(
        root=os.fspath(SHARED_DATA),
        category="magnetic_tile",
        image_size=64,
        channels=1,
        batch_size=8,
    )
    dm.setup()
    batch = _first_batch(dm.train_dataloader())
    assert batch["image"].shape == (8, 1, 64, 64)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    test = dm.test_samples["magnetic_tile"]
    assert {s.defect_type for s in test} == {"good", "blowhole", "break", "crack", "fray", "uneven"}
    defect = next(s for s in test if s.label == 1 and s.mask_path is not None)
    item = AnomalyImageDataset([defect], 64, 1)[0]
    assert item["mask"].sum() > 0
