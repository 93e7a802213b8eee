"""Figures of the experiments, in the papers' styles (matplotlib, PNG).

Drawn with matplotlib's object API (:class:`~matplotlib.figure.Figure`), never pyplot: the
caller's backend and open figures are left as they were (see :mod:`manipex.figures`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from torch import Tensor

from ..figures import _save, _subplots


def grouped_bars(ax, table, *, width: float = 0.8) -> None:
    """A grouped bar chart of a pandas DataFrame on ``ax``, without pyplot: one group per row
    (tick labelled with the index, x label the index's name), one bar per column (legend
    labelled with the column, titled with the columns' name), each group ``width`` wide. The
    bars sit where ``table.plot.bar(ax=ax, width=width)`` puts them; tick labels are not
    rotated (callers set the rotation)."""
    k = max(1, len(table.columns))
    w = width / k
    for j, column in enumerate(table.columns):
        offsets = [i - width / 2 + w * (j + 0.5) for i in range(len(table.index))]
        ax.bar(offsets, table[column].to_numpy(dtype=float), width=w, label=str(column))
    ax.set_xticks(range(len(table.index)), [str(i) for i in table.index])
    ax.set_xlim(-0.5, len(table.index) - 0.5)
    if table.index.name is not None:
        ax.set_xlabel(str(table.index.name))
    if len(table.columns):
        ax.legend(title=None if table.columns.name is None else str(table.columns.name))


def manipulation_grid(rows: Dict[str, Dict[str, Tensor]], path: Path) -> Path:
    """Dombrowski Fig. 2/3 layout: per method, original map, target map, manipulated map and
    the perturbation (amplified). ``rows``: method -> {"original", "target", "manipulated":
    (H, W) maps, "perturbation": (C, H, W)}."""
    cols = ("original", "target", "manipulated", "perturbation")
    fig, axes = _subplots(len(rows), 4, figsize=(5.6, 1.45 * len(rows)), squeeze=False)
    for i, (method, maps) in enumerate(rows.items()):
        for j, key in enumerate(cols):
            ax = axes[i][j]
            m = maps[key].detach().cpu()
            if key == "perturbation":
                m = m.sum(0) if m.dim() == 3 else m
                lim = float(m.abs().max()) or 1.0
                ax.imshow(m.numpy(), cmap="seismic", vmin=-lim, vmax=lim)
            else:
                ax.imshow(m.numpy(), cmap="hot", vmin=0, vmax=float(m.flatten().quantile(0.99)) or None)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{key} map" if key != "perturbation" else key, fontsize=7)
            if j == 0:
                ax.set_ylabel(method.replace("_", " "), fontsize=7)
    return _save(fig, path)


def beta_curve(df, path: Path) -> Path:
    """Dombrowski Fig. 4: median PCC of β-smoothed manipulated maps with target and original."""
    methods = sorted(df.method.unique())
    fig, axes = _subplots(1, len(methods), figsize=(3.2 * len(methods), 2.6), squeeze=False)
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
    groups = sorted(df[by].unique())
    fig, ax = _subplots(figsize=(1.2 * len(groups) + 1.5, 2.8))
    ax.boxplot([df[df[by] == g][column].values for g in groups])
    ax.set_xticks(range(1, len(groups) + 1), [g.replace("_", "\n") for g in groups], fontsize=7)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


def transfer_heatmap(matrix, path: Path, title: str) -> Path:
    """Rieger Fig. 2 as a matrix: rows attacked method, columns evaluated method."""
    fig, ax = _subplots(figsize=(1.0 * len(matrix.columns) + 2, 0.8 * len(matrix) + 1.2))
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


SCATTER_METRICS = (("top10_after", "top-10 % intersection"), ("pcc_after", "PCC"), ("mse_after", "MSE"))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _paired(df, by: str, x_key: str, y_key: str, column: str):
    """Per image, ``column`` of the rows with ``by == x_key`` against those with ``by == y_key``
    (images that have both), as two aligned numpy arrays."""
    wide = df.pivot_table(index="image", columns=by, values=column, aggfunc="mean")
    if x_key not in wide.columns or y_key not in wide.columns:
        raise ValueError(f"no rows with {by} = {x_key!r} and {y_key!r}")
    both = wide[[x_key, y_key]].dropna()
    return both[x_key].to_numpy(), both[y_key].to_numpy()


def _scatter_points(df, attacked: str):
    """The points of :func:`transfer_scatter`: metric column -> evaluated method -> ``(x, y)``,
    x the attacked method's own similarity to its target, y another evaluated method's on the
    same images (rows ``attacked``, ``evaluated``, ``image`` and the metric columns)."""
    part = df[df.attacked == attacked]
    others = [m for m in sorted(part.evaluated.unique()) if m != attacked]
    return {col: {other: _paired(part, "evaluated", attacked, other, col) for other in others}
            for col, _ in SCATTER_METRICS}


def _scatter_panels(points, path: Path, xlabel: str, ylabel: str, title: str, legend: bool = True) -> Path:
    """One row of three panels (top-10 %, PCC, MSE), one marker per series, dashed y = x."""
    import math

    fig, axes = _subplots(1, len(SCATTER_METRICS), figsize=(8.4, 2.8), squeeze=False)
    for ax, (col, label) in zip(axes[0], SCATTER_METRICS):
        values = [float(v) for x, y in points[col].values() for v in list(x) + list(y)]
        scale = 1.0  # MSE: plotted in units of a power of ten, named in the title
        if col == "mse_after" and values and max(map(abs, values)) > 0:
            scale = 10.0 ** math.floor(math.log10(max(map(abs, values))))
            label = f"{label} (×{scale:.0e})" if scale != 1.0 else label
        for j, (series, (x, y)) in enumerate(points[col].items()):
            ax.scatter(x / scale, y / scale, s=10, marker=_MARKERS[j % len(_MARKERS)], alpha=0.8,
                       label=series.replace("_", " "))
        if values:
            lo, hi = min(values) / scale, max(values) / scale
            pad = 0.05 * (hi - lo) or 0.05 * (abs(hi) or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", lw=0.8, color="grey")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
    if legend:
        axes[0][0].legend(fontsize=6, title="y:", title_fontsize=6)
    fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def transfer_scatter(transfer_df, attacked: str, path: Path) -> Path:
    """Rieger Fig. 2: per image, the similarity to the target of the attacked method's map of
    x_adv (x) against another method's map of the same x_adv (y), one panel per metric. Below
    the diagonal for top-k and PCC (above for MSE): the attack transfers poorly."""
    return _scatter_panels(
        _scatter_points(transfer_df, attacked), path,
        f"{attacked.replace('_', ' ')} (attacked)\nsimilarity to target",
        "other method: similarity to target",
        f"attack on {attacked.replace('_', ' ')} evaluated with other methods (dashed: y = x)")


def robustness_scatter(table1_df, x_method: str, y_method: str, path: Path) -> Path:
    """Rieger Fig. 5: per image, the similarity to the target after attacking ``x_method``
    (x) against after attacking ``y_method`` (y), each attacked individually (table1 rows
    ``image``, ``method`` and the metric columns). Below the diagonal for top-k and PCC
    (above for MSE): ``y_method`` is more robust."""
    points = {col: {y_method: _paired(table1_df, "method", x_method, y_method, col)} for col, _ in SCATTER_METRICS}
    return _scatter_panels(
        points, path,
        f"{x_method.replace('_', ' ')} attacked\nsimilarity to target",
        f"{y_method.replace('_', ' ')} attacked: similarity to target",
        "each method attacked individually (dashed: y = x; lower top-k/PCC = more robust)", legend=False)


def training_curves(history, path: Path) -> Path:
    """Pasliev Fig. 3.4: classification and explanation loss per epoch, one line per model."""
    fig, axes = _subplots(1, 2, figsize=(7, 2.6))
    for model, part in history.groupby("model", sort=False):
        part = part.sort_values("epoch")
        for ax, column in zip(axes, ("classification", "objective")):
            ax.plot(part.epoch, part[column], marker="o", ms=3, label=model.replace("_", " "))
    from matplotlib.ticker import MaxNLocator

    for ax, title in zip(axes, ("classification term", "explanation objective")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log")
    axes[1].legend(fontsize=6)
    return _save(fig, path)


def weight_noise_curves(rows, path: Path) -> Path:
    """Pasliev Fig. 4.4: accuracy and the manipulation's metric as weight noise grows."""
    kinds = list(dict.fromkeys(rows.objective))
    fig, axes = _subplots(1, 1 + len(kinds), figsize=(3.2 * (1 + len(kinds)), 2.6), squeeze=False)
    axes = axes[0]
    for (model, kind), part in rows.groupby(["model", "objective"], sort=False):
        part = part.sort_values("sigma")
        label = model.replace("_", " ")
        if kind == next(k for k in kinds if k in set(rows[rows.model == model].objective)):
            axes[0].plot(part.sigma, part.accuracy, marker="o", ms=3, label=label)
        ax = axes[1 + kinds.index(kind)]
        ax.plot(part.sigma, part.metric, marker="o", ms=3, label=label)
        ax.set_ylabel(part.metric_name.iloc[0].replace("_", " "), fontsize=8)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=6)
    for ax, title in zip(axes, ["accuracy"] + [{"com": "center of mass to the corner", "th": "cross target"}.get(k, k)
                                               for k in kinds]):
        ax.set_xlabel("weight noise σ (× sd of each tensor)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    return _save(fig, path)


def feature_importance(rows, path: Path) -> Path:
    """Pasliev Figs. 3.14/3.15: mean normalised gradient importance per feature, per model."""
    table = rows.pivot_table(index="feature", columns="model", values="importance", sort=False)
    fig, ax = _subplots(figsize=(0.5 * len(table) + 2.5, 3))
    grouped_bars(ax, table, width=0.8)
    ax.set_ylabel("mean share of |gradient|")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.legend(fontsize=7)
    return _save(fig, path)


def metric_curves(df, x: str, line: str, metrics, panel_row: str, path: Path) -> Path:
    """Mean of each metric against ``x``, one line per value of ``line``, one row of panels per
    value of ``panel_row`` (Tang et al., Tables 1-4 as curves over the budget ε)."""
    rows = list(dict.fromkeys(df[panel_row]))
    fig, axes = _subplots(len(rows), len(metrics), figsize=(3 * len(metrics), 2.4 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        part = df[df[panel_row] == row]
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for name, group in part.groupby(line, sort=False):
                means = group.groupby(x)[metric].mean().sort_index()
                ax.plot(means.index, means.values, marker="o", ms=3, label=str(name))
            ax.set_xlabel(x)
            ax.set_title(f"{row}: {metric}", fontsize=8)
            ax.legend(fontsize=6)
    return _save(fig, path)
