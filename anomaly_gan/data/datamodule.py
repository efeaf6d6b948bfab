"""Base LightningDataModule: one scan, a seeded train/val split of normals, per-category tests.

Anomaly detectors train on normal images only. The validation split is held out from the
training normals so checkpoint choice and thresholds never look at test labels.

Shared by every dataset layout:

- cross-class testing: ``scan`` returns one test set per category (``data.test_categories``),
  each with its own loader and its own block of metrics;
- ``data.test_limit``: a seeded, class-balanced subset of each test set;
- ``data.resize``: squash / pad / crop to a square, or ``tile`` (a larger frame of the images'
  own aspect ratio, cut into tiles; ``anomaly_gan.data.geometry``);
- ``data.augmentations``: albumentations transforms by name, on the training normals only;
- ``data.cache`` / ``data.cache_dir``: decoded, resized images kept in memory and on disk;
- every image and mask checked at setup (``verify.py``): a bad file stops the run before
  training, or with ``data.skip_corrupt`` is dropped with a warning and a count;
- ``data.download``: the official archive fetched into an empty ``data.root``;
- persistent (training and validation), per-worker-seeded DataLoader workers;
- ``data.pin_memory``: null (auto) pins batches when the Trainer trains on a CUDA device,
  so the host-to-device copy can overlap the step; on CPU pinning only costs a copy;
- ``data.num_workers=auto``: 2 worker processes on CPU (as before), more on a CUDA device,
  where normalising 256 px images in 2 workers cannot keep up with the GPU (BENCHMARKS.md,
  "Data feed").
"""

from __future__ import annotations

import abc
import logging
import os
import random
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, get_worker_info

from anomaly_gan.data.cache import ImageCache
from anomaly_gan.data.dataset import (
    ANOMALOUS,
    NORMAL,
    AnomalyImageDataset,
    DatasetError,
    Sample,
    read_image,
)
from anomaly_gan.data.download import ARCHIVES, check_sha256, download_dataset, is_empty_root
from anomaly_gan.data.geometry import Geometry, check_resize, tile_frame
from anomaly_gan.data.transforms import build_augmentations, check_normalization
from anomaly_gan.data.verify import FileInfo, mixed_formats, verify_samples

log = logging.getLogger(__name__)


#: ``data.channels=auto``: 1 or 3, read from the training images at ``setup``.
AUTO_CHANNELS = "auto"
#: ``data.num_workers=auto``: :data:`CPU_AUTO_WORKERS` on CPU, up to
#: :data:`MAX_AUTO_WORKERS` per CUDA device (:meth:`AnomalyDataModule.resolve_num_workers`).
AUTO_WORKERS = "auto"
#: auto on CPU: the project's fixed default before ``auto`` existed, so CPU runs (and the
#: per-worker augmentation streams they draw) stay as they were.
CPU_AUTO_WORKERS = 2
#: auto on CUDA: a warm 256 px RGB image costs ~5-7 ms of one CPU core (normalise + collate),
#: so ~8 workers feed ~1,200 images/s; more only add memory and start-up time.
MAX_AUTO_WORKERS = 8


