"""MVTec AD layout reader (also used for any dataset saved in that layout).

Layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Cross-class testing: ``test_categories`` names other category folders under the same root;
each one's ``test/`` split becomes its own test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from anomaly_gan.data.datamodule import (
    AnomalyDataModule,
    check_category,
    check_test_categories,
    missing_root_message,
)
from anomaly_gan.data.dataset import ANOMALOUS, NORMAL, DatasetError, Sample

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"
MASK_SUFFIX = "_mask"
MVTEC_LAYOUT = (
    "<root>/<category>/train/good/*.png, <root>/<category>/test/<good|defect>/*.png, "
    "<root>/<category>/ground_truth/<defect>/<stem>_mask.png"
)


def list_images(directory: Path) -> list[Path]:
    """Image files (case-insensitive extension, not hidden) in ``directory``, sorted by name."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_mask(ground_truth: Path, defect_type: str, stem: str) -> Path | None:
    """``ground_truth/<defect>/<stem>_mask.<ext>`` if it exists (png first), else None."""
    for ext in IMAGE_EXTENSIONS:
        for suffix in (ext, ext.upper()):
            candidate = ground_truth / defect_type / f"{stem}{MASK_SUFFIX}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def pair_masks(images: list[Path], mask_dir: Path, image_dir: Path) -> dict[Path, Path]:
    """Map each image to its mask (``<stem>_mask.*`` or ``<stem>.*``) in ``mask_dir``.

    Strict both ways, because a lost mask silently turns a defect into "no defect pixels"
    and a stray mask usually means a renamed or deleted image: an image without a mask or
    a mask without an image raises ``DatasetError`` naming the file.
    """
    masks: dict[str, Path] = {}
    for mask in list_images(mask_dir):
        stem = mask.stem.removesuffix(MASK_SUFFIX)
        if stem in masks:
            raise DatasetError(
                f"Two masks for image stem {stem!r} in {mask_dir}: {masks[stem].name} and "
                f"{mask.name}. Keep one."
            )
        masks[stem] = mask
    pairs: dict[Path, Path] = {}
    for image in images:
        mask = masks.pop(image.stem, None)
        if mask is None:
            raise DatasetError(
                f"Anomalous image {image} has no mask: expected {mask_dir}/{image.stem}"
                f"{MASK_SUFFIX}.png. Add its mask or remove the image."
            )
        pairs[image] = mask
    if masks:
        orphan = next(iter(masks.values()))
        stem = orphan.stem.removesuffix(MASK_SUFFIX)
        raise DatasetError(
            f"Mask {orphan} has no image: expected {image_dir}/{stem}.<png|jpg|...> "
            f"({len(masks)} unmatched mask(s) in {mask_dir}). Restore the image "
            "or delete the mask."
        )
    return pairs


def _check_root(root: Path) -> None:
    if not root.is_dir() or not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DatasetError(missing_root_message(root, MVTEC_LAYOUT, downloadable=True))


def _category_dir(root: Path, category: str) -> Path:
    category_dir = root / category
    if category_dir.is_dir():
        return category_dir
    existing = [p.name for p in _subdirs(root)]
    hint = ""
    if (root / "train" / GOOD).is_dir():
        hint = (
            f" {root} itself looks like a category folder: set data.root={root.parent} "
            f"data.category={root.name}."
        )
    raise DatasetError(
        f"Category folder {category_dir} does not exist. Categories found under {root}: "
        f"{', '.join(existing) if existing else '(none)'}. MVTec AD categories: "
        f"{', '.join(MVTEC_CATEGORIES)}. Expected layout: {MVTEC_LAYOUT}. Fix: set "
        f"data.root=<folder holding the category folders> and data.category=<one of them>, "
        f"or data.download=true with an empty data.root to fetch MVTec AD.{hint}"
    )


