"""Does a model detect real defects, and does it beat a reconstruction that learns nothing?

    python bench/quality.py             # 4 real sets x 5 models x seeds 0, 1, defaults only
    python bench/quality.py --datasets elpv --models ganomaly --seeds 0 -- model.lr=1e-4
    python bench/quality.py --reuse     # resume: completed runs are read, the others (re)run
    python bench/quality.py --report-only   # tabulate what --work-dir holds, train nothing

Every run is the plain ``python train.py model=<m> data=mvtec data.root=<root>
data.category=<set>`` a new user types, at the defaults in conf/ (budget included; ``--budget``
caps it by time instead), plus only what the bench needs: the seed, the selection/report split
of the test set, a CSV logger and the run folder. Its results.json is read back: the model's
image AUROC, AP, pixel AUROC and AUPRO (where the set has masks) and the no-learning
reference train.py scores beside it (the model's own scorer on the mean training image / a
PCA reconstruction of the training normals, :mod:`anomaly_gan.evaluation.reference`), with
the model's lift over the better one.
The table reports the *report* part of the test set (``data.selection_fraction``);
settings are chosen on the selection part and on validation normals only
(docs/what-works.md).

Goal per row: the mean lift over seeds is at least +0.10 or, where the better reference
already reaches 0.80, at least half of what the reference leaves (``(1 - reference) / 2``).

Raw rows go to ``--out`` (JSON) and the tables to the same path with ``.md``, rewritten after
every run, so a run in the background (``nohup ... &``) can be watched and resumed
(``--reuse``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
from _common import REPO, model_names, read_results, table, train_and_read

from anomaly_gan.evaluation.reference import shown_map_of

#: Data set (a folder of the real-data root) -> image channels.
DATASETS = {"magnetic_tile": 1, "mvtec3d_tire": 3, "elpv": 1, "mpdd_metal_plate": 3}
#: Lift that counts as "the GAN learnt something"; above a strong reference, a share of the rest.
GOAL_LIFT = 0.10
STRONG_REFERENCE = 0.80
#: A model's own budget at one size, where the default budget is too short for it (none now:
#: the 8 minutes Skip-SA needed at 128 px are within the 10-minute default).
MODEL_BUDGETS: list[str] = []


def goal_lift(reference_auroc: float) -> float:
    """The lift a model must reach above a reference of ``reference_auroc``."""
    if reference_auroc >= STRONG_REFERENCE:
        return (1.0 - reference_auroc) / 2
    return GOAL_LIFT


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def _mean_std(values: list[float], signed: bool = False) -> str:
    if not values:
        return "-"
    form = "+.3f" if signed else ".3f"
    if len(values) == 1:
        return format(values[0], form)
    return f"{statistics.mean(values):{form}} ± {statistics.stdev(values):.3f}"


def _present(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in runs if r.get(key) is not None]


# ------------------------------------------------------------------------------- one run
def run_dir_of(args: argparse.Namespace, dataset: str, model: str, size: int, seed: int) -> Path:
    return args.work_dir / dataset / f"{model}_{size}_seed{seed}"


def train_command(
    args: argparse.Namespace, dataset: str, model: str, size: int, seed: int
) -> list[str]:
    budget = args.model_budget.get((model, size), args.budget_of.get(size))
    capped = [f"trainer.max_time={budget}", "trainer.max_epochs=100000"] if budget else []
    return [
        sys.executable,
        str(REPO / "train.py"),
        "data=mvtec",
        f"data.root={args.root}",
        f"data.category={dataset}",
        f"data.image_size={size}",
        f"data.selection_fraction={args.selection_fraction}",
        f"data.test_part={args.test_part}",
        f"model={model}",
        f"seed={seed}",
        *capped,  # --budget: the time budget ends training; test uses the chosen checkpoint
        "logger=csv",
        "callbacks.progress_bar.refresh_rate=0",
        f"tags=[quality,{dataset}]",
        f"hydra.run.dir={run_dir_of(args, dataset, model, size, seed)}",
        *args.overrides,
    ]


def _reference(block: dict[str, Any] | None) -> dict[str, Any]:
    """The reference figures a row needs, from results.json's ``reference`` block."""
    if not block:
        return {"reference_error": "no reference block (reference: false?)"}
    if "error" in block:
        return {"reference_error": block["error"]}
    # The map the better reference shows (a sum's is its part's in the generator's place:
    # results.json from before the sums carried pixel figures lack them).
    best = block.get("best")
    better = block.get(shown_map_of(best) if best else "") or {}
    return {
        "reference_mean_auroc": (block.get("mean") or {}).get("auroc"),
        "reference_pca_auroc": (block.get("pca") or {}).get("auroc"),
        "reference_pca_k": (block.get("pca") or {}).get("k"),
        "reference_best": block.get("best"),
        "reference_auroc": block.get("auroc"),
        "lift": block.get("lift"),
        "lift_interval": block.get("lift_interval"),  # 95 % over the test images
        # The better (image-level) reference's localisation, on the map the model shows.
        "reference_pixel_auroc": better.get("pixel_auroc"),
        "reference_aupro": better.get("aupro"),
    }


