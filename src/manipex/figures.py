"""Figures of explanation maps, in the layout of the papers (images as rows, methods as columns).

Every figure manipex draws (here and in :mod:`manipex.experiments.plots`) is a
:class:`matplotlib.figure.Figure` made and saved through matplotlib's object API: no pyplot, no
``matplotlib.use``, so a notebook's backend, its open figures and pyplot's current figure are
left as they were; the house style (:mod:`manipex.style`) is applied per drawing function and
restored. The file format follows the path's suffix; :func:`save_figure` also writes the other
formats of :data:`manipex.style.FORMATS` when asked.

Heatmaps (:func:`draw_map`) always carry a colour bar. Two views:

- ``sign="absolute"``: ``sum_c |h_c|`` on :data:`~manipex.style.CMAP_ABSOLUTE` from 0 to the
  99th percentile (Rieger et al. 2020 clip there so that single pixels do not dominate);
- ``sign="signed"``: ``sum_c h_c`` on :data:`~manipex.style.CMAP_SIGNED` with limits symmetric
  about zero (± the 99th percentile of ``|h|``), as Captum's ``visualize_image_attr(sign="all")``.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .style import CMAP_ABSOLUTE, CMAP_INPUT, CMAP_SIGNED, FORMATS, color_for, styled

SIGNS = ("absolute", "signed")


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: Tuple[float, float], squeeze: bool = True,
              layout: Optional[str] = None, **kwargs):
    """``(figure, axes)`` as ``pyplot.subplots`` returns them, but on a standalone
    :class:`~matplotlib.figure.Figure` that pyplot does not know of (nothing global changes).
    ``layout="constrained"`` lays out colour bars and outside legends whenever it is drawn."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)


def save_figure(fig, path, *, formats: Optional[Iterable[str]] = None, dpi: int = 150, pad: float = 0.3) -> Path:
    """Write ``fig`` to ``path`` in the format of its suffix (PNG when it has none), and also in
    every format of ``formats`` (e.g. :data:`manipex.style.FORMATS`) next to it, with the same
    stem. Parent folders are created. Returns the path of the first file (``path``).

    A figure with a layout engine (``layout="constrained"``) is laid out when written; one
    without is laid out with ``tight_layout(pad=pad)`` first."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    extra = [] if formats is None else [str(f).lower().lstrip(".") for f in ([formats] if isinstance(formats, str) else formats)]
    for f in extra:
        if f not in FORMATS:
            raise ValueError(f"save_figure: format {f!r} is not one of {FORMATS}")
    if fig.get_layout_engine() is None:
        fig.tight_layout(pad=pad)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    for f in extra:
        other = path.with_suffix("." + f)
        if other != path:
            fig.savefig(other, dpi=dpi)
    return path


def wrap_title(name: str, width: int = 12) -> str:
    """A column title from a method name, on several lines when long
    (``"integrated_gradients"`` -> ``"integrated\\ngradients"``), so that titles do not run
    into each other."""
    lines = [textwrap.fill(line.replace("_", " "), width=width, break_long_words=False) for line in str(name).split("\n")]
    return "\n".join(lines) or str(name)  # explicit line breaks are kept


def _to_2d(m: Tensor, sign: str) -> Tensor:
    """``(H, W)`` float64 on the CPU: ``sum_c |h_c|`` (absolute) or ``sum_c h_c`` (signed) of a
    ``(C, H, W)`` map; an ``(H, W)`` map as it is (absolute: its magnitude)."""
    if not isinstance(m, Tensor):
        m = torch.as_tensor(m)
    m = m.detach().cpu().double()
    if m.dim() == 3:
        m = m.abs().sum(0) if sign == "absolute" else m.sum(0)
    elif m.dim() == 2:
        m = m.abs() if sign == "absolute" else m
    else:
        raise ValueError(f"draw_map: a map must be (H, W) or (C, H, W), got shape {tuple(m.shape)}")
    return m


def _grey(image: Tensor) -> Tensor:
    """An ``(H, W)`` grey image in [0, 1] of an ``(C, H, W)`` or ``(H, W)`` input (channel mean;
    inputs outside [0, 1] are scaled to it)."""
    img = image.detach().cpu().double()
    img = img.mean(0) if img.dim() == 3 else img
    return _unit(img)


def _unit(img: Tensor) -> Tensor:
    """``img`` as it is when inside [0, 1], else min-max scaled to [0, 1] (for display)."""
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > 1:
        img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
    return img


def _plain(ax) -> None:
    """An image axis: no ticks, no grid, no frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def draw_input(ax, image: Tensor):
    """Draw an input ``(C, H, W)`` (grey for one channel, RGB for three) or ``(H, W)`` on ``ax``."""
    img = image.detach().cpu().double()
    if img.dim() == 3 and img.shape[0] == 3:
        im = ax.imshow(_unit(img).permute(1, 2, 0).numpy())
    else:
        im = ax.imshow(_grey(img).numpy(), cmap=CMAP_INPUT, vmin=0, vmax=1)
    _plain(ax)
    return im


