"""The report's formatting: numbers per column, one accuracy convention, human times, the config
once, published numbers in a block of their own with the paper's setting, and a declared heading
for every figure. No experiment runs (fake experiments and tables)."""
from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from manipex.experiments.base import EXPERIMENTS, get_experiment
from manipex.experiments.tables import Table, Tables
from manipex.experiments.published import RIEGER_TABLE1, TANG_TABLE1, difference, our_setting
from manipex.experiments.report import (caption_for, format_column, human_duration, human_time, table_html,
                                        write_report)


def test_format_column_picks_notation_from_the_magnitude():
    assert format_column([-0.0, 0.0]) == ["0", "0"]
    assert format_column([-0.00004, 0.01]) == ["0.0000", "0.0100"]  # rounds to zero: no "-0.0000"
    assert format_column([-0.0001, 0.5]) == ["-1.00e-04", "5.00e-01"]  # four decades apart
    assert format_column([-0.00001, 0.123]) == ["-1.00e-05", "1.23e-01"]  # spans too many decades
    sci = format_column([3.2e-07, 1.1e-06])
    assert sci == ["3.20e-07", "1.10e-06"]
    assert format_column([0.123]) == ["0.123"]
    assert format_column([3, 12, -4]) == ["3", "12", "-4"] and format_column([1.0, 0.0]) == ["1", "0"]
    assert format_column([92.46, 5.0], "accuracy (%)") == ["92.5", "5.0"]
    assert format_column([float("nan"), None, 0.5]) == ["–", "–", "0.5"]
    assert format_column([0.02, 0.08]) == ["0.02", "0.08"] and format_column([0.05, 0.0291]) == ["0.0500", "0.0291"]
    for cell in format_column([-1e-12, 1e-12]) + format_column([-0.0004, 0.9]):
        assert float(cell) != 0 or not cell.startswith("-")


def test_table_html_aligns_numbers_right_and_text_left():
    table = pd.DataFrame({"method": ["lrp", "gradient"], "mse": [3.2e-07, -0.0], "n": [4, 5]}).set_index("method")
    page = table_html(table)
    assert '<div class="scroll">' in page
    assert '<th class="txt">LRP</th>' in page and '<td class="num">3.20e-07</td>' in page
    assert '<td class="num">0.00e+00</td>' in page and not re.search(r">-0[.<]", page)
    assert '<td class="num">4</td>' in page
    wide = pd.DataFrame([[0.5, 90.0, 1e-8]], columns=pd.MultiIndex.from_tuples(
        [("spearman", "atex"), ("accuracy (%)", "atex"), ("mse", "atex")]), index=pd.Index([0.08], name="eps"))
    page = table_html(wide)
    assert ">spearman / atex<" in page and '<td class="num">90.0</td>' in page and ">1.00e-08<" in page
    assert '<th class="num">0.08</th>' in page
    twice = pd.DataFrame([[1, "a"]], columns=["x", "x"])  # duplicate names: each column its own
    assert '<td class="num">1</td><td class="txt">a</td>' in table_html(twice)


def _folder_with_meta(tmp_path, started):
    (tmp_path / "meta.json").write_text(json.dumps({"experiment": "quick", "config": {"n": 4, "unique_key_42": 1},
                                                    "seed": 0, "environment": {"torch": "x"}, "started": started}))
    (tmp_path / "results.jsonl").write_text("")
    return tmp_path


def test_human_times_and_the_config_printed_once(tmp_path):
    assert human_time(0) == "1970-01-01 00:00 UTC"
    assert human_duration(252) == "4 min 12 s" and human_duration(3.25) == "3.2 s" and human_duration(3720) == "1 h 2 min"
    started = time.time() - 100
    folder = _folder_with_meta(tmp_path, started)
    page = write_report(folder, SimpleNamespace(title="T"), {"n": 4, "unique_key_42": 1}, {}, []).read_text()
    assert page.count("unique_key_42") == 1
    assert human_time(started) in page and re.search(r"1 min \d+ s", page)
    assert f"{started}" not in page


def test_accuracy_is_a_percentage_with_one_decimal():
    """One convention: accuracy in percent, one decimal, the column named "accuracy (%)" (the
    experiments' own tables are checked on real runs in test_report_browser)."""
    tang = get_experiment("tang_atex")
    config = tang.Config.resolve({"eps": [0.08]})
    rows = pd.DataFrame([{"attack": "untargeted", "eps": 0.08, "model": m, "spearman": 0.7, "topk": 0.6, "ssim": 0.5,
                          "accuracy": 0.875} for m in ("atex", "softplus")])
    tables = tang.tables(rows, config)
    ours = tables["untargeted"]
    published = tables["table1_published"]
    assert ours["accuracy (%) atex"].iloc[0] == pytest.approx(87.5)
    assert published["accuracy (%) atex"].loc[0.08] == pytest.approx(87.0)
    assert not [c for c in list(ours.columns) + list(published.columns) if "accuracy" in c and "(%)" not in c]
    assert '<td class="num">87.5</td>' in table_html(ours)
    assert format_column([0.9], "accuracy (%)") == ["0.9"] and format_column([100.0], "accuracy (%)") == ["100.0"]


