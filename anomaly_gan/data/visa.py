"""VisA read straight from its raw release layout and split CSV (no copying or conversion).

Layout (as distributed)::

    <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<category>/Data/Masks/Anomaly/*.png
    <root>/split_csv/1cls.csv      columns: object, split, label, image, mask

The split comes from the CSV: ``train`` rows with label ``normal`` are the training normals;
``test`` rows (``normal`` and ``anomaly``) are the test set. Masks store class indices and
are binarised (any non-zero pixel = defect) when read. Paths in the CSV are relative to
the root and must stay inside it: a row pointing elsewhere (``../``, an absolute path) is
refused, since a CSV is data and should never make us read arbitrary files.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from anomaly_gan.data.datamodule import (
    AnomalyDataModule,
    check_category,
    check_test_categories,
    missing_root_message,
)
from anomaly_gan.data.dataset import ANOMALOUS, NORMAL, DatasetError, Sample

log = logging.getLogger(__name__)

VISA_CATEGORIES: tuple[str, ...] = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
VISA_SPLIT_CSV = "split_csv/1cls.csv"
VISA_CSV_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
VISA_LAYOUT = (
    "<root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG, "
    "<root>/<category>/Data/Masks/Anomaly/*.png, <root>/split_csv/1cls.csv "
    "(columns object,split,label,image,mask)"
)
_SPLITS = ("train", "test")
_LABELS = {"normal": NORMAL, "anomaly": ANOMALOUS}
DEFECT_TYPE = "anomaly"  # the 1-class CSV has no defect names
GOOD = "good"


@dataclass(frozen=True)
class VisaRow:
    """One validated CSV row; ``line`` is its line number in the file (for error messages)."""

    line: int
    category: str
    split: str
    label: int
    image: Path
    mask: Path | None


def _path_inside_root(root: Path, text: str, csv_path: Path, line: int, column: str) -> Path:
    """``root / text`` if it stays inside ``root`` (checked lexically), else ``DatasetError``."""
    where = f"{csv_path}, line {line}, column {column!r}"
    value = text.strip()
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value) or os.path.isabs(value):
        raise DatasetError(
            f"{where}: absolute path {value!r}; paths in the split CSV must be relative to "
            f"data.root ({root}). Fix the CSV (e.g. candle/Data/Images/Normal/0000.JPG)."
        )
    joined = os.path.normpath(os.path.join(root, value))
    if not joined.startswith(os.path.normpath(root) + os.sep):
        raise DatasetError(
            f"{where}: path {value!r} points outside the dataset root {root}. Every path in "
            "the split CSV must stay inside data.root; fix or remove that row."
        )
    return Path(joined)


def _parse_row(
    root: Path, csv_path: Path, line: int, record: dict[str, str | None]
) -> list[VisaRow]:
    """Zero (blank line) or one validated row."""
    values = {key: (record.get(key) or "").strip() for key in VISA_CSV_COLUMNS}
    if not any(values.values()):
        return []
    if values["split"] not in _SPLITS:
        raise DatasetError(
            f"{csv_path}, line {line}: split {values['split']!r} is not one of "
            f"{', '.join(_SPLITS)}."
        )
    if values["label"] not in _LABELS:
        raise DatasetError(
            f"{csv_path}, line {line}: label {values['label']!r} is not one of "
            f"{', '.join(_LABELS)}."
        )
    if not values["object"] or not values["image"]:
        raise DatasetError(f"{csv_path}, line {line}: empty object or image column.")
    image = _path_inside_root(root, values["image"], csv_path, line, "image")
    mask = None
    if values["mask"]:
        mask = _path_inside_root(root, values["mask"], csv_path, line, "mask")
    label = _LABELS[values["label"]]
    return [VisaRow(line, values["object"], values["split"], label, image, mask)]


def read_visa_split(root: Path, csv_path: Path) -> list[VisaRow]:
    """Parse and validate the split CSV (columns, split/label values, paths inside root)."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DatasetError(
            f"Cannot read the VisA split file {csv_path}: {error.strerror or error}. Expected "
            f"layout: {VISA_LAYOUT}. Fix: set data.root to the extracted VisA folder (or "
            "data.download=true with an empty data.root), or data.split_csv to your CSV."
        ) from error
    rows: list[VisaRow] = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in VISA_CSV_COLUMNS if name not in header]
    if missing:
        raise DatasetError(
            f"{csv_path} lacks column(s) {', '.join(missing)}; found "
            f"{', '.join(header) or '(no header)'}. Expected: {', '.join(VISA_CSV_COLUMNS)}."
        )
    reader.fieldnames = header
    for record in reader:
        rows.extend(_parse_row(root, csv_path, reader.line_num, record))
    if not rows:
        raise DatasetError(f"{csv_path} has a header but no rows. Use the 1cls.csv from VisA.")
    return rows


