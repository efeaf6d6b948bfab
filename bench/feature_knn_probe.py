"""Do the discriminator's features find defects that the reconstruction recipe misses?

Every score so far compares an image with a reconstruction, and the GANs' reconstructions
land within a few hundredths of a PCA's. A GAN also trains a second network, the
discriminator, whose features are learnt from the normals. This probe scores an image by
how far each of its local feature vectors lies from the nearest one of the training normals
(a memory bank; Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR
2022, Sec. 3: mid-level maps, 3 × 3 neighbourhood averaging, nearest-neighbour distance,
the image score the largest patch distance), with three feature sources:

- ``discriminator``: a trained run's discriminator (``--run-dir``; frozen, eval mode),
- ``discriminator-untrained``: the same architecture at its initialisation (what the
  features give without learning: the honest reference of this score),
- ``encoder`` / ``encoder-untrained``: the generator's encoder (GANomaly's DCGAN encoder,
  the U-Nets' down paths, MIFE's / the Baseline's encoder), trained / initial,
- ``pixels``: raw ``size/8``-pixel patches at half-patch stride (no network at all).

Where the run kept its per-image scores, the probe also reports the run's own AUROC and that
of the two scores' rank average over the test images (whether they miss different images).

Nothing sees a test label before the AUROC; the test images are the *selection* part, as in
every lever study (``bench/segmentation_probe.py`` loads the same images).

    python bench/feature_knn_probe.py --run-dir RUN --out bench/results/feature_knn.jsonl
    python bench/feature_knn_probe.py --summarize bench/results/feature_knn.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import emit_row  # noqa: E402
from segmentation_probe import probe_datamodule  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchmetrics.functional.classification import binary_auroc  # noqa: E402

from anomaly_gan.evaluation.image_scores import read_image_scores  # noqa: E402
from anomaly_gan.evaluation.reference import stack_loader  # noqa: E402
from anomaly_gan.feature_memory import local_features  # noqa: E402
from anomaly_gan.models.checkpoint import load_model  # noqa: E402

#: Largest memory bank kept (a random subset of the training patches beyond it).
MAX_BANK = 40_000
SOURCES = (
    "discriminator",
    "discriminator-untrained",
    "encoder",
    "encoder-untrained",
    "pixels",
)


def discriminator_features(discriminator: nn.Module, images: Tensor) -> Tensor:
    """The discriminator's activated maps at 1/4 and 1/8 of the input size, joined as the
    framework's feature memory joins the encoder's (:func:`local_features`)."""
    maps: list[Tensor] = []
    current = images
    for layer in discriminator.features:
        current = layer(current)
        if isinstance(layer, nn.LeakyReLU):
            maps.append(current)
    return local_features(maps, images.shape[-1])


def encoder_features(generator: nn.Module, images: Tensor) -> Tensor:
    """The generator encoder's features of the framework's feature memory
    (``encoder_maps`` of every generator, :func:`local_features`)."""
    side = images.shape[-1]
    return local_features(generator.encoder_maps(images, side // 8), side)


def pixel_patches(images: Tensor) -> Tensor:
    """Raw patches of side size/8 at half-patch stride as (B, C·p², H', W') maps."""
    patch = max(images.shape[-1] // 8, 2)
    unfolded = F.unfold(images, patch, stride=patch // 2)
    side = (images.shape[-1] - patch) // (patch // 2) + 1
    return unfolded.view(images.shape[0], -1, side, side)


def as_vectors(feature_maps: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H·W, C)."""
    return feature_maps.flatten(2).transpose(1, 2)


def nearest_distances(queries: Tensor, bank: Tensor, chunk: int = 4096) -> Tensor:
    """Distance of every query vector (N, C) to its nearest bank vector (M, C)."""
    return torch.cat([torch.cdist(part, bank).amin(1) for part in queries.split(chunk)])


