"""Anomaly scores: how an image's reconstruction and latent codes become one number.

Scores are per image and computed in eval mode, so an image's score never depends on
the other images in its batch (the GANomaly reference code scored in train mode, with
BatchNorm using test-batch statistics). Raw scores are kept: ranking metrics do not need
normalisation, and the decision threshold is learnt on the same raw scale from
validation normals. (anomalib min-max normalises batch by batch, which makes scores
depend on batch order.) Both defects: docs/reference-code.md, section 5.

Two options make the reconstruction term follow defects rather than texture noise:

- ``smooth_difference``: smooth the signed difference x − x̂ before taking |·| or (·)².
  Zero-mean texture error (stripes, grain) cancels inside the kernel; a defect that is
  consistently darker or brighter than its reconstruction stays.
  With ``per_channel`` each colour channel is smoothed and normed on its own, so a defect
  of another hue (a stain) stays as well; ``map_sigma_fraction`` keeps the kernel narrower
  than a defect on small images.
- ``normalize_map``: divide each pixel's error, after subtracting its mean, by its
  standard deviation over *validation normals* (the scorer's ``map_mean`` / ``map_std``
  buffers, set by :meth:`AnomalyScore.calibrate` at every validation). Tile borders and
  other places a model never reconstructs well stop dominating the score. Uses normal
  images only, never test labels.

The *image* score and the *map* a user sees need different things. Standardising each pixel
by the few validation normals is what makes the pooled score rank images well, but it also
amplifies the noise of pixels that barely vary and damps those that vary a lot, so as a
defect map it localises poorly. ``localization_map="error"`` (the default score's choice)
shows, and scores against defect masks, the plain error map |x − x̂| averaged over the
channels and lightly smoothed (``localization_sigma``), while the image score keeps the
standardised map; ``"score"`` shows the map the score pools (the papers' configs). Four
real data sets, docs/what-works.md: pixel AUROC 0.66–0.80 → 0.70–0.93, AUPRO 0.19–0.46 →
0.55–0.75.

:class:`AnomalyScore` is an ``nn.Module`` that owns everything about the score: the maths
(the functions below), its state (buffers ``threshold``, ``map_mean``, ``map_std``,
``localization_scale``, which
travel in the model's checkpoint and in the exported ONNX graph) and its calibration on
validation normals. A new way of scoring is a function here, registered in
:data:`POOLINGS` (how a map becomes one number) or :data:`NORMS` (how a pixel's difference
becomes an error), plus a ``conf/model/scorer/<name>.yaml`` that selects it.

Mixed precision (``trainer.precision=bf16-mixed``): the networks may hand over bfloat16
reconstructions and codes (8 mantissa bits, about 3 significant digits), but every map,
distance, statistic and threshold here is computed and stored in float32, with autocast off
(:func:`full_precision`): a standardised top-k mean over thousands of pixels, or a quantile
of scores that differ in the fourth digit, would otherwise be rounded to bfloat16 steps
(autocast runs the Gaussian blur's convolution in bfloat16 even on float32 input).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc
from torchvision.transforms.v2.functional import gaussian_blur

#: The scorer's fields, in constructor order (also the keys of ``model.scorer.*``).
FIELDS = (
    "latent_weight",
    "reconstruction_weight",
    "reconstruction_norm",
    "map_sigma",
    "smooth_difference",
    "normalize_map",
    "pooling",
    "top_k_fraction",
    "per_channel",
    "map_sigma_fraction",
    "map_std_floor",
    "localization_map",
    "localization_sigma",
)

#: ``localization_map`` -> which map :meth:`AnomalyScore.anomaly_map` returns (overlays,
#: predict.py, ONNX ``anomaly_map``, pixel AUROC / AUPRO against defect masks).
LOCALIZATION_MAPS = {
    "error": "|x - x_hat| averaged over the channels, Gaussian localization_sigma",
    "score": "the map the image score pools (standardised when normalize_map)",
}

#: The validation normals' error-map pixel quantile an overlay colours full red
#: (``localization_map="error"``): red marks errors that almost no normal pixel reaches.
LOCALIZATION_SCALE_QUANTILE = 0.999

#: The models' default score, the one home of its settings: what every model class scores with
#: when built without ``scorer`` and what ``conf/model/scorer/difference_map.yaml`` (selected by
#: every ``model=<name>`` config) mirrors, key for key (tests/test_config.py). |Gaussian of
#: x − x̂| per colour channel, averaged over the channels (texture error cancels, darker,
#: brighter or differently coloured defects stay), σ = 4 px but at most 1/16 of the image
#: side (2 px at 32 px), standardised per pixel by the validation normals, mean of the top 5 %
#: pixels (docs/what-works.md). The papers' scores are the other ``conf/model/scorer`` files,
#: chosen by ``model=<name>_paper``.
DEFAULT_SCORER: Mapping[str, Any] = MappingProxyType(
    {
        "latent_weight": 0.0,
        "reconstruction_weight": 1.0,
        "reconstruction_norm": "l1",
        "map_sigma": 4.0,
        "smooth_difference": True,
        "normalize_map": True,
        "pooling": "top_k",
        "top_k_fraction": 0.05,
        "per_channel": True,
        "map_sigma_fraction": 0.0625,
        "map_std_floor": 0.1,
        "localization_map": "error",
        "localization_sigma": 1.0,
    }
)


# ------------------------------------------------------------------------ score functions
@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Autocast off on ``device_type`` inside, when it is on (bf16-mixed steps).

    Entered only when autocast is active, so an fp32 graph (an ONNX export) holds no
    autocast region. Inputs still need ``.float()``: switching autocast off does not cast.
    """
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


