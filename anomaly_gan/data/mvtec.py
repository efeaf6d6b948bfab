"""MVTec AD layout reader (also used for any dataset saved in that layout).

Layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png
"""

from __future__ import annotations

from pathlib import Path

from anomaly_gan.data.datamodule import AnomalyDataModule
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
            candidate = ground_truth / defect_type / f"{stem}_mask{suffix}"
            if candidate.is_file():
                return candidate
    return None


def scan_mvtec(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    """Return (train normals, test samples) of one MVTec-layout category, sorted.

    Raises ``DatasetError`` naming the missing path, the expected layout and the fix.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(
            f"Dataset root {root} does not exist (or is not a directory). Expected layout: "
            f"{MVTEC_LAYOUT}. Fix: set data.root=/path/to/folder_with_category_folders."
        )
    category_dir = root / category
    if not category_dir.is_dir():
        existing = [p.name for p in _subdirs(root)]
        hint = ""
        if (root / "train" / GOOD).is_dir():
            hint = (
                f" {root} itself looks like a category folder: set data.root={root.parent} "
                f"data.category={root.name}."
            )
        raise DatasetError(
            f"Category folder {category_dir} does not exist. Categories found under {root}: "
            f"{', '.join(existing) if existing else '(none)'}. Expected layout: {MVTEC_LAYOUT}."
            f" Fix: set data.root=<folder holding the category folders> and "
            f"data.category=<one of them>.{hint}"
        )
    train_dir = category_dir / "train" / GOOD
    test_dir = category_dir / "test"
    for required in (train_dir, test_dir):
        if not required.is_dir():
            raise DatasetError(
                f"Missing folder {required}. Expected layout: {MVTEC_LAYOUT}. "
                f"Fix: check that data.root and data.category point at an MVTec-style dataset."
            )
    train = [Sample(p, NORMAL, GOOD) for p in list_images(train_dir)]
    if not train:
        raise DatasetError(
            f"No training images in {train_dir}: expected normal images with an extension "
            f"in {', '.join(IMAGE_EXTENSIONS)}. Add the defect-free images there."
        )
    ground_truth = category_dir / "ground_truth"
    test: list[Sample] = []
    for defect_dir in _subdirs(test_dir):
        defect_type = defect_dir.name
        for path in list_images(defect_dir):
            if defect_type == GOOD:
                test.append(Sample(path, NORMAL, GOOD))
            else:
                mask = find_mask(ground_truth, defect_type, path.stem)
                test.append(Sample(path, ANOMALOUS, defect_type, mask))
    if not test:
        raise DatasetError(
            f"No test images under {test_dir}: expected {test_dir}/<good|defect>/*.png. "
            "Add test images (normal ones in test/good, defective ones in test/<defect>)."
        )
    return train, test


class MVTecDataModule(AnomalyDataModule):
    """MVTec AD (or any MVTec-layout folder such as magnetic_tile): one test category.

    The category name is not checked against ``MVTEC_CATEGORIES`` so other datasets saved
    in the same layout load too.
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        image_size: int = 64,
        channels: int = 3,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if not isinstance(category, str) or not category:
            raise ValueError(
                f"data.category must be a non-empty folder name, got {category!r}. "
                f"MVTec AD categories: {', '.join(MVTEC_CATEGORIES)}."
            )
        super().__init__(
            image_size=image_size,
            channels=channels,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            seed=seed,
            pin_memory=pin_memory,
        )
        self.root = Path(root).expanduser()
        self.category = category
        # A str (not a Path) keeps checkpoints loadable with torch.load(weights_only=True).
        self.hparams["root"] = str(root)

    def scan(self) -> tuple[list[Sample], dict[str, list[Sample]]]:
        train, test = scan_mvtec(self.root, self.category)
        return train, {self.category: test}
