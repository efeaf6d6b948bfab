"""Parameters, peak memory and training speed of every architecture on this machine's CPU.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/architectures.py
    .venv/bin/python bench/architectures.py --models skip_sa --sizes 64 --steps 2

Each (model, size) runs in its own subprocess, so one run's memory high-water mark never
hides another's. A run builds the model, then trains it with a real ``lightning.Trainer``
on random images in [-1, 1] (batch 16 by default): ``--warmup`` steps untimed, then
``--steps`` timed. One step is the core's ``training_step``: one generator forward, one
discriminator update and one generator update.

- images/s: batch / the median wall time of the timed steps (a callback times each
  batch; the median resists a step slowed by another process).
- peak memory: the process's peak resident set size (``ru_maxrss``) minus its RSS just
  before ``fit`` (model built, no optimizer state yet): activations, gradients, Adam
  moments and allocator slack of training. The absolute peak RSS is printed too.

CPU timings move with machine load: the header prints the load average. On a shared
2-core machine a busy second core can slow a 2-thread run several-fold (its threads
wait for each other at every operation); ``--threads 1`` gives steadier comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {
    "ganomaly": "Ganomaly",
    "skip_ganomaly": "SkipGanomaly",
    "skip_sa": "SkipSelfAttentionGan",
    "mife": "Mife",
    "baseline": "MifeBaseline",
}
MIB = 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(
    name: str, size: int, batch: int, warmup: int, steps: int, threads: int | None
) -> dict[str, Any]:
    """Child process: build, train ``warmup + steps`` batches, report one JSON object."""
    import statistics

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from anomaly_gan import models
    from anomaly_gan.nets.dcgan import count_parameters

    class BatchTimer(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_batch_start(self, *args: Any) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(models, MODELS[name])(image_size=size, channels=3)
    images = [{"image": torch.rand(3, size, size) * 2 - 1} for _ in range(batch)]
    loader = DataLoader(images * (warmup + steps), batch_size=batch)
    timer = BatchTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    rss_before = _rss_bytes()
    trainer.fit(model, train_dataloaders=loader)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    timed = timer.seconds[warmup:]
    return {
        "model": name,
        "size": size,
        "g_params": count_parameters(model.generator),
        "d_params": count_parameters(model.discriminator),
        "peak_rss_mib": peak / MIB,
        "train_delta_mib": (peak - rss_before) / MIB,
        "step_s": statistics.median(timed),
        "images_per_s": batch / statistics.median(timed),
        "threads": torch.get_num_threads(),
    }


def _run_child(name: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        name,
        str(size),
        "--batch",
        str(args.batch),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads or 0),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"model": name, "size": size, "error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict[str, Any]], sizes: list[int]) -> str:
    at = "/".join(map(str, sizes)) + " px"
    header = ["model", f"G params ({at})", f"D params ({at})"]
    for size in sizes:
        header += [f"peak MiB @{size}", f"img/s @{size}"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for name in dict.fromkeys(row["model"] for row in rows):
        mine = {row["size"]: row for row in rows if row["model"] == name}
        first = mine[sizes[0]]
        g = "/".join(f"{mine[s].get('g_params', 0) / 1e6:.2f}M" for s in sizes)
        d = "/".join(f"{mine[s].get('d_params', 0) / 1e6:.2f}M" for s in sizes)
        cells = [name, g if "error" not in first else "-", d if "error" not in first else "-"]
        for size in sizes:
            row = mine[size]
            if "error" in row:
                cells += ["error", row["error"][:40]]
            else:
                cells += [
                    f"+{row['train_delta_mib']:.0f} ({row['peak_rss_mib']:.0f})",
                    f"{row['images_per_s']:.1f}",
                ]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (default: torch's own choice)",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, size = args.child[0], int(args.child[1])
        print(json.dumps(_measure(name, size, args.batch, args.warmup, args.steps, args.threads)))
        return

    load = os.getloadavg()
    print(
        f"CPU: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; torch threads {args.threads or 'default'}; batch {args.batch}, "
        f"{args.warmup} warm-up + {args.steps} timed training steps per cell "
        "(one step = D update + G update; img/s from the median step)"
    )
    rows = []
    for name in args.models:
        for size in args.sizes:
            started = time.perf_counter()
            row = _run_child(name, size, args)
            rows.append(row)
            print(
                f"  {name} @ {size}px: {json.dumps(row)} ({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    print()
    print("peak MiB = peak RSS growth during training (absolute peak RSS in brackets)")
    print(_table(rows, args.sizes))


if __name__ == "__main__":
    main()
