"""A self-contained HTML page per run: tables and figures (embedded), opens offline."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .._files import refuse_outside_links, replacing
from .sources import SourceConfig, normalization_text
from .base import EXPERIMENTS, get_experiment
from .._validation import short
from .config import ConfigError
from .store import ResultStore
from .tables import as_entries

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;padding:0 1em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em} h1,h2,p{overflow-wrap:anywhere}
p.caption{margin:.2em 0 .5em;color:#444;font-size:.9em;max-width:60em}
div.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;vertical-align:top} th{background:#f3f3f3}
.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums} .txt{text-align:left}
td.txt{min-width:8em;max-width:32em;overflow-wrap:anywhere} thead th.num,thead th.txt{white-space:normal}
div.published{border-left:4px solid #0072b2;background:#f6f9fc;padding:.2em 1em;margin:1em 0}
div.published p{margin:.3em 0;font-size:.9em}
img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f7f7f7;padding:.6em;font-size:.8em;white-space:pre-wrap;overflow-wrap:anywhere}
dl.run{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;font-size:.9em} dl.run dt{font-weight:600}
dl.run dd{margin:0;overflow-wrap:anywhere}
"""  # noqa: E501 -- the page's CSS, one rule set per line, kept as it is


def is_text(table) -> bool:
    """A table of sentences (Findings, Verdict): every column holds strings."""
    import pandas as pd

    columns = [table.iloc[:, i] for i in range(table.shape[1])]  # by position: names may repeat
    return len(columns) > 0 and all(c.dtype == object or pd.api.types.is_string_dtype(c) for c in columns)


# -- numbers ---------------------------------------------------------------------------------------------
# one convention for every table manipex shows (the report, the terminal): manipex.style.format_column

from ..style import (DISPLAY_NAMES, MISSING, column_label, format_column, format_table,  # noqa: E402,F401
                     is_finite_number, is_flag_value, is_number)


def _numeric(values: Sequence[Any]) -> bool:
    """A column of numbers or flags (right-aligned, formatted by :func:`format_column`)."""
    import math

    present = [v for v in values if not (v is None or (isinstance(v, float) and math.isnan(v)))]
    return bool(present) and all(is_number(v) or is_flag_value(v) for v in present)


