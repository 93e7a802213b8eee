"""Model zoo and safe checkpoint I/O.

Architectures (all built from plain modules; activations are modules):

- :func:`mnist_cnn` — the default MNIST CNN (ReLU); :func:`load_default` trains and caches it.
- :func:`atex_cnn` — the CNN of the ATEX paper (Tang et al.), reference-code keys.
- :func:`vgg16` — VGG16 / VGG16-BN for ImageNet (224) or CIFAR (32), torchvision state_dict keys.
- :func:`resnet18`, :func:`resnet50` — ResNets for ImageNet (He et al. 2016), torchvision keys.
- :func:`cifar_resnet` — ResNet-(6n+2) for 32x32 images (He et al. 2016, Sec. 4.2), option-B
  shortcuts; :class:`ResNet` is the one implementation behind all three.
- :func:`densenet121` — DenseNet-121 (Huang et al. 2017), torchvision keys; its final ReLU is an
  ``nn.ReLU`` module.
- :func:`tabular_mlp` — an MLP for tabular data.

Build any of them by name with :func:`build` (see :func:`architectures`). Checkpoints are written
by :func:`save` as ``.safetensors`` with the architecture in the header, and read by :func:`load`,
which also reads torchvision-style ``.pth`` state_dicts with ``weights_only=True``: nothing
pickled is ever executed.

Example::

    from manipex import models
    net = models.load_default()                      # trained MNIST-5k CNN, eval mode
    models.save(net, "net.safetensors", metadata={"note": "baseline"})
    same = models.load("net.safetensors")            # rebuilt from the header
    vgg = models.load("vgg16-397923af.pth", models.vgg16())
    res = models.load("resnet50-0676ba61.pth", models.build("resnet50"))
"""

from .architectures import (
    VGG,
    architectures,
    atex_cnn,
    build,
    cifar_resnet,
    densenet121,
    mnist_cnn,
    register,
    resnet18,
    resnet50,
    tabular_mlp,
    vgg16,
)
from .checkpoint import load, read_metadata, save
from .densenet import DenseNet
from .normalize import Normalize, input_normalization, with_normalization
from .pretrained import DEFAULT_RECIPES, Recipe, default_cache_dir, load_default
from .resnet import BasicBlock, Bottleneck, ResNet
from .training import accuracy, train_classifier

__all__ = [
    "DEFAULT_RECIPES",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "DenseNet",
    "Normalize",
    "Recipe",
    "ResNet",
    "accuracy",
    "architectures",
    "atex_cnn",
    "build",
    "cifar_resnet",
    "default_cache_dir",
    "densenet121",
    "load",
    "load_default",
    "input_normalization",
    "mnist_cnn",
    "read_metadata",
    "register",
    "resnet18",
    "resnet50",
    "save",
    "tabular_mlp",
    "train_classifier",
    "vgg16",
    "with_normalization",
]
