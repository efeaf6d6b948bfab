"""Tables and figures across runs: the papers' layouts, rebuilt from ``results.json`` files.

- AUROC table (skip-SA paper, Tables 1 and 2): test category x model, with a mean row.
- Precision / recall / F1 table (MIFE paper, Table I): test class x model.
- AUROC per category per model as a line plot (skip-SA paper, Fig. 8).
- Confusion matrices, one per model x test class (MIFE paper, Fig. 2).
- With ``published=<name>``: one of the papers' tables (:mod:`anomaly_gan.evaluation.published`)
  with our reproduced cells beside the published ones and the difference, and its figure
  (Fig. 8 with the published lines dashed, or Fig. 2 with the published matrices).

Runs that failed, job directories without a ``results.json`` and jobs whose process died
(``results.json`` still says running) appear as ``failed`` / ``missing`` cells, never
silently dropped. Repeated runs of one cell (seeds) are shown as
mean ± std.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from anomaly_gan.evaluation.plots import Line, plot_auroc_lines, plot_confusion_grid, plot_lines
from anomaly_gan.evaluation.published import (
    OURS,
    PAPER,
    SETTINGS_LABELS,
    PublishedTable,
    architecture_and_settings,
    load_published,
)
from anomaly_gan.evaluation.results import RESULTS_FILE, process_died

COMPLETED = "completed"


@dataclass
class RunRecord:
    """One training job as the report sees it."""

    directory: Path
    model: str
    status: str  # completed | failed | interrupted | running | missing
    test_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    expected_test_sets: list[str] = field(default_factory=list)
    seed: Any = None


def _record_from_results(path: Path) -> RunRecord:
    """A job as its ``results.json`` says, except that a ``running`` job whose process died
    (SIGKILL, OOM) is ``missing``: it will never finish, re-launching the sweep runs it."""
    results = json.loads(path.read_text())
    config = results.get("config", {})
    status = "missing" if process_died(results) else str(results.get("status", "missing"))
    return RunRecord(
        directory=path.parent,
        model=str(config.get("model_name") or config.get("model")),
        status=status,
        test_sets=results.get("categories") or {},
        expected_test_sets=[
            str(c) for c in config.get("test_categories") or [config.get("category")]
        ],
        seed=config.get("seed"),
    )


def _record_from_hydra(job_dir: Path) -> RunRecord:
    """A job that never wrote results.json (killed, or still running): read its config."""
    cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    choices = {}
    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        choices = OmegaConf.to_container(OmegaConf.load(hydra_file).hydra.runtime.choices)
    data = cfg.get("data", {})
    model = choices.get("model") or str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]
    tests = data.get("test_categories") or [data.get("category")]
    return RunRecord(
        directory=job_dir,
        model=str(model),
        status="missing",
        expected_test_sets=[str(t) for t in tests],
        seed=cfg.get("seed"),
    )


def collect_runs(directories: list[Path]) -> list[RunRecord]:
    """Every run under the given directories (sweep roots or single run directories)."""
    records: dict[Path, RunRecord] = {}
    for root in directories:
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist: pass a multirun/<time> directory")
        for results in sorted(root.rglob(RESULTS_FILE)):
            records[results.parent.resolve()] = _record_from_results(results)
        for config in sorted(root.rglob(".hydra/config.yaml")):
            job_dir = config.parent.parent.resolve()
            if job_dir not in records:
                records[job_dir] = _record_from_hydra(job_dir)
    return sorted(records.values(), key=lambda r: (r.model, str(r.directory)))


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    def text(self) -> str:
        if self.values:
            flag = "" if all(s == COMPLETED for s in self.statuses) else " (some failed)"
            return _mean_std(self.values) + flag
        if not self.statuses:
            return ""
        return "failed" if "failed" in self.statuses else self.statuses[0]

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None


def _metric(metrics: dict[str, Any], path: str) -> Any:
    """``metrics["reference"]["lift"]`` for ``path="reference.lift"``; None where absent."""
    value: Any = metrics
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _cells(runs: list[RunRecord], metric: str) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    for run in runs:
        names = list(run.test_sets) if run.status == COMPLETED else run.expected_test_sets
        for name in names:
            cell = cells[(name, run.model)]
            value = _metric(run.test_sets.get(name, {}), metric)
            cell.statuses.append(run.status)
            if run.status == COMPLETED and isinstance(value, int | float) and math.isfinite(value):
                cell.values.append(float(value))
    return cells


def _ordered(runs: list[RunRecord]) -> tuple[list[str], list[str]]:
    models: list[str] = []
    test_sets: list[str] = []
    for run in runs:
        if run.model not in models:
            models.append(run.model)
        for name in [*run.expected_test_sets, *run.test_sets]:
            if name not in test_sets:
                test_sets.append(name)
    return models, test_sets


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _write_table(out_dir: Path, stem: str, header: list[str], rows: list[list[str]]) -> str:
    with open(out_dir / f"{stem}.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([header, *rows])
    text = _markdown(header, rows)
    (out_dir / f"{stem}.md").write_text(text + "\n")
    return text


def auroc_table(runs: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """Category x model -> image AUROC (mean ± std over repeats), plus a mean row."""
    models, test_sets = _ordered(runs)
    cells = _cells(runs, "auroc")
    rows = [
        [name, *(cells[(name, m)].text() if (name, m) in cells else "missing" for m in models)]
        for name in test_sets
    ]
    means = []
    for model in models:
        per_set = [cells[(n, model)].mean for n in test_sets if (n, model) in cells]
        numeric = [v for v in per_set if v is not None]
        complete = len(numeric) == len(test_sets)
        means.append(
            f"{statistics.mean(numeric):.3f}"
            + ("" if complete else f" ({len(numeric)}/{len(test_sets)})")
            if numeric
            else "-"
        )
    rows.append(["mean", *means])
    return ["category", *models], rows


def prf_table(runs: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """Test class x model -> precision, recall, F1 at the validation threshold."""
    models, test_sets = _ordered(runs)
    by_metric = {m: _cells(runs, m) for m in ("precision", "recall", "f1")}
    rows = []
    for name in test_sets:
        for model in models:
            if (name, model) not in by_metric["f1"]:
                rows.append([name, model, "missing", "missing", "missing"])
                continue
            rows.append(
                [
                    name,
                    model,
                    *(by_metric[m][(name, model)].text() for m in ("precision", "recall", "f1")),
                ]
            )
    return ["class", "model", "precision", "recall", "f1"], rows


LIFT_COLUMNS = {
    "auroc": "auroc",
    "reference.mean.auroc": "mean reference",
    "reference.pca.auroc": "pca reference",
    "reference.auroc": "best reference",
    "reference.lift": "lift",
}


def lift_table(runs: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """Test set x model -> image AUROC, both no-learning references, the best no-learning
    detector of the run's block (where the model sums the PCA or a feature memory in, the
    same sums with no-learning parts count too), and the lift over it (``results.json``'s
    ``reference`` block; runs without it show blanks)."""
    models, test_sets = _ordered(runs)
    by_metric = {m: _cells(runs, m) for m in LIFT_COLUMNS}
    rows = []
    for name in test_sets:
        for model in models:
            if (name, model) not in by_metric["auroc"]:
                rows.append([name, model, *["missing"] * len(LIFT_COLUMNS)])
                continue
            rows.append([name, model, *(by_metric[m][(name, model)].text() for m in LIFT_COLUMNS)])
    return ["test set", "model", *LIFT_COLUMNS.values()], rows


def confusion_matrices(runs: list[RunRecord]) -> dict[tuple[str, str], dict[str, int] | None]:
    """Counts summed over repeats of a (model, class) cell; None where no run completed."""
    summed: dict[tuple[str, str], dict[str, int] | None] = {}
    for run in runs:
        if run.status != COMPLETED:
            continue
        for name, metrics in run.test_sets.items():
            matrix = metrics.get("confusion_matrix")
            if matrix:
                total = summed.setdefault((run.model, name), {"tn": 0, "fp": 0, "fn": 0, "tp": 0})
                for key in total:
                    total[key] += int(matrix[key])
    return summed


NOT_RUN = "not run"
#: Marker of each settings' reproduced line in the published-table figure.
SETTINGS_MARKERS = {PAPER: "o", OURS: "s"}


def _settings_cells(runs: list[RunRecord], metric: str) -> dict[tuple[str, str, str], Cell]:
    """(test set, architecture, settings) -> the runs' cell; model names that read the same
    (:func:`architecture_and_settings`) share one."""
    merged: dict[tuple[str, str, str], Cell] = {}
    for (test_set, model), cell in _cells(runs, metric).items():
        architecture, settings = architecture_and_settings(model)
        target = merged.setdefault((test_set, architecture, settings), Cell())
        target.values.extend(cell.values)
        target.statuses.extend(cell.statuses)
    return merged


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return NOT_RUN
    if not cell.values and all(s == COMPLETED for s in cell.statuses):
        return "no value"  # completed, but the metric is undefined (e.g. one class only)
    return cell.text()


def _settings_ran(table: PublishedTable, cells: dict[tuple[str, str, str], Cell]) -> list[str]:
    """The settings with any run in the table's grid; paper settings when none ran at all."""
    tests = {t.key for t in table.test_sets}
    architectures = {a.key for a in table.architectures}
    ran = {s for (t, a, s) in cells if t in tests and a in architectures}
    return [s for s in (PAPER, OURS) if s in ran] or [PAPER]


