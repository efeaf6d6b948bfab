"""The data feed's loader options (issue 16): pinned memory and the worker count follow the
accelerator, workers persist across epochs for training and validation, bad values are
named. Also the bench's device-peak table. No training, no worker started: a few seconds."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.accelerators import CUDAAccelerator

from anomaly_gan.data import MVTecDataModule
from anomaly_gan.data.datamodule import CPU_AUTO_WORKERS, MAX_AUTO_WORKERS
from tests.conftest import CONFIG_DIR, REPO_ROOT
from tests.test_data import make_tiny_mvtec

sys.path.insert(0, str(REPO_ROOT / "bench"))
import _common as bench_common  # bench/ holds scripts, not a package


def _dm(tmp_path: Path, **kwargs) -> MVTecDataModule:
    root = make_tiny_mvtec(tmp_path / "data")
    dm = MVTecDataModule(root=str(root), category="widget", image_size=8, batch_size=2, **kwargs)
    dm.setup()
    return dm


def test_pin_memory_auto_is_off_for_a_cpu_trainer(tmp_path: Path) -> None:
    dm = _dm(tmp_path)  # pin_memory=None: auto
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    assert dm.resolve_pin_memory() is False
    assert dm.train_dataloader().pin_memory is False
    assert dm.val_dataloader().pin_memory is False


def test_pin_memory_auto_is_on_for_a_cuda_trainer(tmp_path: Path) -> None:
    # A stand-in trainer: only its accelerator is read, and no CUDA device is needed for that.
    dm = _dm(tmp_path)
    dm.trainer = SimpleNamespace(accelerator=CUDAAccelerator())
    assert dm.resolve_pin_memory() is True


def test_pin_memory_auto_without_a_trainer_follows_cuda_availability(tmp_path: Path) -> None:
    assert _dm(tmp_path).resolve_pin_memory() is torch.cuda.is_available()


@pytest.mark.parametrize("value", [True, False])
def test_pin_memory_explicit_value_wins(tmp_path: Path, value: bool) -> None:
    dm = _dm(tmp_path, pin_memory=value)
    dm.trainer = SimpleNamespace(accelerator=CUDAAccelerator())
    assert dm.resolve_pin_memory() is value
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    assert dm.train_dataloader().pin_memory is value


@pytest.mark.parametrize("value", ["yes", 1, "auto"])
def test_pin_memory_bad_value_is_named(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValueError, match=r"data\.pin_memory .*null \(auto"):
        MVTecDataModule(root=str(tmp_path), category="widget", pin_memory=value)


def test_workers_persist_for_training_and_validation_not_testing(tmp_path: Path) -> None:
    # Building the loaders starts no worker; only iterating does.
    dm = _dm(tmp_path, num_workers=2)
    assert dm.train_dataloader().persistent_workers
    assert dm.val_dataloader().persistent_workers
    assert not any(loader.persistent_workers for loader in dm.test_dataloader())
    assert not _dm(tmp_path / "w0", num_workers=0).train_dataloader().persistent_workers


def test_num_workers_auto_keeps_two_on_cpu(tmp_path: Path) -> None:
    dm = _dm(tmp_path, num_workers="auto")
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    assert dm.resolve_num_workers() == CPU_AUTO_WORKERS == 2
    assert dm.train_dataloader().num_workers == 2
    assert dm.train_dataloader().persistent_workers


def test_num_workers_auto_on_cuda_uses_the_cores_per_device(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    dm = _dm(tmp_path, num_workers="auto")
    dm.trainer = SimpleNamespace(accelerator=CUDAAccelerator(), num_devices=1)
    assert dm.resolve_num_workers() == max(2, min(MAX_AUTO_WORKERS, cores - 1))
    # Several devices on the node share the cores; never fewer than on CPU.
    dm.trainer = SimpleNamespace(accelerator=CUDAAccelerator(), num_devices=10 * cores)
    assert dm.resolve_num_workers() == CPU_AUTO_WORKERS


def test_num_workers_explicit_value_wins_on_cuda(tmp_path: Path) -> None:
    dm = _dm(tmp_path, num_workers=0)
    dm.trainer = SimpleNamespace(accelerator=CUDAAccelerator(), num_devices=1)
    assert dm.resolve_num_workers() == 0


@pytest.mark.parametrize("value", ["many", -1, True, 1.5])
def test_num_workers_bad_value_is_named(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValueError, match=r"data\.num_workers .*'auto'"):
        MVTecDataModule(root=str(tmp_path), category="widget", num_workers=value)


@pytest.mark.parametrize(
    ("data", "workers"),
    [
        ("mvtec", "auto"),
        ("visa", "auto"),
        ("kolektor", "auto"),
        ("folder", "auto"),
        ("synthetic", 0),
    ],
)
def test_data_configs_default_to_auto_pinning_and_workers(data: str, workers: object) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=[f"data={data}"])
    assert cfg.data.pin_memory is None
    assert cfg.data.num_workers == workers


@pytest.mark.parametrize(
    ("name", "label", "tflops"),
    [
        ("NVIDIA H200", "H200", 989.5),
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA L40S", "L40S", 362.05),
        ("NVIDIA L4", "L4", 121.0),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2),
    ],
)
def test_bench_peak_table_matches_device_names(name: str, label: str, tflops: float) -> None:
    assert bench_common.bf16_dense_peak(name) == (label, tflops)


def test_bench_unknown_device_says_peak_unknown() -> None:
    assert bench_common.bf16_dense_peak("Some Future GPU 9000") is None
    assert "peak unknown" in bench_common.flops_line(5e13, None, "cuda")
    assert "of 989.5 (H200 bf16 dense peak): 10.1%" in bench_common.flops_line(
        1e14, ("H200", 989.5), "cuda"
    )
    assert bench_common.flops_line(2e9, None, "cpu").startswith("2 GFLOP/s")
