"""Model architectures of the zoo and the registry that names them.

The chain networks here are built only from ``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``,
``nn.ReLU``, ``nn.Tanh``, ``nn.MaxPool2d``, ``nn.AdaptiveAvgPool2d``, ``nn.Flatten`` and
``nn.Dropout`` modules (activations are modules, never functional calls), so that explainers and
model surgery (ReLU -> Softplus, BatchNorm merging) can see and rewrite every layer. The graph
networks (ResNets in :mod:`.resnet`, DenseNet in :mod:`.densenet`) keep the same rule for their
activations; their additions and concatenations are visible to ``torch.fx``.
MobileNetV3-Small, EfficientNet-B0 and ConvNeXt-T (:mod:`.mobilenet`, :mod:`.efficientnet`,
:mod:`.convnext`) are torchvision's modules exactly, built from the blocks in :mod:`._blocks`.
The Vision Transformer (:mod:`.vit`, ``vit_mnist``) uses ``nn.GELU`` and ``nn.LayerNorm`` modules and
``F.scaled_dot_product_attention``; its token plumbing is visible to ``torch.fx``.

The registry maps a name to a factory; :func:`build` records the name and keyword arguments on the
model so that :func:`manipex.models.save` can write them into the checkpoint and
:func:`manipex.models.load` can rebuild the architecture without being handed a model.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._registry import Registry
from .convnext import convnext_tiny
from .densenet import densenet121
from .efficientnet import efficientnet_b0
from .mobilenet import mobilenet_v3_small
from .resnet import cifar_resnet, resnet18, resnet50
from .vit import vit_mnist

__all__ = [
    "VGG",
    "architectures",
    "atex_cnn",
    "build",
    "mnist_cnn",
    "register",
    "tabular_mlp",
    "vgg16",
]

#: Attribute under which :func:`build` records ``{"name": ..., "kwargs": ...}`` on a model.
ARCH_ATTR = "manipex_arch"


def mnist_cnn(num_classes: int = 10) -> nn.Sequential:
    """The default MNIST CNN (28x28 grey images), a flat ``nn.Sequential``.

    ``Conv(1->16, 5x5, pad 2) - ReLU - MaxPool(2) - Conv(16->32, 5x5, pad 2) - ReLU - MaxPool(2) -
    Flatten - Linear(1568->128) - ReLU - Linear(128->num_classes)``; outputs logits.
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def atex_cnn(num_classes: int = 10) -> nn.Sequential:
    """The CNN of the ATEX paper (Tang et al.) for 28x28 grey images; outputs logits.

    ``Conv(1->32, 3x3, pad 1) - ReLU - MaxPool(2) - Conv(32->32, 3x3, pad 1) - ReLU - MaxPool(2) -
    Flatten - Linear(1568->120) - Tanh - Linear(120->num_classes)``.

    Kernel sizes, padding and pooling are those of ``ConvMnist`` / ``ConvFashmnist`` in the
    reference code (``DefIntpMan/ATEX``, ``src/model_conv_fashmnist.py``). The layers sit in two
    nested ``nn.Sequential`` blocks named ``features`` and ``fc_model`` as there, so the state_dict
    keys (``features.0``, ``features.3``, ``fc_model.0``, ``fc_model.2``) equal the reference ones
    and its weight files load.
    """
    features = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=2),
    )
    fc_model = nn.Sequential(nn.Linear(32 * 7 * 7, 120), nn.Tanh(), nn.Linear(120, num_classes))
    return nn.Sequential(
        OrderedDict([("features", features), ("flatten", nn.Flatten()), ("fc_model", fc_model)])
    )


