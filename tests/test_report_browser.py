"""The HTML report is self-contained (opens offline); optionally, headless Chromium renders it.

No experiment runs: a fake experiment, one pandas table and one small matplotlib PNG.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from manipex.experiments.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TABLE_TITLE = "Table 1: Δ-metrics of the attack"
CELL = "lrp_x_marker"


def _report(folder: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    ax.plot([0, 1], [1, 0])
    png = folder / "transfer_matrix.png"
    fig.savefig(png)
    plt.close(fig)
    table = pd.DataFrame({"method": [CELL, "<b>gradient</b>"], "mse": [0.012345678, 1.5]})
    experiment = SimpleNamespace(title="Fake <experiment> & β")
    return write_report(folder, experiment, {"n": 4, "methods": ["lrp"]}, {TABLE_TITLE: table}, [png])


def test_report_is_self_contained(tmp_path):
    page = _report(tmp_path).read_bytes().decode("utf-8")  # written as utf-8, as it declares
    assert "<meta charset='utf-8'>" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc", page, re.I)
    assert not re.search(r"<link\b", page, re.I) and "@import" not in page and "url(" not in page
    imgs = re.findall(r"<img\b[^>]*>", page)
    assert len(imgs) == 1 and 'src="data:image/png;base64,' in imgs[0]
    assert "transfer_matrix.png" not in re.sub(r'alt="[^"]*"', "", page)  # not linked by path
    assert TABLE_TITLE in page and "<table" in page and CELL in page and "0.0123" in page
    # titles and cells are escaped, not markup
    assert "&lt;b&gt;gradient&lt;/b&gt;" in page and "<b>gradient" not in page
    assert "Fake &lt;experiment&gt; &amp; β" in page


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
                    "install Debian's `chromium` to run this test")
    path = _report(tmp_path)
    profile = tmp_path / "profile"
    try:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", "--dump-dom", path.resolve().as_uri()],
            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{browser} --headless --dump-dom did not finish in 60 s")
    dom = done.stdout
    assert done.returncode == 0 and dom, f"{browser} failed ({done.returncode}): {done.stderr[-2000:]}"
    assert TABLE_TITLE in dom  # utf-8 decoded by the browser: the Δ survives
    assert "<table" in dom and CELL in dom and "0.0123" in dom
    assert re.search(r'<img\b[^>]*src="data:image/png;base64,', dom)
    assert "&lt;b&gt;gradient&lt;/b&gt;" in dom  # shown as text, not parsed as markup
