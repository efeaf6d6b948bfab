"""The feature memory: the generator encoder's local features, remembered per position.

A GAN's generator learns an encoder of the normals, and its reconstruction is only one use
of it. With ``model.memory=encoder`` a third detector joins the model's score (and the PCA
companion's, where summed in): every test image's encoder features at 1/4 and 1/8 of the
input (the coarser upsampled, concatenated, averaged over 3 × 3 neighbourhoods) are compared
with the same features of the training normals *at the same position*, and the image's
memory score is its largest nearest-neighbour distance (Roth et al., "Towards Total Recall
in Industrial Anomaly Detection", CVPR 2022, Sec. 3, with the bank kept per position
instead of pooled: where in an aligned part a pattern belongs counts). The image score is

    score(x) = (s_own(x) − μ_own) / σ_own + (s_memory(x) − μ_memory) / σ_memory

with ``s_own`` the model's score as it was (companion included), μ, σ the mean and spread of
each over validation normals: the held-out ones of the model's calibration for ``s_own``
(its per-pixel statistics came from the others) and all of them for the memory, whose bank
holds training normals only. The bank is rebuilt with the current encoder at every
validation, so each checkpoint carries the bank and the calibration of its own weights; it
keeps at most ``max_normals`` training images (a seeded subset) in float16.

Why (docs/what-works.md, "A nearest-neighbour memory of the GAN's own features"): on four
real sets the learnt encoder's memory, summed in, gained on three sets held out of the
choice, and its gain needs the training (the untrained encoder's memory gains less).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_gan.evaluation.reference import centre_and_spread

#: ``model.memory`` values: the generator encoder's features (module docstring).
MEMORIES = ("encoder",)

#: The feature maps the memory reads, as divisors of the input side.
FEATURE_STRIDES = (4, 8)

#: Query images per nearest-neighbour search (bounds the distance matrix's memory).
QUERY_CHUNK = 32


def check_memory(memory: str | None) -> None:
    """Raise an actionable error for an unknown ``model.memory``."""
    if memory is not None and memory not in MEMORIES:
        raise ValueError(
            f"model.memory must be null (no feature memory) or encoder (the generator "
            f"encoder's features of the training normals, matched in place), got {memory!r}"
        )


def local_features(
    maps: list[Tensor], side: int, strides: tuple[int, ...] = FEATURE_STRIDES
) -> Tensor:
    """(B, C, side/s, side/s) for s the smallest of ``strides`` (default 4): the maps at 1/s
    of ``side`` for each of ``strides`` (default 1/4 and 1/8), the coarser upsampled to the
    finest, concatenated and averaged over 3 × 3 neighbourhoods."""
    wanted = {side // stride for stride in strides}
    chosen = sorted(
        (m for m in maps if m.shape[-1] in wanted), key=lambda m: m.shape[-1], reverse=True
    )
    if len(chosen) != len(strides):
        raise ValueError(
            f"the feature memory needs encoder maps of side {sorted(wanted)} for a {side} px "
            f"input (model.memory_strides {list(strides)}); the encoder gave "
            f"{[m.shape[-1] for m in maps]}: choose strides whose sides it gives"
        )
    size = chosen[0].shape[-2:]
    joined = torch.cat(
        [F.interpolate(m.float(), size=size, mode="bilinear") for m in chosen], dim=1
    )
    return F.avg_pool2d(joined, 3, 1, 1)


def distances(queries: Tensor, bank: Tensor) -> Tensor:
    """Euclidean distances (P, B, N) of queries (P, B, C) to bank vectors (P, N, C), always
    through a matrix product: torch's direct kernel, which ``cdist`` picks for at most 25
    vectors a side (a bank of 20 normals, a coreset), has no ONNX translation."""
    return torch.cdist(queries, bank, compute_mode="use_mm_for_euclid_dist")


def greedy_coreset(vectors: Tensor, keep: int) -> Tensor:
    """Indices (P, keep) of ``keep`` of each position's N vectors (P, N, C) chosen by
    greedy k-centre selection: start from the vector nearest the position's mean, then
    repeatedly add the vector farthest from those chosen, so the kept ones cover the rest
    with the smallest largest gap a greedy choice gives (Roth et al., "Towards Total Recall
    in Industrial Anomaly Detection", CVPR 2022, Sec. 3.3; Sener and Savarese, "Active
    Learning for Convolutional Neural Networks: A Core-Set Approach", ICLR 2018).
    Deterministic: the same vectors give the same indices."""
    positions, count, _ = vectors.shape
    if not 1 <= keep <= count:
        raise ValueError(f"a coreset keeps between 1 and {count} vectors, not {keep}")
    vectors = vectors.float()
    squared = vectors.pow(2).sum(2)  # (P, N)
    rows = torch.arange(positions, device=vectors.device)
    centred = vectors - vectors.mean(1, keepdim=True)
    chosen = [centred.pow(2).sum(2).argmin(1)]
    gap = torch.full_like(squared, math.inf)  # squared distance to the nearest kept vector
    # (P, C, N): a row vector times this layout is several times faster on a CPU than the
    # (P, N, C) layout times a column vector.
    columns = vectors.transpose(1, 2).contiguous()
    for _ in range(keep - 1):
        picked = vectors[rows, chosen[-1]]  # (P, C)
        to_picked = squared - 2 * torch.bmm(picked.unsqueeze(1), columns).squeeze(1)
        gap = torch.minimum(gap, to_picked + picked.pow(2).sum(1, keepdim=True))
        gap[rows, chosen[-1]] = -1.0  # never chosen twice, even where vectors repeat
        chosen.append(gap.argmax(1))
    return torch.stack(chosen, 1)


def encoder_features(
    generator: nn.Module, image: Tensor, strides: tuple[int, ...] = FEATURE_STRIDES
) -> Tensor:
    """The memory's local features (B, C, S/s, S/s), s the smallest of ``strides``, of square
    images (B, C, S, S) through ``generator.encoder_maps`` (:func:`local_features`)."""
    side = image.shape[-1]
    return local_features(generator.encoder_maps(image, side // max(strides)), side, strides)


def check_strides(strides: Any, image_size: int) -> tuple[int, ...]:
    """``model.memory_strides`` as a tuple, or an actionable error."""
    values = tuple(strides) if strides is not None else FEATURE_STRIDES
    if (
        not values
        or len(set(values)) != len(values)
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in values)
        or any(image_size % v for v in values)
    ):
        raise ValueError(
            f"model.memory_strides must be distinct integers >= 2 that divide model.image_size "
            f"({image_size}): the encoder maps at 1/s of the input the memory reads, e.g. "
            f"[4, 8]; got {strides!r}"
        )
    return values


class FeatureMemory(nn.Module):
    """The per-position bank of training normals' features and the sum's calibration.

    Args:
        max_normals: training images kept in the bank (a seeded random subset beyond it):
            a checkpoint holds positions × images × channels float16 values (64 px: 59 MB
            for the 600 magnetic-tile normals and GANomaly's 192 channels). Fewer cost
            detection where the normals vary: 256 of those 600 lost 0.02 AUROC there.
        seed: seeds that subset.
        coreset: the share of each position's vectors the bank keeps, chosen by greedy
            k-centre selection (:func:`greedy_coreset`); 1 keeps them all.
        neighbourhood: a test vector is matched with the bank's vectors at its own position
            and those up to this many positions away in either direction (0: its own only),
            which tolerates parts that do not lie exactly where the normals did.
        weight: the memory's standardised score enters the sum times this (1: as much as
            the model's own).
        strides: the encoder maps the memory reads, as divisors of the input side.
    """

    def __init__(
        self,
        max_normals: int = 1024,
        seed: int = 0,
        coreset: float = 1.0,
        neighbourhood: int = 0,
        weight: float = 1.0,
        strides: tuple[int, ...] = FEATURE_STRIDES,
    ) -> None:
        super().__init__()
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not (0.0 < weight < math.inf)
        ):
            raise ValueError(
                f"model.memory_weight must be a number > 0 (the memory's share of the summed "
                f"score; model.memory=null leaves it out), got {weight!r}"
            )
        if (
            isinstance(neighbourhood, bool)
            or not isinstance(neighbourhood, int)
            or neighbourhood < 0
        ):
            raise ValueError(
                f"model.memory_neighbourhood must be an integer >= 0 (positions around a test "
                f"vector's own that it is also matched at; 0: its own only), got {neighbourhood!r}"
            )
        if isinstance(max_normals, bool) or not isinstance(max_normals, int) or max_normals < 1:
            raise ValueError(f"model.memory_normals must be an integer >= 1, got {max_normals!r}")
        if (
            isinstance(coreset, bool)
            or not isinstance(coreset, int | float)
            or not (0.0 < coreset <= 1.0)
        ):
            raise ValueError(
                f"model.memory_coreset must be a share in (0, 1] of the vectors each position "
                f"of the bank keeps (1: all of them, 0.1: a tenth), got {coreset!r}"
            )
        self.max_normals = max_normals
        self.seed = seed
        self.coreset = float(coreset)
        self.neighbourhood = neighbourhood
        self.weight = float(weight)
        self.strides = tuple(strides)
        # (positions, images, channels), centred per position; empty until :meth:`fit`.
        self.register_buffer("bank", torch.zeros(0, 0, 0, dtype=torch.float16))
        # (positions, 1, channels): the training normals' mean feature at each position.
        self.register_buffer("bank_mean", torch.zeros(0, 1, 0))
        for name in ("own_center", "own_scale", "memory_center", "memory_scale"):
            self.register_buffer(name, torch.tensor(math.nan))
        self._calibrated = False

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        for name in ("bank", "bank_mean"):  # their shapes are the data's, not the constructor's
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored, device=self.bank.device))
        # A checkpoint from before the memory existed (a run resumed under today's default):
        # the memory starts empty and the next validation builds it.
        for name, value in self.state_dict().items():
            state_dict.setdefault(prefix + name, value)
        scale = state_dict.get(prefix + "memory_scale")
        self._calibrated = scale is not None and bool(torch.isfinite(scale).all())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def fitted(self) -> bool:
        return self.bank.numel() > 0

    @property
    def calibrated(self) -> bool:
        """Fitted and standardised by a validation (a plain flag, as the companion's)."""
        return self.fitted and self._calibrated

    def kept(self, normals: Tensor) -> Tensor:
        """The ``max_normals`` of ``normals`` (N, ...) the bank keeps: all of them, or a
        seeded random subset in their order (the same subset every time)."""
        if normals.shape[0] <= self.max_normals:
            return normals
        generator = torch.Generator().manual_seed(self.seed)
        keep = torch.randperm(normals.shape[0], generator=generator)[: self.max_normals]
        return normals[keep.sort().values.to(normals.device)]

    def unfitted_copy(self) -> FeatureMemory:
        """An empty memory of the same settings (what it keeps, how it matches and weighs,
        which maps it reads)."""
        return FeatureMemory(
            self.max_normals,
            self.seed,
            coreset=self.coreset,
            neighbourhood=self.neighbourhood,
            weight=self.weight,
            strides=self.strides,
        )

    def coreset_size(self, count: int) -> int:
        """Vectors per position the bank keeps of ``count``."""
        return count if self.coreset >= 1.0 else max(1, math.ceil(self.coreset * count))

    @torch.no_grad()
    def fit(self, features: Tensor) -> None:
        """Remember the training normals' features (N, C, H, W), at most ``max_normals`` of
        them (:meth:`kept`), each position's thinned to its coreset (``coreset``); the
        calibration of an earlier bank no longer holds."""
        vectors = self.kept(features).float().flatten(2).permute(2, 0, 1)  # (P, N, C)
        keep = self.coreset_size(vectors.shape[1])
        if keep < vectors.shape[1]:
            index = greedy_coreset(vectors, keep)
            vectors = torch.gather(vectors, 1, index.unsqueeze(2).expand(-1, -1, vectors.shape[2]))
        # Distances do not change under a shift; centred vectors keep the nearest-neighbour
        # search's |a|² + |b|² − 2ab well conditioned in float32 (the matched vectors lie
        # close together, far from the origin), so scores agree across batch sizes and
        # with the exported graph.
        self.bank_mean = vectors.mean(1, keepdim=True)
        self.bank = (vectors - self.bank_mean).to(torch.float16).contiguous()
        self._calibrated = False

    @torch.no_grad()
    def raw_scores(self, features: Tensor) -> Tensor:
        """Largest in-place nearest-neighbour distance per image, (B,), of features
        (B, C, H, W) laid out as the bank's."""
        positions = features.shape[-2] * features.shape[-1]
        if not self.fitted or (positions, features.shape[1]) != (
            self.bank.shape[0],
            self.bank.shape[2],
        ):
            raise ValueError(
                f"the feature memory holds {tuple(self.bank.shape)} (positions, images, "
                f"channels) but was given features {tuple(features.shape)}: score images of "
                f"the size the model was trained on (model.image_size, data.resize squash)"
            )
        bank = self.bank.float()
        features = features.float()
        # Exported graphs keep the batch axis dynamic: no chunking by its length there.
        chunks = (features,) if torch.compiler.is_exporting() else features.split(QUERY_CHUNK)
        scores = []
        for chunk in chunks:
            if self.neighbourhood:
                nearest = self._nearest_around(chunk, bank)
            else:
                queries = chunk.flatten(2).permute(2, 0, 1) - self.bank_mean  # (P, B, C)
                nearest = distances(queries, bank).amin(2)  # (P, B)
            scores.append(nearest.amax(0))
        return torch.cat(scores)

    def _nearest_around(self, features: Tensor, bank: Tensor) -> Tensor:
        """(P, B): each test vector's nearest distance to the bank's vectors at its own
        position and at every position up to ``neighbourhood`` away (rows and columns)."""
        height, width = features.shape[-2:]
        queries = features.permute(2, 3, 0, 1)  # (H, W, B, C)
        bank = bank.view(height, width, *bank.shape[1:])  # (H, W, N, C)
        means = self.bank_mean.view(height, width, 1, -1)
        nearest = torch.full(queries.shape[:3], math.inf, device=features.device)
        reach = self.neighbourhood
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                # Test positions whose neighbour (y + dy, x + dx) lies inside the map.
                at = (
                    slice(max(0, -dy), height - max(0, dy)),
                    slice(max(0, -dx), width - max(0, dx)),
                )
                of = (
                    slice(max(0, dy), height - max(0, -dy)),
                    slice(max(0, dx), width - max(0, -dx)),
                )
                part = queries[at] - means[of]  # centred as the neighbour's bank is
                rows, cols = part.shape[:2]
                distance = distances(part.flatten(0, 1), bank[of].flatten(0, 1))
                nearest[at] = torch.minimum(nearest[at], distance.amin(2).view(rows, cols, -1))
        return nearest.flatten(0, 1)

    @torch.no_grad()
    def calibrate(
        self, own_scores: Tensor, memory_normals: Tensor, memory_held_out: Tensor
    ) -> Tensor:
        """Standardise both terms and return the held-out validation normals' summed scores.

        ``own_scores``: the model's (companion-summed) scores of the validation normals its
        calibration held out; ``memory_normals``: the memory's raw scores of all validation
        normals; ``memory_held_out``: those of the held-out ones, in ``own_scores``' order.
        """
        for prefix, scores in (("own", own_scores), ("memory", memory_normals)):
            centre, spread = centre_and_spread(scores)
            getattr(self, f"{prefix}_center").fill_(centre)
            getattr(self, f"{prefix}_scale").fill_(spread)
        self._calibrated = True
        return self.combine(own_scores, memory_held_out)

    def combine(self, own_scores: Tensor, memory_scores: Tensor) -> Tensor:
        """The summed score (B,) from the model's scores and the memory's raw scores."""
        own = (own_scores.float() - self.own_center) / self.own_scale
        memory = (memory_scores.float() - self.memory_center) / self.memory_scale
        return own + self.weight * memory

    def summary(self) -> dict[str, Any]:
        """What ``results.json`` says about the memory of the tested checkpoint."""
        summary: dict[str, Any] = {
            "mode": "encoder",
            "vectors_per_position": int(self.bank.shape[1]) if self.fitted else 0,
            "coreset": self.coreset,
            "neighbourhood": self.neighbourhood,
            "weight": self.weight,
            "strides": list(self.strides),
            "positions": int(self.bank.shape[0]) if self.fitted else 0,
            "summed": self.calibrated,
        }
        if not self.calibrated:
            summary["note"] = (
                "not calibrated: no validation standardised the memory's score, so the "
                "score is the model's alone"
                if self.fitted
                else "not fitted: the run listed no training images of the model's size "
                "(plain DataLoaders, or data.resize=tile frames), so the score is the "
                "model's alone"
            )
        return summary


class UntrainedMemory:
    """The feature memory's no-learning reference: the same memory, built and matched the
    same way, on the generator's encoder at its initialisation.

    The memory sums a detector into the score that a random network gives too (random
    convolutional features already separate textures), so whatever the memory adds is the
    GAN's own only where the trained encoder's memory beats this one. The no-learning
    reference (:func:`~anomaly_gan.evaluation.reference.reference_metrics`) sums it with
    its own reconstructions' scores, as the model sums the trained one with its own.

    Args:
        generator: a freshly initialised generator of the model's architecture (eval mode).
        like: the model's memory, whose settings this one keeps, matches, weighs and reads by.
        device: where the encoder runs; features and scores come back on the CPU.
    """

    def __init__(self, generator: nn.Module, like: FeatureMemory, device: torch.device) -> None:
        self.generator = generator.to(device).eval()
        self.device = device
        self.memory = like.unfitted_copy()

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """The untrained encoder's local features of ``images`` (N, C, S, S), on the CPU."""
        return torch.cat(
            [
                encoder_features(self.generator, chunk.to(self.device), self.memory.strides).cpu()
                for chunk in images.split(QUERY_CHUNK)
            ]
        )

    def fit(self, train: Tensor) -> None:
        """Build the bank from the training normals (the seeded subset the model keeps)."""
        self.memory.fit(self.features(self.memory.kept(train)))

    def raw_scores(self, images: Tensor) -> Tensor:
        """Largest in-place nearest-neighbour distance per image (N,)."""
        return self.memory.raw_scores(self.features(images))
