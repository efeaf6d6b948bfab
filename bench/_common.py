"""Shared by the benchmark scripts: the machine's name, result files, BENCHMARKS.md sections.

Each script owns one section of ``BENCHMARKS.md`` between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` and rewrites only that, so the scripts can run in any order and a
partial run never erases another script's table.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
MIB = 2**20

MODELS = {
    "ganomaly": "Ganomaly",
    "skip_ganomaly": "SkipGanomaly",
    "skip_sa": "SkipSelfAttentionGan",
    "mife": "Mife",
    "baseline": "MifeBaseline",
}

_HEADER = """# Benchmarks

Printed figures, not timed tests: `make bench` (or the scripts in `bench/`, each with
`--help`) measures on the machine it runs on and rewrites its own section below; raw numbers
are in `bench/results/*.json`. Every table names its machine. CPU timings on a shared
machine move with its load: the load average at the start of each run is recorded.
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu", threads: int = 0) -> dict[str, Any]:
    """What the figures were measured on (CPU model, cores, memory, torch, GPU)."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f"; GPU {info['gpu']} ({info['gpu_memory_gib']} GiB)" if info.get("gpu") else ""
    load = "/".join(f"{x:g}" for x in info["load_average"])
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
        f"{info['memory_gib']} GiB{gpu}; torch {info['torch']}, Python {info['python']}; "
        f"load average {load} at start; {info['date']}."
    )


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_json(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def update_section(name: str, title: str, body: str) -> Path:
    """Replace (or append) the ``name`` section of BENCHMARKS.md."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.is_file() else _HEADER
    block = f"<!-- BEGIN {name} -->\n## {title}\n\n{body.strip()}\n<!-- END {name} -->"
    pattern = re.compile(
        rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.DOTALL
    )
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else f"{text.rstrip()}\n\n{block}\n"
    )
    BENCHMARKS_MD.write_text(text)
    return BENCHMARKS_MD


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ensure_repo_on_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
