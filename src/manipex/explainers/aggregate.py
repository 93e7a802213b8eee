"""AGG-Mean and AGG-Var (Rieger & Hansen 2020), aggregates of several methods.

Each member map ``E_j`` is turned into the paper's normalised heatmap (sum of absolute values
over channels, normalised to sum 1 per sample, :func:`manipex.relevance`), then

* AGG-Mean: ``E = 1/J sum_j E_j`` (Rieger Eq. 4),
* AGG-Var: ``E = mean_j E_j / (std_j E_j + c)`` with ``c`` = 10 times the mean (over the
  pixels of each sample) of the standard deviation (Rieger App. A.2.1).

The aggregate ``(N, H, W)`` is returned with ``x``'s shape, divided equally over the channels,
so that ``manipex.relevance`` of it gives the AGG-Mean heatmap itself. Default members are
Gradient, Guided Backprop and LRP, the aggregate of Rieger Sec. 4.2.
"""
from __future__ import annotations

import torch

from .._validation import check_real, predicted_target, short
from .base import Explainer, channel_axis, explain_many, get_explainer, relevance


def _specs(methods, where):
    expected = "a non-empty list of method names or (name, options) pairs"
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not methods:
        raise ValueError(f"{where}: methods must be {expected}, got {short(methods)}")
    specs = []
    for spec in methods:
        if isinstance(spec, str):
            name, opts = spec, {}
        elif (isinstance(spec, (list, tuple)) and len(spec) == 2 and isinstance(spec[0], str)
              and isinstance(spec[1], dict)):
            name, opts = spec
        else:
            raise TypeError(f"{where}: methods must be {expected}; the item {short(spec)} is neither")
        if name in ("agg_mean", "agg_var"):
            raise ValueError(f"{where}: an aggregate cannot contain {name!r}")
        get_explainer(name, **opts)  # validates the name and options now
        specs.append((name, dict(opts)))
    return specs


class AggregateExplainer(Explainer):
    options = {"methods": ("gradient", "guided_backprop", "lrp"), "var_constant": 10.0}

    def validate_options(self):
        where = f"explain(method={self.name!r})"
        self.specs = _specs(self.config["methods"], where)
        check_real(self.config["var_constant"], where=where, name="var_constant", ge=0)

    def member_heatmaps(self, model, x, target, create_graph) -> torch.Tensor:
        target = predicted_target(model, x, target, where=f"explain(method={self.name!r})")
        maps = explain_many(model, x, target, create_graph, self.specs)
        return torch.stack([relevance(h) for h in maps])  # (J, N, ...)

    def to_input_shape(self, heat, x):
        """The heatmap spread evenly over the channel axis that :func:`relevance` summed (the
        embedding axis of ``(N, L, D)`` token maps), so that ``relevance`` of it is ``heat``."""
        if x.dim() <= 2:
            return heat
        axis = channel_axis(x)
        return (heat.unsqueeze(axis) / x.shape[axis]).expand(x.shape).contiguous()


class AggMean(AggregateExplainer):
    """AGG-Mean (Rieger Eq. 4). Options: ``methods`` (names or ``(name, options)`` pairs)."""

    name = "agg_mean"

    def attribute(self, model, x, target, create_graph):
        return self.to_input_shape(self.member_heatmaps(model, x, target, create_graph).mean(0), x)


class AggVar(AggregateExplainer):
    """AGG-Var (Rieger App. A.2.1): mean over std plus ``var_constant`` x the mean std."""

    name = "agg_var"

    def attribute(self, model, x, target, create_graph):
        heat = self.member_heatmaps(model, x, target, create_graph)
        mean, std = heat.mean(0), heat.std(0, unbiased=False)
        const = self.config["var_constant"] * std.flatten(1).mean(1).reshape(-1, *([1] * (std.dim() - 1)))
        return self.to_input_shape(mean / (std + const + 1e-12), x)
