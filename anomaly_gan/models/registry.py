"""The one list of architectures: config name (``conf/model/<name>.yaml``) -> LightningModule.

Everything that enumerates the models reads :data:`ARCHITECTURES`: checkpoint loading (which
classes a checkpoint may name), the tests and the benchmarks. A new architecture is one class
in :mod:`anomaly_gan.models`, one entry here and one ``conf/model/<name>.yaml`` whose
``_target_`` is the class; ``tests/test_registry.py`` fails until all three agree.
"""

from __future__ import annotations

from anomaly_gan.models.anogan import Anogan
from anomaly_gan.models.core import GanAnomalyModule
from anomaly_gan.models.ganomaly import Ganomaly
from anomaly_gan.models.mife import Mife, MifeBaseline
from anomaly_gan.models.skip_ganomaly import SkipGanomaly
from anomaly_gan.models.skip_sa import SkipSelfAttentionGan

# In the papers' order: GANomaly, its U-Net successor, the attention U-Net, MIFE and MIFE's
# ablation baseline (MIFE without attention and skips); last AnoGAN, the Skip-SA paper's
# comparison column (a DCGAN whose test images are mapped to the latent space by an
# optimisation loop, so far slower to score: bench/quality.py leaves it out by default).
ARCHITECTURES: dict[str, type[GanAnomalyModule]] = {
    "ganomaly": Ganomaly,
    "skip_ganomaly": SkipGanomaly,
    "skip_sa": SkipSelfAttentionGan,
    "mife": Mife,
    "baseline": MifeBaseline,
    "anogan": Anogan,
}


def class_path(cls: type[GanAnomalyModule]) -> str:
    """``module.Class``, as ``GanAnomalyModule.on_save_checkpoint`` writes it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def architecture(name: str) -> type[GanAnomalyModule]:
    """The class of ``model=<name>``; a ``KeyError`` lists the known names."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(
            f"Unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}."
        ) from None


def name_of(cls: type[GanAnomalyModule]) -> str:
    """The config name of a registered class (``SkipSelfAttentionGan`` -> ``skip_sa``)."""
    for name, registered in ARCHITECTURES.items():
        if registered is cls:
            return name
    raise KeyError(f"{class_path(cls)} is not a registered architecture.")


def by_class_path(path: str) -> type[GanAnomalyModule] | None:
    """The registered class a checkpoint's ``anomaly_gan.class_path`` names, or None."""
    for cls in ARCHITECTURES.values():
        if class_path(cls) == path:
            return cls
    return None


__all__ = ["ARCHITECTURES", "architecture", "by_class_path", "class_path", "name_of"]
