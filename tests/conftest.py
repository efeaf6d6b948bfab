"""Shared fixtures: the real Hydra config, a session-wide synthetic-data cache, real images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"
# The real-data folder next to the repository (the dev and CI setup provide it; tests that
# need it skip when it is absent).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MAGNETIC_TILE = SHARED_DATA / "magnetic_tile"


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
