"""Self-attention memory: the fused attention of Skip-SA and MIFE against a plain N×N softmax.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/attention_memory.py [--device cuda]

:class:`anomaly_gan.nets.blocks.SelfAttention2d` computes SAGAN attention with
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels: O(N) memory in the
N = H·W positions). The plain alternative, SAGAN as published, materialises the N×N
attention matrix: ``softmax(QᵀK)`` of shape (B, N, N), kept for the backward pass with its
gradient. This script measures one generator forward + backward (``model.generate``, loss =
mean of the reconstruction) per cell, in a fresh subprocess:

- ``fused``: the model as shipped;
- ``plain``: every ``SelfAttention2d`` of the same model, same weights, runs the textbook
  N×N computation (:func:`plain_attention`, bound to the instances here in the benchmark;
  the model code has no switch for it).

Peak memory: CPU, peak RSS of the subprocess minus its RSS before the pass; GPU,
``torch.cuda.max_memory_allocated`` minus the allocation before. A plain cell whose N×N
matrices alone (x3: logits, softmax kept for backward, its gradient) would not fit in the
available memory is skipped with that estimate instead of being run into the OOM killer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

CONFIGS = [("skip_sa", 64), ("skip_sa", 128), ("skip_sa", 256), ("mife", 128), ("mife", 256)]
# Tensors of N×N floats alive at the peak of a plain pass: logits, softmax (saved for
# backward) and the gradient of the softmax during backward.
NN_COPIES = 3


def plain_attention(self: Any, x: Any) -> Any:
    """SAGAN attention (Zhang et al. 2018) with the explicit (B, N, N) attention matrix."""
    import torch

    batch, channels, height, width = x.shape
    query = self.query(x).flatten(2).transpose(1, 2)  # (B, C/8, H, W) -> (B, N, C/8)
    key = self.key(x).flatten(2)  # (B, C/8, N)
    value = self.value(x).flatten(2)  # (B, C, N)
    attention = torch.softmax(torch.bmm(query, key), dim=-1)  # (B, N, N), unscaled as SAGAN
    attended = torch.bmm(value, attention.transpose(1, 2))  # (B, C, N)
    return self.gamma * attended.view(batch, channels, height, width) + x


def _attention_layers(model: Any) -> list[Any]:
    from anomaly_gan.nets.blocks import SelfAttention2d

    return [m for m in model.generator.modules() if isinstance(m, SelfAttention2d)]


def _positions(model: Any, size: int) -> list[int]:
    """N = H·W at every attention layer, found with a forward hook on a 1-image pass."""
    import torch

    found: list[int] = []
    hooks = [
        layer.register_forward_hook(
            lambda _m, args, _o: found.append(args[0].shape[-2] * args[0].shape[-1])
        )
        for layer in _attention_layers(model)
    ]
    with torch.no_grad():
        model.generator.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return found


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measure(args: argparse.Namespace, name: str, size: int, impl: str) -> dict[str, Any]:
    common.ensure_repo_on_path()
    import torch

    from anomaly_gan import models

    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(models, common.MODELS[name])(image_size=size, channels=3)
    layers = _attention_layers(model)
    positions = _positions(model, size)
    if impl == "plain":
        for layer in layers:
            layer.forward = types.MethodType(plain_attention, layer)
    model = model.to(device).train()
    generator = model.generator
    image = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = common.current_rss_bytes()
    seconds = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        model.generate(image).reconstruction.mean().backward()
        generator.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else common.peak_rss_bytes()
    timed = seconds[args.warmup :]
    return {
        "model": name,
        "size": size,
        "impl": impl,
        "batch": args.batch,
        "attention_positions": positions,
        "delta_mib": (peak - before) / common.MIB,
        "step_s": statistics.median(timed),
        "timed_steps": len(timed),
    }


def nn_bytes(positions: list[int], batch: int) -> int:
    return sum(batch * n * n * 4 for n in positions)


def _run(args: argparse.Namespace, name: str, size: int, impl: str) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "size": size, "impl": impl, "batch": args.batch}
    command = [
        sys.executable,
        __file__,
        "--child",
        name,
        str(size),
        impl,
        "--device",
        args.device,
        "--batch",
        str(args.batch),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {**row, "skipped": f"over the {args.timeout:.0f} s limit per cell (--timeout)"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {**row, "skipped": (lines[-1] if lines else f"status {done.returncode}")[:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _positions_only(name: str, size: int) -> list[int]:
    common.ensure_repo_on_path()
    from anomaly_gan import models

    return _positions(getattr(models, common.MODELS[name])(image_size=size, channels=3), size)


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    header = [
        "model",
        "px",
        "attention N per layer",
        "N×N matrices (plain)",
        "fused: peak MiB",
        "plain: peak MiB",
        "saved",
        "fused: s/step",
        "plain: s/step",
    ]
    lines = []
    for name, size in dict.fromkeys((r["model"], r["size"]) for r in rows):
        fused = next(r for r in rows if (r["model"], r["size"], r["impl"]) == (name, size, "fused"))
        plain = next(r for r in rows if (r["model"], r["size"], r["impl"]) == (name, size, "plain"))
        positions = fused.get("attention_positions") or plain.get("attention_positions") or []
        matrices = nn_bytes(positions, data["options"]["batch"]) * NN_COPIES / common.MIB

        def mem(row: dict[str, Any]) -> str:
            return "skipped" if "skipped" in row else f"{row['delta_mib']:.0f}"

        def sec(row: dict[str, Any]) -> str:
            return "-" if "skipped" in row else f"{row['step_s']:.2f}"

        if "skipped" in fused or "skipped" in plain:
            saved = (
                f"≥ {matrices - float(mem(fused)):.0f} MiB (est.)"
                if ("skipped" in plain and "skipped" not in fused)
                else "-"
            )
        else:
            saved = (
                f"{plain['delta_mib'] - fused['delta_mib']:.0f} MiB "
                f"({plain['delta_mib'] / max(fused['delta_mib'], 1e-9):.1f}x)"
            )
        lines.append(
            [
                name,
                str(size),
                ", ".join(map(str, positions)),
                f"{matrices:,.0f} MiB",
                mem(fused),
                mem(plain),
                saved,
                sec(fused),
                sec(plain),
            ]
        )
    skipped = [
        f"- {r['model']} @ {r['size']} px {r['impl']}: {r['skipped']}"
        for r in rows
        if "skipped" in r
    ]
    options = data["options"]
    memory = (
        "peak RSS growth of the measuring subprocess"
        if options["device"] == "cpu"
        else "torch.cuda.max_memory_allocated growth"
    )
    text = [
        common.machine_line(data["machine"]),
        "",
        f"Device {options['device']}; generator forward + backward, batch {options['batch']}, "
        f"{options['warmup']} warm-up + {options['steps']} timed passes. Peak MiB = {memory}. "
        f"'N×N matrices' = what the plain attention must hold at its peak "
        f"({NN_COPIES} float32 N×N tensors per layer: logits, softmax, its gradient).",
        "",
        common.table(header, lines),
    ]
    if skipped:
        text += ["", "Skipped cells:", *skipped]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed passes (default 0: a 256 px Skip-SA pass is minutes on CPU)",
    )
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per cell (0: torch's default; 1 is steadier on a shared machine)",
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[f"{m}:{s}" for m, s in CONFIGS],
        help="model:size pairs, e.g. skip_sa:128 mife:256",
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("MODEL", "SIZE", "IMPL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args, args.child[0], int(args.child[1]), args.child[2])))
        return

    info = common.machine(args.device, args.threads)
    print(common.machine_line(info), flush=True)
    budget = (
        _available_bytes()
        if args.device == "cpu"
        else __import__("torch").cuda.get_device_properties(0).total_memory
    )
    rows = []
    for config in args.configs:
        name, size = config.split(":")[0], int(config.split(":")[1])
        for impl in ("fused", "plain"):
            positions = _positions_only(name, size)
            need = nn_bytes(positions, args.batch) * NN_COPIES
            if impl == "plain" and need > 0.8 * budget:
                row = {
                    "model": name,
                    "size": size,
                    "impl": impl,
                    "batch": args.batch,
                    "attention_positions": positions,
                    "skipped": f"its N×N matrices alone need ~{need / 2**30:.0f} GiB, more "
                    f"than 80% of the {budget / 2**30:.0f} GiB available",
                }
            else:
                started = time.perf_counter()
                row = _run(args, name, size, impl)
                row.setdefault("attention_positions", positions)
                row["wall_s"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(f"  {json.dumps(row)}", flush=True)
    data = {"machine": info, "options": vars(args) | {"child": None}, "rows": rows}
    path = common.write_json(f"attention_memory_{args.device.split(':')[0]}", data)
    body = markdown(data)
    common.update_section(
        f"attention_memory_{args.device.split(':')[0]}",
        f"Self-attention memory, fused vs N×N ({args.device})",
        body,
    )
    print()
    print(body)
    print(f"\n{path}, {common.BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
