"""Training and inference speed and peak memory of every architecture at 64/128/256 px.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/speed.py                  # CPU
    .venv/bin/python bench/speed.py --device cuda [--precision bf16-mixed] [--channels-last]
    .venv/bin/python bench/speed.py --models ganomaly --sizes 64 --steps 5

Every (model, size, training|inference) cell runs in a fresh subprocess, so one cell's
memory high-water mark never hides another's, and a cell that runs out of memory or time
is recorded as skipped with the reason instead of stopping the run.

- Training images/s: a real ``lightning.Trainer.fit`` on random images in [-1, 1]; each
  step is the core's ``training_step`` (one generator pass, a discriminator update, a
  generator update, logging). ``--warmup`` steps untimed, then ``--steps`` timed; a callback
  times each batch (CUDA synchronised) and the median step gives images/s.
- Inference images/s: ``model(image)`` (scores) in eval mode under ``torch.inference_mode``.
- Peak memory: CPU, the subprocess's peak RSS (``ru_maxrss``) minus its RSS just before the
  timed work (model and data already built): activations, gradients, optimizer state and
  allocator slack. GPU: ``torch.cuda.max_memory_allocated``.

Default batch on CPU: 16 at 64 px, 8 at 128 px, 2 at 256 px, where a cell is one cold step
(no warm-up: a Skip-SA step at 256 px is minutes on two cores); on GPU 32 everywhere. Results go to
``bench/results/speed_<device>[_bf16][_cl].json`` and a table in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

CPU_BATCH = {64: 16, 128: 8, 256: 2}
BIG_CPU_SIZE = 256
GPU_BATCH = 32


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_before(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return common.current_rss_bytes()


def _peak_after(device: str, before: int) -> dict[str, float]:
    import torch

    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mib": peak / common.MIB, "delta_mib": (peak - before) / common.MIB}
    peak = common.peak_rss_bytes()
    return {"peak_mib": peak / common.MIB, "delta_mib": (peak - before) / common.MIB}


def measure(args: argparse.Namespace, name: str, size: int, mode: str) -> dict[str, Any]:
    """Child process: one (model, size, mode) cell; returns one JSON-able dict."""
    common.ensure_repo_on_path()
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from anomaly_gan import models

    device = args.device
    channels_last = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(models, common.MODELS[name])(image_size=size, channels=3)
    model = model.to(memory_format=channels_last)
    batch = args.batch or (GPU_BATCH if device.startswith("cuda") else CPU_BATCH[size])
    if device == "cpu" and size >= BIG_CPU_SIZE and not args.batch:
        args.warmup, args.steps = 0, 1  # one cold step: minutes each for the attention models
    n_steps = args.warmup + args.steps
    result: dict[str, Any] = {"model": name, "size": size, "mode": mode, "batch": batch}

    if mode == "train":
        images = [{"image": torch.rand(3, size, size) * 2 - 1} for _ in range(batch)]
        loader = DataLoader(images * n_steps, batch_size=batch)

        class StepTimer(L.Callback):
            def __init__(self) -> None:
                self.seconds: list[float] = []
                self._start = 0.0

            def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, *_: Any) -> None:
                batch["image"] = batch["image"].contiguous(memory_format=channels_last)
                _sync(device)
                self._start = time.perf_counter()

            def on_train_batch_end(self, *_: Any) -> None:
                _sync(device)
                self.seconds.append(time.perf_counter() - self._start)

        timer = StepTimer()
        trainer = L.Trainer(
            accelerator="gpu" if device.startswith("cuda") else "cpu",
            devices=1,
            precision=args.precision,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[timer],
        )
        before = _peak_before(device)
        trainer.fit(model, train_dataloaders=loader)
        timed = timer.seconds[args.warmup :]
    else:
        model = model.to(device).eval()
        image = (torch.rand(batch, 3, size, size, device=device) * 2 - 1).contiguous(
            memory_format=channels_last
        )
        autocast = torch.autocast(
            device_type="cuda" if device.startswith("cuda") else "cpu",
            dtype=torch.bfloat16,
            enabled=args.precision == "bf16-mixed",
        )
        before = _peak_before(device)
        timed = []
        with torch.inference_mode(), autocast:
            for step in range(n_steps):
                _sync(device)
                start = time.perf_counter()
                model(image)
                _sync(device)
                if step >= args.warmup:
                    timed.append(time.perf_counter() - start)
    step_s = statistics.median(timed)
    result.update(
        step_s=step_s,
        images_per_s=batch / step_s,
        timed_steps=len(timed),
        warmup=args.warmup,
        **_peak_after(device, before),
    )
    return result


def _run_child(args: argparse.Namespace, name: str, size: int, mode: str) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        name,
        str(size),
        mode,
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    command += ["--batch", str(args.batch)] if args.batch else []
    command += ["--channels-last"] if args.channels_last else []
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {
            "model": name,
            "size": size,
            "mode": mode,
            "skipped": f"over the {args.timeout:.0f} s limit per cell (--timeout)",
        }
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        if done.returncode < 0 or "out of memory" in done.stderr.lower():
            reason = f"killed or out of memory (status {done.returncode}): {reason}"
        return {"model": name, "size": size, "mode": mode, "skipped": reason[:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cell(row: dict[str, Any] | None) -> tuple[str, str]:
    if row is None:
        return "-", "-"
    if "skipped" in row:
        return "skipped", "-"
    cold = "*" if row.get("timed_steps") == 1 and row.get("warmup") == 0 else ""
    return f"{row['images_per_s']:.3g} (b{row['batch']}){cold}", f"{row['delta_mib']:.0f}"


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    sizes = sorted({r["size"] for r in rows})
    header = ["model"]
    for size in sizes:
        header += [
            f"train img/s @{size}",
            f"infer img/s @{size}",
            f"train MiB @{size}",
            f"infer MiB @{size}",
        ]
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        cells = [name]
        for size in sizes:
            train = next(
                (
                    r
                    for r in rows
                    if r["model"] == name and r["size"] == size and r["mode"] == "train"
                ),
                None,
            )
            infer = next(
                (
                    r
                    for r in rows
                    if r["model"] == name and r["size"] == size and r["mode"] == "infer"
                ),
                None,
            )
            (t_rate, t_mem), (i_rate, i_mem) = _cell(train), _cell(infer)
            cells += [t_rate, i_rate, t_mem, i_mem]
        lines.append(cells)
    skipped = [
        f"- {r['model']} @ {r['size']} px {r['mode']}: {r['skipped']}"
        for r in rows
        if "skipped" in r
    ]
    options = data["options"]
    memory = (
        "peak RSS growth of the measuring subprocess"
        if options["device"] == "cpu"
        else "torch.cuda.max_memory_allocated"
    )
    text = [
        common.machine_line(data["machine"]),
        "",
        f"Device {options['device']}, precision {options['precision']}, channels-last "
        f"{options['channels_last']}; {options['warmup']} warm-up + {options['steps']} timed "
        "steps per cell, median step. Training through `lightning.Trainer.fit` (the core's "
        f"`training_step`: D update + G update); inference `model(image)` in eval mode. "
        f"MiB = {memory}. (bN) = batch size; * = one cold step (no warm-up) at "
        f"{BIG_CPU_SIZE} px on CPU.",
        "",
        common.table(header, lines),
    ]
    if skipped:
        text += ["", "Skipped cells:", *skipped]
    return "\n".join(text)


def result_name(args: argparse.Namespace) -> str:
    name = f"speed_{args.device.split(':')[0]}"
    if args.precision != "32-true":
        name += "_" + args.precision.split("-")[0]
    return name + ("_cl" if args.channels_last else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=list(common.MODELS), choices=list(common.MODELS)
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument(
        "--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"]
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="one batch size for every cell (default: per size, see above)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per cell (0: torch's default; 1 is steadier on a shared machine)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=420.0,
        help="seconds per cell before it is recorded as skipped",
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("MODEL", "SIZE", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        name, size, mode = args.child[0], int(args.child[1]), args.child[2]
        print(json.dumps(measure(args, name, size, mode)))
        return

    info = common.machine(args.device, args.threads)
    print(common.machine_line(info), flush=True)
    rows = []
    for name in args.models:
        for size in args.sizes:
            for mode in args.modes:
                started = time.perf_counter()
                row = _run_child(args, name, size, mode)
                rows.append(row)
                print(
                    f"  {name} @ {size}px {mode}: {json.dumps(row)} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    data = {
        "machine": info,
        "options": {
            "device": args.device,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "warmup": args.warmup,
            "steps": args.steps,
            "batch": args.batch,
        },
        "rows": rows,
    }
    name = result_name(args)
    path = common.write_json(name, data)
    body = markdown(data)
    common.update_section(name, f"Speed and memory: {name.removeprefix('speed_')}", body)
    print()
    print(body)
    print(f"\n{path}, {common.BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
