"""DCGAN weight initialisation as GANomaly uses it (Radford, Metz, Chintala, "Unsupervised
Representation Learning with Deep Convolutional Generative Adversarial Networks", ICLR 2016).

anomalib's GANomaly calls its init on the module instead of through ``Module.apply``, so it
never reaches the layers (docs/reference-code.md, section 5). Ours is always applied with
``.apply`` and a test checks the statistics of every layer.

Grouped (depthwise) convolutions are the exception. N(0, 0.02) suits a dense convolution
with a fan-in of hundreds; a 3×3 depthwise filter has a fan-in of 9, so a depthwise-separable
block multiplies its input's spread by ~0.01 and BatchNorm's eps (1e-5) outweighs the
variance it normalises. Training (batch statistics) still works, but the running statistics
used in eval mode drift apart: Skip-SA's eval-mode reconstruction stayed at "all zeros"
(validation L1 0.26, train-mode 0.09) for its first 5–6 epochs (docs/what-works.md). Those
convolutions, and the 1×1 convolution that follows them, keep PyTorch's default init.
"""

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd


def dcgan_init(module: nn.Module) -> None:
    """Conv and Linear weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0.

    Use as ``network.apply(dcgan_init)``. Modules that set ``keeps_default_init = True``
    (the depthwise-separable convolution) get PyTorch's default init for all their layers
    instead (``apply`` visits them after their children).
    """
    if getattr(module, "keeps_default_init", False):
        for layer in module.modules():
            if isinstance(layer, _ConvNd):
                layer.reset_parameters()
    elif isinstance(module, _ConvNd | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, _BatchNorm) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
