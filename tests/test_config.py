"""Every config group option composes with the real ``conf/`` tree and instantiates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

import anomaly_gan.resolvers  # noqa: F401  (registers the ${ag.*} resolvers, as train.py does)
from anomaly_gan.losses import GeneratorLoss
from anomaly_gan.models.registry import ARCHITECTURES
from anomaly_gan.nets.dcgan import count_parameters
from anomaly_gan.resolvers import PAPER_ONLY_MODELS, default_base_width
from anomaly_gan.scoring import DEFAULT_SCORER, FIELDS
from anomaly_gan.training import _training_length
from tests.conftest import CONFIG_DIR, compose_model

# model config -> the conf/loss file its defaults list selects (one file per distinct setting).
MODEL_LOSS = {
    "ganomaly": "feature_matching_l1",
    "ganomaly_paper": "feature_matching_l1",
    "skip_ganomaly": "feature_matching_once_l1",
    "skip_ganomaly_paper": "bce_l1",
    "skip_sa": "feature_matching_l1",
    "skip_sa_paper": "skip_sa_paper",
    "mife": "feature_matching_l1",
    "mife_paper": "bce_l2",
    "baseline": "feature_matching_l1",
    "baseline_paper": "bce_l2",
    "anogan": "dcgan",
}


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


def _loss_file(name: str):
    return OmegaConf.load(CONFIG_DIR / "loss" / f"{name}.yaml")


def test_every_model_config_and_loss_file_is_in_the_table() -> None:
    assert sorted(MODEL_LOSS) == _options("model")
    assert sorted(set(MODEL_LOSS.values())) == _options("loss")


def test_loss_files_hold_distinct_settings() -> None:
    settings = {
        name: tuple(sorted(OmegaConf.to_container(_loss_file(name)).items()))
        for name in _options("loss")
    }
    assert len(set(settings.values())) == len(settings), settings


@pytest.mark.parametrize("model", _options("model"))
def test_each_model_config_selects_its_loss_file(tmp_path: Path, model: str) -> None:
    cfg = _compose(tmp_path, [f"model={model}"])
    assert cfg.loss == _loss_file(MODEL_LOSS[model])
    assert OmegaConf.to_container(cfg.model.loss, resolve=True) == OmegaConf.to_container(cfg.loss)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_model_classes_default_to_the_loss_of_their_config(tmp_path: Path, name: str) -> None:
    """``Cls(...)`` without a loss trains what ``model=<name>`` trains."""
    cfg = _compose(tmp_path, [f"model={name}"])
    expected = GeneratorLoss.from_config(OmegaConf.to_container(cfg.loss))
    assert ARCHITECTURES[name].default_loss == expected


def _plain(value):
    """Tuples as lists, recursively: a class default ``(-1,)`` is the config's ``[-1]``."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


@pytest.mark.parametrize("image_size", [32, 64, 128])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_model_class_defaults_are_the_config(name: str, image_size: int) -> None:
    """``Cls(image_size=s, channels=c)`` is the model ``python train.py model=<name>`` trains
    at that size: every hyperparameter (loss, scorer, width, skip and attention levels, ...)
    and every layer. The three sizes give the three widths of the size rule (64, 32, 16);
    AnoGAN, only in its paper's form, keeps the DCGAN width 64 and its own score."""
    cfg = compose_model(name, image_size)
    from_config = hydra.utils.instantiate(cfg, _convert_="all")
    from_class = ARCHITECTURES[name](image_size=image_size, channels=cfg.channels)
    assert _plain(dict(from_class.hparams)) == _plain(dict(from_config.hparams))
    if name in PAPER_ONLY_MODELS:
        assert from_class.hparams["base_width"] == 64
        assert from_class.hparams["scorer"] == dict(ARCHITECTURES[name].default_scorer)
    else:
        assert from_class.hparams["base_width"] == default_base_width(image_size)
        assert from_class.hparams["scorer"] == dict(DEFAULT_SCORER)
    for network in ("generator", "discriminator"):
        assert count_parameters(getattr(from_class, network)) == count_parameters(
            getattr(from_config, network)
        )


@pytest.mark.parametrize("image_size", [32, 64, 96, 128, 256, 512])
@pytest.mark.parametrize("name", [n for n in ARCHITECTURES if n not in PAPER_ONLY_MODELS])
def test_config_width_is_the_classes_default_width(name: str, image_size: int) -> None:
    """Each ``model=<name>``'s ``${ag.width_for_size:32,...}`` = ``default_base_width``.
    (Not AnoGAN: only in its paper's form, width 64 at every size, like ``<name>_paper``.)"""
    assert compose_model(name, image_size).base_width == default_base_width(image_size)


def test_default_scorer_is_the_difference_map_config() -> None:
    """:data:`DEFAULT_SCORER` (the classes' default) = conf/model/scorer/difference_map.yaml
    (every ``model=<name>``'s), every field of the scorer set."""
    config = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model/scorer/difference_map.yaml"))
    assert config.pop("_target_") == "anomaly_gan.scoring.AnomalyScore"
    assert config == dict(DEFAULT_SCORER)
    assert tuple(DEFAULT_SCORER) == FIELDS


