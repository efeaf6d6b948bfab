"""Multiruns that survive: resume after a kill, skip completed jobs, reproducible seeds,
submitit and DDP launchers, and the papers' grids shrunk with debug=smoke."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, run_train
from tests.test_resume import TINY, TINY_STEPS

FAST = [
    "logger=none",
    "callbacks.progress_bar.refresh_rate=0",
    "data.batch_size=8",
    "data.image_size=32",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=null",
]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_killed_run_resumes_to_the_same_number_of_steps(tmp_path: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    args = [
        *FAST,
        "trainer.max_epochs=12",
        "trainer.limit_train_batches=4",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "train.py"), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "training finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)  # like a pre-empted node: no clean-up at all
    process.wait(timeout=30)
    killed = _results(run_dir)
    assert killed["status"] == "running"  # visible as unfinished, never silently absent

    resumed = run_train(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = _results(run_dir)
    assert results["status"] == "completed"
    assert results["resumed_from"] == str(last)
    # 12 epochs x 4 batches x 2 optimizer steps, exactly as without the interruption.
    assert results["global_step"] == 12 * 4 * 2

    again = run_train(*args)
    assert again.returncode == 0
    assert "skipping this job" in again.stderr + again.stdout
    assert _results(run_dir)["finished_at"] == results["finished_at"]


def test_same_command_twice_gives_the_same_metrics(tmp_path: Path, cache_dir: Path) -> None:
    runs = []
    for name in ("a", "b"):
        completed = run_train(
            "debug=fast", *FAST, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / name}"
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        runs.append(_results(tmp_path / name)["categories"]["textile"])
    for key in ("auroc", "average_precision", "threshold", "pixel_auroc", "confusion_matrix"):
        assert runs[0][key] == runs[1][key], key


def test_two_job_sweep_through_submitit_local(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    completed = run_train(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        "debug=fast",
        *FAST,
        "seed=0,1",
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={sweep}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    statuses = [_results(sweep / str(job))["status"] for job in (0, 1)]
    assert statuses == ["completed", "completed"]
    assert list((sweep / ".submitit").iterdir()), "jobs did not go through submitit"


def test_ddp_two_cpu_processes_with_gloo(tmp_path: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "ddp"
    completed = run_train(
        "debug=fast",
        *FAST,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "gloo" in completed.stderr + completed.stdout
    results = _results(run_dir)
    assert results["status"] == "completed"
    metrics = results["categories"]["textile"]
    # Tested once, on one device: every test image counted exactly once.
    assert metrics["n_images"] == 120 and 0 <= metrics["auroc"] <= 1


def _tiny_mvtec(root: Path, categories: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for category in categories:
        base = root / category
        for split, kind, count in (
            ("train", "good", 12),
            ("test", "good", 4),
            ("test", "crack", 4),
        ):
            folder = base / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(90, 110, (48, 48, 3), dtype=np.uint8)
                if kind != "good":
                    image[10:20, 10:20] = 255
                    mask_dir = base / "ground_truth" / kind
                    mask_dir.mkdir(parents=True, exist_ok=True)
                    mask = np.zeros((48, 48), np.uint8)
                    mask[10:20, 10:20] = 255
                    cv2.imwrite(str(mask_dir / f"{i:03d}_mask.png"), mask)
                cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root


def test_paper_grid_runs_as_smoke_and_reports_beside_the_published_table(tmp_path: Path) -> None:
    """``experiment=mvtec_table1 debug=smoke``: the paper-settings grid (AnoGAN and the three
    ``<name>_paper`` models, one category here to keep the suite short) trains end to end,
    and ``report.py --published skip_sa_table1`` sets each cell beside the paper's figure."""
    root = _tiny_mvtec(tmp_path / "mvtec", ["bottle", "cable"])
    completed = run_train(
        "-m",
        "experiment=mvtec_table1",
        "debug=smoke",
        "grid.max_items=1",
        f"data.root={root}",
        f"paths.root_dir={tmp_path}",
        "logger=none",
        "callbacks.progress_bar.refresh_rate=0",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    sweep = tmp_path / "multirun" / "mvtec_table1"
    jobs = sorted((sweep / "paper").glob("*/results.json"))
    results = [json.loads(path.read_text()) for path in jobs]
    assert {(r["config"]["model_name"], r["config"]["category"]) for r in results} == {
        (m, "bottle") for m in ("anogan", "ganomaly_paper", "skip_ganomaly_paper", "skip_sa_paper")
    }
    assert all(r["status"] == "completed" for r in results)
    report = subprocess.run(
        [sys.executable, "report.py", str(sweep), "--published", "skip_sa_table1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    rows = {
        (row[0], row[1]): row[2:]
        for row in csv.reader((sweep / "report" / "published_skip_sa_table1.csv").open())
    }
    header = rows[("test set", "model")]
    assert header == ["paper settings", "published", "Δ paper settings"]
    published = {"AnoGAN": 0.802, "GANomaly": 0.791, "Skip-GANomaly": 0.940, "Skip-SA": 0.954}
    for model, value in published.items():
        reproduced, paper_value, difference = rows[("bottle", model)]
        assert float(paper_value) == value
        assert float(difference) == pytest.approx(float(reproduced) - value, abs=1.5e-3)
    assert rows[("cable", "Skip-SA")] == ["not run", "0.754", "-"]


def test_sweep_that_loses_a_job_to_a_crash_reports_it_missing_and_relaunch_finishes_it(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Job 1 of a two-job sweep is SIGKILLed while writing its ``last.ckpt`` (the process,
    and so the sweep, dies: a crash, not an exception). The report shows that job
    ``missing`` (its results.json still says running, but its process is gone); the same
    command again skips the completed job and resumes job 1 to the end."""
    sweep = tmp_path / "sweep"
    command = [
        "-m",
        *TINY,
        "data.category=textile,fabric",
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={sweep}",
    ]
    crashed = run_train(
        *command,
        "+callbacks.fault._target_=tests.faults.KillDuringSave",
        "+callbacks.fault.save=2",
        "+callbacks.fault.job=${hydra:job.num}",
        "+callbacks.fault.kill_job=1",
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert _results(sweep / "0")["status"] == "completed"
    finished_at = _results(sweep / "0")["finished_at"]

    report = subprocess.run(
        [sys.executable, "report.py", str(sweep)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    rows = {
        row.split(",")[0]: row.split(",")[1:]
        for row in (sweep / "report" / "auroc_table.csv").read_text().splitlines()[1:]
    }
    assert rows["fabric"] == ["missing"] and rows["textile"][0] not in ("missing", "running")

    relaunched = run_train(*command)
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    assert _results(sweep / "0")["finished_at"] == finished_at  # skipped, not re-run
    job = _results(sweep / "1")
    assert job["status"] == "completed"
    assert job["resumed_from"] == str(sweep / "1" / "checkpoints" / "epoch000.ckpt")
    assert job["global_step"] == TINY_STEPS
