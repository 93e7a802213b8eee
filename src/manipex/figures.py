"""Figures of explanation maps, in the layout of the papers (images as rows, methods as columns).

Every figure manipex draws (here and in :mod:`manipex.experiments.plots`) is a
:class:`matplotlib.figure.Figure` made and saved through matplotlib's object API: no pyplot, no
``matplotlib.use``, so a notebook's backend, its open figures and pyplot's current figure are
left as they were; the house style (:mod:`manipex.style`) is applied per drawing function and
restored. The file format follows the path's suffix; :func:`save_figure` also writes the other
formats of :data:`manipex.style.FORMATS` when asked.

Heatmaps (:func:`draw_map`) always carry a colour bar: their own, or, where maps are compared
(:func:`map_grid`, :func:`plot_maps`, the attack figure), one bar per shared scale
(``shared_scale``, :data:`SHARED_SCALES`). Methods, defenses and metrics are named as
:func:`manipex.style.display_name` shows them. Two views:

- ``sign="absolute"``: ``sum_c |h_c|`` on :data:`~manipex.style.CMAP_ABSOLUTE` from 0 to the
  99th percentile (Rieger et al. 2020 clip there so that single pixels do not dominate);
- ``sign="signed"``: ``sum_c h_c`` on :data:`~manipex.style.CMAP_SIGNED` with limits symmetric
  about zero (± the 99th percentile of ``|h|``), as Captum's ``visualize_image_attr(sign="all")``.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .style import (CMAP_ABSOLUTE, CMAP_INPUT, CMAP_SIGNED, FORMATS, color_for, colors_for, display_name, metric_label,
                    styled)
from ._files import replacing
from .explainers import explain
from .metrics import center_of_mass

SIGNS = ("absolute", "signed")

#: The values of ``shared_scale``: ``True`` one colour scale (and one colour bar) for every map
#: of the figure; ``"row"`` one per row (the maps of one image: methods compared); ``"column"``
#: one per column (one method over the images); ``False`` each map its own, with its own bar.
SHARED_SCALES = (True, False, "row", "column")
SharedScale = Union[bool, str]


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: Tuple[float, float], squeeze: bool = True,
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
    extra = [] if formats is None else [str(f).lower().lstrip(".")
                                        for f in ([formats] if isinstance(formats, str) else formats)]
    for f in extra:
        if f not in FORMATS:
            raise ValueError(f"save_figure: format {f!r} is not one of {FORMATS}")
    if fig.get_layout_engine() is None:
        fig.tight_layout(pad=pad)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_replacing(fig, path, dpi)
    for f in extra:
        other = path.with_suffix("." + f)
        if other != path:
            _save_replacing(fig, other, dpi)
    return path


def _save_replacing(fig, path: Path, dpi: int) -> None:
    """``fig.savefig(path)`` through a temporary file beside it, then ``os.replace``: a
    symbolic link at ``path`` is replaced, never written through (the file it points to stays as
    it was), and a reader never sees half a figure."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")


def wrap_title(name: str, width: int = 12) -> str:
    """A column title from a method name, on several lines when long
    (``"integrated_gradients"`` -> ``"integrated\\ngradients"``), so that titles do not run
    into each other. Code names are shown as they are (with spaces); :func:`display_title`
    gives the display name."""
    lines = [textwrap.fill(line.replace("_", " "), width=width, break_long_words=False)
             for line in str(name).split("\n")]
    return "\n".join(lines) or str(name)  # explicit line breaks are kept


def display_title(name: Any, width: int = 12) -> str:
    """:func:`wrap_title` of the display name of ``name`` (``"grad_x_input"`` ->
    ``"Gradient ×\\nInput"``; :func:`manipex.style.display_name`)."""
    return wrap_title(display_name(name), width)


def check_shared_scale(shared_scale: Any, where: str) -> SharedScale:
    """``shared_scale`` if it is one of :data:`SHARED_SCALES`, else a ``ValueError``."""
    if isinstance(shared_scale, bool) or (isinstance(shared_scale, str) and shared_scale in ("row", "column")):
        return shared_scale
    raise ValueError(f"{where}: shared_scale must be True, False, 'row' or 'column', got {shared_scale!r}")