class DataWarning(UserWarning):
    """Data was dropped or a request could not be met exactly (skipped files, short classes)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_positive_int(key: str, value: Any) -> None:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}. Set {key}=<int > 0>.")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}.")


def check_test_categories(value: Any) -> list[str] | None:
    """``data.test_categories``: None (= the training category) or a list of distinct names."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(
            "data.test_categories must be a non-empty list of category names (or null for "
            f"the training category only), got {value!r}. Example: "
            "data.test_categories=[candle,cashew,fryum]."
        )
    names = list(value)
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or "\\" in name:
            raise ValueError(f"data.test_categories entries must be folder names, got {name!r}.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"data.test_categories lists {', '.join(duplicates)} more than once.")
    return names


def _plain(value: Any) -> Any:
    """OmegaConf containers (Hydra's arguments) as plain Python lists and dicts."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def infer_channels(paths: Sequence[Path], probes: int = 16) -> int:
    """1 when every probed image is grayscale (one channel, or three equal ones), else 3.

    Up to ``probes`` images spread evenly over ``paths`` are decoded, so a set whose
    colour images come later in name order is still seen as colour.
    """
    if not paths:
        return 3
    step = max(1, len(paths) // probes)
    for path in list(paths)[::step][:probes]:
        image = read_image(Path(path), 3)
        if np.ptp(image.astype(np.float32), axis=2).max() > 0:
            return 3
    return 1


def check_category(category: Any, expected: str, dataset: str, known: Sequence[str]) -> str:
    """``data.category`` is a non-empty string; the error lists the dataset's categories."""
    if not isinstance(category, str) or not category:
        raise ValueError(
            f"data.category must be {expected}, got {category!r}. "
            f"{dataset} categories: {', '.join(known)}."
        )
    return category


def check_single_test_set(category: str, test_categories: Any, dataset: str) -> None:
    """Datasets with one category (KolektorSDD, a folder) accept only null or [category]."""
    if not isinstance(category, str) or not category:
        raise ValueError(f"data.category must be a non-empty name, got {category!r}.")
    checked = check_test_categories(test_categories)
    if checked is not None and checked != [category]:
        raise ValueError(
            f"{dataset} has a single category ({category!r}); data.test_categories must "
            f"be null or [{category}], got {test_categories!r}."
        )


def split_groups(groups: list[str], fraction: float, rng: np.random.Generator) -> set[str]:
    """Seeded choice of ``round(fraction * n)`` groups (at least 1, never all, if n >= 2).

    Used to hold out whole groups (KolektorSDD parts, or single files) for test/validation.
    """
    n = len(groups)
    k = round(fraction * n)
    k = min(max(k, 1), n - 1) if fraction > 0 and n >= 2 else min(k, max(n - 1, 0))
    order = rng.permutation(n)
    return {groups[i] for i in order[:k]}


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy, ``random`` and albumentations per worker.

    ``torch.initial_seed()`` inside a worker is the loader's base seed + ``worker_id`` (the
    base seed comes from the torch generator, itself seeded by ``seed_everything`` / the
    loader's generator), so workers differ from each other and from epoch to epoch but a
    run is reproducible. The process rank is mixed in so DDP ranks do not augment alike.
    Albumentations 2 keeps its own generators, so reseeding global numpy is not enough.
    """
    torch_seed = torch.initial_seed()
    rank = int(getattr(rank_zero_only, "rank", 0) or 0)
    sequence = np.random.SeedSequence(
        [torch_seed & 0xFFFF_FFFF, (torch_seed >> 32) & 0xFFFF_FFFF, rank, worker_id]
    )
    numpy_seed, python_seed, transform_seed = (int(s) for s in sequence.generate_state(3))
    np.random.seed(numpy_seed)
    random.seed(python_seed)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    if hasattr(dataset, "seed_transforms"):
        dataset.seed_transforms(transform_seed)


class AnomalyDataModule(L.LightningDataModule, abc.ABC):
    """Shared loaders for every dataset layout; subclasses only implement ``scan``.

    Batches are dicts: ``image`` (B, C, H, W) float32 in [-1, 1], ``label`` (B,) int64,
    ``mask`` (B, 1, H, W) float32 0/1, ``image_path`` and ``defect_type`` lists of str.

    Subclasses that can download set ``archive_name`` (a key of ``download.ARCHIVES``),
    ``self.root`` and implement ``check_layout``.
    """

    archive_name: ClassVar[str | None] = None
    root: Path  # set by every subclass that reads files (used by downloads)

    def __init__(
        self,
        image_size: int = 64,
        channels: int | str = 3,
        normalization: str = "fixed",
        resize: str = "squash",
        tile_scale: float = 2.0,
        augmentations: Sequence[Any] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        pin_memory: bool | None = None,
        test_limit: int | None = None,
        selection_fraction: float = 0.0,
        test_part: str = "report",
        cache: bool = True,
        cache_dir: str | Path | None = None,
        skip_corrupt: bool = False,
        download: bool = False,
        download_url: str | None = None,
        sha256: str | None = None,
    ) -> None:
        super().__init__()
        _check_positive_int("data.image_size", image_size)
        if channels not in (1, 3, AUTO_CHANNELS) or isinstance(channels, bool):
            raise ValueError(
                f"data.channels must be 1 (grayscale), 3 (RGB) or 'auto' (read from the "
                f"training images), got {channels!r}. Set data.channels=1, 3 or auto."
            )
        check_normalization(normalization)
        check_resize(resize, tile_scale)
        self.augmentations = build_augmentations(augmentations)
        _check_positive_int("data.batch_size", batch_size)
        if eval_batch_size is not None:
            _check_positive_int("data.eval_batch_size", eval_batch_size)
        if num_workers != AUTO_WORKERS and (not _is_int(num_workers) or num_workers < 0):
            raise ValueError(
                f"data.num_workers must be an integer >= 0 or 'auto' ({CPU_AUTO_WORKERS} on "
                f"CPU, more on a CUDA device), got {num_workers!r}."
            )
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, int | float)
            or not 0 <= val_fraction < 1
        ):
            raise ValueError(
                f"data.val_fraction must be a number in [0, 1), got {val_fraction!r}. "
                "Use e.g. data.val_fraction=0.1 (0 disables validation)."
            )
        if not _is_int(seed):
            raise ValueError(f"data.seed must be an integer, got {seed!r}.")
        if pin_memory is not None and not isinstance(pin_memory, bool):
            raise ValueError(
                f"data.pin_memory must be true, false or null (auto: pinned when the Trainer "
                f"uses a CUDA device), got {pin_memory!r}."
            )
        if test_limit is not None and (not _is_int(test_limit) or test_limit < 2):
            raise ValueError(
                f"data.test_limit must be null (all images) or an integer >= 2, got "
                f"{test_limit!r}. Example: data.test_limit=100 (50 normal + 50 anomalous)."
            )
        if (
            isinstance(selection_fraction, bool)
            or not isinstance(selection_fraction, int | float)
            or not 0 <= selection_fraction < 1
        ):
            raise ValueError(
                f"data.selection_fraction must be a number in [0, 1), got "
                f"{selection_fraction!r}. Use e.g. data.selection_fraction=0.3 (0 disables)."
            )
        if test_part not in ("report", "selection"):
            raise ValueError(f"data.test_part must be 'report' or 'selection', got {test_part!r}.")
        if test_part == "selection" and selection_fraction == 0:
            raise ValueError(
                "data.test_part=selection needs data.selection_fraction > 0: there is no "
                "selection subset to test on."
            )
        for key, flag in (
            ("data.cache", cache),
            ("data.skip_corrupt", skip_corrupt),
            ("data.download", download),
        ):
            _check_bool(key, flag)
        if download and (self.archive_name is None or self.archive_name not in ARCHIVES):
            raise ValueError(
                f"data.download=true is not available for {type(self).__name__}: there is no "
                "official archive to fetch. Set data.download=false and point data.root at "
                "your files."
            )
        if sha256 is not None:
            sha256 = check_sha256(sha256)
        # Every __init__ argument of the concrete class (root, category, image_size, ...)
        # goes into checkpoints, so a loaded model knows its preprocessing.
        self.save_hyperparameters(logger=False)
        self.image_size = int(image_size)
        self.channels: int | str = channels if channels == AUTO_CHANNELS else int(channels)
        self.normalization = normalization
        self.resize = resize
        self.tile_scale = float(tile_scale)
        # tile: the frame (height, width) is read from the training images at setup.
        self.frame: tuple[int, int] | None = None
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        #: 'auto' is resolved per loader by :meth:`resolve_num_workers`.
        self.num_workers: int | str = (
            AUTO_WORKERS if num_workers == AUTO_WORKERS else int(num_workers)
        )
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        #: None = auto, resolved per loader by :meth:`resolve_pin_memory`.
        self.pin_memory: bool | None = pin_memory
        self.test_limit = None if test_limit is None else int(test_limit)
        self.selection_fraction = float(selection_fraction)
        self.test_part = test_part
        self.skip_corrupt = skip_corrupt
        self.download = download
        self.download_url = download_url
        self.sha256 = sha256
        self.cache_dir = (
            Path(cache_dir).expanduser().absolute() if cache and cache_dir is not None else None
        )
        # Plain lists and dicts (not OmegaConf containers) keep checkpoints loadable with
        # torch.load(weights_only=True).
        self.hparams["augmentations"] = _plain(augmentations) or []
        if cache_dir is not None:
            # A str (not a Path) keeps checkpoints loadable with torch.load(weights_only=True).
            self.hparams["cache_dir"] = str(cache_dir)
        self.image_cache: ImageCache | None = ImageCache(self.cache_dir) if cache else None
        self.skipped: list[tuple[Path, str]] = []
        self._scan_result: tuple[list[Sample], dict[str, list[Sample]]] | None = None
        self._train_samples: list[Sample] | None = None
        self._val_samples: list[Sample] | None = None

    def set_source(
        self, root: str | Path, category: str, test_categories: list[str] | None
    ) -> None:
        """Where the images are: the root folder, the training category, the test ones."""
        self.root = Path(root).expanduser()
        self.category = category
        self.test_categories = test_categories
        # A str (not a Path) keeps checkpoints loadable with torch.load(weights_only=True).
        self.hparams["root"] = str(root)

    @abc.abstractmethod
    def scan(self) -> tuple[list[Sample], dict[str, list[Sample]]]:
        """Return (training normals, {test category name: test samples}) in a fixed order."""

    def check_layout(self, root: Path) -> None:
        """Raise ``DatasetError`` unless ``root`` looks like this dataset (download check)."""
        raise NotImplementedError(f"{type(self).__name__} has no downloadable archive.")

    # ------------------------------------------------------------------ download
    def prepare_data(self) -> None:
        """Fetch the official archive when ``data.download=true`` and the root is empty.

        Lightning runs this on one process per node before ``setup``; ``setup`` calls it
        itself when the datamodule is used without a Trainer.
        """
        if not self.download:
            return
        root = Path(self.root)
        if not is_empty_root(root):
            return  # never download over existing files; scan() reports what is wrong
        assert self.archive_name is not None  # checked in __init__
        download_dataset(
            self.archive_name,
            root,
            layout_check=self.check_layout,
            url=self.download_url,
            sha256=self.sha256,
        )

    # ------------------------------------------------------------------ setup / split
    def setup(self, stage: str | None = None) -> None:
        """Scan once, drop corrupt files, limit the test sets and split the normals.

        Later calls (``fit`` then ``test``) reuse the result.
        """
        if self._scan_result is not None:
            return
        if self.trainer is None:
            self.prepare_data()
        train_normals, test_samples = self.scan()
        train_normals = list(train_normals)
        test_samples = {name: list(samples) for name, samples in test_samples.items()}
        train_normals, test_samples, formats = self._drop_corrupt(train_normals, test_samples)
        train_formats = {s.image_path: formats[s.image_path] for s in train_normals}
        if not train_normals:
            raise DatasetError(
                f"{type(self).__name__} found no usable training images. Check data.root "
                "and data.category point at a dataset with normal training images."
            )
        if self.test_limit is not None:
            test_samples = {
                name: self._balanced_subset(name, samples) for name, samples in test_samples.items()
            }
        if self.selection_fraction > 0:
            test_samples = {
                name: self._test_part(name, samples) for name, samples in test_samples.items()
            }
        if self.channels == AUTO_CHANNELS:
            self.channels = infer_channels([sample.image_path for sample in train_normals])
            self.hparams["channels"] = self.channels
            log.info(
                "data.channels=auto: the training images are %s, so channels=%d.",
                "grayscale" if self.channels == 1 else "colour",
                self.channels,
            )
        if self.resize == "tile" and self.frame is None:
            # Every training image's size, as the setup check read it from its header.
            sizes = [(info.height, info.width) for info in train_formats.values()]
            self.frame = tile_frame(sizes, self.image_size, self.tile_scale)
            self.hparams["frame"] = list(self.frame)
            log.info(
                "data.resize=tile: images are resized to %dx%d (height x width) and scored in "
                "%d px tiles.",
                *self.frame,
                self.image_size,
            )
        self._scan_result = (train_normals, test_samples)
        self._train_samples, self._val_samples = self._split(train_normals)

    @property
    def geometry(self) -> Geometry:
        """The shape every image is resized to (in ``tile`` mode known after ``setup``)."""
        if self.resize == "tile" and self.frame is None:
            self.setup("fit")
        return Geometry(self.image_size, self.resize, self.frame)

    def resolve_channels(self) -> int:
        """The channel count, reading the training images first when ``data.channels=auto``.

        ``train.py`` calls it before building the model, whose input channels follow.
        """
        if self.channels == AUTO_CHANNELS:
            self.setup("fit")
        return int(self.channels)

    def _split(self, normals: list[Sample]) -> tuple[list[Sample], list[Sample]]:
        """Seeded random hold-out of ``val_fraction`` of the normals (at least 1 if asked)."""
        n = len(normals)
        n_val = round(self.val_fraction * n)
        if self.val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)  # keep at least one training image
        else:
            n_val = min(n_val, max(n - 1, 0))
        order = np.random.default_rng(self.seed).permutation(n)
        val_index = set(order[:n_val].tolist())
        train = [s for i, s in enumerate(normals) if i not in val_index]
        val = [s for i, s in enumerate(normals) if i in val_index]
        return train, val

    def _drop_corrupt(
        self, train: list[Sample], tests: dict[str, list[Sample]]
    ) -> tuple[list[Sample], dict[str, list[Sample]], dict[Path, FileInfo]]:
        """Check every image and mask (``anomaly_gan.data.verify``) before any is trained on.

        A bad file stops the run here, naming every bad file, instead of at whichever step
        first draws it (or never, when ``drop_last`` drops its batch). With
        ``data.skip_corrupt=true`` its sample is dropped with a warning instead, and
        ``self.skipped`` lists it (``results.json``: ``skipped_files``). Images that mix
        pixel formats are converted and named in a warning. Returns the kept samples and
        what every usable image holds (size, channels, bit depth).
        """
        unique = list(dict.fromkeys([*train, *(s for samples in tests.values() for s in samples)]))
        checked = verify_samples(unique)
        bad = checked.bad
        if bad and not self.skip_corrupt:
            listed = "\n".join(f"  {reason}" for reason in list(bad.values())[:5])
            more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise DatasetError(
                f"{len(bad)} of {len(unique)} samples of {type(self).__name__} cannot be "
                f"used:\n{listed}{more}\nFix: replace or remove these files, or set "
                "data.skip_corrupt=true to skip them with a warning."
            )
        self.skipped.extend((s.image_path, reason) for s, reason in bad.items())
        if bad:
            listed = "; ".join(f"{s.image_path}" for s in list(bad)[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            message = (
                f"data.skip_corrupt=true: skipped {len(bad)} of {len(unique)} images that "
                f"could not be used: {listed}{more}. The first error: {next(iter(bad.values()))}"
            )
            warnings.warn(message, DataWarning, stacklevel=3)
            log.warning(message)
        keep = [s for s in train if s not in bad]
        kept_tests = {name: [s for s in samples if s not in bad] for name, samples in tests.items()}
        groups = {"training images": keep}
        groups |= {f"test images of {name}": samples for name, samples in kept_tests.items()}
        for group, samples in groups.items():
            formats = {s.image_path: checked.images[s.image_path] for s in samples}
            mixed = mixed_formats(formats, group)
            if mixed:
                warnings.warn(mixed, DataWarning, stacklevel=3)
                log.warning(mixed)
        return keep, kept_tests, checked.images

    def _test_part(self, name: str, samples: list[Sample]) -> list[Sample]:
        """The ``selection`` or ``report`` part of a test set (``data.selection_fraction``).

        Settings that need anomalies to be chosen (score function, training length) are
        compared on the selection part; reported figures come from the report part, which
        such choices never saw. Stratified by defect type, and seeded by the category name
        only, so every training seed reports on the same images.
        """
        rng = np.random.default_rng(zlib.crc32(f"selection/{name}".encode()))
        selected: set[int] = set()
        for defect_type in sorted({s.defect_type for s in samples}):
            indices = [i for i, s in enumerate(samples) if s.defect_type == defect_type]
            count = round(self.selection_fraction * len(indices))
            selected.update(rng.choice(indices, size=count, replace=False).tolist())
        want_selected = self.test_part == "selection"
        return [s for i, s in enumerate(samples) if (i in selected) == want_selected]

    def _balanced_subset(self, name: str, samples: list[Sample]) -> list[Sample]:
        """Seeded ``test_limit``-image subset: half normal, half anomalous, original order.

        The generator depends on ``data.seed`` and the category name only, so a category's
        subset does not change when other categories are added to ``test_categories``.
        """
        assert self.test_limit is not None
        wanted = {NORMAL: self.test_limit // 2, ANOMALOUS: self.test_limit - self.test_limit // 2}
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        chosen: list[int] = []
        for label, label_name in ((NORMAL, "normal"), (ANOMALOUS, "anomalous")):
            indices = [i for i, s in enumerate(samples) if s.label == label]
            if len(indices) <= wanted[label]:
                if len(indices) < wanted[label]:
                    warnings.warn(
                        f"Test category {name!r} has only {len(indices)} {label_name} images, "
                        f"fewer than the {wanted[label]} that data.test_limit={self.test_limit}"
                        " asks for; using all of them.",
                        DataWarning,
                        stacklevel=3,
                    )
                chosen += indices
            else:
                chosen += rng.choice(indices, size=wanted[label], replace=False).tolist()
        return [samples[i] for i in sorted(chosen)]

    def _require_setup(self) -> tuple[list[Sample], list[Sample], dict[str, list[Sample]]]:
        if self._scan_result is None or self._train_samples is None or self._val_samples is None:
            raise RuntimeError(f"Call {type(self).__name__}.setup() before using its samples.")
        return self._train_samples, self._val_samples, self._scan_result[1]

    @property
    def train_samples(self) -> list[Sample]:
        return self._require_setup()[0]

    @property
    def val_samples(self) -> list[Sample]:
        return self._require_setup()[1]

    @property
    def test_samples(self) -> dict[str, list[Sample]]:
        return self._require_setup()[2]

    @property
    def test_category_names(self) -> list[str]:
        """Names of the test categories, in the order of ``test_dataloader()``."""
        return list(self.test_samples)

    # ------------------------------------------------------------------ loaders
    def resolve_pin_memory(self) -> bool:
        """``data.pin_memory``, with null (auto) resolved to "the batches go to a CUDA device".

        Pinned (page-locked) host memory lets the copy to the GPU run asynchronously
        (Lightning moves batches with ``non_blocking=True``); without a CUDA device it is
        only an extra copy. Auto follows the attached Trainer's accelerator, so
        ``trainer=cpu`` on a GPU machine does not pin.
        """
        if self.pin_memory is not None:
            return self.pin_memory
        return self._feeds_cuda()

    def resolve_num_workers(self) -> int:
        """``data.num_workers``, with ``auto`` resolved for the device the batches go to.

        CPU: :data:`CPU_AUTO_WORKERS`, unchanged from the fixed default, so CPU results and
        tests do not move. CUDA: the CPU cores this process may use, shared among the
        Trainer's devices on this node, minus one for the training process, between
        :data:`CPU_AUTO_WORKERS` and :data:`MAX_AUTO_WORKERS`. The per-worker seeds make a
        run repeatable for a given worker count; with random augmentations or tiles, set a
        number to repeat a run on a machine with another core count.
        """
        if self.num_workers != AUTO_WORKERS:
            return int(self.num_workers)
        if not self._feeds_cuda():
            return CPU_AUTO_WORKERS
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        devices = max(1, int(getattr(self.trainer, "num_devices", 1) or 1))
        return max(CPU_AUTO_WORKERS, min(MAX_AUTO_WORKERS, cores // devices - 1))

    def _feeds_cuda(self) -> bool:
        """Whether batches go to a CUDA device: the attached Trainer's accelerator, or
        without a Trainer (the datamodule on its own) ``torch.cuda.is_available()``."""
        trainer = self.trainer
        if trainer is not None:
            from lightning.pytorch.accelerators import CUDAAccelerator

            return isinstance(trainer.accelerator, CUDAAccelerator)
        return torch.cuda.is_available()

    def _dataset(self, samples: list[Sample], training: bool = False) -> AnomalyImageDataset:
        """Validation and test images are whole (frames in tile mode); ``training`` adds the
        augmentations and, in tile mode, a random tile of each frame."""
        # One ImageCache for all splits: in this process a file decoded for validation is
        # not decoded again for testing; each worker gets a copy that it fills itself.
        return AnomalyImageDataset(
            samples,
            self.geometry,
            int(self.channels),
            cache=self.image_cache,
            augmentations=self.augmentations if training else None,
            seed=self.seed,
            normalization=self.normalization,
            random_tiles=training,
        )

    def _loader(
        self,
        samples: list[Sample],
        batch_size: int,
        persistent: bool = True,
        training: bool = False,
        **kwargs: Any,
    ) -> DataLoader:
        workers = self.resolve_num_workers()
        return DataLoader(
            self._dataset(samples, training),
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=self.resolve_pin_memory(),
            persistent_workers=persistent and workers > 0,
            worker_init_fn=seed_worker,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled normals; drops a last partial batch (BatchNorm cannot train on size 1)."""
        samples = self.train_samples
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(
            samples,
            self.batch_size,
            training=True,
            shuffle=True,
            generator=generator,
            drop_last=len(samples) > self.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        """Held-out normal images only, in a fixed order."""
        return self._loader(self.val_samples, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test category, in the order of ``test_category_names``.

        Test loaders are read once, so their workers are not kept alive.
        """
        return [
            self._loader(
                self.test_samples[name], self.eval_batch_size, persistent=False, shuffle=False
            )
            for name in self.test_category_names
        ]


def missing_root_message(root: Path, layout: str, downloadable: bool) -> str:
    """The error text for a missing or empty ``data.root``: path, layout and the fixes."""
    fix = "set data.root=<folder holding the dataset>"
    if downloadable:
        fix += ", or add data.download=true to fetch the official archive into an empty root"
    return f"Dataset root {root} does not exist or is empty. Expected layout: {layout}. Fix: {fix}."
