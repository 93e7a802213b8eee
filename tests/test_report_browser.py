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


# -- every experiment's report, rendered at 1280 px -------------------------------------------------------

#: the tiniest settings that give every table and figure of each experiment
TINY_REPORTS = {
    "quick": {"n": 2, "batch": 2, "steps": 2, "methods": ["gradient", "lrp"], "defenses": ["none", "beta_smoothing"]},
    "rieger2020": {"n": 2, "batch": 2, "steps": 3, "methods": ["gradient", "lrp", "agg_mean"],
                   "transfer": ["gradient", "lrp"], "blank": ["gradient"], "budgets": []},
    "dombrowski2019": {"n": 2, "batch": 2, "steps": 3, "methods": ["gradient", "lrp"], "beta_methods": ["gradient"],
                       "betas": [1.0], "budgets": [0.5]},
    "tang_atex": {"n": 4, "batch": 4, "eps": [0.08], "steps": 3, "train_epochs": 1, "atex_n": 100},
    "pasliev2020": {"epochs": 1, "n_train": 64, "n_eval": 8, "methods": ["gradient", "lrp"], "noise_n": 8,
                    "models": ["com_gradient", "th_gradient", "ipp_gradient", "fc_gradient"],
                    "weight_noise": [0.0, 0.1], "examples": 1},
    "adult_fairwashing": {"epochs": 1},
    "audit": {"n": 2, "steps": 3, "eps": [0.1], "methods": ["gradient"], "defenses": ["beta_smoothing"],
              "betas": [3.0], "noise_n": 8, "weight_noise": [0.0, 0.1], "n_references": 1},
    "robust_training": {"n": 2, "batch": 2, "steps": 3, "defenses": ["softplus", "weight_decay"], "train_n": 32,
                        "epochs": 1, "ms_samples": 2, "ms_steps": 2},
}

#: appended to a copy of the report: after load, the page's facts as JSON in its title
PROBE = """<script>
window.addEventListener('load', function () {
  var iw = window.innerWidth, imgs = Array.prototype.slice.call(document.images);
  var over = Array.prototype.slice.call(document.querySelectorAll('body *')).filter(function (e) {
    return !e.closest('div.scroll') && e.getBoundingClientRect().right > iw + 0.5; }).map(function (e) {
    return e.tagName + '.' + e.className; });
  document.title = 'PROBE' + JSON.stringify({scroll: document.documentElement.scrollWidth, inner: iw,
    images: imgs.length, loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    over: over.slice(0, 5), headings: Array.prototype.slice.call(document.querySelectorAll('h2')).map(
      function (h) { return h.textContent; })});
});
</script>"""


def _probe(browser: str, page: Path, tmp: Path) -> dict:
    import html as html_lib
    import json

    probed = tmp / "probed.html"
    text = page.read_text(encoding="utf-8")
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,1400", "--virtual-time-budget=10000",
         "--dump-dom", probed.resolve().as_uri()],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    found = re.search(r"<title>PROBE(.*?)</title>", done.stdout, re.S)
    assert found, f"the probe did not run ({done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html_lib.unescape(found.group(1)))


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Each experiment's report at its tiniest settings (run once for the module)."""
    from manipex.experiments import run

    out, done = tmp_path_factory.mktemp("reports"), {}

    def get(name):
        if name not in done:
            run(name, overrides=TINY_REPORTS[name], out=out, quiet=True)
            done[name] = out / name
        return done[name]

    return get


@pytest.mark.parametrize("name", sorted(TINY_REPORTS))
def test_every_report_fits_1280_px_and_has_human_headings(name, reports, tmp_path):
    from manipex.experiments import EXPERIMENTS

    assert set(TINY_REPORTS) == set(EXPERIMENTS.names())
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)})")
    folder = reports(name)
    page = folder / "report.html"
    facts = _probe(browser, page, tmp_path)
    assert facts["inner"] == 1280
    assert facts["scroll"] <= facts["inner"], f"{name}: the page scrolls sideways ({facts['scroll']} px): {facts['over']}"
    assert not facts["over"], f"{name}: elements past the right edge: {facts['over']}"
    figures = sorted(p.stem for p in folder.rglob("*.png") if p.parent == folder)
    assert facts["images"] == len(figures) and facts["loaded"] == facts["images"], facts
    headings = {h.strip().lower() for h in facts["headings"]}
    for stem in figures:
        assert stem.replace("_", " ").lower() not in headings, f"{name}: figure {stem} is headed by its file name"
    text = page.read_text(encoding="utf-8")
    assert text.count('"dataset"') <= 1 and "paper_" not in text
    assert not re.search(r'<td class="num">-0(\.0*)?(e[+-]0+)?</td>', text)
    columns = [c for head in re.findall(r"<thead>(.*?)</thead>", text, re.S)
               for c in re.findall(r"<th[^>]*>([^<]*accuracy[^<]*)</th>", head)]
    assert all("(%)" in c for c in columns), columns