def draw_map(
    ax,
    map: Tensor,
    *,
    sign: str = "absolute",
    image: Optional[Tensor] = None,
    alpha: float = 0.6,
    cbar: bool = True,
    label: Optional[str] = None,
    percentile: float = 99.0,
):
    """Draw one explanation map on ``ax`` with a colour bar; returns the ``AxesImage``.

    Args:
        ax: a matplotlib axis (of a :class:`~matplotlib.figure.Figure`).
        map: ``(C, H, W)`` raw map (:func:`manipex.explain`) or ``(H, W)`` map (e.g. a normalised
            relevance map of :func:`manipex.relevance`).
        sign: ``"absolute"``: ``sum_c |h_c|`` with :data:`~manipex.style.CMAP_ABSOLUTE`, limits
            0 .. the ``percentile``-th percentile (99th: Rieger et al. 2020 clip there so that a
            few pixels do not saturate the scale). ``"signed"``: ``sum_c h_c`` with
            :data:`~manipex.style.CMAP_SIGNED` and limits symmetric about zero, ± the
            ``percentile``-th percentile of ``|h|`` (Captum's ``visualize_image_attr(sign="all")``).
            ``percentile=100`` does not clip (e.g. for a perturbation).
        image: optional input ``(C, H, W)`` or ``(H, W)``: the map is drawn over it in grey with
            opacity ``alpha`` (Captum's ``"blended_heat_map"``).
        cbar: add a small colour bar beside the axis, labelled ``label`` (default
            ``"relevance"`` or ``"relevance (signed)"``; ``""`` for none).
    """
    if sign not in SIGNS:
        raise ValueError(f"draw_map: sign must be one of {SIGNS}, got {sign!r}")
    if not 0 < percentile <= 100:
        raise ValueError(f"draw_map: percentile must be in (0, 100], got {percentile!r}")
    m = _to_2d(map, sign)
    mag = m.abs().flatten()
    finite = mag[torch.isfinite(mag)]
    top = float(torch.quantile(finite, percentile / 100)) if finite.numel() else 0.0
    top = top or (float(finite.max()) if finite.numel() else 0.0) or 1.0
    if image is not None:
        ax.imshow(_grey(image).numpy(), cmap=CMAP_INPUT, vmin=0, vmax=1)
    kw: Dict[str, Any] = {"alpha": alpha} if image is not None else {}
    if sign == "absolute":
        im = ax.imshow(m.numpy(), cmap=CMAP_ABSOLUTE, vmin=0.0, vmax=top, **kw)
    else:
        im = ax.imshow(m.numpy(), cmap=CMAP_SIGNED, vmin=-top, vmax=top, **kw)
    _plain(ax)
    if cbar:
        add_colorbar(ax, im, label=("relevance" if sign == "absolute" else "relevance (signed)") if label is None else label)
    return im


