"""The no-learning reference every run is measured against.

A GAN detector earns its keep only if it beats the same score recipe applied to a
reconstruction that involves no learning at all. Two such reconstructions are built from
the *training normals* alone:

- ``mean``: every image is "reconstructed" as the mean training image;
- ``pca``: every image is reconstructed from its projection onto the top ``k`` principal
  directions of the training normals, ``k`` the largest candidate below their number
  (:func:`fit_pca` says why).

Both are scored by a copy of the model's own scorer (same map norm, smoothing, per-pixel
standardisation by validation normals, pooling; its latent term has no counterpart here and
is left out), at the model's resolution, normalisation and image pre-processing, since the
images come from the same data module. With ``data.resize=tile`` the PCA works on tiles as
the model does: it is fitted on tiles of the training frames and reconstructs every tile of
a frame, stitched like the model's (:mod:`anomaly_gan.tiling`); the mean image is the mean
whole frame. Where the model sums a PCA companion or a feature memory into its score, the
block also holds the same sums with no-learning parts in the model's place (the mean image
for the generator, an untrained encoder for the trained one), and the better reference is
the best of them all. ``lift = model AUROC - better reference AUROC`` says at once whether
the GAN learnt something the recipe alone does not give.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from anomaly_gan.evaluation.localization import pixel_metrics
from anomaly_gan.evaluation.metrics import image_metrics
from anomaly_gan.nets.pca import PcaReconstruction
from anomaly_gan.scoring import AnomalyScore, threshold_from_normals
from anomaly_gan.tiling import TileLayout, split_tiles, stitch_tiles

if TYPE_CHECKING:
    from anomaly_gan.feature_memory import UntrainedMemory

#: Candidate PCA sizes; those >= the number of training normals are dropped.
PCA_COMPONENTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Seed of the subset of training tiles the tiled PCA is fitted on (reproducible).
TILE_SUBSET_SEED = 0
#: How ``k`` is chosen, as ``results.json`` says (:func:`fit_pca`).
K_CHOSEN_BY = (
    "the largest candidate below the number of training normals (tiles): the validation "
    "normals' reconstruction error falls with every direction added"
)
#: Images per chunk when maps are computed (bounds memory at large image sizes).
CHUNK = 64
#: Image metrics each reference reports.
IMAGE_KEYS = ("auroc", "average_precision", "f1", "recall")
#: Where the test set has masks: how well the map the model shows localises.
PIXEL_KEYS = ("pixel_auroc", "aupro")
#: At most this many training tiles fit the tiled PCA (a seeded subset; bounds its N×N Gram).
MAX_PCA_TILES = 2048


class MeanReconstruction:
    """Reconstructs every image as the mean training image."""

    def __init__(self, train: Tensor) -> None:
        self.mean = train.mean(dim=0, keepdim=True)  # (1, C, H, W)

    def __call__(self, images: Tensor) -> Tensor:
        return self.mean.to(images.dtype).expand_as(images)


class TiledReconstruction:
    """A reconstruction of ``tile`` × ``tile`` inputs applied to every tile of larger frames
    and stitched back (overlaps averaged), as the model scores ``data.resize=tile`` frames."""

    def __init__(self, inner: PcaReconstruction, tile: int) -> None:
        self.inner = inner
        self.tile = tile

    def __call__(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) == (self.tile, self.tile):
            return self.inner(images)
        layout = TileLayout.for_frame(images.shape[-2], images.shape[-1], self.tile)
        return stitch_tiles(self.inner(split_tiles(images, layout)), layout)


def training_tiles(frames: Tensor, tile: int) -> Tensor:
    """Every tile of ``frames`` (the frames themselves when they are tiles), at most
    :data:`MAX_PCA_TILES` of them (a seeded subset)."""
    if tuple(frames.shape[-2:]) == (tile, tile):
        return frames
    tiles = split_tiles(frames, TileLayout.for_frame(frames.shape[-2], frames.shape[-1], tile))
    if tiles.shape[0] > MAX_PCA_TILES:
        generator = torch.Generator().manual_seed(TILE_SUBSET_SEED)
        keep = torch.randperm(tiles.shape[0], generator=generator)[:MAX_PCA_TILES]
        tiles = tiles[keep.sort().values]
    return tiles


def reference_scorer(scorer_config: dict[str, Any]) -> AnomalyScore:
    """The model's scorer without its latent term (a fixed reconstruction has no latent code)."""
    config = {key: value for key, value in dict(scorer_config).items() if key != "_target_"}
    config.update(latent_weight=0.0, reconstruction_weight=1.0)
    return AnomalyScore.from_config(config)


