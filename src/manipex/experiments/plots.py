"""Figures of the experiments, in the papers' styles (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from torch import Tensor


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    _plt().close(fig)
    return path


def manipulation_grid(rows: Dict[str, Dict[str, Tensor]], path: Path) -> Path:
    """Dombrowski Fig. 2/3 layout: per method, original map, target map, manipulated map and
    the perturbation (amplified). ``rows``: method -> {"original", "target", "manipulated":
    (H, W) maps, "perturbation": (C, H, W)}."""
    plt = _plt()
    cols = ("original", "target", "manipulated", "perturbation")
    fig, axes = plt.subplots(len(rows), 4, figsize=(5.6, 1.45 * len(rows)), squeeze=False)
    for i, (method, maps) in enumerate(rows.items()):
        for j, key in enumerate(cols):
            ax = axes[i][j]
            m = maps[key].detach().cpu()
            if key == "perturbation":
                m = m.sum(0) if m.dim() == 3 else m
                lim = float(m.abs().max()) or 1.0
                ax.imshow(m, cmap="seismic", vmin=-lim, vmax=lim)
            else:
                ax.imshow(m, cmap="hot", vmin=0, vmax=float(m.flatten().quantile(0.99)) or None)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{key} map" if key != "perturbation" else key, fontsize=7)
            if j == 0:
                ax.set_ylabel(method.replace("_", " "), fontsize=7)
    return _save(fig, path)


def beta_curve(df, path: Path) -> Path:
    """Dombrowski Fig. 4: median PCC of β-smoothed manipulated maps with target and original."""
    plt = _plt()
    methods = sorted(df.method.unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 2.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        part = df[df.method == method]
        betas = [b for b in part.beta.unique() if b != "relu"]
        betas = sorted(float(b) for b in betas)
        for column, label in (("pcc_target", "h(x_adv) & h_t"), ("pcc_original", "h(x_adv) & h(x)")):
            med = [part[part.beta.astype(str) == str(b)][column].median() for b in betas]
            ax.plot(betas, med, marker="o", label=label)
            ax.axhline(part[part.beta == "relu"][column].median(), ls=":", lw=0.8, color=ax.lines[-1].get_color())
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("β (dotted: ReLU)")
        ax.set_ylabel("median PCC")
        ax.set_title(method.replace("_", " "), fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def box_plot(df, column: str, by: str, path: Path, ylabel: str) -> Path:
    """Distribution of ``column`` per ``by`` (Dombrowski Fig. 3, Rieger Table 1 as boxes)."""
    plt = _plt()
    groups = sorted(df[by].unique())
    fig, ax = plt.subplots(figsize=(1.2 * len(groups) + 1.5, 2.8))
    ax.boxplot([df[df[by] == g][column].values for g in groups])
    ax.set_xticks(range(1, len(groups) + 1), [g.replace("_", "\n") for g in groups], fontsize=7)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


def transfer_heatmap(matrix, path: Path, title: str) -> Path:
    """Rieger Fig. 2 as a matrix: rows attacked method, columns evaluated method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 * len(matrix.columns) + 2, 0.8 * len(matrix) + 1.2))
    im = ax.imshow(matrix.values, cmap="viridis")
    ax.set_xticks(range(len(matrix.columns)), [c.replace("_", "\n") for c in matrix.columns], fontsize=7)
    ax.set_yticks(range(len(matrix.index)), list(matrix.index), fontsize=7)
    for i in range(len(matrix.index)):
        for j in range(len(matrix.columns)):
            ax.text(j, i, f"{matrix.values[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xlabel("evaluated with")
    ax.set_ylabel("attacked")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)
