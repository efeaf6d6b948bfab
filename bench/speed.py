"""Training and inference speed, peak memory and parameters of every architecture at 64/128/256 px.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/speed.py                  # CPU
    .venv/bin/python bench/speed.py --device cuda [--precision bf16-mixed] [--channels-last]
    .venv/bin/python bench/speed.py --models ganomaly --sizes 64 --steps 5
    .venv/bin/python bench/speed.py --models ganomaly --sizes 32 --batch 2 --steps 1 --no-record

The models are those of ``anomaly_gan.models.registry``, each in its paper setting as
``model=<name>_paper`` builds it (read from ``conf/model/<name>_paper.yaml``: width 64,
every skip, Skip-SA attention on every level, the paper's loss and score), the published
networks the figures in BENCHMARKS.md describe; the project's defaults (``model=<name>``)
are narrower and faster.
Every (model, size, training|inference) cell runs in a fresh subprocess, so one cell's
memory high-water mark never hides another's, and a cell that runs out of memory or time
is recorded as skipped with the reason instead of stopping the run.

- Training images/s: a real ``lightning.Trainer.fit`` on random images in [-1, 1]; each
  batch runs the core's ``GanAnomalyModule.training_step`` (one generator pass, a
  discriminator update, a generator update, logging). ``--warmup`` batches untimed, then
  ``--steps`` timed; a callback times each batch (CUDA synchronised) and the median batch
  gives images/s. The median ``training_step`` call alone is in the JSON (``train_step_s``).
- Inference images/s: ``model(image)`` (scores) in eval mode under ``torch.inference_mode``.
- Peak memory: CPU, the subprocess's peak RSS (``ru_maxrss``) minus its RSS just before the
  timed work (model and data already built): activations, gradients, optimizer state and
  allocator slack. GPU: ``torch.cuda.max_memory_allocated``.
- Parameters: generator and discriminator, at each size.
- Arithmetic throughput (training cells): the FLOPs of one real ``training_step`` (the
  generator pass, the discriminator update and the generator update, forward and backward,
  inside ``Trainer.fit``), counted with ``torch.utils.flop_counter.FlopCounterMode`` on the
  first warm-up step (or on one extra step after the timed ones when there is no warm-up),
  divided by the median batch time. It counts matrix products (convolutions, matmuls,
  attention), not elementwise work, so it is the usual "model FLOPs" rate. On CUDA it is
  printed in TFLOP/s beside the device's bf16 dense peak (``_common.BF16_DENSE_PEAK_TFLOPS``,
  vendor datasheets; "peak unknown" for other devices); on CPU in GFLOP/s without a peak.

Default batch on CPU: 16 at 64 px, 8 at 128 px, 2 at 256 px, where a cell is one cold step
(no warm-up: a Skip-SA step at 256 px is minutes on two cores); on GPU 32 everywhere; other
sizes need ``--batch``. Results go to ``bench/results/speed_<device>[_bf16][_cl].json`` and
a table in ``BENCHMARKS.md`` (not with ``--no-record``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
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
#: the options a cell's subprocess needs
FORWARD = ["device", "precision", "channels_last", "batch", "warmup", "steps", "threads"]


def measure(args: argparse.Namespace, name: str, size: int, mode: str) -> dict[str, Any]:
    """Child process: one (model, size, mode) cell; returns one JSON-able dict."""
    import torch

    device = args.device
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    common.set_threads(args.threads)
    torch.manual_seed(0)
    model = common.build_model(name, size, paper=True).to(memory_format=memory_format)
    batch = args.batch or (GPU_BATCH if common.is_cuda(device) else CPU_BATCH[size])
    warmup, steps = args.warmup, args.steps
    if device == "cpu" and size >= BIG_CPU_SIZE and not args.batch:
        warmup, steps = 0, 1  # one cold step: minutes each for the attention models
    result: dict[str, Any] = {"model": name, "size": size, "mode": mode, "batch": batch}
    result.update(common.parameter_counts(model))

    if mode == "train":

        def prepare(batch_: dict[str, Any]) -> None:
            batch_["image"] = batch_["image"].contiguous(memory_format=memory_format)

        # FLOPs of one whole training step, counted on a step that is not timed: the first
        # warm-up step, or one extra step after the timed ones.
        counted = 0 if warmup else steps
        counter = common.flop_counter()

        def around_step(index: int) -> Any:
            return counter if index == counted else contextlib.nullcontext()

        loader = common.image_loader(size, batch, warmup + steps + (0 if warmup else 1))
        before = common.memory_mark(device)
        fit = common.fit_timed(
            model,
            loader,
            warmup=warmup,
            device=device,
            precision=args.precision,
            prepare_batch=prepare,
            around_step=around_step,
        )
        timed = fit["batch_s"][:steps]
        result["train_step_s"] = statistics.median(fit["step_s"][:steps])
        result["train_flops"] = counter.get_total_flops()
        result["flops_per_s"] = result["train_flops"] / statistics.median(timed)
    else:
        model = model.to(device).eval()
        image = common.random_images(batch, size, device=device)
        image = image.contiguous(memory_format=memory_format)
        autocast = torch.autocast(
            device_type="cuda" if common.is_cuda(device) else "cpu",
            dtype=torch.bfloat16,
            enabled=args.precision == "bf16-mixed",
        )
        before = common.memory_mark(device)
        with torch.inference_mode(), autocast:
            timed = common.timed_calls(lambda: model(image), warmup, steps, device)
    step_s = statistics.median(timed)
    result.update(
        step_s=step_s,
        images_per_s=batch / step_s,
        timed_steps=len(timed),
        warmup=warmup,
        **common.memory_peak(device, before),
    )
    return result


def _cell(row: dict[str, Any] | None) -> tuple[str, str]:
    if row is None:
        return "-", "-"
    if "skipped" in row:
        return "skipped", "-"
    cold = "*" if row.get("timed_steps") == 1 and row.get("warmup") == 0 else ""
    return f"{row['images_per_s']:.3g} (b{row['batch']}){cold}", f"{row['delta_mib']:.0f}"


def _params(rows: list[dict[str, Any]], name: str, size: int) -> str:
    row = next(
        (r for r in rows if (r["model"], r["size"]) == (name, size) and "g_params" in r), None
    )
    return "-" if row is None else f"{row['g_params'] / 1e6:.2f} / {row['d_params'] / 1e6:.2f}"


def device_peak(info: dict[str, Any]) -> tuple[str, float] | None:
    peak = info.get("bf16_dense_peak")
    return None if not peak else (peak["name"], peak["tflops"])


def throughput_table(data: dict[str, Any]) -> str:
    """FLOPs per training step and the achieved rate, beside the device's bf16 dense peak."""
    device = data["options"]["device"]
    peak = device_peak(data["machine"])
    gpu = common.is_cuda(device)
    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    header = ["model", "px", "batch", "GFLOP per training step", f"achieved {unit}"]
    if gpu:
        name = peak[0] if peak else data["machine"].get("gpu", "this GPU")
        header += [f"bf16 dense peak ({name})", "of peak"]
    lines = []
    for row in data["rows"]:
        if row["mode"] != "train" or "train_flops" not in row:
            continue
        cells = [row["model"], str(row["size"]), str(row["batch"])]
        cells += [f"{row['train_flops'] / 1e9:,.1f}", f"{row['flops_per_s'] / scale:.3g}"]
        if gpu:
            cells += (
                [f"{peak[1]:g} TFLOP/s", f"{100 * row['flops_per_s'] / 1e12 / peak[1]:.1f}%"]
                if peak
                else ["peak unknown", "-"]
            )
        lines.append(cells)
    return common.table(header, lines)


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    sizes = sorted({r["size"] for r in rows})
    names = list(dict.fromkeys(r["model"] for r in rows))
    header = ["model"]
    for size in sizes:
        header += [
            f"{what} @{size}" for what in ("train img/s", "infer img/s", "train MiB", "infer MiB")
        ]
    lines = []
    for name in names:
        cells = [name]
        for size in sizes:
            (t_rate, t_mem), (i_rate, i_mem) = (
                _cell(common.find_row(rows, model=name, size=size, mode=mode))
                for mode in ("train", "infer")
            )
            cells += [t_rate, i_rate, t_mem, i_mem]
        lines.append(cells)
    params = common.table(
        ["parameters (M), generator / discriminator", *(f"@{size}" for size in sizes)],
        [[name, *(_params(rows, name, size) for size in sizes)] for name in names],
    )
    options = data["options"]
    description = (
        "The papers' networks (`model=<name>_paper`: width 64, every skip, Skip-SA attention "
        f"on every level). Device {options['device']}, precision {options['precision']}, "
        f"channels-last {options['channels_last']}; {options['warmup']} warm-up + "
        f"{options['steps']} timed "
        "steps per cell, median step. Training through `lightning.Trainer.fit` (each batch runs "
        "the core's `training_step`: D update + G update); inference `model(image)` in eval "
        f"mode. MiB = {common.memory_label(options['device'])}. (bN) = batch size; * = one cold "
        f"step (no warm-up) at {BIG_CPU_SIZE} px on CPU. FLOPs: one whole `training_step` "
        "(generator pass, D update, G update; forward and backward) counted with "
        "`torch.utils.flop_counter.FlopCounterMode` (matrix products only), divided by the "
        "median batch time"
        + (f"; peak: {common.PEAK_SOURCE}." if common.is_cuda(options["device"]) else ".")
    )
    tables = [common.table(header, lines), params]
    if any("train_flops" in row for row in rows):
        tables.append(throughput_table(data))
    return common.section_body(data["machine"], description, tables, rows, "mode")


