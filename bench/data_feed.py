"""Does the data feed keep the device busy? Synthetic step rate vs end-to-end ``Trainer.fit``.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/data_feed.py                # CPU, 64 px
    .venv/bin/python bench/data_feed.py --device cuda --size 256 --precision bf16-mixed \\
        --channels-last --warm-epochs 3
    .venv/bin/python bench/data_feed.py --size 32 --batch 4 --max-batches 3 --no-record  # quick
    .venv/bin/python bench/data_feed.py --loader-only --size 256 --dataset mvtec3d_tire \
        --override data.normalization=fixed       # (c) alone: what the CPU side can deliver

One model (``--model``, in its paper setting as ``bench/speed.py`` builds it), one size and
batch, three figures:

(a) step rate on synthetic batches: random images already in memory (``bench/_common``'s
    loader), through the real ``Trainer.fit``; images/s = batch / median batch time, the
    figure ``bench/speed.py`` reports. The rate the data feed has to sustain.
(b) end-to-end ``Trainer.fit`` images/s on real images read through the real data module
    (``data=mvtec`` as ``conf/data/mvtec.yaml`` builds it: its ``num_workers``, its
    ``pin_memory`` (auto), its normalisation; ``--dataset`` under ``--data-root``, by default
    the project's real sets beside the repository). The first epoch fills the decoded-image
    cache (a fresh one in a temporary folder); the next ``--warm-epochs`` are timed from
    the start of the epoch to its end, so every wait for a batch, the copy to the device
    and the epoch boundaries count. Validation is off (``limit_val_batches=0``): training
    images/s only.
(c) the data loader alone on the same warm cache (a fresh loader: its first epoch reads the
    disk cache, the second, timed, is the warm one): how fast the CPU side can deliver
    batches with no model. If (c) is well above (a), the CPU side is not the bottleneck
    and normalisation / augmentation can stay in the workers.

The goal (issue 16) is (b) / (a) >= 90%. Also printed: the share of the warm epochs spent
outside the batches (waiting for the loader, epoch boundaries). Results go to
``bench/results/data_feed_<device>.json`` and the ``data_feed_<device>`` section of
``BENCHMARKS.md`` (not with ``--no-record``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

SHARED_DATA = common.REPO.parent / "shared" / "data"
GOAL = 0.9


def compose_data(args: argparse.Namespace, cache_dir: Path) -> Any:
    """``cfg.data`` of ``python train.py data=mvtec`` with this root, category, size, batch."""
    common.ensure_repo_on_path()
    from hydra import compose, initialize_config_dir

    import anomaly_gan.resolvers  # noqa: F401  (the ${ag.*} resolvers the configs use)

    overrides = [
        "data=mvtec",
        f"data.root={args.data_root}",
        f"data.category={args.dataset}",
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch}",
        f"data.cache_dir={cache_dir}",
    ]
    if args.num_workers is not None:
        overrides.append(f"data.num_workers={args.num_workers}")
    overrides += args.override
    with initialize_config_dir(version_base="1.3", config_dir=str(common.REPO / "conf")):
        return compose("train", overrides=overrides).data


class EpochTimer:
    """Lightning callback: wall time of each training epoch, images, and time in batches."""

    def __init__(self, device: str, prepare: Any) -> None:
        import lightning as L

        timer = self

        class _Callback(L.Callback):
            def on_train_epoch_start(self, *_: Any) -> None:
                common.sync(device)
                timer.epochs.append({"images": 0, "start": time.perf_counter(), "batch_s": []})

            def on_train_batch_start(self, _t: Any, _m: Any, batch: Any, *_: Any) -> None:
                prepare(batch)
                timer.epochs[-1]["images"] += len(batch["image"])
                common.sync(device)
                timer.batch_start = time.perf_counter()

            def on_train_batch_end(self, *_: Any) -> None:
                common.sync(device)
                timer.epochs[-1]["batch_s"].append(time.perf_counter() - timer.batch_start)

            def on_train_epoch_end(self, *_: Any) -> None:
                common.sync(device)
                timer.epochs[-1]["seconds"] = time.perf_counter() - timer.epochs[-1]["start"]

        self.epochs: list[dict[str, Any]] = []
        self.batch_start = 0.0
        self.callback = _Callback()


def trainer(args: argparse.Namespace, callback: Any, **options: Any) -> Any:
    import lightning as L

    return L.Trainer(
        accelerator="gpu" if common.is_cuda(args.device) else "cpu",
        devices=1,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback],
        **options,
    )


def loader_epoch(loader: Any) -> tuple[int, float]:
    start = time.perf_counter()
    images = sum(len(batch["image"]) for batch in loader)
    return images, time.perf_counter() - start


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import hydra
    import torch

    common.set_threads(args.threads)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def prepare(batch: dict[str, Any]) -> None:
        batch["image"] = batch["image"].contiguous(memory_format=memory_format)

    data_cfg = compose_data(args, work / "cache")
    dm = hydra.utils.instantiate(data_cfg, _convert_="all")
    channels = dm.resolve_channels()
    dm.setup("fit")
    batches_per_epoch = len(dm.train_dataloader())
    if args.max_batches:
        batches_per_epoch = min(batches_per_epoch, args.max_batches)
    if batches_per_epoch < 2:
        raise SystemExit(
            f"{args.dataset}: {len(dm.train_samples)} training images give {batches_per_epoch} "
            f"batch(es) of {args.batch} per epoch; use a smaller --batch or a larger set."
        )
    result: dict[str, Any] = {
        "overrides": args.override,
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "channels": channels,
        "dataset": args.dataset,
        "train_images": len(dm.train_samples),
        "batches_per_epoch": batches_per_epoch,
        "num_workers": data_cfg.num_workers,
        "pin_memory": data_cfg.pin_memory,
        "normalization": dm.normalization,
    }
    if args.loader_only:
        result["num_workers_used"] = dm.resolve_num_workers()  # no Trainer: CUDA if available
        result["loader_images_per_s"] = warm_loader_rate(dm)
        return result

    # (a) the step rate on synthetic in-memory batches, as bench/speed.py measures it.
    torch.manual_seed(0)
    model = common.build_model(args.model, args.size, channels, paper=True)
    model = model.to(memory_format=memory_format)
    loader = common.image_loader(args.size, args.batch, args.warmup + args.steps, channels)
    fit = common.fit_timed(
        model,
        loader,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        prepare_batch=prepare,
    )
    synthetic_batch_s = statistics.median(fit["batch_s"])
    result["synthetic_images_per_s"] = args.batch / synthetic_batch_s
    result["synthetic_batch_s"] = synthetic_batch_s
    print(f"  (a) synthetic: {result['synthetic_images_per_s']:.4g} images/s", flush=True)

    # (b) end to end: the real data module, the cache cold in epoch 1, warm afterwards.
    torch.manual_seed(0)
    model = common.build_model(args.model, args.size, channels, paper=True)
    model = model.to(memory_format=memory_format)
    timer = EpochTimer(args.device, prepare)
    epochs = 1 + args.warm_epochs
    fit_trainer = trainer(
        args,
        timer.callback,
        max_epochs=epochs,
        limit_train_batches=args.max_batches or None,
    )
    fit_trainer.fit(model, datamodule=dm)
    result["pin_memory_used"] = dm.resolve_pin_memory()
    result["num_workers_used"] = dm.resolve_num_workers()
    cold, warm = timer.epochs[0], timer.epochs[1:]
    images = sum(e["images"] for e in warm)
    seconds = sum(e["seconds"] for e in warm)
    in_batches = sum(sum(e["batch_s"]) for e in warm)
    result.update(
        cold_epoch_images_per_s=cold["images"] / cold["seconds"],
        warm_epochs=len(warm),
        end_to_end_images_per_s=images / seconds,
        end_to_end_median_batch_s=statistics.median([s for e in warm for s in e["batch_s"]]),
        outside_batches_share=1 - in_batches / seconds,
    )
    result["ratio"] = result["end_to_end_images_per_s"] / result["synthetic_images_per_s"]
    print(
        f"  (b) end to end: {result['end_to_end_images_per_s']:.4g} images/s over "
        f"{len(warm)} warm epoch(s) (cold epoch: {result['cold_epoch_images_per_s']:.4g}); "
        f"ratio {result['ratio']:.1%}",
        flush=True,
    )
    del fit_trainer, model

    result["loader_images_per_s"] = warm_loader_rate(dm)
    return result


def warm_loader_rate(dm: Any) -> float:
    """(c) The train loader alone: a fresh loader, one epoch to fill the caches (disk, then
    its workers' memory), then one timed. Images/s."""
    loader = dm.train_dataloader()
    loader_epoch(loader)
    loaded, seconds = loader_epoch(loader)
    rate = loaded / seconds
    print(f"  (c) loader alone (warm): {rate:.4g} images/s", flush=True)
    return rate


def markdown(data: dict[str, Any]) -> str:
    r, options = data["result"], data["options"]
    verdict = "meets" if r["ratio"] >= GOAL else "misses"
    description = (
        f"`bench/data_feed.py`: `model={r['model']}_paper`, {r['size']} px, batch {r['batch']}, "
        f"device {options['device']}, precision {options['precision']}, channels-last "
        f"{options['channels_last']}. Real images: `{r['dataset']}` "
        f"({r['train_images']} training images, {r['channels']} channel(s), normalisation "
        f"{r['normalization']}, "
        f"{r['batches_per_epoch']} batches per epoch) through `data=mvtec` "
        f"(num_workers {r['num_workers']} -> {r['num_workers_used']}, pin_memory "
        f"{'null' if r['pin_memory'] is None else r['pin_memory']} -> {r['pin_memory_used']}), "
        "decoded-image cache warm after the "
        "first epoch; "
        f"validation off. (a) median batch of {options['steps']} timed steps after "
        f"{options['warmup']} warm-up on random in-memory images; (b) images / wall time of "
        f"{r['warm_epochs']} warm epoch(s), epoch boundaries and loader waits included; "
        "(c) the train loader alone, warm."
    )
    rows = [
        ["(a) Trainer.fit, synthetic in-memory batches", f"{r['synthetic_images_per_s']:.4g}"],
        ["(b) Trainer.fit, real images, cache warm", f"{r['end_to_end_images_per_s']:.4g}"],
        [
            "(b) its median batch (the step without the waits between batches)",
            f"{r['batch'] / r['end_to_end_median_batch_s']:.4g}",
        ],
        ["(b) first epoch, cache cold (not in the ratio)", f"{r['cold_epoch_images_per_s']:.4g}"],
        ["(c) train loader alone, cache warm (no model)", f"{r['loader_images_per_s']:.4g}"],
    ]
    summary = (
        f"Ratio (b) / (a): **{r['ratio']:.1%}** ({verdict} the >= {GOAL:.0%} goal); "
        f"{r['outside_batches_share']:.1%} of the warm epochs' wall time is outside the "
        "batches (waiting for the loader, epoch boundaries); loader alone / step rate: "
        f"{r['loader_images_per_s'] / r['synthetic_images_per_s']:.1f}x."
    )
    return "\n".join(
        [
            common.machine_line(data["machine"]),
            "",
            description,
            "",
            common.table(["what", "images/s"], rows),
            "",
            summary,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ganomaly", choices=common.model_names())
    parser.add_argument("--size", type=int, default=64, help="data.image_size")
    parser.add_argument("--dataset", default="magnetic_tile", help="data.category")
    parser.add_argument(
        "--data-root", type=Path, default=SHARED_DATA, help=f"data.root (default {SHARED_DATA})"
    )
    parser.add_argument(
        "--num-workers", default=None, help="data.num_workers: N or auto (default: conf/data)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warm-epochs", type=int, default=1, help="timed epochs after the first")
    parser.add_argument(
        "--max-batches", type=int, default=0, help="batches per epoch (0: the whole set)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further Hydra override of the data config (data.normalization=fixed); repeatable",
    )
    parser.add_argument(
        "--loader-only",
        action="store_true",
        help="(c) only: how fast the warm train loader delivers, no model; never recorded",
    )
    common.add_timing_arguments(parser, batch=32, warmup=1, steps=5)
    args = parser.parse_args()
    if not (args.data_root / args.dataset / "train").is_dir():
        parser.error(
            f"no MVTec-layout set at {args.data_root / args.dataset} (expected train/good/): "
            "set --data-root and --dataset"
        )
    if args.warm_epochs < 1:
        parser.error("--warm-epochs must be >= 1: the warm epochs are the ones timed")

    info = common.machine(args.device, args.threads)
    print(common.machine_line(info), flush=True)
    work = Path(tempfile.mkdtemp(prefix="anomaly_gan_data_feed_"))
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.loader_only:
        return 0
    options = {
        key: getattr(args, key)
        for key in ("device", "precision", "channels_last", "warmup", "steps", "threads")
    }
    data = {"machine": info, "options": options, "result": result}
    name = f"data_feed_{args.device.split(':')[0]}"
    title = f"Data feed: synthetic step rate vs end-to-end Trainer.fit ({name.split('_')[-1]})"
    common.publish(name, title, data, markdown(data), args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
