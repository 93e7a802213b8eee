"""PatternAttribution (Kindermans et al. 2018) and the fitting of its patterns.

PatternAttribution is the gradient with every weight matrix ``W`` replaced by ``W * A``, the
element-wise product with a pattern learned from data (Dombrowski et al. 2019, Sec. 2.1).
:func:`fit_patterns` estimates, for every neuron ``j`` of every affine layer with weight
``w_j``, input ``x`` (patches for convolutions) and output ``y_j``, the two-component pattern
of Kindermans et al. (2018, Sec. 4)

    ``a_j = (E+[x y_j] - E+[x] E+[y_j]) / (w_j^T E+[x y_j] - w_j^T E+[x] E+[y_j])``

where ``E+`` is the mean over the samples with ``y_j > 0`` when the layer feeds a ReLU or
Softplus, and over all samples otherwise (the linear estimator ``cov(x, y) / var(y)``).
Patterns are constants of the fitted model: the map is exactly differentiable w.r.t. the
input and the weights with the patterns held fixed.
"""
from __future__ import annotations

from typing import Dict, Iterable, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import (check_autograd, check_call, check_input, check_model, check_parameters,
                           translate_runtime_error)
from .graph import Graph, Layer, model_graph
from .propagation import PropagationExplainer
from .rules import vjp
from ..models.interfaces import logits_model


class Patterns(Dict[str, Tensor]):
    """Patterns by fx node name of each affine layer, each shaped like the layer's weight."""


def _feeds_rectifier(graph: Graph, layer: Layer) -> bool:
    """Whether every consumer of the layer's output (through identities) is a ReLU/Softplus."""
    pending, seen = [layer.node], set()
    found = False
    while pending:
        for consumer in graph.consumers(pending.pop()):
            if consumer.node in seen:
                continue
            seen.add(consumer.node)
            if consumer.kind == "identity":
                pending.append(consumer.node)
            elif consumer.kind == "activation" and consumer.activation in ("relu", "softplus"):
                found = True
            else:
                return False
    return found


def _is_patterned(layer: Layer) -> bool:
    return layer.kind in ("conv", "dense") and isinstance(layer.module, (nn.Linear, nn.Conv2d))


