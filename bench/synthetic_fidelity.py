"""Do synthetic defects rank detectors as the real defects do? Judged on several sets at once.

    python bench/synthetic_fidelity.py --root ../shared/data --out FILE.json
    python bench/synthetic_fidelity.py --summarize FILE.json

Every label-free choice in this project (the PCA reference's ``k``, ``model.companion=auto``,
a checkpoint chosen on ``val/synthetic_auroc``) asks one question of synthetic defects
pasted into held-out validation normals: *which detector separates them best?* That choice
is only as good as the synthetic defects are like the real ones. This script measures it
without training anything: a pool of no-learning detectors (the mean training image and
the PCA reconstruction at every candidate ``k``, each under several smoothing widths and
poolings of the project's scorer) is scored on

- each kind of synthetic defect pasted into the held-out validation normals (the
  validation AUROC the choices use), and
- the real defects of the *selection* part of the test set (never the report part).

Per set and kind it reports the rank correlation (Spearman) of the two AUROCs over the
pool, and the regret of choosing by the synthetic AUROC: the best real AUROC in the pool
minus the real AUROC of the detector the synthetic AUROC picks. Leaving one set out, the
kind with the lowest mean regret on the other three is judged on the held-out one.

Kinds: the project's ``blob``, ``line``, ``patch``, ``noise``, ``shift``
(:mod:`anomaly_gan.corruption`), the training mix of the first three (``all``, what
label-free choices used until noise and shift were added) and that mix with noise, shift
or both, and two candidates made from other images or blurring, since real defects are
rarely a flat blob of a new brightness:

- ``swap``: a soft ellipse of another normal image at the same place (right texture,
  wrong instance: a foreign part or a seam);
- ``smear``: a soft ellipse blurred (σ 1.5-3 px) (lost texture: contamination, wear).

Besides the whole pool, the summary reports the choice the PCA reference makes: ``k`` alone,
under the project's default scorer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.transforms.v2.functional import gaussian_blur  # noqa: E402

from anomaly_gan.corruption import (  # noqa: E402
    KINDS,
    TRAINING_KINDS,
    SyntheticDefects,
    _ellipse,
    _Random,
)
from anomaly_gan.data import MVTecDataModule  # noqa: E402
from anomaly_gan.evaluation.reference import (  # noqa: E402
    PCA_COMPONENTS,
    MeanReconstruction,
    _error_maps,
    reference_scorer,
    stack_loader,
)
from anomaly_gan.nets.pca import PcaReconstruction  # noqa: E402
from anomaly_gan.scoring import DEFAULT_SCORER, AnomalyScore, separation_auroc  # noqa: E402

SETS = ("magnetic_tile", "mvtec3d_tire", "elpv", "mpdd_metal_plate")
#: The project's kinds and mixes, each as the kinds :class:`SyntheticDefects` draws from.
PROJECT_KINDS = {
    **{kind: (kind,) for kind in KINDS},
    "all": TRAINING_KINDS,
    "all+noise": (*TRAINING_KINDS, "noise"),
    "all+shift": (*TRAINING_KINDS, "shift"),
    "all+noise+shift": (*TRAINING_KINDS, "noise", "shift"),
}
CONTENT_KINDS = ("swap", "smear")
#: The detectors among which the PCA reference chooses: ``k`` under the default scorer.
K_CHOICE = "s4 top5%"
#: Synthetic copies per held-out validation normal (several draws steady small sets).
COPIES = 4
POOLS = {"top1%": ("top_k", 0.01), "top5%": ("top_k", 0.05), "mean": ("mean", 0.05)}
SIGMAS = (1.0, 4.0)


def scorer_grid() -> dict[str, dict[str, Any]]:
    grid = {}
    for sigma in SIGMAS:
        for pool_name, (pooling, fraction) in POOLS.items():
            grid[f"s{sigma:g} {pool_name}"] = {
                **DEFAULT_SCORER,
                "map_sigma": sigma,
                "pooling": pooling,
                "top_k_fraction": fraction,
            }
    return grid


def set_images(
    root: Path, category: str, seed: int, normalization: str, test_part: str = "selection"
) -> dict[str, Tensor]:
    """Training, validation and test-part images at the data defaults."""
    datamodule = MVTecDataModule(
        root=str(root),
        category=category,
        normalization=normalization,
        selection_fraction=0.3,
        test_part=test_part,
        cache=False,
        num_workers=0,
        seed=seed,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")

    def images_of(samples: list[Any]) -> Tensor:
        return stack_loader(DataLoader(datamodule._dataset(samples), batch_size=64))[0]

    (test_loader,) = datamodule.test_dataloader()
    test, labels, _ = stack_loader(test_loader)
    return {
        "train": images_of(datamodule.train_samples),
        "validation": images_of(datamodule.val_samples),
        "test": test,
        "labels": labels,
    }


def soft_mask(height: int, width: int, rand: _Random) -> Tensor:
    """A soft ellipse of 4-25 % of the side at a random place, as the project's blobs."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1)
    extent = min(height, width) * rand.uniform(0.04, 0.25)
    centre = (rand.uniform(0, height - 1), rand.uniform(0, width - 1))
    return _ellipse(rows, cols, centre, extent, rand)


