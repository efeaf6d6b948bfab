"""Every config group option composes with the real ``conf/`` tree and instantiates."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

import anomaly_gan.resolvers  # noqa: F401  (registers the ${ag.*} resolvers, as train.py does)
from tests.conftest import CONFIG_DIR


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def _compose(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


GROUPS = [
    "model",
    "data",
    "loss",
    "trainer",
    "logger",
    "callbacks",
    "debug",
    "experiment",
    "hparams_search",
]


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in GROUPS for o in _options(g)]
    + [("model/scorer", o) for o in _options("model/scorer")]
    + [("model/corruption", o) for o in _options("model/corruption")],
)
def test_every_option_composes_and_resolves(tmp_path: Path, group: str, option: str) -> None:
    cfg = _compose(tmp_path, [f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["image_size"] == resolved["data"]["image_size"]
    assert resolved["model"]["channels"] == resolved["data"]["channels"]
    assert "_target_" in resolved["model"] and "_target_" in resolved["data"]


@pytest.mark.parametrize("model", _options("model"))
def test_each_model_instantiates_with_its_own_loss(tmp_path: Path, model: str) -> None:
    cfg = _compose(tmp_path, [f"model={model}", "data.image_size=64"])
    assert cfg.loss == cfg.model.loss, "model.loss must point at the selected loss group"
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert module.hparams["loss"] == {
        k: v for k, v in OmegaConf.to_container(cfg.loss).items() if k != "_target_"
    }
    assert module.hparams["image_size"] == 64


def test_loss_weights_override_from_command_line(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, ["loss.w_adv=0.5", "loss.w_con=0.3", "model/scorer=mix"])
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert module.loss_fn.w_adv == 0.5 and module.loss_fn.w_con == 0.3
    assert module.scorer.reconstruction_weight == pytest.approx(0.9)


def test_callbacks_loggers_and_trainer_instantiate(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, [])
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values()]
    loggers = [hydra.utils.instantiate(c) for c in cfg.logger.values()]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert trainer.checkpoint_callback.monitor == "val/con"
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_unsupported_image_size_is_refused_with_allowed_sizes(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, ["data.image_size=40"])
    with pytest.raises(Exception, match=r"multiple of 16 from 32 to 512.*data.image_size"):
        hydra.utils.instantiate(cfg.model, _convert_="all")
