"""manipex's house style for figures and tables: one colour and one display name per method,
defense and model in every figure, colour-blind-safe palettes, readable font sizes, the formats
every figure is written in, and how numbers are shown in tables (:func:`format_table`).

Every figure is drawn on a standalone :class:`matplotlib.figure.Figure` (no pyplot); the style is
applied inside :func:`styled`, which sets matplotlib's rcParams only for the duration of one
drawing function and puts them back, so a user's notebook settings are left as they were.

Palette: Okabe & Ito (2008), "Color Universal Design", eight colours distinguishable under the
common forms of colour blindness; its pale yellow (contrast 1.3 : 1 on white) is not drawn: SmoothGrad
has :data:`SMOOTHGRAD` instead. Sequential maps use ``magma`` (perceptually uniform), signed
maps ``RdBu_r`` with limits symmetric about zero.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

#: Okabe-Ito colours (black last: kept for reference lines)
PALETTE: Tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

#: SmoothGrad's colour, a periwinkle in place of Okabe-Ito's yellow ``#F0E442``, whose contrast
#: on white (1.3 : 1) is too low for a line or a bar. This one has 3.4 : 1 (WCAG asks 3 : 1 of
#: graphics) and stays distinct from every other method's colour, and from "no defense"'s grey,
#: under simulated protanopia, deuteranopia and tritanopia (Machado et al. 2009, full severity):
#: CIEDE2000 difference at least 12, more than the 6 of the closest pair of the other colours
#: (checked in tests/test_presentation.py).
SMOOTHGRAD = "#8877FF"

#: The colours a figure cycles through for lines it does not name: :data:`PALETTE` with
#: :data:`SMOOTHGRAD` for the pale yellow.
CYCLE: Tuple[str, ...] = PALETTE[:6] + (SMOOTHGRAD, PALETTE[7])

#: Fixed colours of the names manipex draws, so that a method, defense or model has the same
#: colour in every figure. Names not listed get a colour from a stable hash of the name.
FIXED: Dict[str, str] = {
    # explanation methods
    "gradient": PALETTE[0], "grad_x_input": PALETTE[1], "integrated_gradients": PALETTE[2],
    "guided_backprop": PALETTE[3], "lrp": PALETTE[4], "pattern_attribution": PALETTE[5],
    "smoothgrad": SMOOTHGRAD, "gradcam": "#999999", "occlusion": "#8C510A",
    "agg_mean": "#332288", "agg_var": "#882255",
    # defenses
    "none": "#555555", "beta_smoothing": PALETTE[1], "agg": "#332288",
    # models
    "original": "#555555", "manipulated": PALETTE[3], "atex": PALETTE[2], "clean": "#555555",
    "softplus": "#555555", "acc": "#555555", "fairwashed": PALETTE[3],
}

#: How figures and tables name what manipex calls by code names: methods, defenses, models,
#: metrics. Names not listed are shown with spaces for underscores (:func:`display_name`).
DISPLAY_NAMES: Dict[str, str] = {
    # explanation methods
    "gradient": "Gradient", "grad_x_input": "Gradient × Input", "integrated_gradients": "Integrated Gradients",
    "guided_backprop": "Guided Backprop", "lrp": "LRP", "pattern_attribution": "PatternAttribution",
    "smoothgrad": "SmoothGrad", "gradcam": "Grad-CAM", "occlusion": "Occlusion",
    "agg_mean": "AGG-Mean", "agg_var": "AGG-Var", "attention_rollout": "Attention Rollout",
    # defenses (and the training regularisers of the robust-training experiment)
    "none": "no defense", "beta_smoothing": "β-smoothing", "agg": "aggregation", "atex": "ATEX",
    "weight_decay": "weight decay", "hessian_norm": "Hessian norm", "ssr": "SSR", "ig_norm": "IG norm",
    "ig_sum_norm": "IG sum norm",
    # metrics
    "pcc": "PCC", "spearman": "Spearman", "ssim": "SSIM", "cosine": "cosine similarity", "mse": "MSE",
    "topk": "top-k intersection", "topk_intersection": "top-k intersection", "pcc_target": "PCC with target",
    "pcc_original": "PCC with original", "com_shift": "centre-of-mass shift",
    "com_distance_to_point": "centre of mass to the point", "com_distance": "centre of mass to the point",
    "mass_in_region": "mass in region", "map_distance": "map distance",
}


def display_name(name: Any) -> str:
    """How a figure or table names ``name``: its entry of :data:`DISPLAY_NAMES`
    (``"grad_x_input"`` -> ``"Gradient × Input"``, ``"beta_smoothing"`` -> ``"β-smoothing"``),
    else the name with spaces for underscores."""
    text = str(name)
    if "\n" in text:  # a label on several lines: each line by itself
        return "\n".join(display_name(line) for line in text.split("\n"))
    return DISPLAY_NAMES.get(text, text.replace("_", " "))


def code_name(label: str, among: Optional[Iterable[Any]] = None) -> str:
    """The code name that :func:`display_name` shows as ``label`` (the inverse, e.g. for
    legends): one of ``among`` (default: the names of :data:`DISPLAY_NAMES`) shown so, else
    ``label`` with underscores for spaces."""
    names = DISPLAY_NAMES if among is None else [str(n) for n in among]
    return next((n for n in names if display_name(n) == label), str(label).replace(" ", "_"))


#: Axis labels of the objectives' metrics (:attr:`manipex.objectives.Objective.metric_name`),
#: with their units; the direction is added where it is known.
METRIC_LABELS: Dict[str, str] = {
    "pcc_target": "PCC with the target map (−1 to 1)",
    "topk_intersection": "top-k intersection with the original map (0 to 1)",
    "com_shift": "shift of the centre of mass (pixels)",
    "com_distance_to_point": "centre of mass to the point (pixels)",
    "mass_in_region": "share of the map in the region (0 to 1)",
    "map_distance": "distance to the reference map (RMS; maps at mean 1 per pixel)",
}


def metric_label(name: str, direction=None) -> str:
    """The axis label of metric ``name`` with its units (:data:`METRIC_LABELS`), and, when the
    attacker's ``direction`` (:class:`~manipex.metrics.direction.Direction`) is given, which way
    is more manipulated."""
    import textwrap

    text = textwrap.fill(METRIC_LABELS.get(str(name), display_name(name)), width=34, break_long_words=False)
    if direction is not None:
        text += f"\n({direction.value} = more manipulated)"
    return text


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
    take several times as long as the PNG, as measured in the README's Measured figures behind
    the defaults; the PNG, which the report embeds, is always written)."""
    import os

    named = os.environ.get("MANIPEX_FIGURE_FORMATS", "").replace(",", " ").split()
    if not named:
        return FORMATS
    unknown = [f for f in named if f not in FORMATS]
    if unknown:
        raise ValueError(f"MANIPEX_FIGURE_FORMATS: unknown format {unknown[0][:20]!r}; "
                         f"choose from {', '.join(FORMATS)}")
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

        rc = {**RC, "axes.prop_cycle": cycler(color=list(CYCLE))}
        with matplotlib.rc_context(rc):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = ["PALETTE", "SMOOTHGRAD", "CYCLE", "FIXED", "DISPLAY_NAMES", "METRIC_LABELS", "CMAP_ABSOLUTE", "CMAP_SIGNED",
           "CMAP_INPUT", "FORMATS", "RC", "color_for", "colors_for", "display_name", "code_name", "metric_label",
           "styled", "figure_formats", "column_kind", "format_column", "format_value", "format_table"]


