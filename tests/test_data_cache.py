"""Decoded-image cache (memory + disk), corrupt files, per-worker seeding of augmentations."""

from __future__ import annotations

import os
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from anomaly_gan.data import (
    AnomalyImageDataset,
    DatasetError,
    DataWarning,
    ImageCache,
    MVTecDataModule,
    Sample,
    build_transform,
    seed_worker,
)
from anomaly_gan.data import dataset as dataset_module
from tests.test_data import make_tiny_mvtec
from tests.test_data_fixtures import write_image


def _dm(root: Path, cache_dir: Path | None, **kwargs) -> MVTecDataModule:
    defaults = {
        "category": "widget",
        "image_size": 8,
        "batch_size": 4,
        "val_fraction": 0.0,
        "cache_dir": None if cache_dir is None else str(cache_dir),
    }
    return MVTecDataModule(root=str(root), **{**defaults, **kwargs})


def _epoch(loader: DataLoader) -> dict[str, torch.Tensor]:
    return {p: img for b in loader for p, img in zip(b["image_path"], b["image"], strict=True)}


def _boom(*args: object, **kwargs: object) -> None:
    raise AssertionError("decoded an image although it should come from the cache")


def test_later_epochs_do_no_decoding(tmp_path: Path) -> None:
    root = make_tiny_mvtec(tmp_path / "data", n_train=12)
    dm = _dm(root, tmp_path / "cache")
    dm.setup()
    loader = dm.train_dataloader()
    first = _epoch(loader)
    assert dm.image_cache is not None and dm.image_cache.stats.decodes == 12
    second = _epoch(loader)
    assert dm.image_cache.stats.decodes == 12 and dm.image_cache.stats.memory_hits == 12
    assert first.keys() == second.keys()
    assert all(torch.equal(first[p], second[p]) for p in first)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 12
    assert not list((tmp_path / "cache").rglob(".tmp-*"))  # atomic writes leave no temp files


def test_cached_pixels_equal_the_uncached_pipeline(tmp_path: Path) -> None:
    root = make_tiny_mvtec(tmp_path / "data")
    for channels in (1, 3):
        cached = _dm(root, tmp_path / "cache", channels=channels, eval_batch_size=16)
        cached.setup()
        batch = next(iter(cached.test_dataloader()[0]))
        transform = build_transform(8, channels)
        for path, image in zip(batch["image_path"], batch["image"], strict=True):
            raw = dataset_module.read_image(Path(path), channels)
            assert torch.equal(image, transform(image=raw)["image"])


def _worker_epoch(dm: MVTecDataModule) -> dict[str, torch.Tensor]:
    """One epoch through 2 persistent workers; the loader (and its workers) die on return."""
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.worker_init_fn is seed_worker
    return {p: img.clone() for p, img in _epoch(loader).items()}


def test_disk_cache_is_shared_with_fresh_processes_and_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tiny_mvtec(tmp_path / "data", n_train=8)
    expected = _worker_epoch(_dm(root, tmp_path / "cache", num_workers=2))
    # New datamodule, new worker processes (forked after the patch): every image must come
    # from the disk cache, since decoding now fails.
    monkeypatch.setattr(dataset_module, "read_image", _boom)
    got = _worker_epoch(_dm(root, tmp_path / "cache", num_workers=2))
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[p], expected[p]) for p in got)


