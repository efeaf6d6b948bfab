"""DCGAN weight initialisation (Radford et al. 2015), as GANomaly uses it.

anomalib's GANomaly calls its init on the module instead of through ``Module.apply``,
so it never reaches the layers (REFERENCE.md). Ours is always applied with ``.apply``
and a test checks the statistics of every layer.
"""

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd


def dcgan_init(module: nn.Module) -> None:
    """Conv and Linear weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0.

    Use as ``network.apply(dcgan_init)``.
    """
    if isinstance(module, _ConvNd | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, _BatchNorm) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
