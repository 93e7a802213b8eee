"""Shared pieces of the experiments: the default model and data, and per-image attack rows."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..attacks import manipulate_input
from ..explainers import explain, relevance
from ..metrics import image_mse, linf, mse, pcc, ssim, topk_intersection
from ..objectives import TargetImage


#: The defenses every experiment and the audit share: how the defender computes the map it
#: shows, and how an adaptive attacker (who knows the defense) optimises it (see :func:`defended`).
DEFENSES = ("none", "beta_smoothing", "smoothgrad", "agg_mean")


def defended(method: str, defense: str, config: Dict[str, Any]):
    """``(method, options, attack options)`` of the map that ``defense`` shows for ``method``.

    * ``beta_smoothing``: the map on the Softplus(``softplus_beta``) model (Dombrowski Sec. 4);
      the attacker attacks exactly that smooth map (no further surrogate).
    * ``smoothgrad``: SmoothGrad of the method, ``smoothgrad_samples`` samples, σ = 0.1
      (Smilkov 2017; Dombrowski Thm 2); attacked through its samples.
    * ``agg_mean``: the mean of the method with gradient, guided backprop and LRP (Rieger 2020).
    """
    base = {"steps": config["ig_steps"]} if method == "integrated_gradients" else {}
    if defense == "none":
        return method, base, {}
    if defense == "beta_smoothing":
        return method, {**base, "softplus_beta": config["softplus_beta"]}, {"beta": None}
    if defense == "smoothgrad":
        return "smoothgrad", {"base": method, "base_options": base, "samples": config["smoothgrad_samples"],
                              "sigma": 0.1, "seed": config["seed"]}, {}
    if defense == "agg_mean":
        members = [method] + [m for m in ("gradient", "guided_backprop", "lrp") if m != method]
        return "agg_mean", {"methods": [(m, {"steps": config["ig_steps"]} if m == "integrated_gradients" else {})
                                        for m in members]}, {}
    raise ValueError(f"unknown defense {defense!r}; available: {', '.join(DEFENSES)}")


def default_setup(device: str) -> Dict[str, Any]:
    """The default MNIST-5k model and its test split, on ``device``."""
    from .. import data, models

    model = models.load_default("mnist", progress=False).to(device)
    x, y = data.load("mnist5k", split="test")
    return {"model": model, "x": x.to(device), "y": y.to(device)}


def targeted_rows(
    model: nn.Module,
    x: Tensor,
    x_target: Tensor,
    method: str,
    options: Optional[Dict[str, Any]] = None,
    *,
    first_index: int,
    extra: Optional[Dict[str, Any]] = None,
    **attack: Any,
) -> List[Dict[str, Any]]:
    """Targeted attack (Dombrowski's setting: the target is another image's map), one row per
    image with the papers' map metrics (target vs manipulated, before and after) and image
    metrics."""
    options = dict(options or {})
    res = manipulate_input(model, x, TargetImage(x_target), method, method_options=options, progress=False, **attack)
    t = model(x).argmax(1)
    r_target = relevance(explain(model, x_target, method, t, **options))
    before, after = res.maps_before, res.maps_after
    k = max(1, int(0.1 * before[0].numel()))  # Rieger's top 10 %
    cols = {
        "pcc_before": pcc(r_target, before), "pcc_after": pcc(r_target, after),
        "mse_before": mse(r_target, before), "mse_after": mse(r_target, after),
        "ssim_before": ssim(r_target, before), "ssim_after": ssim(r_target, after),
        "top10_before": topk_intersection(r_target, before, k), "top10_after": topk_intersection(r_target, after, k),
        "pcc_original": pcc(before, after),
        "image_mse": image_mse(x, res.x_adv), "linf": linf(x, res.x_adv),
        "class_kept": res.class_kept.float(),
    }
    rows = []
    for i in range(x.shape[0]):
        row = {"image": first_index + i, "method": method, **(extra or {})}
        row.update({k2: float(v[i]) for k2, v in cols.items()})
        rows.append(row)
    return rows


def seeded(seed: int) -> None:
    torch.manual_seed(seed)


def save_maps(path: Path, tensors: Dict[str, Tensor], n: int) -> None:
    """The first ``n`` of each tensor, as float32 safetensors, written atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v[:n].detach().cpu().float().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
