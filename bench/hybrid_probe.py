"""Does a trained GAN add anything to the PCA reference when both are scored together?

The no-learning reference (:mod:`anomaly_gan.evaluation.reference`) scores a PCA
reconstruction of the training normals with the model's own recipe; the GAN scores its own
reconstruction the same way. This probe asks whether the two *disagree usefully*: each image
score is standardised by its detector's scores of the validation normals that its
calibration held out (mean and standard deviation; no test image involved) and the two
standardised scores are summed. The honest reference of that sum is the best no-learning
detector of either recipe on the test set: the mean image and the PCA scored alone, and the
same sum with the mean image in the generator's place (with the PCA there, the sum ranks as
the PCA alone), as ``lift`` is everywhere else.

It re-scores finished ``train.py`` runs (their ``results.json`` names the checkpoint tested):
the checkpoint and the training are the run's, and the sum and its reference are built by
the same code as a run with ``model.companion=pca`` (:class:`~anomaly_gan.pca_companion.
PcaCompanion`, :func:`~anomaly_gan.evaluation.reference.reference_metrics`; a run made with
the companion, every model's default, has its sum reproduced and is then scored without it
for the GAN alone), so the figures
are what that run reports. The data are rebuilt from the checkpoint's data settings (as
``bench/scorers.py`` does; ``--test-part`` of the split); the probe stops if the
GAN's own AUROC does not come out as the run reported it (other images). The checkpoint and
its calibration do not depend on the test part, so ``--test-part report`` scores a run tested
on the selection part on the report part as well.

Each row also says what ``model.companion=auto`` would choose for the checkpoint (one
Lightning validation pass with the companion attached: the model's own synthetic defects in
the validation normals, no test image) and its AUROC (``auto``: the sum where it chose the
sum, else the GAN alone).

    python bench/quality.py --models skip_ganomaly --seeds 0 --test-part selection \
        --work-dir /tmp/runs --out /tmp/runs.json
    python bench/hybrid_probe.py /tmp/runs/*/skip_ganomaly_64_seed0 \
        --out bench/results/hybrid_probe.jsonl
    python bench/hybrid_probe.py --summarize bench/results/hybrid_probe.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
from _common import REPO, emit_row, ensure_repo_on_path, run_datamodule

ensure_repo_on_path()

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from anomaly_gan.evaluation.metrics import image_metrics  # noqa: E402
from anomaly_gan.evaluation.reference import (  # noqa: E402
    CHUNK,
    normal_images,
    reference_metrics,
    stack_loader,
)
from anomaly_gan.models.checkpoint import load_model  # noqa: E402
from anomaly_gan.pca_companion import PcaCompanion  # noqa: E402

#: AUROCs closer than this count as "the run's own figure, reproduced".
REPRODUCED = 1e-4


def auroc(scores: Tensor, labels: Tensor) -> float:
    """The project's image AUROC (scores scaled into [0, 1] first, as every run does)."""
    return round(float(image_metrics(scores, labels, math.nan)["auroc"]), 4)


