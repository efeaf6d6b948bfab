"""LightningModules: the shared GAN core and one small file per architecture."""

from anomaly_gan.models.core import GanAnomalyModule, GeneratorOutput, NonFiniteLossError
from anomaly_gan.models.ganomaly import Ganomaly

__all__ = ["GanAnomalyModule", "Ganomaly", "GeneratorOutput", "NonFiniteLossError"]
