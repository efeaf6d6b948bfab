"""The papers' published tables as package data, and the report that sets our runs beside them.

Fixture sweeps are ``results.json`` files in the real layout
(``multirun/<experiment>/<settings>/<job>/``), written by the same ``write_results`` a
training job uses; no training here.
"""

from __future__ import annotations

import csv
import fnmatch
import statistics
import tomllib
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

import report
from anomaly_gan.data.mvtec import MVTEC_CATEGORIES
from anomaly_gan.evaluation import tables
from anomaly_gan.evaluation.published import (
    architecture_and_settings,
    load_published,
    published_names,
)
from anomaly_gan.evaluation.results import write_results
from tests.conftest import REPO_ROOT

MVTEC_ORDER = list(MVTEC_CATEGORIES)  # the paper's Table 1 order


def _job(
    job_dir: Path,
    model: str,
    metrics: dict[str, dict[str, Any]],
    status: str = "completed",
    seed: int = 0,
) -> None:
    """One job's ``results.json`` as training writes it (the keys the report reads)."""
    names = list(metrics)
    write_results(
        job_dir,
        {
            "status": status,
            "config": {
                "model_name": model,
                "category": names[0],
                "test_categories": names,
                "seed": seed,
            },
            "categories": metrics if status == "completed" else {},
        },
    )


def _killed_job(job_dir: Path, model: str, category: str) -> None:
    """A job directory Hydra created but whose process never wrote ``results.json``."""
    hydra = job_dir / ".hydra"
    hydra.mkdir(parents=True)
    OmegaConf.save(
        {
            "seed": 0,
            "data": {"category": category},
            "model": {"_target_": "anomaly_gan.models.SkipGanomaly"},
        },
        hydra / "config.yaml",
    )
    OmegaConf.save({"hydra": {"runtime": {"choices": {"model": model}}}}, hydra / "hydra.yaml")


def _csv(path: Path) -> list[list[str]]:
    with open(path) as stream:
        return list(csv.reader(stream))


def _cells(rows: list[list[str]], keys: int) -> dict[tuple[str, ...], list[str]]:
    return {tuple(row[:keys]): row[keys:] for row in rows[1:]}


# --- the data files -------------------------------------------------------------------------


def test_published_tables_hold_the_papers_numbers() -> None:
    assert published_names() == ["mife_table1", "skip_sa_table1", "skip_sa_table2"]

    table1 = load_published("skip_sa_table1")
    assert [t.key for t in table1.test_sets] == MVTEC_ORDER
    assert [a.key for a in table1.architectures] == [
        "anogan",
        "ganomaly",
        "skip_ganomaly",
        "skip_sa",
    ]
    assert table1.value("bottle", "skip_sa", "auroc") == 0.954
    assert table1.value("screw", "ganomaly", "auroc") == 1.00
    assert table1.value("metal_nut", "anogan", "auroc") == 0.283
    assert table1.value("zipper", "skip_ganomaly", "auroc") == 0.671
    assert "Sun" in table1.source["authors"] and "Zhang" in table1.source["authors"]
    assert table1.source["title"] == "Skip.Self attention GAN for anomaly detection"
    assert "Table 1" in table1.citation() and "2025" in table1.citation()

    table2 = load_published("skip_sa_table2")
    assert [t.key for t in table2.test_sets] == ["kolektor"]
    assert table2.value("kolektor", "skip_sa", "auroc") == 0.89
    assert table2.value("kolektor", "anogan", "precision") == 0.55  # the column "Accuracy"
    assert table2.value("kolektor", "skip_ganomaly", "f1") == 0.74
    assert "Table 2" in table2.citation()

    mife = load_published("mife_table1")
    assert [t.key for t in mife.test_sets] == ["candle", "cashew", "fryum"]
    assert mife.value("cashew", "mife", "f1") == 0.8619
    assert mife.value("candle", "baseline", "precision") == 0.7674
    assert "Toker" in mife.source["authors"] and "Table I" in mife.citation()


def test_derived_confusion_matrices_reproduce_table_i() -> None:
    """Fig. 2's counts are derived: each must give back Table I to the printed 4 decimals,
    with all 100 anomalous images of a class and VisA's 1cls test normals."""
    mife = load_published("mife_table1")
    normals = {"candle": 100, "cashew": 50, "fryum": 50}
    for test_set in mife.test_sets:
        for architecture in mife.architectures:
            m = mife.confusion_matrices[test_set.key][architecture.key]
            assert m["tp"] + m["fn"] == 100
            assert m["tn"] + m["fp"] == normals[test_set.key]
            precision = m["tp"] / (m["tp"] + m["fp"])
            recall = m["tp"] / (m["tp"] + m["fn"])
            f1 = 2 * precision * recall / (precision + recall)
            for metric, value in (("precision", precision), ("recall", recall), ("f1", f1)):
                published = mife.value(test_set.key, architecture.key, metric)
                assert round(value, 4) == published, (test_set.key, architecture.key, metric)


