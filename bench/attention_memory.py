"""Self-attention memory: the fused attention of Skip-SA and MIFE against a plain N×N softmax.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/attention_memory.py [--device cuda]
    .venv/bin/python bench/attention_memory.py --configs skip_sa:64 --no-record   # quick look

:class:`anomaly_gan.nets.blocks.SelfAttention2d` computes SAGAN attention with
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels: O(N) memory in the
N = H·W positions). The plain alternative, SAGAN as published, materialises the N×N
attention matrix: ``softmax(QᵀK)`` of shape (B, N, N), kept for the backward pass with its
gradient. This script measures one generator forward + backward (``model.generate``, loss =
mean of the reconstruction) per cell, in a fresh subprocess:

- ``fused``: the model as shipped, in the paper's setting (``model=<name>_paper``, read from
  its config: Skip-SA with attention on every encoder level, width 64);
- ``plain``: every ``SelfAttention2d`` of the same model, same weights, runs the textbook
  N×N computation (:func:`plain_attention`, bound to the instances here in the benchmark;
  the model code has no switch for it).

Peak memory: CPU, peak RSS of the subprocess minus its RSS before the pass; GPU,
``torch.cuda.max_memory_allocated`` minus the allocation before. A plain cell whose N×N
matrices alone (x3: logits, softmax kept for backward, its gradient) would not fit in the
available memory is skipped with that estimate instead of being run into the OOM killer.
``--warmup`` defaults to 0: a 256 px Skip-SA pass is minutes on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
#: the options a cell's subprocess needs
FORWARD = ["device", "batch", "warmup", "steps", "threads"]


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


def positions(name: str, size: int, model: Any = None) -> list[int]:
    """N = H·W at every attention layer, found with a forward hook on a 1-image pass."""
    import torch

    model = model if model is not None else common.build_model(name, size, paper=True)
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


def _available_bytes(device: str) -> int:
    if common.is_cuda(device):
        import torch

        return torch.cuda.get_device_properties(0).total_memory
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measure(args: argparse.Namespace, name: str, size: int, impl: str) -> dict[str, Any]:
    """Child process: one (model, size, implementation) cell."""
    import torch

    device = args.device
    common.set_threads(args.threads)
    torch.manual_seed(0)
    model = common.build_model(name, size, paper=True)
    found = positions(name, size, model)
    if impl == "plain":
        for layer in _attention_layers(model):
            layer.forward = types.MethodType(plain_attention, layer)
    model = model.to(device).train()
    image = common.random_images(args.batch, size, device=device)

    def forward_backward() -> None:
        model.generate(image).reconstruction.mean().backward()
        model.generator.zero_grad(set_to_none=True)

    before = common.memory_mark(device)
    timed = common.timed_calls(forward_backward, args.warmup, args.steps, device)
    return {
        "model": name,
        "size": size,
        "impl": impl,
        "batch": args.batch,
        "attention_positions": found,
        "delta_mib": common.memory_peak(device, before)["delta_mib"],
        "step_s": statistics.median(timed),
        "timed_steps": len(timed),
    }


def nn_bytes(found: list[int], batch: int) -> int:
    return sum(batch * n * n * 4 for n in found)


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

    def mem(row: dict[str, Any]) -> str:
        return "skipped" if "skipped" in row else f"{row['delta_mib']:.0f}"

    def sec(row: dict[str, Any]) -> str:
        return "-" if "skipped" in row else f"{row['step_s']:.2f}"

    lines = []
    for name, size in dict.fromkeys((r["model"], r["size"]) for r in rows):
        fused, plain = (
            common.find_row(rows, model=name, size=size, impl=impl) or {"skipped": "not run"}
            for impl in ("fused", "plain")
        )
        found = fused.get("attention_positions") or plain.get("attention_positions") or []
        matrices = nn_bytes(found, data["options"]["batch"]) * NN_COPIES / common.MIB
        if "skipped" not in fused and "skipped" not in plain:
            saved = (
                f"{plain['delta_mib'] - fused['delta_mib']:.0f} MiB "
                f"({plain['delta_mib'] / max(fused['delta_mib'], 1e-9):.1f}x)"
            )
        elif "skipped" in plain and "skipped" not in fused:
            saved = f"≥ {matrices - fused['delta_mib']:.0f} MiB (est.)"
        else:
            saved = "-"
        lines.append(
            [
                name,
                str(size),
                ", ".join(map(str, found)),
                f"{matrices:,.0f} MiB",
                mem(fused),
                mem(plain),
                saved,
                sec(fused),
                sec(plain),
            ]
        )
    options = data["options"]
    description = (
        "The papers' networks (`model=<name>_paper`: Skip-SA with attention on every level). "
        f"Device {options['device']}; generator forward + backward, batch {options['batch']}, "
        f"{options['warmup']} warm-up + {options['steps']} timed passes. Peak MiB = "
        f"{common.memory_label(options['device'])}. 'N×N matrices' = what the plain attention "
        f"must hold at its peak ({NN_COPIES} float32 N×N tensors per layer: logits, softmax, "
        "its gradient)."
    )
    return common.section_body(
        data["machine"], description, [common.table(header, lines)], rows, "impl"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[f"{m}:{s}" for m, s in CONFIGS],
        help="model:size pairs, e.g. skip_sa:128 mife:256",
    )
    common.add_cell_arguments(
        parser, child=("MODEL", "SIZE", "IMPL"), batch=1, warmup=0, steps=1, timeout=600.0
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args, args.child[0], int(args.child[1]), args.child[2])))
        return

    info = common.machine(args.device, args.threads)
    print(common.machine_line(info), flush=True)
    budget = _available_bytes(args.device)
    options = common.forwarded(args, FORWARD)
    rows = []
    for config in args.configs:
        name, size = config.split(":")[0], int(config.split(":")[1])
        found = positions(name, size)
        need = nn_bytes(found, args.batch) * NN_COPIES
        for impl in ("fused", "plain"):
            started = time.perf_counter()
            cell = {"model": name, "size": size, "impl": impl, "batch": args.batch}
            if impl == "plain" and need > 0.8 * budget:
                row = cell | {
                    "skipped": f"its N×N matrices alone need ~{need / 2**30:.0f} GiB, more "
                    f"than 80% of the {budget / 2**30:.0f} GiB available"
                }
            else:
                row = common.run_cell(
                    __file__, [name, str(size), impl], options, cell, args.timeout
                )
                row["wall_s"] = round(time.perf_counter() - started, 1)
            row.setdefault("attention_positions", found)
            rows.append(row)
            common.progress(row, started)
    data = {"machine": info, "options": vars(args) | {"child": None}, "rows": rows}
    device = args.device.split(":")[0]
    title = f"Self-attention memory, fused vs N×N ({args.device})"
    common.publish(f"attention_memory_{device}", title, data, markdown(data), args.record)


if __name__ == "__main__":
    main()