def _sample(row: VisaRow, csv_path: Path) -> Sample:
    """A ``Sample`` for one row, after checking its files exist (named in the error)."""
    if not row.image.is_file():
        raise DatasetError(
            f"{csv_path}, line {row.line}: image {row.image} does not exist. The dataset is "
            "incomplete: extract the VisA archive again into data.root (or remove the row)."
        )
    if row.label == NORMAL:
        return Sample(row.image, NORMAL, GOOD)
    if row.mask is not None and not row.mask.is_file():
        raise DatasetError(
            f"{csv_path}, line {row.line}: anomalous image {row.image} has no mask: "
            f"{row.mask} does not exist. Restore the mask from the VisA archive or remove "
            "the row."
        )
    return Sample(row.image, ANOMALOUS, DEFECT_TYPE, row.mask)


def scan_visa(
    root: Path,
    category: str,
    test_categories: Sequence[str] | None = None,
    split_csv: str | Path = VISA_SPLIT_CSV,
) -> tuple[list[Sample], dict[str, list[Sample]]]:
    """(training normals of ``category``, {test category: test samples}) from the CSV."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir() or not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DatasetError(missing_root_message(root, VISA_LAYOUT, downloadable=True))
    csv_path = Path(split_csv).expanduser()
    csv_path = csv_path if csv_path.is_absolute() else root / csv_path
    rows = read_visa_split(root, csv_path)
    known = sorted({row.category for row in rows})
    wanted = [category, *(test_categories or [])]
    for name in wanted:
        if name not in known:
            raise DatasetError(
                f"Unknown VisA category {name!r} (data.category / data.test_categories). "
                f"Valid categories in {csv_path}: {', '.join(known)}."
            )
    for name in dict.fromkeys(wanted):
        if not (root / name).is_dir():
            raise DatasetError(
                f"Category folder {root / name} does not exist although {csv_path} lists it. "
                f"Expected layout: {VISA_LAYOUT}. Extract the full VisA archive into data.root."
            )

    train: list[Sample] = []
    skipped_anomalies = 0
    for row in rows:
        if row.category == category and row.split == "train":
            if row.label == ANOMALOUS:
                skipped_anomalies += 1  # e.g. 2cls CSVs: we train on normals only
                continue
            train.append(_sample(row, csv_path))
    if skipped_anomalies:
        log.info(
            "Ignored %d anomalous training rows of %s in %s.", skipped_anomalies, category, csv_path
        )
    if not train:
        raise DatasetError(
            f"No training images for category {category!r} in {csv_path}: expected rows with "
            "split=train and label=normal. Check data.category and data.split_csv."
        )
    tests: dict[str, list[Sample]] = {}
    for name in test_categories or [category]:
        samples = [_sample(r, csv_path) for r in rows if r.category == name and r.split == "test"]
        if not samples:
            raise DatasetError(
                f"No test rows for category {name!r} in {csv_path} (split=test). Check "
                "data.test_categories and data.split_csv."
            )
        tests[name] = samples
    return train, tests


class VisADataModule(AnomalyDataModule):
    """VisA from its raw layout and ``split_csv/1cls.csv``; cross-class via test_categories.

    Paper protocol (Toker, Korkmaz, "Combining Generative Models and Attention Networks for
    Anomaly Detection in Industrial Settings", Sec. II.A): ``category=candle
    test_categories=[candle,cashew,fryum] test_limit=100``.
    """

    archive_name: ClassVar[str | None] = "visa"

    def __init__(
        self,
        root: str | Path,
        category: str = "candle",
        test_categories: Sequence[str] | None = None,
        split_csv: str = VISA_SPLIT_CSV,
        **base: Any,
    ) -> None:
        check_category(category, "a VisA category name", "VisA", VISA_CATEGORIES)
        checked_test_categories = check_test_categories(test_categories)
        super().__init__(**base)
        self.set_source(root, category, checked_test_categories)
        self.split_csv = split_csv

    def check_layout(self, root: Path) -> None:
        """``split_csv/1cls.csv`` plus at least one category's ``Data/Images`` folder."""
        if not (root / VISA_SPLIT_CSV).is_file() or not any(
            (root / name / "Data" / "Images").is_dir() for name in VISA_CATEGORIES
        ):
            raise DatasetError(
                f"{root} lacks {VISA_SPLIT_CSV} or the category folders. Expected layout: "
                f"{VISA_LAYOUT}."
            )

    def scan(self) -> tuple[list[Sample], dict[str, list[Sample]]]:
        return scan_visa(self.root, self.category, self.test_categories, self.split_csv)
