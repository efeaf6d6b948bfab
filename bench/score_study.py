"""Which smoothing and pooling should the default score use? Judged on several sets at once.

    python bench/score_study.py --out bench/results/score_study/score_study.json \\
        RUN_DIR [RUN_DIR ...]

The default score (``DEFAULT_SCORER``: σ = 4 px, mean of the top 5 % of standardised
pixels) was chosen on one set, the magnetic tiles. This script re-scores trained
checkpoints with a grid of smoothing widths and poolings and computes, for every variant,
the no-learning references (mean image, PCA with ``k`` chosen on synthetic defects in
validation normals) with the *same* variant, so each cell has its lift. Nothing is
retrained: a checkpoint's reconstructions of the validation normals and of the test images
are computed once, and each variant is calibrated on the validation normals exactly as
``GanAnomalyModule.on_validation_epoch_end`` does (statistics from the even-numbered
images, threshold from the odd ones) before it scores the test images.

The test images are the *selection* part (``data.selection_fraction``) unless
``--test-part report`` is given: choose on the selection part, report on the other.
The summary chooses a variant leaving one data set out (mean image AUROC over the models
and seeds of the other sets) and shows what that choice gives on the held-out set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from _common import run_datamodule  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from anomaly_gan.data import MVTecDataModule  # noqa: E402
from anomaly_gan.evaluation.localization import pixel_metrics  # noqa: E402
from anomaly_gan.evaluation.metrics import image_metrics  # noqa: E402
from anomaly_gan.evaluation.reference import (  # noqa: E402
    MeanReconstruction,
    fit_pca,
    reference_scorer,
    stack_loader,
)
from anomaly_gan.models.checkpoint import load_model  # noqa: E402
from anomaly_gan.scoring import DEFAULT_SCORER, AnomalyScore  # noqa: E402

#: Pooling name -> (``model.scorer.pooling``, ``top_k_fraction``).
POOLS = {
    "top1%": ("top_k", 0.01),
    "top5%": ("top_k", 0.05),
    "top20%": ("top_k", 0.2),
    "mean": ("mean", 0.05),
    "max": ("max", 0.05),
}


def variants(family: str = "pooling") -> dict[str, dict[str, Any]]:
    """name -> scorer config.

    ``pooling``: σ ∈ {1, 2, 4, 8} × pooling ∈ {top 1 %, top 5 %, top 20 %, mean, max}, plus
    the unsmoothed-difference error map and the unstandardised map. ``std_floor``: the
    default score with the per-pixel standard deviation floored at 0.1 (the default), 0.3,
    1 or 3 times its mean over pixels, or replaced by that mean (``mean only``: the per-pixel
    mean is still subtracted).
    """
    grid: dict[str, dict[str, Any]] = {}
    if family == "error_pooling":  # image scores pooled from the plain error map users see
        grid["s4 top5% (default)"] = dict(DEFAULT_SCORER)
        for pool_name, (pooling, fraction) in POOLS.items():
            grid[f"plain error map s1 {pool_name}"] = {
                **DEFAULT_SCORER,
                "normalize_map": False,
                "smooth_difference": False,
                "map_sigma": 1.0,
                "pooling": pooling,
                "top_k_fraction": fraction,
            }
        return grid
    if family == "map":  # only the pixel metrics of these differ in kind
        grid["standardised s4 (former map)"] = dict(DEFAULT_SCORER)
        for sigma in (1.0, 2.0, 4.0, 8.0):
            grid[f"unstandardised s{sigma:g}"] = {
                **DEFAULT_SCORER,
                "normalize_map": False,
                "map_sigma": sigma,
                "map_sigma_fraction": None if sigma > 4 else DEFAULT_SCORER["map_sigma_fraction"],
            }
        grid["unstandardised error map s1"] = {
            **DEFAULT_SCORER,
            "normalize_map": False,
            "smooth_difference": False,
            "map_sigma": 1.0,
        }
        return grid
    if family == "std_floor":
        for floor in (0.1, 0.3, 1.0, 3.0, 1e6):
            name = "s4 top5% mean only" if floor > 100 else f"s4 top5% floor {floor:g}"
            grid[name] = {**DEFAULT_SCORER, "map_std_floor": floor}
        return grid
    for sigma in (1.0, 2.0, 4.0, 8.0):
        for pool_name, (pooling, fraction) in POOLS.items():
            config = dict(DEFAULT_SCORER)
            config.update(map_sigma=sigma, pooling=pooling, top_k_fraction=fraction)
            if sigma > 4.0:  # the default caps σ at side / 16 = 4 px at 64 px
                config["map_sigma_fraction"] = None
            grid[f"s{sigma:g} {pool_name}"] = config
    error_map = dict(DEFAULT_SCORER)
    error_map.update(smooth_difference=False, map_sigma=1.0)
    grid["error map s1 top5%"] = error_map
    raw = dict(DEFAULT_SCORER)
    raw.update(normalize_map=False)
    grid["s4 top5% not standardised"] = raw
    return grid


def datamodule_of(checkpoint: Path, root: Path | None, test_part: str) -> MVTecDataModule:
    """The run's data module (:func:`_common.run_datamodule`), set up for fit and test."""
    datamodule = run_datamodule(checkpoint, test_part, root)
    datamodule.setup("fit")
    datamodule.setup("test")
    return datamodule


