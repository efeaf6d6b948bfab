"""Half-size copies of real sets in MVTec layout, small enough to travel to a borrowed GPU.

    python bench/gpu_check_data.py ../shared/data .gpu/data magnetic_tile elpv ...

``bench/gpu_check.sh`` (``CHECK=length``) trains on the four real sets on a GPU machine, but
only 64 MiB of files may travel with the working tree and the four sets take 113 MB. Every
image is shrunk by 2 with area averaging (what the data modules' INTER_AREA resize does) and
every mask by nearest neighbour, kept binary; names and folders stay, so the copy reads with
``data.root=<copy>`` like the original. A file whose shorter side would fall below
``--min-side`` (default 64, the default image size) is copied unchanged.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from anomaly_gan.data.mvtec import IMAGE_EXTENSIONS  # the data modules' list


def shrink(source: Path, target: Path, *, mask: bool, min_side: int) -> None:
    flags = cv2.IMREAD_GRAYSCALE if mask else cv2.IMREAD_UNCHANGED
    image = cv2.imread(str(source), flags)
    if image is None:
        raise SystemExit(f"{source}: not an image cv2 can read")
    height, width = image.shape[:2]
    if min(height, width) // 2 < min_side:
        shutil.copy2(source, target)
        return
    size = (width // 2, height // 2)
    if mask:
        small = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
        small = np.where(small > 127, 255, 0).astype(np.uint8)
    else:
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(target), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def copy_half_size(root: Path, out: Path, name: str, *, min_side: int = 64) -> int:
    """Copy the set ``root/name`` to ``out/name`` at half size; returns the files copied."""
    source_set = root / name
    if not (source_set / "train").is_dir():
        raise SystemExit(f"{source_set}: no such set (expected <root>/<set>/train/good)")
    files = [p for p in sorted(source_set.rglob("*")) if p.is_file()]
    for source in files:
        relative = source.relative_to(source_set)
        target = out / name / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix.lower() in IMAGE_EXTENSIONS:
            shrink(source, target, mask="ground_truth" in relative.parts, min_side=min_side)
        else:
            shutil.copy2(source, target)
    return len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder holding the sets (../shared/data)")
    parser.add_argument("out", type=Path, help="folder the half-size sets go to")
    parser.add_argument("sets", nargs="+")
    parser.add_argument("--min-side", type=int, default=64)
    args = parser.parse_args()
    for name in args.sets:
        count = copy_half_size(args.root, args.out, name, min_side=args.min_side)
        print(f"{name}: {count} files -> {args.out / name}")


if __name__ == "__main__":
    main()