def stack_loader(loader: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """Every image (N, C, H, W), label (N,) and defect mask (N, 1, H, W; None when the
    loader yields none) a loader yields."""
    images, labels, masks = [], [], []
    for batch in loader:
        images.append(batch["image"])
        labels.append(batch["label"])
        if "mask" in batch:
            masks.append(batch["mask"])
    return torch.cat(images), torch.cat(labels), torch.cat(masks) if masks else None


#: What a data module needs for :func:`normal_images`: its sample lists and dataset factory.
NORMAL_IMAGE_ATTRIBUTES = ("train_samples", "val_samples", "_dataset")


def lists_normal_images(datamodule: Any) -> bool:
    """Whether ``datamodule`` is one of the project's data modules, which list their normal
    images (plain DataLoaders do not)."""
    return all(hasattr(datamodule, name) for name in NORMAL_IMAGE_ATTRIBUTES)


def _images_of(datamodule: Any, samples: list[Any]) -> Tensor:
    """The images (N, C, H, W) of ``samples``, without augmentation, after checking that
    ``datamodule`` is one of the project's data modules (which list their normal images)."""
    for name in NORMAL_IMAGE_ATTRIBUTES:
        if not hasattr(datamodule, name):
            raise TypeError(
                f"{type(datamodule).__name__} has no {name}: the no-learning reference and "
                "model.companion need one of anomaly_gan.data's data modules (data=mvtec, "
                "folder, visa, kolektor, synthetic), which list their normal images."
            )
    return stack_loader(DataLoader(datamodule._dataset(samples), batch_size=CHUNK))[0]


def training_normals(datamodule: Any) -> Tensor:
    """The training normals (N, C, H, W) of one of the project's data modules."""
    return _images_of(datamodule, getattr(datamodule, "train_samples", []))


def normal_images(datamodule: Any) -> tuple[Tensor, Tensor]:
    """The training normals and the validation normals (the training normals when there
    are none) of one of the project's data modules, (N, C, H, W) each, without augmentation."""
    train = training_normals(datamodule)
    validation = datamodule.val_samples
    return train, _images_of(datamodule, validation) if validation else train


def _error_maps(scorer: AnomalyScore, reconstruct: Any, images: Tensor) -> Tensor:
    """The scorer's raw error maps (N, 1, H, W) of ``images`` against ``reconstruct(images)``."""
    return torch.cat([scorer.error_map(chunk, reconstruct(chunk)) for chunk in images.split(CHUNK)])


def _calibrated(
    scorer_config: dict[str, Any], reconstruct: Any, normals: Tensor, quantile: float
) -> tuple[AnomalyScore, Tensor]:
    """A reference scorer calibrated on ``normals`` exactly as a model's is on validation,
    and its scores of the normals the calibration held out (:meth:`AnomalyScore.calibrate`)."""
    scorer = reference_scorer(scorer_config)
    maps = _error_maps(scorer, reconstruct, normals)
    return scorer, scorer.calibrate(maps, maps.new_zeros(maps.shape[0]), quantile)


def fit_pca(train: Tensor, tile: int | None = None) -> PcaReconstruction:
    """The PCA reconstruction of the training normals with the largest candidate ``k``
    (:data:`PCA_COMPONENTS`) below their number.

    The choice needs no labels and no synthetic defects: the validation normals'
    reconstruction error falls with every direction added (the subspaces are nested), so a
    choice on it is always the largest ``k``; and on four real sets, leaving one set out,
    the largest ``k`` lost less against the best ``k`` than choosing on any kind of pasted
    defect (docs/what-works.md, "The noise ellipses are faint"). ``tile``: fit on tiles of
    that side and reconstruct frames tile by tile (``data.resize=tile``; the returned PCA
    works on tiles).
    """
    samples = training_tiles(train, tile) if tile is not None else train
    candidates = [k for k in PCA_COMPONENTS if k < samples.shape[0]] or [1]
    return PcaReconstruction(samples, max(candidates))


def centre_and_spread(normal_scores: Tensor) -> tuple[float, float]:
    """Mean and standard deviation (1 for a single score, at least 1e-8) of normals' scores:
    what the companion sum standardises each detector's score by."""
    normal_scores = normal_scores.detach().float()
    spread = float(normal_scores.std()) if normal_scores.numel() > 1 else 1.0
    return float(normal_scores.mean()), max(spread, 1e-8)


def standardise_by(scores: Tensor, normal_scores: Tensor) -> Tensor:
    """``scores`` in units of ``normal_scores``' spread, from their mean (the companion sum)."""
    centre, spread = centre_and_spread(normal_scores)
    return (scores.float() - centre) / spread


def reference_metrics(
    datamodule: Any,
    scorer_config: dict[str, Any],
    threshold_quantile: float = 0.95,
    companion: bool = False,
    best_scores: dict[str, tuple[Tensor, Tensor]] | None = None,
    memory: UntrainedMemory | None = None,
) -> dict[str, dict[str, Any]]:
    """Image metrics of the mean and PCA references on every test set of ``datamodule``, and
    their pixel AUROC / AUPRO (on the map the model shows) where the test set has masks.

    Uses the training normals to build the reconstructions and the validation normals to
    calibrate the scorer; test labels only to compute the metrics.
    ``companion``: the model sums its score with the PCA's (``model.companion=pca``); the
    block then also holds ``mean+pca``, the same sum with the mean image in the generator's
    place (with the PCA there the sum ranks as the PCA alone), and the better reference is
    the best of the three, so the lift is over every no-learning detector of either recipe.
    ``memory``: the model sums its feature memory in (``model.memory=encoder``); this is
    the same memory on an untrained encoder (:class:`~anomaly_gan.feature_memory.
    UntrainedMemory`), and every reference above also enters the block summed with it
    (``pca+memory`` ...), each part standardised by the validation normals as the model's.
    A sum's pixel figures are those of the detector in the generator's place (``mean`` for
    ``mean+pca``, ``X`` for ``X+memory``): the model's map is its reconstruction's alone.
    ``best_scores``: filled with each test set's (labels, better reference's scores), in
    the test loader's order, for an interval of the lift (:mod:`.intervals`).
    """
    train, validation = normal_images(datamodule)
    tile = datamodule.image_size if datamodule.geometry.tiled else None
    pca = fit_pca(train, tile)
    references = {
        "mean": MeanReconstruction(train),
        "pca": TiledReconstruction(pca, tile) if tile is not None else pca,
    }
    scorers: dict[str, AnomalyScore] = {}
    held_out: dict[str, Tensor] = {}  # validation normals' scores the calibration held out
    for name, reconstruct in references.items():
        scorers[name], held_out[name] = _calibrated(
            scorer_config, reconstruct, validation, threshold_quantile
        )
    if memory is not None:
        memory.fit(train)
        memory_normals = memory.raw_scores(validation)  # the model standardises by all of them
        memory_held_out = memory_normals[scorers["pca"].held_out(memory_normals.shape[0])]
    results: dict[str, dict[str, Any]] = {}
    for name, loader in zip(
        datamodule.test_category_names, datamodule.test_dataloader(), strict=True
    ):
        test, labels, masks = stack_loader(loader)
        block: dict[str, Any] = {}
        scores: dict[str, Tensor] = {}
        for ref_name, reconstruct in references.items():
            scorer = scorers[ref_name]
            error_maps, shown_maps = [], []
            for chunk in test.split(CHUNK):
                reconstruction = reconstruct(chunk)
                error_map = scorer.error_map(chunk, reconstruction)
                error_maps.append(error_map)
                if masks is not None:  # the map users see, as the model's (localization_map)
                    shown_maps.append(
                        scorer.anomaly_map(chunk, reconstruction, scorer.standardize(error_map))
                    )
            scores[ref_name] = scorer.score_error_maps(torch.cat(error_maps))
            block[ref_name] = {}
            if masks is not None:
                located = pixel_metrics(torch.cat(shown_maps), masks)
                block[ref_name].update({key: located[key] for key in PIXEL_KEYS})
        for ref_name in references:
            metrics = image_metrics(scores[ref_name], labels, float(scorers[ref_name].threshold))
            block[ref_name].update({key: metrics.get(key) for key in IMAGE_KEYS})
        candidates = list(references)
        if companion:
            # The sum with the mean image in the generator's place (with the PCA there, the
            # sum ranks as the PCA alone). Both plain references stay candidates too, so the
            # lift is over the best no-learning detector of either recipe.
            parts = [(scores[n], held_out[n], held_out[n]) for n in ("mean", "pca")]
            _enter_sum("mean+pca", parts, labels, threshold_quantile, block, scores, held_out)
            block["companion"] = (
                "model.companion: the model's score is summed with the PCA's (auto: where "
                "the validation chose it); mean+pca is the same sum with the mean image in "
                "the generator's place"
            )
            candidates.append("mean+pca")
        if memory is not None:
            memory_test = memory.raw_scores(test)
            for base in list(candidates):
                parts = [
                    (scores[base], held_out[base], held_out[base]),
                    (memory_test, memory_held_out, memory_normals),
                ]
                weights = (1.0, memory.memory.weight)
                with_memory = f"{base}+memory"
                _enter_sum(
                    with_memory, parts, labels, threshold_quantile, block, scores, held_out, weights
                )
                candidates.append(with_memory)
            block["memory"] = (
                "model.memory: the model's score is summed with its encoder's feature memory; "
                "X+memory is reference X summed with the same memory on an untrained encoder "
                f"({memory.memory.bank.shape[1]} vectors per position in its bank)"
            )
        block["pca"].update(k=pca.k, k_chosen_by=K_CHOSEN_BY)
        aurocs = {n: block[n]["auroc"] for n in candidates if block[n]["auroc"] is not None}
        best = max(aurocs, key=aurocs.__getitem__) if aurocs else None
        block["best"], block["auroc"] = best, aurocs.get(best)
        results[name] = block
        if best_scores is not None and best is not None:
            best_scores[name] = (labels, scores[best])
    return results


def shown_map_of(detector: str) -> str:
    """The reference whose map ``detector`` of the block shows: the one in the generator's
    place. The model shows its own reconstruction's map, never the PCA companion's or the
    memory's, so ``mean+pca`` shows the mean image's and ``X+memory`` shows X's."""
    base = detector.removesuffix("+memory")
    return "mean" if base == "mean+pca" else base


def _enter_sum(
    name: str,
    parts: list[tuple[Tensor, Tensor, Tensor]],
    labels: Tensor,
    threshold_quantile: float,
    block: dict[str, Any],
    scores: dict[str, Tensor],
    held_out: dict[str, Tensor],
    weights: tuple[float, ...] | None = None,
) -> None:
    """Enter the sum of no-learning detectors in ``block`` as ``name``, the way a model sums
    its companion and memory in: each part, (test scores, held-out validation normals'
    scores, the validation normals' scores it is standardised by), in units of its normals'
    spread; the threshold on the held-out normals' sums. ``scores`` and ``held_out`` gain
    the sum's, so it can itself be a part of a later sum; its pixel figures are those of
    the map it shows (:func:`shown_map_of`). ``weights``: each part's factor in the sum
    (the model's ``memory_weight`` for a memory; 1 each by default)."""
    weights = weights or (1.0,) * len(parts)
    summed = sum(
        w * standardise_by(test, by) for w, (test, _, by) in zip(weights, parts, strict=True)
    )
    normals = sum(
        w * standardise_by(held, by) for w, (_, held, by) in zip(weights, parts, strict=True)
    )
    metrics = image_metrics(summed, labels, threshold_from_normals(normals, threshold_quantile))
    block[name] = {key: metrics.get(key) for key in IMAGE_KEYS}
    located = block[shown_map_of(name)]
    block[name].update({key: located[key] for key in PIXEL_KEYS if key in located})
    scores[name], held_out[name] = summed, normals


def lift(model_auroc: float | None, reference: dict[str, Any]) -> float | None:
    """``model AUROC - better reference AUROC`` (None where either is undefined)."""
    ref = reference.get("auroc")
    if model_auroc is None or ref is None or math.isnan(model_auroc):
        return None
    return model_auroc - ref