class SetImages:
    """Training, validation and test tensors of one data set (read once, shared by runs)."""

    def __init__(self, datamodule: MVTecDataModule) -> None:
        def images_of(samples: list[Any]) -> Tensor:
            return stack_loader(DataLoader(datamodule._dataset(samples), batch_size=64))[0]

        self.train = images_of(datamodule.train_samples)
        self.validation = images_of(datamodule.val_samples or datamodule.train_samples)
        (test_loader,) = datamodule.test_dataloader()
        image, label, mask = stack_loader(test_loader)
        self.test = {"image": image, "label": label, "mask": mask}
        self.has_masks = mask is not None and bool(mask.sum() > 0)


def evaluate_maps(
    scorer: AnomalyScore,
    validation: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    test_set: dict[str, Tensor],
    quantile: float,
    pixel: bool,
) -> dict[str, float | None]:
    """Calibrate ``scorer`` on (validation images, reconstructions), score the test images."""
    val_maps = scorer.error_map(*validation)
    scorer.calibrate(val_maps, torch.zeros(val_maps.shape[0]), quantile)
    test_maps = scorer.error_map(*test)
    scores = scorer.score_error_maps(test_maps)
    metrics = image_metrics(scores, test_set["label"], float(scorer.threshold))
    result: dict[str, float | None] = {
        "auroc": metrics.get("auroc"),
        "pixel_auroc": None,
        "aupro": None,
    }
    if pixel:  # the same pixel metrics a run reports, on this variant's map
        located = pixel_metrics(scorer.standardize(test_maps), test_set["mask"])
        result.update(pixel_auroc=located["pixel_auroc"], aupro=located["aupro"])
    return result


@torch.no_grad()
def reconstruct(model: Any, images: Tensor) -> Tensor:
    return torch.cat([model.reconstruct(chunk)[0].reconstruction for chunk in images.split(64)])


@torch.no_grad()
def references(images: SetImages, grid: dict[str, dict[str, Any]], quantile: float) -> dict:
    """Mean / PCA reference AUROC under every variant (the PCA's ``k`` as in runs)."""
    out: dict[str, dict[str, Any]] = {}
    mean = MeanReconstruction(images.train)
    pca = fit_pca(images.train)
    for name, config in grid.items():
        cell: dict[str, Any] = {"k": pca.k}
        for ref_name, recon in (("mean", mean), ("pca", pca)):
            cell[ref_name] = evaluate_maps(
                reference_scorer(config),
                (images.validation, recon(images.validation)),
                (images.test["image"], recon(images.test["image"])),
                images.test,
                quantile,
                images.has_masks,
            )
        cell["auroc"] = max(cell["mean"]["auroc"], cell["pca"]["auroc"])
        out[name] = cell
    return out


def tested_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint a quality.py run tested and the run's results.json."""
    results = json.loads((run_dir / "results.json").read_text())
    checkpoint = Path(results["checkpoint"]["path"])
    if not checkpoint.exists():  # the run directory moved: the same file name beside it
        checkpoint = run_dir / "checkpoints" / checkpoint.name
    if not checkpoint.exists():
        raise SystemExit(f"{run_dir}: its tested checkpoint {checkpoint.name} is missing")
    return checkpoint, results


def lodo(rows: list[dict[str, Any]], names: list[str], default: str, key: str) -> list[str]:
    """Leave-one-set-out choice on the mean of ``key`` over models and seeds (sets where
    ``key`` is defined: pixel metrics need masks)."""
    by = defaultdict(list)
    for row in rows:
        if row[key] is not None:
            by[(row["set"], row["variant"])].append(row[key])
    sets = sorted({s for s, _ in by})
    mean = {cell: statistics.mean(values) for cell, values in by.items()}
    lines = [
        f"| held-out set | chosen on the others | its {key} there | default's | change |",
        "|---|---|---|---|---|",
    ]
    for held in sets:
        others = [s for s in sets if s != held]
        chosen = max(names, key=lambda n: statistics.mean(mean[(s, n)] for s in others))
        lines.append(
            f"| {held} | {chosen} | {mean[(held, chosen)]:.3f} | {mean[(held, default)]:.3f} "
            f"| {mean[(held, chosen)] - mean[(held, default)]:+.3f} |"
        )
    return lines


