"""Where a map puts its mass: center of mass, region mass, and the distances between them."""
from __future__ import annotations

import torch
from torch import Tensor


def center_of_mass(r: Tensor, eps: float = 1e-12) -> Tensor:
    """Center of mass ``sum_p r_p p / sum_p r_p`` of non-negative maps ``(N, H, W)`` (or any
    ``(N, d1, ..., dk)``), as ``(N, k)`` coordinates in pixels (row, column), differentiable.

    Ghorbani et al. 2019 (center-of-mass attack); Pasliev 2020, Sec. 3.3.
    """
    if r.dim() < 2:
        raise ValueError(f"center_of_mass: maps must be (N, ...), got shape {tuple(r.shape)}")
    total = r.flatten(1).sum(1) + eps
    coords = []
    for axis in range(1, r.dim()):
        pos = torch.arange(r.shape[axis], dtype=r.dtype, device=r.device)
        shape = [1] * r.dim()
        shape[axis] = -1
        coords.append((r * pos.reshape(shape)).flatten(1).sum(1) / total)
    return torch.stack(coords, 1)


def com_distance(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distance (pixels) between the centers of mass of two batches of maps.
    Lower = more similar."""
    return (center_of_mass(a) - center_of_mass(b)).norm(dim=1)


def mass_in(r: Tensor, mask: Tensor) -> Tensor:
    """Share of each map's mass inside ``mask`` (a bool/0-1 tensor broadcastable to ``r``)."""
    total = r.flatten(1).sum(1) + 1e-12
    return (r * mask.to(r.dtype)).flatten(1).sum(1) / total