def result_name(args: argparse.Namespace) -> str:
    name = f"speed_{args.device.split(':')[0]}"
    if args.precision != "32-true":
        name += "_" + args.precision.split("-")[0]
    return name + ("_cl" if args.channels_last else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # anogan only when named: its inference is a latent search (bench/anogan_speed.py).
    parser.add_argument(
        "--models",
        nargs="+",
        default=common.model_names(),
        choices=common.model_names(with_search=True),
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument(
        "--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"]
    )
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    common.add_cell_arguments(
        parser, child=("MODEL", "SIZE", "MODE"), batch=None, warmup=1, steps=2, timeout=420.0
    )
    args = parser.parse_args()
    if args.child:
        name, size, mode = args.child[0], int(args.child[1]), args.child[2]
        print(json.dumps(measure(args, name, size, mode)))
        return

    info = common.machine(args.device, args.threads)
    print(common.machine_line(info), flush=True)
    options = common.forwarded(args, FORWARD)
    rows = []
    for name in args.models:
        for size in args.sizes:
            for mode in args.modes:
                started = time.perf_counter()
                cell = {"model": name, "size": size, "mode": mode}
                rows.append(
                    common.run_cell(__file__, [name, str(size), mode], options, cell, args.timeout)
                )
                common.progress(rows[-1], started)
                if "flops_per_s" in rows[-1]:
                    rate = common.flops_line(
                        rows[-1]["flops_per_s"], device_peak(info), args.device
                    )
                    print(f"  {name} @{size} px train: {rate}", flush=True)
    data = {
        "machine": info,
        "options": {name: getattr(args, name) for name in FORWARD if name != "threads"},
        "rows": rows,
    }
    name = result_name(args)
    title = f"Speed and memory: {name.removeprefix('speed_')}"
    common.publish(name, title, data, markdown(data), args.record)


if __name__ == "__main__":
    main()
