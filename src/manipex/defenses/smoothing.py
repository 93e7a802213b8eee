"""β-smoothing (Dombrowski et al. 2019, Sec. 4) evaluated against the targeted input attack.

β-smoothing computes any explanation on the model with its ReLUs replaced by Softplus(β)
(``explain(..., softplus_beta=β)``). :func:`beta_sweep` reproduces Dombrowski Fig. 4: one
targeted attack on the unsmoothed map, then for each β the PCC of the β-smoothed map of the
manipulated input with the target map and with the original map.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from torch import Tensor, nn

from .._validation import check_call, check_input, check_real, predicted_target, short
from ..attacks import manipulate_input
from ..explainers import explain, relevance
from ..metrics import pcc
from ..objectives import TargetImage


def beta_sweep(
    model: nn.Module,
    x: Tensor,
    x_target: Tensor,
    method: str = "gradient",
    betas: Sequence[Optional[float]] = (None, 10.0, 3.0, 1.0),
    *,
    method_options: Optional[Dict[str, Any]] = None,
    **attack_options: Any,
):
    """PCC of β-smoothed maps of the manipulated inputs with the target and the original maps.

    Args:
        model: the ReLU model (eval mode).
        x, x_target: inputs and the inputs whose maps are the targets (Dombrowski's setting).
        method: the explanation method attacked and evaluated.
        betas: β values; None is the unsmoothed ReLU map.
        attack_options: passed to :func:`manipex.attacks.manipulate_input` (e.g. eps, steps).

    Returns:
        A pandas DataFrame indexed by β (``"relu"`` for None) with the mean PCC of
        ``h_β(x_adv)`` with ``h_β(x_target)`` (``pcc_target``) and with ``h_β(x)``
        (``pcc_original``), and the class agreement of the attack.
    """
    import pandas as pd

    where = "beta_sweep"
    check_call(model, x, where=where)
    check_input(x_target, where=where, name="x_target")
    if x_target.shape != x.shape:
        raise ValueError(f"{where}: x_target must have x's shape {tuple(x.shape)}, got {tuple(x_target.shape)}")
    if isinstance(betas, (int, float)) or not isinstance(betas, (list, tuple)) or not betas:
        raise TypeError(f"{where}: betas must be a non-empty sequence of softplus betas or None, got {short(betas)}")
    for beta in betas:
        check_real(beta, where=where, name="each of betas", gt=0, allow_none=True)
    opts = dict(method_options or {})
    result = manipulate_input(model, x, TargetImage(x_target), method, method_options=opts, **attack_options)
    target = predicted_target(model, x, None, where=where)
    rows = {}
    for beta in betas:
        def heat(inputs: Tensor) -> Tensor:
            return relevance(explain(model, inputs, method, target, softplus_beta=beta, **opts))

        adv = heat(result.x_adv)
        rows["relu" if beta is None else beta] = {
            "pcc_target": pcc(adv, heat(x_target)).mean().item(),
            "pcc_original": pcc(adv, heat(x)).mean().item(),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "beta"
    table.attrs["class_kept"] = result.class_kept.float().mean().item()
    return table