def _as_rows(layer: Layer, x: Tensor, y: Tensor):
    """Inputs as rows ``(M, G, D)`` and outputs ``(M, G, O / G)`` of one affine layer with ``G``
    groups (a depthwise convolution: one group per channel; each output neuron sees the inputs
    of its own group only, ``D`` of them)."""
    m = layer.module
    if isinstance(m, nn.Linear):
        return x.reshape(-1, 1, x.shape[-1]), y.reshape(-1, 1, y.shape[-1])
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        g = m.groups
        cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # (N, C k k, L), channel-major
        rows = cols.transpose(1, 2).reshape(-1, g, cols.shape[1] // g)
        return rows, y.flatten(2).transpose(1, 2).reshape(-1, g, y.shape[1] // g)
    raise ValueError(f"fit_patterns supports Linear and Conv2d (numeric padding) layers, not {layer.name}")


def fit_patterns(
    model: nn.Module,
    data: Union[Tensor, Iterable],
    *,
    batch_size: int = 256,
    output=None,
) -> Patterns:
    """Fit the PatternAttribution patterns of ``model`` on ``data``.

    Args:
        model: a model in eval mode (see :func:`manipex.explainers.graph.model_graph`).
        data: a tensor of inputs ``(N, ...)`` or an iterable of batches (tensors or
            ``(x, y)`` tuples, e.g. a DataLoader).
        batch_size: batch size used when ``data`` is a tensor.
        output: what selects the logits of a model that returns more than a tensor, as in
            :func:`manipex.explain` (None: found automatically); the patterns then fit
            ``explain(model, x, "pattern_attribution", patterns=..., output=...)`` with the same
            ``output``.

    Returns:
        :class:`Patterns`, to pass as ``explain(model, x, "pattern_attribution", patterns=...)``.
    """
    where = "fit_patterns"
    check_model(model, where=where)
    if isinstance(data, Tensor):
        check_call(model, data, where=where, name="data")
    else:
        check_autograd(where)  # patterns made under inference_mode could not enter a map's graph later
        check_parameters(model, where=where)
    graph, rectified = None, {}
    if isinstance(data, Tensor):
        batches: Iterable = data.split(batch_size)
    else:
        batches = data
    sums: Dict[str, Dict[str, Tensor]] = {}
    weights: Dict[str, Tensor] = {}
    with torch.no_grad():  # fitting is estimation, not part of any differentiated map
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, Tensor):
                raise TypeError(f"{where}: data must be a tensor or an iterable of tensors or (x, y) batches, "
                                f"got a batch of type {type(x).__name__}")
            check_input(x, where=where, name="a batch of data")
            if graph is None:  # traced at the first batch (a forward whose control flow reads shapes)

                model = logits_model(model, x, output, where=where)  # a dict or .logits output: its logits
                graph = model_graph(model, "pattern_attribution", x)
                rectified = {layer.node: _feeds_rectifier(graph, layer) for layer in graph.layers.values()
                             if _is_patterned(layer)}
            try:
                _, records = graph.forward(x)
            except RuntimeError as err:
                clear = translate_runtime_error(err, x, where=where)
                if clear is err:
                    raise
                raise clear from err
            for record in records:
                layer = record.layer
                if not _is_patterned(layer):
                    continue
                name = layer.node.name
                weight, _ = layer.parameters()
                weights[name] = weight
                xs, ys = _as_rows(layer, record.input, record.output)
                xs, ys = xs.double(), ys.double()
                mask = (ys > 0).double() if rectified[layer.node] else torch.ones_like(ys)
                s = sums.setdefault(name, {"n": 0, "x": 0, "y": 0, "xy": 0})
                s["n"] = s["n"] + mask.sum(0).flatten()
                s["x"] = s["x"] + torch.einsum("mgo,mgd->god", mask, xs).flatten(0, 1)
                s["y"] = s["y"] + (mask * ys).sum(0).flatten()
                s["xy"] = s["xy"] + torch.einsum("mgo,mgd->god", mask * ys, xs).flatten(0, 1)
    if not sums:
        raise ValueError("fit_patterns: data was empty")
    patterns = Patterns()
    with torch.no_grad():  # patterns are constants of the fitted model
        for name, s in sums.items():
            n = s["n"].clamp(min=1)[:, None]
            ex, ey, exy = s["x"] / n, s["y"][:, None] / n, s["xy"] / n
            cov = exy - ex * ey
            w = weights[name].reshape(cov.shape[0], -1).double()
            denom = (w * cov).sum(1, keepdim=True)
            a = torch.where(denom.abs() > 1e-12, cov / denom.where(denom.abs() > 1e-12, torch.ones_like(denom)), 0.0)
            patterns[name] = a.reshape(weights[name].shape).to(weights[name].dtype)
    return patterns


class PatternAttribution(PropagationExplainer):
    """PatternAttribution (Kindermans et al. 2018): backpropagation with ``W * A``.

    Options:
        patterns: the :class:`Patterns` from :func:`fit_patterns` (required).
    """

    name = "pattern_attribution"
    options = {"patterns": None}

    def validate_options(self):
        if self.config["patterns"] is None:
            raise ValueError(
                "explain(method='pattern_attribution') needs patterns=: fit them once with "
                "manipex.explainers.fit_patterns(model, x_train)"
            )
        if not isinstance(self.config["patterns"], dict):
            raise TypeError("explain(method='pattern_attribution'): patterns must come from fit_patterns")

    def prepare(self, model, records):
        patterns = self.config["patterns"]
        for record in records:
            layer = record.layer
            if _is_patterned(layer):
                pattern = patterns.get(layer.node.name)
                if pattern is None or pattern.shape != layer.module.weight.shape:
                    raise ValueError(
                        f"explain(method='pattern_attribution'): the patterns do not fit {layer.name}; "
                        "they were fitted for another model"
                    )

    def propagate(self, record, signal, create_graph):
        layer = record.layer
        if _is_patterned(layer):
            weight, _ = record.parameters()
            pattern = self.config["patterns"][layer.node.name].to(weight)
            x = record.input
            return vjp(layer.forward_with(x, weight * pattern, None), x, signal, create_graph)
        return super().propagate(record, signal, create_graph)


__all__ = ["Patterns", "fit_patterns", "PatternAttribution"]
