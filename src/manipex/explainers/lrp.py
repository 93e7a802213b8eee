"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2017, 2019) on any graph.

A composite (:mod:`manipex.explainers.composites`) gives every layer its rule
(:mod:`manipex.explainers.rules`); the base :class:`~manipex.explainers.propagation.PropagationExplainer`
walks the model graph backwards, summing relevance over the consumers of a tensor. Built-in
composites: ``zb_zplus`` (Dombrowski et al. 2019, Eq. 2-3), ``epsilon``, ``alpha_beta``,
``epsilon_plus``, ``epsilon_plus_flat`` and ``epsilon_gamma_box`` for CNNs, ``attn_lrp``,
``cp_lrp`` and their γ forms for transformers; or pass a
:class:`~manipex.explainers.composites.Composite` of your own. The default, ``"auto"``, is
``zb_zplus`` on a model without attention (the papers' CNNs) and ``attn_lrp`` (Achtibat et al.
2024) on a model that attends (a product of two activations in its graph, ``q @ k^T``): z+
assumes non-negative layer inputs (ReLU networks), which the LayerNorm and GELU outputs of a
transformer are not.

The initial relevance is the one-hot ``R^L_i = delta_{i,k}`` (Dombrowski Eq. 1): multiply by the
logit for Captum's and Zennit's convention (they start at the output). Max-pooling is
winner-takes-all, residual sums and average pooling share relevance proportionally (conserving),
activations pass it. Every rule is exactly differentiable w.r.t. the input and all weights (z+,
αβ and γ use ``clamp`` of the weights, differentiable almost everywhere).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .._validation import check_real, short
from .composites import Composite, composites, get_composite
from .propagation import PropagationExplainer
from ..models.normalize import input_normalization


class LRP(PropagationExplainer):
    """Layer-wise Relevance Propagation; see the module docstring for the composites.

    Options:
        composite: ``"auto"`` (the default: ``"zb_zplus"`` on a model without attention,
            ``"attn_lrp"`` on a transformer), a registered name (``"zb_zplus"``,
            ``"epsilon"``, ``"alpha_beta"``, ``"epsilon_plus"``, ``"epsilon_plus_flat"``,
            ``"epsilon_gamma_box"``, ``"attn_lrp"``, ``"cp_lrp"``, ...) or a
            :class:`~manipex.explainers.composites.Composite`.
        low, high: bounds of the input domain for zB (floats or tensors broadcastable to one
            input, e.g. per channel ``(C, 1, 1)``); default ``[0, 1]``, manipex's image range.
        epsilon: of the ε rule.
        alpha, beta: of the ``"alpha_beta"`` composite, with ``alpha - beta = 1``.
        gamma: of the γ rule (``"epsilon_gamma_box"``).
        stabilizer: added to the denominators of z+, zB, αβ, γ, flat and the proportional rule
            of residual sums and pooling (Captum uses 1e-9, Zennit 1e-6).
    """

    name = "lrp"
    options = {"composite": "auto", "low": 0.0, "high": 1.0, "epsilon": 1e-6,
               "alpha": 1.0, "beta": 0.0, "gamma": 0.25, "stabilizer": 1e-9}

    def validate_options(self):
        c = self.config
        where = "explain(method='lrp')"
        if not isinstance(c["composite"], Composite) and c["composite"] not in ("auto", *composites()):
            raise ValueError(
                f"{where}: composite must be a Composite, 'auto' or one of {', '.join(composites())}; "
                f"got {c['composite']!r}"
            )
        for key in ("epsilon", "alpha", "beta", "gamma", "stabilizer"):
            check_real(c[key], where=where, name=key, ge=0)
        if abs(c["alpha"] - c["beta"] - 1) > 1e-9:
            raise ValueError(f"{where}: alpha - beta must be 1 (conservation), "
                             f"got alpha={c['alpha']}, beta={c['beta']}")
        for key in ("low", "high"):
            value = c[key]
            if not isinstance(value, (int, float, Tensor)) or isinstance(value, bool):
                raise TypeError(f"{where}: {key} must be a float or a tensor, got {type(value).__name__}")
            if isinstance(value, Tensor) and not value.is_floating_point():
                raise TypeError(f"{where}: {key} must be a floating tensor, got dtype {value.dtype}")
            if not bool(torch.isfinite(torch.as_tensor(value)).all()):
                raise ValueError(f"{where}: {key} must be finite, got {short(value)}")
        if not isinstance(c["low"], Tensor) and not isinstance(c["high"], Tensor) and not c["low"] < c["high"]:
            raise ValueError(f"{where}: low must be below high (the input domain of zB), got low={c['low']}, "
                             f"high={c['high']}")

    def propagator(self, model, x, create_graph, graph):
        """The composite's rules for this call (zB's bounds mapped through the model's input
        normalisation for this ``x``; ``"auto"`` resolved on the traced ``graph``)."""
        low, high = self.bounds(x, model)
        options = {k: self.config[k] for k in ("epsilon", "alpha", "beta", "gamma", "stabilizer")}
        composite = get_composite(self.composite_for(graph), {**options, "low": low, "high": high})

        def propagate(record, signal):
            rule = composite.rule_for(record.layer)
            rule.check(record)
            return rule(record, signal, create_graph)

        return propagate

    def composite_for(self, graph) -> "str | Composite":
        """The composite this explainer uses on a traced model: the one asked for, or for
        ``"auto"``, ``"attn_lrp"`` where :attr:`~manipex.explainers.graph.Graph.has_attention`
        and ``"zb_zplus"`` elsewhere."""
        composite = self.config["composite"]
        if isinstance(composite, str) and composite == "auto":
            return "attn_lrp" if graph.has_attention else "zb_zplus"
        return composite

    def bounds(self, x: Tensor, model: Optional[nn.Module] = None) -> Tuple[Tensor, Tensor]:
        """``low`` and ``high`` as tensors broadcast to one input ``x[0]``; where ``model``
        starts with an input :class:`~manipex.models.normalize.Normalize`, mapped through it
        (zB's bounds are those of the first convolution's input)."""
        norm = input_normalization(model) if model is not None else None
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
        if bool((out[0] >= out[1]).any()):
            raise ValueError("explain(method='lrp'): low must be below high everywhere (the input domain of zB)")
        if norm is not None:
            out = [norm(b).detach() for b in out]
        return out[0], out[1]

