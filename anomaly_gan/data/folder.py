"""A user's own production line: plain folders of normal and (optionally) defective images.

Layout (paths relative to ``data.root`` or absolute)::

    <root>/<normal_dir>/*.png         defect-free images (training, and some for testing)
    <root>/<abnormal_dir>/*.png       optional: defective images (test only)
    <root>/<mask_dir>/<stem>[_mask].png   optional: one mask per defective image
    <root>/<normal_test_dir>/*.png    optional: normal test images kept apart by the user

Without ``normal_test_dir``, a seeded ``test_normal_fraction`` of the normal images is held
out for testing, so the test set has normals the model never trained on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_gan.data.datamodule import (
    AnomalyDataModule,
    DataWarning,
    check_single_test_set,
    split_groups,
)
from anomaly_gan.data.dataset import ANOMALOUS, NORMAL, DatasetError, Sample
from anomaly_gan.data.mvtec import IMAGE_EXTENSIONS, list_images, pair_masks

FOLDER_LAYOUT = (
    "<root>/<normal_dir>/*.png, optional <root>/<abnormal_dir>/*.png, optional "
    "<root>/<mask_dir>/<stem>_mask.png, optional <root>/<normal_test_dir>/*.png"
)
GOOD = "good"
DEFECT_TYPE = "anomaly"


class FolderDataModule(AnomalyDataModule):
    """Generic folders: ``normal_dir`` (required), ``abnormal_dir``, ``mask_dir`` (optional).

    ``category`` names the test set in logs and ``results.json``.
    """

    def __init__(
        self,
        root: str | Path,
        normal_dir: str = "good",
        abnormal_dir: str | None = None,
        mask_dir: str | None = None,
        normal_test_dir: str | None = None,
        category: str = "folder",
        test_categories: Sequence[str] | None = None,
        test_normal_fraction: float = 0.2,
        **base: Any,
    ) -> None:
        check_single_test_set(category, test_categories, "A folder dataset")
        if not isinstance(normal_dir, str) or not normal_dir:
            raise ValueError(f"data.normal_dir must be a folder path, got {normal_dir!r}.")
        if mask_dir is not None and abnormal_dir is None:
            raise ValueError(
                "data.mask_dir is set but data.abnormal_dir is not: masks belong to defective "
                "images. Set data.abnormal_dir=<folder of defective images> or drop mask_dir."
            )
        if (
            isinstance(test_normal_fraction, bool)
            or not isinstance(test_normal_fraction, int | float)
            or not 0 <= test_normal_fraction < 1
        ):
            raise ValueError(
                "data.test_normal_fraction must be a number in [0, 1), got "
                f"{test_normal_fraction!r}."
            )
        super().__init__(
            **base,
        )
        self.root = Path(root).expanduser()
        self.category = category
        self.normal_dir = normal_dir
        self.abnormal_dir = abnormal_dir
        self.mask_dir = mask_dir
        self.normal_test_dir = normal_test_dir
        self.test_normal_fraction = float(test_normal_fraction)
        self.hparams["root"] = str(root)

    def _folder(self, key: str, value: str) -> Path:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.root.absolute() / path
        if not path.is_dir():
            raise DatasetError(
                f"data.{key}: folder {path} does not exist. Expected layout: {FOLDER_LAYOUT}. "
                f"Fix: set data.root and data.{key} (relative to data.root, or absolute)."
            )
        return path

    def _images(self, key: str, folder: Path, required: bool) -> list[Path]:
        images = list_images(folder)
        if required and not images:
            raise DatasetError(
                f"No images in {folder} (data.{key}): expected files with an extension in "
                f"{', '.join(IMAGE_EXTENSIONS)}."
            )
        return images

    def scan(self) -> tuple[list[Sample], dict[str, list[Sample]]]:
        normal_dir = self._folder("normal_dir", self.normal_dir)
        normals = [Sample(p, NORMAL, GOOD) for p in self._images("normal_dir", normal_dir, True)]
        if self.normal_test_dir is not None:
            test_dir = self._folder("normal_test_dir", self.normal_test_dir)
            train = normals
            test = [
                Sample(p, NORMAL, GOOD) for p in self._images("normal_test_dir", test_dir, True)
            ]
        else:
            names = [str(s.image_path) for s in normals]
            held_out = split_groups(
                names, self.test_normal_fraction, np.random.default_rng([self.seed, 0])
            )
            train = [s for s in normals if str(s.image_path) not in held_out]
            test = [s for s in normals if str(s.image_path) in held_out]
        if self.abnormal_dir is not None:
            abnormal_dir = self._folder("abnormal_dir", self.abnormal_dir)
            abnormal = self._images("abnormal_dir", abnormal_dir, True)
            masks: dict[Path, Path] = {}
            if self.mask_dir is not None:
                masks = pair_masks(abnormal, self._folder("mask_dir", self.mask_dir), abnormal_dir)
            test += [Sample(p, ANOMALOUS, DEFECT_TYPE, masks.get(p)) for p in abnormal]
        else:
            warnings.warn(
                f"Folder dataset {self.root} has no data.abnormal_dir: the test set holds normal "
                "images only, so AUROC and other two-class metrics are undefined.",
                DataWarning,
                stacklevel=2,
            )
        return train, {self.category: test}
