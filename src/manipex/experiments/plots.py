"""Figures of the experiments, in the papers' styles (matplotlib, PNG).

Drawn with matplotlib's object API (:class:`~matplotlib.figure.Figure`), never pyplot: the
caller's backend and open figures are left as they were (see :mod:`manipex.figures`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from torch import Tensor

from ..figures import subplots, bootstrap_ci  # noqa: F401  (bootstrap_ci: here since the first version)
from ..style import color_for, display_name, figure_formats, styled
from ..figures import display_title, save_figure as save

#: Where every legend of an experiment figure goes: right of its axes, outside the data.
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}
#: Text of the intervals drawn where values are aggregated over images or models.
CI_TEXT = "error bars: 95 % bootstrap interval"


def legend_outside(ax, *, source=None, **kwargs):
    """A legend right of ``ax``, outside its data area (``tight_layout`` makes room for it), of
    what is labelled on ``ax`` or, given ``source`` (axes), on any of them (each label once);
    None when nothing is labelled."""
    entries = {}
    for each in (source if source is not None else [ax]):
        for handle, label in zip(*each.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return None
    return ax.legend(list(entries.values()), list(entries), **{**LEGEND_OUTSIDE, **kwargs})


def save_figure(fig, path, *, dpi: int = 150) -> Path:
    """:func:`manipex.figures.save_figure` in every format of :func:`manipex.style.figure_formats`
    (matplotlib's default layout padding); returns ``path`` (the PNG the report embeds)."""
    return save(fig, path, formats=figure_formats(), dpi=dpi, pad=1.08)


def each_format(draw, path) -> Path:
    """Call ``draw(p)`` (a function writing one figure file, e.g. :func:`manipex.figures.map_grid`)
    for ``path`` and for ``path`` in each other format of :func:`manipex.style.figure_formats`; returns
    ``path``."""
    path = Path(path)
    draw(path)
    for fmt in figure_formats():
        if path.with_suffix(f".{fmt}") != path:
            draw(path.with_suffix(f".{fmt}"))
    return path


def summarize(values, statistic: str = "mean"):
    """``(centre, low, high, n)``: the mean (or median) of ``values``, its 95 % bootstrap
    interval and the number of finite values."""
    import numpy as np

    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    centre = float((np.median if statistic == "median" else np.mean)(v)) if len(v) else float("nan")
    low, high = bootstrap_ci(v, statistic)
    return centre, low, high, int(len(v))


def n_text(counts, what: str = "images") -> str:
    """``"n = 16 images"`` (or ``"n = 4-16 images"`` where groups differ) for group sizes ``counts``."""
    counts = sorted({int(c) for c in counts}) or [0]
    return f"n = {counts[0]} {what}" if len(counts) == 1 else f"n = {counts[0]}-{counts[-1]} {what} per point"


def _pretty(name) -> str:
    """How a figure names ``name``: :func:`manipex.style.display_name` (``"beta_smoothing"`` ->
    ``"β-smoothing"``, ``"lrp"`` -> ``"LRP"``)."""
    return display_name(name)


def line_with_interval(ax, xs, stats, name, *, label=None, ms: float = 4, among=None):
    """A line of centres (marker at each point) in ``name``'s colour (distinct from those of
    ``among``, the names drawn with it) with its intervals as error bars; ``stats``:
    ``(centre, low, high, n)`` per x."""
    import numpy as np

    colour = color_for(str(name), among)
    centre = np.array([s[0] for s in stats], dtype=float)
    low = np.array([s[1] for s in stats], dtype=float)
    high = np.array([s[2] for s in stats], dtype=float)
    ax.plot(xs, centre, marker="o", ms=ms, color=colour, label=_pretty(name) if label is None else label)
    if len(centre) and np.isfinite(low).any():
        ax.errorbar(xs, centre, yerr=[np.clip(centre - low, 0, None), np.clip(high - centre, 0, None)], fmt="none",
                    ecolor=colour, elinewidth=0.8, capsize=2)


def dodged(xs, k: int, count: int, *, log: bool = False, spread: float = 0.2):
    """``xs`` shifted for line ``k`` of ``count`` drawn at the same x values, so that their error
    bars do not hide each other: the lines spread over ``spread`` of the smallest gap between
    the x values (of their logarithms on a log axis), centred on them; where there is one x, of
    the half-width :func:`single_x` gives the axis."""
    import numpy as np

    xs = np.asarray(xs, dtype=float)
    if count <= 1 or not len(xs):
        return xs
    base = np.log10(xs) if log else xs
    gaps = np.diff(np.unique(base))
    gap = gaps.min() if len(gaps) else 0.3 if log else _half_width(float(xs[0]))
    step = spread * gap / (count - 1)
    shifted = base + (k - (count - 1) / 2) * step
    return 10 ** shifted if log else shifted


def _half_width(v: float) -> float:
    """Half the x range :func:`single_x` gives an axis whose only x value is ``v``."""
    return 0.5 if v == int(v) else (abs(v) * 0.5 or 0.5)


def single_x(ax, xs) -> None:
    """A sensible x range where there is one x value only (otherwise matplotlib's default)."""
    values = sorted(set(float(x) for x in xs))
    if len(values) == 1:
        v = values[0]
        half = _half_width(v)
        ax.set_xlim(v - half, v + half)
        ax.set_xticks([v])


def grouped_bars(ax, table, *, width: float = 0.8, low=None, high=None) -> None:
    """A grouped bar chart of a pandas DataFrame on ``ax``, without pyplot: one group per row
    (tick labelled with the index, x label the index's name), one bar per column in the
    column's colour (:func:`manipex.style.color_for`; legend labelled with the column, titled
    with the columns' name, outside the data), each group ``width`` wide. ``low``/``high``
    (DataFrames shaped like ``table``): intervals drawn as error bars. The bars sit where
    ``table.plot.bar(ax=ax, width=width)`` puts them; tick labels are not rotated (callers set
    the rotation)."""
    import numpy as np

    k = max(1, len(table.columns))
    w = width / k
    for j, column in enumerate(table.columns):
        offsets = [i - width / 2 + w * (j + 0.5) for i in range(len(table.index))]
        heights = table[column].to_numpy(dtype=float)
        ax.bar(offsets, heights, width=w, label=_pretty(column), color=color_for(str(column), table.columns))
        if low is not None and high is not None:
            lo = low[column].reindex(table.index).to_numpy(dtype=float)
            hi = high[column].reindex(table.index).to_numpy(dtype=float)
            ax.errorbar(offsets, heights, yerr=[np.clip(heights - lo, 0, None), np.clip(hi - heights, 0, None)],
                        fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_xticks(range(len(table.index)), [_pretty(i) for i in table.index])
    ax.set_xlim(-0.5, len(table.index) - 0.5)
    if table.index.name is not None:
        ax.set_xlabel(str(table.index.name))
    if len(table.columns):
        legend_outside(ax, title=None if table.columns.name is None else str(table.columns.name))


def aggregate(df, index: str, columns: str, value: str, statistic: str = "mean"):
    """``(centre, low, high, n)``: four DataFrames (rows ``index``, columns ``columns``) of the
    mean (or median) of ``value`` per cell, its 95 % bootstrap interval and the cell's count."""
    import pandas as pd

    cells = {key: summarize(group[value], statistic) for key, group in df.groupby([index, columns], sort=False)}
    frames = []
    for i in range(4):
        frame = pd.Series({k: v[i] for k, v in cells.items()}, dtype=float).unstack()
        frame.index.name, frame.columns.name = index, columns
        frames.append(frame)
    return tuple(frames)


@dataclass(frozen=True)
class Panel:
    """One panel of :func:`manipulation_grid`: ``title`` (shown above the first row's panel),
    ``data`` and how it is drawn: ``"map"`` (a relevance map, absolute view, 0 .. 99th
    percentile), ``"input"`` (an image, grey or RGB, with a pixel-value bar where grey) or
    ``"signed"`` (e.g. a perturbation ``x_adv - x``: summed over channels, limits symmetric at
    its largest magnitude, so nothing saturates); ``note`` is written below the panel."""

    title: str
    data: Tensor
    kind: str = "map"
    note: str = ""


PANEL_KINDS = ("map", "input", "signed")


@styled
def manipulation_grid(rows: Dict[str, List[Panel]], path: Path, *, formats=None, shared_scale="row") -> Path:
    """Dombrowski Fig. 2/3 layout: one row of :class:`Panel` per example (its label at the
    left, the method's display name first), column titles from the first row. The maps of a row
    share one colour scale and one colour bar (``shared_scale="row"``, default; ``True``: one
    for the grid, ``"column"``: one per column, ``False``: a bar per map as
    :func:`manipex.figures.draw_map`); on a shared scale each map is normalised to total 1
    (:func:`manipex.figures.normalized`). Signed panels (perturbations) share one symmetric scale
    and bar, grey inputs one pixel bar. Writes ``path`` (its suffix's format) and each of
    ``formats`` (e.g. :data:`manipex.style.FORMATS`) next to it; :func:`each_format` calls it
    once per format."""
    # local: figures' save_figure (one file), not this module's save_figure (every format)
    from ..figures import (add_colorbar, check_shared_scale, display_title, draw_input, draw_map, draw_shared,
                           group_key, save_figure)

    if not rows:
        raise ValueError("manipulation_grid: no rows to draw")
    shared_scale = check_shared_scale(shared_scale, "manipulation_grid")
    shared = shared_scale is not False
    ncols = max(len(panels) for panels in rows.values())
    bad = sorted({p.kind for panels in rows.values() for p in panels} - set(PANEL_KINDS))
    if bad:
        raise ValueError(f"manipulation_grid: panel kind must be one of {PANEL_KINDS}, got {bad}")
    width = 1.2 + (1.3 if not shared else 1.15) * ncols + (0.6 if shared else 0.0)
    fig, axes = subplots(len(rows), ncols, figsize=(width, 0.5 + 1.5 * len(rows) + (0.45 if shared else 0.0)),
                          squeeze=False, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    maps, signed, grey = {}, [], []
    for i, (label, panels) in enumerate(rows.items()):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(panels):
                ax.set_axis_off()
                continue
            panel = panels[j]
            if panel.kind == "input":
                im = draw_input(ax, panel.data)
                if not (panel.data.dim() == 3 and panel.data.shape[0] == 3):  # grey: its scale
                    grey.append((ax, im))
            elif panel.kind == "signed":
                signed.append((ax, panel.data, None))
            else:
                maps.setdefault(group_key(shared_scale, i, j), []).append((ax, panel.data, None))
            if i == 0:
                ax.set_title(panel.title, fontsize=7)
            if panel.note:
                ax.set_xlabel(panel.note, fontsize=7, labelpad=2)
            if j == 0:
                ax.set_ylabel(display_title(label), fontsize=7)
    if shared:
        if signed:
            draw_shared({"signed": signed}, sign="signed", shared_scale="column", percentile=100.0, label="x_adv − x",
                        normalize=False)
        draw_shared(maps, sign="absolute", shared_scale=shared_scale, label="relevance\n(share of map total)")
        if grey:
            add_colorbar(grey[0][0], grey[0][1], label="pixel", axes=[ax for ax, _ in grey], location="bottom")
    else:
        for ax, im in grey:
            add_colorbar(ax, im, label="pixel")
        for ax, data, _ in signed:
            draw_map(ax, data, sign="signed", percentile=100.0, label="x_adv − x")
        for cells in maps.values():
            for ax, data, _ in cells:
                draw_map(ax, data, sign="absolute", label="relevance")
    return save_figure(fig, path, formats=formats)


BETA_PANELS = (("pcc_target", "median PCC with target map\n(higher = manipulation survives)"),
               ("pcc_original", "median PCC with original map\n(higher = original recovered)"))


@styled
def beta_curve(df, path: Path) -> Path:
    """Dombrowski Fig. 4: median PCC of the β-smoothed manipulated maps with the target (left)
    and with the original map (right) against β, one line per method in its colour with 95 %
    bootstrap intervals of the median; dotted: the same method with ReLU."""
    methods = sorted(df.method.unique())
    fig, axes = subplots(1, len(BETA_PANELS), figsize=(8.0, 3.2), squeeze=False)
    counts = []
    for ax, (column, ylabel) in zip(axes[0], BETA_PANELS):
        for k, method in enumerate(methods):
            part = df[df.method == method]
            betas = sorted(float(b) for b in part.beta.unique() if str(b) != "relu")
            stats = [summarize(part[part.beta.astype(str) == str(b)][column], "median") for b in betas]
            counts += [s[3] for s in stats]
            line_with_interval(ax, dodged(betas, k, len(methods), log=True), stats, method, among=methods)
            relu = part[part.beta.astype(str) == "relu"][column]
            if len(relu):
                ax.axhline(float(relu.median()), ls=":", lw=1.0, color=color_for(method, methods))
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("β of the softplus (log scale;\nsmoother to the right)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"smoothed map of x_adv vs {'target' if column == 'pcc_target' else 'original'} map\n"
                     "(dotted: the same method with ReLU)")
    legend_outside(axes[0][-1], source=axes[0], title="method")
    fig.suptitle(f"β-smoothing of the manipulated maps\n({n_text(counts)}; {CI_TEXT} of the median)")
    return save_figure(fig, path)


@styled
def box_plot(df, column: str, by: str, path: Path, ylabel: str, *, title: str = "", xlabel: str = "") -> Path:
    """Distribution of ``column`` per ``by`` (Dombrowski Fig. 3, Rieger Table 1 as boxes): boxes
    the inter-quartile range in each group's colour, whiskers 1.5 IQR, the count under each."""
    groups = sorted(df[by].unique())
    values = [df[df[by] == g][column].dropna().to_numpy(dtype=float) for g in groups]
    fig, ax = subplots(figsize=(1.2 * len(groups) + 2.0, 3.0))
    boxes = ax.boxplot(values, patch_artist=True, medianprops={"color": "black"})
    for patch, group in zip(boxes["boxes"], groups):
        patch.set_facecolor(color_for(str(group), groups))
        patch.set_alpha(0.8)
    ax.set_xticks(range(1, len(groups) + 1), [f"{_pretty(g)}\n(n = {len(v)})" for g, v in zip(groups, values)],
                  fontsize=7)
    ax.set_xlabel(xlabel or _pretty(by))
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel.split('(')[0].strip()} per {_pretty(by)}\n"
                          f"(boxes: inter-quartile range, whiskers: 1.5 IQR; {n_text(map(len, values))})")
    return save_figure(fig, path)


@styled
def transfer_heatmap(matrix, path: Path, title: str, *, label: str = "", n=None) -> Path:
    """Rieger Fig. 2 as a matrix: rows attacked method, columns evaluated method, the value in
    each cell; ``label`` names the values (colour bar), ``n`` the images averaged per cell."""
    import numpy as np

    fig, ax = subplots(figsize=(1.0 * len(matrix.columns) + 2.6, 0.8 * len(matrix) + 1.6))
    values = matrix.values.astype(float)
    im = ax.imshow(values, cmap="viridis")

    ax.set_xticks(range(len(matrix.columns)), [display_title(c, 10) for c in matrix.columns], fontsize=7)
    ax.set_yticks(range(len(matrix.index)), [_pretty(i) for i in matrix.index], fontsize=7)
    ax.grid(False)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if len(finite) else 0.0
    for i in range(len(matrix.index)):
        for j in range(len(matrix.columns)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if values[i, j] > middle else "white")
    ax.set_xlabel("evaluated with (method)")
    ax.set_ylabel("attacked (method)")
    ax.set_title(title + (f"\n(mean over {n_text([n] if np.isscalar(n) else n)})" if n is not None else ""))
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label(label or title, fontsize=7)
    return save_figure(fig, path)


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


#: Axis label of each scatter metric, with its direction (MSE is a distance: lower = closer).
SCATTER_AXIS = {"top10_after": "top-10 % intersection with target (higher = closer)",
                "pcc_after": "PCC with target map (higher = closer)",
                "mse_after": "MSE to target map (lower = closer)"}


@styled
def _scatter_panels(points, path: Path, xlabel: str, ylabel: str, title: str, legend: bool = True) -> Path:
    """One row of three panels (top-10 %, PCC, MSE), one point per image in its series' colour
    (:func:`manipex.style.color_for`), dashed y = x. ``xlabel``/``ylabel`` hold ``{metric}``,
    filled in per panel with the metric's label and direction."""
    import math

    fig, axes = subplots(1, len(SCATTER_METRICS), figsize=(9.6, 3.2), squeeze=False)
    counts = set()
    for ax, (col, label) in zip(axes[0], SCATTER_METRICS):
        values = [float(v) for x, y in points[col].values() for v in list(x) + list(y)]
        axis = SCATTER_AXIS.get(col, label)
        scale = 1.0  # MSE: plotted in units of a power of ten, named on the axes
        if col == "mse_after" and values and max(map(abs, values)) > 0:
            scale = 10.0 ** math.floor(math.log10(max(map(abs, values))))
            if scale != 1.0:
                axis = axis.replace("(", f"(×{scale:.0e}; ", 1)
        for j, (series, (x, y)) in enumerate(points[col].items()):
            counts.add(len(x))
            ax.scatter(x / scale, y / scale, s=12, marker=_MARKERS[j % len(_MARKERS)], alpha=0.8,
                       color=color_for(str(series), points[col]), label=_pretty(series))
        if values:
            lo, hi = min(values) / scale, max(values) / scale
            pad = 0.05 * (hi - lo) or 0.05 * (abs(hi) or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", lw=0.8, color="grey")
        ax.set_title(label)
        ax.set_xlabel(xlabel.format(metric=axis), fontsize=7)
        ax.set_ylabel(ylabel.format(metric=axis), fontsize=7)
        ax.tick_params(labelsize=6)
    if legend:
        legend_outside(axes[0][-1], title="y: evaluated with")
    fig.suptitle(f"{title}\n(one point per image, {n_text(counts or [0])})")
    return save_figure(fig, path)


def transfer_scatter(transfer_df, attacked: str, path: Path) -> Path:
    """Rieger Fig. 2: per image, the similarity to the target of the attacked method's map of
    x_adv (x) against another method's map of the same x_adv (y), one panel per metric. Below
    the diagonal for top-k and PCC (above for MSE): the attack transfers poorly."""
    return _scatter_panels(
        _scatter_points(transfer_df, attacked), path,
        f"{_pretty(attacked)} (attacked) map:\n{{metric}}",
        "other method's map of x_adv:\n{metric}",
        f"attack on {_pretty(attacked)} evaluated with other methods (dashed: y = x)")


def robustness_scatter(table1_df, x_method: str, y_method: str, path: Path) -> Path:
    """Rieger Fig. 5: per image, the similarity to the target after attacking ``x_method``
    (x) against after attacking ``y_method`` (y), each attacked individually (table1 rows
    ``image``, ``method`` and the metric columns). Below the diagonal for top-k and PCC
    (above for MSE): ``y_method`` is more robust."""
    points = {col: {y_method: _paired(table1_df, "method", x_method, y_method, col)} for col, _ in SCATTER_METRICS}
    return _scatter_panels(
        points, path,
        f"{_pretty(x_method)} attacked:\n{{metric}}",
        f"{_pretty(y_method)} attacked:\n{{metric}}",
        f"each method attacked individually (dashed: y = x; {_pretty(y_method)} more robust below it for "
        "top-k and PCC, above it for MSE)", legend=False)


def _epoch_axis(ax, epochs) -> None:
    """Integer epoch ticks; one epoch: a single tick in the middle of a unit-wide range."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    single_x(ax, epochs)
    ax.set_xlabel("epoch of fine-tuning")


@styled
def training_curves(history, path: Path, *, n=None) -> Path:
    """Pasliev Fig. 3.4: classification and explanation loss per epoch, one line (with markers)
    per model in its colour; ``n``: the training images (stated in the title)."""
    fig, axes = subplots(1, 2, figsize=(7.6, 2.8))
    for model, part in history.groupby("model", sort=False):
        part = part.sort_values("epoch")
        for ax, column in zip(axes, ("classification", "objective")):
            ax.plot(part.epoch, part[column], marker="o", ms=4, color=color_for(str(model), history.model.unique()),
                    label=_pretty(model))
    for ax, column, title in zip(axes, ("classification", "objective"),
                                 ("classification term", "explanation objective")):
        _epoch_axis(ax, history.epoch)
        ax.set_title(title)
        values = history[column].to_numpy(dtype=float)
        log = bool((values > 0).all() and values.max() > 10 * values.min())  # log only over a decade or more
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(f"{title} per epoch\n({'log scale, ' if log else ''}lower = closer to the aim)")
    legend_outside(axes[1], source=axes, title="model")
    fig.suptitle("fine-tuning of the manipulated models"
                 + (f" ({n_text([n], 'training images')})" if n else ""))
    return save_figure(fig, path)


#: Axis labels of the weight-noise metrics (Pasliev Sec. 4.2), with their units and direction.
NOISE_METRICS = {
    "com_distance_to_point": "centre of mass of the map to the corner\n(pixels; lower = more manipulated)",
    "com_shift": "shift of the map's centre of mass\n(pixels; higher = more manipulated)",
    "pcc_target": "PCC of the map with the cross target\n(higher = more manipulated)",
}
NOISE_TITLES = {"com": "center of mass to the corner", "th": "cross target"}


@styled
def weight_noise_curves(rows, path: Path, *, n=None) -> Path:
    """Pasliev Fig. 4.4: accuracy and the manipulation's metric (mean over ``n`` held-out
    images) as weight noise grows, one line per model in its colour."""
    kinds = list(dict.fromkeys(rows.objective))
    fig, axes = subplots(1, 1 + len(kinds), figsize=(3.0 * (1 + len(kinds)) + 1.6, 2.9), squeeze=False)
    axes = axes[0]
    for (model, kind), part in rows.groupby(["model", "objective"], sort=False):
        part = part.sort_values("sigma")
        colour, label = color_for(str(model), rows.model.unique()), _pretty(model)
        if kind == next(k for k in kinds if k in set(rows[rows.model == model].objective)):
            axes[0].plot(part.sigma, part.accuracy, marker="o", ms=4, color=colour, label=label)
        ax = axes[1 + kinds.index(kind)]
        ax.plot(part.sigma, part.metric, marker="o", ms=4, color=colour, label=label)
        name = str(part.metric_name.iloc[0])
        ax.set_ylabel(NOISE_METRICS.get(name, f"{_pretty(name)}\n(mean over images)"))
    axes[0].set_ylabel("accuracy (share of images correct)")
    for ax, title in zip(axes, ["accuracy"] + [NOISE_TITLES.get(k, k) for k in kinds]):
        ax.set_xlabel("weight noise σ (× sd of each tensor)")
        ax.set_title(title)
        single_x(ax, rows.sigma)
    legend_outside(axes[-1], source=axes, title="model")
    fig.suptitle("manipulated models under weight noise"
                 + (f" (means over {n_text([n], 'held-out images')}, one noise draw per σ)" if n else ""))
    return save_figure(fig, path)


@styled
def feature_importance(rows, path: Path, *, n=None) -> Path:
    """Pasliev Figs. 3.14/3.15: mean normalised gradient importance per feature, one bar per
    model in its colour; ``n``: the images averaged (stated in the title)."""
    table = rows.pivot_table(index="feature", columns="model", values="importance", sort=False)
    table.columns.name = "model"
    fig, ax = subplots(figsize=(0.5 * len(table) + 3.4, 3.4))
    grouped_bars(ax, table, width=0.8)
    ax.set_ylabel("mean share of |gradient|\n(higher = feature used more)")
    ax.set_xlabel("feature")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.set_title("gradient importance per feature"
                 + (f" (mean over {n_text([n], 'test rows')})" if n else " (mean over the test rows)"))
    return save_figure(fig, path)


@styled
def metric_curves(df, x: str, line: str, metrics, panel_row: str, path: Path, *, labels=None, xlabel: str = "",
                  title: str = "") -> Path:
    """Mean of each metric against ``x`` with 95 % bootstrap intervals over the rows (images),
    one line per value of ``line`` in its colour, one row of panels per value of ``panel_row``
    (Tang et al., Tables 1-4 as curves over the budget ε). ``labels``: metric -> y label."""
    labels = dict(labels or {})
    rows = list(dict.fromkeys(df[panel_row]))
    fig, axes = subplots(len(rows), len(metrics), figsize=(3.4 * len(metrics) + 1.6, 2.8 * len(rows)),
                          squeeze=False)
    counts = []
    for i, row in enumerate(rows):
        part = df[df[panel_row] == row]
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            groups = list(part.groupby(line, sort=False))
            for k, (name, group) in enumerate(groups):
                xs = sorted(group[x].unique())
                stats = [summarize(group[group[x] == v][metric]) for v in xs]
                counts += [s[3] for s in stats]
                line_with_interval(ax, dodged(xs, k, len(groups)), stats, name, among=[g for g, _ in groups])
            single_x(ax, part[x])
            ax.set_xlabel(xlabel or _pretty(x))
            ax.set_ylabel(labels.get(metric, f"mean {_pretty(metric)}"))
            ax.set_title(f"{_pretty(row)}: {_pretty(metric)}")
        legend_outside(axes[i][-1], source=axes[i], title=_pretty(line))
    fig.suptitle(f"{title + ' ' if title else ''}(means, {CI_TEXT}; {n_text(counts)})")
    return save_figure(fig, path)
