"""Model zoo and safe checkpoint I/O.

Architectures (all built from plain modules; activations are modules):

- :func:`mnist_cnn` — the default MNIST CNN (ReLU); :func:`load_default` trains and caches it.
- :func:`atex_cnn` — the CNN of the ATEX paper (Tang et al.), reference-code keys.
- :func:`vgg16` — VGG16 / VGG16-BN for ImageNet (224) or CIFAR (32), torchvision state_dict keys.
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
"""

from .architectures import (
    VGG,
    architectures,
    atex_cnn,
    build,
    mnist_cnn,
    register,
    tabular_mlp,
    vgg16,
)
from .checkpoint import load, read_metadata, save
from .pretrained import DEFAULT_RECIPES, Recipe, default_cache_dir, load_default
from .training import accuracy, train_classifier

__all__ = [
    "DEFAULT_RECIPES",
    "VGG",
    "Recipe",
    "accuracy",
    "architectures",
    "atex_cnn",
    "build",
    "default_cache_dir",
    "load",
    "load_default",
    "mnist_cnn",
    "read_metadata",
    "register",
    "save",
    "tabular_mlp",
    "train_classifier",
    "vgg16",
]
