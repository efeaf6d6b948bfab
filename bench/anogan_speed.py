"""AnoGAN's test-time speed: images/s of scoring with the latent search (model=anogan).

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/anogan_speed.py --threads 1   # CPU
    .venv/bin/python bench/anogan_speed.py --device cuda --batch 1 16 64 256
    .venv/bin/python bench/anogan_speed.py --size 32 --search-steps 50 --no-record

AnoGAN has no encoder: each scored image is mapped to the latent space by ``search_steps``
Adam steps on ``z`` (Schlegl et al., IPMI 2017, Sec. 2.2; paper: 500), each a generator and
a discriminator pass forward and backward, so scoring costs hundreds of the other models'
forward passes. Measured here: ``model.score_with_map(images)`` (the search, the score and
the residual map, exactly what the test loop and predict.py call) under
``torch.inference_mode`` as Lightning's test loop runs it, on random images in [-1, 1] (the
search's cost does not depend on the content), for the model ``python train.py
model=anogan`` builds (conf/model/anogan.yaml: width 64, latent 100). One untimed call
with a 5-step search first (kernels, allocator), then ``--steps`` timed calls per batch
size; the median gives images/s. Results go to ``bench/results/anogan_speed_<device>.json``
and a section of ``BENCHMARKS.md`` (not with ``--no-record``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

CPU_BATCH = 8
GPU_BATCH = 64


def measure(args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """Median seconds of ``score_with_map`` on ``batch`` images -> one result row."""
    import torch

    torch.manual_seed(0)
    model = common.build_model(
        "anogan", args.size, args.channels, paper=True, search_steps=args.search_steps
    )
    model = model.to(args.device).eval()
    images = common.random_images(batch, args.size, args.channels, device=args.device)
    with torch.inference_mode():
        model.search(images, steps=5)  # warm-up: kernels, allocator
        common.sync(args.device)
        seconds = common.timed_calls(
            lambda: model.score_with_map(images), 0, args.steps, args.device
        )
    step_s = statistics.median(seconds)
    return {
        "size": args.size,
        "channels": args.channels,
        "search_steps": args.search_steps,
        "batch": batch,
        "base_width": model.hparams.base_width,
        "latent_dim": model.hparams.latent_dim,
        "seconds": step_s,
        "images_per_s": batch / step_s,
        "ms_per_image_step": 1e3 * step_s / (batch * max(args.search_steps, 1)),
        "timed_calls": len(seconds),
        **common.parameter_counts(model),
    }


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    options = data["options"]
    lines = [
        [
            str(row["batch"]),
            f"{row['images_per_s']:.3g}",
            f"{1 / row['images_per_s']:.3g}",
            f"{row['ms_per_image_step']:.3g}",
        ]
        for row in rows
    ]
    description = (
        f"`model=anogan` (width {rows[0]['base_width']}, latent {rows[0]['latent_dim']}) at "
        f"{options['size']} px, {options['channels']} channels, {options['search_steps']} "
        f"search steps per image (the paper's Γ = 500), device {options['device']}: "
        "`model.score_with_map(images)` (latent search + score + residual map) under "
        f"`torch.inference_mode`, median of {options['steps']} timed call(s) after a 5-step "
        "warm-up. Scoring is the latent search: every image costs `search_steps` generator "
        "and discriminator passes, forward and backward."
    )
    table = common.table(["batch", "images/s", "s/image", "ms per image-step"], lines)
    return common.section_body(data["machine"], description, [table], rows, "batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--size", type=int, default=64, help="image side (px)")
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3])
    parser.add_argument("--search-steps", type=int, default=500, help="Γ (paper: 500)")
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=None,
        help=f"batch sizes (default: {CPU_BATCH} on CPU, {GPU_BATCH} on GPU)",
    )
    parser.add_argument("--steps", type=int, default=1, help="timed calls per batch size")
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
    args = parser.parse_args()
    common.ensure_repo_on_path()
    common.set_threads(args.threads)
    batches = args.batch or [GPU_BATCH if common.is_cuda(args.device) else CPU_BATCH]
    info = common.machine(args.device, args.threads)
    rows = []
    for batch in batches:
        row = measure(args, batch)
        rows.append(row)
        print(
            f"batch {batch}: {row['images_per_s']:.4g} images/s "
            f"({1 / row['images_per_s']:.3g} s per image, {row['ms_per_image_step']:.3g} ms "
            f"per image-step) at {args.size} px, {args.search_steps} steps, {args.device}",
            flush=True,
        )
    options = {
        key: getattr(args, key)
        for key in ("device", "size", "channels", "search_steps", "steps", "threads")
    }
    data = {"machine": info, "options": options, "rows": rows}
    name = f"anogan_speed_{args.device.split(':')[0]}"
    title = f"AnoGAN scoring speed ({args.device.split(':')[0].upper()})"
    common.publish(name, title, data, markdown(data), args.record)


if __name__ == "__main__":
    main()