def published_comparison(
    runs: list[RunRecord], table: PublishedTable
) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and the settings shown: one row per (test set, model[, metric]) in the
    paper's order, our reproduced cell per settings that ran, the published value and
    reproduced - published per settings; a mean row per model when there are several sets
    (its reproduced mean and difference over the sets that have a value, ``(k/n)`` if not
    all, the published mean over all)."""
    by_metric = {m.key: _settings_cells(runs, m.key) for m in table.metrics}
    settings = _settings_ran(
        table, {k: c for cells in by_metric.values() for k, c in cells.items()}
    )
    many_metrics = len(table.metrics) > 1
    header = [
        "test set",
        "model",
        *(["metric"] if many_metrics else []),
        *(SETTINGS_LABELS[s] for s in settings),
        "published",
        *(f"Δ {SETTINGS_LABELS[s]}" for s in settings),
    ]
    rows: list[list[str]] = []
    for test_set in table.test_sets:
        for architecture in table.architectures:
            for metric in table.metrics:
                published = table.value(test_set.key, architecture.key, metric.key)
                assert published is not None  # load_published checks the grid is full
                cells = [
                    by_metric[metric.key].get((test_set.key, architecture.key, s)) for s in settings
                ]
                rows.append(
                    [
                        test_set.key,
                        architecture.label,
                        *([metric.label] if many_metrics else []),
                        *(_cell_text(c) for c in cells),
                        f"{published:.{table.decimals}f}",
                        *(
                            f"{c.mean - published:+.3f}" if c and c.mean is not None else "-"
                            for c in cells
                        ),
                    ]
                )
    if len(table.test_sets) > 1:
        rows += _published_mean_rows(table, by_metric, settings, many_metrics)
    return header, rows, settings


def _published_mean_rows(
    table: PublishedTable,
    by_metric: dict[str, dict[tuple[str, str, str], Cell]],
    settings: list[str],
    many_metrics: bool,
) -> list[list[str]]:
    count = len(table.test_sets)
    rows = []
    for architecture in table.architectures:
        for metric in table.metrics:
            published = [
                table.value(t.key, architecture.key, metric.key) or 0.0 for t in table.test_sets
            ]
            reproduced, deltas = [], []
            for s in settings:
                pairs = [
                    (cell.mean, value)
                    for t, value in zip(table.test_sets, published, strict=True)
                    if (cell := by_metric[metric.key].get((t.key, architecture.key, s)))
                    and cell.mean is not None
                ]
                suffix = "" if len(pairs) == count else f" ({len(pairs)}/{count})"
                ours = [mean for mean, _ in pairs]
                reproduced.append(f"{statistics.mean(ours):.3f}{suffix}" if pairs else "-")
                difference = [mean - value for mean, value in pairs]
                deltas.append(f"{statistics.mean(difference):+.3f}{suffix}" if pairs else "-")
            rows.append(
                [
                    "mean",
                    architecture.label,
                    *([metric.label] if many_metrics else []),
                    *reproduced,
                    f"{statistics.mean(published):.{table.decimals}f}",
                    *deltas,
                ]
            )
    return rows


def _published_notes(table: PublishedTable, settings: list[str]) -> list[str]:
    notes = [
        "Reproduced: mean ± std over a cell's runs; paper settings = `model=<name>_paper` "
        "(and AnoGAN), ours = `model=<name>`; Δ = reproduced − published; `not run`: no "
        "run of that model on that set."
    ]
    if len(table.test_sets) > 1:
        notes.append(
            "Mean rows: reproduced and Δ over the sets that have a value (`(k/n)` when not "
            "all), published over all sets."
        )
    renamed = [
        f"{a.label} is the paper's column {a.paper!r}"
        for a in table.architectures
        if a.paper != a.label
    ]
    if renamed:
        notes.append("; ".join(renamed) + ".")
    notes += [f"{m.label}: {m.note}" for m in table.metrics if m.note]
    if table.confusion_matrices:
        notes.append(
            "The published confusion matrices are derived from the table's precision and "
            "recall (the paper prints none); how, in "
            f"anomaly_gan/evaluation/published_tables/{table.name}.yaml. Our counts depend "
            "on our test-set size (data.test_limit)."
        )
    return notes


def _plot_published_lines(
    table: PublishedTable, runs: list[RunRecord], settings: list[str], path: Path
) -> Path:
    """Fig. 8 (several sets, first metric) or, for one test set, the metrics on the x axis;
    published lines dashed, reproduced solid, one colour per model."""
    by_metric = {m.key: _settings_cells(runs, m.key) for m in table.metrics}
    if len(table.test_sets) > 1:
        metric = table.metrics[0]
        points = [(t.key, metric.key) for t in table.test_sets]
        x_labels = [t.key for t in table.test_sets]
        ylabel = metric.label
    else:
        points = [(table.test_sets[0].key, m.key) for m in table.metrics]
        x_labels = [m.label for m in table.metrics]
        ylabel = f"value on {table.test_sets[0].key}"
    lines = []
    for architecture in table.architectures:
        key = architecture.key
        lines.append(
            Line(
                f"{architecture.label} published",
                [table.value(t, key, m) for t, m in points],
                group=key,
                published=True,
            )
        )
        for s in settings:
            means = [
                (c.mean if c else None) for c in (by_metric[m].get((t, key, s)) for t, m in points)
            ]
            if any(v is not None for v in means):  # a settings with no value draws nothing
                label = f"{architecture.label} {SETTINGS_LABELS[s]}"
                lines.append(Line(label, means, group=key, marker=SETTINGS_MARKERS[s]))
    title = f"{table.dataset}: reproduced (solid) vs published (dashed)"
    return plot_lines(lines, x_labels, path, ylabel=ylabel, title=title)


def _plot_published_confusion(
    table: PublishedTable, runs: list[RunRecord], settings: list[str], path: Path
) -> Path:
    """Fig. 2: per model a row of the published (derived) matrices, then one per settings."""
    summed: dict[tuple[str, str, str], dict[str, int]] = {}
    for (model, test_set), matrix in confusion_matrices(runs).items():
        if matrix is None:
            continue
        architecture, setting = architecture_and_settings(model)
        total = summed.setdefault((architecture, setting, test_set), dict.fromkeys(matrix, 0))
        for key in total:
            total[key] += matrix[key]
    status = _settings_cells(runs, "f1")
    rows: list[str] = []
    matrices: dict[tuple[str, str], dict[str, int] | str | None] = {}
    for architecture in table.architectures:
        row = f"{architecture.label} published (derived)"
        rows.append(row)
        for t in table.test_sets:
            matrices[(row, t.key)] = table.confusion_matrices.get(t.key, {}).get(architecture.key)
        for s in settings:
            row = f"{architecture.label} {SETTINGS_LABELS[s]}"
            rows.append(row)
            for t in table.test_sets:
                key = (architecture.key, s, t.key)
                matrices[(row, t.key)] = summed.get(key) or _cell_text(
                    status.get((t.key, architecture.key, s))
                )
    return plot_confusion_grid(matrices, rows, [t.key for t in table.test_sets], path)


def write_published_comparison(
    runs: list[RunRecord], table: PublishedTable, out_dir: Path
) -> dict[str, Any]:
    """``published_<name>.md`` / ``.csv`` and its figure; returns the Markdown and paths."""
    header, rows, settings = published_comparison(runs, table)
    stem = f"published_{table.name}"
    with open(out_dir / f"{stem}.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([header, *rows])
    text = "\n".join(
        [
            f"{table.name}: {table.caption}. Data: {table.dataset}.",
            f"Source: {table.citation()}.",
            "",
            _markdown(header, rows),
            "",
            *(f"- {note}" for note in _published_notes(table, settings)),
        ]
    )
    (out_dir / f"{stem}.md").write_text(text + "\n")
    if table.figure == "confusion_matrices":
        figure = _plot_published_confusion(
            table, runs, settings, out_dir / f"{stem}_confusion_matrices.png"
        )
    else:
        figure = _plot_published_lines(table, runs, settings, out_dir / f"{stem}.png")
    return {
        "markdown": text,
        "files": [str(out_dir / f"{stem}.md"), str(out_dir / f"{stem}.csv"), str(figure)],
    }


def build_report(
    directories: list[Path], out_dir: Path, published: str | None = None
) -> dict[str, Any]:
    """Write every table (Markdown + CSV) and figure (PNG) into ``out_dir``; with
    ``published``, also that paper table beside our runs (an unknown name: ValueError)."""
    table = load_published(published) if published else None
    runs = collect_runs(directories)
    if not runs:
        raise FileNotFoundError(
            f"No runs under {', '.join(map(str, directories))}: expected job directories with "
            f"{RESULTS_FILE} or .hydra/config.yaml (e.g. multirun/<time>/<job>)."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    models, test_sets = _ordered(runs)
    auroc_header, auroc_rows = auroc_table(runs)
    prf_header, prf_rows = prf_table(runs)
    auroc_text = _write_table(out_dir, "auroc_table", auroc_header, auroc_rows)
    prf_text = _write_table(out_dir, "precision_recall_f1_table", prf_header, prf_rows)
    lift_text = _write_table(out_dir, "lift_table", *lift_table(runs))
    cells = _cells(runs, "auroc")
    line_data = {m: {n: cells[(n, m)].mean for n in test_sets if (n, m) in cells} for m in models}
    plot_auroc_lines(line_data, test_sets, out_dir / "auroc_per_category.png")
    plot_confusion_grid(
        confusion_matrices(runs), models, test_sets, out_dir / "confusion_matrices.png"
    )
    statuses = defaultdict(int)
    for run in runs:
        statuses[run.status] += 1
    comparison = write_published_comparison(runs, table, out_dir) if table else None
    return {
        "runs": len(runs),
        "statuses": dict(statuses),
        "auroc_table": auroc_text,
        "precision_recall_f1_table": prf_text,
        "lift_table": lift_text,
        "published": published,
        "published_table": comparison["markdown"] if comparison else None,
        "published_files": comparison["files"] if comparison else [],
        "out_dir": str(out_dir),
    }