def normalized(map: Tensor) -> Tensor:
    """``map`` divided by its total magnitude ``sum |h|`` (float64, CPU), so that its absolute
    view sums to 1 (the papers' relevance map) and maps of different methods or images share a
    scale; an all-zero or non-finite map is returned as it is."""
    m = (map if isinstance(map, Tensor) else torch.as_tensor(map)).detach().cpu().double()
    total = float(m.abs().sum())
    return m / total if total > 0 and total == total and total != float("inf") else m


def map_limit(map: Tensor, sign: str = "absolute", percentile: float = 99.0) -> float:
    """The colour limit :func:`draw_map` gives ``map``: the ``percentile``-th percentile of its
    magnitude (of ``sum_c |h_c|`` or ``|sum_c h_c|``), its maximum where that is 0, 1 for an
    all-zero map."""
    m = _to_2d(map, sign)
    mag = m.abs().flatten()
    finite = mag[torch.isfinite(mag)]
    top = float(torch.quantile(finite, percentile / 100)) if finite.numel() else 0.0
    return top or (float(finite.max()) if finite.numel() else 0.0) or 1.0


def shared_limit(maps: Iterable[Tensor], sign: str = "absolute", percentile: float = 99.0) -> float:
    """One colour limit for maps drawn on a shared scale: the largest :func:`map_limit` of them,
    so that no map saturates in more than ``100 - percentile`` % of its pixels."""
    return max((map_limit(m, sign, percentile) for m in maps), default=1.0)


def group_key(shared_scale: SharedScale, i: int, j: int) -> Hashable:
    """Which shared scale the map of row ``i``, column ``j`` belongs to."""
    if shared_scale is True:
        return "all"
    if shared_scale == "row":
        return ("row", i)
    if shared_scale == "column":
        return ("column", j)
    return (i, j)


