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


def test_functional_relu_is_softplus_in_the_block_and_canonicalize_still_works():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

    model = Functional().eval()
    x = torch.randn(5, 3)
    relu_out = model(x)
    with surgery.softplus(model, beta=2.0) as sp:  # no longer refused: F.relu is Softplus(2) here
        assert len(sp) == 1 and sp.units[0] is surgery.functional_surrogate(model)
        assert torch.allclose(model(x), model.fc2(F.softplus(model.fc1(x), beta=2.0)))
    assert torch.equal(model(x), relu_out) and not model._forward_pre_hooks and not model._forward_hooks
    canonical = surgery.canonicalize(model)
    assert torch.allclose(canonical(x), model(x))
    with surgery.softplus(canonical, beta=2.0):
        assert torch.allclose(canonical(x), model.fc2(F.softplus(model.fc1(x), beta=2.0)))


@pytest.mark.parametrize("beta", [0, -1.0, float("inf"), "10", True])
def test_bad_beta(beta):
    model, _ = make("small_cnn", softplus=False)
    with pytest.raises(ValueError, match="beta"):
        with surgery.softplus(model, beta):
            pass


POOLS = [
    (nn.MaxPool2d(2), (2, 3, 8, 8)),
    (nn.MaxPool2d(3, 2, 1), (2, 3, 9, 9)),
    (nn.MaxPool2d(3, 2, ceil_mode=True), (1, 2, 10, 10)),
    (nn.MaxPool2d(3, 2, 1, dilation=2), (1, 2, 11, 11)),
    (nn.MaxPool2d((2, 3), (1, 2), ceil_mode=True), (1, 1, 7, 9)),
    (nn.MaxPool1d(3, 2), (2, 3, 11)),
    (nn.MaxPool3d(2), (1, 2, 4, 4, 4)),
]


