"""Shared by the benchmark scripts: models, timing, memory, cells, result files, BENCHMARKS.md.

- Models come from :mod:`anomaly_gan.models.registry` (the one list of architectures), with
  the project's defaults (the classes' = ``model=<name>``) or, for figures about the
  published networks, the papers' settings read from ``conf/model/<name>_paper.yaml``
  (:func:`build_model`).
- Training is timed through the real ``lightning.Trainer.fit``, so every figure measures the
  core's own :meth:`GanAnomalyModule.training_step` (:func:`fit_timed`).
- Each (model, size, ...) cell can run in a fresh subprocess (:func:`run_cell`), so one cell's
  memory high-water mark never hides another's and a cell that runs out of memory or time is
  recorded as skipped instead of stopping the run.
- Each script owns one section of ``BENCHMARKS.md`` between ``<!-- BEGIN name -->`` and
  ``<!-- END name -->`` and rewrites only that (:func:`publish`), so the scripts can run in
  any order and a partial run never erases another script's table. ``--no-record`` prints
  the table without touching ``bench/results/`` or ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bench/gpu_check.sh points both elsewhere, so a run on a borrowed machine (or its CPU
# smoke test) writes its JSON and sections into one folder that travels back whole.
RESULTS = Path(os.environ.get("ANOMALY_GAN_BENCH_RESULTS", REPO / "bench" / "results"))
BENCHMARKS_MD = Path(os.environ.get("ANOMALY_GAN_BENCHMARKS_MD", REPO / "BENCHMARKS.md"))
MIB = 2**20

_HEADER = """# Benchmarks

