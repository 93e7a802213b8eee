"""A self-contained HTML page per run: tables and figures (embedded), opens offline."""
from __future__ import annotations

import base64
import html
import json
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
                 figures: Sequence[Path]) -> Path:
    """Write ``folder/report.html`` and return its path."""
    parts: List[str] = [f"<h1>{html.escape(experiment.title)}</h1>"]
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
    if meta.exists():
        parts.append("<h2>Run</h2><pre>" + html.escape(meta.read_text(encoding="utf-8")) + "</pre>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(experiment.title)
            + f"</title><style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = folder / "report.html"
    tmp = folder / "report.html.tmp"
    tmp.write_text(page, encoding="utf-8")  # the page declares utf-8; titles hold Δ, β
    tmp.replace(path)
    return path


def report_from_folder(folder: Path) -> Path:
    """Rebuild the report of a finished (or partial) run folder."""
    from .base import get_experiment
    from .config import ConfigError
    from .store import ResultStore

    store = ResultStore(folder)
    meta = store.meta()
    if meta is None:
        raise ConfigError(f"{folder} is not a manipex run folder (no meta.json)")
    experiment = get_experiment(meta["experiment"])
    known = experiment.Config.fields()  # a folder of an older version may hold keys since removed
    config = experiment.Config.resolve({k: v for k, v in meta["config"].items() if k in known},
                                       sources=[f"{folder}/meta.json"])
    df = store.frame()
    tables = {k: v for k, v in experiment.tables(df, config).items() if v is not None} if len(df) else {}
    return write_report(folder, experiment, config, tables, experiment.figures(df, config, folder) if len(df) else [])