def test_published_block_carries_the_papers_setting(tmp_path):
    config = SimpleNamespace(dataset="mnist5k", arch="auto", weights="", eps=0.2,
                             auto_arch=lambda: "mnist_cnn")
    pub = RIEGER_TABLE1.table(config, "the order of methods")
    assert "paper_pcc" not in pub.columns and "pcc" in pub.columns
    assert "ImageNet" in pub.attrs["published"] and "VGG16" in pub.attrs["published"]
    assert "224 px" in pub.attrs["published"] and "MNIST" in pub.attrs["ours"]
    line = difference(RIEGER_TABLE1.setting, config, "the order of methods")
    assert line.startswith("MNIST-5k 28×28 CNN vs ImageNet VGG16 224 px") and "not comparable" in line
    assert our_setting(config).startswith("MNIST-5k, CNN, 28 px, eps 0.2")
    ours = pd.DataFrame({"Δ-PCC": [0.2]}, index=pd.Index(["gradient"], name="method"))
    page = write_report(tmp_path, SimpleNamespace(title="T"), {}, {"ours": ours, "published": pub}, []).read_text()
    block = page[page.index('<div class="published">'):]
    assert "Paper&#x27;s setting" in block or "Paper's setting" in block
    assert "ImageNet, VGG16, 224 px" in block and "not comparable" in block


@pytest.mark.parametrize("name", sorted(EXPERIMENTS.names()))
def test_every_figure_has_a_declared_heading(name):
    """Every figure an experiment writes (its file stems, read from its module) has a heading and a
    caption of its own, not its file name."""
    import inspect

    experiment = get_experiment(name)
    source = inspect.getsource(type(experiment).figures)
    stems = re.findall(r"""["']([\w{}]+)\.png["']""", source)
    assert stems or name not in ("quick",)
    for stem in stems:
        concrete = re.sub(r"\{[^}]*\}", "x", stem)
        found = caption_for(experiment, concrete)
        assert found, f"{name}: figure {stem!r} has no declared heading (add it to {type(experiment).__name__}.captions)"
        heading, caption = found
        assert heading and caption and heading.lower() != concrete.replace("_", " ").lower()


@pytest.mark.parametrize("name", sorted(EXPERIMENTS.names()))
def test_every_declared_table_has_a_short_id_a_heading_and_a_caption(name):
    """Issue 27: tables are declared once (id, title, heading, caption), not found by matching
    their English titles; ids are short identifiers, unique per experiment."""
    experiment = get_experiment(name)
    assert experiment.TABLES, f"{name} declares no tables"
    ids = [t.id for t in experiment.TABLES]
    assert len(ids) == len(set(ids))
    for table in experiment.TABLES:
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,20}", table.id), table.id
        assert table.title and table.caption and (table.heading or table.title)


def test_tables_are_indexed_by_id_in_report_order_and_name_what_is_missing(tmp_path):

    tables = Tables([Table("verdict", "Verdict", caption="In words."),
                     Table("rise", "Rise at eps = {eps}", "Rise ({eps})", "Mean rise at eps = {eps}.")])
    tables.add("verdict", None)  # keeps its place
    tables.add("rise", pd.DataFrame({"x": [1.0]}), eps="0.1")
    assert list(tables) == ["rise"] and len(tables) == 1  # a place without a frame shows nothing
    tables.add("verdict", pd.DataFrame({"finding": ["ok"]}))
    assert list(tables) == ["verdict", "rise"]
    rise = tables.table("rise")
    assert (rise.title, rise.heading, rise.caption) == ("Rise at eps = 0.1", "Rise (0.1)", "Mean rise at eps = 0.1.")
    assert tables.table("verdict").heading == "Verdict" and tables.titles()["rise"] == "Rise at eps = 0.1"
    with pytest.raises(KeyError, match="no table 'curvature' is declared; declared: verdict, rise"):
        tables.add("curvature", pd.DataFrame())
    with pytest.raises(KeyError, match="no table 'Rise at eps = 0.1' in this run; its tables: verdict, rise"):
        tables["Rise at eps = 0.1"]  # by id, not by title
    with pytest.raises(ValueError, match="table 'rise': .* needs the field 'eps'"):
        tables.add("rise", pd.DataFrame())
    with pytest.raises(ValueError, match="declared twice"):
        Tables([Table("a", "A"), Table("a", "B")])
    page = write_report(tmp_path, SimpleNamespace(title="T"), {}, tables, []).read_text()
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Rise (0.1)</h2>") and "Mean rise at eps = 0.1." in page