def content_defects(kind: str, images: Tensor, donors: Tensor, seed: int) -> Tensor:
    """One ``kind`` defect (1-3 of them) in a copy of every image; donors for ``swap``."""
    generator = torch.Generator().manual_seed(seed)
    rand = _Random(generator)
    out = images.clone()
    height, width = images.shape[-2:]
    for index in range(images.shape[0]):
        for _ in range(rand.integer(1, 3)):
            mask = soft_mask(height, width, rand)
            current = out[index]
            if kind == "swap":
                source = donors[rand.integer(0, donors.shape[0] - 1)]
            elif kind == "smear":
                sigma = rand.uniform(1.5, 3.0)
                size = 2 * math.ceil(3 * sigma) + 1  # ±3σ, as the scorer smooths
                source = gaussian_blur(current, [size, size], [sigma, sigma])
            else:
                raise ValueError(f"unknown kind {kind!r}")
            out[index] = current * (1 - mask) + source * mask
    return out


def synthetic_copies(kind: str, held_out: Tensor, donors: Tensor) -> Tensor:
    copies = []
    for copy in range(COPIES):
        seed = 1000 * copy + 7
        if kind in PROJECT_KINDS:
            generator = torch.Generator().manual_seed(seed)
            defects = SyntheticDefects(probability=1.0, kinds=PROJECT_KINDS[kind])
            copies.append(defects(held_out, generator))
        else:
            copies.append(content_defects(kind, held_out, donors, seed))
    return torch.cat(copies)


def scores_of(scorer: AnomalyScore, reconstruct: Any, images: Tensor) -> Tensor:
    """The reference scorer's image scores of ``images`` against ``reconstruct(images)``."""
    return scorer.score_error_maps(_error_maps(scorer, reconstruct, images))


@torch.no_grad()
def measure(images: dict[str, Tensor], quantile: float = 0.95) -> list[dict[str, Any]]:
    """Synthetic AUROC per kind and real AUROC of every detector of the pool."""
    train, validation = images["train"], images["validation"]
    held_out = validation[reference_scorer(DEFAULT_SCORER).held_out(validation.shape[0])]
    kinds = (*PROJECT_KINDS, *CONTENT_KINDS)
    synthetic = {kind: synthetic_copies(kind, held_out, train) for kind in kinds}
    candidates = [k for k in PCA_COMPONENTS if k < train.shape[0]]
    pca = PcaReconstruction(train, max(candidates))
    # (name, reconstruction, PCA size to set before using it); the PCA's directions are nested.
    detectors: list[tuple[str, Any, int | None]] = [("mean", MeanReconstruction(train), None)]
    detectors += [(f"pca{k}", pca, k) for k in candidates if k <= pca.k]
    normal, defective = images["test"][images["labels"] == 0], images["test"][images["labels"] == 1]
    rows = []
    for recon_name, reconstruct, k in detectors:
        if k is not None:
            pca.k = k
        for scorer_name, config in scorer_grid().items():
            scorer = reference_scorer(config)
            # Calibrated on the validation normals as a run is; the clean held-out ones are
            # those the calibration did not take its per-pixel statistics from.
            maps = _error_maps(scorer, reconstruct, validation)
            clean = scorer.calibrate(maps, maps.new_zeros(maps.shape[0]), quantile)
            row = {
                "detector": f"{recon_name} {scorer_name}",
                "real": separation_auroc(
                    scores_of(scorer, reconstruct, normal),
                    scores_of(scorer, reconstruct, defective),
                ),
            }
            for kind in kinds:
                row[kind] = separation_auroc(clean, scores_of(scorer, reconstruct, synthetic[kind]))
            rows.append(row)
    return rows


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for m in range(i, j + 1):
                result[order[m]] = (i + j) / 2
            i = j + 1
        return result

    ra, rb = ranks(a), ranks(b)
    return statistics.correlation(ra, rb) if len(set(ra)) > 1 and len(set(rb)) > 1 else 0.0


def fidelity(rows: list[dict[str, Any]], kind: str) -> dict[str, float]:
    real = [row["real"] for row in rows]
    synth = [row[kind] for row in rows]
    picked = max(range(len(rows)), key=lambda i: (synth[i], -i))
    return {
        "spearman": spearman(synth, real),
        "regret": max(real) - real[picked],
        "picked": rows[picked]["detector"],
        "picked_real": real[picked],
    }


