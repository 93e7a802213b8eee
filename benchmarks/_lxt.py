"""Shared by the benchmarks and the tests: LXT 2.1's AttnLRP / CP-LRP map, applied through a
``TorchFunctionMode`` with LXT's own rule functions (a reference for manipex's transformer
composites; ``pip install --no-deps lxt==2.1``)."""
from __future__ import annotations

import contextlib
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["lxt_modules", "lxt_rules", "lxt_map"]


def lxt_modules():
    """LXT 2.1's ``lxt.efficient.rules`` and ``.patches`` (``pip install --no-deps lxt==2.1``).
    The package's ``__init__`` imports its model patches, which need the transformers 4 and
    torchvision that this environment lacks; the two modules themselves need only torch, so
    they are loaded without it.

    Raises ImportError (with how to install it) where lxt is not installed."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("lxt")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lxt is not installed (pip install --no-deps lxt==2.1)")
    if "lxt.efficient" not in sys.modules:
        package = types.ModuleType("lxt.efficient")
        package.__path__ = [f"{spec.submodule_search_locations[0]}/efficient"]
        sys.modules["lxt.efficient"] = package
    import lxt.efficient.patches as patches
    import lxt.efficient.rules as rules

    return rules, patches


@contextlib.contextmanager
def lxt_rules(cp: bool):
    """LXT 2.1's own rule functions on a model's forward, as its patches apply them to Hugging
    Face and torchvision models: LayerNorm as ``lxt.efficient.patches.layer_norm_forward`` (the
    standard deviation detached), element-wise nonlinearities through ``identity_rule_implicit``,
    every matrix product of two activations followed by ``divide_gradient(., 2)`` (AttnLRP's
    uniform rule) and, for CP-LRP, the softmax output detached (``stop_gradient``). The relevance
    is then ``x * d logit / dx`` (gradient x input)."""
    lxt, patches = lxt_modules()
    from types import SimpleNamespace

    nonlinear = {F.gelu, torch.tanh, F.tanh}

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.layer_norm:
                x, shape = args[0], args[1]
                weight, bias = (args[2] if len(args) > 2 else kwargs.get("weight"),
                                args[3] if len(args) > 3 else kwargs.get("bias"))
                eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
                assert len(shape) == 1
                return patches.layer_norm_forward(SimpleNamespace(weight=weight, bias=bias, eps=eps), x)
            if func in nonlinear:
                return lxt.identity_rule_implicit(lambda t: func(t, *args[1:], **kwargs), args[0])
            if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__) and all(
                    isinstance(a, torch.Tensor) and a.requires_grad for a in args[:2]):
                return lxt.divide_gradient(func(*args, **kwargs), 2)
            if cp and func in (torch.softmax, F.softmax, torch.Tensor.softmax):
                return lxt.stop_gradient(func(*args, **kwargs))
            if func is F.scaled_dot_product_attention:  # LXT's (cp_)wrap_attention_forward
                q, k, v = args[:3]
                if cp:
                    q, k = lxt.stop_gradient(q), lxt.stop_gradient(k)
                else:
                    q, k, v = lxt.divide_gradient(q, 4), lxt.divide_gradient(k, 4), lxt.divide_gradient(v, 2)
                with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
                    return func(q, k, v, *args[3:], **kwargs)
            return func(*args, **kwargs)

    with Mode():
        yield


def lxt_map(model, x: Tensor, target: Union[int, Tensor], cp: bool) -> Tensor:
    """LXT's relevance over the logit: gradient x input starts from the logit's value at the
    output (``z * dz/dz``), manipex from 1 (Dombrowski et al. 2019, Eq. 1); every rule is
    linear in the relevance, so the two differ by that factor per sample.

    ``target``: one class for every sample (an int), or one per sample (a tensor of N classes)."""
    xg = x.clone().requires_grad_(True)
    with lxt_rules(cp):
        out = model(xg)
    if isinstance(target, Tensor):
        logit = out.gather(1, target.reshape(-1, 1).to(out.device)).squeeze(1)
    else:
        logit = out[:, target]
    (g,) = torch.autograd.grad(logit.sum(), xg)
    logit = logit.detach().reshape(-1, *([1] * (x.dim() - 1)))
    return (xg * g).detach() / logit
