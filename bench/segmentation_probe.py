"""Does a defect segmenter trained on synthetic defects beat the no-learning reference?

A probe of DRAEM's discriminative idea (Zavrtanik, Kristan, Skočaj, "DRAEM — A
discriminatively trained reconstruction embedding for surface anomaly detection", ICCV
2021, Sec. 3.2) at this project's CPU budget: a small U-Net takes an image and its
reconstruction, and learns to segment the synthetic defects of :mod:`anomaly_gan.corruption`
pasted into training normals (focal loss). The reconstruction is, with ``--input
image+pca``, the PCA reconstruction of the reference (fitted on the training normals); with
``--input image+gan``, that of a trained generator, frozen (``--run-dir``: a ``train.py`` run
folder of the same data set and seed, whose ``results.json`` names the checkpoint it
tested); with ``--input image``, none. The image score is the maximum of its
5 × 5-averaged defect probability, as in DRAEM. Nothing here sees a test label before the
AUROC is computed; the test images are the *selection* part, as in every lever study.

    python bench/segmentation_probe.py --category magnetic_tile --iterations 1000
    python bench/segmentation_probe.py --category elpv --input image+gan --run-dir RUN

Compare its AUROC with the PCA reference of ``bench/quality.py`` on the same part.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchmetrics.functional.classification import binary_auroc  # noqa: E402

from anomaly_gan.corruption import SyntheticDefects  # noqa: E402
from anomaly_gan.evaluation.reference import PcaReconstruction, stack_loader  # noqa: E402
from anomaly_gan.models.checkpoint import load_model  # noqa: E402

#: PCA size of the reconstruction input (the reference chooses 256 on the larger grey sets).
PCA_COMPONENTS = 256


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, padding=1),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class DefectSegmenter(nn.Module):
    """A three-level U-Net that maps its input to one defect logit per pixel."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.level1 = _block(channels, width)
        self.level2 = _block(width, 2 * width)
        self.level3 = _block(2 * width, 4 * width)
        self.up2 = _block(6 * width, 2 * width)
        self.up1 = _block(3 * width, width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        level1 = self.level1(image)
        level2 = self.level2(F.max_pool2d(level1, 2))
        level3 = self.level3(F.max_pool2d(level2, 2))
        up = self.up2(torch.cat([F.interpolate(level3, scale_factor=2), level2], 1))
        up = self.up1(torch.cat([F.interpolate(up, scale_factor=2), level1], 1))
        return self.head(up)


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    probability = torch.sigmoid(logits)
    correct = torch.where(target > 0, probability, 1 - probability)
    return ((1 - correct) ** gamma * bce).mean()


def probe_datamodule(
    root: Path, category: str, selection_fraction: float, seed: int, test_part: str = "selection"
) -> Any:
    """The data module ``python train.py data=mvtec seed=<seed>`` builds (its defaults; the
    split follows the seed, as in ``bench/quality.py``), set up for fit and test on the
    selection part (or ``test_part``: the report part, only to report a choice made)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import anomaly_gan.resolvers  # noqa: F401  (the ${ag.*} resolvers the configs use)

    overrides = [
        "data=mvtec",
        f"data.root={root}",
        f"data.category={category}",
        f"data.selection_fraction={selection_fraction}",
        f"data.test_part={test_part}",
        "data.num_workers=0",
        f"seed={seed}",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        datamodule = instantiate(compose("train", overrides=overrides).data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    return datamodule


def load(
    root: Path, category: str, selection_fraction: float, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Training normals, selection-part test images and their labels
    (:func:`probe_datamodule`), so a probe and ``bench/quality.py`` compare on the same
    images."""
    datamodule = probe_datamodule(root, category, selection_fraction, seed)
    train = stack_loader(DataLoader(datamodule._dataset(datamodule.train_samples), batch_size=64))
    test_loader = datamodule.test_dataloader()
    test_loader = test_loader[0] if isinstance(test_loader, list) else test_loader
    test_images, test_labels, _ = stack_loader(test_loader)
    return train[0], test_images, test_labels


def reconstruction(args: argparse.Namespace, train: Tensor) -> Callable[[Tensor], Tensor] | None:
    """What the segmenter compares the image with (``--input``)."""
    if args.input == "image+pca":
        return PcaReconstruction(train, PCA_COMPONENTS)
    if args.input == "image":
        return None
    results_file = args.run_dir / "results.json"
    results = json.loads(results_file.read_text())
    config = results.get("config", {})
    trained_on = (config.get("category"), config.get("seed"), config.get("image_size"))
    probed = (args.category, args.seed, train.shape[-1])
    if trained_on != probed:
        raise SystemExit(
            f"{results_file}: trained on {trained_on} (category, seed, image_size); this probe "
            f"tests {probed} (data=mvtec defaults): pass a run of the same set, seed and size"
        )
    model = load_model(results["checkpoint"]["path"]).model
    return lambda images: model.generate(images).reconstruction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--category", required=True)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--input", choices=("image", "image+pca", "image+gan"), default="image+pca")
    parser.add_argument("--run-dir", type=Path, help="with --input image+gan: a train.py run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--selection-fraction", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=None, help="append the result (JSON line)")
    args = parser.parse_args()
    if args.input == "image+gan" and not (
        args.run_dir and (args.run_dir / "results.json").is_file()
    ):
        parser.error(
            f"--input image+gan needs --run-dir RUN with RUN/results.json (got {args.run_dir})"
        )

    torch.manual_seed(args.seed)
    train, test_images, test_labels = load(
        args.root, args.category, args.selection_fraction, args.seed
    )
    reconstruct = reconstruction(args, train)

    def network_input(images: Tensor) -> Tensor:
        if reconstruct is None:
            return images
        with torch.no_grad():
            return torch.cat([images, reconstruct(images)], dim=1)

    channels = train.shape[1] * (1 if reconstruct is None else 2)
    segmenter = DefectSegmenter(channels)
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=1e-3)
    defects = SyntheticDefects(probability=0.5)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    for _ in range(args.iterations):
        clean = train[torch.randint(0, len(train), (32,), generator=generator)]
        corrupted = defects(clean, generator)
        target = ((corrupted - clean).abs().amax(1, keepdim=True) > 0.02).float()
        loss = focal_loss(segmenter(network_input(corrupted)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    segmenter.eval()
    with torch.no_grad():
        scores = torch.cat(
            [
                F.avg_pool2d(torch.sigmoid(segmenter(network_input(chunk))), 5, 1, 2)
                .flatten(1)
                .amax(1)
                for chunk in test_images.split(64)
            ]
        )
    result = {
        "category": args.category,
        "input": args.input,
        **({"run_dir": str(args.run_dir)} if args.input == "image+gan" else {}),
        "iterations": args.iterations,
        "seed": args.seed,
        "image_auroc": round(binary_auroc(scores, test_labels.int()).item(), 4),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    if args.out:
        with args.out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
