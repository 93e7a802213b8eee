"""Agreement with Zennit 0.5 (a peer, not an oracle) on VGG- and ResNet-style nets.

Zennit's ``EpsilonPlusFlat`` and ``EpsilonGammaBox`` with its canonizers (``SequentialMergeBatchNorm``
for VGG, ``ResNetCanonizer`` for ResNets: BatchNorm merged, the residual ``+`` made a ``Sum``
module with the Norm rule) against manipex's composites of the same name, which find BatchNorm
and the residual sum in the traced graph instead. Both start at the one-hot of the target.
Zennit is imported with the torchvision stub of the benchmarks, whose ResNet blocks are
manipex's (torchvision's attribute names and forward), and skipped where it is not installed.

Where they differ: Zennit's canonizer merges a BatchNorm into the layer before it and then sets
the BatchNorm to mean 0, variance 1, weight 1, bias 0, which is ``x / sqrt(1 + eps)``, not the
identity; the gradient through it scales relevance by ``(1 + eps)^(-1/2)`` per BatchNorm (about
1e-5 relative on these nets with PyTorch's eps = 1e-5, 4e-4 on the Bottleneck net). manipex
folds the BatchNorm exactly. With eps = 0 the two agree to 1e-6 of the map's scale, which is
what these tests check.
"""
from __future__ import annotations

import copy
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manipex

from conftest import make

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from _zennit import import_zennit  # noqa: E402

ZENNIT = import_zennit()
pytestmark = pytest.mark.skipif(ZENNIT is None, reason="zennit is not installed")


def zennit_lrp(model, x, target, composite_name, resnet):
    composites, canonizers, attribution = ZENNIT
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    model = copy.deepcopy(model)
    for m in model.modules():  # Zennit's hooks cannot see through in-place ReLUs
        if isinstance(m, nn.ReLU):
            m.inplace = False
    canonizer = ResNetCanonizer() if resnet else VGGCanonizer()
    if composite_name == "epsilon_plus_flat":
        composite = composites.EpsilonPlusFlat(canonizers=[canonizer])
    else:
        composite = composites.EpsilonGammaBox(low=0.0, high=1.0, canonizers=[canonizer])
    with attribution.Gradient(model=model, composite=composite) as attributor:
        out, relevance = attributor(x, F.one_hot(target, model(x).shape[1]).to(x.dtype))
    return relevance


CASES = [("vgg_style", False), ("resnet_basic", True), ("resnet_bottleneck", True)]


@pytest.mark.parametrize("name,resnet", CASES)
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lrp_composites_match_zennit(name, resnet, composite):
    model, x = make(name, softplus=False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0  # see the module docstring: Zennit's merged BatchNorm is not the identity
    t = model(x).argmax(1)
    ours = manipex.explain(model, x, "lrp", t, composite=composite, stabilizer=1e-6, epsilon=1e-6)
    theirs = zennit_lrp(model, x, t, composite, resnet)
    assert ours.abs().max() > 0
    assert (ours - theirs).abs().max() <= 1e-6 * theirs.abs().max()
