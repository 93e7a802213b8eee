"""Model zoo and safe checkpoint I/O.

Architectures (all built from plain modules; activations are modules):

- :func:`mnist_cnn` — the default MNIST CNN (ReLU); :func:`load_default` returns it trained (shipped
  weights).
- :func:`atex_cnn` — the CNN of the ATEX paper (Tang et al.), reference-code keys.
- :func:`vgg16` — VGG16 / VGG16-BN for ImageNet (224) or CIFAR (32), torchvision state_dict keys.
- :func:`resnet18`, :func:`resnet50` — ResNets for ImageNet (He et al. 2016), torchvision keys.
- :func:`cifar_resnet` — ResNet-(6n+2) for 32x32 images (He et al. 2016, Sec. 4.2), option-B
  shortcuts; :class:`ResNet` is the one implementation behind all three.
- :func:`densenet121` — DenseNet-121 (Huang et al. 2017), torchvision keys; its final ReLU is an
  ``nn.ReLU`` module.
- :func:`mobilenet_v3_small` — MobileNetV3-Small (Howard et al. 2019), torchvision keys;
  :func:`.mobilenet.mobilenet_v3` builds it from any bottleneck table.
- :func:`efficientnet_b0` — EfficientNet-B0 (Tan & Le 2019), torchvision keys;
  :func:`.efficientnet.efficientnet` scales it (width/depth) or takes any MBConv table.
- :func:`convnext_tiny` — ConvNeXt-T (Liu et al. 2022), torchvision keys;
  :func:`.convnext.convnext` builds it from any stage table. The configurable builders stay in
  their submodules (``models.convnext`` is the module), e.g.
  ``from manipex.models.convnext import convnext``.
- :func:`vit_mnist` — a small Vision Transformer (Dosovitskiy et al. 2021) for 28x28 grey images
  (7x7 patches, dim 64, depth 4, 4 heads, MLP 128; 139,018 parameters), timm's module names;
  ``load_default("vit_mnist")`` returns it trained on MNIST-5k (its test accuracy measured:
  README, Measured figures behind the defaults).
  :class:`VisionTransformer` is configurable (image size, patch, channels, dim, depth, heads, MLP).
- :func:`tabular_mlp` — an MLP for tabular data.

Models that return a dict, a tuple or an object with ``.logits`` (Hugging Face's
``ImageClassifierOutput``): :class:`Logits` wraps one into a model returning its logits
(``Logits(hf_model)``, ``Logits(model, 0)``, ``Logits(model, lambda out: out["scores"])``); the
entry points (``manipex.explain``, the attacks) do it themselves with ``output=None`` and warn
once per model which part they use (:mod:`.interfaces`).

Build any of them by name with :func:`build` (see :func:`architectures`). Checkpoints are written
by :func:`save` as ``.safetensors`` with the architecture in the header, and read by :func:`load`,
which also reads torchvision-style ``.pth`` state_dicts with ``weights_only=True``: nothing
pickled is ever executed.

Example::

    from manipex import models
    net = models.load_default()                      # trained MNIST-5k CNN, eval mode
    vit = models.load_default("vit_mnist")           # trained MNIST-5k ViT, eval mode
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
    convnext_tiny,
    densenet121,
    efficientnet_b0,
    mnist_cnn,
    mobilenet_v3_small,
    register,
    resnet18,
    resnet50,
    tabular_mlp,
    vgg16,
    vit_mnist,
)
from ._blocks import LayerNorm2d, StochasticDepth, stochastic_depth
from .checkpoint import UnreadableWeightsError, load, read_metadata, save
from .convnext import ConvNeXt
from .densenet import DenseNet
from .efficientnet import EfficientNet
from .mobilenet import MobileNetV3
from .interfaces import EmbeddingsModel, Logits, ModelOutputWarning, logits_model
from .normalize import Normalize, input_normalization, with_normalization
from .pretrained import DEFAULT_RECIPES, Recipe, default_cache_dir, load_default
from .resnet import BasicBlock, Bottleneck, ResNet
from .vit import VisionTransformer
from .training import accuracy, train_classifier

__all__ = [
    "DEFAULT_RECIPES",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "ConvNeXt",
    "DenseNet",
    "EfficientNet",
    "EmbeddingsModel",
    "LayerNorm2d",
    "Logits",
    "MobileNetV3",
    "ModelOutputWarning",
    "Normalize",
    "Recipe",
    "ResNet",
    "StochasticDepth",
    "VisionTransformer",
    "accuracy",
    "architectures",
    "atex_cnn",
    "build",
    "cifar_resnet",
    "convnext_tiny",
    "default_cache_dir",
    "densenet121",
    "efficientnet_b0",
    "load",
    "UnreadableWeightsError",
    "load_default",
    "logits_model",
    "input_normalization",
    "mnist_cnn",
    "mobilenet_v3_small",
    "read_metadata",
    "register",
    "resnet18",
    "resnet50",
    "save",
    "stochastic_depth",
    "tabular_mlp",
    "train_classifier",
    "vgg16",
    "vit_mnist",
    "with_normalization",
]
