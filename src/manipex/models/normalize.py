"""The input normalisation a model's weights expect, as a layer in front of the model.

Attacks and defenses work in **pixel space** (the data's own range, [0, 1] for manipex's image
loaders), so that a budget ε means the same on every dataset (8/255 is 8/255 on MNIST and on
ImageNet). A model trained on normalised inputs ``(x - mean) / std`` sees them through
:class:`Normalize`, and :func:`with_normalization` puts one in front of it.

:class:`Normalize` is an eval-mode ``BatchNorm2d`` without affine parameters whose running
statistics are ``mean`` and ``std**2`` (``eps = 0``), so that every propagation rule treats it as
what it is, a per-channel affine map: LRP passes relevance through it unchanged, gradient-type
methods take its Jacobian. LRP's zB rule on the first convolution maps its pixel bounds
``low``/``high`` through it (:meth:`manipex.explainers.lrp.LRP.bounds`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.BatchNorm2d):
    """``(x - mean) / std`` per channel of (N, C, H, W) images; has no trainable parameters and
    never updates its statistics, also in train mode."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.shape != std_t.shape or len(mean_t) == 0:
            raise ValueError(f"Normalize: mean and std must be equally long lists of per-channel values, "
                             f"got {list(mean_t.shape)} and {list(std_t.shape)}")
        if not bool((std_t > 0).all()) or not bool(torch.isfinite(mean_t).all()):
            raise ValueError(f"Normalize: std must be positive and mean finite, got mean={mean}, std={std}")
        super().__init__(len(mean_t), eps=0.0, affine=False, track_running_stats=True)
        self.running_mean.copy_(mean_t)
        self.running_var.copy_(std_t.pow(2))

    @property
    def mean(self) -> Tensor:
        return self.running_mean

    @property
    def std(self) -> Tensor:
        return self.running_var.sqrt()

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"Normalize: expects (N, {self.num_features}, H, W) images, got shape {tuple(x.shape)}")
        shape = (1, -1, 1, 1)
        return (x - self.running_mean.view(shape)) * torch.rsqrt(self.running_var).view(shape)

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.tolist()]}, std={[round(v, 4) for v in self.std.tolist()]}"


def with_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """``nn.Sequential(Normalize(mean, std), model)`` on the model's device and dtype, in its mode:
    a model for pixel-space inputs. ``model`` itself is not changed."""
    norm = Normalize(mean, std)
    param = next(iter(model.parameters()), None)
    if param is not None:
        norm = norm.to(device=param.device, dtype=param.dtype)
    wrapped = nn.Sequential(norm, model)
    wrapped.train(model.training)
    return wrapped


def input_normalization(model: nn.Module):
    """The :class:`Normalize` that reads ``model``'s input (the first module of a Sequential), or None."""
    if isinstance(model, nn.Sequential) and len(model) and isinstance(model[0], Normalize):
        return model[0]
    return None
