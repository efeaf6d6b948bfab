"""``python train.py`` end to end, as a user runs it, in a subprocess."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from tests.conftest import REPO_ROOT, run_train
from tests.faults import OPTIONAL_PACKAGES, without_packages
from tests.test_resume import TINY


def _only_run_dir(root: Path) -> Path:
    runs = sorted((root / "outputs" / "train").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_train_writes_valid_results_json(tmp_path: Path, cache_dir: Path) -> None:
    completed = run_train(
        "debug=fast", f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())

    assert results["status"] == "completed"
    assert results["config"]["model"] == "Ganomaly" and results["config"]["image_size"] == 32
    metrics = results["categories"]["textile"]
    assert metrics["n_normal"] > 0 and metrics["n_anomalous"] > 0
    for key in (
        "auroc",
        "average_precision",
        "f1_max_oracle",
        "precision",
        "recall",
        "f1",
        "accuracy",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    matrix = metrics["confusion_matrix"]
    assert sum(matrix.values()) == metrics["n_images"]
    assert matrix["tp"] + matrix["fn"] == metrics["n_anomalous"]
    assert set(metrics["by_defect_type"]) == {"missing", "scratch", "spot", "stain"}
    assert math.isfinite(results["threshold"]["value"])
    assert results["threshold"]["source"] == "validation normals"
    assert results["duration_s"] > 0 and not list(run_dir.glob(".results.*"))

    # The no-learning reference sits beside the model's metrics, with the lift over it.
    reference = metrics["reference"]
    # GANomaly sums its score with the PCA's (model.companion=pca) and with its encoder's
    # feature memory (model.memory=encoder) by default, so the reference is the best
    # no-learning detector of every recipe: the sums with the PCA and with an untrained
    # encoder's memory included.
    assert results["config"]["companion"] == "pca" and results["config"]["memory"] == "encoder"
    plain = ("mean", "pca", "mean+pca")
    detectors = (*plain, *(f"{name}+memory" for name in plain))
    assert reference["best"] in detectors and reference["pca"]["k"] >= 1
    assert reference["auroc"] == max(reference[name]["auroc"] for name in detectors)
    assert math.isclose(reference["lift"], metrics["auroc"] - reference["auroc"], abs_tol=1e-9)
    # Both come with how far another draw of test images could move them.
    low, high = metrics["auroc_interval"]
    assert 0.0 <= low <= metrics["auroc"] + 1e-9 and metrics["auroc"] - 1e-9 <= high <= 1.0
    low, high = reference["lift_interval"]
    assert -1.0 <= low <= reference["lift"] + 1e-9 and reference["lift"] - 1e-9 <= high <= 1.0

    # The tested checkpoint was chosen on validation and carries its threshold.
    checkpoint = Path(results["checkpoint"]["path"])
    assert results["checkpoint"]["monitor"] == "val/con" and checkpoint.is_file()
    assert results["checkpoint"]["chosen_by"] == (
        "lowest val/con over the validations (validation normals only)"
    )
    state = torch.load(checkpoint, weights_only=True)
    assert float(state["state_dict"]["scorer.threshold"]) == results["threshold"]["value"]
    assert state["datamodule_hyper_parameters"]["image_size"] == 32

    # The table is printed and the metrics are logged.
    assert "auroc" in completed.stdout and "textile" in completed.stdout
    logged = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (
        "train/g_adv",
        "train/g_con",
        "train/g_enc",
        "train/d",
        "val/con",
        "val/synthetic_auroc",
        "test/textile/auroc",
        "test/textile/lift",
    ):
        assert column in logged, column
    assert "ref auroc" in completed.stdout


def _budget_run(root: Path, overrides: tuple[str, ...]) -> dict[str, object]:
    """One ``python train.py`` run in its own directory and data cache: how it ended."""
    completed = run_train(*overrides, f"paths.root_dir={root}", f"paths.cache_dir={root / 'cache'}")
    assert completed.returncode == 0, completed.stderr[-3000:]
    run_dir = _only_run_dir(root)
    results = json.loads((run_dir / "results.json").read_text())
    with (run_dir / "csv" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    trained = [row for row in rows if row["train/g_con"]]  # one row per generator update
    return {
        "global_step": results["global_step"],
        "batches_per_epoch": list(Counter(int(row["epoch"]) for row in trained).values()),
        # the generator updates (1-based) right after which validation ran
        "validated_after": [
            1 + [row["step"] for row in trained].index(row["step"])
            for row in rows
            if row["val/con"]
        ],
        "auroc": results["categories"]["textile"]["auroc"],
    }


def test_iteration_budget_ends_on_the_same_step_count_twice(tmp_path: Path) -> None:
    """``iterations`` is a budget of generator updates (batches) across epoch ends, rounded
    up to a multiple of the validation interval so the last weights are validated; both
    optimizers step once per batch and Lightning counts each, so ``trainer.global_step``
    ends on exactly ``2 * budget``. The budget here (8) is not a multiple of the epoch
    length (3 batches), so the run must stop in the middle of its third epoch. Two
    independent runs (own output and data cache, run side by side) end identically."""
    epoch, iterations, validations = 3, 7, 2
    every = math.ceil(iterations / validations)  # 4
    budget = every * math.ceil(iterations / every)  # 7 rounds up to 8
    assert budget == 8 and budget % epoch != 0
    overrides = (
        "debug=fast",
        f"trainer.limit_train_batches={epoch}",  # debug=fast's too; explicit: the epoch length
        "trainer.max_epochs=null",  # debug=fast's 2 epochs would decide otherwise
        f"iterations={iterations}",
        f"validations={validations}",
        "reference=false",
    )
    with ThreadPoolExecutor(max_workers=2) as pool:  # two processes: ~half the wall time
        first, second = pool.map(
            lambda attempt: _budget_run(tmp_path / attempt, overrides), ("first", "second")
        )
    assert first == second
    assert first["global_step"] == 2 * budget == 16
    assert first["batches_per_epoch"] == [3, 3, 2]  # stopped 2 batches into the third epoch
    assert first["validated_after"] == [every, 2 * every]  # across an epoch end; at the end


def test_failed_run_records_status_and_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dataset"
    completed = run_train("data=mvtec", f"data.root={missing}", f"paths.root_dir={tmp_path}")
    assert completed.returncode != 0
    results = json.loads((_only_run_dir(tmp_path) / "results.json").read_text())
    assert results["status"] == "failed"
    assert str(missing) in results["error"]["message"]
    assert "train/good" in results["error"]["message"]
    assert "Traceback" in results["error"]["traceback"]


def test_last_checkpoint_selection(tmp_path: Path, cache_dir: Path) -> None:
    completed = run_train(
        "debug=fast",
        "test_checkpoint=last",
        "logger=none",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((_only_run_dir(tmp_path) / "results.json").read_text())
    assert results["checkpoint"]["selection"] == "last"
    assert results["checkpoint"]["chosen_by"].startswith("the final weights")
    assert results["checkpoint"]["path"].endswith("last.ckpt")


def test_metrics_survive_a_figure_that_cannot_be_written(tmp_path: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "plots").write_text("a file where the figures' folder should go")
    completed = run_train(
        "debug=fast",
        "reference=false",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache_dir}",
    )
    assert completed.returncode != 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed"
    assert 0.0 <= results["categories"]["textile"]["auroc"] <= 1.0


def test_commands_run_on_a_machine_without_the_optional_packages(
    tmp_path: Path, cache_dir: Path
) -> None:
    """wandb, onnx, onnxruntime, optuna and submitit are imported only where used: a sweep
    with the CSV logger and the basic launcher, ``predict.py`` and ``report.py`` run with all
    five unimportable, ``export.py verify=false`` with all but onnx (the format it writes)."""
    sweep = tmp_path / "sweep"
    absent = without_packages(tmp_path / "absent", OPTIONAL_PACKAGES)

    def run(script: str, *args: str, env: dict[str, str] = absent) -> None:
        done = subprocess.run(
            [sys.executable, str(REPO_ROOT / script), *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert done.returncode == 0, f"{script}: {done.stderr[-3000:]}"

    run(
        "train.py",
        "-m",
        *TINY,
        "logger=csv",
        "seed=0",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={cache_dir}",
    )
    assert json.loads((sweep / "0" / "results.json").read_text())["status"] == "completed"
    checkpoint = sweep / "0" / "checkpoints" / "last.ckpt"
    images = cache_dir / "synthetic" / "textile" / "test" / "good"
    run("predict.py", f"ckpt_path={checkpoint}", f"input={images}", f"output={tmp_path / 'p'}")
    assert (tmp_path / "p" / "predictions.csv").is_file()
    run("report.py", str(sweep))
    no_onnx_runtime = without_packages(
        tmp_path / "only_onnx", [name for name in OPTIONAL_PACKAGES if name != "onnx"]
    )
    onnx_file = tmp_path / "model.onnx"
    run(
        "export.py",
        f"ckpt_path={checkpoint}",
        "verify=false",
        f"output={onnx_file}",
        env=no_onnx_runtime,
    )
    assert onnx_file.is_file()
