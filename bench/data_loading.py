"""Loading speed: a cold epoch (decode 1024 px PNGs) against warm epochs (decoded-image cache).

Writes ``--n`` PNGs of ``--size`` px (a woven texture, so they compress like real photos) in
MVTec layout to a temporary folder, then times epochs through the real ``MVTecDataModule``
train loader:

- cold: empty cache, every image is decoded and resized (and written to the disk cache);
- warm (memory): the same loader again, persistent workers, in-memory cache;
- warm (disk): a fresh datamodule and loader, empty memory, arrays read from the disk cache
  (what a second run, or a worker that has not seen an image yet, gets).

Usage::

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/data_loading.py [--num-workers 2]

Exit status 1 if the warm (memory) epoch is not at least ``--min-speedup`` times faster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly_gan.data import MVTecDataModule
from anomaly_gan.data.synthetic import _woven_texture

CATEGORY = "bench"


def write_pngs(root: Path, n: int, size: int) -> int:
    """``n`` colour PNGs in ``root/bench/train/good`` (+1 test image); returns total bytes."""
    train = root / CATEGORY / "train" / "good"
    test = root / CATEGORY / "test" / "good"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    total = 0
    for index in range(n + 1):
        texture, _ = _woven_texture(np.random.default_rng(index), size)
        pixels = np.clip(np.round(texture * 255), 0, 255).astype(np.uint8)[:, :, ::-1]
        path = (train / f"{index:03d}.png") if index < n else (test / "000.png")
        if not cv2.imwrite(str(path), pixels):
            raise OSError(f"could not write {path}")
        total += path.stat().st_size
    return total


def epoch(loader) -> tuple[int, float]:
    start = time.perf_counter()
    images = sum(len(batch["image"]) for batch in loader)
    return images, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="number of PNGs")
    parser.add_argument("--size", type=int, default=1024, help="side of the PNGs in px")
    parser.add_argument("--image-size", type=int, default=64, help="data.image_size")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--min-speedup", type=float, default=5.0)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: temp)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="anomaly_gan_bench_", dir=args.dir))
    try:
        data, cache = work / "data", work / "cache"
        started = time.perf_counter()
        size_bytes = write_pngs(data, args.n, args.size)
        print(
            f"wrote {args.n} PNGs of {args.size}x{args.size} px ({size_bytes / 2**20:.1f} MiB) "
            f"in {time.perf_counter() - started:.1f} s; image_size={args.image_size}, "
            f"channels={args.channels}, batch_size={args.batch_size}, "
            f"num_workers={args.num_workers}, CPUs={os.cpu_count()}"
        )

        def datamodule() -> MVTecDataModule:
            dm = MVTecDataModule(
                root=str(data),
                category=CATEGORY,
                image_size=args.image_size,
                channels=args.channels,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                val_fraction=0.0,
                cache_dir=str(cache),
            )
            dm.setup()
            return dm

        loader = datamodule().train_dataloader()
        rows = [("cold (decode + resize)", *epoch(loader))]
        rows.append(("warm (memory cache)", *epoch(loader)))
        rows.append(("warm (memory cache)", *epoch(loader)))
        del loader
        fresh = datamodule().train_dataloader()
        rows.append(("warm (disk cache, new loader)", *epoch(fresh)))
        del fresh

        print(f"{'epoch':<30} {'images':>6} {'seconds':>8} {'images/s':>10}")
        for name, images, seconds in rows:
            print(f"{name:<30} {images:>6} {seconds:>8.3f} {images / seconds:>10.1f}")
        cold_rate = rows[0][1] / rows[0][2]
        warm_rate = max(rows[1][1] / rows[1][2], rows[2][1] / rows[2][2])
        disk_rate = rows[3][1] / rows[3][2]
        speedup = warm_rate / cold_rate
        print(
            f"speed-up warm/cold: {speedup:.1f}x (memory), {disk_rate / cold_rate:.1f}x (disk); "
            f"target >= {args.min_speedup:g}x: {'OK' if speedup >= args.min_speedup else 'MISSED'}"
        )
        return 0 if speedup >= args.min_speedup else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