def scale_label(sign: str, shared: bool) -> str:
    """The colour bar label of relevance maps: normalised where the scale is shared."""
    if sign == "absolute":
        return "relevance\n(share of map total)" if shared else "relevance"
    return "relevance, signed\n(share of map total)" if shared else "relevance (signed)"


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
    vmax: Optional[float] = None,
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
            ``"relevance"`` or ``"relevance (signed)"``; ``""`` for none). Maps on a shared
            scale have ``cbar=False`` and one bar for all (:func:`add_colorbar` with ``axes``).
        vmax: the colour limit (a shared scale's, :func:`shared_limit`) instead of the map's
            own percentile: ``0 .. vmax`` (absolute) or ``± vmax`` (signed).
    """
    if sign not in SIGNS:
        raise ValueError(f"draw_map: sign must be one of {SIGNS}, got {sign!r}")
    if not 0 < percentile <= 100:
        raise ValueError(f"draw_map: percentile must be in (0, 100], got {percentile!r}")
    m = _to_2d(map, sign)
    top = float(vmax) if vmax is not None and vmax > 0 else map_limit(m, sign, percentile)
    if image is not None:
        ax.imshow(_grey(image).numpy(), cmap=CMAP_INPUT, vmin=0, vmax=1)
    kw: Dict[str, Any] = {"alpha": alpha} if image is not None else {}
    if sign == "absolute":
        im = ax.imshow(m.numpy(), cmap=CMAP_ABSOLUTE, vmin=0.0, vmax=top, **kw)
    else:
        im = ax.imshow(m.numpy(), cmap=CMAP_SIGNED, vmin=-top, vmax=top, **kw)
    _plain(ax)
    if cbar:
        add_colorbar(ax, im,
                     label=("relevance" if sign == "absolute" else "relevance (signed)") if label is None else label)
    return im


def _spans(axes: Sequence[Any]) -> Tuple[int, int]:
    """How many grid rows and columns ``axes`` cover."""
    rows, cols = set(), set()
    for a in axes:
        spec = a.get_subplotspec() if hasattr(a, "get_subplotspec") else None
        if spec is None:
            continue
        rows.update(spec.rowspan)
        cols.update(spec.colspan)
    return max(1, len(rows)), max(1, len(cols))


def add_colorbar(ax, im, *, label: str = "", axes: Optional[Sequence[Any]] = None, location: str = "right"):
    """A small colour bar for ``im`` beside ``ax``, three ticks, compact numbers; with ``axes``
    (the axes of a shared scale), one bar beside all of them: ``location="right"`` of them (a
    row, or the whole grid) or ``"bottom"`` (a column)."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    horizontal = location in ("bottom", "top")
    if not axes:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, aspect=15)
    else:
        rows, cols = _spans(axes)
        if horizontal:  # an inset below the group's bottom-left axis, laid out as its x label is: a bar
            # that the layout places for some columns only would shrink their cells, and the images of
            # a row would no longer line up
            last = max(a.get_subplotspec().rowspan.stop for a in axes)
            host = min((a for a in axes if a.get_subplotspec().rowspan.stop == last),
                       key=lambda a: a.get_subplotspec().colspan.start)
            below = 0.2 if host.get_xlabel() else 0.08
            cax = host.inset_axes([0.08, -below - 0.06, 0.84, 0.06])
            cb = ax.figure.colorbar(im, cax=cax, orientation="horizontal")
        else:
            cb = ax.figure.colorbar(im, ax=list(axes), location=location, fraction=0.046 / max(1, cols) * 2,
                                    pad=0.02, aspect=15 * rows, shrink=0.9)
    cb.ax.tick_params(labelsize=6, length=2, pad=1)
    cb.locator = MaxNLocator(nbins=3)
    fmt = ScalarFormatter(useMathText=True)
    fmt.set_powerlimits((-2, 2))
    cb.formatter = fmt
    cb.update_ticks()
    (cb.ax.xaxis if horizontal else cb.ax.yaxis).get_offset_text().set_fontsize(6)
    cb.ax.grid(False)
    cb.outline.set_linewidth(0.5)
    if label:
        cb.set_label(label, fontsize=6, labelpad=1)
    return cb


def draw_shared(groups: Dict[Hashable, List[Tuple[Any, Tensor, Optional[Tensor]]]], *, sign: str,
                shared_scale: SharedScale, percentile: float = 99.0, label: Optional[str] = None,
                normalize: bool = True) -> Dict[Hashable, Any]:
    """Draw groups of maps, one colour scale per group: ``groups`` maps a group (a shared
    scale, see :func:`group_key`) to its ``(axis, map, image)`` triples (``image``: an input
    to draw the map over, or None). With ``shared_scale`` not False
    the maps are normalised (:func:`normalized`), drawn with the group's :func:`shared_limit`
    and given one colour bar per group (right of a row or of the grid, below a column); with
    False each map has its own scale and bar. ``normalize=False``: maps are drawn as they are
    (e.g. perturbations, in pixel units). Returns group -> the colour bar (None without)."""
    shared = shared_scale is not False
    bars: Dict[Hashable, Any] = {}
    for key, cells in groups.items():
        maps = [normalized(m) if shared and normalize else m for _, m, _ in cells]
        top = shared_limit(maps, sign, percentile) if shared else None
        last = None
        for (ax, _, image), m in zip(cells, maps):
            last = draw_map(ax, m, sign=sign, image=image, cbar=not shared, label=label, percentile=percentile,
                            vmax=top)
        if shared and last is not None:
            text = scale_label(sign, normalize) if label is None else label
            bars[key] = add_colorbar(cells[0][0], last, label=text, axes=[ax for ax, _, _ in cells],
                                     location="bottom" if shared_scale == "column" else "right")
        else:
            bars[key] = None
    return bars


