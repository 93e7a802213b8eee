"""ReLU -> Softplus(β) surgery with exact restoration."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manipex
from manipex import surgery

from conftest import assert_same_state, make, state_of


def test_context_manager_swaps_and_restores_the_same_objects():
    model, x = make("vgg_style", softplus=False)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    before, out = state_of(model), model(x)
    with surgery.softplus(model, beta=5.0) as sp:
        assert len(sp) == len(relus) == 4
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())
        assert not any(m.training for m in model.modules())
        assert not torch.allclose(model(x), out)
    assert_same_state(before, state_of(model))
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus
    assert torch.equal(model(x), out)


def test_restored_after_an_error():
    model, _ = make("small_cnn", softplus=False)
    before = state_of(model)
    with pytest.raises(KeyError):
        with surgery.softplus(model, 10.0):
            raise KeyError("inside")
    assert_same_state(before, state_of(model))


def test_beta_is_settable_during_a_run_and_large_beta_approaches_relu():
    model, x = make("small_cnn", softplus=False)
    relu_out = model(x)
    with surgery.softplus(model, beta=1.0) as sp:
        far = (model(x) - relu_out).abs().max()
        sp.beta = 1000.0
        near = (model(x) - relu_out).abs().max()
        assert all(m.beta == 1000.0 for m in model.modules() if isinstance(m, nn.Softplus))
    assert near < 0.01 * far


def test_softplus_copy_leaves_the_original_untouched():
    model, x = make("small_cnn", softplus=False)
    before = state_of(model)
    smooth = surgery.softplus_copy(model, beta=3.0)
    assert sum(isinstance(m, nn.Softplus) for m in smooth.modules()) == 3
    assert surgery.set_beta(smooth, 7.0) == 3
    assert_same_state(before, state_of(model))
    ref, _ = make("small_cnn", softplus=True)  # same weights, Softplus(beta=3) built in
    surgery.set_beta(ref, 7.0)
    assert torch.allclose(smooth(x), ref(x))


def test_gradient_map_of_softplus_model_is_smooth():
    model, x = make("small_cnn", softplus=False)
    with surgery.softplus(model, 10.0):
        h = manipex.explain(model, x.clone().requires_grad_(True), "gradient", create_graph=True)
        (g,) = torch.autograd.grad(h.pow(2).sum(), list(model.parameters())[0])
    assert g.abs().sum() > 0


def test_functional_relu_is_refused_then_canonicalised():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

    model = Functional().eval()
    with pytest.raises(ValueError, match="functionally.*canonicalize"):
        with surgery.softplus(model):
            pass
    canonical = surgery.canonicalize(model)
    x = torch.randn(5, 3)
    assert torch.allclose(canonical(x), model(x))
    with surgery.softplus(canonical, beta=2.0):
        assert torch.allclose(canonical(x), model.fc2(F.softplus(model.fc1(x), beta=2.0)))


@pytest.mark.parametrize("beta", [0, -1.0, float("inf"), "10", True])
def test_bad_beta(beta):
    model, _ = make("small_cnn", softplus=False)
    with pytest.raises(ValueError, match="beta"):
        with surgery.softplus(model, beta):
            pass
