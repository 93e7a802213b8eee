"""Where a map puts its mass: center of mass, region mass, and the distances between them.

Maps are checked as in :mod:`manipex.metrics.similarity` (floating tensors ``(N, ...)``,
non-empty, without NaN or Inf; pairs of the same shape; float16/bfloat16 computed, and
returned, in float32). Every function here is differentiable with respect to the maps.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._validation import as_compute, check_batch, check_finite, check_pair, check_real



def center_of_mass(r: Tensor, eps: float = 1e-12) -> Tensor:
    """Center of mass ``sum_p r_p p / sum_p r_p`` of non-negative maps ``(N, H, W)`` (or any
    ``(N, d1, ..., dk)``), as ``(N, k)`` coordinates in pixels (row, column), differentiable.

    Ghorbani et al. 2019 (center-of-mass attack); Pasliev 2020, Sec. 3.3.
    """
    r = as_compute(check_batch(r, where="center_of_mass", name="r"))
    eps = check_real(eps, where="center_of_mass", name="eps", gt=0)
    return _center_of_mass(r, eps)


def _center_of_mass(r: Tensor, eps: float) -> Tensor:
    total = r.flatten(1).sum(1) + eps
    coords = []
    for axis in range(1, r.dim()):
        pos = torch.arange(r.shape[axis], dtype=r.dtype, device=r.device)
        shape = [1] * r.dim()
        shape[axis] = -1
        coords.append((r * pos.reshape(shape)).flatten(1).sum(1) / total)
    return torch.stack(coords, 1)


def com_distance(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distance (pixels) between the centers of mass of two batches of maps of the
    same shape, sample by sample. Lower = more similar."""
    a, b = check_pair(a, b, where="com_distance")
    return (_center_of_mass(a, 1e-12) - _center_of_mass(b, 1e-12)).norm(dim=1)


def mass_in(r: Tensor, mask: Tensor) -> Tensor:
    """Share of each map's mass inside ``mask``: ``sum(r * mask) / sum(r)`` per sample.

    ``mask`` is a bool or 0/1 (or weight) tensor, either one per map (``r``'s shape) or one
    for all maps (``r.shape[1:]`` or ``(1, *r.shape[1:])``); no other broadcasting.
    """
    r = as_compute(check_batch(r, where="mass_in", name="r"))
    if not isinstance(mask, Tensor):
        raise TypeError(f"mass_in: mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.is_complex():
        raise TypeError(f"mass_in: mask must be bool, integer or real, got {mask.dtype}")
    if mask.shape not in (r.shape, r.shape[1:], (1, *r.shape[1:])):
        raise ValueError(
            f"mass_in: mask must have the maps' shape {tuple(r.shape)} or one map's shape "
            f"{tuple(r.shape[1:])}, got {tuple(mask.shape)}"
        )
    if mask.device != r.device:
        raise ValueError(f"mass_in: mask is on {mask.device} but r on {r.device}")
    if mask.is_floating_point():
        check_finite(mask, where="mass_in", name="mask")
    total = r.flatten(1).sum(1) + 1e-12
    return (r * mask.to(r.dtype)).flatten(1).sum(1) / total
