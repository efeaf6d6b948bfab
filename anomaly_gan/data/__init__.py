"""Datasets and LightningDataModules.

MVTec AD (and any MVTec-layout folder), VisA (raw layout + split CSV), KolektorSDD,
generic folders and a built-in synthetic textile; cross-class test sets, a decoded-image
cache, and verified downloads of the official archives.
"""

from anomaly_gan.data.cache import Decoded, ImageCache
from anomaly_gan.data.datamodule import AnomalyDataModule, DataWarning, seed_worker
from anomaly_gan.data.dataset import AnomalyImageDataset, DatasetError, Sample
from anomaly_gan.data.download import ARCHIVES, DatasetArchive, DownloadError, download_dataset
from anomaly_gan.data.folder import FolderDataModule
from anomaly_gan.data.kolektor import KolektorDataModule
from anomaly_gan.data.mvtec import IMAGE_EXTENSIONS, MVTEC_CATEGORIES, MVTecDataModule
from anomaly_gan.data.synthetic import (
    SYNTHETIC_DEFECT_TYPES,
    SyntheticDataModule,
    generate_synthetic_dataset,
)
from anomaly_gan.data.transforms import NORMALIZE_MEAN, NORMALIZE_STD, build_transform, denormalize
from anomaly_gan.data.visa import VISA_CATEGORIES, VisADataModule

__all__ = [
    "ARCHIVES",
    "IMAGE_EXTENSIONS",
    "MVTEC_CATEGORIES",
    "NORMALIZE_MEAN",
    "NORMALIZE_STD",
    "SYNTHETIC_DEFECT_TYPES",
    "VISA_CATEGORIES",
    "AnomalyDataModule",
    "AnomalyImageDataset",
    "DataWarning",
    "DatasetArchive",
    "DatasetError",
    "Decoded",
    "DownloadError",
    "FolderDataModule",
    "ImageCache",
    "KolektorDataModule",
    "MVTecDataModule",
    "Sample",
    "SyntheticDataModule",
    "VisADataModule",
    "build_transform",
    "denormalize",
    "download_dataset",
    "generate_synthetic_dataset",
    "seed_worker",
]