# torchvision's configuration "D": channel counts, "M" = 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG(nn.Module):
    """VGG network whose state_dict keys equal torchvision's (``features.*``, ``classifier.*``).

    ``forward`` is ``features -> avgpool -> flatten -> classifier``. The ``flatten`` submodule
    (``nn.Flatten``, no parameters) only makes the flattening visible to module walkers; it adds
    no state_dict key.
    """

    def __init__(self, features: nn.Sequential, avgpool: nn.Module, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = avgpool
        self.flatten = nn.Flatten()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch ``x`` of shape (N, 3, H, W)."""
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def vgg16(num_classes: int = 1000, *, batch_norm: bool = False, input_size: int = 224) -> VGG:
    """VGG16 (``batch_norm=True``: VGG16-BN) with torchvision-compatible state_dict keys.

    ``input_size=224`` (ImageNet) is torchvision's model exactly: ``avgpool`` is
    ``AdaptiveAvgPool2d((7, 7))`` and the classifier is ``Linear(25088->4096) - ReLU - Dropout -
    Linear(4096->4096) - ReLU - Dropout - Linear(4096->num_classes)``, so a torchvision weight
    file (e.g. ``vgg16-397923af.pth``) loads with ``strict=True``. ``input_size=32`` (CIFAR) keeps
    the same ``features`` and uses ``AdaptiveAvgPool2d((1, 1))`` and ``Linear(512->512) - ReLU -
    Dropout - Linear(512->512) - ReLU - Dropout - Linear(512->num_classes)`` (same key indices
    0/3/6). ReLUs are not in-place, so hooks and double backward see every activation.
    Initialisation follows torchvision (Kaiming-normal convs, N(0, 0.01) linears, zero biases).
    """
    if input_size not in (32, 224):
        raise ValueError(f"vgg16: input_size must be 32 (CIFAR) or 224 (ImageNet): {input_size}")
    layers: list[nn.Module] = []
    channels = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        assert isinstance(v, int)
        layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU())
        channels = v
    if input_size == 224:
        pool, in_features, hidden = nn.AdaptiveAvgPool2d((7, 7)), 512 * 7 * 7, 4096
    else:
        pool, in_features, hidden = nn.AdaptiveAvgPool2d((1, 1)), 512, 512
    classifier = nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(hidden, num_classes),
    )
    model = VGG(nn.Sequential(*layers), pool, classifier)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def tabular_mlp(
    in_features: int, num_classes: int = 2, hidden: Sequence[int] = (64, 32)
) -> nn.Sequential:
    """Multilayer perceptron for tabular data: ``Linear - ReLU - ... - Linear(->num_classes)``.

    ``hidden`` lists the widths of the hidden layers (empty: a linear model). Outputs logits.
    """
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


_REGISTRY: Registry[Callable[..., nn.Module]] = Registry("architecture")


def register(
    name: str, factory: Callable[..., nn.Module], *, overwrite: bool = False
) -> Callable[..., nn.Module]:
    """Register ``factory`` under ``name`` so :func:`build` and checkpoint loading can use it.

    Returns the factory wrapped so that calling it directly also records ``name`` and the
    arguments given on the model, as :func:`build` does (then ``save(factory(...))`` writes an
    architecture that ``load(path)`` rebuilds). The keyword arguments are stored as JSON in
    checkpoints, so a factory should take JSON-representable arguments (numbers, strings,
    booleans, lists).
    """
    _REGISTRY.register(name, factory, overwrite=overwrite)
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def recording(*args: Any, **kwargs: Any) -> nn.Module:
        model = factory(*args, **kwargs)
        given = dict(signature.bind(*args, **kwargs).arguments)
        try:
            json.dumps(given)
        except TypeError:
            return model  # not representable in a checkpoint header: nothing recorded
        setattr(model, ARCH_ATTR, {"name": name, "kwargs": given})
        return model

    return recording


def architectures() -> list[str]:
    """Return the sorted names of all registered architectures."""
    return _REGISTRY.names()


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered architecture ``name`` with ``kwargs`` (randomly initialised).

    The name and kwargs are recorded on the model (attribute ``manipex_arch``) so that
    :func:`manipex.models.save` can store them and :func:`manipex.models.load` rebuild the model.

    Raises:
        ValueError: if ``name`` is not registered (the message lists the known names).
    """
    model = _REGISTRY.get(name)(**kwargs)
    setattr(model, ARCH_ATTR, {"name": name, "kwargs": dict(kwargs)})
    return model


def _vgg16_bn(num_classes: int = 1000, *, input_size: int = 224) -> VGG:
    """VGG16 with batch normalisation (torchvision's ``vgg16_bn`` keys)."""
    return vgg16(num_classes, batch_norm=True, input_size=input_size)


mnist_cnn = register("mnist_cnn", mnist_cnn)
atex_cnn = register("atex_cnn", atex_cnn)
vgg16 = register("vgg16", vgg16)
register("vgg16_bn", _vgg16_bn)
tabular_mlp = register("tabular_mlp", tabular_mlp)
resnet18 = register("resnet18", resnet18)
resnet50 = register("resnet50", resnet50)
cifar_resnet = register("cifar_resnet", cifar_resnet)
densenet121 = register("densenet121", densenet121)
mobilenet_v3_small = register("mobilenet_v3_small", mobilenet_v3_small)
efficientnet_b0 = register("efficientnet_b0", efficientnet_b0)
convnext_tiny = register("convnext_tiny", convnext_tiny)
vit_mnist = register("vit_mnist", vit_mnist)
