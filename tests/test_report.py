"""Across runs: a sweep becomes the papers' tables and figures; W&B offline runs hold it all."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_gan.evaluation.image_scores import ImageScores, read_image_scores
from tests.conftest import REPO_ROOT, run_train
from tests.wandb_offline import read_offline_run


@pytest.fixture(scope="module")
def sweep_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-model x 2-category sweep, and a second sweep holding one deliberately failed job."""
    root = tmp_path_factory.mktemp("sweep")
    cache = root / "cache"
    common = [
        "debug=fast",
        "logger=none",
        "callbacks.progress_bar.refresh_rate=0",
        f"paths.root_dir={root}",
        f"paths.cache_dir={cache}",
    ]
    good = run_train(
        "-m",
        "model=ganomaly,skip_ganomaly",
        "data.category=textile,fabric",
        "hydra.sweep.dir=" + str(root / "multirun" / "grid"),
        *common,
    )
    assert good.returncode == 0, good.stderr[-3000:]
    # model.lr=-1 makes Adam refuse at the start of fit: a real failure inside the job.
    bad = run_train(
        "-m",
        "model=ganomaly",
        "data.category=broken",
        "model.lr=-1",
        "hydra.sweep.dir=" + str(root / "multirun" / "failed"),
        *common,
    )
    assert bad.returncode == 0, "a failed job must not abort the sweep"
    return root / "multirun" / "grid", root / "multirun" / "failed"


def _table(path: Path) -> list[list[str]]:
    with open(path) as stream:
        return list(csv.reader(stream))


