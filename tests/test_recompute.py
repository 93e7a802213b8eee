"""Chunked create_graph maps rebuilt in the backward pass (gradient checkpointing): the same map
and the same derivatives, w.r.t. the input and every weight, as the unchunked map."""
from __future__ import annotations

import pytest
import torch

import manipex
from manipex.explainers.recompute import recomputed

from conftest import make

CASES = [
    ("integrated_gradients", {"steps": 6, "rule": "gausslegendre"}, "small_cnn"),
    ("integrated_gradients", {"steps": 5, "baseline": 0.2}, "resnet_basic"),
    ("smoothgrad", {"samples": 5, "seed": 3}, "small_cnn"),
    ("smoothgrad", {"samples": 4, "seed": 1, "base": "lrp", "relative": True}, "vgg_style"),
]


@pytest.mark.parametrize("method,options,name", CASES, ids=[f"{m}-{n}" for m, _, n in CASES])
def test_chunks_rebuilt_in_the_backward_pass_give_the_unchunked_map_and_derivatives(method, options, name):
    model, x = make(name, softplus=True)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(-1.0, 1.0, x.numel(), dtype=x.dtype).reshape(x.shape)

    def map_and_derivatives(**extra):
        xg = x.clone().requires_grad_(True)
        h = manipex.explain(model, xg, method, create_graph=True, **options, **extra)
        loss = (h * weights).pow(2).sum()
        grads = torch.autograd.grad(loss, [xg] + params, allow_unused=True)
        return [h] + [torch.zeros_like(p) if g is None else g for p, g in zip([xg] + params, grads)]

    whole = map_and_derivatives()
    chunked = map_and_derivatives(batch_size=x.shape[0] * 2)  # two rows of the path per chunk
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_recomputed_is_exact_to_third_order_and_keeps_no_graph_between_the_passes():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    calls = []

    def fn(inputs):
        calls.append(1)
        return torch.tanh(layer(inputs)).pow(2)

    out = recomputed(fn, x, layer)
    assert out.grad_fn is not None and len(calls) == 1
    assert torch.allclose(out, fn(x))
    calls.clear()
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    (g_ref,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    assert torch.allclose(g, g_ref)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    (gg_ref,) = torch.autograd.grad(g_ref.pow(2).sum(), x)
    assert torch.allclose(gg, gg_ref)
    assert torch.autograd.gradcheck(lambda t: recomputed(fn, t, layer), (x,))
    assert torch.autograd.gradgradcheck(lambda t: recomputed(fn, t, layer), (x,))


def test_auto_batch_size_chunks_plain_maps_on_the_cpu_and_keeps_their_values():
    from manipex.explainers.gradient import AUTO_ROWS, chunk_length

    x = torch.zeros(8, 1, 4, 4)
    assert chunk_length("auto", 8, 50, x, create_graph=False) == AUTO_ROWS // 8  # 32 copies a forward
    assert chunk_length("auto", 8, 50, x, create_graph=True) == 50  # all at once: no rebuilding
    assert chunk_length("auto", 512, 50, x) == 1  # at least one copy of the batch
    model, x = make("small_cnn", softplus=False)
    x = x.repeat(40, 1, 1, 1)  # 80 images x 10 steps: 800 rows, 4 chunks of 3 copies
    for method, options in (("integrated_gradients", {"steps": 10}), ("smoothgrad", {"samples": 10, "seed": 0})):
        auto = manipex.explain(model, x, method, **options)
        whole = manipex.explain(model, x, method, batch_size=None, **options)
        assert torch.allclose(auto, whole, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        manipex.explain(model, x, "integrated_gradients", batch_size="large")
