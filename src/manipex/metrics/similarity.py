"""Similarity of maps, batched: every function takes two tensors ``(N, ...)`` and returns ``(N,)``.

Each function states its direction. They accept raw maps or normalised relevance maps
(:func:`manipex.relevance`); the papers compare normalised ones.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair(a: Tensor, b: Tensor, name: str) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"{name}: both maps must be torch tensors")
    if a.shape != b.shape:
        raise ValueError(f"{name}: maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2 or a.shape[0] == 0:
        raise ValueError(f"{name}: maps must be a non-empty batch (N, ...), got shape {tuple(a.shape)}")


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference per sample. Lower = more similar (0 for equal maps)."""
    _pair(a, b, "mse")
    return (a - b).pow(2).flatten(1).mean(1)


def pcc(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Pearson correlation of the flattened maps per sample, in [-1, 1]. Higher = more similar.

    As numpy.corrcoef; Dombrowski et al. 2019 (Fig. 3) and Rieger et al. 2020 (Table 1).
    """
    _pair(a, b, "pcc")
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity of the flattened maps per sample, in [-1, 1]. Higher = more similar."""
    _pair(a, b, "cosine")
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=eps)


def average_ranks(v: Tensor) -> Tensor:
    """Ranks 1..D of each row, ties given their average rank (as scipy.stats.rankdata)."""
    n, d = v.shape
    sorted_v, order = v.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_v, dtype=torch.bool)
    new_group[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = new_group.long().cumsum(1) - 1 + (torch.arange(n, device=v.device) * d)[:, None]
    positions = torch.arange(1, d + 1, dtype=v.dtype, device=v.device).expand(n, d)
    sums = torch.zeros(n * d, dtype=v.dtype, device=v.device).index_add_(0, group.flatten(), positions.flatten())
    counts = torch.zeros(n * d, dtype=v.dtype, device=v.device).index_add_(0, group.flatten(), torch.ones_like(positions).flatten())
    mean_rank = (sums / counts.clamp(min=1))[group]
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per sample, ties averaged (as scipy.stats.spearmanr).

    Higher = more similar. Tang et al. (ATEX) Tables 1-4. Not differentiable (ranks).
    """
    _pair(a, b, "spearman")
    return pcc(average_ranks(a.flatten(1)), average_ranks(b.flatten(1)))


def topk_intersection(a: Tensor, b: Tensor, k: int) -> Tensor:
    """``|top_k(a) ∩ top_k(b)| / k`` per sample, in [0, 1]. Higher = more similar.

    The top-k features of each map by value (Ghorbani et al. 2019; Tang et al. use k = 50).
    Ties at the k-th value are broken by position.
    """
    _pair(a, b, "topk_intersection")
    d = a[0].numel()
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d:
        raise ValueError(f"topk_intersection: k must be an int in [1, {d}], got {k!r}")
    ia = a.flatten(1).topk(k, dim=1).indices
    ib = b.flatten(1).topk(k, dim=1).indices
    ma = torch.zeros(a.shape[0], d, dtype=torch.bool, device=a.device).scatter_(1, ia, True)
    mb = torch.zeros_like(ma).scatter_(1, ib, True)
    return (ma & mb).sum(1).to(a.dtype if a.is_floating_point() else torch.float32) / k


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def ssim(
    a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5, data_range: Optional[float] = None
) -> Tensor:
    """Structural similarity per sample (Wang et al. 2004), in [-1, 1]. Higher = more similar.

    Gaussian window ``window x window`` with ``sigma`` (11, 1.5 as the papers' code), constants
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, population (co)variances, mean over the positions
    where the window fits (as scikit-image's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)`` and pytorch-msssim). Maps are ``(N, H, W)`` or
    ``(N, C, H, W)`` (mean over channels). ``L = data_range``; by default, per sample,
    ``max - min`` over both maps.
    """
    _pair(a, b, "ssim")
    if a.dim() == 3:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    if a.dim() != 4:
        raise ValueError(f"ssim: maps must be (N, H, W) or (N, C, H, W), got {tuple(a.shape)}")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"ssim: maps of size {tuple(a.shape[-2:])} are smaller than the {window}x{window} window")
    n, c = a.shape[:2]
    if data_range is None:
        both = torch.cat([a.flatten(1), b.flatten(1)], 1)
        rng = (both.amax(1) - both.amin(1)).clamp(min=1e-12).reshape(n, 1, 1, 1)
    else:
        rng = torch.as_tensor(float(data_range), dtype=a.dtype, device=a.device)
    g = gaussian_window(window, sigma, a.dtype).to(a.device)
    kernel_h = g.reshape(1, 1, -1, 1).expand(c, 1, -1, 1)
    kernel_w = g.reshape(1, 1, 1, -1).expand(c, 1, 1, -1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kernel_h, groups=c), kernel_w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
