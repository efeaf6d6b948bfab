"""Datasets and LightningDataModules: MVTec-layout folders and a built-in synthetic textile."""

from anomaly_gan.data.datamodule import AnomalyDataModule
from anomaly_gan.data.dataset import AnomalyImageDataset, DatasetError, Sample
from anomaly_gan.data.mvtec import IMAGE_EXTENSIONS, MVTEC_CATEGORIES, MVTecDataModule
from anomaly_gan.data.synthetic import (
    SYNTHETIC_DEFECT_TYPES,
    SyntheticDataModule,
    generate_synthetic_dataset,
)
from anomaly_gan.data.transforms import NORMALIZE_MEAN, NORMALIZE_STD, build_transform, denormalize

__all__ = [
    "IMAGE_EXTENSIONS",
    "MVTEC_CATEGORIES",
    "NORMALIZE_MEAN",
    "NORMALIZE_STD",
    "SYNTHETIC_DEFECT_TYPES",
    "AnomalyDataModule",
    "AnomalyImageDataset",
    "DatasetError",
    "MVTecDataModule",
    "Sample",
    "SyntheticDataModule",
    "build_transform",
    "denormalize",
    "generate_synthetic_dataset",
]
