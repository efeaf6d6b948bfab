"""Every test image's score, written beside ``results.json``, and two runs compared on them.

A run's AUROC does not say which images it ranks wrongly, and two runs' AUROCs alone do not
say whether one setting beats another or only drew luckier test images: on a test set of
17 normal images one image moves the AUROC by several hundredths. Each run therefore writes
``scores/<test set>.csv`` (one row per test image: path, defect type, label, the model's
score and decision, and the better no-learning reference's score), and
:func:`compare_runs` pairs two runs' tables image by image: the AUROC difference with its
paired bootstrap interval (:func:`~anomaly_gan.evaluation.intervals.auroc_interval`; the
same resampled images score both runs, so what both rank alike cancels).

    python report.py --compare outputs/train/<run A> outputs/train/<run B>
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from anomaly_gan.evaluation.artifacts import safe_name
from anomaly_gan.evaluation.intervals import auroc_interval
from anomaly_gan.evaluation.metrics import image_metrics

#: Folder of the per-image tables inside a run directory.
SCORES_DIR = "scores"
#: The columns of a table, in order.
COLUMNS = (
    "image_path",
    "defect_type",
    "label",
    "score",
    "predicted_anomalous",
    "reference_score",
)


def scores_file(run_dir: Path, test_set: str) -> Path:
    """Where a run keeps the per-image table of ``test_set``."""
    return run_dir / SCORES_DIR / f"{safe_name(test_set)}.csv"


@dataclass
class ImageScores:
    """One test set's per-image table (test loader order)."""

    image_paths: list[str]
    defect_types: list[str]
    labels: Tensor  # (N,) 1 = defective
    scores: Tensor  # (N,) the model's
    reference_scores: Tensor | None  # (N,) the better no-learning reference's, if computed

    def auroc(self) -> float | None:
        """The image AUROC as the run reports it (None with one class only)."""
        return _auroc(self.scores, self.labels)


def _auroc(scores: Tensor, labels: Tensor) -> float | None:
    return image_metrics(scores, labels, math.nan)["auroc"]