def _l1(difference: Tensor) -> Tensor:
    return difference.abs()


def _l2(difference: Tensor) -> Tensor:
    return difference.square()


#: ``reconstruction_norm`` -> per-pixel error of a difference x − x̂.
NORMS: dict[str, Callable[[Tensor], Tensor]] = {"l1": _l1, "l2": _l2}


def pool_mean(pixels: Tensor, top_k_fraction: float) -> Tensor:
    """Mean over all pixels (the papers)."""
    return pixels.mean(dim=1)


def pool_max(pixels: Tensor, top_k_fraction: float) -> Tensor:
    """The single highest pixel."""
    return pixels.amax(dim=1)


def pool_top_k(pixels: Tensor, top_k_fraction: float) -> Tensor:
    """Mean of the highest ``top_k_fraction`` of pixels (at least one)."""
    k = max(1, round(top_k_fraction * pixels.shape[1]))
    return pixels.topk(k, dim=1).values.mean(dim=1)


#: ``pooling`` -> how a flattened map (B, H*W) becomes the reconstruction term (B,). A small
#: defect barely moves the mean; max / top-k of a smoothed map follows it.
POOLINGS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "mean": pool_mean,
    "max": pool_max,
    "top_k": pool_top_k,
}


def latent_distance(latent_in: Tensor, latent_out: Tensor) -> Tensor:
    """GANomaly's latent term: mean((latent_in - latent_out)^2) per image, (B,), in float32."""
    return (latent_in.float() - latent_out.float()).flatten(1).square().mean(dim=1)


def threshold_from_normals(normal_scores: Tensor, quantile: float) -> float:
    """Decision threshold: the ``quantile`` of anomaly scores of held-out *normal* images.

    Needs no anomalous image and never looks at test labels; ``quantile=0.95`` expects
    about 5% false alarms on normal parts.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"model.threshold_quantile must be in (0, 1], got {quantile}")
    if normal_scores.numel() == 0:
        return math.nan
    return float(torch.quantile(normal_scores.double().flatten(), quantile))


def separation_auroc(normal_scores: Tensor, anomalous_scores: Tensor) -> float:
    """AUROC of two groups of scores (how well they separate), label 1 = anomalous.

    Scores are min-max scaled into [0, 1] first: a monotone map that leaves the AUROC as
    it is and keeps torchmetrics from reading raw scores outside [0, 1] as logits.
    """
    scores = torch.cat([normal_scores.flatten(), anomalous_scores.flatten()]).double()
    labels = torch.cat(
        [torch.zeros(normal_scores.numel()), torch.ones(anomalous_scores.numel())]
    ).long()
    unit = (scores - scores.min()) / (scores.max() - scores.min()).clamp_min(1e-12)
    return float(binary_auroc(unit.float().cpu(), labels))


def _gaussian(values: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of (B, C, H, W) maps, kernel ±3σ."""
    kernel = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(values, [kernel, kernel], [sigma, sigma])


