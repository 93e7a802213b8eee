"""Shared test models and helpers.

Two test models, as the core issue asks: a small CNN with max-pooling and a VGG-style network
with batch norm. Both exist in a ReLU and a Softplus(β) version, in float64, with random
(but fixed) batch-norm statistics so that merging is actually exercised.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import manipex

torch.set_num_threads(2)


def small_cnn(act: type = nn.ReLU, **kw) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), act(**kw), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), act(**kw), nn.Flatten(), nn.Linear(6 * 2 * 2, 16), act(**kw),
        nn.Dropout(0.5), nn.Linear(16, 5),
    ).double().eval()


def vgg_style(act: type = nn.ReLU, **kw) -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), act(**kw),
                      nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), act(**kw), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), act(**kw), nn.AvgPool2d(2)),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(),
        nn.Sequential(nn.Linear(24, 12), act(**kw), nn.Linear(12, 4)),
    ).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


MODELS = {"small_cnn": (small_cnn, (2, 1, 8, 8)), "vgg_style": (vgg_style, (2, 3, 8, 8))}


def make(name: str, softplus: bool = True):
    build, shape = MODELS[name]
    model = build(nn.Softplus, beta=3.0) if softplus else build()
    torch.manual_seed(2)
    x = torch.rand(shape, dtype=torch.float64) * 0.8 + 0.1
    return model, x


@pytest.fixture(scope="session")
def patterns_for():
    cache = {}

    def get(name: str, model: nn.Module):
        if name not in cache:
            torch.manual_seed(3)
            shape = MODELS[name][1]
            cache[name] = manipex.fit_patterns(model, torch.rand((64,) + shape[1:], dtype=torch.float64))
        return cache[name]

    return get


def method_options(method: str, name: str, model: nn.Module, patterns_for) -> dict:
    """Small but non-trivial options for every method, for fast tests.

    The SmoothGrad seed is one whose noisy copies stay away from max-pool ties: a map
    through max-pooling jumps where the winner changes (seed 0 puts a sample within 1e-6 of
    one, which a finite difference of that size cannot resolve).
    """
    return {
        "integrated_gradients": {"steps": 4},
        "smoothgrad": {"samples": 3, "seed": 1, "sigma": 0.1},
        "occlusion": {"window": 3, "stride": 2},
        "pattern_attribution": {"patterns": patterns_for(name, model)} if method == "pattern_attribution" else {},
        "lrp": {},
    }.get(method, {})


def state_of(model: nn.Module):
    """Everything about a model that an explainer must leave unchanged."""
    return {
        "params": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
        "modules": [(n, type(m), id(m), m.training) for n, m in model.named_modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
    }


def assert_same_state(before, after):
    assert before["modules"] == after["modules"]
    assert before["hooks"] == after["hooks"]
    assert before["requires_grad"] == after["requires_grad"]
    assert all(g is None for g in after["grads"]) == all(g is None for g in before["grads"])
    for k, v in before["params"].items():
        assert torch.equal(v, after["params"][k]), k


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """A private model cache for the session (the user's cache is never touched)."""
    return tmp_path_factory.mktemp("manipex-cache")


@pytest.fixture(scope="session")
def mnist_model(model_cache):
    """The default MNIST-5k model, trained once per test session into the private cache."""
    return manipex.models.load_default("mnist", cache_dir=model_cache, progress=False)
