"""Writers of tiny datasets in each real on-disk layout (raw VisA + CSV, KolektorSDD, folder).

Other ``tests/test_data_*.py`` files import these; the tests here check that each written
layout is what its datamodule's layout check (used after downloads) accepts.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from anomaly_gan.data import FolderDataModule, KolektorDataModule, VisADataModule

VISA_TRIO = ("candle", "cashew", "fryum")


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path
    return path


def _object(rng: np.random.Generator, shape: tuple[int, int], colour: bool) -> np.ndarray:
    """A smooth bright blob on a dark background plus mild noise (not pure noise)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2))
    base = 40 + 160 * blob + rng.normal(0, 6, size=shape)
    if colour:
        tint = np.array([0.8, 1.0, 0.9]) * rng.uniform(0.9, 1.1)
        base = base[:, :, None] * tint[None, None, :]
    return np.clip(base, 0, 255).astype(np.uint8)


def _with_defect(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[mask > 0] = 255
    return out


def _defect_mask(shape: tuple[int, int], index: int) -> np.ndarray:
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    top, left = 2 + index % (h // 2), 3 + index % (w // 2)
    mask[top : top + h // 4, left : left + w // 4] = 1
    return mask


def make_visa(
    root: Path,
    categories: Iterable[str] = VISA_TRIO,
    *,
    n_train: int = 12,
    n_test_normal: int = 4,
    n_test_anomaly: int = 4,
    shape: tuple[int, int] = (40, 48),
    mask_value: int = 3,
) -> Path:
    """Raw VisA layout: ``<cat>/Data/Images/{Normal,Anomaly}/*.JPG``, masks, ``1cls.csv``.

    Mask pixels hold ``mask_value`` (VisA stores class indices, not 255) so binarisation
    is exercised. Rows are written like the real CSV: train normals, test normals, test
    anomalies with their mask path.
    """
    rng = np.random.default_rng(0)
    rows: list[list[str]] = []
    for category in categories:
        images = root / category / "Data" / "Images"
        masks = root / category / "Data" / "Masks" / "Anomaly"
        for i in range(n_train + n_test_normal):
            name = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / name, _object(rng, shape, colour=True))
            rows.append([category, "train" if i < n_train else "test", "normal", name, ""])
        for i in range(n_test_anomaly):
            mask = _defect_mask(shape, i)
            name = f"{category}/Data/Images/Anomaly/{i:03d}.JPG"
            write_image(root / name, _with_defect(_object(rng, shape, colour=True), mask))
            write_image(masks / f"{i:03d}.png", mask * mask_value)
            mask_name = f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            rows.append([category, "test", "anomaly", name, mask_name])
        assert images.is_dir()
    write_visa_csv(root, rows)
    return root


def write_visa_csv(root: Path, rows: list[list[str]]) -> Path:
    path = root / "split_csv" / "1cls.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return path


def read_visa_csv(root: Path) -> list[list[str]]:
    with open(root / "split_csv" / "1cls.csv", newline="") as stream:
        return list(csv.reader(stream))[1:]


def make_kolektor(
    root: Path,
    n_parts: int = 8,
    views: int = 4,
    defective: Iterable[tuple[int, int]] = ((1, 2), (2, 0), (5, 3)),
    shape: tuple[int, int] = (48, 20),
) -> Path:
    """KolektorSDD layout: ``kosNN/PartK.jpg`` (grayscale) + ``PartK_label.bmp`` masks.

    ``defective`` lists (part index, view index) pairs whose mask has a defect; all other
    masks are all-zero, as in the real dataset.
    """
    rng = np.random.default_rng(1)
    bad = set(defective)
    for p in range(1, n_parts + 1):
        part = root / f"kos{p:02d}"
        for v in range(views):
            mask = _defect_mask(shape, v) if (p, v) in bad else np.zeros(shape, np.uint8)
            image = _object(rng, shape, colour=False)
            write_image(part / f"Part{v}.jpg", _with_defect(image, mask) if mask.any() else image)
            write_image(part / f"Part{v}_label.bmp", mask * 255)
    return root


def make_folder(
    root: Path, n_normal: int = 10, n_abnormal: int = 3, shape: tuple[int, int] = (24, 24)
) -> Path:
    """A user's line: ``good/``, ``bad/`` and ``bad_masks/<stem>_mask.png``."""
    rng = np.random.default_rng(2)
    for i in range(n_normal):
        write_image(root / "good" / f"ok_{i:02d}.png", _object(rng, shape, colour=True))
    for i in range(n_abnormal):
        mask = _defect_mask(shape, i)
        write_image(root / "bad" / f"ng_{i:02d}.png", _with_defect(_object(rng, shape, True), mask))
        write_image(root / "bad_masks" / f"ng_{i:02d}_mask.png", mask * 255)
    return root


# ---------------------------------------------------------------------------- self-checks
def test_written_layouts_pass_the_download_layout_checks(tmp_path: Path) -> None:
    visa = make_visa(tmp_path / "visa", n_train=2, n_test_normal=1, n_test_anomaly=1)
    VisADataModule(root=str(visa)).check_layout(visa)
    kolektor = make_kolektor(tmp_path / "kolektor", n_parts=2, views=2, defective=[(1, 1)])
    KolektorDataModule(root=str(kolektor)).check_layout(kolektor)
    folder = make_folder(tmp_path / "folder", n_normal=3, n_abnormal=1)
    assert sorted(p.name for p in folder.iterdir()) == ["bad", "bad_masks", "good"]
    rows = read_visa_csv(visa)
    assert [row[:3] for row in rows if row[0] == "candle"] == [
        ["candle", "train", "normal"],
        ["candle", "train", "normal"],
        ["candle", "test", "normal"],
        ["candle", "test", "anomaly"],
    ]
    assert FolderDataModule(root=str(folder)).normal_dir == "good"
