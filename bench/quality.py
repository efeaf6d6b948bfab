"""Does a model detect real defects? Image AUROC per model and size over seeds, next to
two simple baselines computed on the same split (mean-image distance, PCA reconstruction).

    python bench/quality.py          # magnetic tiles, all models, 64 + 128 px, seeds 0-2 (~70 min)
    python bench/quality.py --models ganomaly --sizes 64 --seeds 0 1 2 -- model.lr=1e-4
    python bench/quality.py --jobs 8 --budget 00:00:15:00   # a bigger machine, full budget

Every run is a real ``python train.py`` job (its results.json is read back). The table
reports the *report* part of the test set (``data.selection_fraction``); settings were
chosen on the selection part and on validation normals only (docs/what-works.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from anomaly_gan.data import MVTecDataModule  # noqa: E402
from anomaly_gan.evaluation.baselines import baseline_metrics  # noqa: E402
from anomaly_gan.models.registry import ARCHITECTURES  # noqa: E402

MODELS = list(ARCHITECTURES)
# Skip-SA's epochs cost ~2.5x Skip-GANomaly's at 128 px (two depthwise-separable blocks at
# full resolution on each side); in 4 minutes it stops after 6 epochs, before its validation
# reconstruction error has settled (docs/what-works.md). Runs of up to 15 minutes were allowed.
MODEL_BUDGETS = ["skip_sa@128=00:00:08:00"]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run_job(args: argparse.Namespace, model: str, size: int, seed: int) -> dict:
    run_dir = args.work_dir / f"{model}_{size}_seed{seed}"
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "experiment=magnetic_tile",
        f"data.root={args.root}",
        f"data.category={args.category}",
        f"model={model}",
        f"data.image_size={size}",
        f"seed={seed}",
        f"trainer.max_time={args.model_budget.get((model, size), args.budget_of[size])}",
        "trainer.max_epochs=100000",  # the time budget ends training; test uses best val/con
        f"data.selection_fraction={args.selection_fraction}",
        f"data.test_part={args.test_part}",
        "logger=csv",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]
    results_file = run_dir / "results.json"
    started = time.monotonic()
    returncode = 0
    if not (args.reuse and results_file.is_file()):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None
        completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        returncode = completed.returncode
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    metrics = (results.get("categories") or {}).get(args.category, {})
    return {
        "model": model,
        "size": size,
        "seed": seed,
        "status": results.get("status", "missing"),
        "auroc": metrics.get("auroc"),
        "pixel_auroc": metrics.get("pixel_auroc"),
        "seconds": round(time.monotonic() - started, 1),
        "train_seconds": results.get("fit_seconds"),
        "epochs": results.get("epochs"),
        "run_dir": str(run_dir),
        "returncode": returncode,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="folder holding <category>/ in MVTec layout (default: the real-data folder next "
        "to the repository)",
    )
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--budget",
        nargs="+",
        default=["00:00:03:00", "00:00:04:00"],
        help="trainer.max_time per run: one for every size, or one per --sizes entry "
        "(default: 3 min at 64 px, 4 min at 128 px; runs of up to 15 were allowed)",
    )
    parser.add_argument(
        "--model-budget",
        nargs="*",
        default=MODEL_BUDGETS,
        metavar="MODEL@SIZE=DD:HH:MM:SS",
        help="a model's own budget at one size (default: "
        + " ".join(MODEL_BUDGETS)
        + "; pass the flag alone to use --budget for every model)",
    )
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench" / "runs" / "quality")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quality.json")
    parser.add_argument(
        "--selection-fraction",
        type=float,
        default=0.3,
        help="share of the test set kept for choosing settings (never in the table)",
    )
    parser.add_argument(
        "--test-part",
        choices=["report", "selection"],
        default="report",
        help="report (the table) or selection (for comparing settings)",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="runs at the same time (default 2: one per core here)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per run (default: cores/jobs)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="read runs that already have a results.json"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides after --")
    args = parser.parse_args()
    if not (args.root / args.category / "train" / "good").is_dir():
        parser.error(f"{args.root / args.category} is not an MVTec-layout category folder")

    if len(args.budget) not in (1, len(args.sizes)):
        parser.error("--budget takes one value, or one per --sizes entry")
    budgets = args.budget * len(args.sizes) if len(args.budget) == 1 else args.budget
    args.budget_of = dict(zip(args.sizes, budgets, strict=True))
    entries, args.model_budget = args.model_budget or [], {}
    for entry in entries:
        key, _, budget = entry.partition("=")
        model, _, size = key.partition("@")
        if not (budget and size.isdigit()):
            parser.error(f"--model-budget {entry!r}: expected MODEL@SIZE=DD:HH:MM:SS")
        args.model_budget[(model, int(size))] = budget

    # Baselines on the same split, once on the papers' fixed normalisation and once on the
    # per-image normalisation the models use here (it helps PCA too).
    baselines: dict[int, dict[str, float]] = {}
    for size in args.sizes:
        baselines[size] = {}
        for normalization in ("fixed", "per_image"):
            datamodule = MVTecDataModule(
                root=str(args.root),
                category=args.category,
                image_size=size,
                channels=1,
                normalization=normalization,
                seed=0,
                cache=False,
                val_fraction=0.15,
                selection_fraction=args.selection_fraction,
                test_part=args.test_part,
            )
            metrics = baseline_metrics(datamodule)[args.category]
            for name, m in metrics.items():
                baselines[size][f"{name} ({normalization})"] = m["auroc"]
        print(f"{size} px baselines: {baselines[size]}", flush=True)

    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    grid = [(m, size, seed) for m in args.models for size in args.sizes for seed in args.seeds]
    runs = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for run in pool.map(lambda job: run_job(args, *job), grid):
            runs.append(run)
            print(json.dumps(run), flush=True)

    print("\n| model | size | image AUROC | − best PCA | pixel AUROC | train s | epochs | runs |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for name, value in baselines[size].items():
            print(f"| {name} (baseline) | {size} | {value:.3f} | | - | - | - | - |")
    for model in args.models:
        for size in args.sizes:
            cell = [r for r in runs if r["model"] == model and r["size"] == size]
            done = [r for r in cell if r["status"] == "completed"]
            best_pca = max(v for k, v in baselines[size].items() if k.startswith("pca"))
            aurocs = [r["auroc"] for r in done]
            margin = f"{statistics.mean(aurocs) - best_pca:+.3f}" if aurocs else "-"
            print(
                f"| {model} | {size} | {_mean_std(aurocs)} | {margin} | "
                f"{_mean_std([r['pixel_auroc'] for r in done if r['pixel_auroc'] is not None])}"
                f" | {_mean_std([r['train_seconds'] for r in done if r['train_seconds']])}"
                f" | {_mean_std([r['epochs'] for r in done if r['epochs'] is not None])}"
                f" | {len(done)}/{len(cell)} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"baselines": baselines, "runs": runs}, indent=2))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
