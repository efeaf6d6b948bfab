"""What ``model.memory=encoder`` gives a trained run: its checkpoint re-validated and
re-tested with the feature memory on (:mod:`anomaly_gan.feature_memory`).

The memory changes neither what a model learns (``tests/test_feature_memory.py``) nor the
checkpoint that ``val/con`` chooses, and its bank is rebuilt from the checkpoint's own
weights at validation, so a run trained without it and re-scored here scores as the same
run trained with ``model.memory=encoder`` would, at the cost of one validation and one test
instead of a training. The test images are the *selection* part (the runs must have been
made with ``--test-part selection``; their own scores are reproduced first). A run's
checkpoint does not depend on the test part either, so ``--test-part report`` scores the
same checkpoints on the report part, checked against the report table's AUROC of the same
model, set and seed (``--report-table``, ``bench/quality.py``'s output), whose reference it
reports beside them.

    python bench/memory_rescore.py RUN_DIR [RUN_DIR ...] --out bench/results/memory_rescore.jsonl
    python bench/memory_rescore.py RUN_DIR ... --test-part report --out FILE
    python bench/memory_rescore.py --summarize bench/results/memory_rescore.jsonl
    python bench/memory_rescore.py RUN_DIR ... --memory-coreset 0.25 --out NEW.jsonl
    python bench/memory_rescore.py --compare BASE.jsonl NEW.jsonl   # a bank setting vs another
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from _common import emit_row  # noqa: E402
from segmentation_probe import probe_datamodule  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torchmetrics.functional.classification import binary_auroc  # noqa: E402

from anomaly_gan.evaluation.image_scores import read_image_scores  # noqa: E402
from anomaly_gan.evaluation.reference import reference_metrics, stack_loader  # noqa: E402
from anomaly_gan.models.checkpoint import load_model  # noqa: E402


def scores_of(model: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(chunk) for chunk in images.split(64)])


def with_memory(run_model: nn.Module, options: dict[str, Any]) -> nn.Module:
    """The run's architecture and loaded weights with ``memory="encoder"`` and the memory
    hyper-parameters ``options`` (``memory_normals``, ``memory_coreset`` ...): the memory is
    rebuilt by the validation, whether or not the run's state dict held one."""
    hparams = {**run_model.hparams, "memory": "encoder", **options}
    model = type(run_model)(**hparams)
    model.load_state_dict(run_model.state_dict(), strict=True)
    return model


def report_row(table: Path, dataset: str, model: str, seed: int) -> dict:
    """The report table's run of ``model`` on ``dataset`` with ``seed``."""
    for row in json.loads(table.read_text())["runs"]:
        if (row["dataset"], row["model"], row["seed"]) == (dataset, model, seed):
            return row
    raise SystemExit(f"{table}: no run of {model} on {dataset} with seed {seed}")


