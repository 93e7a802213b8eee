"""Figures of explanation maps, in the layout of the papers (images as rows, methods as columns).

Every figure manipex draws (here and in :mod:`manipex.experiments.plots`) is a
:class:`matplotlib.figure.Figure` made and saved through matplotlib's object API: no pyplot, no
``matplotlib.use``, so a notebook's backend, its open figures and pyplot's current figure are
left as they were. The file format follows the path's suffix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: Tuple[float, float], squeeze: bool = True, **kwargs):
    """``(figure, axes)`` as ``pyplot.subplots`` returns them, but on a standalone
    :class:`~matplotlib.figure.Figure` that pyplot does not know of (nothing global changes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)


def _save(fig, path, *, dpi: int = 150, tight: bool = True, **layout) -> Path:
    """Lay out (``tight_layout(**layout)``) and write ``fig`` to ``path`` (parent folders created)."""
    if tight:
        fig.tight_layout(**layout)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def map_grid(
    images: Tensor,
    heatmaps: Dict[str, Tensor],
    path: Path,
    *,
    titles: Sequence[str] = (),
    dpi: int = 150,
) -> Path:
    """Save a grid: one row per image, the image then one column per method's relevance map.

    Args:
        images: ``(N, C, H, W)`` inputs in [0, 1].
        heatmaps: method name -> normalised relevance maps ``(N, H, W)`` (:func:`manipex.relevance`).
        path: where to write (``.png``, ``.pdf`` or ``.svg``); parent folders are created.
        titles: optional per-row labels (e.g. the predicted class).
        dpi: resolution of raster formats.

    Returns:
        ``path``. Drawn without pyplot: the caller's matplotlib backend and figures are untouched.
    """
    n, cols = images.shape[0], 1 + len(heatmaps)
    fig, axes = _subplots(n, cols, figsize=(1.35 * cols, 1.45 * n), squeeze=False)
    for i in range(n):
        img = images[i].detach().cpu()
        ax = axes[i][0]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_ylabel(titles[i] if i < len(titles) else "", fontsize=7)
        if i == 0:
            ax.set_title("input", fontsize=7)
        for j, (name, maps) in enumerate(heatmaps.items(), start=1):
            m = maps[i].detach().cpu()
            ax = axes[i][j]
            # clip at the 99th percentile, as Rieger et al. do, so single pixels do not dominate
            vmax = torch.quantile(m.flatten().double(), 0.99).item() or float(m.max()) or 1.0
            ax.imshow(m.numpy(), cmap="hot", vmin=0, vmax=vmax)
            if i == 0:
                ax.set_title(name.replace("_", " "), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path, dpi=dpi, pad=0.3)
