"""Base LightningDataModule: one scan, a seeded train/val split of normals, per-category tests.

Anomaly detectors train on normal images only. The validation split is held out from the
training normals so checkpoint choice and thresholds never look at test labels.
"""

from __future__ import annotations

import abc
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from anomaly_gan.data.dataset import AnomalyImageDataset, DatasetError, Sample


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_positive_int(key: str, value: Any) -> None:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}. Set {key}=<int > 0>.")


class AnomalyDataModule(L.LightningDataModule, abc.ABC):
    """Shared loaders for every dataset layout; subclasses only implement ``scan``.

    Batches are dicts: ``image`` (B, C, H, W) float32 in [-1, 1], ``label`` (B,) int64,
    ``mask`` (B, 1, H, W) float32 0/1, ``image_path`` and ``defect_type`` lists of str.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("data.image_size", image_size)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(
                f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}. "
                "Set data.channels=1 or data.channels=3."
            )
        _check_positive_int("data.batch_size", batch_size)
        if eval_batch_size is not None:
            _check_positive_int("data.eval_batch_size", eval_batch_size)
        if not _is_int(num_workers) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}.")
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
        # Every __init__ argument of the concrete class (root, category, image_size, ...)
        # goes into checkpoints, so a loaded model knows its preprocessing.
        self.save_hyperparameters(logger=False)
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self._scan_result: tuple[list[Sample], dict[str, list[Sample]]] | None = None
        self._train_samples: list[Sample] | None = None
        self._val_samples: list[Sample] | None = None

    @abc.abstractmethod
    def scan(self) -> tuple[list[Sample], dict[str, list[Sample]]]:
        """Return (training normals, {test category name: test samples}) in a fixed order."""

    # ------------------------------------------------------------------ setup / split
    def setup(self, stage: str | None = None) -> None:
        """Scan once and split the training normals; later calls reuse the result."""
        if self._scan_result is None:
            train_normals, test_samples = self.scan()
            if not train_normals:
                raise DatasetError(
                    f"{type(self).__name__} found no training images. Check data.root "
                    "and data.category point at a dataset with normal training images."
                )
            self._scan_result = (list(train_normals), dict(test_samples))
            self._train_samples, self._val_samples = self._split(self._scan_result[0])

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
    def _dataset(self, samples: list[Sample]) -> AnomalyImageDataset:
        return AnomalyImageDataset(samples, self.image_size, self.channels)

    def _loader(self, samples: list[Sample], batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            self._dataset(samples),
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled normals; drops a last partial batch (BatchNorm cannot train on size 1)."""
        samples = self.train_samples
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(
            samples,
            self.batch_size,
            shuffle=True,
            generator=generator,
            drop_last=len(samples) > self.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        """Held-out normal images only, in a fixed order."""
        return self._loader(self.val_samples, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test category, in the order of ``test_category_names``."""
        return [
            self._loader(self.test_samples[name], self.eval_batch_size, shuffle=False)
            for name in self.test_category_names
        ]
