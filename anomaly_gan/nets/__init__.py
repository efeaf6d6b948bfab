"""Pure ``nn.Module`` networks: no Lightning, no losses, exportable on their own."""

from anomaly_gan.nets.autoencoder import (
    ConvAutoencoder,
    ConvDecoder,
    ConvEncoder,
    supported_autoencoder_sizes,
)
from anomaly_gan.nets.blocks import (
    DepthwiseSeparableConv2d,
    SelfAttention2d,
    check_image_size,
    dsc_block,
)
from anomaly_gan.nets.dcgan import (
    DcganDecoder,
    DcganDiscriminator,
    DcganEncoder,
    GanomalyGenerator,
    dcgan_plan,
    supported_dcgan_sizes,
)
from anomaly_gan.nets.init import dcgan_init
from anomaly_gan.nets.unet import (
    Pix2PixUnet,
    SelfAttentionUnet,
    supported_attention_unet_sizes,
    supported_pix2pix_sizes,
)

__all__ = [
    "ConvAutoencoder",
    "ConvDecoder",
    "ConvEncoder",
    "DcganDecoder",
    "DcganDiscriminator",
    "DcganEncoder",
    "DepthwiseSeparableConv2d",
    "GanomalyGenerator",
    "Pix2PixUnet",
    "SelfAttention2d",
    "SelfAttentionUnet",
    "check_image_size",
    "dcgan_init",
    "dcgan_plan",
    "dsc_block",
    "supported_attention_unet_sizes",
    "supported_autoencoder_sizes",
    "supported_dcgan_sizes",
    "supported_pix2pix_sizes",
]