# -- numbers in tables ------------------------------------------------------------------------------------

#: How a missing value (None, NaN) is shown.
MISSING = "–"

#: Words of a column name that make it a similarity of maps (3 decimals, clipped to its range).
SIMILARITY_WORDS = frozenset({"pcc", "spearman", "ssim", "cosine", "topk", "similarity", "correlation", "intersection"})
#: Words that make a similarity column a difference of similarities (3 decimals, twice the range).
DIFFERENCE_WORDS = frozenset({"d", "δ", "delta", "rise", "gain", "improvement", "change", "diff", "difference"})
#: Words of a column name that make it a yes/no flag (where every value is 0 or 1; a share otherwise).
FLAG_WORDS = frozenset({"kept", "success", "successful", "flagged", "calibrated", "reverted", "holds", "changed"})
#: Words of a column name that make a value in [0, 1] a share shown as a percentage.
SHARE_WORDS = frozenset({"accuracy", "agreement", "share", "rate"})


def _words(name: str):
    import re

    return [w for w in re.split(r"[^0-9a-zα-ω]+", str(name).lower()) if w]


def is_number(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Real) and not is_flag_value(v)


def is_flag_value(v: Any) -> bool:
    return type(v).__name__ in ("bool", "bool_")


def is_finite_number(v: Any) -> bool:
    import math

    return is_number(v) and math.isfinite(float(v))


