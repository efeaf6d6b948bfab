"""Every image and mask is checked at ``setup``: a bad file stops the run before its first
step, naming it, or is skipped and counted (``data.skip_corrupt``); images that mix pixel
formats are converted and named; formats the loader cannot convert are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_gan.data import DatasetError, DataWarning, MVTecDataModule
from anomaly_gan.data.verify import FileInfo, probe_file
from tests.conftest import run_train
from tests.test_data import make_tiny_mvtec
from tests.test_data_fixtures import write_image
from tests.test_resume import TINY


def _dm(root: Path, **kwargs: object) -> MVTecDataModule:
    defaults: dict[str, object] = {"category": "widget", "image_size": 8, "batch_size": 4}
    return MVTecDataModule(root=str(root), **{**defaults, **kwargs})


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_probe_reads_what_a_file_holds_from_its_header(tmp_path: Path) -> None:
    grey = np.full((5, 7), 100, np.uint8)
    colour = np.full((5, 7, 3), 100, np.uint8)
    cases = {
        "grey.png": (grey, FileInfo(7, 5, 1, 8)),
        "colour16.png": (colour.astype(np.uint16) * 257, FileInfo(7, 5, 3, 16)),
        "alpha.png": (np.dstack([colour, grey]), FileInfo(7, 5, 4, 8)),
        "grey.jpg": (grey, FileInfo(7, 5, 1, 8)),
        "colour.jpg": (colour, FileInfo(7, 5, 3, 8)),
        "colour.bmp": (colour, FileInfo(7, 5, 3, 8)),
    }
    for name, (array, expected) in cases.items():
        assert probe_file(write_image(tmp_path / name, array)) == expected, name

    refused = {
        "float.tiff": (np.zeros((5, 7), np.float32), "pixel type float32"),
        "cut.png": (colour, "truncated"),
        "cut.jpg": (colour, "truncated"),
    }
    for name, (array, reason) in refused.items():
        path = write_image(tmp_path / name, array)
        if name.startswith("cut"):
            path.write_bytes(path.read_bytes()[:-20])
        with pytest.raises(DatasetError, match=reason) as error:
            probe_file(path)
        assert str(path) in str(error.value) and "data.skip_corrupt=true" in str(error.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"Cannot read image .*empty\.png"):
        probe_file(tmp_path / "empty.png")


def test_mixed_pixel_formats_are_converted_and_named(tmp_path: Path) -> None:
    root = make_tiny_mvtec(tmp_path / "data", n_train=6)
    good = root / "widget" / "train" / "good"
    deep = write_image(good / "002.png", np.full((20, 24, 3), 30000, np.uint16))
    grey = write_image(good / "003.png", np.full((20, 24), 90, np.uint8))
    dm = _dm(root, channels=3, val_fraction=0.0)
    with pytest.warns(DataWarning, match="training images mix pixel formats") as record:
        dm.setup()
    message = str(record[0].message)
    assert str(deep) in message and "16-bit colour" in message
    assert str(grey) in message and "8-bit grey" in message
    assert len(dm.train_samples) == 6  # converted, not dropped
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 8, 8)


def test_unusable_files_stop_setup_by_name_or_are_skipped(tmp_path: Path) -> None:
    root = make_tiny_mvtec(tmp_path / "data", n_train=6)
    floats = write_image(
        root / "widget" / "train" / "good" / "004.tiff", np.zeros((20, 24), np.float32)
    )
    mask = write_image(
        root / "widget" / "ground_truth" / "crack" / "001_mask.png", np.zeros((10, 12), np.uint8)
    )
    with pytest.raises(DatasetError, match="2 of 12 samples") as error:
        _dm(root).setup()
    message = str(error.value)
    assert f"Image {floats} is of pixel type float32" in message
    assert f"Mask {mask} is 12x10 but its image" in message and "001.png is 24x20" in message

    dm = _dm(root, skip_corrupt=True, val_fraction=0.0)
    with pytest.warns(DataWarning, match="skipped 2 of 12"):
        dm.setup()
    assert sorted(str(path) for path, _ in dm.skipped) == sorted(
        [str(floats), str(root / "widget" / "test" / "crack" / "001.png")]
    )
    assert len(dm.train_samples) == 6 and len(dm.test_samples["widget"]) == 4


def test_train_stops_before_the_first_step_naming_every_bad_file(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A truncated training PNG and a test mask of the wrong size: the run stops at setup,
    naming both (before the fix: it trained, and failed at whichever step or test drew
    one). With ``data.skip_corrupt=true`` it completes and ``results.json`` counts them."""
    root = make_tiny_mvtec(tmp_path / "data", n_train=10)
    truncated = _truncate(root / "widget" / "train" / "good" / "005.png")
    mask = root / "widget" / "ground_truth" / "crack" / "000_mask.png"
    cv2.imwrite(str(mask), np.zeros((10, 12), np.uint8))
    args = [
        *TINY,
        "data=mvtec",
        f"data.root={root}",
        "data.category=widget",
        "data.channels=3",
        "data.test_limit=null",
        f"paths.cache_dir={cache_dir}",
    ]
    failed = run_train(*args, f"hydra.run.dir={tmp_path / 'strict'}")
    assert failed.returncode != 0
    results = json.loads((tmp_path / "strict" / "results.json").read_text())
    assert results["status"] == "failed"
    assert (
        str(truncated) in results["error"]["message"] and "truncated" in results["error"]["message"]
    )
    assert str(mask) in results["error"]["message"]
    assert "global_step" not in results and not (tmp_path / "strict" / "checkpoints").exists()

    skipped = run_train(*args, "data.skip_corrupt=true", f"hydra.run.dir={tmp_path / 'skip'}")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    results = json.loads((tmp_path / "skip" / "results.json").read_text())
    assert results["status"] == "completed" and results["n_skipped_files"] == 2
    assert {entry["path"] for entry in results["skipped_files"]} == {
        str(truncated),
        str(root / "widget" / "test" / "crack" / "000.png"),
    }