def write_image_scores(
    path: Path, scores: ImageScores, threshold: float, reference_name: str | None = None
) -> Path:
    """Write ``scores`` as a CSV at ``path``; ``predicted_anomalous`` is ``score > threshold``
    (the run's decision). ``reference_name`` says in the header which reference scored the
    last column (``reference_score`` stays empty where none was computed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = scores.reference_scores
    if reference is not None and reference.numel() != scores.scores.numel():
        reference = None  # not the same images: leave the column empty rather than misalign
    header = list(COLUMNS)
    if reference is not None and reference_name:
        header[-1] = f"reference_score ({reference_name})"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, image_path in enumerate(scores.image_paths):
            score = float(scores.scores[index])
            writer.writerow(
                [
                    image_path,
                    scores.defect_types[index],
                    int(scores.labels[index]),
                    repr(score),
                    int(score > threshold),
                    repr(float(reference[index])) if reference is not None else "",
                ]
            )
    return path


def table_rows(path: Path) -> tuple[list[str], list[list[str | int | float | None]]]:
    """The header and rows of a table :func:`write_image_scores` wrote, numbers as numbers
    (a dashboard then sorts scores numerically); a file of another shape is named."""
    with path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle)) or [[]]
    if [name.split(" (")[0] for name in header] != list(COLUMNS):
        raise ValueError(
            f"{path}: not a per-image score table (expected the columns {', '.join(COLUMNS)}); "
            "runs write one per test set under scores/ since this file format was added"
        )

    def typed(index: int, cell: str) -> str | int | float | None:
        if index < 2:
            return cell  # path, defect type
        if cell == "":
            return None  # no reference score
        return int(cell) if index in (2, 4) else float(cell)

    return header, [[typed(i, cell) for i, cell in enumerate(row)] for row in rows]


def read_image_scores(path: Path) -> ImageScores:
    """Read a table :func:`write_image_scores` wrote (:func:`table_rows`)."""
    _, rows = table_rows(path)
    has_reference = bool(rows) and all(row[5] is not None for row in rows)
    return ImageScores(
        image_paths=[str(row[0]) for row in rows],
        defect_types=[str(row[1]) for row in rows],
        labels=torch.tensor([row[2] for row in rows], dtype=torch.long),
        scores=torch.tensor([row[3] for row in rows], dtype=torch.float64),
        reference_scores=(
            torch.tensor([row[5] for row in rows], dtype=torch.float64) if has_reference else None
        ),
    )


@dataclass
class PairedComparison:
    """Two runs on one test set: their AUROCs, the difference and its paired interval."""

    test_set: str
    n_normal: int
    n_anomalous: int
    auroc_a: float | None
    auroc_b: float | None
    interval: tuple[float, float] | None  # of auroc_a - auroc_b

    @property
    def difference(self) -> float | None:
        if self.auroc_a is None or self.auroc_b is None:
            return None
        return self.auroc_a - self.auroc_b


def _tables(run_dir: Path) -> dict[str, Path]:
    folder = run_dir / SCORES_DIR
    tables = {path.stem: path for path in sorted(folder.glob("*.csv"))}
    if not tables:
        raise FileNotFoundError(
            f"{folder}: no per-image score tables; pass run directories of train.py runs "
            "(outputs/train/<time> or multirun/<time>/<job>) that finished testing"
        )
    return tables


def compare_runs(run_a: Path, run_b: Path) -> list[PairedComparison]:
    """Pair two runs' per-image tables on every test set both scored.

    The images are matched by path, so the two runs may list them in any order; a test set
    whose images differ between the runs (another split, another data root) is refused,
    naming the set and how many images differ.
    """
    tables_a, tables_b = _tables(run_a), _tables(run_b)
    shared = [name for name in tables_a if name in tables_b]
    if not shared:
        raise ValueError(
            f"{run_a} and {run_b} share no test set (scores/: {sorted(tables_a)} vs "
            f"{sorted(tables_b)}): compare runs tested on the same data"
        )
    comparisons = []
    for name in shared:
        a, b = read_image_scores(tables_a[name]), read_image_scores(tables_b[name])
        position = {path: index for index, path in enumerate(b.image_paths)}
        differing = len(set(a.image_paths) ^ set(position))
        if differing or len(position) != len(b.image_paths):
            raise ValueError(
                f"test set {name!r}: {differing} image(s) are scored by only one of {run_a} "
                f"and {run_b}: compare runs tested on the same images (same data.root, "
                "split seed and test part)"
            )
        order = torch.tensor([position[path] for path in a.image_paths], dtype=torch.long)
        if not torch.equal(a.labels, b.labels[order]):
            raise ValueError(
                f"test set {name!r}: the same images carry different labels in {run_a} and {run_b}"
            )
        scores_b = b.scores[order]
        comparisons.append(
            PairedComparison(
                test_set=name,
                n_normal=int((a.labels == 0).sum()),
                n_anomalous=int((a.labels == 1).sum()),
                auroc_a=a.auroc(),
                auroc_b=_auroc(scores_b, a.labels),
                interval=auroc_interval(a.labels, a.scores, baseline=scores_b),
            )
        )
    return comparisons


def format_comparison(comparisons: list[PairedComparison], run_a: Path, run_b: Path) -> str:
    """A Markdown table of :func:`compare_runs`' rows."""

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [
        f"A: {run_a}",
        f"B: {run_b}",
        "",
        "| test set | normal / defective | AUROC A | AUROC B | A − B | 95 % paired interval |",
        "|---|---|---|---|---|---|",
    ]
    for row in comparisons:
        interval = f"[{row.interval[0]:+.4f}, {row.interval[1]:+.4f}]" if row.interval else "n/a"
        difference = "n/a" if row.difference is None else f"{row.difference:+.4f}"
        lines.append(
            f"| {row.test_set} | {row.n_normal} / {row.n_anomalous} | {number(row.auroc_a)} "
            f"| {number(row.auroc_b)} | {difference} | {interval} |"
        )
    lines.append(
        "\nAn interval that spans 0: another draw of test images of the same counts could "
        "as well reverse the order (it covers the test images, not the training seeds)."
    )
    return "\n".join(lines)