def column_kind(name: Any, values: Sequence[Any] = ()) -> str:
    """What a table column holds, from its name (and values), for :func:`format_column`:

    - ``"flag"``: booleans, or a flag's name (``class_kept``, ``success``; :data:`FLAG_WORDS`)
      with every value 0 or 1: shown ``yes`` / ``no``;
    - ``"percent"``: a name holding ``%`` (values in percent): one decimal;
    - ``"share"``: an accuracy, agreement or share (:data:`SHARE_WORDS`), or a flag's name
      whose values are means of flags, with values in [0, 1]: a percentage, ``94.1 %``;
    - ``"similarity"``: a map similarity (PCC, Spearman, SSIM, cosine, top-k intersection;
      :data:`SIMILARITY_WORDS`): three decimals, clipped to [-1, 1] (top-k: [0, 1]);
    - ``"difference"``: a difference of similarities (``Δ-PCC``, ``d_pcc``, rise): three decimals;
    - ``"number"``: anything else, formatted from the column's magnitude.
    """
    text = "" if name is None else str(name)
    words = _words(text)
    present = [v for v in values if v is not None and not (isinstance(v, float) and v != v)]
    if present and all(is_flag_value(v) for v in present):
        return "flag"
    nums = [float(v) for v in present if is_finite_number(v)]
    flag_named = any(w in FLAG_WORDS for w in words)
    if flag_named and nums and all(v in (0.0, 1.0) for v in nums) and len(nums) == len(present):
        return "flag"
    similar = any(w in SIMILARITY_WORDS or (w.startswith("top") and (w[3:].isdigit() or w == "top"))
                  for w in words)
    if similar:  # before "%": a "top-10 % intersection" is a similarity
        return "difference" if any(w in DIFFERENCE_WORDS for w in words) else "similarity"
    if "%" in text:
        return "percent"
    unit = bool(nums) and all(0.0 <= v <= 1.0 for v in nums)
    if unit and (flag_named or any(w in SHARE_WORDS for w in words)):
        return "share"
    return "number"


def _similarity_range(name: str) -> Tuple[float, float]:
    """[0, 1] for a top-k intersection, else [-1, 1]."""
    words = _words(name)
    return (0.0, 1.0) if any(w.startswith("top") or w == "intersection" for w in words) else (-1.0, 1.0)


def _by_magnitude(nums: Sequence[float]) -> str:
    """The format of a plain number column: integers as integers; decimals enough for three
    significant digits of the smallest value (at most 4, fewer where every value has fewer), or
    scientific notation when the values are tiny or huge or span too many decades."""
    import math

    nonzero = [abs(v) for v in nums if v != 0]
    if all(v == int(v) and abs(v) < 1e15 for v in nums) or not nonzero:
        return "{:.0f}"
    big, small = max(nonzero), min(nonzero)
    if big >= 1e6 or big < 1e-3 or 2 - math.floor(math.log10(small)) > 4 and big / small > 1e3:
        return "{:.2e}"
    most = max(0, min(4, 2 - math.floor(math.log10(small))))
    # no trailing zeros every cell shares (eps 0.08, not 0.0800); one count of decimals per column
    fewest = next(d for d in range(most + 1)
                  if d == most or all(abs(v - round(v, d)) <= 1e-9 * max(1, abs(v)) for v in nums))
    return "{:.%df}" % fewest


