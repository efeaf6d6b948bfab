"""Shared fixtures: the real Hydra config, a session-wide synthetic-data cache, real images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import pytest
from hydra import compose, initialize_config_dir

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"
# The real-data folder next to the repository (the dev and CI setup provide it; tests that
# need it skip when it is absent).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MAGNETIC_TILE = SHARED_DATA / "magnetic_tile"


def compose_model(config: str, image_size: int, channels: int = 3) -> Any:
    """``cfg.model`` of ``python train.py model=<config>`` at this image size and channels."""
    import anomaly_gan.resolvers  # noqa: F401  (the ${ag.*} resolvers, as train.py registers)

    overrides = [f"model={config}", f"data.image_size={image_size}", f"data.channels={channels}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=overrides).model


def build_from_config(config: str, image_size: int, channels: int = 3, **overrides: Any) -> Any:
    """The model ``python train.py model=<config>`` trains (``model.<key>`` overrides too)."""
    cfg = compose_model(config, image_size, channels)
    return hydra.utils.instantiate(cfg, _convert_="all", **overrides)


def small_synthetic_module(folder: Path, image_size: int = 32) -> Any:
    """A 40-normal synthetic data module in ``folder``, set up for fit: the score companions'
    tests train on it for a few steps."""
    from anomaly_gan.data import SyntheticDataModule

    datamodule = SyntheticDataModule(
        root=folder,
        image_size=image_size,
        channels=3,
        n_train=40,
        n_test_good=8,
        n_test_per_defect=4,
        val_fraction=0.2,
        batch_size=16,
        num_workers=0,
        cache=False,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def short_trainer(tmp_path: Path, **kwargs: Any) -> Any:
    """A 4-step Trainer without logger, checkpoints, progress bar or sanity validation."""
    import lightning as L

    return L.Trainer(
        default_root_dir=tmp_path,
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic dataset for the whole session (generation is deterministic)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def magnetic_tile_root() -> Path:
    if not (MAGNETIC_TILE / "train" / "good").is_dir():
        pytest.skip(f"real magnetic-tile images not found at {MAGNETIC_TILE} (no real-data folder)")
    return SHARED_DATA


def run_train(
    *overrides: str, cwd: Path = REPO_ROOT, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python train.py`` exactly as a user does, in a subprocess."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
