"""``results.json``: one file per run that reports, tables and sweeps read back.

Written atomically (temporary file + ``os.replace``), so a crash or a pre-emption never
leaves half a file that a report would misread.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
#: A model less than this far above its no-learning reference is flagged in the summary.
MIN_LIFT = 0.02
IMAGE_METRICS = (
    "auroc",
    "average_precision",
    "f1_max_oracle",
    "precision",
    "recall",
    "f1",
    "accuracy",
)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(run_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results`` to ``run_dir/results.json`` atomically; non-finite floats -> null."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / RESULTS_FILE
    handle, temporary = tempfile.mkstemp(dir=run_dir, prefix=".results.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(_json_safe(results), stream, indent=2, allow_nan=False)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def process_record() -> dict[str, Any]:
    """Which process writes a run's ``results.json`` (``process`` key): lets a report tell a
    job that is still running from one whose process died (killed, out of memory)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_died(results: dict[str, Any]) -> bool:
    """True for a run that says ``running`` but whose process, on this machine, is gone.

    A SIGKILL (OOM killer, node pre-emption without notice) leaves ``running`` behind.
    Runs written on another host (a cluster node) cannot be checked and count as alive.
    """
    process = results.get("process") or {}
    if results.get("status") != "running" or process.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(process["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError):
        return False  # another user's live process, or no pid recorded
    return False


def read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    return json.loads(path.read_text())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _interval_text(interval: list[float] | None) -> str:
    if not interval:
        return ""
    low, high = (round(end, 3) + 0.0 for end in interval)  # + 0.0: no "-0.000"
    return f"[{low:+.3f}, {high:+.3f}]"


def _reference_cells(metrics: dict[str, Any]) -> list[str]:
    reference = metrics.get("reference") or {}
    lift = reference.get("lift")
    interval = _interval_text(reference.get("lift_interval"))
    lift_text = f"{lift:+.3f} {interval}".strip() if isinstance(lift, float) else _cell(lift)
    return [_cell(reference.get("auroc")), lift_text]


def format_results_table(results: dict[str, Any]) -> str:
    """A plain-text table: one row per test category (and its defect types).

    ``ref auroc`` is the better no-learning reference (mean / PCA reconstruction, same
    scorer) and ``lift`` the model's image AUROC above it, with its 95 % bootstrap interval
    over the test images (:mod:`anomaly_gan.evaluation.intervals`); a lift under
    ``MIN_LIFT`` gets a line of its own under the table.
    """
    header = ["test set", "n (norm/anom)", *IMAGE_METRICS, "ref auroc", "lift"]
    rows: list[list[str]] = []
    warnings: list[str] = []
    for category, metrics in results.get("categories", {}).items():
        counts = f"{metrics.get('n_normal', 0)}/{metrics.get('n_anomalous', 0)}"
        rows.append(
            [
                category,
                counts,
                *(_cell(metrics.get(k)) for k in IMAGE_METRICS),
                *_reference_cells(metrics),
            ]
        )
        for kind, sub in metrics.get("by_defect_type", {}).items():
            sub_counts = f"{sub.get('n_normal', 0)}/{sub.get('n_anomalous', 0)}"
            rows.append(
                [f"  {kind}", sub_counts, *(_cell(sub.get(k)) for k in IMAGE_METRICS), "", ""]
            )
        reference = metrics.get("reference") or {}
        if reference.get("lift") is not None and reference["lift"] < MIN_LIFT:
            warnings.append(
                f"{category}: lift {reference['lift']:+.3f} over the no-learning reference "
                f"(its best detector: {reference.get('best')}, AUROC {reference['auroc']:.3f}) is "
                f"below +{MIN_LIFT}: the GAN adds little here"
                + (
                    f" (95 % interval over the test images {interval})"
                    if (interval := _interval_text(reference.get("lift_interval")))
                    else ""
                )
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.extend(f"warning: {text}" for text in warnings)
    threshold = results.get("threshold", {})
    lines.append(
        f"status: {results.get('status')}  threshold: {_cell(threshold.get('value'))} "
        f"(quantile {threshold.get('quantile')} of validation-normal scores)  "
        f"time: {_cell(results.get('duration_s'))} s"
    )
    return "\n".join(lines)
