"""Tables and figures across runs: ``python report.py multirun/<sweep> [more dirs] [--out DIR]
[--published NAME]``; two runs compared image by image: ``python report.py --compare RUN_A
RUN_B``.

Collects every run's ``results.json`` and writes the papers' tables (Markdown + CSV) and
figures (PNG); ``--published`` adds one of the papers' published tables with our reproduced
cells beside it; see :mod:`anomaly_gan.evaluation.tables`. ``--compare`` pairs two runs'
per-image scores on each test set both scored: the AUROC difference and its paired
bootstrap interval (:mod:`anomaly_gan.evaluation.image_scores`).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse
import sys
from pathlib import Path

from anomaly_gan.evaluation.image_scores import compare_runs, format_comparison
from anomaly_gan.evaluation.published import published_names
from anomaly_gan.evaluation.tables import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python report.py", description=__doc__)
    parser.add_argument(
        "directories",
        nargs="+",
        type=Path,
        help="sweep directories (multirun/<time>) or run directories",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write tables and figures (default: <first dir>/report)",
    )
    parser.add_argument(
        "--published",
        choices=published_names(),
        default=None,
        help="also set this published table beside the reproduced runs "
        "(reproduced, published and the difference per cell, and its figure)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="the two run directories given, image by image: each shared test set's AUROC "
        "in both, the difference and its 95 %% paired bootstrap interval",
    )
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args.directories)
    out_dir = args.out or args.directories[0] / "report"
    try:
        summary = build_report(args.directories, out_dir, published=args.published)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{summary['runs']} runs: {summary['statuses']}\n")
    print("Image AUROC (category x model)\n" + summary["auroc_table"] + "\n")
    print(
        "Precision / recall / F1 at the validation threshold\n"
        + summary["precision_recall_f1_table"]
        + "\n"
    )
    if summary["published_table"]:
        print("Reproduced beside the published table\n" + summary["published_table"] + "\n")
    print(f"tables and figures: {summary['out_dir']}")
    return 0


def compare(directories: list[Path]) -> int:
    """Print :func:`compare_runs` of two run directories (exit 2 on unusable input)."""
    if len(directories) != 2:
        print(
            f"error: --compare takes two run directories, got {len(directories)}",
            file=sys.stderr,
        )
        return 2
    try:
        comparisons = compare_runs(*directories)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_comparison(comparisons, *directories))
    return 0


if __name__ == "__main__":
    sys.exit(main())