def format_column(values: Sequence[Any], name: Any = "") -> List[str]:
    """The cells of one table column as text, by what the column holds (:func:`column_kind`):
    similarities to three decimals, clipped to their valid range (a Spearman of 1.000001 is
    ``1.000``); flags ``yes`` / ``no``; percentages (a name with ``%``) to one decimal; shares and
    accuracies in [0, 1] as ``94.1 %``; other numbers from the column's magnitude (integers as
    integers, ``3`` not ``3.0``; scientific notation, ``3.20e-07``, for tiny or huge values).
    Never ``-0``; missing values as ``–``; text as it is. The values themselves are not changed:
    this is for display only."""
    import math

    text = "" if name is None else str(name)
    kind = column_kind(text, values)
    nums = [float(v) for v in values if is_finite_number(v)]
    low, high = -math.inf, math.inf
    if kind == "similarity":
        fmt = "{:.3f}"
        low, high = _similarity_range(text)
    elif kind == "difference":
        fmt = "{:.3f}"
        lo, hi = _similarity_range(text)
        low, high = lo - hi, hi - lo  # a difference of two values of the range
    elif kind == "percent":
        fmt = "{:.1f}"
    elif kind == "share":
        fmt = "{:.1f} %"
    else:
        fmt = _by_magnitude(nums)

    def clean(cell: str) -> str:  # -0, -0.000, -0.00e+00 -> without the sign
        number = cell.rstrip(" %")
        return cell[1:] if cell.startswith("-") and float(number) == 0 else cell

    out = []
    for v in values:
        if is_flag_value(v) or (kind == "flag" and is_finite_number(v)):
            out.append("yes" if bool(v) else "no")
        elif is_finite_number(v):
            x = min(max(float(v), low), high) + 0.0
            out.append(clean(fmt.format(100 * x if kind == "share" else x)))
        elif is_number(v) and not math.isnan(float(v)):
            out.append(str(float(v)))  # inf
        elif v is None or is_number(v) or (isinstance(v, float) and math.isnan(v)):
            out.append(MISSING)
        else:
            out.append(str(v))
    return out


def format_value(value: Any, name: Any = "") -> str:
    """One value as :func:`format_column` shows it in a column named ``name``."""
    return format_column([value], name)[0]


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python value it holds."""
    return v.item() if hasattr(v, "item") and not isinstance(v, str) and getattr(v, "ndim", 0) == 0 else v


def column_label(key: Any) -> str:
    if isinstance(key, tuple):
        return " / ".join(str(k) for k in key if str(k) != "")
    return "" if key is None else str(key)


def format_table(table):
    """A pandas DataFrame as it is shown: a DataFrame of the same shape, index and column names
    whose cells are the text of :func:`format_column`, column by column (numeric index levels,
    such as a budget ``eps``, too). For display (``print(format_table(df))``, the report); the
    numbers of ``table`` itself stay as they are, at full precision."""
    import pandas as pd

    cells = {}
    for i, column in enumerate(table.columns):
        cells[i] = format_column([_plain(v) for v in table.iloc[:, i]], column_label(column))
    out = pd.DataFrame(cells, index=range(len(table)))
    out.columns = table.columns
    index = table.index
    if isinstance(index, pd.MultiIndex):
        levels = [format_column([_plain(k[j]) for k in index], column_label(index.names[j]))
                  for j in range(index.nlevels)]
        out.index = pd.MultiIndex.from_arrays(levels, names=index.names)
    elif isinstance(index, pd.RangeIndex):
        out.index = index
    else:
        out.index = pd.Index(format_column([_plain(k) for k in index], column_label(index.name)), name=index.name)
    out.columns.names = table.columns.names
    return out
