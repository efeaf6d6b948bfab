"""Pure ``nn.Module`` networks: no Lightning, no losses, exportable on their own."""

from anomaly_gan.nets.dcgan import (
    DcganDecoder,
    DcganDiscriminator,
    DcganEncoder,
    GanomalyGenerator,
    dcgan_plan,
    supported_dcgan_sizes,
)
from anomaly_gan.nets.init import dcgan_init

__all__ = [
    "DcganDecoder",
    "DcganDiscriminator",
    "DcganEncoder",
    "GanomalyGenerator",
    "dcgan_init",
    "dcgan_plan",
    "supported_dcgan_sizes",
]
