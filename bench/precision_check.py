"""Do metrics trained in bf16-mixed match fp32 within seed noise? (issue 16, "bf16-vs-fp32")

    python bench/precision_check.py                       # magnetic tiles, seeds 0 and 1, CPU
    python bench/precision_check.py --sets magnetic_tile elpv --seeds 0 -- iterations=5
    python bench/precision_check.py --device cuda         # on a GPU: trainer=gpu, *_cuda.json

Every run is the plain ``python train.py data=mvtec data.root=<root> data.category=<set>
model=skip_ganomaly seed=<s> trainer.precision=<p>`` at the defaults in conf/ (budget
included), once with ``32-true`` and once with ``bf16-mixed``, same seeds, so the two differ
in the arithmetic alone. Its results.json is read back: image AUROC, average precision, pixel
AUROC where the set has masks, and the no-learning reference block (its AUROC and the model's
lift over it).

bf16-mixed runs under ``torch.autocast`` on CPU too: on a machine without a GPU this check
trains in bfloat16 on the CPU (oneDNN's AVX512-BF16 kernels where the CPU has them) as the
stand-in for the GPU's bfloat16. The autocast op lists of the two devices differ in a few
ops (which run in float32), not in what bfloat16 does to the convolutions and matmuls that
dominate these networks.

"Seed noise" of a set is the largest AUROC range over the seeds within one precision; the
verdict says whether the mean |bf16 − fp32| difference of the same seeds stays within it.
Raw rows go to ``--out`` (JSON) and the table to the same path with ``.md``, rewritten after
every run, so a run in the background can be watched (``--reuse`` resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
from _common import REPO, machine, machine_line, read_results, train_and_read

PRECISIONS = ("32-true", "bf16-mixed")
DEFAULT_ROOT = REPO.parent / "shared" / "data"


def run_dir_of(args: argparse.Namespace, dataset: str, seed: int, precision: str) -> Path:
    return args.work_dir / dataset / f"{args.model}_seed{seed}_{precision}"


def train_command(args: argparse.Namespace, dataset: str, seed: int, precision: str) -> list[str]:
    device = ["trainer=gpu"] if args.device == "cuda" else []
    return [
        sys.executable,
        str(REPO / "train.py"),
        "data=mvtec",
        f"data.root={args.root}",
        f"data.category={dataset}",
        f"model={args.model}",
        f"seed={seed}",
        *device,
        f"trainer.precision={precision}",
        "logger=csv",
        "callbacks.progress_bar.refresh_rate=0",
        f"tags=[precision_check,{dataset}]",
        f"hydra.run.dir={run_dir_of(args, dataset, seed, precision)}",
        *args.overrides,
    ]


def run_job(args: argparse.Namespace, dataset: str, seed: int, precision: str) -> dict[str, Any]:
    """Train (unless ``--reuse`` finds it completed) and read back one run's results.json."""
    run_dir = run_dir_of(args, dataset, seed, precision)
    row: dict[str, Any] = {"dataset": dataset, "seed": seed, "precision": precision}
    started = time.monotonic()
    earlier = read_results(run_dir)
    reused = args.reuse and earlier.get("status") == "completed"
    facts, results, metrics = train_and_read(
        train_command(args, dataset, seed, precision),
        run_dir,
        dataset,
        train=not reused,
        threads=args.threads,
    )
    row.update(facts)
    reference = metrics.get("reference") or {}
    row.update(
        status=results.get("status", "missing"),
        ran_precision=(results.get("config") or {}).get("precision"),
        auroc=metrics.get("auroc"),
        average_precision=metrics.get("average_precision"),
        pixel_auroc=metrics.get("pixel_auroc"),
        reference_auroc=reference.get("auroc"),
        reference_best=reference.get("best"),
        lift=reference.get("lift"),
        threshold=(results.get("threshold") or {}).get("value"),
        fit_seconds=results.get("fit_seconds"),
        global_step=results.get("global_step"),
        seconds=round(time.monotonic() - started, 1),
        run_dir=str(run_dir),
    )
    if reused:  # the wall time of the run that trained, from the last --out
        row["seconds"] = args.previous.get((dataset, seed, precision), {}).get("seconds")
    return row


# ------------------------------------------------------------------------------- the table
def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _of(rows: list[dict[str, Any]], dataset: str, seed: int, precision: str) -> dict[str, Any]:
    for row in rows:
        if (row["dataset"], row["seed"], row["precision"]) == (dataset, seed, precision):
            return row
    return {}


