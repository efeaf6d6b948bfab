"""GANomaly on real magnetic-tile defects (MVTec layout), read from the real-data folder next
to the repository; the tests skip when it is absent."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from tests.conftest import run_train


def test_short_ganomaly_run_on_magnetic_tiles(tmp_path: Path, magnetic_tile_root: Path) -> None:
    completed = run_train(
        "experiment=magnetic_tile",
        f"data.root={magnetic_tile_root}",
        "data.num_workers=0",
        "data.batch_size=32",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=8",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar.refresh_rate=0",
        f"paths.root_dir={tmp_path}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    run_dir = next((tmp_path / "outputs" / "train").iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["config"]["image_size"] == 64 and results["config"]["channels"] == 1

    # The reconstruction (context) loss falls during training.
    with open(run_dir / "csv" / "metrics.csv") as stream:
        con = [float(row["train/g_con"]) for row in csv.DictReader(stream) if row["train/g_con"]]
    assert len(con) >= 10
    assert sum(con[-3:]) / 3 < 0.8 * sum(con[:3]) / 3, con

    # Finite metrics for every defect type of the real data.
    metrics = results["categories"]["magnetic_tile"]
    # experiment=magnetic_tile reports on the 70 % "report" part of the 285 + 392 test images
    # (30 %, stratified by defect type, is kept for choosing settings).
    assert metrics["n_normal"] == 199 and metrics["n_anomalous"] == 274
    by_type = metrics["by_defect_type"]
    assert set(by_type) == {"blowhole", "break", "crack", "fray", "uneven"}
    for kind, values in by_type.items():
        for key in ("auroc", "average_precision", "recall"):
            assert math.isfinite(values[key]), (kind, key)