def test_package_data_ships_every_table() -> None:
    """A non-editable install must carry the YAML files (pyproject package-data)."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["anomaly_gan.evaluation"]
    package = REPO_ROOT / "anomaly_gan" / "evaluation"
    files = sorted(package.glob("published_tables/*"))
    assert len(files) == len(published_names())
    for path in files:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("skip_sa_paper", ("skip_sa", "paper")),
        ("mife_paper", ("mife", "paper")),
        ("anogan", ("anogan", "paper")),
        ("skip_sa", ("skip_sa", "ours")),
        ("baseline", ("baseline", "ours")),
    ],
)
def test_model_name_says_architecture_and_settings(model: str, expected: tuple[str, str]) -> None:
    assert architecture_and_settings(model) == expected


def test_published_lines_are_dashed_and_reproduced_solid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomaly_gan.evaluation import plots

    saved: list[Any] = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure) or path)
    lines = [
        plots.Line("Skip-SA published", [0.954, 0.754], group="skip_sa", published=True),
        plots.Line("Skip-SA paper settings", [0.91, None], group="skip_sa"),
    ]
    plots.plot_lines(lines, ["bottle", "cable"], tmp_path / "x.png", "AUROC", "t")
    drawn = {line.get_label(): line for line in saved[0].axes[0].get_lines()}
    published, reproduced = drawn["Skip-SA published"], drawn["Skip-SA paper settings"]
    assert published.get_linestyle() == "--" and reproduced.get_linestyle() == "-"
    assert published.get_color() == reproduced.get_color()  # one colour per model
    assert list(published.get_ydata()) == [0.954, 0.754]


# --- the report -----------------------------------------------------------------------------


@pytest.fixture
def mvtec_sweeps(tmp_path: Path) -> Path:
    """Both settings of the Table 1 grid, partly run: seeds, a failure, a killed job."""
    root = tmp_path / "multirun" / "mvtec_table1"
    paper, ours = root / "paper", root / "ours"
    _job(paper / "0", "skip_sa_paper", {"bottle": {"auroc": 0.90}}, seed=0)
    _job(paper / "1", "skip_sa_paper", {"bottle": {"auroc": 0.92}}, seed=1)
    _job(paper / "2", "anogan", {"screw": {"auroc": 0.20}})
    _job(paper / "3", "ganomaly_paper", {"cable": {}}, status="failed")
    _killed_job(paper / "4", "skip_ganomaly_paper", "carpet")
    _job(ours / "0", "skip_sa", {"bottle": {"auroc": 0.98}})
    _job(ours / "1", "ganomaly", {"screw": {"auroc": 0.90}})
    return root


def test_table1_cells_hold_reproduced_published_and_difference(
    mvtec_sweeps: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[tables.Line] = []
    original = tables.plot_lines
    monkeypatch.setattr(
        tables, "plot_lines", lambda lines, *a, **k: drawn.extend(lines) or original(lines, *a, **k)
    )
    out = tmp_path / "report"
    summary = tables.build_report([mvtec_sweeps], out, published="skip_sa_table1")

    rows = _csv(out / "published_skip_sa_table1.csv")
    assert rows[0] == [
        "test set",
        "model",
        "paper settings",
        "ours",
        "published",
        "Δ paper settings",
        "Δ ours",
    ]
    # The paper's order, every cell present (4 models per category), then one mean per model.
    assert [row[0] for row in rows[1:]] == [t for t in MVTEC_ORDER for _ in range(4)] + ["mean"] * 4
    cells = _cells(rows, 2)
    # Both settings side by side; two seeds are mean ± std; Δ = reproduced − published.
    assert cells[("bottle", "Skip-SA")] == ["0.910 ± 0.014", "0.980", "0.954", "-0.044", "+0.026"]
    assert cells[("screw", "AnoGAN")] == ["0.200", "not run", "0.121", "+0.079", "-"]
    assert cells[("screw", "GANomaly")] == ["not run", "0.900", "1.000", "-", "-0.100"]
    assert cells[("cable", "GANomaly")] == ["failed", "not run", "0.715", "-", "-"]
    assert cells[("carpet", "Skip-GANomaly")] == ["missing", "not run", "0.788", "-", "-"]
    assert cells[("bottle", "AnoGAN")] == ["not run", "not run", "0.802", "-", "-"]
    published_mean = statistics.mean(
        load_published("skip_sa_table1").value(t, "skip_sa", "auroc") for t in MVTEC_ORDER
    )
    assert cells[("mean", "Skip-SA")] == [
        "0.910 (1/15)",
        "0.980 (1/15)",
        f"{published_mean:.3f}",
        "-0.044 (1/15)",
        "+0.026 (1/15)",
    ]

    markdown = (out / "published_skip_sa_table1.md").read_text()
    assert "| bottle | Skip-SA | 0.910 ± 0.014 | 0.980 | 0.954 | -0.044 | +0.026 |" in markdown
    assert "Skip.Self attention GAN for anomaly detection" in markdown and "Table 1" in markdown
    assert summary["published"] == "skip_sa_table1"
    assert "| bottle | Skip-SA | 0.910 ± 0.014 |" in summary["published_table"]

    # Fig. 8: published lines dashed (the paper's numbers), reproduced lines solid.
    lines = {line.label: line for line in drawn if line.group == "skip_sa"}
    assert lines["Skip-SA published"].published
    assert lines["Skip-SA published"].values[0] == 0.954
    assert not lines["Skip-SA paper settings"].published
    assert lines["Skip-SA paper settings"].values[0] == pytest.approx(0.91)
    assert lines["Skip-SA ours"].values[:2] == [0.98, None]
    assert (out / "published_skip_sa_table1.png").stat().st_size > 5_000
    # The ordinary report is still written beside it.
    assert (out / "auroc_table.csv").is_file()


def test_one_settings_shows_one_column_and_kolektor_metrics(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "kolektor_table2" / "paper"
    metrics = {"auroc": 0.85, "precision": 0.80, "recall": 0.70, "f1": 0.75, "accuracy": 0.9}
    _job(sweep / "0", "skip_sa_paper", {"kolektor": metrics})
    out = tmp_path / "report"
    tables.build_report([sweep], out, published="skip_sa_table2")

    rows = _csv(out / "published_skip_sa_table2.csv")
    assert rows[0] == [
        "test set",
        "model",
        "metric",
        "paper settings",
        "published",
        "Δ paper settings",
    ]
    cells = _cells(rows, 3)
    assert cells[("kolektor", "Skip-SA", "AUROC")] == ["0.850", "0.89", "-0.040"]
    # The paper's "Accuracy" column is its precision (F1 is their harmonic mean with recall).
    assert cells[("kolektor", "Skip-SA", 'precision ("Accuracy")')] == ["0.800", "0.82", "-0.020"]
    assert cells[("kolektor", "Skip-SA", "F1")] == ["0.750", "0.81", "-0.060"]
    assert cells[("kolektor", "AnoGAN", "recall")] == ["not run", "0.50", "-"]
    assert len(rows) == 1 + 4 * 4  # one test set: no mean rows
    assert (out / "published_skip_sa_table2.png").stat().st_size > 5_000


def test_mife_table_and_fig2_beside_the_derived_matrices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "multirun" / "visa_cross_class"
    ours_matrix = {"tn": 45, "fp": 5, "fn": 10, "tp": 40}
    per_class = {"precision": 0.889, "recall": 0.8, "f1": 0.842, "confusion_matrix": ours_matrix}
    _job(
        root / "paper" / "0", "mife_paper", dict.fromkeys(("candle", "cashew", "fryum"), per_class)
    )
    _job(root / "ours" / "0", "baseline", {"candle": {"precision": 0.5, "recall": 0.5, "f1": 0.5}})
    drawn: dict[str, Any] = {}
    original = tables.plot_confusion_grid

    def capture(matrices: Any, models: Any, classes: Any, path: Path) -> Path:
        drawn.update(matrices=matrices, rows=list(models), classes=list(classes))
        return original(matrices, models, classes, path)

    monkeypatch.setattr(tables, "plot_confusion_grid", capture)
    out = tmp_path / "report"
    tables.build_report([root], out, published="mife_table1")

    cells = _cells(_csv(out / "published_mife_table1.csv"), 3)
    assert cells[("cashew", "MIFE", "F1")] == ["0.842", "not run", "0.8619", "-0.020", "-"]
    assert cells[("candle", "Baseline", "precision")] == [
        "not run",
        "0.500",
        "0.7674",
        "-",
        "-0.267",
    ]

    # Fig. 2: per model the published (derived) row, then our settings.
    assert drawn["rows"] == [
        "Baseline published (derived)",
        "Baseline paper settings",
        "Baseline ours",
        "MIFE published (derived)",
        "MIFE paper settings",
        "MIFE ours",
    ]
    assert drawn["classes"] == ["candle", "cashew", "fryum"]
    matrices = drawn["matrices"]
    assert matrices[("MIFE published (derived)", "cashew")] == {
        "tn": 47,
        "fp": 3,
        "fn": 22,
        "tp": 78,
    }
    assert matrices[("MIFE paper settings", "cashew")] == ours_matrix
    assert matrices[("Baseline paper settings", "fryum")] == "not run"
    assert (out / "published_mife_table1_confusion_matrices.png").stat().st_size > 5_000
    assert "derived" in (out / "published_mife_table1.md").read_text()


def test_unknown_published_name_lists_the_known_ones(
    mvtec_sweeps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="mife_table1, skip_sa_table1, skip_sa_table2"):
        tables.build_report([mvtec_sweeps], tmp_path / "report", published="table9")
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(mvtec_sweeps), "--published", "table9"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "table9" in error and "skip_sa_table1" in error and "mife_table1" in error


def test_cli_prints_the_published_table(
    mvtec_sweeps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code = report.main([str(mvtec_sweeps), "--published", "skip_sa_table1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| bottle | Skip-SA | 0.910 ± 0.014 | 0.980 | 0.954 | -0.044 | +0.026 |" in printed
    assert (out / "published_skip_sa_table1.md").is_file()
