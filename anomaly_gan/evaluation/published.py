"""The papers' published tables as data, and which of our runs each cell compares with.

The numbers live in ``published_tables/<name>.yaml`` (package data), one file per table,
each naming its source. ``python report.py <dirs> --published <name>`` sets our reproduced
cells beside them (:func:`anomaly_gan.evaluation.tables.published_comparison`).

- ``skip_sa_table1``: Sun, Liu, Ma, Na, Zhang, "Skip.Self attention GAN for anomaly
  detection", IJSCC 2025, Table 1 (MVTec AD image AUROC; Fig. 8 plots it).
- ``skip_sa_table2``: the same paper, Table 2 (KolektorSDD AUC / "Accuracy" / recall / F1).
- ``mife_table1``: Toker, Korkmaz, "Combining Generative Models and Attention Networks for
  Anomaly Detection in Industrial Settings", Table I (VisA precision / recall / F1), with
  Fig. 2's confusion matrices derived from it.

A run's ``config.model_name`` (the Hydra model config) says both what it is and how it was
trained: ``<arch>_paper`` and the paper-only architectures (AnoGAN) are the papers'
settings, ``<arch>`` the project's (:func:`architecture_and_settings`, the inverse of
``ag.grid_models`` in :mod:`anomaly_gan.resolvers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from anomaly_gan.resolvers import PAPER_ONLY_MODELS

PAPER_SUFFIX = "_paper"
#: The two settings a paper grid runs (``settings=paper|ours``, ``ag.grid_models``).
PAPER, OURS = "paper", "ours"
#: How each grid setting is written in a report's column headers.
SETTINGS_LABELS = {PAPER: "paper settings", OURS: "ours"}
DATA_PACKAGE = "anomaly_gan.evaluation"
DATA_FOLDER = "published_tables"


def architecture_and_settings(model_name: str) -> tuple[str, str]:
    """``skip_sa_paper`` -> (``skip_sa``, ``paper``); ``anogan`` -> (``anogan``, ``paper``);
    ``skip_sa`` -> (``skip_sa``, ``ours``). The one place that reads a model name this way."""
    if model_name.endswith(PAPER_SUFFIX):
        return model_name.removesuffix(PAPER_SUFFIX), PAPER
    if model_name in PAPER_ONLY_MODELS:
        return model_name, PAPER
    return model_name, OURS


@dataclass(frozen=True)
class Entry:
    """A row or column of a published table: our name for it and the paper's."""

    key: str
    paper: str
    label: str
    note: str | None = None


@dataclass(frozen=True)
class PublishedTable:
    """One published table: ``value(test_set, architecture, metric)`` as printed."""

    name: str
    source: dict[str, Any]
    caption: str
    dataset: str
    decimals: int
    figure: str  # lines | confusion_matrices
    architectures: list[Entry]
    metrics: list[Entry]
    test_sets: list[Entry]
    values: dict[str, dict[str, dict[str, float]]]
    confusion_matrices: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def value(self, test_set: str, architecture: str, metric: str) -> float | None:
        return self.values.get(test_set, {}).get(architecture, {}).get(metric)

    def citation(self) -> str:
        """Authors, "title", venue, year, table: how a report names where a number is from."""
        source = self.source
        parts = [source["authors"], f'"{source["title"]}"', source.get("venue")]
        if source.get("year"):
            parts.append(str(source["year"]))
        parts.append(source["table"])
        return ", ".join(str(p) for p in parts if p)


def published_names() -> list[str]:
    """The tables shipped with the package (``--published`` choices)."""
    folder = resources.files(DATA_PACKAGE).joinpath(DATA_FOLDER)
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def _entries(items: list[dict[str, Any]]) -> list[Entry]:
    return [
        Entry(
            key=str(i["key"]),
            paper=str(i["paper"]),
            label=str(i.get("label", i["paper"])),
            note=i.get("note"),
        )
        for i in items
    ]


def load_published(name: str) -> PublishedTable:
    """The table ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    known = published_names()
    if name not in known:
        raise ValueError(f"unknown published table {name!r}: choose one of {', '.join(known)}")
    text = resources.files(DATA_PACKAGE).joinpath(DATA_FOLDER, f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    table = PublishedTable(
        name=str(data["name"]),
        source=dict(data["source"]),
        caption=str(data["caption"]),
        dataset=str(data["dataset"]),
        decimals=int(data["decimals"]),
        figure=str(data["figure"]),
        architectures=_entries(data["architectures"]),
        metrics=_entries(data["metrics"]),
        test_sets=_entries(data["test_sets"]),
        values={
            t: {a: {m: float(v) for m, v in by_metric.items()} for a, by_metric in by_arch.items()}
            for t, by_arch in data["values"].items()
        },
        confusion_matrices=data.get("confusion_matrices_derived") or {},
    )
    _check(table)
    return table


def _check(table: PublishedTable) -> None:
    """Every cell of the grid the file declares holds a number (a typo fails at load)."""
    missing = [
        f"{t.key}/{a.key}/{m.key}"
        for t in table.test_sets
        for a in table.architectures
        for m in table.metrics
        if table.value(t.key, a.key, m.key) is None
    ]
    if missing:
        raise ValueError(f"{table.name}: no published value for {', '.join(missing)}")
