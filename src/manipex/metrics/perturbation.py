"""How large a perturbation is and how much it changed the model's output; all ``(N,)``.

``x`` and ``x_adv`` are checked by :mod:`manipex._validation`: floating tensors of the same
shape (never broadcast), non-empty, without NaN or Inf; float16/bfloat16 are computed, and
returned, in float32. Functions that take a model require it in eval mode and leave it as it
was; they run it without building a graph.
"""
from __future__ import annotations

from torch import Tensor, nn

from .._validation import check_pair, model_outputs



def l2(x: Tensor, x_adv: Tensor) -> Tensor:
    """``||x_adv - x||_2`` per sample. Lower = less perturbed."""
    x, x_adv = check_pair(x, x_adv, where="l2", names=("x", "x_adv"))
    return (x_adv - x).flatten(1).norm(dim=1)


def linf(x: Tensor, x_adv: Tensor) -> Tensor:
    """``||x_adv - x||_inf`` per sample. Lower = less perturbed."""
    x, x_adv = check_pair(x, x_adv, where="linf", names=("x", "x_adv"))
    return (x_adv - x).flatten(1).abs().amax(1)


def image_mse(x: Tensor, x_adv: Tensor) -> Tensor:
    """Mean squared difference of the images (Dombrowski Fig. 3, "Images"). Lower = closer."""
    x, x_adv = check_pair(x, x_adv, where="image_mse", names=("x", "x_adv"))
    return (x_adv - x).pow(2).flatten(1).mean(1)


def output_change(model: nn.Module, x: Tensor, x_adv: Tensor, *, space: str = "probabilities") -> Tensor:
    """``||g(x_adv) - g(x)||_2`` per sample, of the softmax probabilities (default) or logits.
    Lower = output kept.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ``x``/``x_adv`` are not floating tensors,
            or not of the dtype of the model's parameters.
        ValueError: the model is in training mode; ``x``/``x_adv`` differ in shape, are empty
            or hold NaN/Inf; the model does not return finite logits ``(N, K)``; bad ``space``.
    """
    if space not in ("probabilities", "logits"):
        raise ValueError(f"output_change: space must be 'probabilities' or 'logits', got {space!r}")
    a, b = model_outputs(model, x, x_adv, where="output_change")
    if space == "probabilities":
        a, b = a.softmax(1), b.softmax(1)
    return (b - a).norm(dim=1)


def class_agreement(model: nn.Module, x: Tensor, x_adv: Tensor) -> Tensor:
    """1.0 where the predicted class of ``x_adv`` equals that of ``x``, else 0.0; ``(N,)``
    float32. Checks as :func:`output_change`."""
    a, b = model_outputs(model, x, x_adv, where="class_agreement")
    return (a.argmax(1) == b.argmax(1)).float()