def score_images_in_place(extract, train: Tensor, test: Tensor) -> Tensor:
    """Largest nearest-neighbour distance per test image, each patch matched only against the
    training patches at the same position (where in the image a pattern belongs counts)."""
    with torch.no_grad():
        bank = torch.cat([as_vectors(extract(chunk)) for chunk in train.split(64)])  # (N, P, C)
        bank = bank.transpose(0, 1).contiguous()  # (P, N, C)
        scores = []
        for chunk in test.split(16):
            vectors = as_vectors(extract(chunk)).transpose(0, 1)  # (P, B, C)
            distances = torch.cdist(vectors, bank).amin(2)  # (P, B)
            scores.append(distances.amax(0))
    return torch.cat(scores)


def score_images(extract, train: Tensor, test: Tensor, generator: torch.Generator) -> Tensor:
    """Largest nearest-neighbour patch distance per test image."""
    with torch.no_grad():
        bank = torch.cat([as_vectors(extract(chunk)).flatten(0, 1) for chunk in train.split(64)])
        if len(bank) > MAX_BANK:
            bank = bank[torch.randperm(len(bank), generator=generator)[:MAX_BANK]]
        scores = []
        for chunk in test.split(16):
            vectors = as_vectors(extract(chunk))
            distances = nearest_distances(vectors.flatten(0, 1), bank)
            scores.append(distances.view(vectors.shape[0], -1).amax(1))
    return torch.cat(scores)


def ranks(scores: Tensor) -> Tensor:
    """Each score's rank among the test images, in [0, 1]."""
    return scores.double().argsort().argsort().double() / max(len(scores) - 1, 1)


def run_scores(run_dir: Path, category: str, labels: Tensor) -> Tensor | None:
    """The run's own per-image scores of the same test images (``scores/<set>.csv``), or None
    where the run kept none; refused when its labels are not the probe's, image by image."""
    path = run_dir / "scores" / f"{category}.csv"
    if not path.is_file():
        return None
    table = read_image_scores(path)
    if not torch.equal(table.labels, labels.long()):
        raise SystemExit(f"{path}: its images are not the probe's (labels differ in order)")
    return table.scores


def summarize(path: Path) -> None:
    """One Markdown table per model: per set, the mean over seeds of each feature source and
    match, beside the runs' own AUROC and their better reference."""
    everything = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for model in sorted({row["model"] for row in everything}):
        print(f"\n{model}\n")
        summarize_rows([row for row in everything if row["model"] == model])


