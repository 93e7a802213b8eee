"""Transfer of input attacks between explanation methods (Rieger et al. 2020, Fig. 2)."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Sequence

from torch import Tensor, nn

from .._validation import check_call, check_target, predicted_target, short
from ..explainers import explain, get_explainer, relevance
from ..models.interfaces import Output, logits_model
from ..objectives import Objective
from ..attacks.input import manipulate_input


def transfer_matrix(
    model: nn.Module,
    x: Tensor,
    objective: Objective,
    methods: Sequence[str],
    *,
    eval_methods: Optional[Sequence[str]] = None,
    method_options: Optional[Dict[str, Dict[str, Any]]] = None,
    output: Optional[Output] = None,
    **attack_options: Any,
):
    """Attack with each method A, measure the objective's improvement with each method B.

    Returns a pandas DataFrame (rows: attacked method, columns: evaluated method) of the mean
    improvement of the objective's metric in the attacker's favour (e.g. the rise of the PCC
    with the target map). The objective is prepared anew for every evaluated method, so a
    :class:`~manipex.objectives.TargetImage` uses method B's map of the target image.
    ``output``: what selects the logits of a model that returns more than a tensor (as in
    :func:`manipex.explain`; None: found automatically).
    """
    import pandas as pd

    where = "transfer_matrix"
    check_call(model, x, where=where)
    for name, names in (("methods", methods), ("eval_methods", eval_methods)):
        if names is None and name == "eval_methods":
            continue
        if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
            raise TypeError(f"{where}: {name} must be a non-empty sequence of method names, got {short(names)}")
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(f"{where}: method_options must be None or a dict of method -> options")
    eval_methods = list(eval_methods or methods)
    method_options = method_options or {}
    for method in list(methods) + eval_methods:
        get_explainer(method, **method_options.get(method, {}))  # unknown names or options: before any work
    target = attack_options.pop("target", None)
    model = logits_model(model, x, output, where=where)  # one wrapper for every attack and map
    t = predicted_target(model, x, check_target(target, x.shape[0], where=where), where=where)
    rows = {}
    for a in methods:
        result = manipulate_input(model, x, copy.deepcopy(objective), a, target=target,
                                  method_options=method_options.get(a), **attack_options)
        row = {}
        for b in eval_methods:
            opts = method_options.get(b, {})

            def fn(inputs: Tensor, b: str = b, opts: Dict = opts) -> Tensor:
                return relevance(explain(model, inputs, b, t, **opts))

            before, after = fn(x), fn(result.x_adv)
            obj = copy.deepcopy(objective).prepare(fn, x, before)
            row[b] = obj.direction.gain(obj.metric(after), obj.metric(before)).mean().item()
        rows[a] = row
    return pd.DataFrame.from_dict(rows, orient="index")[eval_methods]


__all__ = ["transfer_matrix"]