def table_html(table) -> str:
    """An HTML table: index levels as left-hand header columns, each column formatted by
    :func:`manipex.style.format_column` (similarities to 3 decimals within their range, flags
    yes / no, percentages to one decimal); numbers right-aligned, text left-aligned and wrapped; in a box that
    scrolls horizontally by itself when the table is wider than the page. Method and defense
    names in the header and the index are shown as the papers name them
    (:data:`manipex.style.DISPLAY_NAMES`: ``grad_x_input`` -> "Gradient × Input"); the table
    itself keeps the code names."""
    import pandas as pd

    index = table.index
    names = [column_label(n) if n is not None else "" for n in index.names]
    index_cols = [[k[i] if isinstance(k, tuple) else k for k in index] for i in range(index.nlevels)]
    if index.nlevels == 1 and not names[0] and isinstance(index, pd.RangeIndex):
        index_cols, names = [], []  # a plain 0..n-1 index says nothing
    columns = [(names[i], index_cols[i], True) for i in range(len(index_cols))]
    columns += [(column_label(c), list(table.iloc[:, i]), False) for i, c in enumerate(table.columns)]
    rendered = []
    for name, values, is_index in columns:
        values = [v.item() if hasattr(v, "item") and not isinstance(v, str) else v for v in values]
        if _numeric(values):
            rendered.append((name, format_column(values, name), "num", is_index))
        else:
            text = [MISSING if v is None or v != v else str(v) for v in values]
            if is_index:  # a method or defense named as a paper names it (exact names only)
                text = [DISPLAY_NAMES.get(t, t) for t in text]
            rendered.append((name, text, "txt", is_index))
    head = "".join(f'<th class="{kind}">{html.escape(DISPLAY_NAMES.get(name, name))}</th>'
                   for name, _, kind, _ in rendered)
    body = []
    for r in range(len(table)):
        cells = []
        for name, cells_text, kind, is_index in rendered:
            tag = "th" if is_index else "td"
            cells.append(f'<{tag} class="{kind}">{html.escape(cells_text[r])}</{tag}>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    kind = "dataframe text" if is_text(table) else "dataframe"
    return (f'<div class="scroll"><table class="{kind}"><thead><tr>{head}</tr></thead><tbody>' + "".join(body)
            + "</tbody></table></div>")


# -- headings and captions -------------------------------------------------------------------------------

def stem_words(stem: str) -> str:
    """The fallback heading of a figure nobody captioned: its file stem in words."""
    words = stem.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def caption_for(experiment: Any, key: str):
    """``(heading, caption)`` declared by ``experiment.captions`` for a figure's file stem (tables
    carry their own: :class:`~manipex.experiments.tables.Table`): an exact key first, then a key
    with ``*`` (fnmatch), whose match fills ``{}``
    in the heading and caption (underscores as spaces). None if nothing is declared."""
    import fnmatch

    captions = getattr(experiment, "captions", None) or {}
    if key in captions:
        return captions[key]
    for pattern, (heading, caption) in captions.items():
        if "*" in pattern and fnmatch.fnmatchcase(key, pattern):
            prefix, _, suffix = pattern.partition("*")
            rest = key[len(prefix):len(key) - len(suffix) if suffix else None].replace("_", " ")
            return heading.replace("{}", rest), caption.replace("{}", rest)
    return None


# -- the run ---------------------------------------------------------------------------------------------

def human_time(seconds: float) -> str:
    """A Unix time as ``2026-11-24 08:30 UTC``."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(float(seconds), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def human_duration(seconds: float) -> str:
    """A duration as ``4 min 12 s`` (``1 h 3 min``, ``0.4 s``)."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    if h:
        return f"{h} h {m} min"
    return f"{m} min {s} s" if m else f"{s} s"


def run_html(folder: Path, meta: Dict[str, Any]) -> str:
    """The run's facts (not its configuration, which has its own block): start time and run
    time in human form, seed, processes, environment."""
    rows = [("experiment", meta.get("experiment"))]
    started = meta.get("started")
    if is_finite_number(started):
        rows.append(("started", human_time(started)))
        results = sorted(Path(folder).glob("results*.jsonl"))
        if results:
            last = max(p.stat().st_mtime for p in results)
            rows.append(("run time", human_duration(last - started) + " (to the last result written)"))
    for key in ("seed", "world_size"):
        if meta.get(key) is not None:
            rows.append(("processes" if key == "world_size" else key, meta[key]))
    env = meta.get("environment")
    if isinstance(env, dict):
        rows += [(str(k), v) for k, v in env.items()]
    elif env is not None:
        rows.append(("environment", env))
    rows += [(str(k), v) for k, v in meta.items()
             if k not in ("experiment", "started", "seed", "world_size", "environment", "config")]
    return '<dl class="run">' + "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(v if isinstance(v, str) else json.dumps(v))}</dd>"
        for k, v in rows) + "</dl>"


def setting_html(config: Any) -> str:
    """What the model is shown, above the configuration: the input normalisation in front of
    the model (a config of images, :class:`~manipex.experiments.sources.SourceConfig`); else nothing."""
    if not isinstance(config, SourceConfig):
        return ""
    return f'<p class="caption"><b>Inputs:</b> {html.escape(normalization_text(config))}.</p>'