def k_choice(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The PCA detectors under the default scorer: what the reference's ``k`` is chosen among."""
    return [
        row
        for row in rows
        if row["detector"].startswith("pca") and row["detector"].endswith(K_CHOICE)
    ]


def regret_table(
    results: list[dict[str, Any]], kinds: list[str], choice: Any = None
) -> dict[str, dict[str, tuple[float, float]]]:
    """(Spearman ρ, regret) per kind and set, mean over split seeds; ``choice`` narrows the pool."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for kind in kinds:
        for name in SETS:
            cells = [
                fidelity(choice(r["rows"]) if choice else r["rows"], kind)
                for r in results
                if r["set"] == name
            ]
            if cells:
                table.setdefault(kind, {})[name] = (
                    statistics.mean(c["spearman"] for c in cells),
                    statistics.mean(c["regret"] for c in cells),
                )
    return table


def leave_one_set_out(table: dict[str, dict[str, tuple[float, float]]], baseline: str) -> list[str]:
    """Per held-out set: the kind with the lowest mean regret on the other three, judged there."""
    lines = []
    for held in SETS:
        others = [n for n in SETS if n != held]
        chosen = min(table, key=lambda k: statistics.mean(table[k][n][1] for n in others))
        lines.append(
            f"- {held}: chooses `{chosen}`, regret there {table[chosen][held][1]:.3f} "
            f"(`{baseline}`: {table[baseline][held][1]:.3f})"
        )
    return lines


def summarize(payload: dict[str, Any]) -> str:
    results = payload["results"]
    kinds = [key for key in results[0]["rows"][0] if key not in ("detector", "real")]
    baseline = "all"
    lines: list[str] = []
    pool = regret_table(results, kinds)
    k_only = regret_table(results, kinds, k_choice)
    for title, table in (
        (f"all {len(results[0]['rows'])} no-learning detectors", pool),
        (f"the PCA reference's choice of k ({K_CHOICE})", k_only),
    ):
        lines += [
            f"Per set (mean over split seeds), {title}: Spearman ρ of synthetic vs real "
            "AUROC / regret of choosing by it",
            "",
            "| kind | " + " | ".join(SETS) + " | mean |",
            "|---|" + "---|" * (len(SETS) + 1),
        ]
        for kind, values in table.items():
            lines.append(
                f"| {kind} | "
                + " | ".join(f"{values[n][0]:+.2f} / {values[n][1]:.3f}" for n in SETS)
                + f" | {statistics.mean(v[0] for v in values.values()):+.2f} / "
                f"{statistics.mean(v[1] for v in values.values()):.3f} |"
            )
        lines += ["", "Leave one set out (kind with the lowest mean regret on the other three):"]
        lines += ["", *leave_one_set_out(table, baseline), ""]
    both = {
        kind: {name: (math.nan, pool[kind][name][1] + k_only[kind][name][1]) for name in SETS}
        for kind in PROJECT_KINDS
        if kind in kinds
    }
    lines += [
        "Both questions at once (regret over the whole pool + regret of the k choice), "
        "kinds the project can paste:",
        "",
        *(
            f"- {kind}: " + ", ".join(f"{both[kind][name][1]:.3f}" for name in SETS)
            for kind in both
        ),
        "",
        "Leave one set out on the sum:",
        "",
        *leave_one_set_out(both, baseline),
        "",
    ]
    lines += ["Best real AUROC in the pool, and what each kind picks (per split seed):", ""]
    for result in results:
        best = max(result["rows"], key=lambda row: row["real"])
        picks = ", ".join(
            f"{kind} {fidelity(result['rows'], kind)['picked_real']:.3f}" for kind in kinds
        )
        lines.append(
            f"- {result['set']} seed {result['seed']}: best {best['real']:.3f} "
            f"({best['detector']}); {picks}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--test-part",
        choices=("selection", "report"),
        default="selection",
        help="report: only to confirm, on images no choice saw, what the selection part showed",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summarize", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--normalization",
        choices=("per_image", "fixed"),
        default="per_image",
        help="data.normalization (per_image: the default in conf/data)",
    )
    args = parser.parse_args()
    if args.summarize:
        print(summarize(json.loads(args.summarize.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    results = []
    for name in args.sets:
        for seed in args.seeds:
            images = set_images(args.root, name, seed, args.normalization, args.test_part)
            rows = measure(images)
            results.append(
                {
                    "set": name,
                    "seed": seed,
                    "normalization": args.normalization,
                    "test_part": args.test_part,
                    "rows": rows,
                }
            )
            best = max(rows, key=lambda row: row["real"])
            print(f"{name} seed {seed}: {len(rows)} detectors, best real {best['real']:.3f}")
            if args.out:
                args.out.write_text(json.dumps({"results": results}, indent=1))
    if len({r["set"] for r in results}) == len(SETS):
        print(summarize({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