def add_colorbar(ax, im, *, label: str = ""):
    """A small colour bar for ``im`` beside ``ax``, three ticks, compact numbers."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, aspect=15)
    cb.ax.tick_params(labelsize=6, length=2, pad=1)
    cb.locator = MaxNLocator(nbins=3)
    fmt = ScalarFormatter(useMathText=True)
    fmt.set_powerlimits((-2, 2))
    cb.formatter = fmt
    cb.update_ticks()
    cb.ax.yaxis.get_offset_text().set_fontsize(6)
    cb.ax.grid(False)
    cb.outline.set_linewidth(0.5)
    if label:
        cb.set_label(label, fontsize=6, labelpad=1)
    return cb


@styled
def map_figure(
    images: Tensor,
    heatmaps: Dict[str, Tensor],
    *,
    titles: Sequence[str] = (),
    sign: str = "absolute",
    overlay: bool = False,
):
    """The figure of :func:`map_grid`, not saved: a :class:`~matplotlib.figure.Figure` with one
    row per image, the input then one column per method (:func:`draw_map`, a colour bar each)."""
    if sign not in SIGNS:
        raise ValueError(f"map_grid: sign must be one of {SIGNS}, got {sign!r}")
    if not isinstance(images, Tensor) or images.dim() not in (3, 4):
        raise ValueError("map_grid: images must be a tensor (N, C, H, W) or (N, H, W)")
    n, cols = images.shape[0], 1 + len(heatmaps)
    for name, maps in heatmaps.items():
        if maps.shape[0] != n or maps.dim() not in (3, 4):
            raise ValueError(f"map_grid: the maps of {name!r} must be (N, H, W) or (N, C, H, W) with N = {n}, "
                             f"got {tuple(maps.shape)}")
    fig, axes = _subplots(n, cols, figsize=(0.5 + 1.75 * cols, 0.35 + 1.45 * n), squeeze=False, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    for i in range(n):
        ax = axes[i][0]
        draw_input(ax, images[i])
        ax.set_ylabel(titles[i] if i < len(titles) else "", fontsize=7)
        if i == 0:
            ax.set_title("input", fontsize=7)
        for j, (name, maps) in enumerate(heatmaps.items(), start=1):
            ax = axes[i][j]
            draw_map(ax, maps[i], sign=sign, image=images[i] if overlay else None,
                     label=None if j == cols - 1 else "")
            if i == 0:
                ax.set_title(wrap_title(name), fontsize=7)
    return fig


@styled
def map_grid(
    images: Tensor,
    heatmaps: Dict[str, Tensor],
    path: Path,
    *,
    titles: Sequence[str] = (),
    dpi: int = 150,
    sign: str = "absolute",
    overlay: bool = False,
    formats: Optional[Iterable[str]] = None,
) -> Path:
    """Save a grid: one row per image, the image then one column per method's map, each map with
    its colour bar (:func:`draw_map`).

    Args:
        images: ``(N, C, H, W)`` inputs in [0, 1].
        heatmaps: method name -> maps: normalised relevance maps ``(N, H, W)``
            (:func:`manipex.relevance`) or raw maps ``(N, C, H, W)`` (:func:`manipex.explain`,
            needed for ``sign="signed"`` to show signs).
        path: where to write (``.png``, ``.pdf`` or ``.svg``; PNG when it has no suffix); parent
            folders are created.
        titles: optional per-row labels (e.g. the predicted class).
        dpi: resolution of raster formats.
        sign: ``"absolute"`` or ``"signed"`` (see :func:`draw_map`).
        overlay: draw each map over the grey input (Captum's blended heat map).
        formats: also write these formats next to ``path`` (e.g. :data:`manipex.style.FORMATS`).

    Returns:
        ``path``. Drawn without pyplot: the caller's matplotlib backend and figures are untouched.
    """
    fig = map_figure(images, heatmaps, titles=titles, sign=sign, overlay=overlay)
    return save_figure(fig, path, formats=formats, dpi=dpi)


DEFAULT_METHODS = ("gradient", "grad_x_input", "integrated_gradients", "guided_backprop", "lrp", "smoothgrad")


@styled
def plot_maps(
    model,
    x: Tensor,
    methods: Optional[Sequence[str]] = None,
    *,
    target=None,
    sign: str = "absolute",
    overlay: bool = False,
    method_options: Optional[Dict[str, Dict[str, Any]]] = None,
):
    """Explain ``x`` with every method and draw the maps: one row per image, the input then one
    column per method, each map with a colour bar.

    Args:
        model: an ``nn.Module`` in eval mode (left unchanged).
        x: images ``(N, C, H, W)``; shown as they are when in [0, 1], else min-max scaled.
        methods: names of :func:`manipex.explainers.methods`; default gradient, grad_x_input,
            integrated_gradients, guided_backprop, lrp, smoothgrad.
        target: ``None`` (the predicted class), an int or ``N`` class indices.
        sign: ``"absolute"`` (``sum_c |h_c|``, 0 .. 99th percentile) or ``"signed"``
            (``sum_c h_c``, symmetric limits); see :func:`draw_map`.
        overlay: draw each map over the grey input.
        method_options: method -> options of :func:`manipex.explain` (e.g. ``{"lrp": {"composite": "epsilon"}}``).

    Returns:
        The :class:`~matplotlib.figure.Figure` (not saved: ``fig.savefig(...)`` or
        :func:`save_figure`). Nothing global of matplotlib changes.

    Example:
        >>> fig = manipex.plot_maps(model, x[:4], ["gradient", "lrp"], sign="signed")
        >>> fig.savefig("maps.pdf")
    """
    from .explainers import explain

    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"plot_maps: x must be a batch of images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if sign not in SIGNS:
        raise ValueError(f"plot_maps: sign must be one of {SIGNS}, got {sign!r}")
    methods = list(DEFAULT_METHODS if methods is None else ([methods] if isinstance(methods, str) else methods))
    if not methods:
        raise ValueError("plot_maps: methods must name at least one method")
    method_options = method_options or {}
    with torch.no_grad():
        predicted = model(x).argmax(1)
    maps = {m: explain(model, x, m, target, **method_options.get(m, {})).detach() for m in methods}
    if target is None:
        labels = [f"predicted {int(c)}" for c in predicted]
    else:  # valid: explain checked it
        t = torch.as_tensor(target).reshape(-1)
        t = t.expand(x.shape[0]) if t.numel() == 1 else t
        labels = [f"class {int(c)} (pred. {int(p)})" for c, p in zip(t, predicted)]
    return map_figure(x.detach(), maps, titles=labels, sign=sign, overlay=overlay)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


@styled
def input_attack_figure(result, n: int = 4, *, sign: str = "absolute"):
    """The figure of :meth:`manipex.attacks.InputAttackResult.plot`: rows = the first ``n``
    images; columns: original input, its map, manipulated input, its map, perturbation
    ``x_adv - x`` (summed over channels, signed, limits symmetric at its largest magnitude).
    Map titles give the objective's metric before/after; the manipulated input's title says
    whether the class was kept."""
    if sign not in SIGNS:
        raise ValueError(f"InputAttackResult.plot: sign must be one of {SIGNS}, got {sign!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"InputAttackResult.plot: n must be a positive int, got {n!r}")
    if result.x.dim() != 4:
        raise ValueError("InputAttackResult.plot: draws image inputs (N, C, H, W) only")
    n = min(n, result.x.shape[0])
    heads = ("original", "original map", "manipulated", "manipulated map", "perturbation")
    fig, axes = _subplots(n, 5, figsize=(0.5 + 1.75 * 5, 0.45 + 1.6 * n), squeeze=False, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.04)
    metric = result.metric_name.replace("_", " ")
    for i in range(n):
        x, xa = result.x[i].detach(), result.x_adv[i].detach()
        kept = bool(result.class_kept[i])
        draw_input(axes[i][0], x)
        draw_map(axes[i][1], result.maps_before[i], sign=sign, label="")
        draw_input(axes[i][2], xa)
        draw_map(axes[i][3], result.maps_after[i], sign=sign)
        draw_map(axes[i][4], xa - x, sign="signed", percentile=100.0, label="x_adv - x")
        texts = ("", f"{metric} {_fmt(float(result.metric_before[i]))}",
                 "class kept" if kept else "class changed", f"{metric} {_fmt(float(result.metric_after[i]))}", "")
        for j, ax in enumerate(axes[i]):
            title = (f"{heads[j]}\n{texts[j]}" if texts[j] else heads[j]) if i == 0 else texts[j]
            ax.set_title(title, fontsize=7, **({"color": color_for("manipulated")} if j == 2 and not kept else {}))
        axes[i][0].set_ylabel(f"image {i}", fontsize=7)
    return fig


@styled
def evaluation_figure(evaluation):
    """The figure of :meth:`manipex.attacks.ModelEvaluation.plot`: the objective's metric per
    method for the original and the manipulated model (grouped bars, the models' colours of
    :func:`manipex.style.color_for`), the accuracies in the title, the legend outside the axes."""
    import numpy as np

    table, summary = evaluation.table, evaluation.summary
    methods = [str(m) for m in table.index]
    models = [c for c in ("original", "manipulated") if c in table.columns] or [str(c) for c in table.columns]
    fig, ax = _subplots(1, 1, figsize=(max(3.6, 1.0 + 0.75 * len(methods)) + 1.3, 2.8), layout="constrained")
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        values = table[model].to_numpy(dtype=float)
        pos = np.arange(len(methods)) - 0.4 + width * (k + 0.5)
        ax.bar(pos, values, width=width, label=model, color=color_for(model, models), edgecolor="white", linewidth=0.5)
    ax.set_xticks(range(len(methods)), [wrap_title(m, 10) for m in methods])
    ax.set_xlim(-0.5, len(methods) - 0.5)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(False, axis="x")
    metric = str(table.attrs.get("metric", "metric"))
    direction = table.attrs.get("higher_is_better")
    ylabel = metric.replace("_", " ")
    if direction is not None:
        ylabel += "\n(higher = more manipulated)" if direction else "\n(lower = more manipulated)"
    ax.set_ylabel(ylabel)
    ax.set_xlabel("explanation method")
    acc_o, acc_m = summary.get("accuracy_original"), summary.get("accuracy_manipulated")
    if acc_o is not None and acc_m is not None:
        ax.set_title(f"accuracy: original {acc_o:.1%}, manipulated {acc_m:.1%}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, title="model")
    return fig


@styled
def randomization_figure(result):
    """The figure of :meth:`manipex.sanity.RandomizationResult.plot` (Adebayo et al. 2018, Fig. 2
    and 4): one panel per metric, the mean similarity of each method's map to the original map
    (± one standard deviation over the images, shaded) against the randomised layer, from
    ``"original"`` through the layers top (logits) first; the methods' colours of
    :func:`manipex.style.colors_for`, the legend outside the axes, the layer names rotated."""
    import numpy as np

    from .style import colors_for

    steps, methods, metrics = list(result.steps), list(result.methods), list(result.metrics)
    scores = result.scores.double()  # (methods, steps, metrics, N)
    mean = scores.mean(-1).numpy()
    std = (scores.std(-1) if scores.shape[-1] > 1 else torch.zeros_like(scores[..., 0])).numpy()
    colors = colors_for(methods)
    labels = {"ssim": "SSIM", "spearman": "Spearman rank correlation", "pcc": "Pearson correlation",
              "cosine": "cosine similarity"}
    width = max(3.2, 0.9 + 0.32 * len(steps))
    fig, axes = _subplots(1, len(metrics), figsize=(width * len(metrics) + 1.4, 3.0), squeeze=False,
                          layout="constrained", sharey=True)
    kinds = list(getattr(result, "kinds", ())) or [""] * len(steps)
    ticks = [f"{s} ({k})" if k else s for s, k in zip(steps, kinds)]
    xs = np.arange(len(steps))
    low = min(0.0, float(np.nanmin(mean - std)) - 0.05)
    for j, (ax, metric) in enumerate(zip(axes[0], metrics)):
        for i, method in enumerate(methods):
            c = colors[method]
            ax.plot(xs, mean[i, :, j], marker="o", markersize=3.5, linewidth=1.4, color=c, label=wrap_title(method, 24))
            ax.fill_between(xs, mean[i, :, j] - std[i, :, j], mean[i, :, j] + std[i, :, j], color=c, alpha=0.15,
                            linewidth=0)
        ax.axhline(0, color="black", linewidth=0.6, linestyle="--", alpha=0.6)
        ax.set_xticks(xs, ticks, rotation=55, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.3, len(steps) - 0.7)
        ax.set_ylim(low, 1.05)
        ax.set_title(labels.get(metric, metric))
        ax.set_xlabel("randomised up to layer" if result.mode == "cascading" else "randomised layer")
        if j == 0:
            kind = "relevance maps" if result.absolute else "signed maps"
            ax.set_ylabel(f"similarity to original\n({kind})")
    fig.suptitle(f"{result.mode.capitalize()} randomisation, top layer first: mean ± s.d. over {scores.shape[-1]} inputs")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", frameon=False, title="method")
    return fig