def rescore(
    run_dir: Path,
    root: Path,
    fraction: float,
    options: dict[str, Any],
    test_part: str = "selection",
    report_table: Path | None = None,
) -> dict:
    started = time.perf_counter()
    results = json.loads((run_dir / "results.json").read_text())
    config = results["config"]
    category, seed = config["category"], config["seed"]
    checkpoint_path = results["checkpoint"]["path"]
    run_model = load_model(checkpoint_path).model
    datamodule = probe_datamodule(root, category, fraction, seed, test_part)
    test_loader = datamodule.test_dataloader()
    test_loader = test_loader[0] if isinstance(test_loader, list) else test_loader
    images, labels, _ = stack_loader(test_loader)
    own = scores_of(run_model, images)
    own_auroc = binary_auroc(own, labels.int()).item()
    if test_part == "selection":
        kept = read_image_scores(run_dir / "scores" / f"{category}.csv")
        if not torch.equal(kept.labels, labels.long()) or not torch.allclose(
            kept.scores.float(), own.float(), rtol=1e-3, atol=1e-4
        ):
            raise SystemExit(f"{run_dir}: the reloaded run does not reproduce its scores")
        reference = results["categories"][category]["reference"].get("auroc")
    else:
        row = report_row(report_table, category, config["model_name"], seed)
        if abs(row["auroc"] - own_auroc) > 1e-4:
            raise SystemExit(
                f"{run_dir}: report-part AUROC {own_auroc:.4f}, the report table's run "
                f"{row['auroc']:.4f}: not the same checkpoint"
            )
        reference = row["reference_auroc"]
    model = with_memory(run_model, options)
    model.read_memory_normals(datamodule)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(model, datamodule=datamodule, verbose=False)
    model.eval()
    scoring = time.perf_counter()
    summed = scores_of(model, images)
    scoring = time.perf_counter() - scoring
    # The honest reference of a run that sums a memory in: every no-learning detector,
    # also summed with the same memory on an untrained encoder (what results.json holds).
    block = reference_metrics(
        datamodule,
        model.scorer.to_config(),
        float(model.hparams.get("threshold_quantile", 0.95)),
        companion=model.fitted_companion is not None,
        memory=model.untrained_memory(),
    )[category]
    return {
        "category": category,
        "seed": seed,
        "model": type(run_model).__name__,
        "run_dir": str(run_dir),
        "test_part": test_part,
        "own_auroc": round(own_auroc, 4),
        "memory_auroc": round(binary_auroc(summed, labels.int()).item(), 4),
        "reference_auroc": round(reference, 4) if reference is not None else None,
        "memory_reference_auroc": round(block["auroc"], 4),
        "memory_reference_best": block["best"],
        "untrained_memory_aurocs": {
            name: round(value["auroc"], 4)
            for name, value in block.items()
            if name.endswith("+memory") and value.get("auroc") is not None
        },
        "vectors_per_position": int(model.memory.bank.shape[1]),
        **options,
        "memory_strides": list(model.memory.strides),
        # What the bank adds to a checkpoint, and the test images' scoring time with it.
        "bank_megabytes": round(model.memory.bank.numel() * 2 / 1e6, 2),
        "test_ms_per_image": round(1000 * scoring / len(images), 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarize(path: Path) -> None:
    """Per model: the mean over seeds per set of the run's own AUROC and with the memory,
    and, leaving one set out, whether the choice made on the other three holds on it."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for model in sorted({row["model"] for row in rows}):
        mine = [row for row in rows if row["model"] == model]
        sets = sorted({row["category"] for row in mine})
        means = {
            key: {s: statistics.mean(r[key] for r in mine if r["category"] == s) for s in sets}
            for key in ("own_auroc", "memory_auroc", "reference_auroc", "memory_reference_auroc")
            if all(key in r for r in mine)
        }
        print(f"\n{model} (runs: {len(mine)})\n")
        print("| | " + " | ".join(sets) + " |")
        print("|---|" + "---|" * len(sets))
        for key, label in (
            ("reference_auroc", "better reference (mean / PCA)"),
            ("own_auroc", "own score (today's default)"),
            ("memory_auroc", "with the memory"),
        ):
            print(f"| {label} | " + " | ".join(f"{means[key][s]:.3f}" for s in sets) + " |")
        gains = {s: means["memory_auroc"][s] - means["own_auroc"][s] for s in sets}
        print("| gain | " + " | ".join(f"{gains[s]:+.3f}" for s in sets) + " |")
        lifts = {s: means["memory_auroc"][s] - means["reference_auroc"][s] for s in sets}
        print("| lift with the memory | " + " | ".join(f"{lifts[s]:+.3f}" for s in sets) + " |")
        if "memory_reference_auroc" in means:
            honest = means["memory_reference_auroc"]
            print(
                "| better reference, also summed with an untrained memory | "
                + " | ".join(f"{honest[s]:.3f}" for s in sets)
                + " |"
            )
            print(
                "| lift over it | "
                + " | ".join(f"{means['memory_auroc'][s] - honest[s]:+.3f}" for s in sets)
                + " |"
            )
        held = []
        for s in sets:
            others = statistics.mean(gains[o] for o in sets if o != s)
            chosen = "memory" if others > 0 else "own"
            held.append(f"{s}: {chosen} ({gains[s] if chosen == 'memory' else 0.0:+.3f})")
        print("\nleave one set out (chosen on the other three; held-out gain): " + "; ".join(held))


def compare(base_path: Path, new_path: Path) -> None:
    """A memory setting against the rows of another on the same checkpoints (e.g. a coreset
    against every vector): per model and set, the mean over seeds of the summed AUROC and of
    the better reference (each with its own memory), what the bank adds to a checkpoint, and
    which setting leaving one set out chooses on the other three."""

    def rows_of(path: Path) -> dict[tuple[str, str, int], dict]:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {(row["model"], row["category"], row["seed"]): row for row in rows}

    base, new = rows_of(base_path), rows_of(new_path)
    missing = sorted(set(new) - set(base))
    if missing:
        raise SystemExit(f"{base_path} has no row of {missing[0]} (model, set, seed)")
    for key, row in new.items():
        # The same weights: the same own score, or (a run trained with today's default
        # memory against one re-scored from a run trained without it; the memory does not
        # change what a model learns) an own score that is the base's summed one.
        same = min(
            abs(row["own_auroc"] - base[key][field]) for field in ("own_auroc", "memory_auroc")
        )
        if same > 1e-4:
            raise SystemExit(f"{key}: the two files did not re-score the same checkpoint")
    sets = sorted({key[1] for key in new})
    print(
        f"{new_path.name} against {base_path.name}, mean of seeds: AUROC with the memory "
        "(better reference; lift over it); bank MB"
    )
    print("\n| model | " + " | ".join(sets) + " |\n|---|" + "---|" * len(sets))
    gains: dict[tuple[str, str], float] = {}
    for model in sorted({key[0] for key in new}):
        cells = []
        for name in sets:
            keys = [key for key in new if key[:2] == (model, name)]
            mean = {
                side: {
                    field: statistics.mean(rows[key][field] for key in keys)
                    for field in ("memory_auroc", "memory_reference_auroc")
                }
                for side, rows in (("base", base), ("new", new))
            }
            gains[model, name] = mean["new"]["memory_auroc"] - mean["base"]["memory_auroc"]
            megabytes = statistics.mean(new[key].get("bank_megabytes", math.nan) for key in keys)
            cells.append(
                f"{mean['base']['memory_auroc']:.3f} → {mean['new']['memory_auroc']:.3f} "
                f"({mean['base']['memory_reference_auroc']:.3f} → "
                f"{mean['new']['memory_reference_auroc']:.3f}; "
                f"{mean['new']['memory_auroc'] - mean['new']['memory_reference_auroc']:+.3f}); "
                f"{megabytes:.1f} MB"
            )
        print(f"| {model} | " + " | ".join(cells) + " |")
    print("\nleave one set out (chosen on the other three; held-out gain over the base):")
    for model in sorted({key[0] for key in new}):
        held = []
        for name in sets:
            others = statistics.mean(gains[model, other] for other in sets if other != name)
            held.append(
                f"{name}: new ({gains[model, name]:+.3f})" if others > 0 else f"{name}: base"
            )
        print(f"  {model}: " + "; ".join(held))


def main() -> None:
    if sys.argv[1:2] == ["--summarize"]:
        summarize(Path(sys.argv[2]))
        return
    if sys.argv[1:2] == ["--compare"]:
        compare(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--selection-fraction", type=float, default=0.3)
    parser.add_argument("--memory-normals", type=int, default=1024)
    parser.add_argument(
        "--memory-coreset",
        type=float,
        default=1.0,
        help="model.memory_coreset: the share of each position's vectors the bank keeps",
    )
    parser.add_argument(
        "--memory-neighbourhood",
        type=int,
        default=0,
        help="model.memory_neighbourhood: positions around a test vector's own it is matched at",
    )
    parser.add_argument(
        "--memory-weight",
        type=float,
        default=1.0,
        help="model.memory_weight: the memory's factor in the summed score",
    )
    parser.add_argument(
        "--memory-strides",
        type=int,
        nargs="+",
        default=None,
        help="model.memory_strides: the encoder maps the memory reads (default 4 8)",
    )
    parser.add_argument("--test-part", choices=("selection", "report"), default="selection")
    parser.add_argument(
        "--report-table",
        type=Path,
        default=REPO / "bench" / "results" / "quality.json",
        help="with --test-part report: the report table whose runs these checkpoints match",
    )
    parser.add_argument("--out", type=Path, default=None, help="append results (JSON lines)")
    args = parser.parse_args()
    options = {
        "memory_normals": args.memory_normals,
        "memory_coreset": args.memory_coreset,
        "memory_neighbourhood": args.memory_neighbourhood,
        "memory_weight": args.memory_weight,
        "memory_strides": args.memory_strides,
    }
    for run_dir in args.run_dirs:
        row = rescore(
            run_dir,
            args.root,
            args.selection_fraction,
            options,
            args.test_part,
            args.report_table,
        )
        emit_row(row, args.out)


if __name__ == "__main__":
    main()