@styled
def map_figure(
    images: Tensor,
    heatmaps: Dict[str, Tensor],
    *,
    titles: Sequence[str] = (),
    sign: str = "absolute",
    overlay: bool = False,
    shared_scale: SharedScale = "row",
):
    """The figure of :func:`map_grid`, not saved: a :class:`~matplotlib.figure.Figure` with one
    row per image, the input then one column per method (:func:`draw_map`), titled with the
    methods' display names; one colour bar per shared scale (``shared_scale``, default one per
    row: the methods of one image compared) or one per map (``shared_scale=False``)."""
    if sign not in SIGNS:
        raise ValueError(f"map_grid: sign must be one of {SIGNS}, got {sign!r}")
    shared_scale = check_shared_scale(shared_scale, "map_grid")
    if not isinstance(images, Tensor) or images.dim() not in (3, 4):
        raise ValueError("map_grid: images must be a tensor (N, C, H, W) or (N, H, W)")
    n, cols = images.shape[0], 1 + len(heatmaps)
    for name, maps in heatmaps.items():
        if maps.shape[0] != n or maps.dim() not in (3, 4):
            raise ValueError(f"map_grid: the maps of {name!r} must be (N, H, W) or (N, C, H, W) with N = {n}, "
                             f"got {tuple(maps.shape)}")
    shared = shared_scale is not False
    width = 0.5 + 1.75 * cols if not shared else 0.5 + 1.5 * cols + (0.7 if shared_scale != "column" else 0.0)
    height = 0.35 + 1.45 * n + (0.45 if shared_scale == "column" else 0.0)
    fig, axes = subplots(n, cols, figsize=(width, height), squeeze=False, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    groups: Dict[Hashable, List[Tuple[Any, Tensor, Optional[Tensor]]]] = {}
    for i in range(n):
        ax = axes[i][0]
        draw_input(ax, images[i])
        ax.set_ylabel(titles[i] if i < len(titles) else "", fontsize=7)
        if i == 0:
            ax.set_title("input", fontsize=7)
        for j, (name, maps) in enumerate(heatmaps.items(), start=1):
            groups.setdefault(group_key(shared_scale, i, j), []).append(
                (axes[i][j], maps[i], images[i] if overlay else None))
            if i == 0:
                axes[i][j].set_title(display_title(name), fontsize=7)
    if shared:
        draw_shared(groups, sign=sign, shared_scale=shared_scale)
    else:  # as before: a bar per map, labelled in the last column
        for (i, j), cells in groups.items():
            for ax, m, image in cells:
                draw_map(ax, m, sign=sign, image=image, label=None if j == cols - 1 else "")
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
    shared_scale: SharedScale = "row",
) -> Path:
    """Save a grid: one row per image, the image then one column per method's map
    (:func:`draw_map`), columns titled with the methods' display names.

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
        shared_scale: ``"row"`` (default: the maps of one image, one per method, on one colour
            scale with one colour bar right of the row, so that the columns can be compared),
            ``"column"`` (one scale per method, bar below its column), ``True`` (one scale and
            bar for the whole grid) or ``False`` (each map its own scale and bar). On a shared
            scale each map is normalised to total magnitude 1 (:func:`normalized`: the papers'
            relevance map) and the limit is the largest of the maps' ``99th`` percentiles.

    Returns:
        ``path``. Drawn without pyplot: the caller's matplotlib backend and figures are untouched.
    """
    fig = map_figure(images, heatmaps, titles=titles, sign=sign, overlay=overlay, shared_scale=shared_scale)
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
    shared_scale: SharedScale = "row",
):
    """Explain ``x`` with every method and draw the maps: one row per image, the input then one
    column per method (titled with its display name, :func:`manipex.style.display_name`); the
    maps of one image on one colour scale with one colour bar (``shared_scale``).

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
        shared_scale: ``"row"`` (default), ``"column"``, ``True`` or ``False``: see
            :func:`map_grid`. On a shared scale each map is shown normalised to total
            magnitude 1, so that methods whose raw maps differ in size can be compared.

    Returns:
        The :class:`~matplotlib.figure.Figure` (not saved: ``fig.savefig(...)`` or
        :func:`save_figure`). Nothing global of matplotlib changes.

    Example:
        >>> fig = manipex.plot_maps(model, x[:4], ["gradient", "lrp"], sign="signed")
        >>> fig.savefig("maps.pdf")
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"plot_maps: x must be a batch of images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if sign not in SIGNS:
        raise ValueError(f"plot_maps: sign must be one of {SIGNS}, got {sign!r}")
    shared_scale = check_shared_scale(shared_scale, "plot_maps")
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
    return map_figure(x.detach(), maps, titles=labels, sign=sign, overlay=overlay, shared_scale=shared_scale)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


#: Colour of what an objective aims at, drawn over maps (a region's outline, a target point).
AIM_COLOUR = "#56B4E9"


def _map_2d(m: Tensor) -> Optional[Tensor]:
    """An ``(H, W)`` view of a map or mask for outlines and markers (channels summed), or None."""
    m = m.detach().cpu().double()
    if m.dim() == 3:
        m = m.abs().sum(0)
    return m if m.dim() == 2 else None


@styled
def input_attack_figure(result, n: int = 4, *, sign: str = "absolute", shared_scale: SharedScale = "row"):
    """The figure of :meth:`manipex.attacks.InputAttackResult.plot`: rows = the first ``n``
    images; columns: original input, manipulated input (its title says whether the class was
    kept), perturbation ``x_adv - x`` (summed over channels, signed, limits symmetric at the
    largest magnitude of the shown rows, one colour bar below the column), the original map,
    the target map where the objective has one (``result.target_map``) and the manipulated
    map. Map titles give the objective's metric (display name) before/after. The maps share
    colour scales as ``shared_scale`` says (:func:`map_grid`; default ``"row"``: one bar per
    image). A region objective's region (``result.region``) is outlined on the maps; a
    centre-of-mass objective's point (``result.point``) is marked ×, each map's centre of mass +."""
    if sign not in SIGNS:
        raise ValueError(f"InputAttackResult.plot: sign must be one of {SIGNS}, got {sign!r}")
    shared_scale = check_shared_scale(shared_scale, "InputAttackResult.plot")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"InputAttackResult.plot: n must be a positive int, got {n!r}")
    if result.x.dim() != 4:
        raise ValueError("InputAttackResult.plot: draws image inputs (N, C, H, W) only")
    n = min(n, result.x.shape[0])
    target = getattr(result, "target_map", None)
    region = getattr(result, "region", None)
    point = getattr(result, "point", None)
    maps = [("original map", result.maps_before, "before")]
    if target is not None:
        maps.append(("target map", target, ""))
    maps.append(("manipulated map", result.maps_after, "after"))
    cols = 3 + len(maps)
    shared = shared_scale is not False
    width = 0.5 + (1.75 if not shared else 1.5) * cols + (0.7 if shared and shared_scale != "column" else 0.0)
    fig, axes = subplots(n, cols, figsize=(width, 0.45 + 1.6 * n + (0.5 if shared else 0.0)), squeeze=False,
                          layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.04)
    metric = display_name(result.metric_name)
    groups: Dict[Hashable, List[Tuple[Any, Tensor, Optional[Tensor]]]] = {}
    perturbations = []
    for i in range(n):
        x, xa = result.x[i].detach(), result.x_adv[i].detach()
        kept = bool(result.class_kept[i])
        draw_input(axes[i][0], x)
        draw_input(axes[i][1], xa)
        perturbations.append((axes[i][2], xa - x, None))
        texts = ["", "class kept" if kept else "class changed", ""]
        heads = ["original", "manipulated", "perturbation"]
        for j, (head, stack, when) in enumerate(maps, start=3):
            groups.setdefault(group_key(shared_scale, i, j), []).append((axes[i][j], stack[i], None))
            value = result.metric_before[i] if when == "before" else result.metric_after[i] if when else None
            texts.append("" if value is None else f"{metric} {_fmt(float(value))}")
            heads.append(head)
        for j, ax in enumerate(axes[i]):
            title = (f"{heads[j]}\n{texts[j]}" if texts[j] else heads[j]) if i == 0 else texts[j]
            ax.set_title(title, fontsize=7, **({"color": color_for("manipulated")} if j == 1 and not kept else {}))
        axes[i][0].set_ylabel(f"image {i}", fontsize=7)
    if shared:
        draw_shared({"perturbation": perturbations}, sign="signed", shared_scale="column", percentile=100.0,
                    label="x_adv − x", normalize=False)
        draw_shared(groups, sign=sign, shared_scale=shared_scale)
    else:
        for ax, delta, _ in perturbations:
            draw_map(ax, delta, sign="signed", percentile=100.0, label="x_adv − x")
        for cells in groups.values():
            for ax, m, _ in cells:
                draw_map(ax, m, sign=sign, label=None if ax.get_subplotspec().colspan.stop == cols else "")
    notes = []
    if region is not None:
        for i in range(n):
            mask = _map_2d(region[i])
            if mask is None or not float(mask.max()) > float(mask.min()):
                continue
            for j in range(3, cols):
                axes[i][j].contour(mask.numpy(), levels=[0.5 * (float(mask.max()) + float(mask.min()))],
                                   colors=[AIM_COLOUR], linewidths=0.8)
        notes.append("outline: the objective's region" if result.objective != "TopKSuppression"
                     else "outline: the original map's top-k features")
    if point is not None:
        for i in range(n):
            for j, (_, stack, _) in enumerate(maps, start=3):
                m = _map_2d(stack[i])
                if m is None:
                    continue
                row, col = (float(v) for v in center_of_mass(m[None].float())[0])
                axes[i][j].plot([col], [row], marker="+", ms=7, mew=1.2, color="white", ls="none")
                axes[i][j].plot([float(point[i][-1])], [float(point[i][0])], marker="x", ms=6, mew=1.2,
                                color=AIM_COLOUR, ls="none", clip_on=False)
        notes.append("×: the target point, +: the map's centre of mass")
    what = " ".join(p for p in (display_name(result.method) if getattr(result, "method", "") else "",
                                "attacked" if getattr(result, "method", "") else "") if p)
    heading = f"{what} with {result.objective}" if what and getattr(result, "objective", "") else what
    if heading or notes:
        fig.suptitle("; ".join(t for t in [heading] + notes if t), fontsize=8)
    return fig


def bootstrap_ci(values, statistic: str = "mean", *, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the mean (or ``"median"``) of ``values``:
    ``resamples`` resamples with replacement, seeded (the same numbers give the same interval).
    Non-finite values are left out; one value gives a zero-width interval, none gives NaNs."""
    import numpy as np

    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float(v[0])
    stat = np.median if statistic == "median" else np.mean
    draws = stat(v[np.random.default_rng(seed).integers(0, len(v), (resamples, len(v)))], axis=1)
    low, high = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