def table(rows: list[dict[str, Any]], names: list[str], keys: tuple[str, ...]) -> list[str]:
    """One row per variant: the mean of each of ``keys`` per set (over models and seeds)."""
    cells = defaultdict(list)
    for row in rows:
        for key in keys:
            if row[key] is not None:
                cells[(row["set"], row["variant"], key)].append(row[key])
    sets = sorted({s for s, _, _ in cells})
    lines = [
        "| variant | " + " | ".join(sets) + " | mean |",
        "|---" * (len(sets) + 2) + "|",
    ]
    for name in names:
        parts, firsts = [], []
        for s in sets:
            values = [statistics.mean(cells[(s, name, k)]) for k in keys if cells[(s, name, k)]]
            firsts.append(values[0])
            parts.append(
                " / ".join(
                    f"{v:+.3f}" if k == "lift" else f"{v:.3f}"
                    for k, v in zip(keys, values, strict=False)
                )
            )
        lines.append(f"| {name} | " + " | ".join(parts) + f" | {statistics.mean(firsts):.3f} |")
    return lines


def summary(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    grid = payload.get("grid", "pooling")
    names = list(variants(grid))
    default = "s4 top5%" if grid == "pooling" else names[0]
    models = sorted({row["model"] for row in rows})
    keys = ("pixel_auroc", "aupro") if grid == "map" else ("auroc", "lift")
    lines = [
        f"Test part: {payload['test_part']}; {len(rows) // len(names)} runs "
        f"({', '.join(models)}); mean over models and seeds of "
        + " / ".join(keys)
        + (" (lift over the better reference under the same variant)" if "lift" in keys else "")
        + f"; the LODO tables compare with `{default}`.",
        "",
        *table(rows, names, keys),
    ]
    if len({row["set"] for row in rows}) < 2:
        return "\n".join(lines)
    for key in keys:
        lines += ["", f"Leave one set out, chosen on the mean {key} of the other sets:", ""]
        lines += lodo(rows, names, default, key)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, help="quality.py run directories (JSON files with --merge)"
    )
    parser.add_argument(
        "--merge", action="store_true", help="combine earlier --out JSON files into one summary"
    )
    parser.add_argument("--root", type=Path, default=None, help="default: the run's data.root")
    parser.add_argument("--test-part", choices=["selection", "report"], default="selection")
    parser.add_argument(
        "--grid",
        choices=["pooling", "std_floor", "map", "error_pooling"],
        default="pooling",
        help="variants()",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON (and .md beside it)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.merge:
        payload = {"rows": [], "references": {}}
        for path in args.runs:
            part = json.loads(path.read_text())
            payload["test_part"] = part["test_part"]
            payload["grid"] = part.get("grid", "pooling")
            payload["rows"] += part["rows"]
            payload["references"].update(part["references"])
        args.out.write_text(json.dumps(payload, indent=1))
        text = summary(payload)
        args.out.with_suffix(".md").write_text(text + "\n")
        print(text)
        return 0

    grid = variants(args.grid)
    payload: dict[str, Any] = {
        "test_part": args.test_part,
        "grid": args.grid,
        "rows": [],
        "references": {},
    }
    images_by_set: dict[str, SetImages] = {}  # by "set/seedN"
    for run_dir in args.runs:
        checkpoint, results = tested_checkpoint(run_dir)
        model_name, _, seed = run_dir.name.rsplit("_", 2)  # e.g. skip_ganomaly_64_seed0
        seed = int(seed.removeprefix("seed"))
        (category,) = results["categories"]
        module = load_model(checkpoint).model.eval()
        quantile = float(module.hparams.get("threshold_quantile", 0.95))
        # The train/validation split follows the run's seed: references per set and seed.
        split = f"{category}/seed{seed}"
        if split not in images_by_set:
            datamodule = datamodule_of(checkpoint, args.root, args.test_part)
            images_by_set[split] = SetImages(datamodule)
            payload["references"][split] = references(images_by_set[split], grid, quantile)
        images = images_by_set[split]
        reference = payload["references"][split]
        validation = (images.validation, reconstruct(module, images.validation))
        test = (images.test["image"], reconstruct(module, images.test["image"]))
        for name, config in {"own": module.scorer.to_config(), **grid}.items():
            result = evaluate_maps(
                AnomalyScore.from_config({k: v for k, v in config.items() if k != "_target_"}),
                validation,
                test,
                images.test,
                quantile,
                images.has_masks,
            )
            if name == "own":
                logged = results["categories"][category]["auroc"]
                print(f"{run_dir}: own {result['auroc']:.4f} (run: {logged:.4f})", flush=True)
                continue
            payload["rows"].append(
                {
                    "model": model_name,
                    "set": category,
                    "seed": seed,
                    "variant": name,
                    "checkpoint": str(checkpoint),
                    **result,
                    "reference_auroc": reference[name]["auroc"],
                    "lift": result["auroc"] - reference[name]["auroc"],
                }
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1))
    text = summary(payload)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
