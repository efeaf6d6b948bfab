"""The generator's weight average (callbacks=ema): the update rule, validation on the average,
checkpoints that hold the average for inference and the training weights for resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anomaly_gan.averaging import GeneratorEma
from tests.conftest import build_from_config, run_train
from tests.test_resume import TINY


def _generator(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: v.detach().clone() for n, v in module.generator.state_dict().items()}


def test_update_is_the_warmed_up_exponential_average() -> None:
    model = build_from_config("ganomaly", 32, base_width=8, latent_dim=16)
    ema = GeneratorEma(decay=0.5)
    ema.on_fit_start(None, model)  # type: ignore[arg-type]
    name = "encoder_in.features.0.weight"
    expected = model.generator.state_dict()[name].clone()
    for step in range(5):
        with torch.no_grad():
            for parameter in model.generator.parameters():
                parameter.add_(0.1 * (step + 1))
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * model.generator.state_dict()[name]
        ema.update(model)
    assert ema.updates == 5
    assert torch.allclose(ema._average[name], expected, atol=1e-6)
    # the current weights are untouched by the update
    assert not torch.allclose(model.generator.state_dict()[name], expected)


def test_validation_sees_the_average_and_training_gets_its_weights_back() -> None:
    model = build_from_config("skip_ganomaly", 32, base_width=8)
    ema = GeneratorEma(decay=0.9)
    ema.on_fit_start(None, model)  # type: ignore[arg-type]
    with torch.no_grad():
        for parameter in model.generator.parameters():
            parameter.mul_(2.0)
    ema.update(model)
    trained = _generator(model)
    average = {n: v.clone() for n, v in ema._average.items()}
    discriminator = {n: v.clone() for n, v in model.discriminator.state_dict().items()}
    ema.on_validation_epoch_start(None, model)  # type: ignore[arg-type]
    during = _generator(model)
    ema.on_validation_epoch_end(None, model)  # type: ignore[arg-type]
    after = _generator(model)
    assert all(torch.equal(during[n], average[n]) for n in average)
    assert any(not torch.equal(during[n], trained[n]) for n in trained)
    assert all(torch.equal(after[n], trained[n]) for n in trained)
    # only the generator is averaged: the discriminator and the scorer are left alone
    assert all(
        torch.equal(model.discriminator.state_dict()[n], v) for n, v in discriminator.items()
    )


def test_decay_outside_its_range_is_refused_with_the_key() -> None:
    with pytest.raises(ValueError, match=r"callbacks.generator_ema.decay"):
        GeneratorEma(decay=1.0)


def test_a_run_saves_the_average_and_resumes_on_the_training_weights(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_train(
        *TINY, "callbacks=ema", "callbacks.generator_ema.decay=0.5", f"hydra.run.dir={run_dir}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["config"]["generator_ema"] == 0.5
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    state = checkpoint["callbacks"]["GeneratorEma"]
    assert state["updates"] == 4  # 2 epochs x 2 batches, one generator update each
    current = state["current_generator"]
    saved = {
        k[len("generator.") :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("generator.")
    }
    assert saved.keys() == current.keys()
    assert any(not torch.equal(saved[n], current[n]) for n in saved if saved[n].is_floating_point())

    # Resuming: the module loads the checkpoint's state_dict (the average); the callback
    # puts the training weights back and keeps the average beside them.
    model = build_from_config("ganomaly", 32, base_width=8, latent_dim=16, validation_defects=False)
    model.load_state_dict(checkpoint["state_dict"])
    ema = GeneratorEma(decay=0.5)
    ema.load_state_dict(state)
    ema.on_fit_start(None, model)  # type: ignore[arg-type]
    assert ema.updates == 4
    resumed = _generator(model)
    assert all(torch.equal(resumed[n], current[n]) for n in current)
    assert all(torch.equal(ema._average[n], saved[n]) for n in saved)
