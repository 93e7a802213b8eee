"""Similarity of maps, batched: every function takes two tensors ``(N, ...)`` and returns ``(N,)``.

Each function states its direction. They accept raw maps or normalised relevance maps
(:func:`manipex.relevance`); the papers compare normalised ones.

Inputs are checked by :mod:`manipex._validation`: both maps floating-point tensors of the
same shape (never broadcast), non-empty, without NaN or Inf; float16/bfloat16 maps are
computed, and returned, in float32.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import as_compute, check_batch, check_int, check_pair, check_real



def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference per sample. Lower = more similar (0 for equal maps)."""
    a, b = check_pair(a, b, where="mse")
    return (a - b).pow(2).flatten(1).mean(1)


def pcc(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Pearson correlation of the flattened maps per sample, in [-1, 1]. Higher = more similar.

    As numpy.corrcoef; Dombrowski et al. 2019 (Fig. 3) and Rieger et al. 2020 (Table 1).
    """
    a, b = check_pair(a, b, where="pcc")
    eps = check_real(eps, where="pcc", name="eps", gt=0)
    return _pcc(a.flatten(1), b.flatten(1), eps)


def _pcc(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Pearson correlation of the rows of two checked ``(N, D)`` tensors."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity of the flattened maps per sample, in [-1, 1]. Higher = more similar."""
    a, b = check_pair(a, b, where="cosine")
    eps = check_real(eps, where="cosine", name="eps", gt=0)
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=eps)


def average_ranks(v: Tensor) -> Tensor:
    """Ranks 1..D of each row of ``v`` ``(N, D)``, ties given their average rank (as
    scipy.stats.rankdata); in ``v``'s dtype, float32 for float16/bfloat16 (whose integers are
    exact only up to 2048)."""
    v = as_compute(check_batch(v, where="average_ranks", name="v", min_dim=2, max_dim=2))
    return _average_ranks(v)


def _average_ranks(v: Tensor) -> Tensor:
    n, d = v.shape
    sorted_v, order = v.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_v, dtype=torch.bool)
    new_group[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = new_group.long().cumsum(1) - 1 + (torch.arange(n, device=v.device) * d)[:, None]
    positions = torch.arange(1, d + 1, dtype=v.dtype, device=v.device).expand(n, d)
    sums = torch.zeros(n * d, dtype=v.dtype, device=v.device).index_add_(0, group.flatten(), positions.flatten())
    counts = torch.zeros(n * d, dtype=v.dtype, device=v.device).index_add_(0, group.flatten(),
                                                                          torch.ones_like(positions).flatten())
    mean_rank = (sums / counts.clamp(min=1))[group]
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per sample, ties averaged (as scipy.stats.spearmanr).

    Higher = more similar. Tang et al. (ATEX) Tables 1-4. Not differentiable (ranks).
    """
    a, b = check_pair(a, b, where="spearman")
    return _pcc(_average_ranks(a.flatten(1)), _average_ranks(b.flatten(1)), 1e-12)


def topk_intersection(a: Tensor, b: Tensor, k: int) -> Tensor:
    """``|top_k(a) ∩ top_k(b)| / k`` per sample, in [0, 1]. Higher = more similar.

    The top-k features of each map by value (Ghorbani et al. 2019; Tang et al. use k = 50).
    Ties at the k-th value are broken by position.
    """
    a, b = check_pair(a, b, where="topk_intersection")
    d = a[0].numel()
    k = check_int(k, where="topk_intersection", name="k", ge=1, le=d)
    ia = a.flatten(1).topk(k, dim=1).indices
    ib = b.flatten(1).topk(k, dim=1).indices
    ma = torch.zeros(a.shape[0], d, dtype=torch.bool, device=a.device).scatter_(1, ia, True)
    mb = torch.zeros_like(ma).scatter_(1, ib, True)
    return (ma & mb).sum(1).to(a.dtype) / k


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> Tensor:
    """The normalised 1-D Gaussian ``exp(-x^2 / (2 sigma^2))`` on ``size`` points centred at 0."""
    size = check_int(size, where="gaussian_window", name="size", ge=1)
    sigma = check_real(sigma, where="gaussian_window", name="sigma", gt=0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"gaussian_window: dtype must be a floating torch.dtype, got {dtype!r}")
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
    a, b = check_pair(a, b, where="ssim", min_dim=3, max_dim=4)
    window = check_int(window, where="ssim", name="window", ge=1)
    sigma = check_real(sigma, where="ssim", name="sigma", gt=0)
    if data_range is not None:
        data_range = check_real(data_range, where="ssim", name="data_range", gt=0)
    if a.dim() == 3:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    if min(a.shape[-2:]) < window:
        raise ValueError(f"ssim: maps of size {tuple(a.shape[-2:])} are smaller than the {window}x{window} window")
    n, c = a.shape[:2]
    if data_range is None:
        both = torch.cat([a.flatten(1), b.flatten(1)], 1)
        rng = (both.amax(1) - both.amin(1)).clamp(min=1e-12).reshape(n, 1, 1, 1)
    else:
        rng = torch.as_tensor(data_range, dtype=a.dtype, device=a.device)
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
