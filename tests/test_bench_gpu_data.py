"""The half-size copies ``bench/gpu_check_data.py`` makes for the GPU training-length check
(issue 14) read like the original set: same files and splits, images halved, masks still
binary and still marking the defect. A tiny set, no training: about a second."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from anomaly_gan.data import MVTecDataModule
from tests.conftest import REPO_ROOT
from tests.test_data import make_tiny_mvtec

sys.path.insert(0, str(REPO_ROOT / "bench"))  # bench/ holds scripts, not a package
from gpu_check_data import copy_half_size


def _counts(root: Path) -> tuple[int, dict[str, int]]:
    datamodule = MVTecDataModule(root=str(root), category="widget", image_size=8, batch_size=2)
    datamodule.setup()
    n_normals = len(datamodule.train_samples) + len(datamodule.val_samples)
    tests = {name: len(samples) for name, samples in datamodule.test_samples.items()}
    return n_normals, tests


def test_half_size_copy_keeps_the_set_and_halves_its_images(tmp_path: Path) -> None:
    root = make_tiny_mvtec(tmp_path / "data")  # 20 x 24 images, masks with 128 and 255
    out = tmp_path / "half"
    copied = copy_half_size(root, out, "widget", min_side=8)

    source_files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    copy_files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert copy_files == source_files and copied == len(source_files)
    assert (out / "widget/train/good/notes.txt").read_text() == "not an image, ignored"

    image = cv2.imread(str(out / "widget/train/good/000.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (10, 12, 3)
    for stem in ("000", "001"):  # the 128-valued mask stays a defect after halving
        mask = cv2.imread(str(out / f"widget/ground_truth/crack/{stem}_mask.png"), 0)
        assert mask.shape == (10, 12)
        assert set(np.unique(mask)) == {0, 255}
        assert (mask == 255).sum() >= 4 * 3  # rows 5..11, columns 6..13 of the original

    assert _counts(out) == _counts(root)


def test_images_already_small_are_copied_unchanged(tmp_path: Path) -> None:
    root = make_tiny_mvtec(tmp_path / "data")
    out = tmp_path / "half"
    copy_half_size(root, out, "widget", min_side=64)  # 20 x 24 is below 2 x 64
    original = root / "widget/train/good/000.png"
    assert (out / "widget/train/good/000.png").read_bytes() == original.read_bytes()
