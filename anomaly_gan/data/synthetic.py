"""A built-in textile dataset that needs no download (demo, tests, CI).

Normal images are a woven texture: a smooth base colour modulated by two crossed
sinusoidal thread patterns, with small random phase/orientation/period/brightness jitter,
a mild illumination gradient and Gaussian noise, so they look like one product with
natural variation. Each anomalous image is a fresh normal texture plus one defect whose
exact binary mask is written next to it (MVTec layout, so ``MVTecDataModule`` reads it):

- ``scratch``: a thin bright or dark curve (quadratic Bezier);
- ``spot``: a filled dark or bright elliptical blob;
- ``missing``: a rotated rectangle where the weave is absent (dark backing shows);
- ``stain``: a soft colour-tinted blob; the mask is where the tint is at least 15 %.

Defects cover 2–15 % of the image so a detector still sees them at 32 px. Every image has
its own ``numpy.random.default_rng([seed, group, index])``, so an image depends only on
the seed and its position, never on generation order.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomaly_gan.data.dataset import DatasetError
from anomaly_gan.data.mvtec import GOOD, MVTecDataModule

SYNTHETIC_FORMAT_VERSION = 1
SYNTHETIC_DEFECT_TYPES: tuple[str, ...] = ("scratch", "spot", "missing", "stain")
MANIFEST_NAME = "manifest.json"
MIN_SOURCE_SIZE = 16
DEFECT_COVERAGE = (0.02, 0.15)  # fraction of the image a defect mask may cover
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]
_GROUP_TRAIN, _GROUP_TEST_GOOD, _GROUP_FIRST_DEFECT = 0, 1, 2


# ---------------------------------------------------------------------------- texture
def _woven_texture(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (RGB float32 (H, W, 3) in [0, 1], the base colour (3,)) of one normal image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.deg2rad(rng.uniform(-4.0, 4.0))
    period = size / 8.0 * rng.uniform(0.95, 1.05)  # 8 threads per side at any size
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    warp = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    weft = np.sin(2 * np.pi * v / period + rng.uniform(0, 2 * np.pi))
    weave = 0.6 * warp * weft + 0.2 * (warp + weft)  # checker of crossings + threads
    gradient_angle = rng.uniform(0, 2 * np.pi)
    illumination = 0.04 * (
        (xx / size - 0.5) * np.cos(gradient_angle) + (yy / size - 0.5) * np.sin(gradient_angle)
    )
    brightness = 1.0 + rng.uniform(-0.04, 0.04) + illumination
    base_colour = np.array([0.62, 0.50, 0.38]) + rng.uniform(-0.012, 0.012, size=3)
    shade = brightness * (1.0 + 0.3 * weave)
    image = shade[:, :, None] * base_colour[None, None, :]
    image = image + rng.normal(0.0, 0.015, size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), base_colour.astype(np.float32)


# ---------------------------------------------------------------------------- defects
def _scratch(rng: np.random.Generator, image: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Thin contrasting quadratic-Bezier curve."""
    size = image.shape[0]
    centre = rng.uniform(0.3, 0.7, size=2) * size
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    length = rng.uniform(0.55, 0.85) * size
    bend = rng.uniform(-0.2, 0.2) * length
    p0, p2 = centre - direction * length / 2, centre + direction * length / 2
    p1 = centre + normal * bend
    t = np.linspace(0.0, 1.0, 64)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    mask = np.zeros((size, size), np.uint8)
    thickness = max(2, round(3 * size / 64))
    cv2.polylines(mask, [np.round(curve).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    value = rng.uniform(0.88, 0.97) if rng.random() < 0.5 else rng.uniform(0.05, 0.15)
    image[mask > 0] = value
    return mask


def _spot(rng: np.random.Generator, image: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Filled dark or bright elliptical blob."""
    size = image.shape[0]
    centre = np.round(rng.uniform(0.2, 0.8, size=2) * size).astype(int)
    axes = np.round(rng.uniform(0.07, 0.14, size=2) * size).astype(int)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, tuple(centre), tuple(axes), rng.uniform(0, 180), 0, 360, 1, -1)
    dark = rng.random() < 0.5
    value = rng.uniform(0.05, 0.15) if dark else rng.uniform(0.88, 0.97)
    blob = value + rng.normal(0.0, 0.02, size=image.shape[:2])
    image[mask > 0] = np.clip(blob[mask > 0], 0.0, 1.0)[:, None]
    return mask


def _missing(rng: np.random.Generator, image: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Rotated rectangle with no weave: the dark backing shows through."""
    size = image.shape[0]
    centre = tuple(float(c) for c in rng.uniform(0.25, 0.75, size=2) * size)
    sides = tuple(float(s) for s in rng.uniform(0.14, 0.3, size=2) * size)
    corners = cv2.boxPoints((centre, sides, float(rng.uniform(0, 90))))
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    backing = base * rng.uniform(0.25, 0.4)
    fill = backing[None, None, :] + rng.normal(0.0, 0.01, size=image.shape)
    image[mask > 0] = np.clip(fill[mask > 0], 0.0, 1.0)
    return mask


_STAIN_TINTS = np.array([[0.35, 0.45, 0.15], [0.50, 0.15, 0.25], [0.25, 0.30, 0.55]])


def _stain(rng: np.random.Generator, image: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Soft colour-tinted blob; mask = pixels blended at least 15 % towards the tint.

    A super-Gaussian falloff (flat core, short soft edge) keeps the visible stain and its
    mask the same shape.
    """
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.25, 0.75, size=2) * size
    sy, sx = rng.uniform(0.08, 0.13, size=2) * size
    angle = rng.uniform(0, np.pi)
    du = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    dv = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    falloff = np.exp(-0.5 * ((du / sx) ** 2 + (dv / sy) ** 2) ** 2)
    alpha = rng.uniform(0.7, 0.9) * falloff
    mask = (alpha >= 0.15).astype(np.uint8)
    alpha = np.where(mask > 0, alpha, 0.0)[:, :, None]  # no tint outside the mask
    tint = _STAIN_TINTS[rng.integers(len(_STAIN_TINTS))]
    image[:] = (1 - alpha) * image + alpha * tint[None, None, :]
    return mask


_DEFECT_PAINTERS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]]
_DEFECT_PAINTERS = {"scratch": _scratch, "spot": _spot, "missing": _missing, "stain": _stain}


def _anomalous_image(
    rng: np.random.Generator, size: int, defect_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """A normal texture plus one defect covering ``DEFECT_COVERAGE`` of the image."""
    texture, base = _woven_texture(rng, size)
    paint = _DEFECT_PAINTERS[defect_type]
    for _ in range(100):  # redraw rare shapes that leave the coverage range (deterministic)
        image = texture.copy()
        mask = paint(rng, image, base)
        if DEFECT_COVERAGE[0] <= mask.mean() <= DEFECT_COVERAGE[1]:
            break
    return image, mask


# ---------------------------------------------------------------------------- writing
def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array, _PNG_PARAMS):
        raise DatasetError(f"Could not write {path}; check the disk space and permissions.")


def _write_rgb(path: Path, image: np.ndarray) -> None:
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    _write_png(path, pixels[:, :, ::-1])  # RGB -> BGR for cv2


def _check_generation_args(
    category: str, seed: int, image_size: int, n_train: int, n_test_good: int, per_defect: int
) -> None:
    if not category or not isinstance(category, str) or "/" in category or category[0] == ".":
        raise ValueError(f"data.category must be a plain folder name, got {category!r}.")
    for key, value, low in (
        ("data.generation_seed", seed, 0),
        ("data.source_size", image_size, MIN_SOURCE_SIZE),
        ("data.n_train", n_train, 1),
        ("data.n_test_good", n_test_good, 0),
        ("data.n_test_per_defect", per_defect, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}.")
    if n_test_good + per_defect == 0:
        raise ValueError("data.n_test_good and data.n_test_per_defect cannot both be 0.")


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def generate_synthetic_dataset(
    root: Path,
    category: str = "textile",
    seed: int = 0,
    image_size: int = 64,
    n_train: int = 200,
    n_test_good: int = 40,
    n_test_per_defect: int = 20,
) -> Path:
    """Write the synthetic dataset to ``root/category`` (MVTec layout) and return that path.

    Deterministic: the same arguments give byte-identical PNGs. Skipped when
    ``manifest.json`` there already records the same arguments; regenerated when they
    differ. Files are written into a temporary sibling folder that replaces the old one at
    the end, so an interrupted run never leaves a half-written dataset behind.
    """
    _check_generation_args(category, seed, image_size, n_train, n_test_good, n_test_per_defect)
    root = Path(root).expanduser()
    target = root / category
    manifest = {
        "generator": "anomaly_gan.data.synthetic",
        "format_version": SYNTHETIC_FORMAT_VERSION,
        "category": category,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "defect_types": list(SYNTHETIC_DEFECT_TYPES),
    }
    existing = _read_manifest(target)
    if existing == manifest:
        return target
    if target.exists() and (existing is None or existing.get("generator") != manifest["generator"]):
        raise DatasetError(
            f"{target} exists but was not made by the synthetic generator (no valid "
            f"{MANIFEST_NAME}); refusing to overwrite it. Point data.root at an empty or "
            "cache folder, or remove that folder."
        )

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=root))
    try:
        _generate_into(staging, manifest)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _swap_into_place(staging, target, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _generate_into(directory: Path, manifest: dict[str, Any]) -> None:
    seed, size = manifest["seed"], manifest["image_size"]
    train_dir, test_dir = directory / "train" / GOOD, directory / "test"
    train_dir.mkdir(parents=True)
    (test_dir / GOOD).mkdir(parents=True)
    for index in range(manifest["n_train"]):
        texture, _ = _woven_texture(np.random.default_rng([seed, _GROUP_TRAIN, index]), size)
        _write_rgb(train_dir / f"{index:03d}.png", texture)
    for index in range(manifest["n_test_good"]):
        texture, _ = _woven_texture(np.random.default_rng([seed, _GROUP_TEST_GOOD, index]), size)
        _write_rgb(test_dir / GOOD / f"{index:03d}.png", texture)
    if manifest["n_test_per_defect"] == 0:
        return
    for group, defect_type in enumerate(SYNTHETIC_DEFECT_TYPES, start=_GROUP_FIRST_DEFECT):
        image_dir = test_dir / defect_type
        mask_dir = directory / "ground_truth" / defect_type
        image_dir.mkdir()
        mask_dir.mkdir(parents=True)
        for index in range(manifest["n_test_per_defect"]):
            rng = np.random.default_rng([seed, group, index])
            image, mask = _anomalous_image(rng, size, defect_type)
            _write_rgb(image_dir / f"{index:03d}.png", image)
            _write_png(mask_dir / f"{index:03d}_mask.png", mask * 255)


def _swap_into_place(staging: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Replace ``target`` by ``staging`` (two renames); tolerate a concurrent generator."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        try:
            target.rename(old)
        except FileNotFoundError:  # another process moved it first
            old = None
    try:
        staging.rename(target)
    except OSError:
        # Another process (e.g. another DDP rank) put a dataset there meanwhile: keep it if
        # it is the one we wanted, since generation is deterministic.
        if _read_manifest(target) != manifest:
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- datamodule
class SyntheticDataModule(MVTecDataModule):
    """Generates the synthetic textile dataset on first use, then reads it like MVTec AD.

    ``generation_seed`` fixes the images; ``seed`` (base class) fixes the train/val split
    and shuffling, so the two can be varied independently.
    """

    archive_name = None  # generated locally, never downloaded

    def __init__(
        self,
        root: str | Path = "data/synthetic",
        category: str = "textile",
        generation_seed: int = 0,
        source_size: int = 64,
        n_train: int = 200,
        n_test_good: int = 40,
        n_test_per_defect: int = 20,
        **base: Any,
    ) -> None:
        _check_generation_args(
            category, generation_seed, source_size, n_train, n_test_good, n_test_per_defect
        )
        super().__init__(
            root=root,
            category=category,
            **base,
        )
        self.generation_seed = generation_seed
        self.source_size = source_size
        self.n_train = n_train
        self.n_test_good = n_test_good
        self.n_test_per_defect = n_test_per_defect

    def generate(self) -> Path:
        """Write (or reuse) the dataset on disk; cheap when it is already there."""
        return generate_synthetic_dataset(
            self.root,
            category=self.category,
            seed=self.generation_seed,
            image_size=self.source_size,
            n_train=self.n_train,
            n_test_good=self.n_test_good,
            n_test_per_defect=self.n_test_per_defect,
        )

    def prepare_data(self) -> None:
        self.generate()

    def setup(self, stage: str | None = None) -> None:
        self.generate()  # prepare_data is skipped when the module is used without a Trainer
        super().setup(stage)