def test_cache_key_follows_file_and_settings(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", np.full((10, 10, 3), 50, np.uint8))
    cache = ImageCache(tmp_path / "cache")
    dataset = AnomalyImageDataset([Sample(path, 0, "good")], 4, 3, cache=cache)
    assert dataset[0]["image"].mean() == pytest.approx(50 / 127.5 - 1)
    # rewrite the file (new content, new mtime): a new key, decoded again
    write_image(path, np.full((10, 10, 3), 200, np.uint8))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fresh = AnomalyImageDataset([Sample(path, 0, "good")], 4, 3, cache=ImageCache(cache.directory))
    assert fresh[0]["image"].mean() == pytest.approx(200 / 127.5 - 1)
    other_size = AnomalyImageDataset([Sample(path, 0, "good")], 6, 3, cache=fresh.cache)
    assert other_size[0]["image"].shape == (3, 6, 6)
    assert len(list(cache.directory.rglob("*.npy"))) == 3


def test_damaged_cache_file_is_ignored_and_rewritten(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", np.full((10, 10), 90, np.uint8))
    cache = ImageCache(tmp_path / "cache")
    AnomalyImageDataset([Sample(path, 0, "good")], 4, 1, cache=cache)[0]
    (entry,) = list(cache.directory.rglob("*.npy"))
    entry.write_bytes(b"garbage")
    again = AnomalyImageDataset([Sample(path, 0, "good")], 4, 1, cache=ImageCache(cache.directory))
    assert again[0]["image"].mean() == pytest.approx(90 / 127.5 - 1)
    assert again.cache is not None and again.cache.stats.decodes == 1
    assert entry.stat().st_size > len(b"garbage")


def test_unwritable_cache_dir_warns_and_continues(tmp_path: Path, caplog) -> None:
    path = write_image(tmp_path / "a.png", np.full((10, 10), 90, np.uint8))
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    dataset = AnomalyImageDataset([Sample(path, 0, "good")], 4, 1, cache=ImageCache(blocker))
    assert dataset[0]["image"].shape == (1, 4, 4)
    assert "Cannot write the image cache" in caplog.text


# ---------------------------------------------------------------------------- corrupt files
def _corrupt_some(root: Path) -> list[Path]:
    good = root / "widget" / "train" / "good"
    png = good / "001.png"
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    jpeg = good / "002.jpg"
    write_image(jpeg, np.full((20, 24, 3), 128, np.uint8))
    jpeg.write_bytes(jpeg.read_bytes()[:-40])  # OpenCV would decode this with a warning only
    garbage = root / "widget" / "test" / "good" / "009.png"
    garbage.write_bytes(b"not an image at all")
    return [png, jpeg, garbage]


def test_corrupt_files_stop_setup_naming_every_one(tmp_path: Path) -> None:
    root = make_tiny_mvtec(tmp_path / "data", n_train=4)
    bad = _corrupt_some(root)
    dm = _dm(root, None, cache=False)
    with pytest.raises(DatasetError, match=r"3 of 11 samples .* cannot be used") as error:
        dm.setup()
    message = str(error.value)
    assert all(str(path) in message for path in bad)
    assert "truncated" in message and "data.skip_corrupt=true" in message
    # A file damaged after setup still fails by name when a loader first decodes it.
    png, jpeg, _ = bad
    for path in (png, jpeg):
        with pytest.raises(DatasetError, match="truncated") as error:
            AnomalyImageDataset([Sample(path, 0, "good")], 8, 3)[0]
        assert str(path) in str(error.value)


def test_skip_corrupt_drops_bad_files_with_a_count(tmp_path: Path) -> None:
    root = make_tiny_mvtec(tmp_path / "data", n_train=4)
    bad = _corrupt_some(root)
    dm = _dm(root, tmp_path / "cache", skip_corrupt=True)
    with pytest.warns(DataWarning, match=r"skipped 3 of 11 images") as record:
        dm.setup()
    assert all(str(path) in str(record[0].message) for path in bad)
    assert sorted(path for path, _ in dm.skipped) == sorted(bad)
    assert len(dm.train_samples) == 3 and len(dm.test_samples["widget"]) == 5
    assert dm.image_cache is not None and dm.image_cache.stats.decodes == 0  # headers only
    list(dm.train_dataloader())
    list(dm.test_dataloader()[0])
    assert dm.image_cache.stats.decodes == 10  # 8 images + 2 masks, each decoded once


def test_mask_size_mismatch_is_named(tmp_path: Path) -> None:
    image = write_image(tmp_path / "img.png", np.zeros((10, 12), np.uint8))
    mask = write_image(tmp_path / "img_mask.png", np.zeros((10, 10), np.uint8))
    for cache in (None, ImageCache(tmp_path / "cache")):
        dataset = AnomalyImageDataset([Sample(image, 1, "x", mask)], 4, 1, cache=cache)
        with pytest.raises(DatasetError, match=r"is 10x10 but its image .* is 12x10"):
            dataset[0]


# ---------------------------------------------------------------------------- worker seeding
def _augmented_loader(path: Path, workers: int, seed: int) -> DataLoader:
    dataset = AnomalyImageDataset(
        [Sample(path, 0, "good")] * 8,
        4,
        1,
        augmentations=[A.RandomBrightnessContrast(brightness_limit=0.5, p=1.0)],
    )
    return DataLoader(
        dataset,
        batch_size=2,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def test_workers_seed_augmentations_reproducibly_and_differently(tmp_path: Path) -> None:
    path = write_image(tmp_path / "gray.png", np.full((6, 6), 128, np.uint8))

    def means(seed: int) -> list[float]:
        loader = _augmented_loader(path, workers=2, seed=seed)
        return [round(float(v), 5) for b in loader for v in b["image"].mean(dim=(1, 2, 3))]

    first = means(0)
    assert first == means(0)  # same loader seed -> same augmentations
    assert first != means(1)
    assert len(set(first)) == len(first)  # workers do not repeat each other's draws
