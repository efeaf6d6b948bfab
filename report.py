"""Tables and figures across runs: ``python report.py multirun/<sweep> [more dirs] [--out DIR]
[--published NAME]``.

Collects every run's ``results.json`` and writes the papers' tables (Markdown + CSV) and
figures (PNG); ``--published`` adds one of the papers' published tables with our reproduced
cells beside it; see :mod:`anomaly_gan.evaluation.tables`.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse
import sys
from pathlib import Path

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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
