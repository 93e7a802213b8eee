"""How large a perturbation is and how much it changed the model's output; all ``(N,)``."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def l2(x: Tensor, x_adv: Tensor) -> Tensor:
    """``||x_adv - x||_2`` per sample. Lower = less perturbed."""
    return (x_adv - x).flatten(1).norm(dim=1)


def linf(x: Tensor, x_adv: Tensor) -> Tensor:
    """``||x_adv - x||_inf`` per sample. Lower = less perturbed."""
    return (x_adv - x).flatten(1).abs().amax(1)


def image_mse(x: Tensor, x_adv: Tensor) -> Tensor:
    """Mean squared difference of the images (Dombrowski Fig. 3, "Images"). Lower = closer."""
    return (x_adv - x).pow(2).flatten(1).mean(1)


def output_change(model: nn.Module, x: Tensor, x_adv: Tensor, *, space: str = "probabilities") -> Tensor:
    """``||g(x_adv) - g(x)||_2`` per sample, of the softmax probabilities (default) or logits.
    Lower = output kept."""
    if space not in ("probabilities", "logits"):
        raise ValueError(f"output_change: space must be 'probabilities' or 'logits', got {space!r}")
    with torch.no_grad():
        a, b = model(x), model(x_adv)
    if space == "probabilities":
        a, b = a.softmax(1), b.softmax(1)
    return (b - a).norm(dim=1)


def class_agreement(model: nn.Module, x: Tensor, x_adv: Tensor) -> Tensor:
    """1.0 where the predicted class of ``x_adv`` equals that of ``x``, else 0.0; ``(N,)``."""
    with torch.no_grad():
        return (model(x).argmax(1) == model(x_adv).argmax(1)).float()
