"""LightningModules: the shared GAN core and one small file per architecture."""

from anomaly_gan.models.anogan import Anogan
from anomaly_gan.models.core import GanAnomalyModule, GeneratorOutput, NonFiniteLossError
from anomaly_gan.models.ganomaly import Ganomaly
from anomaly_gan.models.mife import Mife, MifeBaseline
from anomaly_gan.models.registry import ARCHITECTURES, architecture
from anomaly_gan.models.skip_ganomaly import SkipGanomaly
from anomaly_gan.models.skip_sa import SkipSelfAttentionGan

__all__ = [
    "ARCHITECTURES",
    "Anogan",
    "GanAnomalyModule",
    "Ganomaly",
    "GeneratorOutput",
    "Mife",
    "MifeBaseline",
    "NonFiniteLossError",
    "SkipGanomaly",
    "SkipSelfAttentionGan",
    "architecture",
]