Printed figures, not timed tests: `make bench` (or the scripts in `bench/`, each with
`--help`) measures on the machine it runs on and rewrites its own section below; raw numbers
are in `bench/results/*.json`. Every table names its machine. CPU timings on a shared
machine move with its load: the load average at the start of each run is recorded.
"""


def ensure_repo_on_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------------- models
def model_names(*, with_search: bool = False) -> list[str]:
    """Config names of the architectures (``model=<name>``), from the registry.

    By default the reconstruction models, which score an image in one forward pass: the
    benchmarks' default lists. ``with_search`` adds those that score by an optimisation
    loop (AnoGAN's latent search: hundreds of generator passes per image, minutes per cell
    on CPU; its own figure is ``bench/anogan_speed.py``), for ``--models`` to accept.
    """
    ensure_repo_on_path()
    from anomaly_gan.models.registry import ARCHITECTURES

    return [
        name for name, cls in ARCHITECTURES.items() if with_search or cls.export_refusal is None
    ]


def model_config(config: str, size: int, channels: int = 3) -> Any:
    """``cfg.model`` of ``python train.py model=<config>`` at ``size`` px, composed by Hydra
    from ``conf/`` as train.py composes it (``model=ganomaly_paper``: the paper's setting)."""
    ensure_repo_on_path()
    from hydra import compose, initialize_config_dir

    import anomaly_gan.resolvers  # noqa: F401  (the ${ag.*} resolvers the configs use)

    overrides = [f"model={config}", f"data.image_size={size}", f"data.channels={channels}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("train", overrides=overrides).model


def build_model(
    name: str, size: int, channels: int = 3, *, paper: bool = False, **options: Any
) -> Any:
    """The registered LightningModule ``name`` at ``size`` px.

    Default: the class's defaults, the project's (what ``model=<name>`` trains). ``paper``:
    the paper's setting, as ``model=<name>_paper`` builds it (width 64, every skip, Skip-SA
    attention on every level, the paper's loss and score). ``options`` override either.
    """
    if paper:
        import hydra

        from anomaly_gan.resolvers import PAPER_ONLY_MODELS

        # AnoGAN exists only in its paper's form: model=anogan is the paper's setting.
        config_name = name if name in PAPER_ONLY_MODELS else f"{name}_paper"
        config = model_config(config_name, size, channels)
        return hydra.utils.instantiate(config, _convert_="all", **options)
    ensure_repo_on_path()
    from anomaly_gan.models.registry import architecture

    return architecture(name)(image_size=size, channels=channels, **options)


def parameter_counts(model: Any) -> dict[str, int]:
    return {
        "g_params": sum(p.numel() for p in model.generator.parameters()),
        "d_params": sum(p.numel() for p in model.discriminator.parameters()),
    }


def random_images(n: int, size: int, channels: int = 3, device: str = "cpu") -> Any:
    """``n`` random images in [-1, 1], the range of the generators' Tanh."""
    import torch

    return torch.rand(n, channels, size, size, device=device) * 2 - 1


def image_loader(size: int, batch: int, batches: int, channels: int = 3) -> Any:
    """``batches`` batches of random images as the data modules deliver them."""
    from torch.utils.data import DataLoader

    images = random_images(batch * batches, size, channels)
    return DataLoader([{"image": image} for image in images], batch_size=batch)


# --------------------------------------------------------------------------- timing, memory
def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    if is_cuda(device):
        import torch

        torch.cuda.synchronize()


def timed_calls(fn: Callable[[], Any], warmup: int, steps: int, device: str = "cpu") -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``steps`` times timed (device synchronised)."""
    seconds = []
    for step in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def fit_timed(
    module: Any,
    loader: Any,
    *,
    warmup: int,
    device: str = "cpu",
    precision: str = "32-true",
    prepare_batch: Callable[[Any], None] | None = None,
    around_step: Callable[[int], contextlib.AbstractContextManager] | None = None,
) -> dict[str, list[float]]:
    """Train ``module`` for one epoch of ``loader`` with the real ``lightning.Trainer.fit``.

    Returns the seconds of every batch after the first ``warmup``: ``step_s``, the module's
    own ``training_step`` call (its optimizer steps, backward passes and logging included);
    ``batch_s``, the whole batch as the loop runs it (hooks, callbacks such as a
    pre-processor, and the step). ``prepare_batch`` may change a batch in place before it is
    timed; ``around_step(i)`` gives a context for step ``i`` (a profiler, say).
    """
    import lightning as L

    step_s: list[float] = []
    batch_s: list[float] = []

    class BatchTimer(L.Callback):
        start = 0.0

        def on_train_batch_start(self, _trainer: Any, _module: Any, batch: Any, *_: Any) -> None:
            if prepare_batch is not None:
                prepare_batch(batch)
            sync(device)
            self.start = time.perf_counter()

        def on_train_batch_end(self, *_: Any) -> None:
            sync(device)
            batch_s.append(time.perf_counter() - self.start)

    training_step = module.training_step

    def timed_training_step(*args: Any, **kwargs: Any) -> Any:
        context = around_step(len(step_s)) if around_step else contextlib.nullcontext()
        with context:
            sync(device)
            start = time.perf_counter()
            out = training_step(*args, **kwargs)
            sync(device)
        step_s.append(time.perf_counter() - start)
        return out

    module.training_step = timed_training_step  # the instance attribute shadows the method
    trainer = L.Trainer(
        accelerator="gpu" if is_cuda(device) else "cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[BatchTimer()],
    )
    try:
        trainer.fit(module, train_dataloaders=loader)
    finally:
        del module.training_step
    return {"step_s": step_s[warmup:], "batch_s": batch_s[warmup:]}


def run_datamodule(
    checkpoint: Path,
    test_part: str,
    root: Path | None = None,
    category: str | None = None,
    selection_fraction: float = 0.3,
) -> Any:
    """A run's MVTec data module rebuilt from its checkpoint: the data exactly as the run saw
    it (normalisation, split seeds); only the test part (and optionally root / category) is
    chosen here. ``selection_fraction`` applies when the run itself had none."""
    import torch

    from anomaly_gan.data import MVTecDataModule

    data = torch.load(checkpoint, map_location="cpu", weights_only=True).get(
        "datamodule_hyper_parameters", {}
    )
    data.update(
        root=str(root) if root else data.get("root"),
        category=category or data.get("category"),
        selection_fraction=data.get("selection_fraction") or selection_fraction,
        test_part=test_part,
        batch_size=64,
        num_workers=0,
        cache=False,
        cache_dir=None,
        download=False,
    )
    data.pop("_target_", None)
    return MVTecDataModule(**data)


def emit_row(row: dict[str, Any], out: Path | None) -> None:
    """Print a result row as one JSON line and append it to ``out`` (JSON lines), if given:
    a probe's rows survive a run that stops part-way."""
    print(json.dumps(row), flush=True)
    if out:
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def read_results(run_dir: Path) -> dict[str, Any]:
    """A run's ``results.json``; an empty dict where the run has not written one."""
    results_file = run_dir / "results.json"
    return json.loads(results_file.read_text()) if results_file.is_file() else {}


def train_and_read(
    command: list[str],
    run_dir: Path,
    dataset: str,
    *,
    train: bool = True,
    fresh: bool = True,
    threads: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Run one ``train.py`` command into ``run_dir`` (emptied first when ``fresh``; otherwise
    the run may resume from its own checkpoints; nothing runs when ``train`` is false, e.g.
    to read a finished run again) and read back its ``results.json``.

    Returns the subprocess facts for the row (``returncode``, ``stderr_tail`` on failure), the
    whole results and ``dataset``'s metrics block; missing files give empty dicts, so a run
    that died before writing results is still a row.
    """
    facts: dict[str, Any] = {}
    if train:
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
        completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        facts["returncode"] = completed.returncode
        if completed.returncode:
            facts["stderr_tail"] = completed.stderr[-2000:]
    results = read_results(run_dir)
    metrics = (results.get("categories") or {}).get(dataset) or {}
    return facts, results, metrics


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_mark(device: str) -> int:
    """Bytes in use now; on CUDA also restarts the peak counter."""
    if is_cuda(device):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return current_rss_bytes()


def memory_peak(device: str, before: int) -> dict[str, float]:
    """Peak since :func:`memory_mark` (CPU: the process's peak RSS) and its growth, in MiB."""
    if is_cuda(device):
        import torch

        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
    return {"peak_mib": peak / MIB, "delta_mib": (peak - before) / MIB}


def memory_label(device: str) -> str:
    if is_cuda(device):
        return "torch.cuda.max_memory_allocated growth"
    return "peak RSS growth of the measuring subprocess"


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# ------------------------------------------------------------------ FLOPs, device peaks
#: bf16 dense (no sparsity) tensor-core peaks in TFLOP/s, from each vendor datasheet (NVIDIA
#: H100, H200, A100, L40S, L40, L4 and A10 datasheets; GeForce cards from the Ada and Ampere
#: GA102 architecture whitepapers, "BF16 with FP32 accumulate", the mode torch uses).
#: Datasheets print the 2:4-sparsity figure first; the dense one is half of it. Matched in
#: order, first hit wins, on ``torch.cuda.get_device_name()`` in lower case.
BF16_DENSE_PEAK_TFLOPS: list[tuple[str, str, float]] = [
    ("H200 NVL", r"h200 nvl", 835.5),
    ("H200", r"h200", 989.5),
    ("H100 NVL", r"h100 nvl", 835.5),
    ("H100 PCIe", r"h100 pcie", 756.5),
    ("H100 SXM", r"h100", 989.5),  # "NVIDIA H100 80GB HBM3"
    ("A100", r"a100", 312.0),
    ("L40S", r"l40s", 362.05),
    ("L40", r"l40\b", 181.05),
    ("L4", r"\bl4\b", 121.0),
    ("A10", r"\ba10\b", 125.0),
    ("RTX 4090", r"rtx 4090", 165.2),
    ("RTX 3090", r"rtx 3090\b", 71.0),
]
PEAK_SOURCE = "vendor datasheet, bf16 dense (half the sparsity figure)"


def bf16_dense_peak(device_name: str) -> tuple[str, float] | None:
    """(table name, bf16 dense TFLOP/s) of a CUDA device name; None if it is not in the table."""
    name = device_name.lower()
    for label, pattern, tflops in BF16_DENSE_PEAK_TFLOPS:
        if re.search(pattern, name):
            return label, tflops
    return None


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *_: Any, **__: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *_: Any, **__: Any
) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> Any:
    """A ``torch.utils.flop_counter.FlopCounterMode`` that also counts CPU fused attention.

    It counts the matrix products (matmul, convolution, attention), forward and backward,
    of what runs inside it: the usual "model FLOPs", with elementwise work (activations,
    normalisation, the optimizer) left out. torch's table knows the CUDA attention kernels
    but not the CPU flash kernel, so that one is added with the same formula.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
        },
    )


def flops_line(flops_per_s: float, peak: tuple[str, float] | None, device: str) -> str:
    """ "123 TFLOP/s of 989.5 (H200 bf16 dense peak): 12.4%"; on CPU GFLOP/s, no peak."""
    if not is_cuda(device):
        return f"{flops_per_s / 1e9:.3g} GFLOP/s (CPU: no peak table)"
    achieved = f"{flops_per_s / 1e12:.3g} TFLOP/s"
    if peak is None:
        return f"{achieved}, peak unknown (device not in bench/_common.py's table)"
    label, tflops = peak
    share = 100 * flops_per_s / 1e12 / tflops
    return f"{achieved} of {tflops:g} ({label} bf16 dense peak): {share:.1f}%"


# ------------------------------------------------------------------------ options, cells
def add_timing_arguments(
    parser: argparse.ArgumentParser, *, batch: int | None, warmup: int, steps: int
) -> None:
    """--batch, --warmup, --steps, --threads and --no-record, as every script spells them."""
    parser.add_argument(
        "--batch", type=int, default=batch, help=f"batch size (default: {batch or 'per size'})"
    )
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=steps, help="timed steps")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default; 1 is steadier on a shared machine)",
    )
    parser.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help="print only: leave bench/results/ and BENCHMARKS.md as they are",
    )


def add_cell_arguments(
    parser: argparse.ArgumentParser,
    *,
    child: tuple[str, ...],
    batch: int | None,
    warmup: int,
    steps: int,
    timeout: float,
) -> None:
    """The timing options plus --device, --timeout and the hidden --child of :func:`run_cell`."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    add_timing_arguments(parser, batch=batch, warmup=warmup, steps=steps)
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help="seconds per cell before it is recorded as skipped",
    )
    parser.add_argument("--child", nargs=len(child), metavar=child, help=argparse.SUPPRESS)


def forwarded(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """``args`` as command-line options again (flags for True, nothing for None/False)."""
    options: list[str] = []
    for name in names:
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if value is True:
            options.append(flag)
        elif value is not None and value is not False:
            options += [flag, str(value)]
    return options


def run_cell(
    script: str, child: list[str], options: list[str], row: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Run ``script --child *child *options`` in a fresh process; its last stdout line is JSON.

    A cell that fails or runs past ``timeout`` comes back as ``row`` with a ``skipped`` reason.
    """
    command = [sys.executable, script, "--child", *child, *options]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "skipped": f"over the {timeout:.0f} s limit per cell (--timeout)"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        if done.returncode < 0 or "out of memory" in done.stderr.lower():
            reason = f"killed or out of memory (status {done.returncode}): {reason}"
        return {**row, "skipped": reason[:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def progress(row: dict[str, Any], started: float) -> None:
    print(f"  {json.dumps(row)} ({time.perf_counter() - started:.0f} s)", flush=True)


# ------------------------------------------------------------------ machine, files, tables
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu", threads: int | None = 0) -> dict[str, Any]:
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
    if is_cuda(device) and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        peak = bf16_dense_peak(props.name)
        info["bf16_dense_peak"] = (
            None if peak is None else {"name": peak[0], "tflops": peak[1], "source": PEAK_SOURCE}
        )
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


def publish(name: str, title: str, data: dict[str, Any], body: str, record: bool) -> None:
    """Print the section; with ``record``, also write its JSON and its BENCHMARKS.md section."""
    print()
    print(body)
    if not record:
        print("\n(--no-record: bench/results/ and BENCHMARKS.md left as they were)")
        return
    path = write_json(name, data)
    update_section(name, title, body)
    print(f"\n{path}, {BENCHMARKS_MD}")


def find_row(rows: list[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    """The first row whose values match ``keys`` (None if there is none)."""
    return next((r for r in rows if all(r.get(k) == v for k, v in keys.items())), None)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def section_body(
    info: dict[str, Any], description: str, tables: list[str], rows: list[dict[str, Any]], kind: str
) -> str:
    """Machine line, what was measured, the tables, then the cells that were skipped and why."""
    text = [machine_line(info), "", description]
    for part in tables:
        text += ["", part]
    skipped = [
        f"- {r['model']} @ {r['size']} px {r[kind]}: {r['skipped']}" for r in rows if "skipped" in r
    ]
    if skipped:
        text += ["", "Skipped cells:", *skipped]
    return "\n".join(text)