def test_report_builds_both_tables_with_right_cells(
    sweep_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    grid, failed = sweep_dirs
    completed = subprocess.run(
        [
            sys.executable,
            "report.py",
            str(grid),
            str(failed),
            "--out",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Image AUROC" in completed.stdout

    expected: dict[tuple[str, str], dict] = {}
    for results_file in grid.glob("*/results.json"):
        results = json.loads(results_file.read_text())
        assert results["status"] == "completed"
        category = results["config"]["category"]
        expected[(category, results["config"]["model_name"])] = results["categories"][category]
    assert len(expected) == 4

    auroc = _table(tmp_path / "auroc_table.csv")
    assert auroc[0] == ["category", "ganomaly", "skip_ganomaly"]
    rows = {row[0]: row[1:] for row in auroc[1:]}
    assert set(rows) == {"textile", "fabric", "broken", "mean"}
    for category in ("textile", "fabric"):
        for column, model in enumerate(("ganomaly", "skip_ganomaly")):
            assert rows[category][column] == f"{expected[(category, model)]['auroc']:.3f}"
    assert rows["broken"] == ["failed", "missing"]
    # The mean covers the cells that have a value and says how many of the rows that is.
    skip_mean = (
        expected[("textile", "skip_ganomaly")]["auroc"]
        + expected[("fabric", "skip_ganomaly")]["auroc"]
    ) / 2
    assert rows["mean"][1] == f"{skip_mean:.3f} (2/3)"

    prf = _table(tmp_path / "precision_recall_f1_table.csv")
    assert prf[0] == ["class", "model", "precision", "recall", "f1"]
    cells = {(row[0], row[1]): row[2:] for row in prf[1:]}
    metrics = expected[("fabric", "skip_ganomaly")]
    assert cells[("fabric", "skip_ganomaly")] == [
        f"{metrics[k]:.3f}" for k in ("precision", "recall", "f1")
    ]
    assert cells[("broken", "ganomaly")] == ["failed"] * 3
    assert (tmp_path / "auroc_table.md").read_text().startswith("| category |")

    lift = _table(tmp_path / "lift_table.csv")
    assert lift[0] == [
        "test set",
        "model",
        "auroc",
        "mean reference",
        "pca reference",
        "best reference",
        "lift",
    ]
    cells = {(row[0], row[1]): row[2:] for row in lift[1:]}
    reference = metrics["reference"]
    assert cells[("fabric", "skip_ganomaly")] == [
        f"{value:.3f}"
        for value in (
            metrics["auroc"],
            reference["mean"]["auroc"],
            reference["pca"]["auroc"],
            reference["auroc"],
            reference["lift"],
        )
    ]
    assert cells[("broken", "ganomaly")] == ["failed"] * 5

    for figure in ("auroc_per_category.png", "confusion_matrices.png"):
        assert (tmp_path / figure).stat().st_size > 5_000, figure


def test_failed_job_keeps_its_traceback(sweep_dirs: tuple[Path, Path]) -> None:
    _, failed = sweep_dirs
    (results_file,) = failed.glob("*/results.json")
    results = json.loads(results_file.read_text())
    assert results["status"] == "failed"
    assert "Invalid learning rate" in results["error"]["message"]
    assert "Traceback" in results["error"]["traceback"]
    assert results["sweep_dir"] == str(failed.resolve())


def test_repeated_seeds_show_mean_and_std(tmp_path: Path) -> None:
    from anomaly_gan.evaluation.results import write_results
    from anomaly_gan.evaluation.tables import build_report

    for seed, auroc in ((0, 0.6), (1, 0.8)):
        write_results(
            tmp_path / str(seed),
            {
                "status": "completed",
                "config": {"model_name": "ganomaly", "category": "bottle", "seed": seed},
                "categories": {
                    "bottle": {
                        "auroc": auroc,
                        "precision": 0.5,
                        "recall": 0.5,
                        "f1": 0.5,
                        "confusion_matrix": {"tn": 1, "fp": 1, "fn": 1, "tp": 1},
                    }
                },
            },
        )
    build_report([tmp_path], tmp_path / "report")
    rows = _table(tmp_path / "report" / "auroc_table.csv")
    assert rows[1] == ["bottle", "0.700 ± 0.141"]


def test_run_artifacts_and_offline_wandb_run(tmp_path: Path, cache_dir: Path) -> None:
    completed = run_train(
        "debug=fast",
        "logger=many",
        "logger.wandb.mode=offline",
        "logger.wandb.group=grid-a",
        "callbacks.progress_bar.refresh_rate=0",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    metrics = results["categories"]["textile"]
    assert 0 <= metrics["pixel_auroc"] <= 1 and 0 <= metrics["aupro"] <= 1
    artifacts = results["artifacts"]["textile"]
    figures = {"roc", "histogram", "confusion_matrix", "samples"}
    assert set(artifacts) == figures | {"scores"}
    for kind in figures:
        assert (run_dir / artifacts[kind]).stat().st_size > 5_000
    # Every test image's score, as the run ranked them (and the better reference's).
    table = read_image_scores(run_dir / artifacts["scores"])
    assert len(table.image_paths) == metrics["n_images"]
    assert table.auroc() == pytest.approx(metrics["auroc"], abs=1e-6)
    reference = metrics["reference"]
    assert table.reference_scores is not None
    reference_table = ImageScores(
        table.image_paths, table.defect_types, table.labels, table.reference_scores, None
    )
    assert reference_table.auroc() == pytest.approx(reference["auroc"], abs=1e-6)

    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    written = read_offline_run(offline)
    history = written["history"]
    assert history["test/textile/auroc"] == pytest.approx(metrics["auroc"])
    for key in ("train/g_adv", "train/g_con", "train/g_enc", "train/d", "val/con"):
        assert key in history, key
    assert history["test/results/_type"] == "table-file"
    assert history["test/textile/scores/_type"] == "table-file"
    assert history["test/textile/samples/_type"] == "images/separated"
    media = list((offline / "files" / "media" / "images").rglob("*.png"))
    assert len(media) == 4
    assert written["run"]["group"] == "grid-a"
    assert {"ganomaly", "synthetic", "textile"} <= set(written["run"]["tags"])
    assert written["config"]["model"]["_target_"] == "anomaly_gan.models.Ganomaly"