@pytest.mark.parametrize("model", ["ganomaly", "skip_sa_paper", "mife_paper"])
def test_loss_overrides_reach_the_loss_a_model_chose(tmp_path: Path, model: str) -> None:
    cfg = _compose(tmp_path, [f"model={model}", "loss=bce_l1"])
    assert cfg.loss == _loss_file("bce_l1")
    cfg = _compose(
        tmp_path, [f"model={model}", "loss.w_adv=0.25", "loss.encoder=l1", "loss.w_ssim=2"]
    )
    expected = _loss_file(MODEL_LOSS[model])
    expected.w_adv, expected.encoder, expected.w_ssim = 0.25, "l1", 2.0
    assert cfg.loss == expected
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert module.loss_fn == GeneratorLoss.from_config(OmegaConf.to_container(expected))
    assert module.loss_fn.w_ssim == 2.0


def test_sweep_over_models_and_loss_keys_composes_every_job(tmp_path: Path) -> None:
    """``python train.py -m model=skip_sa,skip_sa_paper loss.w_adv=0.5,1 loss.w_con=0.3,50``:
    each job is the composition of one value per key."""
    for model in ("skip_sa", "skip_sa_paper"):
        for w_adv in (0.5, 1.0):
            for w_con in (0.3, 50.0):
                cfg = _compose(
                    tmp_path, [f"model={model}", f"loss.w_adv={w_adv}", f"loss.w_con={w_con}"]
                )
                expected = _loss_file(MODEL_LOSS[model])
                expected.w_adv, expected.w_con = w_adv, w_con
                assert cfg.loss == expected


def test_optuna_search_keys_exist_in_the_composed_config() -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert "loss.w_adv" in params
    for key in params:
        assert OmegaConf.select(cfg, key) is not None, key


def test_an_experiment_can_override_the_loss_a_model_chose(tmp_path: Path) -> None:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "paper_loss.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /loss: skip_sa_paper\n"
    )
    overrides = [f"hydra.searchpath=[file://{tmp_path}]", "experiment=paper_loss"]
    for model in ("skip_sa", "mife_paper"):
        cfg = _compose(tmp_path, [*overrides, f"model={model}"])
        assert cfg.loss == _loss_file("skip_sa_paper")


def test_callbacks_loggers_and_trainer_instantiate(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, ["trainer.max_epochs=3"])
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values()]
    loggers = [hydra.utils.instantiate(c) for c in cfg.logger.values()]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert trainer.checkpoint_callback.monitor == "val/con"
    assert trainer.max_epochs == 3


def test_unsupported_image_size_is_refused_with_allowed_sizes(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, ["data.image_size=40"])
    with pytest.raises(Exception, match=r"multiple of 16 from 32 to 512.*data.image_size"):
        hydra.utils.instantiate(cfg.model, _convert_="all")


def test_training_length_is_the_iterations_budget_unless_epochs_are_given(tmp_path: Path) -> None:
    """The default budget is ``iterations`` generator updates whatever the set's size; an
    explicit ``trainer.max_epochs`` (debug=fast, the paper grids, a user's) decides instead;
    with neither (nor max_steps) the run is refused before training."""
    length, _ = _training_length(_compose(tmp_path, []))
    assert length["max_steps"] == 2 * 250 and length["max_epochs"] == -1
    assert length["val_check_interval"] == 50  # validations=5
    length, _ = _training_length(_compose(tmp_path, ["trainer.max_epochs=4", "iterations=99"]))
    assert length == {}  # the trainer config's max_epochs=4 stands
    length, _ = _training_length(_compose(tmp_path, ["debug=fast"]))
    assert length == {}
    with pytest.raises(ValueError, match=r"No training length.*iterations=<generator updates>"):
        _training_length(_compose(tmp_path, ["iterations=null"]))


def _grid(experiment: str, overrides: tuple[str, ...] | list[str] = ()) -> tuple[Any, str, str]:
    """A grid's composed config, its sweeper's ``model`` choices and its sweep folder."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(
            "train", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True
        )
    return cfg, str(cfg.hydra.sweeper.params.model), str(cfg.hydra.sweep.dir)


def test_paper_grids_run_the_papers_settings_and_ours_one_switch_away() -> None:
    """``experiment=mvtec_table1`` trains what the Skip-SA paper describes (Sun et al. 2025,
    Sec. 4.2: BCE, w_adv 0.5 / w_con 0.3 / w_enc 0.2, attention and skips on every level,
    10,000 iterations) with AnoGAN as the fourth column; ``settings=ours`` swaps in the
    project's defaults and writes to its own folder so both can be reported together."""
    cfg, models, sweep_dir = _grid("mvtec_table1")
    assert models == "anogan,ganomaly_paper,skip_ganomaly_paper,skip_sa_paper"
    assert sweep_dir.endswith("multirun/mvtec_table1/paper")
    loss = cfg.loss
    assert (loss.w_adv, loss.w_con, loss.w_enc, loss.adversarial) == (0.5, 0.3, 0.2, "bce")
    assert cfg.model.attention_levels is None and cfg.model.skip_levels is None
    assert cfg.model.base_width == 64
    assert cfg.iterations == 10000 and cfg.trainer.get("max_epochs") is None
    cfg, models, sweep_dir = _grid("mvtec_table1", ["settings=ours"])
    assert models == "ganomaly,skip_ganomaly,skip_sa"
    assert sweep_dir.endswith("multirun/mvtec_table1/ours")
    assert _grid("kolektor_table2")[1] == "anogan,ganomaly_paper,skip_ganomaly_paper,skip_sa_paper"
    assert _grid("visa_cross_class")[1] == "baseline_paper,mife_paper"
    assert _grid("visa_cross_class", ["settings=ours"])[1] == "baseline,mife"
    with pytest.raises(Exception, match=r"settings='both'.*settings=paper.*settings=ours"):
        _grid("visa_cross_class", ["settings=both"])