def write_report(folder: Path, experiment: Any, config: Dict[str, Any], tables: Any,
                 figures: Sequence[Path], notes: Sequence[str] = ()) -> Path:
    """Write ``folder/report.html`` and return its path. ``tables``: the run's
    :class:`~manipex.experiments.tables.Tables` (each with its heading and caption), or a plain
    ``{title: DataFrame}``; ``notes`` (e.g. damaged result lines that were skipped) are shown
    first."""
    parts: List[str] = [f"<h1>{html.escape(experiment.title)}</h1>"]
    if notes:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for spec, table in as_entries(tables):
        parts.append(_block(spec.heading or spec.title, spec.caption, table_html(table),
                            getattr(table, "attrs", None) or {}))
    for fig in figures:
        data = base64.b64encode(Path(fig).read_bytes()).decode()
        img = f'<img alt="{html.escape(Path(fig).name)}" src="data:image/png;base64,{data}">'
        others = [Path(fig).with_suffix(f".{fmt}") for fmt in ("pdf", "svg")]
        links = " · ".join(f'<a href="{html.escape(o.name)}">{o.suffix[1:].upper()}</a>' for o in others if o.exists())
        if links:
            img += f'<p class="caption">also as {links} (beside report.html)</p>'
        found = caption_for(experiment, Path(fig).stem)
        heading, caption = found if found else (stem_words(Path(fig).stem), "")
        parts.append(_block(heading, caption, img, {}))
    values = config.to_dict() if hasattr(config, "to_dict") else config
    parts.append("<h2>Configuration</h2>" + setting_html(config) + "<pre>"
                 + html.escape(json.dumps(values, indent=2)) + "</pre>")
    meta = folder / "meta.json"
    if meta.is_file():
        text = meta.read_bytes()[:1 << 20].decode("utf-8", errors="replace")
        try:
            facts = json.loads(text)
        except ValueError:
            facts = None
        if isinstance(facts, dict):  # its config is the block above: not printed twice
            parts.append("<h2>Run</h2>" + run_html(folder, facts))
        else:
            parts.append("<h2>Run</h2><pre>" + html.escape(text) + "</pre>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(experiment.title)
            + f"</title><style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = folder / "report.html"
    # a name of its own: a run and a `manipex report` may write the page at the same time
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:  # the page declares utf-8; titles hold Δ, β
        f.write(page)
    return path


def published_lines(attrs: Dict[str, Any]) -> List[Tuple[str, str]]:
    """``(label, text)`` lines that go with a table of published numbers (``attrs["published"]``:
    the paper's setting; ``"ours"``: our setting; ``"differs"``: how they differ, what it implies);
    none for other tables. The report and the terminal print the same lines."""
    if not attrs.get("published"):
        return []
    lines = [("Paper's setting", attrs.get("published")), ("Our setting", attrs.get("ours")),
             ("How they differ", attrs.get("differs"))]
    return [(k, str(v)) for k, v in lines if v]


def _block(heading: str, caption: str, body: str, attrs: Dict[str, Any]) -> str:
    """A heading, its caption and ``body``; a table of published numbers (``attrs["published"]``:
    the paper's setting) in a box of its own, with our setting and how the two differ."""
    out = f"<h2>{html.escape(heading)}</h2>"
    if caption:
        out += f'<p class="caption">{html.escape(caption)}</p>'
    lines = published_lines(attrs)
    if lines:
        return ('<div class="published">' + out + "".join(f"<p><b>{k}:</b> {html.escape(v)}</p>" for k, v in lines)
                + body + "</div>")
    return out + body


def damaged_note(store: Any) -> List[str]:
    """The report's note on damaged result lines of ``store`` (after a read), or none."""
    if not store.damaged:
        return []
    return [f"{len(store.damaged)} damaged line(s) of the results were skipped ({store.damaged_text()}): not "
            "UTF-8, not JSON or not a record. The other lines are kept; units found only on damaged lines are run "
            "again when the run is resumed."]


def report_from_folder(folder: Path) -> Path:
    """Rebuild the report of a finished (or partial) run folder. Reads the results without
    changing them (a run may be writing them) and creates nothing but the report."""
    folder = Path(folder)
    if not folder.exists():
        raise ConfigError(f"{folder} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder (give a run folder such as manipex-runs/quick)")
    refuse_outside_links(folder)
    store = ResultStore(folder)
    meta = store.meta()
    if meta is None:
        raise ConfigError(f"{folder} is not a manipex run folder (no meta.json)")
    if meta["experiment"] not in EXPERIMENTS.names():
        raise ConfigError(f"{folder / 'meta.json'} names an unknown experiment {short(meta['experiment'])}; "
                          f"available: {', '.join(EXPERIMENTS.names())}")
    experiment = get_experiment(meta["experiment"])
    known = experiment.Config.fields()  # a folder of an older version may hold keys since removed
    config = experiment.Config.resolve({k: v for k, v in meta["config"].items() if k in known},
                                       sources=[f"{folder}/meta.json"], files=False)  # imports nothing
    df = store.frame()
    tables = experiment.tables(df, config) if len(df) else {}
    figures = experiment.figures(df, config, folder) if len(df) else []
    return write_report(folder, experiment, config, tables, figures, notes=damaged_note(store))