def _choices(names: Any) -> str:
    return ", ".join(repr(name) for name in names)


# ----------------------------------------------------------------------------- the module
class AnomalyScore(nn.Module):
    """``latent_weight * latent distance + reconstruction_weight * pooled anomaly map``.

    - latent distance (GANomaly): mean((latent_in - latent_out)^2) over the latent code;
    - anomaly map: per-pixel |x - x_hat| (l1) or (x - x_hat)^2 (l2) averaged over
      channels, optionally smoothed and standardised (module docstring), pooled to one
      number per image;
    - Skip-GANomaly's score is the mix 0.9 * reconstruction (l2) + 0.1 * latent.

    The constructor's defaults are GANomaly's latent score; the models' default is
    :data:`DEFAULT_SCORER` (``AnomalyScore(**DEFAULT_SCORER)``).

    Args (the ``model.scorer.*`` keys, in this order):
        latent_weight, reconstruction_weight: the two terms' weights (>= 0, not both 0).
        reconstruction_norm: a key of :data:`NORMS`.
        map_sigma: Gaussian smoothing of the anomaly map (pixels); 0 = raw per-pixel error.
            See ``map_sigma_fraction`` for small images.
        smooth_difference: smooth the signed difference (true) or the error (false); needs
            ``map_sigma`` > 0.
        normalize_map: standardise each pixel by validation-normal error statistics.
        pooling: a key of :data:`POOLINGS`.
        top_k_fraction: the fraction of pixels ``top_k`` pooling averages.
        per_channel: with ``smooth_difference``, smooth and take the norm of each colour
            channel's difference before averaging the channels (true), instead of averaging
            the signed difference first (false). A hue shift that leaves the mean brightness
            unchanged (a coloured stain) cancels in the channel mean; per channel it stays.
            Grayscale images score the same either way.
        map_sigma_fraction: the smoothing's σ is at most this fraction of the map's shorter
            side: ``min(map_sigma, map_sigma_fraction * side)``; None: ``map_sigma`` at every
            size. A defect spans fewer pixels at a lower resolution, and a reconstruction
            that half follows a defect leaves a residue of both signs around it, which a
            kernel much wider than the defect averages away (docs/what-works.md).
        map_std_floor: with ``normalize_map``, each pixel's standard deviation is at least
            this fraction of the mean over pixels, so pixels that barely vary over the few
            validation normals (background, saturation) do not turn noise into anomalies.
            Large values (e.g. 1e6) leave only the per-pixel mean subtraction: the map is
            then divided by one number, which ranks pixels as the unscaled difference does.
        localization_map: a key of :data:`LOCALIZATION_MAPS`: the map users see and that
            is scored against defect masks (module docstring). The image score is the same
            either way.
        localization_sigma: Gaussian σ (pixels) of the ``"error"`` map; 0 = unsmoothed.
        image_size: side of the maps, so ``map_mean``/``map_std`` have their final shape
            from the start (the model passes it); without it they start as broadcasting
            1x1 identities and take the maps' shape at the first :meth:`calibrate` or
            ``load_state_dict``. Not part of the config.

    Buffers (identity / NaN until the first :meth:`calibrate`): ``threshold`` (scalar),
    ``map_mean`` and ``map_std`` (1, 1, H, W), ``localization_scale`` (scalar).
    """

    threshold: Tensor
    map_mean: Tensor
    map_std: Tensor
    localization_scale: Tensor

    def __init__(
        self,
        latent_weight: float = 1.0,
        reconstruction_weight: float = 0.0,
        reconstruction_norm: Literal["l1", "l2"] = "l2",
        map_sigma: float = 0.0,
        smooth_difference: bool = False,
        normalize_map: bool = False,
        pooling: Literal["mean", "max", "top_k"] = "mean",
        top_k_fraction: float = 0.01,
        per_channel: bool = False,
        map_sigma_fraction: float | None = None,
        map_std_floor: float = 0.1,
        localization_map: Literal["error", "score"] = "score",
        localization_sigma: float = 1.0,
        *,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.latent_weight = latent_weight
        self.reconstruction_weight = reconstruction_weight
        self.reconstruction_norm = reconstruction_norm
        self.map_sigma = map_sigma
        self.smooth_difference = smooth_difference
        self.normalize_map = normalize_map
        self.pooling = pooling
        self.top_k_fraction = top_k_fraction
        self.per_channel = per_channel
        self.map_sigma_fraction = map_sigma_fraction
        self.map_std_floor = map_std_floor
        self.localization_map = localization_map
        self.localization_sigma = localization_sigma
        self._validate()
        side = image_size or 1
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.register_buffer("map_mean", torch.zeros(1, 1, side, side))
        self.register_buffer("map_std", torch.ones(1, 1, side, side))
        self.register_buffer("localization_scale", torch.tensor(float("nan")))

    def _validate(self) -> None:
        if self.latent_weight < 0 or self.reconstruction_weight < 0:
            raise ValueError("model.scorer weights must be >= 0")
        if self.latent_weight == 0 and self.reconstruction_weight == 0:
            raise ValueError(
                "model.scorer: latent_weight and reconstruction_weight are both 0; "
                "set at least one of them above 0"
            )
        if self.reconstruction_norm not in NORMS:
            raise ValueError(
                f"model.scorer.reconstruction_norm={self.reconstruction_norm!r}: "
                f"expected one of {_choices(NORMS)}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"model.scorer.pooling={self.pooling!r}: expected one of {_choices(POOLINGS)}"
            )
        if not 0 < self.top_k_fraction <= 1:
            raise ValueError(
                f"model.scorer.top_k_fraction must be in (0, 1], got {self.top_k_fraction}"
            )
        if self.map_sigma < 0:
            raise ValueError(f"model.scorer.map_sigma must be >= 0, got {self.map_sigma}")
        fraction = self.map_sigma_fraction
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(
                f"model.scorer.map_sigma_fraction must be in (0, 1] or null, got {fraction}"
            )
        if not self.map_std_floor > 0:
            raise ValueError(
                f"model.scorer.map_std_floor must be > 0 (a fraction of the mean per-pixel "
                f"standard deviation, e.g. 0.1), got {self.map_std_floor}"
            )
        if self.localization_map not in LOCALIZATION_MAPS:
            raise ValueError(
                f"model.scorer.localization_map={self.localization_map!r}: expected one of "
                f"{_choices(LOCALIZATION_MAPS)}"
            )
        if self.localization_sigma < 0:
            raise ValueError(
                f"model.scorer.localization_sigma must be >= 0, got {self.localization_sigma}"
            )
        if self.smooth_difference and self.map_sigma == 0:
            raise ValueError(
                "model.scorer.smooth_difference=true needs model.scorer.map_sigma > 0 "
                "(e.g. map_sigma=2)"
            )

    # ------------------------------------------------------------------------ config
    @classmethod
    def from_config(
        cls, config: AnomalyScore | Mapping[str, Any], image_size: int | None = None
    ) -> AnomalyScore:
        """A fresh, uncalibrated scorer with ``config``'s settings (a dict or a scorer)."""
        if isinstance(config, AnomalyScore):
            config = config.to_config()
        return cls(
            **{k: v for k, v in dict(config).items() if k != "_target_"}, image_size=image_size
        )

    def to_config(self) -> dict[str, Any]:
        """The settings as a plain dict (``hparams["scorer"]``; no tensors, no classes)."""
        return {name: getattr(self, name) for name in FIELDS}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)

    # ------------------------------------------------------------------------ the map
    def error_map(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """Per-pixel error before standardisation, (B, C, H, W) -> (B, 1, H, W), in float32
        whatever the reconstruction's dtype (module docstring, mixed precision)."""
        with full_precision(image.device.type):
            return self._error_map(image.float(), reconstruction.float())

    def _error_map(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        norm = NORMS[self.reconstruction_norm]
        if self.smooth_difference and self.per_channel:
            return norm(self._blur(image - reconstruction)).mean(dim=1, keepdim=True)
        difference = (image - reconstruction).mean(dim=1, keepdim=True)
        if self.smooth_difference:
            return norm(self._blur(difference))
        error = norm(image - reconstruction).mean(dim=1, keepdim=True)
        return self._blur(error) if self.map_sigma > 0 else error

    def standardize(self, error_map: Tensor) -> Tensor:
        """(error - map_mean) / map_std per pixel when ``normalize_map``; unchanged otherwise."""
        if not self.normalize_map:
            return error_map
        if self.map_mean.shape[-2:] != error_map.shape[-2:] and self.map_mean.numel() > 1:
            # Not yet calibrated (identity statistics): nothing to standardise by.
            if bool((self.map_mean == 0).all()) and bool((self.map_std == 1).all()):
                return error_map
            raise ValueError(
                f"Anomaly map of {tuple(error_map.shape[-2:])} px, but the scorer's per-pixel "
                f"statistics were calibrated on {tuple(self.map_mean.shape[-2:])} px maps. "
                "Score images of the size the model was validated on: the checkpoint's "
                "data.image_size / data.resize (and tile frame) say which."
            )
        return (error_map - self.map_mean) / self.map_std

    def score_map(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """The map the image score pools, (B, 1, H, W): the error map, standardised."""
        return self.standardize(self.error_map(image, reconstruction))

    def localization_error(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """|x − x̂| averaged over the channels, Gaussian ``localization_sigma``, in float32,
        (B, C, H, W) -> (B, 1, H, W): the ``"error"`` localisation map."""
        with full_precision(image.device.type):
            error = (image.float() - reconstruction.float()).abs().mean(dim=1, keepdim=True)
            sigma = float(self.localization_sigma)
            return _gaussian(error, sigma) if sigma > 0 else error

    def anomaly_map(
        self, image: Tensor, reconstruction: Tensor, score_map: Tensor | None = None
    ) -> Tensor:
        """The map shown to users and scored against defect masks, (B, 1, H, W)
        (``localization_map``). ``score_map``: this image's :meth:`score_map`, when the
        caller has it already."""
        if self.localization_map == "error":
            return self.localization_error(image, reconstruction)
        return self.score_map(image, reconstruction) if score_map is None else score_map

    def pool(self, anomaly_map: Tensor) -> Tensor:
        """(B, 1, H, W) -> (B,): the image-level reconstruction term."""
        return POOLINGS[self.pooling](anomaly_map.flatten(1), self.top_k_fraction)

    latent_distance = staticmethod(latent_distance)

    # ---------------------------------------------------------------------- the score
    def score(self, latent_distance: Tensor, anomaly_map: Tensor) -> Tensor:
        """One score per image from its latent distance (B,) and anomaly map (B, 1, H, W),
        in float32 (a no-op on float32 inputs)."""
        latent_distance, anomaly_map = latent_distance.float(), anomaly_map.float()
        score = latent_distance.new_zeros(latent_distance.shape[0])
        if self.latent_weight:
            score = score + self.latent_weight * latent_distance
        if self.reconstruction_weight:
            score = score + self.reconstruction_weight * self.pool(anomaly_map)
        return score

    def score_error_maps(self, error_maps: Tensor, latent_distance: Tensor | None = None) -> Tensor:
        """Scores (B,) from raw :meth:`error_map` output (standardised here); no latent
        term when ``latent_distance`` is None (a reconstruction without latent codes)."""
        if latent_distance is None:
            latent_distance = error_maps.new_zeros(error_maps.shape[0])
        return self.score(latent_distance, self.standardize(error_maps))

    def forward(
        self, image: Tensor, reconstruction: Tensor, latent_in: Tensor, latent_out: Tensor
    ) -> Tensor:
        """One score per image, (B,); larger means more anomalous."""
        return self.score(
            self.latent_distance(latent_in, latent_out), self.score_map(image, reconstruction)
        )

    # -------------------------------------------------------------------- calibration
    @torch.no_grad()
    def calibrate(
        self,
        error_maps: Tensor,
        latent_distances: Tensor,
        threshold_quantile: float,
        localization_maps: Tensor | None = None,
    ) -> Tensor:
        """Map statistics and threshold from validation normals, in that order.

        ``error_maps`` (N, 1, H, W) are :meth:`error_map` outputs and ``latent_distances``
        (N,) the latent distances of the same N normal images (any leading dimensions, e.g.
        of an ``all_gather``, are flattened). With ``normalize_map`` the statistics come
        from the even-numbered images and the threshold from the odd-numbered ones, so the
        threshold is not set on images that standardised themselves (their scores would be
        optimistically low). ``localization_maps``: the same images' :meth:`localization_error`
        maps, whose :data:`LOCALIZATION_SCALE_QUANTILE` pixel becomes ``localization_scale``
        (the overlays' full-red value). Returns the scores the threshold was taken from.
        """
        if localization_maps is not None and localization_maps.numel() > 0:
            pixels = localization_maps.detach().flatten().float()
            rank = max(1, math.ceil(LOCALIZATION_SCALE_QUANTILE * pixels.numel()))
            self.localization_scale.fill_(float(pixels.kthvalue(rank).values))
        # float32 statistics whatever the maps' dtype: the buffers keep theirs (float32).
        maps = error_maps.reshape(-1, *error_maps.shape[-3:]).float()
        latent = latent_distances.flatten().float()
        held_out = self.held_out(maps.shape[0])
        if held_out != slice(None):
            reference = maps[0::2]
            self._store("map_mean", reference.mean(dim=0, keepdim=True))
            spread = reference.std(dim=0, keepdim=True)
            # A floor (map_std_floor) keeps pixels that barely vary (padding, saturation,
            # background) from exploding.
            floor = spread.mean().clamp_min(1e-8) * self.map_std_floor
            self._store("map_std", spread.clamp_min(floor))
            maps, latent = maps[held_out], latent[held_out]
        scores = self.score(latent, self.standardize(maps))
        self.threshold.fill_(threshold_from_normals(scores, threshold_quantile))
        return scores

    def held_out(self, count: int) -> slice:
        """Which of ``count`` validation normals :meth:`calibrate` scores and takes the
        threshold from: with ``normalize_map`` (and at least 4 images) the odd-numbered ones,
        since the even-numbered ones set the per-pixel statistics; otherwise all of them.
        Anything compared with those scores (synthetic-defect copies) must come from the
        same images: a copy of an image the statistics came from scores optimistically low."""
        return slice(1, None, 2) if self.normalize_map and count >= 4 else slice(None)

    def map_scale(self) -> float | None:
        """The anomaly-map value an overlay colours full red, or None (each overlay by its
        own maximum).

        ``localization_map="error"``: ``localization_scale``, the error that almost no pixel
        of the validation normals reaches (None before calibration). ``"score"``:
        ``threshold / reconstruction_weight``, the mean per-pixel error at which the score's
        reconstruction term alone reaches the decision threshold; None when the score has no
        reconstruction term (the map is then not on the score's scale) or no threshold.
        """
        if self.localization_map == "error":
            scale = float(self.localization_scale)
            return scale if math.isfinite(scale) and scale > 0 else None
        weight = float(self.reconstruction_weight)
        threshold = float(self.threshold)
        if weight > 0 and math.isfinite(threshold) and threshold > 0:
            return threshold / weight
        return None

    # ---------------------------------------------------------------------- helpers
    def sigma_for(self, height: int, width: int) -> float:
        """The smoothing's σ on an ``height`` × ``width`` map (see ``map_sigma_fraction``)."""
        if self.map_sigma_fraction is None:
            return float(self.map_sigma)
        return min(float(self.map_sigma), self.map_sigma_fraction * min(height, width))

    def _blur(self, values: Tensor) -> Tensor:
        return _gaussian(values, self.sigma_for(values.shape[-2], values.shape[-1]))

    def _store(self, name: str, value: Tensor) -> None:
        """Write a statistic into its buffer: in place (the buffer object, which DDP holds on
        to, stays the same), or replaced by a copy when a scorer built without
        ``image_size``, or one whose maps cover a tile frame, meets its first maps."""
        buffer = getattr(self, name)
        if buffer.shape == value.shape:
            buffer.copy_(value)
            return
        with torch.inference_mode(False):  # a normal tensor, loadable in place later
            setattr(self, name, value.to(buffer.dtype).clone())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints from before the error localisation map have no overlay scale: NaN
        # (uncalibrated) until the next validation.
        state_dict.setdefault(prefix + "localization_scale", self.localization_scale.clone())
        # The maps' shape is the checkpoint's: a scorer built without image_size, or for
        # tiles of a larger frame (data.resize=tile), takes it from the file.
        for name in ("map_mean", "map_std"):
            incoming = state_dict.get(prefix + name)
            own = self._buffers[name]
            if incoming is not None and own is not None and incoming.shape != own.shape:
                self._buffers[name] = own.new_empty(incoming.shape)
        super()._load_from_state_dict(state_dict, prefix, *args)
