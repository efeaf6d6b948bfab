"""Mixed precision and the GPU options, on CPU: bf16-mixed trains end to end, the scorer stays
float32, trainer=gpu's precision is decided on the machine that trains, and the GPU options
(matmul precision, compile, channels-last, fused Adam) compose and validate."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from anomaly_gan import resolvers
from anomaly_gan.models import Ganomaly
from anomaly_gan.scoring import DEFAULT_SCORER, AnomalyScore
from anomaly_gan.training import _matmul_precision
from tests.conftest import CONFIG_DIR, run_train

#: A warning line of a run's stderr ("file:line: SomeWarning: message") about mixed precision.
AUTOCAST_WARNING = re.compile(r"Warning: .*(autocast|dtype|bfloat16|BFloat16)", re.IGNORECASE)


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=overrides)


def test_bf16_mixed_train_run_on_cpu(tmp_path: Path, cache_dir: Path) -> None:
    """``python train.py trainer.precision=bf16-mixed`` on CPU (autocast to bfloat16, as on a
    GPU): completes, finite metrics, float32 scorer buffers in the checkpoint, no warning
    about autocast or dtypes."""
    completed = run_train(
        "debug=fast",
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "data.test_limit=16",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    warnings = [line for line in completed.stderr.splitlines() if AUTOCAST_WARNING.search(line)]
    assert warnings == []
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["config"]["precision"] == "bf16-mixed"
    metrics = results["categories"]["textile"]
    for key in ("auroc", "average_precision", "f1", "accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert math.isfinite(results["threshold"]["value"])
    assert 0.0 <= metrics["reference"]["auroc"] <= 1.0
    state = torch.load(results["checkpoint"]["path"], weights_only=True)["state_dict"]
    for name in ("threshold", "map_mean", "map_std"):
        buffer = state[f"scorer.{name}"]
        assert buffer.dtype == torch.float32, name
        assert torch.isfinite(buffer).all(), name
    assert float(state["scorer.threshold"]) == results["threshold"]["value"]


def test_scorer_is_float32_under_autocast() -> None:
    """bfloat16 reconstructions and codes in, float32 maps, scores and statistics out: the
    calibration never stores bfloat16 in its buffers."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(8, 3, 16, 16, generator=generator)
    reconstruction = (image + 0.1 * torch.rand(8, 3, 16, 16, generator=generator)).bfloat16()
    latent = torch.rand(8, 10, generator=generator).bfloat16()
    scorer = AnomalyScore.from_config({**DEFAULT_SCORER, "latent_weight": 0.1}, image_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = scorer.error_map(image, reconstruction)
        distances = scorer.latent_distance(latent, latent.flip(0))
        scores = scorer.calibrate(maps.bfloat16(), distances.bfloat16(), 0.9)
        standardised = scorer.score_map(image, reconstruction)
    assert maps.dtype == distances.dtype == scores.dtype == standardised.dtype == torch.float32
    for buffer in (scorer.threshold, scorer.map_mean, scorer.map_std):
        assert buffer.dtype == torch.float32
    # The float32 map is the one computed without autocast (the blur's convolution too).
    torch.testing.assert_close(maps, scorer.error_map(image, reconstruction.float()))


def test_gpu_trainers_choose_bf16_where_the_device_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``trainer=gpu`` / ``ddp``: bf16-mixed on a GPU with native bfloat16, 32-true without
    one (this CPU machine), decided when the key resolves (on the machine that trains);
    ``trainer.precision=32-true`` wins; the CPU trainers stay 32-true."""
    for trainer in ("gpu", "ddp"):
        cfg = _compose([f"trainer={trainer}"])
        assert cfg.trainer.precision == resolvers.accelerator_precision("gpu")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: True)
        assert cfg.trainer.precision == "bf16-mixed"  # resolved anew at each access
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: False)
        assert cfg.trainer.precision == "32-true"  # emulated bf16 (pre-Ampere) is not used
        monkeypatch.undo()
        forced = _compose([f"trainer={trainer}", "trainer.precision=32-true"])
        assert forced.trainer.precision == "32-true"
        on_cpu = _compose([f"trainer={trainer}", "trainer.accelerator=cpu"])
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: True)
        assert on_cpu.trainer.precision == "32-true"  # CPU ranks on a GPU machine: fp32
        monkeypatch.undo()
    assert _compose(["trainer=cpu"]).trainer.precision == "32-true"
    assert _compose([]).trainer.precision == "32-true"


def test_matmul_precision_is_validated_with_the_fix() -> None:
    assert _matmul_precision(_compose([])) == "high"
    assert _matmul_precision(_compose(["matmul_precision=highest"])) == "highest"
    with pytest.raises(ValueError, match=r"matmul_precision='tf32'.*highest, high, medium"):
        _matmul_precision(_compose(["matmul_precision=tf32"]))


def test_gpu_options_compose_and_default_off() -> None:
    cfg = _compose(["model=skip_sa_paper", "model.compile=true", "model.channels_last=true"])
    assert cfg.model.compile is True and cfg.model.channels_last is True
    defaults = _compose([])
    assert defaults.model.compile is False and defaults.model.channels_last is False


def test_compile_and_channels_last_apply_when_training_starts() -> None:
    """``compile`` compiles both networks in place (state-dict keys unchanged; compilation
    itself happens at the first call, not here); ``channels_last`` converts the weights and
    each step's batch. Adam is not fused on CPU."""
    model = Ganomaly(image_size=32, channels=3, compile=True, channels_last=True)
    keys = set(model.state_dict())
    model.setup("fit")
    assert model.generator._compiled_call_impl is not None
    assert model.discriminator._compiled_call_impl is not None
    assert set(model.state_dict()) == keys
    conv = model.generator.encoder_in.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    image = model.memory_format(torch.rand(2, 3, 32, 32))
    assert image.is_contiguous(memory_format=torch.channels_last)
    assert all(
        not group.get("fused") for opt in model.configure_optimizers() for group in opt.param_groups
    )
