"""Input checks shared by every public entry point.

Every check raises ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, bad
value) with a message that names the argument, and never changes its arguments.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

TargetLike = Union[None, int, Tensor]


def check_model(model: object, *, where: str) -> nn.Module:
    """Refuse anything that is not an ``nn.Module`` in eval mode."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"{where}: the model is in training mode (module {training[0]!r}); explanations "
            "of a model with dropout or batch statistics are random. Call model.eval() first."
        )
    return model


def check_input(x: object, *, where: str, name: str = "x", min_dim: int = 2) -> Tensor:
    """Refuse non-tensors, non-float dtypes, empty batches, low rank and non-finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{where}: {name} must have a floating dtype, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{where}: {name} must be a batch of shape (N, ...) with at least {min_dim} "
            f"dimensions, got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{where}: {name} is an empty batch (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{where}: {name} contains {bad} NaN or Inf values")
    return x


def check_target(target: TargetLike, n: int, *, where: str) -> Optional[Tensor]:
    """Turn ``target`` into ``None`` (predicted class) or a LongTensor of ``n`` class indices.

    The range is checked against the model's output by :func:`check_target_range`.
    """
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError(f"{where}: target must be None, an int or a tensor of class indices, got bool")
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{where}: target must hold integer class indices, got dtype {target.dtype}")
        if target.dim() == 0:
            return target.reshape(1).expand(n).long()
        if target.dim() != 1 or target.shape[0] != n:
            raise ValueError(
                f"{where}: target must have shape ({n},) to match the batch, got {tuple(target.shape)}"
            )
        return target.long()
    raise TypeError(
        f"{where}: target must be None, an int or a tensor of class indices, got {type(target).__name__}"
    )


def check_output(out: Tensor, n: int, *, where: str) -> Tensor:
    """The model must map a batch of ``n`` inputs to logits of shape ``(n, K)``."""
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{where}: the model must return logits of shape (N, classes) = ({n}, K), got {shape}")
    return out


def check_target_range(target: Tensor, num_classes: int, *, where: str) -> None:
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)][0].item()
        raise ValueError(f"{where}: target {bad} is out of range for a model with {num_classes} classes")


def select_target(out: Tensor, target: Optional[Tensor], *, where: str) -> Tensor:
    """Class indices for logits ``out``: ``target`` checked against ``out``, or the arg-max."""
    check_output(out, out.shape[0], where=where)
    if target is None:
        return out.argmax(dim=1)
    target = target.to(out.device)
    check_target_range(target, out.shape[1], where=where)
    return target


def predicted_target(model: nn.Module, x: Tensor, target: Optional[Tensor], *, where: str) -> Tensor:
    """Resolve ``target`` at ``x`` with one forward pass that builds no graph.

    Used by methods that evaluate the model elsewhere than at ``x`` (integrated gradients,
    SmoothGrad, occlusion) but explain the class of ``x``. Class indices carry no gradient,
    so skipping the graph here changes no derivative.
    """
    with torch.no_grad():
        out = check_output(model(x), x.shape[0], where=where)
    return select_target(out, target, where=where)
