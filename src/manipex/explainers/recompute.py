"""Chunks of a map that keep no graph between its forward and backward pass.

A create_graph map summed over chunks (integrated gradients over its path, SmoothGrad over its
samples) keeps every chunk's graph alive until the backward pass, so chunking barely lowers the
peak memory of an attack or training step (measured: README, Measured figures behind the
defaults). :func:`recomputed` evaluates a chunk's contribution without keeping its graph and
builds it again, one chunk at a time, in the backward pass (gradient checkpointing): the same
values and derivatives, at the peak memory of one chunk, for about one more map evaluation per
chunk (``benchmarks/create_graph_memory.py``; its figures: the same README section).
"""
from __future__ import annotations

from typing import Callable, List

import torch
from torch import Tensor, nn


class _Recomputed(torch.autograd.Function):
    """``fn(x)`` whose graph is dropped after the forward pass and rebuilt in the backward pass;
    ``params`` (the weights ``fn`` reads) are inputs, so that their gradients are routed."""

    @staticmethod
    def forward(ctx, fn: Callable[[Tensor], Tensor], x: Tensor, *params: Tensor) -> Tensor:
        ctx.fn = fn
        ctx.save_for_backward(x, *params)
        with torch.enable_grad():  # fn differentiates the model inside (a map is a gradient)
            return fn(x.detach().requires_grad_(x.requires_grad)).detach()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, *params = ctx.saved_tensors
        higher = torch.is_grad_enabled()  # a backward with create_graph: stay connected to x's graph
        leaf = x if higher and x.requires_grad else x.detach().requires_grad_(True)
        wanted: List[Tensor] = [leaf] + [p for p in params if p.requires_grad]
        with torch.enable_grad():
            out = ctx.fn(leaf)
            grads = torch.autograd.grad(out, wanted, grad, allow_unused=True, create_graph=higher)
        found = iter(grads[1:])
        param_grads = [next(found) if p.requires_grad else None for p in params]
        return (None, grads[0], *param_grads)


def recomputed(fn: Callable[[Tensor], Tensor], x: Tensor, model: nn.Module) -> Tensor:
    """``fn(x)``, differentiable w.r.t. ``x`` and every parameter of ``model``, with its graph
    rebuilt in the backward pass instead of kept. ``fn``
    must be deterministic (the same noise on the second call: seeded generators) and build its
    output with ``create_graph=True``; other tensors it reads are constants."""
    params = [p for p in model.parameters() if p.requires_grad]
    return _Recomputed.apply(fn, x, *params)


__all__ = ["recomputed"]
