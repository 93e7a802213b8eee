"""A self-contained HTML page per run: tables and figures (embedded), opens offline."""
from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right} th{background:#f3f3f3}
table.text td,table.text th{text-align:left;vertical-align:top}
img{max-width:100%;border:1px solid #eee} pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto}
"""


def is_text(table) -> bool:
    """A table of sentences (Findings, Verdict): every column holds strings."""
    import pandas as pd

    return len(table.columns) > 0 and all(table[c].dtype == object or pd.api.types.is_string_dtype(table[c])
                                          for c in table.columns)


def write_report(folder: Path, experiment: Any, config: Dict[str, Any], tables: Dict[str, Any],
                 figures: Sequence[Path], notes: Sequence[str] = ()) -> Path:
    """Write ``folder/report.html`` and return its path; ``notes`` (e.g. damaged result lines
    that were skipped) are shown first."""
    parts: List[str] = [f"<h1>{html.escape(experiment.title)}</h1>"]
    if notes:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for title, table in tables.items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(table.to_html(float_format=lambda v: f"{v:.4g}", border=0,
                                   classes="text" if is_text(table) else None))
    for fig in figures:
        data = base64.b64encode(Path(fig).read_bytes()).decode()
        parts.append(f'<h2>{html.escape(Path(fig).stem.replace("_", " "))}</h2><img alt="{html.escape(Path(fig).name)}" src="data:image/png;base64,{data}">')
    values = config.to_dict() if hasattr(config, "to_dict") else config
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(values, indent=2)) + "</pre>")
    meta = folder / "meta.json"
    if meta.is_file():
        text = meta.read_bytes()[:1 << 20].decode("utf-8", errors="replace")
        parts.append("<h2>Run</h2><pre>" + html.escape(text) + "</pre>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(experiment.title)
            + f"</title><style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = folder / "report.html"
    # a name of its own: a run and a `manipex report` may write the page at the same time
    fd, tmp = tempfile.mkstemp(prefix=".report.html.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # the page declares utf-8; titles hold Δ, β
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    from .base import EXPERIMENTS, get_experiment
    from .config import ConfigError, short
    from .store import ResultStore

    folder = Path(folder)
    if not folder.exists():
        raise ConfigError(f"{folder} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder (give a run folder such as manipex-runs/quick)")
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
                                       sources=[f"{folder}/meta.json"])
    df = store.frame()
    tables = {k: v for k, v in experiment.tables(df, config).items() if v is not None} if len(df) else {}
    figures = experiment.figures(df, config, folder) if len(df) else []
    return write_report(folder, experiment, config, tables, figures, notes=damaged_note(store))
