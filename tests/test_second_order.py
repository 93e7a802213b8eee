"""Exact second order on every model (issue 24): kernels without a double backward are computed
through exact equivalents that have one, and what is still missing is named."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manipex
from manipex._second_order import second_order
from manipex.explainers import MissingDerivativeError
from manipex.objectives import TargetImage
from conftest import assert_same_state, state_of
from replicas import build
from test_derivatives import check_second_order


class Attention(nn.Module):
    """A conv stem, one self-attention layer over the positions (F.scaled_dot_product_attention
    and nn.MultiheadAttention, whose fused CPU kernels have no double backward), a linear head."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.stem = nn.Conv2d(1, 8, 3, 2, 1)
        self.qkv = nn.Linear(8, 24)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (N, L, 8)
        if self.functional:
            q, k, v = self.qkv(tokens).reshape(x.shape[0], -1, 3, 2, 4).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape[0], -1, 8)
        else:
            out, _ = self.mha(tokens, tokens, tokens, need_weights=False)
        return self.head(torch.tanh(out + tokens).mean(1))


def raw_double_backward(model, x):
    """The second derivative of a gradient map without manipex: the raw torch path."""
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[:, 0].sum(), xg, create_graph=True)
    return torch.autograd.grad((g * g).sum(), xg)


@pytest.mark.parametrize("functional", [True, False], ids=["sdpa", "multihead"])
def test_attention_maps_are_exactly_differentiable_twice(functional):
    torch.manual_seed(0)
    model = Attention(functional).eval()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(RuntimeError, match="derivative for .* is not implemented"):
        raw_double_backward(model, x)  # what a user meets without manipex: the check below can fail
    before = state_of(model)
    for method in ("gradient", "integrated_gradients", "smoothgrad"):
        opts = {"steps": 3} if method == "integrated_gradients" else {"samples": 2, "seed": 1} if method == "smoothgrad" else {}
        check_second_order(model.double(), x.double(), method, opts)
        model.float()
    res = manipex.attacks.manipulate_input(model, x, TargetImage(x.roll(1, 0)), "gradient", steps=3, progress=False)
    assert res.x_adv.shape == x.shape
    assert_same_state(before, state_of(model))


def test_hardsigmoid_gates_are_exactly_differentiable_twice():
    """MobileNetV3's squeeze-excitation (nn.Hardsigmoid): torch's hardsigmoid_backward has no
    derivative; within manipex its exact equivalent has one."""
    model = build("mobilenet_v3")
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(RuntimeError, match="hardsigmoid_backward is not implemented"):
        raw_double_backward(model, x)
    check_second_order(build("mobilenet_v3", dtype=torch.float64), x.double(), "gradient", {})


@pytest.mark.parametrize("name", ["mobilenet_v3", "efficientnet", "convnext"])
def test_the_model_s_output_is_unchanged_within_second_order(name):
    model = build(name)
    x = torch.rand(4, 3, 16, 16) * 8 - 4  # reaches both kinks of the hardsigmoid
    before = state_of(model)
    plain = model(x)
    with second_order(model):
        exact = model(x)
    assert torch.allclose(plain, exact, atol=1e-6)
    assert_same_state(before, state_of(model))


def test_a_derivative_still_missing_names_the_layer():
    class Prototypes(nn.Module):
        def __init__(self):
            super().__init__()
            self.centres = nn.Parameter(torch.randn(3, 8))

        def forward(self, h):
            return -torch.cdist(h, self.centres)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.protos = nn.Linear(4, 8), Prototypes()

        def forward(self, x):
            return self.protos(torch.tanh(self.fc(x)))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.rand(5, 4)
    before = state_of(model)
    with pytest.raises(MissingDerivativeError, match=r"'cdist' in layer 'protos' \(Prototypes\).*create_graph=False"):
        manipex.attacks.manipulate_input(model, x, TargetImage(x.roll(1, 0)), "gradient", steps=2, progress=False)
    assert_same_state(before, state_of(model))
    assert manipex.explain(model, x, "gradient").shape == x.shape  # first order is fine