def summarize_rows(rows: list[dict]) -> None:
    """The table of :func:`summarize` for one model's rows."""
    sets = sorted({row["category"] for row in rows})
    references = {}
    for row in rows:
        results = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        reference = results["categories"][row["category"]]["reference"]
        references[row["run_dir"]] = max(reference["mean"]["auroc"], reference["pca"]["auroc"])

    def mean(values: list[float]) -> str:
        return f"{sum(values) / len(values):.3f}" if values else "–"

    print("| score (mean over runs) | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    runs = {c: {r["run_dir"] for r in rows if r["category"] == c} for c in sets}
    print(
        "| better reference (recipe on mean / PCA) | "
        + " | ".join(mean([references[run] for run in runs[c]]) for c in sets)
        + " |"
    )
    own = {(r["category"], r["run_dir"]): r.get("run_auroc") for r in rows}
    print(
        "| the runs' own score | "
        + " | ".join(
            mean([v for (c, _), v in own.items() if c == category and v is not None])
            for category in sets
        )
        + " |"
    )
    for source, match in sorted({(r["source"], r["match"]) for r in rows}):
        for key, label in (
            ("image_auroc", ""),
            ("rank_sum_auroc", " + the run's own (test ranks)"),
            ("val_sum_auroc", " + the run's own (validation-standardised)"),
        ):
            cells = [
                mean(
                    [
                        r[key]
                        for r in rows
                        if r["category"] == c
                        and (r["source"], r["match"]) == (source, match)
                        and key in r
                    ]
                )
                for c in sets
            ]
            print(f"| {source}, {match}{label} | " + " | ".join(cells) + " |")


def standardized(scores: Tensor, normals: Tensor) -> Tensor:
    """Scores in units of the validation normals' spread (label-free, as the companion)."""
    return (scores - normals.mean()) / normals.std().clamp_min(1e-12)


def model_scores(model: nn.Module, images: Tensor) -> Tensor:
    """The trained model's own image scores (its recipe, companion included)."""
    with torch.no_grad():
        return torch.cat([model.score(chunk)[0] for chunk in images.split(64)])


def main() -> None:
    if sys.argv[1:2] == ["--summarize"]:
        summarize(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--run-dir", type=Path, required=True, help="a train.py run folder")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument(
        "--match",
        nargs="+",
        choices=("anywhere", "in-place"),
        default=["anywhere", "in-place"],
        help="match each patch against training patches anywhere, or at its own position",
    )
    parser.add_argument("--selection-fraction", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=None, help="append results (JSON lines)")
    args = parser.parse_args()
    results_file = args.run_dir / "results.json"
    if not results_file.is_file():
        parser.error(f"--run-dir {args.run_dir}: no results.json there (a train.py run folder)")
    results = json.loads(results_file.read_text())
    config = results.get("config", {})
    category, seed = config.get("category"), config.get("seed")
    trained = load_model(results["checkpoint"]["path"]).model
    datamodule = probe_datamodule(args.root, category, args.selection_fraction, seed)
    train = stack_loader(DataLoader(datamodule._dataset(datamodule.train_samples), batch_size=64))[
        0
    ]
    val_images = stack_loader(datamodule.val_dataloader())[0]
    test_loader = datamodule.test_dataloader()
    test_loader = test_loader[0] if isinstance(test_loader, list) else test_loader
    test_images, test_labels, _ = stack_loader(test_loader)
    # The run's own score of the validation normals, to put it on the same footing as the
    # feature score in the label-free sum (its test scores must reproduce the run's).
    own_val, own_test = model_scores(trained, val_images), model_scores(trained, test_images)
    if train.shape[-1] != config.get("image_size"):
        raise SystemExit(f"{results_file}: image size differs from the data=mvtec default")
    untrained = type(trained)(**trained.hparams)
    torch.manual_seed(seed)
    untrained.init_weights()
    untrained.eval()
    extractors = {
        "discriminator": lambda x: discriminator_features(trained.discriminator, x),
        "discriminator-untrained": lambda x: discriminator_features(untrained.discriminator, x),
        "pixels": pixel_patches,
    }
    if hasattr(trained.generator, "encoder_maps"):  # every generator but AnoGAN's
        extractors["encoder"] = lambda x: encoder_features(trained.generator, x)
        extractors["encoder-untrained"] = lambda x: encoder_features(untrained.generator, x)
    sources = [source for source in args.sources if source in extractors]
    own = run_scores(args.run_dir, category, test_labels)
    if own is not None and not torch.allclose(own.float(), own_test.float(), rtol=1e-3, atol=1e-4):
        raise SystemExit(f"{args.run_dir}: the reloaded model does not reproduce its scores")
    queries = torch.cat([test_images, val_images])
    for source, match in itertools.product(sources, args.match):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        if match == "in-place":
            both = score_images_in_place(extractors[source], train, queries)
        else:
            both = score_images(extractors[source], train, queries, generator)
        scores, val_scores = both[: len(test_images)], both[len(test_images) :]
        summed = standardized(own_test, own_val) + standardized(scores, val_scores)
        result = {
            "category": category,
            "seed": seed,
            "model": type(trained).__name__,
            "run_dir": str(args.run_dir),
            "source": source,
            "match": match,
            "image_auroc": round(binary_auroc(scores, test_labels.int()).item(), 4),
            "n_validation": len(val_images),
            # Deployable: each score standardised by the validation normals', then summed.
            "val_sum_auroc": round(binary_auroc(summed, test_labels.int()).item(), 4),
            **(
                {
                    "run_auroc": round(binary_auroc(own, test_labels.int()).item(), 4),
                    # Label-free but transductive (ranks among the test images): a probe of
                    # whether the two scores miss different images, not a deployable score.
                    "rank_sum_auroc": round(
                        binary_auroc(ranks(own) + ranks(scores), test_labels.int()).item(), 4
                    ),
                }
                if own is not None
                else {}
            ),
            "seconds": round(time.perf_counter() - started, 1),
        }
        emit_row(result, args.out)


if __name__ == "__main__":
    main()
