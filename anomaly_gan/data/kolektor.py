"""KolektorSDD: electrical commutators, eight surface views per physical part.

Layout::

    <root>/kosNN/PartK.jpg          one folder per physical part (kos01 ... kos50)
    <root>/kosNN/PartK_label.bmp    its mask; any non-zero pixel = a defective view

The dataset has no train/test split. Defective views always go to the test set. The
*normal* views are split by part, seeded: all normal views of a part are either training
or test (and, within training, either train or validation), so the model is never tested
on another view of a part whose normal surfaces it trained on.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from anomaly_gan.data.datamodule import (
    AnomalyDataModule,
    DataWarning,
    check_single_test_set,
    missing_root_message,
    split_groups,
)
from anomaly_gan.data.dataset import ANOMALOUS, NORMAL, DatasetError, Sample, read_mask
from anomaly_gan.data.mvtec import IMAGE_EXTENSIONS

KOLEKTOR_LAYOUT = (
    "<root>/kosNN/PartK.jpg with its mask <root>/kosNN/PartK_label.bmp, one kosNN folder "
    "per physical part"
)
LABEL_SUFFIX = "_label"
PART_PATTERN = re.compile(r"^kos\d+$", re.IGNORECASE)
GOOD = "good"
DEFECT_TYPE = "defect"


def _part_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and PART_PATTERN.match(p.name))


def _files(part: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """({image stem: path}, {image stem: label path}) of one part folder."""
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for path in sorted(part.iterdir()):
        if (
            not path.is_file()
            or path.name.startswith(".")
            or path.suffix.lower() not in (IMAGE_EXTENSIONS)
        ):
            continue
        if path.stem.endswith(LABEL_SUFFIX):
            labels[path.stem.removesuffix(LABEL_SUFFIX)] = path
        else:
            images[path.stem] = path
    return images, labels


def scan_kolektor(
    root: Path, skip_corrupt: bool = False
) -> tuple[dict[str, list[Sample]], list[tuple[Path, str]]]:
    """({part name: samples}, skipped files). Labels come from the masks' pixels.

    Every image needs its ``_label`` mask and every mask its image (``DatasetError``
    otherwise). An unreadable mask raises, or with ``skip_corrupt`` drops the pair.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir() or not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DatasetError(missing_root_message(root, KOLEKTOR_LAYOUT, downloadable=True))
    parts = _part_dirs(root)
    if not parts:
        found = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:10]
        raise DatasetError(
            f"No kosNN part folders in {root} (found: {', '.join(found)}). Expected layout: "
            f"{KOLEKTOR_LAYOUT}. Fix: set data.root to the extracted KolektorSDD folder, or "
            "data.download=true with an empty data.root."
        )
    by_part: dict[str, list[Sample]] = {}
    skipped: list[tuple[Path, str]] = []
    for part in parts:
        images, labels = _files(part)
        for stem, label in labels.items():
            if stem not in images:
                raise DatasetError(
                    f"Mask {label} has no image: expected {part / stem}.jpg. Restore the image "
                    "or delete the mask."
                )
        samples: list[Sample] = []
        for stem, image in images.items():
            label_path = labels.get(stem)
            if label_path is None:
                raise DatasetError(
                    f"Image {image} has no mask: expected {part / (stem + LABEL_SUFFIX)}.bmp "
                    "(KolektorSDD labels every view). Restore the mask or delete the image."
                )
            try:
                defective = bool(read_mask(label_path).any())
            except DatasetError as error:
                if not skip_corrupt:
                    raise
                skipped.append((image, str(error)))
                continue
            if defective:
                samples.append(Sample(image, ANOMALOUS, DEFECT_TYPE, label_path))
            else:
                samples.append(Sample(image, NORMAL, GOOD))
        by_part[part.name] = samples
    return by_part, skipped


class KolektorDataModule(AnomalyDataModule):
    """KolektorSDD with a seeded, part-grouped split of the normal views.

    ``test_normal_fraction`` of the parts (with at least one normal view) give all their
    normal views to the test set; every defective view is a test image. ``category`` only
    names the test set in logs and ``results.json``.
    """

    archive_name: ClassVar[str | None] = "kolektor"

    def __init__(
        self,
        root: str | Path,
        category: str = "kolektor",
        test_categories: Sequence[str] | None = None,
        test_normal_fraction: float = 0.2,
        **base: Any,
    ) -> None:
        check_single_test_set(category, test_categories, "KolektorSDD")
        if (
            isinstance(test_normal_fraction, bool)
            or not isinstance(test_normal_fraction, int | float)
            or not 0 < test_normal_fraction < 1
        ):
            raise ValueError(
                "data.test_normal_fraction must be a number in (0, 1), got "
                f"{test_normal_fraction!r}. Example: data.test_normal_fraction=0.2."
            )
        base.setdefault("channels", 1)  # KolektorSDD images are grayscale
        super().__init__(**base)
        self.root = Path(root).expanduser()
        self.category = category
        self.test_normal_fraction = float(test_normal_fraction)
        self.hparams["root"] = str(root)

    def check_layout(self, root: Path) -> None:
        """At least one ``kosNN`` folder holding a ``_label`` mask."""
        if not root.is_dir() or not any(_files(part)[1] for part in _part_dirs(root)):
            raise DatasetError(f"{root} holds no kosNN part folders. Layout: {KOLEKTOR_LAYOUT}.")

    @staticmethod
    def part_of(sample: Sample) -> str:
        return sample.image_path.parent.name

    def scan(self) -> tuple[list[Sample], dict[str, list[Sample]]]:
        by_part, skipped = scan_kolektor(self.root, self.skip_corrupt)
        if skipped:
            self.skipped.extend(skipped)
            warnings.warn(
                f"data.skip_corrupt=true: skipped {len(skipped)} KolektorSDD views whose mask "
                f"could not be read, e.g. {skipped[0][0]}: {skipped[0][1]}",
                DataWarning,
                stacklevel=2,
            )
        with_normals = [
            part for part, samples in by_part.items() if any(s.label == NORMAL for s in samples)
        ]
        test_parts = split_groups(
            with_normals, self.test_normal_fraction, np.random.default_rng([self.seed, 0])
        )
        train: list[Sample] = []
        test: list[Sample] = []
        for part, samples in by_part.items():
            for sample in samples:
                if sample.label == ANOMALOUS or part in test_parts:
                    test.append(sample)
                else:
                    train.append(sample)
        if not train:
            raise DatasetError(
                f"No normal KolektorSDD views left for training under {self.root} (parts with "
                f"normal views: {len(with_normals)}). Add data or lower "
                "data.test_normal_fraction."
            )
        return train, {self.category: test}

    def _split(self, normals: list[Sample]) -> tuple[list[Sample], list[Sample]]:
        """Validation holds out whole parts too (``val_fraction`` of the training parts)."""
        if self.val_fraction == 0:
            return list(normals), []
        parts = list(dict.fromkeys(self.part_of(s) for s in normals))
        val_parts = split_groups(parts, self.val_fraction, np.random.default_rng([self.seed, 1]))
        train = [s for s in normals if self.part_of(s) not in val_parts]
        val = [s for s in normals if self.part_of(s) in val_parts]
        return train, val