def scan_mvtec_test(root: Path, category: str) -> list[Sample]:
    """Test samples (normal and anomalous, masks paired) of one MVTec-layout category."""
    root = Path(root).expanduser().absolute()
    _check_root(root)
    category_dir = _category_dir(root, category)
    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(
            f"Missing folder {test_dir}. Expected layout: {MVTEC_LAYOUT}. "
            f"Fix: check that data.root and data.category point at an MVTec-style dataset."
        )
    ground_truth = category_dir / "ground_truth"
    test: list[Sample] = []
    defect_types = set()
    for defect_dir in _subdirs(test_dir):
        defect_type = defect_dir.name
        images = list_images(defect_dir)
        if defect_type == GOOD:
            test += [Sample(path, NORMAL, GOOD) for path in images]
            continue
        defect_types.add(defect_type)
        mask_dir = ground_truth / defect_type
        # A defect type without a ground_truth folder has image-level labels only.
        masks = pair_masks(images, mask_dir, defect_dir) if mask_dir.is_dir() else {}
        test += [Sample(path, ANOMALOUS, defect_type, masks.get(path)) for path in images]
    if ground_truth.is_dir():
        for mask_dir in _subdirs(ground_truth):
            if mask_dir.name not in defect_types and list_images(mask_dir):
                raise DatasetError(
                    f"Masks in {mask_dir} have no images: expected {test_dir / mask_dir.name}/"
                    "*.png. Restore the test images or delete the mask folder."
                )
    if not test:
        raise DatasetError(
            f"No test images under {test_dir}: expected {test_dir}/<good|defect>/*.png. "
            "Add test images (normal ones in test/good, defective ones in test/<defect>)."
        )
    return test


def scan_mvtec(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    """Return (train normals, test samples) of one MVTec-layout category, sorted.

    Raises ``DatasetError`` naming the missing path, the expected layout and the fix.
    """
    root = Path(root).expanduser().absolute()
    _check_root(root)
    category_dir = _category_dir(root, category)
    train_dir = category_dir / "train" / GOOD
    if not train_dir.is_dir():
        raise DatasetError(
            f"Missing folder {train_dir}. Expected layout: {MVTEC_LAYOUT}. "
            f"Fix: check that data.root and data.category point at an MVTec-style dataset."
        )
    train = [Sample(p, NORMAL, GOOD) for p in list_images(train_dir)]
    if not train:
        raise DatasetError(
            f"No training images in {train_dir}: expected normal images with an extension "
            f"in {', '.join(IMAGE_EXTENSIONS)}. Add the defect-free images there."
        )
    return train, scan_mvtec_test(root, category)


class MVTecDataModule(AnomalyDataModule):
    """MVTec AD (or any MVTec-layout folder such as magnetic_tile).

    Trains on ``category``'s ``train/good``; tests on each of ``test_categories`` (default:
    ``category`` only). The category name is not checked against ``MVTEC_CATEGORIES`` so
    other datasets saved in the same layout load too.
    """

    archive_name: ClassVar[str | None] = "mvtec"

    def __init__(
        self,
        root: str | Path,
        category: str,
        test_categories: Sequence[str] | None = None,
        **base: Any,
    ) -> None:
        check_category(category, "a non-empty folder name", "MVTec AD", MVTEC_CATEGORIES)
        checked_test_categories = check_test_categories(test_categories)
        super().__init__(**base)
        self.set_source(root, category, checked_test_categories)

    def check_layout(self, root: Path) -> None:
        """At least one MVTec AD category with ``train/good`` (after a download)."""
        if not any((root / name / "train" / GOOD).is_dir() for name in MVTEC_CATEGORIES):
            raise DatasetError(
                f"{root} holds no MVTec AD category folder with train/good. Expected layout: "
                f"{MVTEC_LAYOUT}."
            )

    def scan(self) -> tuple[list[Sample], dict[str, list[Sample]]]:
        train, test = scan_mvtec(self.root, self.category)
        tests: dict[str, list[Sample]] = {}
        for name in self.test_categories or [self.category]:
            tests[name] = test if name == self.category else scan_mvtec_test(self.root, name)
        return train, tests