def scores_of(score: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([score(chunk) for chunk in images.split(CHUNK)])


def probe(run_dir: Path, args: argparse.Namespace) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    config = results["config"]
    category = config["category"]
    checkpoint = Path(results["checkpoint"]["path"])
    # The data as the run saw them (its data settings and split seeds).
    datamodule = run_datamodule(
        checkpoint, args.test_part, args.root, None, args.selection_fraction
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    train, validation = normal_images(datamodule)
    test, labels, _ = stack_loader(datamodule.test_dataloader()[0])
    model = load_model(checkpoint).model.eval()
    reported = results["categories"][category]["auroc"]
    # A run with model.companion=pca (every model's default) reports the sum: take its own
    # sum as the figure to reproduce, then score the GAN alone without it. Its training did
    # not depend on the companion (the fit forks the global RNG), so this is the checkpoint
    # the same run with model.companion=null trains.
    run_sum = None
    if getattr(model, "companion", None) is not None:
        if model.hparams.get("companion") != "pca":
            raise SystemExit(
                f"{run_dir}: trained with model.companion={model.hparams['companion']}; the "
                "probe takes runs with the score alone or model.companion=pca"
            )
        run_sum = auroc(scores_of(model, test), labels)
        model.companion = None
    gan_test = scores_of(model, test)
    gan = auroc(gan_test, labels)
    figure = gan if run_sum is None else run_sum
    if args.test_part == args.run_test_part and abs(figure - reported) > REPRODUCED:
        raise SystemExit(
            f"{run_dir}: the run scores {figure:.4f} here but reported {reported:.4f}: these are "
            f"not the images it was tested on (pass the --run-test-part and "
            "--selection-fraction of its bench run)"
        )
    # The sum exactly as model.companion=pca computes it, beside this run's weights.
    scorer_config = model.scorer.to_config()
    quantile = float(model.hparams["threshold_quantile"])
    companion = PcaCompanion(scorer_config, model.hparams["image_size"])
    companion.fit(train)
    companion.calibrate(
        scores_of(model, validation[model.scorer.held_out(validation.shape[0])]),
        scores_of(companion.error_map, validation),
        quantile,
    )
    summed = scores_of(lambda chunk: companion.combine(model(chunk), chunk), test)
    if run_sum is not None and abs(auroc(summed, labels) - run_sum) > REPRODUCED:
        raise SystemExit(
            f"{run_dir}: the probe's sum scores {auroc(summed, labels):.4f}, the run's own "
            f"companion {run_sum:.4f}: the probe no longer builds the sum as a run does"
        )
    block = reference_metrics(datamodule, scorer_config, quantile, companion=True)[category]
    choice = auto_choice(model, companion, datamodule)
    row = {
        "run_dir": str(run_dir),
        "model": config["model_name"],
        "category": category,
        "seed": config["seed"],
        "test_part": args.test_part,
        "pca_k": block["pca"]["k"],
        "gan": gan,
        **{name: round(block[name]["auroc"], 4) for name in ("pca", "mean")},
        "gan+pca": auroc(summed, labels),
        "mean+pca": round(block["mean+pca"]["auroc"], 4),
    }
    row["reference"] = max(row["pca"], row["mean"])
    row["lift"] = round(gan - row["reference"], 4)
    # The sum's reference is model.companion=pca's block: the best of the plain mean and PCA
    # and the same sum with the mean image in the generator's place.
    row["hybrid_reference"] = round(block["auroc"], 4)
    row["hybrid_lift"] = round(row["gan+pca"] - row["hybrid_reference"], 4)
    # model.companion=auto: the sum where the validation's synthetic defects chose it.
    row.update(choice)
    row["auto"] = row["gan+pca"] if choice["auto_summed"] else row["gan"]
    row["auto_lift"] = round(row["auto"] - row["hybrid_reference"], 4)
    return row


def auto_choice(model: Any, companion: PcaCompanion, datamodule: Any) -> dict[str, Any]:
    """What ``model.companion=auto`` chooses for this checkpoint, made as a run makes it:
    one Lightning validation pass with the companion attached (the model's own synthetic
    defects, calibration and :meth:`PcaCompanion.choose_weight`). No test image is used."""
    companion.choose = True
    model.companion = companion
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(model, datamodule=datamodule, verbose=False)
    return {
        "synthetic_gan": round(float(companion.synthetic_auroc_model), 4),
        "synthetic_gan+pca": round(float(companion.synthetic_auroc_with_pca), 4),
        "auto_summed": bool(companion.pca_weight > 0),
    }


def summarize(rows: list[dict]) -> str:
    """Markdown: per model and set, the GAN's and the sum's AUROC and lift (means over the
    seeds present), per test part, and what ``model.companion=auto`` chose; then the
    leave-one-set-out choice on the selection part (the sum, or auto, against the GAN alone,
    by mean AUROC gain over the other sets) and what it does on the set left out.
    """
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault((row["test_part"], row["model"], row["category"]), []).append(row)

    def mean(key: str, part: str, model: str, category: str) -> float:
        values = [r[key] for r in cells.get((part, model, category), [])]
        return sum(values) / len(values) if values else math.nan

    def cell(gan: float, hybrid: float, lift: float, hybrid_lift: float) -> str:
        return f"{gan:.3f} / {hybrid:.3f} ({lift:+.3f} / {hybrid_lift:+.3f})"

    models = sorted({r["model"] for r in rows})
    sets = list(dict.fromkeys(r["category"] for r in rows))
    lines = []
    for part in ("selection", "report"):
        lines += [
            f"\n{part} part: GAN / GAN + PCA image AUROC (lift / lift of the sum), seeds: "
            + ", ".join(
                f"{m} {sorted({r['seed'] for r in rows if r['model'] == m})}" for m in models
            ),
            "",
            "| model | " + " | ".join(sets) + " |",
            "|---|" + "---|" * len(sets),
        ]
        for model in models:
            lines.append(
                f"| {model} | "
                + " | ".join(
                    cell(
                        *(
                            mean(k, part, model, c)
                            for k in ("gan", "gan+pca", "lift", "hybrid_lift")
                        )
                    )
                    for c in sets
                )
                + " |"
            )
    auto_rows = [r for r in rows if "auto" in r]
    if auto_rows:
        lines += [
            "",
            "model.companion=auto (chosen per run on the validation's synthetic defects, no "
            "test label): GAN / auto image AUROC (times the sum was chosen / runs)",
        ]
        for part in ("selection", "report"):
            lines += ["", f"{part} part", "", "| model | " + " | ".join(sets) + " |"]
            lines.append("|---|" + "---|" * len(sets))
            for model in models:
                entries = []
                for c in sets:
                    runs = [r for r in cells.get((part, model, c), []) if "auto" in r]
                    if not runs:
                        entries.append("")
                        continue
                    gan = sum(r["gan"] for r in runs) / len(runs)
                    auto = sum(r["auto"] for r in runs) / len(runs)
                    summed = sum(r["auto_summed"] for r in runs)
                    entries.append(f"{gan:.3f} / {auto:.3f} ({summed}/{len(runs)})")
                lines.append(f"| {model} | " + " | ".join(entries) + " |")
    candidates = {"sum": "gan+pca", "auto": "auto"} if auto_rows else {"sum": "gan+pca"}
    for name, key in candidates.items():
        lines += [
            "",
            f"Leave one set out (selection part), {name} against the GAN alone: the choice on "
            f"the other three sets (by mean AUROC gain), and the held-out set's gain of {name}",
        ]
        for model in models:
            folds = []
            for held in sets:
                gains = {
                    c: mean(key, "selection", model, c) - mean("gan", "selection", model, c)
                    for c in sets
                }
                others = [gains[c] for c in sets if c != held]
                chosen = name if sum(others) / len(others) > 0 else "GAN"
                folds.append(f"{held}: {chosen} ({gains[held]:+.3f})")
            lines.append(f"- {model}: " + "; ".join(folds))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="train.py run folders")
    parser.add_argument(
        "--summarize", type=Path, default=None, help="tabulate a --out file instead, run nothing"
    )
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--test-part", choices=("selection", "report"), default="selection")
    parser.add_argument(
        "--run-test-part",
        choices=("selection", "report"),
        default="selection",
        help="the part the runs were tested on; where it is --test-part, the GAN's AUROC "
        "must reproduce the run's own",
    )
    parser.add_argument("--selection-fraction", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=None, help="append each row (JSON line)")
    args = parser.parse_args()
    if args.summarize:
        print(summarize([json.loads(line) for line in args.summarize.read_text().splitlines()]))
        return
    if not args.run_dirs:
        parser.error("pass train.py run folders, or --summarize FILE")
    missing = [str(d) for d in args.run_dirs if not (d / "results.json").is_file()]
    if missing:
        parser.error(f"no results.json in: {', '.join(missing)} (pass finished train.py runs)")
    for run_dir in args.run_dirs:
        row = probe(run_dir, args)
        emit_row(row, args.out)


if __name__ == "__main__":
    main()
