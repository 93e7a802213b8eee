"""manipex's house style for figures: one colour per method, defense and model in every figure,
colour-blind-safe palettes, readable font sizes, and the formats every figure is written in.

Every figure is drawn on a standalone :class:`matplotlib.figure.Figure` (no pyplot); the style is
applied inside :func:`styled`, which sets matplotlib's rcParams only for the duration of one
drawing function and puts them back, so a user's notebook settings are left as they were.

Palette: Okabe & Ito (2008), "Color Universal Design", eight colours distinguishable under the
common forms of colour blindness. Sequential maps use ``magma`` (perceptually uniform), signed
maps ``RdBu_r`` with limits symmetric about zero.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, TypeVar

#: Okabe-Ito colours (black last: kept for reference lines)
PALETTE: Tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

#: Fixed colours of the names manipex draws, so that a method, defense or model has the same
#: colour in every figure. Names not listed get a colour from a stable hash of the name.
FIXED: Dict[str, str] = {
    # explanation methods
    "gradient": PALETTE[0], "grad_x_input": PALETTE[1], "integrated_gradients": PALETTE[2],
    "guided_backprop": PALETTE[3], "lrp": PALETTE[4], "pattern_attribution": PALETTE[5],
    "smoothgrad": PALETTE[6], "gradcam": "#999999", "occlusion": "#8C510A",
    "agg_mean": "#332288", "agg_var": "#882255",
    # defenses
    "none": "#555555", "beta_smoothing": PALETTE[1], "agg": "#332288",
    # models
    "original": "#555555", "manipulated": PALETTE[3], "atex": PALETTE[2], "clean": "#555555",
    "softplus": "#555555", "acc": "#555555", "fairwashed": PALETTE[3],
}

#: Colours for names without a fixed one, in the order they are handed out within a figure.
SPARE: Tuple[str, ...] = PALETTE[:6] + ("#332288", "#882255", "#44AA99", "#117733", "#999999", "#8C510A")

#: Colour maps: relevance (non-negative), signed maps (symmetric limits), inputs.
CMAP_ABSOLUTE = "magma"
CMAP_SIGNED = "RdBu_r"
CMAP_INPUT = "gray"

#: Formats every experiment figure is written in (the report shows the PNG and links the others).
FORMATS: Tuple[str, ...] = ("png", "pdf", "svg")


def figure_formats() -> Tuple[str, ...]:
    """The formats experiments write their figures in: :data:`FORMATS`, or those named in the
    environment variable ``MANIPEX_FIGURE_FORMATS`` (e.g. ``png`` for fast runs: PDF and SVG
    take about four times as long as the PNG; the PNG, which the report embeds, is always
    written)."""
    import os

    named = os.environ.get("MANIPEX_FIGURE_FORMATS", "").replace(",", " ").split()
    if not named:
        return FORMATS
    unknown = [f for f in named if f not in FORMATS]
    if unknown:
        raise ValueError(f"MANIPEX_FIGURE_FORMATS: unknown format {unknown[0][:20]!r}; choose from {', '.join(FORMATS)}")
    return ("png",) + tuple(f for f in FORMATS if f in named and f != "png")

#: rcParams of the house style: readable sizes at a column width of about 3.3 inches.
RC: Dict[str, Any] = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "legend.title_fontsize": 8, "figure.titlesize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "axes.prop_cycle": None,  # set below from PALETTE
    "savefig.bbox": "tight", "pdf.fonttype": 42, "svg.fonttype": "none",
}


def colors_for(names: Iterable[Any]) -> Dict[str, str]:
    """Distinct colours for names drawn together in one figure: a name keeps its colour of
    :data:`FIXED` (the same in every figure) unless another name of the figure, earlier in sorted
    order, has it already; the others get the first colour of :data:`SPARE` that the figure does
    not use yet, starting at a place fixed by the name (stable across runs: no hash seed)."""
    ordered = sorted(dict.fromkeys(str(n) for n in names))  # alone, a name without a fixed colour
    # gets one of the six strong Okabe-Ito colours (not the pale yellow nor black)
    out: Dict[str, str] = {}
    for name in ordered:
        colour = FIXED.get(name)
        if colour is not None and colour not in out.values():
            out[name] = colour
    for name in ordered:
        if name not in out:
            start = sum(map(ord, name)) % 6
            order = SPARE[start:] + SPARE[:start]
            out[name] = next((c for c in order if c not in out.values()), order[0])
    return out


def color_for(name: str, among: Optional[Iterable[Any]] = None) -> str:
    """The colour of ``name`` (a method, defense or model): its fixed colour in every manipex
    figure; with ``among`` (the names drawn with it), one that no other of them has
    (:func:`colors_for`)."""
    return colors_for([name] if among is None else [*among, name])[str(name)]


F = TypeVar("F", bound=Callable[..., Any])


def styled(function: F) -> F:
    """Run a drawing function with the house style's rcParams, restored afterwards."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib
        from cycler import cycler

        rc = {**RC, "axes.prop_cycle": cycler(color=list(PALETTE))}
        with matplotlib.rc_context(rc):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = ["PALETTE", "FIXED", "CMAP_ABSOLUTE", "CMAP_SIGNED", "CMAP_INPUT", "FORMATS", "RC", "color_for", "styled",
           "figure_formats"]