def run_job(args: argparse.Namespace, dataset: str, model: str, size: int, seed: int) -> dict:
    """Train (unless ``--reuse`` finds it completed) and read back one run's results.json."""
    run_dir = run_dir_of(args, dataset, model, size, seed)
    started = time.monotonic()
    row: dict[str, Any] = {"dataset": dataset, "model": model, "size": size, "seed": seed}
    earlier = read_results(run_dir)
    train = not args.report_only and not (args.reuse and earlier.get("status") == "completed")
    # --reuse: resume an unfinished run from its own last.ckpt instead of starting afresh
    facts, results, metrics = train_and_read(
        train_command(args, dataset, model, size, seed),
        run_dir,
        dataset,
        train=train,
        fresh=not args.reuse,
        threads=args.threads,
    )
    row.update(facts)
    row.update(
        status=results.get("status", "missing"),
        error=(results.get("error") or {}).get("message"),
        auroc=metrics.get("auroc"),
        auroc_interval=metrics.get("auroc_interval"),
        average_precision=metrics.get("average_precision"),
        pixel_auroc=metrics.get("pixel_auroc"),
        aupro=metrics.get("aupro"),
        **(_reference(metrics.get("reference")) if metrics else {}),
        fit_seconds=results.get("fit_seconds"),
        epochs=results.get("epochs"),
        seconds=round(time.monotonic() - started, 1),
        run_dir=str(run_dir),
    )
    return row


