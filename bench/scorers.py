"""Which score function detects defects? Re-score trained checkpoints with every scorer.

    python bench/scorers.py bench/runs/quality/*/checkpoints/last.ckpt
    python bench/scorers.py RUN.ckpt --test-part report      # only after choosing

Each variant is evaluated the way train.py evaluates a model: ``Trainer.validate`` on the
validation normals (map statistics and threshold), then ``Trainer.test``. By default the
test images are the *selection* part of the test set (``data.selection_fraction``), so
choosing a scorer here never looks at the images the quality table reports on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
from _common import run_datamodule  # noqa: E402

from anomaly_gan.evaluation.evaluator import TestEvaluator  # noqa: E402
from anomaly_gan.models.checkpoint import load_model  # noqa: E402
from anomaly_gan.scoring import AnomalyScore  # noqa: E402

#: name -> scorer; "own" (the checkpoint's scorer) is added per checkpoint.
VARIANTS: dict[str, AnomalyScore] = {
    "latent": AnomalyScore(latent_weight=1.0),
    "l2 mean": AnomalyScore(0.0, 1.0, "l2"),
    "l1 mean": AnomalyScore(0.0, 1.0, "l1"),
    "l1 s1 top1%": AnomalyScore(0.0, 1.0, "l1", map_sigma=1, pooling="top_k"),
    "l1 s1 top1% z": AnomalyScore(0.0, 1.0, "l1", 1, False, True, "top_k"),
    "l1 s2 top1% z": AnomalyScore(0.0, 1.0, "l1", 2, False, True, "top_k"),
    "l2 s1 top1% z": AnomalyScore(0.0, 1.0, "l2", 1, False, True, "top_k"),
    "diff s2 top1%": AnomalyScore(0.0, 1.0, "l1", 2, True, False, "top_k"),
    "diff s2 top1% z": AnomalyScore(0.0, 1.0, "l1", 2, True, True, "top_k"),
    "diff s4 top1% z": AnomalyScore(0.0, 1.0, "l1", 4, True, True, "top_k"),
    "diff s4 top5% z": AnomalyScore(0.0, 1.0, "l1", 4, True, True, "top_k", 0.05),
    "diff s8 top1% z": AnomalyScore(0.0, 1.0, "l1", 8, True, True, "top_k"),
    "diff s2 max z": AnomalyScore(0.0, 1.0, "l1", 2, True, True, "max"),
    "diff s2 mean z": AnomalyScore(0.0, 1.0, "l1", 2, True, True, "mean"),
}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def evaluate(checkpoint: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    model = load_model(checkpoint).model
    datamodule = run_datamodule(
        checkpoint, args.test_part, args.root, args.category, args.selection_fraction
    )
    evaluator = TestEvaluator()  # metrics only: no figures, no reference
    trainer = L.Trainer(
        accelerator="cpu",
        callbacks=[evaluator],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    results = {}
    for name, scorer in {"own": model.scorer, **VARIANTS}.items():
        model.scorer = scorer
        trainer.validate(model, datamodule=datamodule, verbose=False)
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics = evaluator.results[datamodule.hparams.category]
        results[name] = {"auroc": metrics["auroc"], "pixel_auroc": metrics.get("pixel_auroc")}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--root", type=Path, default=None, help="default: the run's data.root")
    parser.add_argument("--category", default=None, help="default: the run's data.category")
    parser.add_argument(
        "--selection-fraction",
        type=float,
        default=0.3,
        help="used when the run itself had no selection part",
    )
    parser.add_argument("--test-part", choices=["selection", "report"], default="selection")
    parser.add_argument("--out", type=Path, default=None, help="also write JSON here")
    args = parser.parse_args()

    table: dict[str, dict[str, dict[str, float]]] = {}
    for checkpoint in args.checkpoints:
        run = checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else ""
        table[run or str(checkpoint)] = evaluate(checkpoint, args)
        print(json.dumps({run: table[run or str(checkpoint)]}), flush=True)

    names = ["own", *VARIANTS]
    print(f"\nimage AUROC on the {args.test_part} part (pixel AUROC in brackets)")
    print("| scorer | " + " | ".join(table) + " | mean |")
    print("|---" * (len(table) + 2) + "|")
    for name in names:
        cells = [table[run][name] for run in table]
        aurocs = [c["auroc"] for c in cells if c["auroc"] is not None]
        mean = statistics.mean(aurocs) if aurocs else None
        print(
            f"| {name} | "
            + " | ".join(f"{_cell(c['auroc'])} ({_cell(c['pixel_auroc'])})" for c in cells)
            + f" | {_cell(mean)} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"test_part": args.test_part, "runs": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