@styled
def evaluation_figure(evaluation):
    """The figure of :meth:`manipex.attacks.ModelEvaluation.plot`: the objective's mean metric
    per method (display names) for the original and the manipulated model (grouped bars, the
    models' colours of :func:`manipex.style.color_for`), with 95 % bootstrap intervals of the
    mean over the images as error bars where ``evaluation.per_image`` holds the images' values;
    the y axis names the metric with its units (:func:`manipex.style.metric_label`) and which
    way is more manipulated; the accuracies in the title, the legend outside the axes."""
    import numpy as np

    table, summary = evaluation.table, evaluation.summary
    per_image = getattr(evaluation, "per_image", None)
    methods = [str(m) for m in table.index]
    models = [c for c in ("original", "manipulated") if c in table.columns] or [str(c) for c in table.columns]
    fig, ax = subplots(1, 1, figsize=(max(3.6, 1.0 + 0.75 * len(methods)) + 1.3, 3.0), layout="constrained")
    width = 0.8 / max(1, len(models))
    counts = set()
    for k, model in enumerate(models):
        values = table[model].to_numpy(dtype=float)
        pos = np.arange(len(methods)) - 0.4 + width * (k + 0.5)
        ax.bar(pos, values, width=width, label=model, color=color_for(model, models), edgecolor="white", linewidth=0.5)
        if per_image is not None and model in getattr(per_image, "columns", ()):
            low, high = [], []
            for method in table.index:
                try:
                    v = per_image.loc[method, model].to_numpy(dtype=float)
                except KeyError:
                    v = np.array([])
                counts.add(int(np.isfinite(v).sum()))
                lo, hi = bootstrap_ci(v)
                low.append(lo)
                high.append(hi)
            low, high = np.array(low), np.array(high)
            if np.isfinite(low).any():
                ax.errorbar(pos, values, yerr=[np.clip(values - low, 0, None), np.clip(high - values, 0, None)],
                            fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_xticks(range(len(methods)), [display_title(m, 10) for m in methods])
    ax.set_xlim(-0.5, len(methods) - 0.5)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(False, axis="x")
    metric = str(table.attrs.get("metric", "metric"))
    ax.set_ylabel(metric_label(metric, table.attrs.get("direction")), fontsize=8)
    ax.set_xlabel("explanation method")
    acc_o, acc_m = summary.get("accuracy_original"), summary.get("accuracy_manipulated")
    lines = []
    if acc_o is not None and acc_m is not None:
        lines.append(f"accuracy: original {100 * acc_o:.1f} %, manipulated {100 * acc_m:.1f} %")
    counts.discard(0)
    if counts:
        n = f"{min(counts)}" if len(counts) == 1 else f"{min(counts)}-{max(counts)}"
        lines.append(f"bars: mean over n = {n} images; error bars: 95 % bootstrap interval")
    elif table.attrs.get("n") is not None:
        lines.append(f"bars: mean over n = {table.attrs['n']} images")
    if lines:
        ax.set_title("\n".join(lines), fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, title="model")
    return fig


@styled
def randomization_figure(result):
    """The figure of :meth:`manipex.evaluation.RandomizationResult.plot` (Adebayo et al. 2018, Fig. 2
    and 4): one panel per metric, the mean similarity of each method's map to the original map
    (± one standard deviation over the images, shaded) against the randomised layer, from
    ``"original"`` through the layers top (logits) first; the methods' colours of
    :func:`manipex.style.colors_for`, the legend outside the axes, the layer names rotated."""
    import numpy as np

    steps, methods, metrics = list(result.steps), list(result.methods), list(result.metrics)
    scores = result.scores.double()  # (methods, steps, metrics, N)
    mean = scores.mean(-1).numpy()
    std = (scores.std(-1) if scores.shape[-1] > 1 else torch.zeros_like(scores[..., 0])).numpy()
    colors = colors_for(methods)
    labels = {"ssim": "SSIM", "spearman": "Spearman rank correlation", "pcc": "Pearson correlation",
              "cosine": "cosine similarity"}
    width = max(3.2, 0.9 + 0.32 * len(steps))
    fig, axes = subplots(1, len(metrics), figsize=(width * len(metrics) + 1.4, 3.0), squeeze=False,
                          layout="constrained", sharey=True)
    kinds = list(getattr(result, "kinds", ())) or [""] * len(steps)
    ticks = [f"{s} ({k})" if k else s for s, k in zip(steps, kinds)]
    xs = np.arange(len(steps))
    low = min(0.0, float(np.nanmin(mean - std)) - 0.05)
    for j, (ax, metric) in enumerate(zip(axes[0], metrics)):
        for i, method in enumerate(methods):
            c = colors[method]
            ax.plot(xs, mean[i, :, j], marker="o", markersize=3.5, linewidth=1.4, color=c,
                    label=display_title(method, 24))
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
    fig.suptitle(f"{result.mode.capitalize()} randomisation, top layer first: mean ± s.d. over "
                 f"{scores.shape[-1]} inputs")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", frameon=False, title="method")
    return fig
