"""The architecture registry agrees with ``conf/model/`` and with the model classes."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from anomaly_gan.models import GanAnomalyModule
from anomaly_gan.models.registry import (
    ARCHITECTURES,
    architecture,
    by_class_path,
    class_path,
    name_of,
)

from .conftest import CONFIG_DIR

MODEL_CONFIGS = sorted(
    path for path in (CONFIG_DIR / "model").glob("*.yaml") if not path.stem.endswith("_paper")
)


def test_every_model_config_has_a_registry_entry_and_vice_versa() -> None:
    assert sorted(path.stem for path in MODEL_CONFIGS) == sorted(ARCHITECTURES)


def test_paper_configs_extend_a_registered_architecture() -> None:
    for path in (CONFIG_DIR / "model").glob("*_paper.yaml"):
        assert path.stem.removesuffix("_paper") in ARCHITECTURES, path.name


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_config_target_is_the_registered_class(path) -> None:
    target = OmegaConf.load(path)["_target_"]
    cls = ARCHITECTURES[path.stem]
    # conf/ names the class through the package (anomaly_gan.models.<Class>).
    assert target == f"anomaly_gan.models.{cls.__name__}"


def test_registry_holds_every_public_architecture_class_once() -> None:
    classes = list(ARCHITECTURES.values())
    assert len(set(classes)) == len(classes)
    assert all(issubclass(cls, GanAnomalyModule) for cls in classes)
    found, pending = set(), list(GanAnomalyModule.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("anomaly_gan.") and not cls.__name__.startswith("_"):
            found.add(cls)
    assert found == set(classes)


def test_lookups() -> None:
    for name, cls in ARCHITECTURES.items():
        assert architecture(name) is cls
        assert name_of(cls) == name
        assert by_class_path(class_path(cls)) is cls
    assert class_path(ARCHITECTURES["skip_sa"]) == "anomaly_gan.models.skip_sa.SkipSelfAttentionGan"
    assert by_class_path("anomaly_gan.models.skip_sa.Missing") is None
    with pytest.raises(KeyError, match="known: ganomaly, skip_ganomaly"):
        architecture("unet")
