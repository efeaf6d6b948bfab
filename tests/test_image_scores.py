"""Per-image score tables (``scores/<test set>.csv``) and two runs compared image by image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomaly_gan.evaluation.image_scores import (
    ImageScores,
    compare_runs,
    read_image_scores,
    scores_file,
    write_image_scores,
)
from anomaly_gan.evaluation.metrics import image_metrics
from tests.conftest import REPO_ROOT

LABELS = torch.tensor([0] * 6 + [1] * 8)
PATHS = [
    f"/data/test/{'good' if label == 0 else 'crack'}/{index:03d}.png"
    for index, label in enumerate(LABELS.tolist())
]


def _table(scores: torch.Tensor, reference: torch.Tensor | None = None) -> ImageScores:
    defect_types = ["good" if label == 0 else "crack" for label in LABELS.tolist()]
    return ImageScores(list(PATHS), defect_types, LABELS.clone(), scores, reference)


def _run(root: Path, name: str, table: ImageScores, order: list[int] | None = None) -> Path:
    """A run directory holding one test set's table, its rows in ``order``."""
    order = order if order is not None else list(range(len(PATHS)))
    shuffled = ImageScores(
        [table.image_paths[i] for i in order],
        [table.defect_types[i] for i in order],
        table.labels[order],
        table.scores[order],
        None if table.reference_scores is None else table.reference_scores[order],
    )
    run_dir = root / name
    write_image_scores(scores_file(run_dir, "tire/report"), shuffled, threshold=0.5)
    return run_dir


def test_a_table_reads_back_as_written(tmp_path: Path) -> None:
    scores, reference = torch.rand(14, dtype=torch.float64), torch.rand(14, dtype=torch.float64)
    path = write_image_scores(
        scores_file(tmp_path, "tire/report"), _table(scores, reference), 0.5, "pca"
    )
    assert path == tmp_path / "scores" / "tire_report.csv"
    header = path.read_text().splitlines()[0]
    assert header.endswith("reference_score (pca)")
    table = read_image_scores(path)
    assert table.image_paths == PATHS and torch.equal(table.labels, LABELS)
    assert torch.equal(table.scores, scores) and torch.equal(table.reference_scores, reference)
    decisions = [line.split(",")[4] for line in path.read_text().splitlines()[1:]]
    assert decisions == [str(int(s > 0.5)) for s in scores.tolist()]
    assert table.auroc() == pytest.approx(image_metrics(scores, LABELS, 0.5)["auroc"])
    # Without a reference the column stays empty and reads back as None.
    path = write_image_scores(tmp_path / "plain.csv", _table(scores), 0.5)
    assert read_image_scores(path).reference_scores is None

    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"other\.csv.*image_path"):
        read_image_scores(tmp_path / "other.csv")


def test_two_runs_are_paired_image_by_image(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    better = LABELS.double() + 0.6 * torch.rand(14, generator=generator, dtype=torch.float64)
    worse = LABELS.double() + 1.5 * torch.rand(14, generator=generator, dtype=torch.float64)
    run_a = _run(tmp_path, "a", _table(better))
    # B lists the same images in another order: they are matched by path.
    run_b = _run(tmp_path, "b", _table(worse), order=list(reversed(range(14))))
    (row,) = compare_runs(run_a, run_b)
    expected_a = image_metrics(better, LABELS, 0.5)["auroc"]
    expected_b = image_metrics(worse, LABELS, 0.5)["auroc"]
    assert (row.test_set, row.n_normal, row.n_anomalous) == ("tire_report", 6, 8)
    assert row.auroc_a == pytest.approx(expected_a) and row.auroc_b == pytest.approx(expected_b)
    assert row.difference > 0
    low, high = row.interval
    assert low <= row.difference <= high
    # A run against itself: no difference on any resample.
    (same,) = compare_runs(run_a, run_a)
    assert same.difference == 0 and same.interval == (0.0, 0.0)

    # Other images (another split) are refused, naming the test set.
    other = _table(worse)
    other.image_paths[0] = "/data/test/good/elsewhere.png"
    run_c = _run(tmp_path, "c", other)
    with pytest.raises(ValueError, match=r"'tire_report': 2 image\(s\)"):
        compare_runs(run_a, run_c)
    with pytest.raises(FileNotFoundError, match="no per-image score tables"):
        compare_runs(run_a, tmp_path / "empty")


def test_report_compare_prints_the_paired_table(tmp_path: Path) -> None:
    run_a = _run(tmp_path, "a", _table(LABELS.double() + torch.linspace(0, 0.9, 14).double()))
    run_b = _run(tmp_path, "b", _table(torch.linspace(0, 1, 14).double()))
    command = [sys.executable, "report.py", "--compare", str(run_a), str(run_b)]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert "| tire_report | 6 / 8 |" in completed.stdout and "paired interval" in completed.stdout
    alone = subprocess.run(command[:-1], cwd=REPO_ROOT, capture_output=True, text=True)
    assert alone.returncode == 2 and "two run directories" in alone.stderr