@pytest.mark.parametrize("pool,shape", POOLS, ids=[f"{type(p).__name__}-{s}" for p, s in POOLS])
def test_smooth_max_pool_is_the_log_sum_exp_maximum_of_each_window(pool, shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    hard = pool(x)
    smooth = surgery.SmoothMaxPool.from_maxpool(pool, beta=1e4)(x)
    assert smooth.shape == hard.shape and torch.allclose(smooth, hard, atol=1e-3)
    # above the maximum by at most log(window size) / beta
    gap = surgery.SmoothMaxPool.from_maxpool(pool, beta=2.0)(x) - hard
    window = torch.tensor(pool.kernel_size if isinstance(pool.kernel_size, tuple) else
                          (pool.kernel_size,) * (len(shape) - 2)).prod().item()
    assert bool((gap >= -1e-12).all()) and bool((gap <= torch.log(torch.tensor(float(window))) / 2 + 1e-9).all())


def test_smooth_max_pool_gradient_is_the_window_softmax_and_twice_differentiable():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    pool = surgery.SmoothMaxPool.from_maxpool(nn.MaxPool2d(2), beta=3.0)
    (g,) = torch.autograd.grad(pool(x).sum(), x)
    windows = x.detach().reshape(1, 1, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(1, 1, 2, 2, 4)
    soft = (3.0 * windows).softmax(-1).reshape(1, 1, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(1, 1, 4, 4)
    assert torch.allclose(g, soft)
    assert torch.autograd.gradcheck(pool, (x,)) and torch.autograd.gradgradcheck(pool, (x,))


TILING = [(nn.MaxPool2d(2), (2, 3, 8, 8)), (nn.MaxPool2d(2), (1, 2, 7, 9)), (nn.MaxPool2d(3, ceil_mode=True), (1, 2, 9, 6)),
          (nn.MaxPool1d(2), (2, 3, 11)), (nn.MaxPool3d(2), (1, 2, 4, 6, 5)), (nn.MaxPool2d((2, 3)), (1, 1, 6, 9))]


@pytest.mark.parametrize("pool,shape", TILING, ids=[f"{type(p).__name__}-{s}" for p, s in TILING])
def test_tiling_windows_take_the_pooling_path_with_the_same_values_and_derivatives(pool, shape, monkeypatch):
    """Stride = kernel without padding (MaxPool2d(2)) is computed from pooling kernels, not
    unfolded windows: the same function, first and second derivatives as the general path."""
    smooth = surgery.SmoothMaxPool.from_maxpool(pool, beta=7.0)
    assert smooth._tiles(shape[2:])

    def value_and_derivatives():
        x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
        y = smooth(x)
        (g,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
        return y, g, gg

    tiled = value_and_derivatives()
    monkeypatch.setattr(smooth, "_tiles", lambda spatial: False)
    general = value_and_derivatives()
    for a, b in zip(tiled, general):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    monkeypatch.undo()
    assert torch.autograd.gradgradcheck(smooth, (x,))
    # overlapping windows, padding, ceil mode over a remainder: the general path
    assert not surgery.SmoothMaxPool.from_maxpool(nn.MaxPool2d(3, 2), 1.0)._tiles((9, 9))
    assert not surgery.SmoothMaxPool.from_maxpool(nn.MaxPool2d(2, padding=1), 1.0)._tiles((8, 8))
    assert not surgery.SmoothMaxPool.from_maxpool(nn.MaxPool2d(2, ceil_mode=True), 1.0)._tiles((5, 5))


def test_smooth_copy_with_pools_swaps_them_and_the_handle_sets_their_beta():
    model, x = make("small_cnn", softplus=False)
    before = state_of(model)
    smooth, handle = surgery.smooth_copy(model, 5.0, pools=True)
    pools = [m for m in smooth.modules() if isinstance(m, surgery.SmoothMaxPool)]
    assert pools and not any(isinstance(m, nn.MaxPool2d) for m in smooth.modules())
    handle.beta = 1e4
    assert all(p.beta == 1e4 for p in pools)
    assert torch.allclose(smooth(x), model(x), atol=1e-2)
    assert_same_state(before, state_of(model))
    assert not any(isinstance(m, surgery.SmoothMaxPool) for m in surgery.smooth_copy(model, 5.0)[0].modules())


@pytest.mark.parametrize("method", ["gradient", "lrp", "guided_backprop"])
def test_maps_of_the_pool_smoothed_copy_approach_the_hard_pools_as_beta_grows(method):
    model, x = make("small_cnn", softplus=False)
    smooth, _ = surgery.smooth_copy(model, 1e4, pools=True)
    ref = manipex.explain(surgery.smooth_copy(model, 1e4)[0], x, method)  # the same softplus, hard pools
    assert torch.allclose(manipex.explain(smooth, x, method), ref, atol=1e-3 * ref.abs().max().item())


def test_beta_smoothing_names_the_kinked_activations_it_leaves_and_warns_where_there_is_no_relu():
    """β-smoothing replaces ReLUs; a LeakyReLU or ReLU6 beside them stays kinked, and a GELU
    network has nothing to smooth: both are said, once per model, never a silent no-op."""
    import warnings

    from manipex.surgery import NothingToSmoothWarning, PartlySmoothedWarning

    mixed = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.LeakyReLU(), nn.ReLU6(),
                          nn.Linear(4, 2)).eval()
    x = torch.rand(3, 4)
    with pytest.warns(PartlySmoothedWarning, match=r"LeakyReLU \(1 module\), ReLU6 \(1 module\)"):
        manipex.explain(mixed, x, "gradient", 0, softplus_beta=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manipex.explain(mixed, x, "gradient", 0, softplus_beta=3.0)  # once per model
        plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
        manipex.explain(plain, x, "gradient", 0, softplus_beta=3.0)  # ReLU only: nothing to say
    gelu = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)).eval()
    with pytest.warns(NothingToSmoothWarning, match="no ReLU"):
        h = manipex.explain(gelu, x, "gradient", 0, softplus_beta=3.0)
    assert torch.equal(h, manipex.explain(gelu, x, "gradient", 0))