def summarise(rows: list[dict[str, Any]], dataset: str, seeds: list[int]) -> dict[str, Any]:
    """Mean AUROC per precision, mean |difference| of paired seeds, and the seed noise."""
    pairs = [(_of(rows, dataset, s, "32-true"), _of(rows, dataset, s, "bf16-mixed")) for s in seeds]
    paired = [(a, b) for a, b in pairs if a.get("auroc") is not None and b.get("auroc") is not None]
    differences = [b["auroc"] - a["auroc"] for a, b in paired]
    ranges = []
    for precision in PRECISIONS:
        values = [_of(rows, dataset, s, precision).get("auroc") for s in seeds]
        values = [v for v in values if v is not None]
        if len(values) >= 2:
            ranges.append(max(values) - min(values))
    noise = max(ranges) if ranges else None
    mean_abs = statistics.fmean(abs(d) for d in differences) if differences else None
    if mean_abs is None:
        verdict = "not run"
    elif noise is None:
        verdict = "one seed: no seed noise to compare with"
    else:
        verdict = "within seed noise" if mean_abs <= noise + 1e-12 else "outside seed noise"
    return {
        "fp32_auroc": _mean([a["auroc"] for a, _ in paired]),
        "bf16_auroc": _mean([b["auroc"] for _, b in paired]),
        "mean_difference": _mean(differences),
        "mean_abs_difference": mean_abs,
        "seed_noise": noise,
        "pairs": len(paired),
        "verdict": verdict,
    }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def report(args: argparse.Namespace, rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    stand_in = (
        "bf16-mixed ran under torch.autocast on the CPU, the stand-in for a GPU's bfloat16 "
        "(no GPU was available): GPU figures not measured."
        if args.device == "cpu"
        else "bf16-mixed and 32-true on the GPU (trainer=gpu)."
    )
    extra = " ".join(args.overrides) or "none"
    lines = [
        f"bf16-mixed vs 32-true, `model={args.model}`, the defaults in conf/ (extra overrides: "
        f"{extra}), same seeds; image AUROC on each set's whole test set. {stand_in}",
        "",
        machine_line(info),
        "",
        "| set | seed | fp32 AUROC | bf16 AUROC | bf16 − fp32 | fp32 / bf16 AP "
        "| fp32 / bf16 pixel AUROC | fp32 / bf16 lift over reference (ref AUROC) "
        "| fit s fp32 / bf16 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in args.sets:
        for seed in args.seeds:
            a = _of(rows, dataset, seed, "32-true")
            b = _of(rows, dataset, seed, "bf16-mixed")
            difference = (
                b["auroc"] - a["auroc"]
                if a.get("auroc") is not None and b.get("auroc") is not None
                else None
            )
            lines.append(
                f"| {dataset} | {seed} | {_cell(a.get('auroc'))} | {_cell(b.get('auroc'))} "
                f"| {_cell(difference, signed=True)} "
                f"| {_cell(a.get('average_precision'))} / {_cell(b.get('average_precision'))} "
                f"| {_cell(a.get('pixel_auroc'))} / {_cell(b.get('pixel_auroc'))} "
                f"| {_cell(a.get('lift'), True)} / {_cell(b.get('lift'), True)} "
                f"({_cell(a.get('reference_auroc'))}) "
                f"| {a.get('fit_seconds', '-')} / {b.get('fit_seconds', '-')} |"
            )
    lines += ["", "| set | fp32 mean | bf16 mean | mean abs difference | seed noise | verdict |"]
    lines.append("|---|---|---|---|---|---|")
    for dataset in args.sets:
        s = summarise(rows, dataset, args.seeds)
        lines.append(
            f"| {dataset} | {_cell(s['fp32_auroc'])} | {_cell(s['bf16_auroc'])} "
            f"| {_cell(s['mean_abs_difference'])} | {_cell(s['seed_noise'])} | {s['verdict']} |"
        )
    lines += [
        "",
        "Fit seconds are wall time on the machine above, shared with other jobs while it ran: "
        "they are not a speed comparison (bench/speed.py measures speed).",
    ]
    failed = [r for r in rows if r.get("status") != "completed"]
    for row in failed:
        lines.append(
            f"\n{row['dataset']} seed {row['seed']} {row['precision']}: {row['status']} "
            f"({row.get('run_dir')})"
        )
    return "\n".join(lines) + "\n"


def save(args: argparse.Namespace, rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    text = report(args, rows, info)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": info,
        "device": args.device,
        "model": args.model,
        "sets": args.sets,
        "seeds": args.seeds,
        "overrides": args.overrides,
        "summary": {dataset: summarise(rows, dataset, args.seeds) for dataset in args.sets},
        "runs": rows,
    }
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["magnetic_tile"], help="data.category")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--model", default="skip_ganomaly")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="data.root")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS; 0: unset")
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench" / "runs" / "precision")
    parser.add_argument("--out", type=Path, default=None, help="JSON (and .md beside it)")
    parser.add_argument("--reuse", action="store_true", help="read completed runs, rerun others")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides after --")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = REPO / "bench" / "results" / f"precision_check_{args.device}.json"
    missing = [s for s in args.sets if not (args.root / s / "train" / "good").is_dir()]
    if missing:
        parser.error(
            f"no {', '.join(missing)} under --root {args.root} (expected <root>/<set>/train/good"
            "; the real sets are described in ../shared/data/README.md)"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine(args.device)
    previous = json.loads(args.out.read_text()) if args.reuse and args.out.is_file() else {}
    if previous.get("machine"):
        info = previous["machine"]  # --reuse: the machine and start of the runs that trained
    args.previous = {
        (row["dataset"], row["seed"], row["precision"]): row for row in previous.get("runs", [])
    }
    rows: list[dict[str, Any]] = []
    for dataset in args.sets:
        for seed in args.seeds:
            for precision in PRECISIONS:
                row = run_job(args, dataset, seed, precision)
                rows.append(row)
                print(
                    f"{dataset} seed {seed} {precision}: {row['status']}, AUROC "
                    f"{_cell(row.get('auroc'))}, fit {row.get('fit_seconds')} s",
                    flush=True,
                )
                save(args, rows, info)
    print(save(args, rows, info))


if __name__ == "__main__":
    main()
