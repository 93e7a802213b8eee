"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2017) on one base.

Each rule is a few lines on :class:`~manipex.explainers.propagation.PropagationExplainer`;
a composite chooses the rule of every affine layer (Conv/Linear with BatchNorm merged):

* ``"zb_zplus"`` (default; Dombrowski et al. 2019, Eq. 2 and 3): the zB rule with input bounds
  ``low``/``high`` on the first layer, the z+ rule everywhere else.
* ``"epsilon"``: ``R_i = sum_j x_i w_ji / (z_j + eps sign z_j) R_j`` with bias (Captum's
  default ``EpsilonRule``).
* ``"alpha_beta"``: ``R = alpha R+ - beta R-`` with positive and negative contributions split
  (Bach et al. 2015); ``alpha=1, beta=0`` is z+ (Captum's ``Alpha1_Beta0_Rule`` with
  ``set_bias_to_zero=True``).

Activations pass relevance unchanged; max-pooling is winner-takes-all (the pooled unit's
relevance goes to its arg-max, as Dombrowski's reference code); average pooling is
redistributed proportionally to the inputs. The initial relevance is the one-hot
``R^L_i = delta_{i,k}`` (Dombrowski Eq. 1): multiply by the logit for Captum's convention.
Every rule is exactly differentiable w.r.t. the input and all weights (z+ and alpha-beta use
``clamp`` of the weights, differentiable almost everywhere).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from .chain import Record
from .propagation import PropagationExplainer, stabilize, vjp

COMPOSITES = ("zb_zplus", "epsilon", "alpha_beta")


def epsilon_rule(record: Record, relevance: Tensor, eps: float, create_graph: bool) -> Tensor:
    """``R_i = x_i * sum_j w_ji R_j / (z_j + eps sign z_j)``, ``z`` with bias."""
    x, z = record.input, record.output
    return x * vjp(z, x, relevance / stabilize(z, eps), create_graph)


def alpha_beta_rule(
    record: Record, relevance: Tensor, alpha: float, beta: float, stabilizer: float, create_graph: bool
) -> Tensor:
    """Alpha-beta rule, contributions ``(x_i w_ji)^+`` and ``(x_i w_ji)^-`` split, bias ignored.

    For non-negative inputs and ``alpha=1, beta=0`` this is the z+ rule of Dombrowski Eq. 2:
    ``R_i = sum_j x_i w+_ji / sum_i x_i w+_ji R_j``.
    """
    step, x = record.step, record.input
    weight, _ = step.parameters()
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    xp = x.clamp(min=0)
    xn = x.clamp(max=0) if bool((x < 0).any()) else None

    def share(w_for_pos: Tensor, w_for_neg: Tensor) -> Tensor:
        if xn is None:
            z = step.affine(xp, w_for_pos, None)
            return xp * vjp(z, xp, relevance / stabilize(z, stabilizer), create_graph)
        z = step.affine(xp, w_for_pos, None) + step.affine(xn, w_for_neg, None)
        gp, gn = torch.autograd.grad(
            z, (xp, xn), relevance / stabilize(z, stabilizer), create_graph=create_graph, retain_graph=True
        )
        return xp * gp + xn * gn

    out = share(wp, wn)
    if alpha != 1:
        out = alpha * out
    if beta != 0:
        out = out - beta * share(wn, wp)
    return out


def zb_rule(
    record: Record, relevance: Tensor, low: Tensor, high: Tensor, stabilizer: float, create_graph: bool
) -> Tensor:
    """zB rule for the bounded input domain ``low <= x <= high`` (Dombrowski Eq. 3).

    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / sum_i (...) R_j``, bias ignored.
    For Conv/Linear layers the three terms are one layer applied to the inputs stacked on the
    channel axis, ``[x, l, h]`` with weights ``[W, -W+, -W-]`` (one convolution and one
    transposed convolution instead of three each); a zero lower bound is dropped exactly.
    """
    step, x = record.step, record.input
    weight, _ = step.parameters()
    module = step.module
    terms = [(x, weight), (high.expand_as(x), -weight.clamp(max=0))]
    if bool(low.any()):
        terms.insert(1, (low.expand_as(x), -weight.clamp(min=0)))
    stackable = isinstance(module, nn.Linear) or (isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1)
    if stackable:
        inputs = torch.cat([t for t, _ in terms], dim=1)  # in the graph through x
        z = step.affine(inputs, torch.cat([w for _, w in terms], dim=1), None)
        s = relevance / stabilize(z, stabilizer)
        (g,) = torch.autograd.grad(z, inputs, s, create_graph=create_graph, retain_graph=True)
        width = x.shape[1]
        parts = [g[:, i * width : (i + 1) * width] for i in range(len(terms))]
        return sum(t * gi for (t, _), gi in zip(terms, parts))
    leaves = [x] + [t.clone().requires_grad_(True) for t, _ in terms[1:]]
    z = sum(step.affine(t, w, None) for t, (_, w) in zip(leaves, terms))
    grads = torch.autograd.grad(z, leaves, relevance / stabilize(z, stabilizer), create_graph=create_graph,
                                retain_graph=True)
    return sum(t * g for t, g in zip(leaves, grads))


def proportional_rule(record: Record, relevance: Tensor, stabilizer: float, create_graph: bool) -> Tensor:
    """Average pooling: relevance shared in proportion to the pooled inputs (z-rule)."""
    x, z = record.input, record.output
    return x * vjp(z, x, relevance / stabilize(z, stabilizer), create_graph)


class LRP(PropagationExplainer):
    """Layer-wise Relevance Propagation; see the module docstring for the composites.

    Options:
        composite: ``"zb_zplus"`` (default), ``"epsilon"`` or ``"alpha_beta"``.
        low, high: bounds of the input domain for zB (floats or tensors broadcastable to one
            input, e.g. per channel ``(C, 1, 1)``); default ``[0, 1]``, manipex's image range.
        epsilon: the epsilon of the ``"epsilon"`` composite.
        alpha, beta: of the ``"alpha_beta"`` composite, with ``alpha - beta = 1``.
        stabilizer: added to the denominators of z+, zB and alpha-beta (Captum uses 1e-9).
    """

    name = "lrp"
    options = {"composite": "zb_zplus", "low": 0.0, "high": 1.0, "epsilon": 1e-6,
               "alpha": 1.0, "beta": 0.0, "stabilizer": 1e-9}

    def validate_options(self):
        c = self.config
        where = "explain(method='lrp')"
        if c["composite"] not in COMPOSITES:
            raise ValueError(f"{where}: composite must be one of {COMPOSITES}, got {c['composite']!r}")
        for key in ("epsilon", "alpha", "beta", "stabilizer"):
            if not isinstance(c[key], (int, float)) or isinstance(c[key], bool) or c[key] < 0:
                raise ValueError(f"{where}: {key} must be a non-negative number, got {c[key]!r}")
        if abs(c["alpha"] - c["beta"] - 1) > 1e-9:
            raise ValueError(f"{where}: alpha - beta must be 1 (conservation), got alpha={c['alpha']}, beta={c['beta']}")
        for key in ("low", "high"):
            if not isinstance(c[key], (int, float, Tensor)) or isinstance(c[key], bool):
                raise TypeError(f"{where}: {key} must be a float or a tensor, got {type(c[key]).__name__}")

    def attribute(self, model, x, target, create_graph):
        self._bounds = self.bounds(x)
        return super().attribute(model, x, target, create_graph)

    def bounds(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``low`` and ``high`` as tensors broadcast to one input ``x[0]``."""
        out = []
        for key in ("low", "high"):
            b = torch.as_tensor(self.config[key], dtype=x.dtype, device=x.device)
            try:
                out.append(torch.broadcast_to(b, x.shape[1:]).unsqueeze(0))
            except RuntimeError:
                raise ValueError(
                    f"explain(method='lrp'): {key} of shape {tuple(b.shape)} does not broadcast to one "
                    f"input of shape {tuple(x.shape[1:])}"
                ) from None
        return out[0], out[1]

    def propagate(self, record, signal, create_graph, first):
        c, kind = self.config, record.step.kind
        if kind == "affine":
            if c["composite"] == "epsilon":
                return epsilon_rule(record, signal, c["epsilon"], create_graph)
            if c["composite"] == "zb_zplus" and first:
                low, high = (self._fit_bounds(b, record.input) for b in self._bounds)
                return zb_rule(record, signal, low, high, c["stabilizer"], create_graph)
            alpha, beta = (c["alpha"], c["beta"]) if c["composite"] == "alpha_beta" else (1.0, 0.0)
            return alpha_beta_rule(record, signal, alpha, beta, c["stabilizer"], create_graph)
        if kind == "activation":
            return signal
        if kind == "linear_pool":
            return proportional_rule(record, signal, c["stabilizer"], create_graph)
        return super().propagate(record, signal, create_graph, first)

    @staticmethod
    def _fit_bounds(bound: Tensor, layer_input: Tensor) -> Tensor:
        """Bounds reshaped to the first affine layer's input (a Flatten may come before it)."""
        per_input = layer_input.shape[1:]
        if bound.shape[1:] == per_input:
            return bound
        if bound.numel() == per_input.numel():
            return bound.reshape(1, *per_input)
        raise ValueError("explain(method='lrp'): the zB bounds do not match the first layer's input")
