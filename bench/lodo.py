"""Leave-one-dataset-out choice between settings measured by ``bench/quality.py``.

    python bench/lodo.py bench/results/lodo_study/study_*.json
    python bench/lodo.py bench/results/budget_study/study_sa_mife_skips_*_seed*.json

Each JSON file holds runs of one setting, made with ``bench/quality.py --test-part
selection`` on several data sets; the file name after ``study_`` names the setting, and a
trailing ``_seed<N>`` is dropped, so the files of one setting at several seeds are pooled and
compared on their mean over seeds (one seed's selection part is too noisy to choose on:
docs/what-works.md). Each model in the files is compared on its own. For every data set held
out, the setting with the best mean image AUROC on the *other* sets is chosen, and its rank
on the held-out set is printed: a setting deserves to be a default only if the choice made
without a set also does well on it. Only settings measured on every set compete.

A small test part is a noisy judge (the tyres' selection part has 8 normal images, and one
image moves its AUROC by 1/8). Where the runs carry ``auroc_interval`` (the 95 % bootstrap
interval every run reports), the mean over the other sets weighs each set by the inverse
square of its mean interval width, as an inverse-variance mean would, and each held-out
line says whether the chosen setting's gap to the best there is inside half that set's
interval (a tie at this test size). ``--equal-weights`` restores the plain mean; files
without intervals get it anyway. Where the runs of the chosen and the best setting kept
their per-image scores (``scores/`` in their run directories, runs made since they are
written), the line also gives, per seed, the paired 95 % interval of chosen − best on the
held-out set's images (``report.py --compare``): a gap whose interval spans zero is a tie.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
from _common import ensure_repo_on_path

ensure_repo_on_path()

from anomaly_gan.evaluation.image_scores import compare_runs  # noqa: E402

_SEED_SUFFIX = re.compile(r"_seed\d+$")


def setting_name(path: Path) -> str:
    """``study_skips_none_seed1.json`` -> ``skips_none``."""
    return _SEED_SUFFIX.sub("", path.stem.removeprefix("study_"))


def load(paths: list[Path]) -> dict[str, dict[tuple[str, str], list[dict]]]:
    """model -> (setting, data set) -> its completed runs (one per seed)."""
    runs: dict[str, dict[tuple[str, str], list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        setting = setting_name(path)
        for row in json.loads(path.read_text())["runs"]:
            if row.get("auroc") is not None:
                runs[row["model"]][(setting, row["dataset"])].append(row)
    return runs


def _mean(rows: list[dict], key: str) -> float:
    return statistics.mean(row[key] for row in rows)


def interval_widths(
    runs: dict[tuple[str, str], list[dict]], datasets: list[str]
) -> dict[str, float] | None:
    """Mean width of the image AUROC's 95 % interval per data set, or None where a set's
    runs carry none (files made before runs reported intervals)."""
    widths: dict[str, float] = {}
    for dataset in datasets:
        spans = [
            row["auroc_interval"][1] - row["auroc_interval"][0]
            for (_, name), rows in runs.items()
            if name == dataset
            for row in rows
            if row.get("auroc_interval")
        ]
        if not spans:
            return None
        widths[dataset] = max(statistics.mean(spans), 1e-3)
    return widths


def paired_intervals(chosen: list[dict], best: list[dict]) -> str:
    """Per seed, the paired interval of chosen − best from the runs' per-image scores
    (empty where either run kept none)."""
    best_by_seed = {row["seed"]: row for row in best}
    parts = []
    for row in chosen:
        other = best_by_seed.get(row["seed"])
        if other is None or not row.get("run_dir") or not other.get("run_dir"):
            continue
        try:
            comparisons = compare_runs(Path(row["run_dir"]), Path(other["run_dir"]))
        except (FileNotFoundError, ValueError):
            continue
        for comparison in comparisons:
            if comparison.interval is not None:
                low, high = comparison.interval
                parts.append(f"seed {row['seed']} [{low:+.3f}, {high:+.3f}]")
    return "; paired chosen − best: " + ", ".join(parts) if parts else ""


def compare(
    model: str, runs: dict[tuple[str, str], list[dict]], equal_weights: bool = False
) -> None:
    """Print one model's table (means over seeds) and its leave-one-set-out choices."""
    settings = sorted({setting for setting, _ in runs})
    datasets = list(dict.fromkeys(dataset for _, dataset in runs))
    auroc = {cell: _mean(rows, "auroc") for cell, rows in runs.items()}
    print(f"\n## {model}\n")
    print("| setting | " + " | ".join(datasets) + " |")
    print("|---" * (len(datasets) + 1) + "|")
    for setting in settings:
        cells = []
        for dataset in datasets:
            rows = runs.get((setting, dataset))
            cells.append(
                "-"
                if not rows
                else f"{auroc[(setting, dataset)]:.3f} (ref {_mean(rows, 'reference_auroc'):.3f}, "
                f"{_mean(rows, 'lift'):+.3f}; seeds {','.join(str(r['seed']) for r in rows)})"
            )
        print(f"| {setting} | " + " | ".join(cells) + " |")
    complete = [s for s in settings if all((s, d) in runs for d in datasets)]
    if len(complete) < 2 or len(datasets) < 2:
        print("\n(fewer than two settings measured on every set: nothing to choose)")
        return
    seeds = {cell: sorted(row["seed"] for row in runs[cell]) for cell in runs}
    if len({tuple(seeds[(s, d)]) for s in complete for d in datasets}) > 1:
        print("\nWarning: the settings were not measured at the same seeds (see the table).")
    widths = None if equal_weights else interval_widths(runs, datasets)
    weight = {d: 1.0 if widths is None else widths[d] ** -2 for d in datasets}
    if widths is None:
        print("\nLeave one data set out (chosen by the mean image AUROC on the other sets):")
    else:
        print(
            "\nLeave one data set out (chosen by the mean image AUROC on the other sets, each "
            "weighted by 1 / width² of its 95 % interval; widths "
            + ", ".join(f"{d} {widths[d]:.3f}" for d in datasets)
            + "):"
        )

    def weighted(setting: str, others: list[str]) -> float:
        total = sum(weight[d] for d in others)
        return sum(weight[d] * auroc[(setting, d)] for d in others) / total

    for held_out in datasets:
        others = [d for d in datasets if d != held_out]
        chosen = max(complete, key=lambda s: weighted(s, others))
        ranking = sorted(complete, key=lambda s: -auroc[(s, held_out)])
        best = ranking[0]
        gap = auroc[(best, held_out)] - auroc[(chosen, held_out)]
        tie = (
            ""
            if widths is None or gap == 0
            else f"; gap {gap:.3f} {'inside' if gap < widths[held_out] / 2 else 'beyond'} "
            f"half the set's interval ({widths[held_out] / 2:.3f})"
        )
        paired = (
            "" if gap == 0 else paired_intervals(runs[(chosen, held_out)], runs[(best, held_out)])
        )
        print(
            f"- held out {held_out}: chosen {chosen}, {auroc[(chosen, held_out)]:.3f} "
            f"there (rank {ranking.index(chosen) + 1} of {len(complete)}; best there {best} "
            f"{auroc[(best, held_out)]:.3f}{tie}{paired})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench/quality.py JSON files")
    parser.add_argument(
        "--equal-weights",
        action="store_true",
        help="plain mean over the other sets, however wide their intervals",
    )
    args = parser.parse_args()
    for model, runs in load(args.results).items():
        compare(model, runs, args.equal_weights)


if __name__ == "__main__":
    main()
