"""Did a model manipulation work, and does it transfer? The evaluation of Pasliev 2020, Tables
3.1 and 3.2: accuracy, output change and an objective's metric for every explanation method, on
the original and the manipulated model (:func:`evaluate_manipulation`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._validation import check_call, check_int, check_labelled_data, check_target_range, forward, short
from ..explainers import explain, get_explainer, relevance
from ..figures import evaluation_figure
from ..models import accuracy
from ..models.interfaces import Output, logits_model
from ..objectives import Objective
from ..style import display_name, format_value


@dataclass(repr=False)
class ModelEvaluation:
    """Original vs manipulated model: ``table`` has one row per explanation method with the
    objective's mean metric for both (Pasliev Tables 3.1, 3.2: does the manipulation transfer?;
    ``table.attrs``: ``metric``, ``direction`` for the attacker (a
    :class:`~manipex.metrics.direction.Direction`), ``n`` images);
    ``summary`` has the accuracies and the output change; ``per_image`` the metric of every
    image (rows: method and image, columns: ``original``, ``manipulated``), from which
    :meth:`plot` draws its intervals. Its repr is a one-line summary."""

    table: Any
    summary: Dict[str, float]
    per_image: Any = None

    def __repr__(self) -> str:
        """``ModelEvaluation(com shift, 2 methods on 256 images: Gradient 1.2 -> 9.8, LRP 0.9 ->
        3.1; accuracy 91.0 % -> 90.2 %)``: means, original -> manipulated."""
        table, parts = self.table, []
        try:
            metric = display_name(table.attrs.get("metric", "metric"))
            n = table.attrs.get("n")
            methods = [str(m) for m in table.index]
            head = f"{metric}, {len(methods)} method{'s' if len(methods) != 1 else ''}"
            head += f" on {n} images" if n is not None else ""
            shown = [f"{display_name(m)} {float(table.loc[m, 'original']):.3g} -> "
                     f"{float(table.loc[m, 'manipulated']):.3g}"
                     for m in methods[:3]]
            parts.append(head + ": " + ", ".join(shown) + (", ..." if len(methods) > 3 else ""))
        except (AttributeError, KeyError, TypeError, ValueError):  # a hand-made table of another shape
            parts.append(f"table {getattr(table, 'shape', '?')}")
        acc = [self.summary.get(k) for k in ("accuracy_original", "accuracy_manipulated")] if self.summary else []
        if len(acc) == 2 and all(isinstance(a, (int, float)) for a in acc):
            parts.append(f"accuracy {format_value(acc[0], 'accuracy')} -> {format_value(acc[1], 'accuracy')}")
        return f"{type(self).__name__}({'; '.join(parts)})"

    def plot(self):
        """A bar chart of the objective's mean metric per method, original vs manipulated model
        (:func:`manipex.figures.evaluation_figure`): the metric's units on the y axis, 95 %
        bootstrap intervals of the mean over the images as error bars (from ``per_image``),
        accuracies in the title, legend outside the bars. Returns the
        :class:`~matplotlib.figure.Figure`, not saved."""
        return evaluation_figure(self)


def evaluate_manipulation(
    original: nn.Module,
    manipulated: nn.Module,
    data: Tuple[Tensor, Tensor],
    objective: Objective,
    methods: Sequence[str] = ("gradient", "grad_x_input", "integrated_gradients", "lrp", "occlusion"),
    *,
    method_options: Optional[Dict[str, Dict[str, Any]]] = None,
    batch_size: int = 256,
    output: Optional[Output] = None,
) -> ModelEvaluation:
    """Accuracy, output change and the objective's metric of every method, for both models.

    The metric (``objective.metric_name``) is averaged over ``data``; maps explain the class the
    original model predicts. ``output_change`` is the mean ``||softmax_new - softmax_orig||^2``.
    ``output``: what selects the logits of models that return more than a tensor, for both
    (as in :func:`manipex.explain`; None: found automatically).
    """
    import pandas as pd

    where = "evaluate_manipulation"
    x, y = check_labelled_data(data, where=where)
    check_call(original, x, where=f"{where}: original")
    check_call(manipulated, x, where=f"{where}: manipulated")
    if not isinstance(objective, Objective):
        raise TypeError(f"{where}: objective must be a manipex.objectives.Objective, got {type(objective).__name__}")
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not methods:
        raise TypeError(f"{where}: methods must be a non-empty sequence of method names, got {short(methods)}")
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(f"{where}: method_options must be None or a dict of method -> options")
    method_options = method_options or {}
    for method in methods:
        get_explainer(method, **method_options.get(method, {}))  # unknown names or options: before any work
    check_int(batch_size, where=where, name="batch_size", ge=1)
    original = logits_model(original, x, output, where=f"{where}: original")
    manipulated = logits_model(manipulated, x, output, where=f"{where}: manipulated")
    with torch.no_grad():  # evaluation only
        p_orig = torch.cat([forward(original, b, where=where).softmax(1) for b in x.split(batch_size)])
        p_new = torch.cat([forward(manipulated, b, where=where).softmax(1) for b in x.split(batch_size)])
    if p_new.shape != p_orig.shape:
        raise ValueError(f"{where}: the two models have different numbers of classes "
                         f"({p_orig.shape[1]} and {p_new.shape[1]})")
    check_target_range(y, p_orig.shape[1], where=where, what="label")
    target = p_orig.argmax(1)
    rows, per_image = {}, {}
    for method in methods:
        opts = method_options.get(method, {})
        scores = {"original": [], "manipulated": []}
        for xb, tb in zip(x.split(batch_size), target.split(batch_size)):
            def fn(inputs: Tensor, m: nn.Module = original, t: Tensor = tb) -> Tensor:
                return relevance(explain(m, inputs, method, t, **opts))

            r_orig = fn(xb)
            obj = copy.copy(objective).prepare(fn, xb, r_orig)
            scores["original"].append(obj.metric(r_orig))
            scores["manipulated"].append(obj.metric(fn(xb, manipulated)))
        values = {k: torch.cat(v).detach().double().cpu() for k, v in scores.items()}
        rows[method] = {k: v.mean().item() for k, v in values.items()}
        per_image[method] = pd.DataFrame({k: v.numpy() for k, v in values.items()})
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    table.attrs["metric"] = objective.metric_name
    table.attrs["direction"] = objective.direction
    table.attrs["n"] = int(x.shape[0])
    frame = pd.concat(per_image, names=["method", "image"])
    summary = {
        "accuracy_original": accuracy(original, x, y),
        "accuracy_manipulated": accuracy(manipulated, x, y),
        "output_change": (p_new - p_orig).pow(2).sum(1).mean().item(),
        "class_agreement": (p_new.argmax(1) == target).float().mean().item(),
    }
    return ModelEvaluation(table, summary, frame)
