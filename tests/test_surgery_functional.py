"""The Softplus surrogate of functional ReLUs (F.relu, torch.relu, x.relu(), in-place forms).

Issue 24: the attack's Softplus surrogate also replaces ReLUs called functionally in forward
(torchvision's DenseNet and Inception call ``F.relu(x, inplace=True)``), so that such models
attack as they explain. They are computed as Softplus(β) under a torch function mode that is
active only during the model's own forward.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode_stack

import manipex
from manipex import surgery
from manipex.attacks import manipulate_input
from manipex.objectives import TargetImage

from conftest import assert_same_state, state_of


class Functional(nn.Module):
    """Every form of a functional ReLU, and one nn.ReLU module."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else 3, 3, 3, padding=1) for i in range(6))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3 * 6 * 6, 4)
        self.fail = False

    def forward(self, x):
        c = self.convs
        x = F.relu(c[0](x))
        if self.fail:
            raise RuntimeError("inside forward")
        x = torch.relu(c[1](x))
        x = c[2](x).relu()
        x = F.relu(c[3](x), inplace=True)
        x = torch.relu_(c[4](x))
        x = c[5](x).relu_()
        return self.fc(self.relu(x).flatten(1))


class SoftplusTwin(Functional):
    """The same network written with Softplus(β) everywhere."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta
        self.relu = nn.Softplus(beta)

    def forward(self, x):
        for conv in self.convs:
            x = F.softplus(conv(x), beta=self.beta)
        return self.fc(self.relu(x).flatten(1))


def twin(model: nn.Module, beta: float) -> nn.Module:
    out = SoftplusTwin(beta).double().eval()
    out.load_state_dict(model.state_dict())
    return out


@pytest.fixture
def functional():
    torch.manual_seed(0)
    model = Functional().double().eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x


def no_mode() -> bool:
    t = torch.tensor([-1.0, 2.0])
    return not _get_current_function_mode_stack() and torch.equal(F.relu(t), torch.tensor([0.0, 2.0]))


def assert_restored(model, x, before, relu_out):
    assert_same_state(before, state_of(model))
    assert not model._forward_pre_hooks and not model._forward_hooks and not model._forward_hooks_always_called
    assert surgery.functional_surrogate(model) is None
    assert no_mode()
    assert torch.equal(model(x), relu_out)


def test_functional_relus_are_softplus_with_the_handles_beta_and_restored(functional):
    model, x = functional
    before, relu_out = state_of(model), model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with surgery.softplus(model, beta=5.0) as sp:
        assert len(sp) == 2  # the nn.ReLU module's unit and the one of all functional call sites
        unit = surgery.functional_surrogate(model)
        assert isinstance(unit, nn.Softplus) and any(u is unit for u in sp.units)
        assert (model(x) - twin(model, 5.0)(x)).abs().max() < 1e-6
        assert no_mode()  # active only inside the model's forward
        sp.beta = 2.0
        assert unit.beta == 2.0
        assert (model(x) - twin(model, 2.0)(x)).abs().max() < 1e-6
    assert_restored(model, x, before, relu_out)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_restored_after_an_error_in_the_block(functional):
    model, x = functional
    before, relu_out = state_of(model), model(x)
    with pytest.raises(KeyError):
        with surgery.softplus(model, beta=5.0):
            model(x)
            raise KeyError("inside the block")
    assert_restored(model, x, before, relu_out)


def test_an_error_in_forward_leaves_no_mode_behind(functional):
    model, x = functional
    before, relu_out = state_of(model), model(x)
    with pytest.raises(RuntimeError, match="inside forward"):
        with surgery.softplus(model, beta=5.0):
            model.fail = True
            with pytest.raises(RuntimeError, match="inside forward"):
                model(x)
            assert no_mode()  # the always_call forward hook exited the mode
            model.fail = False
            assert (model(x) - twin(model, 5.0)(x)).abs().max() < 1e-6
            model.fail = True
            model(x)  # and out of the block with the forward's error
    model.fail = False
    assert_restored(model, x, before, relu_out)


def test_nested_and_reentrant_calls_keep_the_mode_stack_balanced():
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x, depth: int = 0):
            if depth:  # re-entrant: the root model calls itself
                x = self(x, depth - 1)
            return F.relu(self.fc(x))

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.fc = Inner(), nn.Linear(3, 3)

        def forward(self, x):
            return self.inner(F.relu(self.fc(x)), depth=2)

    torch.manual_seed(0)
    outer = Outer().double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    fc_i, fc_o = outer.inner.fc, outer.fc

    def expected(beta_outer, beta_inner):
        h = F.softplus(fc_o(x), beta=beta_outer)
        for _ in range(3):
            h = F.softplus(fc_i(h), beta=beta_inner)
        return h

    with surgery.softplus(outer, beta=3.0):
        assert torch.allclose(outer(x), expected(3.0, 3.0), rtol=1e-12)
        with surgery.softplus(outer.inner, beta=7.0):  # the inner model's own mode is on top in its forward
            assert torch.allclose(outer(x), expected(3.0, 7.0), rtol=1e-12)
            assert no_mode()
        assert torch.allclose(outer(x), expected(3.0, 3.0), rtol=1e-12)
        with surgery.softplus(outer, beta=9.0) as again:  # already a surrogate: nothing more to swap
            assert len(again) == 0 and torch.allclose(outer(x), expected(3.0, 3.0), rtol=1e-12)
    assert no_mode() and not outer._forward_hooks and not outer.inner._forward_pre_hooks
    h = F.relu(fc_o(x))
    for _ in range(3):
        h = F.relu(fc_i(h))
    assert torch.equal(outer(x), h)


def test_smooth_copy_keeps_the_hooks_on_the_copy_and_leaves_the_original(functional):
    model, x = functional
    before, relu_out = state_of(model), model(x)
    smooth, handle = surgery.smooth_copy(model, 5.0)
    assert_restored(model, x, before, relu_out)
    assert (smooth(x) - twin(model, 5.0)(x)).abs().max() < 1e-6 and no_mode()
    unit = surgery.functional_surrogate(smooth)
    assert unit is not None and any(u is unit for u in handle.units)
    handle.beta = 2.0
    assert (smooth(x) - twin(model, 2.0)(x)).abs().max() < 1e-6
    assert surgery.set_beta(smooth, 3.0) == 2 and unit.beta == 3.0
    assert not surgery.has_relu(smooth) and surgery.has_relu(model)
    deeper = copy.deepcopy(smooth)  # carries its own unit
    surgery.set_beta(deeper, 8.0)
    assert unit.beta == 3.0 and surgery.functional_surrogate(deeper).beta == 8.0
    assert (deeper(x) - twin(model, 8.0)(x)).abs().max() < 1e-6
    assert (surgery.softplus_copy(model, 4.0)(x) - twin(model, 4.0)(x)).abs().max() < 1e-6
    assert_restored(model, x, before, relu_out)


def test_gradient_map_with_softplus_beta_is_the_all_softplus_networks(functional):
    model, x = functional
    before = state_of(model)
    h = manipex.explain(model, x, "gradient", softplus_beta=2.0)
    ref = manipex.explain(twin(model, 2.0), x, "gradient")
    assert torch.allclose(h, ref, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(h, manipex.explain(model, x, "gradient"))
    assert_same_state(before, state_of(model))
    assert no_mode()


def test_only_models_that_call_relu_functionally_get_the_hooks_and_tracing_is_cached(functional, monkeypatch):
    model, x = functional
    plain = nn.Sequential(nn.Linear(3, 3), nn.ReLU()).eval()
    traces = []
    trace = surgery._trace_functional_relus
    monkeypatch.setattr(surgery, "_trace_functional_relus", lambda m: traces.append(m) or trace(m))
    for _ in range(3):
        with surgery.softplus(plain, 2.0) as sp:
            assert len(sp) == 1 and not plain._forward_pre_hooks
        with surgery.softplus(model, 2.0) as sp:
            assert len(sp) == 2 and len(model._forward_pre_hooks) == 1
    assert len(traces) == 2  # once per model structure
    with surgery.softplus(plain, 2.0, check=False) as sp:  # known: no functional ReLU
        assert len(sp) == 1 and not plain._forward_pre_hooks
    fresh = Functional().double().eval()
    with surgery.softplus(fresh, 2.0, check=False) as sp:  # unknown: no trace, the hooks put in anyway
        assert len(sp) == 2 and (fresh(x) - twin(fresh, 2.0)(x)).abs().max() < 1e-6
    assert len(traces) == 2
    assert surgery.has_functional_relu(model) is True and surgery.has_functional_relu(plain) is False
    assert not surgery.has_relu(nn.Sequential(nn.Linear(3, 3), nn.Tanh()))
    assert surgery.has_relu(OnlyFunctional()) and not surgery.has_relu(surgery.softplus_copy(OnlyFunctional()))


class OnlyFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return F.relu(self.fc(x))


def test_an_untraceable_model_gets_the_surrogate_anyway():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            if x.sum() > -1e9:  # data-dependent control flow: fx cannot trace it
                x = F.relu(self.fc(x))
            return x

    model = Untraceable().double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    assert surgery.functional_relus(model) == [] and surgery.has_functional_relu(model) is None
    with surgery.softplus(model, 3.0):
        assert torch.allclose(model(x), F.softplus(model.fc(x), beta=3.0))
    assert torch.equal(model(x), F.relu(model.fc(x))) and not model._forward_hooks and no_mode()


class BasicConv2d(nn.Module):
    """torchvision's Inception BasicConv2d: conv, batch norm, ``F.relu(x, inplace=True)``."""

    def __init__(self, cin: int, cout: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionStyle(nn.Module):
    """Two branches of BasicConv2d concatenated, and a DenseNet-style head:
    ``F.relu(features, inplace=True)``, average pooling, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = BasicConv2d(1, 4, kernel_size=3, padding=1)
        self.branch1 = BasicConv2d(4, 3, kernel_size=1)
        self.branch3 = nn.Sequential(BasicConv2d(4, 3, kernel_size=1), BasicConv2d(3, 3, kernel_size=3, padding=1))
        self.norm = nn.BatchNorm2d(6)
        self.classifier = nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        features = self.norm(torch.cat([self.branch1(x), self.branch3(x)], 1))
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


def inception_style() -> nn.Module:
    torch.manual_seed(3)
    model = InceptionStyle().double()
    g = torch.Generator().manual_seed(4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    return model.eval()


def test_inception_style_surrogate_is_the_canonical_models_softplus():
    model = inception_style()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert len(surgery.functional_relus(model)) == 5
    canonical = surgery.softplus_copy(surgery.canonicalize(model), 10.0)
    assert torch.allclose(surgery.softplus_copy(model, 10.0)(x), canonical(x), rtol=1e-12)
    h = manipex.explain(model, x, "gradient", softplus_beta=10.0)
    assert torch.allclose(h, manipex.explain(canonical, x, "gradient"), rtol=1e-9, atol=1e-12)


def test_attack_on_a_functional_relu_model_runs_and_leaves_it_unchanged():
    model = inception_style()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 0.8 + 0.1
    before, out = state_of(model), model(x)
    res = manipulate_input(model, x, TargetImage(x.roll(1, 0)), "gradient", steps=4, eps=0.1,
                           check_every=2, progress=False)  # refused before issue 24
    assert res.x_adv.shape == x.shape and (res.x_adv - x).abs().max() <= 0.1 + 1e-9
    assert_same_state(before, state_of(model))
    assert not model._forward_pre_hooks and not model._forward_hooks and no_mode()
    assert torch.equal(model(x), out)