# ------------------------------------------------------------------------------- the table
def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row of a (dataset, model, size) cell: means over its completed seeds."""
    done = [r for r in runs if r["status"] == "completed"]
    reference = [r for r in done if r.get("reference_auroc") is not None]
    lifts = _present(done, "lift")
    ref_auroc = _mean(_present(reference, "reference_auroc"))
    mean_lift = _mean(lifts)
    target = goal_lift(ref_auroc) if ref_auroc is not None else None
    met = mean_lift is not None and mean_lift >= target - 1e-12
    return {
        "auroc": _mean(_present(done, "auroc")),
        "reference_auroc": ref_auroc,
        "lift": mean_lift,
        "goal_lift": target,
        "goal": "met" if met else "missed",
        "completed": len(done),
        "runs": len(runs),
    }


def _reference_cell(done: list[dict[str, Any]]) -> str:
    mean = _mean(_present(done, "reference_mean_auroc"))
    pca = _mean(_present(done, "reference_pca_auroc"))
    if mean is None and pca is None:
        errors = {str(r["reference_error"])[:60] for r in done if r.get("reference_error")}
        return "error: " + "; ".join(sorted(errors)) if errors else "-"
    ks = sorted({r["reference_pca_k"] for r in done if r.get("reference_pca_k") is not None})
    best = sorted({r["reference_best"] for r in done if r.get("reference_best")})
    return (
        f"{mean:.3f} / {pca:.3f} (k={','.join(map(str, ks))}) / "
        f"{_mean(_present(done, 'reference_auroc')):.3f} {', '.join(best)}"
    )


def _reference_pixel_cell(done: list[dict[str, Any]]) -> str:
    pixel = _mean(_present(done, "reference_pixel_auroc"))
    aupro = _mean(_present(done, "reference_aupro"))
    if pixel is None:
        return "-"
    return f"{pixel:.3f} / {aupro:.3f}" if aupro is not None else f"{pixel:.3f} / -"


def _runs_cell(runs: list[dict[str, Any]], seeds: list[int]) -> str:
    """Completed seeds of the cell, then each seed that failed or has not run (yet)."""
    by_seed = {r["seed"]: r for r in runs}
    problems = []
    for seed in seeds:
        run = by_seed.get(seed, {"status": "not run"})
        if run["status"] != "completed":
            code = f" rc={run['returncode']}" if run.get("returncode") else ""
            problems.append(f"seed {seed} {run['status']}{code}")
    done = len(seeds) - len(problems)
    return f"{done}/{len(seeds)}" + (f" ({', '.join(problems)})" if problems else "")


def _interval_cell(done: list[dict[str, Any]]) -> str:
    """Each completed seed's 95 % lift interval over the test images (runs before the
    intervals existed: -)."""
    intervals = [r.get("lift_interval") for r in sorted(done, key=lambda r: r["seed"])]
    if not any(intervals):
        return "-"
    return " / ".join(f"[{i[0]:+.2f}, {i[1]:+.2f}]" if i else "-" for i in intervals)


def _goal_cell(summary: dict[str, Any]) -> str:
    if summary["lift"] is None:
        return "missed (no lift)"
    return f"{summary['goal']} (≥ {summary['goal_lift']:+.3f})"


def dataset_table(
    runs: list[dict[str, Any]], models: list[str], sizes: list[int], seeds: list[int]
) -> str:
    header = [
        "model",
        "size",
        "image AUROC",
        "AP",
        "pixel AUROC",
        "AUPRO",
        "reference AUROC (mean / pca(k) / better)",
        "better reference's pixel AUROC / AUPRO",
        "lift",
        "lift 95 % interval per seed",
        "goal",
        "runs",
    ]
    rows = []
    for model in models:
        for size in sizes:
            cell = [r for r in runs if r["model"] == model and r["size"] == size]
            done = [r for r in cell if r["status"] == "completed"]
            rows.append(
                [
                    model,
                    str(size),
                    _mean_std(_present(done, "auroc")),
                    _mean_std(_present(done, "average_precision")),
                    _mean_std(_present(done, "pixel_auroc")),
                    _mean_std(_present(done, "aupro")),
                    _reference_cell(done),
                    _reference_pixel_cell(done),
                    _mean_std(_present(done, "lift"), signed=True),
                    _interval_cell(done),
                    _goal_cell(summarise(cell)),
                    _runs_cell(cell, seeds),
                ]
            )
    return table(header, rows)


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    budgets = (
        "trainer.max_time "
        + ", ".join(f"{size} px: {budget}" for size, budget in args.budget_of.items())
        if args.budget_of
        else "the default budget (conf/)"
    )
    extra = " ".join(args.overrides) or "none"
    lines = [
        f"Seeds {' '.join(map(str, args.seeds))}; {budgets}"
        + (f" (own: {' '.join(args.model_budget_entries)})" if args.model_budget else "")
        + f"; {args.test_part} part of the test set (selection_fraction "
        f"{args.selection_fraction}); extra overrides: {extra}.",
        "Reference: the model's scorer on the mean training image / a PCA reconstruction "
        "(k: the largest candidate below the number of training normals); lift = image "
        "AUROC - better "
        "reference, the best no-learning detector of the run's reference block (where a "
        "model sums the PCA or its encoder's feature memory in: also mean+pca and each of "
        "them summed with an untrained encoder's memory, X+memory; the seeds' best are "
        "listed, comma-separated; a sum localises with the map of the detector in the "
        "generator's place, as the model shows its reconstruction's map alone). "
        f"Goal: lift ≥ {GOAL_LIFT:+.2f}, or ≥ (1 - reference) / 2 where the "
        f"reference is ≥ {STRONG_REFERENCE:.2f}. Means ± std over completed seeds; the "
        "lift's interval is each seed's 95 % bootstrap interval over the test images.",
    ]
    for dataset in args.datasets:
        subset = [r for r in runs if r["dataset"] == dataset]
        channels = args.datasets[dataset]
        lines += ["", f"### {dataset} ({channels} channel{'s' if channels > 1 else ''})", ""]
        lines.append(dataset_table(subset, args.models, args.sizes, args.seeds))
    return "\n".join(lines) + "\n"


def save(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    summaries = []
    for dataset in args.datasets:
        for model in args.models:
            for size in args.sizes:
                cell = [
                    r
                    for r in runs
                    if (r["dataset"], r["model"], r["size"]) == (dataset, model, size)
                ]
                summaries.append(
                    {"dataset": dataset, "model": model, "size": size, **summarise(cell)}
                )
    settings = {
        "datasets": args.datasets,
        "models": args.models,
        "sizes": args.sizes,
        "seeds": args.seeds,
        "budget": {str(size): budget for size, budget in args.budget_of.items()},
        "model_budget": args.model_budget_entries,
        "selection_fraction": args.selection_fraction,
        "test_part": args.test_part,
        "overrides": args.overrides,
    }
    text = report(args, runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": settings, "summary": summaries, "runs": runs}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text)
    return text


# ------------------------------------------------------------------------------- arguments
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="folder holding <dataset>/ in MVTec layout (default: the real-data folder next "
        "to the repository)",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        metavar="NAME[:CHANNELS]",
        help="data sets under --root (default: "
        + " ".join(f"{name}:{channels}" for name, channels in DATASETS.items())
        + "); a name not listed there needs :CHANNELS",
    )
    # Default: the five reconstruction models; anogan (the papers' comparison column, a
    # 500-step latent search per scored image) only when named.
    parser.add_argument(
        "--models", nargs="+", default=model_names(), choices=model_names(with_search=True)
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[64])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--budget",
        nargs="+",
        default=None,
        metavar="DD:HH:MM:SS",
        help="trainer.max_time per run instead of the default budget: one for every size, or "
        "one per --sizes entry (default: none, the configs' budget)",
    )
    parser.add_argument(
        "--model-budget",
        nargs="*",
        default=MODEL_BUDGETS,
        metavar="MODEL@SIZE=DD:HH:MM:SS",
        help="a model's own budget at one size, instead of --budget (default: none)",
    )
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench" / "runs" / "quality")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "quality.json",
        help="raw rows (JSON); the tables go next to it with .md",
    )
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
        "--reuse",
        action="store_true",
        help="read runs whose results.json says completed, resume the others from their "
        "last.ckpt; without it every run starts afresh (its old run folder is removed)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: tabulate the runs already in --work-dir (unfinished ones show as "
        "not run), e.g. while or after a long bench in the background",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides after --")
    args = parser.parse_args()

    datasets = {}
    for entry in args.datasets:
        name, _, channels = entry.partition(":")
        if channels and not channels.isdigit():
            parser.error(f"--datasets {entry!r}: expected NAME or NAME:CHANNELS")
        if not channels and name not in DATASETS:
            parser.error(f"--datasets {entry!r}: unknown channel count, give {name}:CHANNELS")
        if not (args.root / name / "train" / "good").is_dir():
            parser.error(f"{args.root / name} is not an MVTec-layout data set folder")
        datasets[name] = int(channels) if channels else DATASETS[name]
    args.datasets = datasets

    args.budget = args.budget or []
    if len(args.budget) not in (0, 1, len(args.sizes)):
        parser.error("--budget takes one value, or one per --sizes entry")
    budgets = args.budget * len(args.sizes) if len(args.budget) == 1 else args.budget
    args.budget_of = dict(zip(args.sizes, budgets, strict=True)) if budgets else {}
    args.model_budget_entries, args.model_budget = args.model_budget or [], {}
    for entry in args.model_budget_entries:
        key, _, budget = entry.partition("=")
        model, _, size = key.partition("@")
        if not (budget and size.isdigit()):
            parser.error(f"--model-budget {entry!r}: expected MODEL@SIZE=DD:HH:MM:SS")
        args.model_budget[(model, int(size))] = budget
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def main() -> int:
    args = parse_args()
    grid = [
        (dataset, model, size, seed)
        for dataset in args.datasets
        for model in args.models
        for size in args.sizes
        for seed in args.seeds
    ]
    print(f"{len(grid)} runs, {args.jobs} at a time, in {args.work_dir}", flush=True)
    runs: list[dict[str, Any]] = []
    lock = threading.Lock()

    def job(cell: tuple[str, str, int, int]) -> None:
        row = run_job(args, *cell)
        with lock:  # results so far, after every run: a long run can be watched and resumed
            runs.append(row)
            save(args, runs)
            print(json.dumps(row), flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(job, cell) for cell in grid]:
            future.result()
    order = {cell: index for index, cell in enumerate(grid)}
    runs.sort(key=lambda r: order[(r["dataset"], r["model"], r["size"], r["seed"])])
    print("\n" + save(args, runs))
    print(f"written: {args.out}, {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
