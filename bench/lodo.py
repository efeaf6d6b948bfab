"""Leave-one-dataset-out choice between settings measured by ``bench/quality.py``.

    python bench/lodo.py bench/results/lodo_study/study_*.json

Each JSON file is one setting (its name after ``study_`` names it), run with
``bench/quality.py --test-part selection`` on several data sets. For every data set held out,
the setting with the best mean image AUROC on the *other* sets is chosen, and its rank on the
held-out set is printed: a setting deserves to be a default only if the choice made without
a set also does well on it (docs/what-works.md). Only settings measured on every set compete.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(paths: list[Path]) -> dict[tuple[str, str], dict]:
    """(setting, data set) -> the run's row (first seed's; settings are compared at one seed)."""
    rows: dict[tuple[str, str], dict] = {}
    for path in paths:
        setting = path.stem.removeprefix("study_")
        for row in json.loads(path.read_text())["runs"]:
            if row.get("auroc") is not None:
                rows.setdefault((setting, row["dataset"]), row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench/quality.py JSON files")
    args = parser.parse_args()
    rows = load(args.results)
    settings = sorted({setting for setting, _ in rows})
    datasets = list(dict.fromkeys(dataset for _, dataset in rows))
    print("| setting | " + " | ".join(datasets) + " |")
    print("|---" * (len(datasets) + 1) + "|")
    for setting in settings:
        cells = []
        for dataset in datasets:
            row = rows.get((setting, dataset))
            cells.append(
                "-"
                if row is None
                else f"{row['auroc']:.3f} (ref {row['reference_auroc']:.3f}, {row['lift']:+.3f})"
            )
        print(f"| {setting} | " + " | ".join(cells) + " |")
    complete = [s for s in settings if all((s, d) in rows for d in datasets)]
    print("\nLeave one data set out (chosen by the mean image AUROC on the other sets):")
    for held_out in datasets:
        others = [d for d in datasets if d != held_out]
        chosen = max(complete, key=lambda s: statistics.mean(rows[(s, d)]["auroc"] for d in others))
        ranking = sorted(complete, key=lambda s: -rows[(s, held_out)]["auroc"])
        best = ranking[0]
        print(
            f"- held out {held_out}: chosen {chosen}, {rows[(chosen, held_out)]['auroc']:.3f} "
            f"there (rank {ranking.index(chosen) + 1} of {len(complete)}; best there {best} "
            f"{rows[(best, held_out)]['auroc']:.3f})"
        )


if __name__ == "__main__":
    main()
