"""Numbers and figures as a paper shows them: maps compared on a shared colour scale with one
colour bar per scale, display names (not code names) in legends and titles, a SmoothGrad colour
with contrast on white that stays distinct under colour blindness, table cells formatted by kind
(similarities to 3 decimals within their range, counts as integers, flags yes / no, percentages
to one decimal) while the DataFrames keep full precision, one-line result reprs, and plain text
in ``manipex methods``."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

import manipex  # noqa: E402
from manipex import figures, style  # noqa: E402
from manipex.metrics import Direction  # noqa: E402
from manipex.experiments import plots  # noqa: E402


def _maps(fig):
    names = {style.CMAP_ABSOLUTE, style.CMAP_SIGNED}
    return [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name in names]


def _bars(images):
    return list({id(im.colorbar): im.colorbar for im in images if im.colorbar is not None}.values())


def _grid(n=3):
    torch.manual_seed(0)
    images = torch.rand(n, 1, 10, 10)
    # raw maps of very different sizes: a shared scale must show them normalised
    maps = {"gradient": torch.rand(n, 1, 10, 10) * 1e-3, "grad_x_input": torch.rand(n, 1, 10, 10) ** 4 * 50,
            "smoothgrad": torch.rand(n, 10, 10)}
    return images, maps


# --- shared colour scales -----------------------------------------------------------------------------------

def test_a_shared_scale_has_one_colour_bar_and_the_same_limits_on_every_map():
    images, maps = _grid()
    fig = figures.map_figure(images, maps, shared_scale=True)
    drawn = _maps(fig)
    assert len(drawn) == 3 * 3
    assert len(_bars(drawn)) == 1
    assert len({im.get_clim() for im in drawn}) == 1
    lo, hi = drawn[0].get_clim()
    assert lo == 0 and hi > 0
    # each map is shown normalised (sums to 1), so the tiny and the huge raw maps are comparable
    for im in drawn:
        assert float(np.asarray(im.get_array()).sum()) == pytest.approx(1.0)
    # the limit: the largest of the maps' 99th percentiles (no map saturates beyond 1 % of its pixels)
    expected = max(figures.map_limit(figures.normalized(m[i])) for m in maps.values() for i in range(3))
    assert hi == pytest.approx(expected)


@pytest.mark.parametrize("shared, bars", [("row", 3), ("column", 3), (False, 9)])
def test_shared_scales_per_row_per_column_or_none(shared, bars):
    images, maps = _grid()
    fig = figures.map_figure(images, maps, shared_scale=shared)
    drawn = _maps(fig)
    assert len(_bars(drawn)) == bars
    if shared:
        key = (lambda im: im.axes.get_subplotspec().rowspan.start) if shared == "row" else \
            (lambda im: im.axes.get_subplotspec().colspan.start)
        for _, group in itertools.groupby(sorted(drawn, key=key), key=key):
            group = list(group)
            assert len({im.get_clim() for im in group}) == 1 and len(_bars(group)) == 1
    FigureCanvasAgg(fig).draw()  # lays out
    with pytest.raises(ValueError, match="shared_scale"):
        figures.map_figure(images, maps, shared_scale="grid")


def test_the_maps_of_a_row_line_up_with_their_inputs(tmp_path, monkeypatch):
    """A shared bar below some columns must not shift those columns' images (the layout would
    shrink their cells): every image of a row has the same top and bottom."""
    from matplotlib.figure import Figure

    seen = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (seen.append(fig), original(fig, *a, **k))[1])
    rows = {m: [plots.Panel("input", torch.rand(1, 8, 8), "input"),
                plots.Panel("manipulated input\n(eps 0.1)", torch.rand(1, 8, 8), "input"),
                plots.Panel("original map", torch.rand(8, 8), note="PCC 0.10"),
                plots.Panel("perturbation", torch.randn(1, 8, 8), "signed")] for m in ("gradient", "lrp")}
    plots.manipulation_grid(rows, tmp_path / "grid.png")
    fig = seen[0]
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    by_row = {}
    for ax in fig.axes:
        for im in ax.get_images():
            box = im.get_window_extent(renderer)
            by_row.setdefault(ax.get_subplotspec().rowspan.start, []).append((box.y0, box.y1))
    for row in by_row.values():
        assert np.ptp([y0 for y0, _ in row]) < 1.5 and np.ptp([y1 for _, y1 in row]) < 1.5


# --- display names ------------------------------------------------------------------------------------------

CODE_NAMES = ("beta_smoothing", "grad_x_input", "agg_mean", "integrated_gradients", "guided_backprop", "none")


def _texts(fig):
    texts = [fig.get_suptitle()]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        legend = ax.get_legend()
        if legend is not None:
            texts += [t.get_text() for t in legend.get_texts()]
    for legend in fig.legends:
        texts += [t.get_text() for t in legend.get_texts()]
    return texts


def test_display_names_map_code_names_and_back():
    assert style.display_name("grad_x_input") == "Gradient × Input"
    assert style.display_name("beta_smoothing") == "β-smoothing"
    assert style.display_name("agg_mean") == "AGG-Mean" and style.display_name("lrp") == "LRP"
    assert style.display_name("none") == "no defense" and style.display_name("smoothgrad") == "SmoothGrad"
    assert style.display_name("my_method") == "my method"  # unknown: underscores as spaces
    assert style.display_name("gradient\ntypical") == "Gradient\ntypical"
    shown = [style.display_name(n) for n in style.DISPLAY_NAMES]
    for name, label in zip(style.DISPLAY_NAMES, shown):
        if shown.count(label) == 1:  # a metric may have two code names (topk, topk_intersection)
            assert style.code_name(label) == name
    assert style.code_name("my method") == "my_method"


def test_legends_and_ticks_use_display_names(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    seen = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (seen.append(fig), original(fig, *a, **k))[1])
    rows = [{"method": m, "defense": d, "image": i, "pcc_before": 0.1, "pcc_after": 0.5 + 0.01 * i}
            for m in ("grad_x_input", "integrated_gradients") for d in ("none", "beta_smoothing", "agg_mean")
            for i in range(4)]
    df = pd.DataFrame(rows)
    mean, low, high, _ = plots.aggregate(df, "method", "defense", "pcc_after")
    fig, ax = figures.subplots(figsize=(6, 3))
    plots.grouped_bars(ax, mean, low=low, high=high)
    texts = _texts(fig)
    assert {"no defense", "β-smoothing", "AGG-Mean", "Gradient × Input", "Integrated Gradients"} <= set(texts)
    assert not [t for t in texts if t in CODE_NAMES]
    plots.box_plot(df, "pcc_after", "method", tmp_path / "box.png", "PCC after")
    plots.metric_curves(df.assign(eps=0.1), "eps", "defense", ["pcc_after"], "method", tmp_path / "curves.png")
    for drawn in seen:
        found = [t for t in _texts(drawn) for name in CODE_NAMES if re.search(rf"\b{name}\b", t)]
        assert not found, found


# --- colours ------------------------------------------------------------------------------------------------

#: Machado, Oliveira & Fernandes (2009), full severity, on linear RGB.
CVD = {
    "normal": np.eye(3),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]]),
}


def _linear(colour: str) -> np.ndarray:
    c = np.array(matplotlib.colors.to_rgb(colour))
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _lab(linear: np.ndarray) -> np.ndarray:
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ np.clip(linear, 0, 1)
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> float:
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    cbar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(cbar ** 7 / (cbar ** 7 + 25 ** 7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    dl, dc, dhh = l2 - l1, c2 - c1, 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    lbar, cb = (l1 + l2) / 2, (c1 + c2) / 2
    hbar = h1 + h2 if c1 * c2 == 0 else (h1 + h2) / 2 + (180 if abs(h1 - h2) > 180 else 0)
    t = (1 - 0.17 * np.cos(np.radians(hbar - 30)) + 0.24 * np.cos(np.radians(2 * hbar))
         + 0.32 * np.cos(np.radians(3 * hbar + 6)) - 0.2 * np.cos(np.radians(4 * hbar - 63)))
    sl = 1 + 0.015 * (lbar - 50) ** 2 / np.sqrt(20 + (lbar - 50) ** 2)
    sc, sh = 1 + 0.045 * cb, 1 + 0.015 * cb * t
    rt = -np.sin(np.radians(60 * np.exp(-((hbar - 275) / 25) ** 2))) * 2 * np.sqrt(cb ** 7 / (cb ** 7 + 25 ** 7))
    return float(np.sqrt((dl / sl) ** 2 + (dc / sc) ** 2 + (dhh / sh) ** 2 + rt * (dc / sc) * (dhh / sh)))


def _contrast_on_white(colour: str) -> float:
    luminance = float(np.array([0.2126, 0.7152, 0.0722]) @ _linear(colour))
    return 1.05 / (luminance + 0.05)


def _closest(colour: str, others) -> float:
    return min(_ciede2000(_lab(m @ _linear(colour)), _lab(m @ _linear(o))) for m in CVD.values() for o in others)


METHODS = ("gradient", "grad_x_input", "integrated_gradients", "guided_backprop", "lrp", "pattern_attribution",
           "gradcam", "occlusion", "agg_mean", "agg_var")


def test_smoothgrad_has_contrast_on_white_and_stays_distinct_under_colour_blindness():
    colour = style.color_for("smoothgrad")
    assert colour == style.SMOOTHGRAD and colour.upper() != "#F0E442"
    assert _contrast_on_white(colour) >= 3.0  # WCAG 2.1 for graphics; the old yellow had 1.3
    assert _contrast_on_white("#F0E442") < 1.5
    others = [style.FIXED[m] for m in METHODS] + [style.FIXED["none"], style.FIXED["beta_smoothing"],
                                                  style.FIXED["agg_mean"]]
    closest = _closest(colour, others)
    # the closest pair of the other method colours, under the same simulations
    floor = min(_closest(a, [b]) for a, b in itertools.combinations([style.FIXED[m] for m in METHODS], 2))
    assert closest >= 10 and closest > floor
    assert style.colors_for(["smoothgrad", "gradient", "lrp"])["smoothgrad"] == colour
    assert "#F0E442" not in style.CYCLE


# --- tables -------------------------------------------------------------------------------------------------

def _table():
    table = pd.DataFrame({"spearman atex": [1.000001, 0.4567891], "topk softplus": [1.0000004, -1e-9],
                          "Δ-PCC": [0.123456, -0.5], "n": [3.0, 12.0], "class_kept": [1.0, 0.0],
                          "success": [0.875, 0.5], "accuracy (%)": [94.140625, 100.0],
                          "accuracy": [0.941406, 0.5], "mse": [3.2e-07, 1.1e-06]},
                         index=pd.Index([0.04, 0.08], name="eps"))
    table.attrs["metric"] = "x"
    return table


def test_tables_are_formatted_by_kind_and_keep_their_numbers():
    table = _table()
    before = table.copy()
    shown = style.format_table(table)
    assert list(shown["spearman atex"]) == ["1.000", "0.457"]  # 3 decimals, clipped to [-1, 1]
    assert list(shown["topk softplus"]) == ["1.000", "0.000"]  # [0, 1], never -0.000
    assert list(shown["Δ-PCC"]) == ["0.123", "-0.500"]
    assert list(shown["n"]) == ["3", "12"]  # counts as integers, not 3.0
    assert list(shown["class_kept"]) == ["yes", "no"]  # flags
    assert list(shown["success"]) == ["87.5 %", "50.0 %"]  # a mean of flags: a share
    assert list(shown["accuracy (%)"]) == ["94.1", "100.0"]  # percent, one decimal (unit in the header)
    assert list(shown["accuracy"]) == ["94.1 %", "50.0 %"]
    assert list(shown["mse"]) == ["3.20e-07", "1.10e-06"]
    assert list(shown.index) == ["0.04", "0.08"] and shown.index.name == "eps"
    pd.testing.assert_frame_equal(table, before)  # the numbers themselves are not rounded
    assert table["spearman atex"].iloc[0] == 1.000001
    assert style.format_value(True) == "yes" and style.format_value(float("nan"), "pcc") == "–"
    assert style.format_column([1.5, -1.2], "pcc") == ["1.000", "-1.000"]


def test_the_report_and_the_terminal_show_the_same_cells():
    from manipex.experiments.report import table_html
    from manipex.experiments.runner import _text_table

    table = _table()
    page = table_html(table)
    for cell in ("1.000", "0.457", ">3<", ">yes<", "87.5 %", "94.1<", "94.1 %"):
        assert cell in page, cell
    assert "1.000001" not in page and "94.140625" not in page and ">3.0<" not in page
    printed = _text_table(table)
    assert "1.000" in printed and "94.1 %" in printed and "yes" in printed
    assert "1.000001" not in printed and "94.1406" not in printed and " 3.0 " not in printed
    findings = pd.DataFrame({"paper": ["a claim"], "ours": ["our number"]}, index=pd.Index(["claim"]))
    assert _text_table(findings).startswith("- claim")  # sentences: indented lines, as before
    bools = pd.DataFrame({"kept": [True, False]})
    assert '<td class="num">yes</td>' in table_html(bools)



def test_the_report_names_methods_and_defenses_as_papers_do_and_the_table_keeps_code_names():
    from manipex.experiments.report import table_html

    table = pd.DataFrame({"none": [0.356, 0.221], "beta_smoothing": [0.183, -0.003], "my_defense": [0.1, 0.2]},
                         index=pd.Index(["grad_x_input", "lrp"], name="method"))
    page = table_html(table)
    for shown in (">Gradient × Input<", ">LRP<", ">no defense<", ">β-smoothing<", ">my_defense<"):
        assert shown in page, shown  # a name manipex does not know is shown as it is
    assert ">grad_x_input<" not in page and ">beta_smoothing<" not in page
    assert list(table.index) == ["grad_x_input", "lrp"] and "beta_smoothing" in table.columns

# --- reprs --------------------------------------------------------------------------------------------------

def test_result_reprs_are_one_line_summaries(mnist_model):
    from manipex.attacks import InputAttackResult, evaluate_manipulation, manipulate_input
    from manipex.attacks.model import ModelAttackResult
    from manipex.defenses.detection import DetectionReport
    from manipex.defenses.robust import RobustTrainingResult
    from manipex.evaluation import RobustnessScores
    from manipex.objectives import CenterOfMass, TargetImage
    from manipex.evaluation import RandomizationResult

    x, y = manipex.data.load("mnist5k", split="test")
    x, y = x[:64], y[:64]
    result = manipulate_input(mnist_model, x, TargetImage(x.flip(0)), "gradient", steps=1, progress=False)
    text = repr(result)
    assert isinstance(result, InputAttackResult)
    assert text.startswith("InputAttackResult(64 images, method 'gradient', objective TargetImage, PCC with target ")
    assert "success " in text and "/64" in text and "class kept" in text and "1 step)" in text
    evaluation = evaluate_manipulation(mnist_model, mnist_model, (x, y), CenterOfMass((0, 0)), methods=["gradient"])
    attack = ModelAttackResult(mnist_model, [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}],
                               [n for n, _ in mnist_model.named_parameters()][:2])
    randomization = RandomizationResult(pd.DataFrame(), torch.rand(2, 4, 2, 64), ("original", "a", "b", "c"),
                                        ("gradient", "lrp"), ("ssim", "spearman"), "cascading",
                                        torch.zeros(64, dtype=torch.long))
    scores = RobustnessScores(torch.rand(64), torch.rand(64), torch.rand(64), x, torch.ones(64))
    report = DetectionReport(0.81, 0.52, True, tuple(float(v) for v in torch.rand(30)), "gradient", 0.003)
    robust = RobustTrainingResult(mnist_model, [{"epoch": 1, "loss": 0.8, "accuracy": 0.9}])
    for obj in (result, evaluation, attack, randomization, scores, report, robust):
        text = repr(obj)
        assert len(text) < 300 and "\n" not in text and "tensor(" not in text, text
        assert text.startswith(type(obj).__name__ + "(")
    assert "accuracy" in repr(evaluation) and "%" in repr(evaluation) and "Gradient" in repr(evaluation)
    assert "loss 0.5 -> 0.25" in repr(attack) and "2 of " in repr(attack)
    assert evaluation.per_image.loc["gradient"].shape == (64, 2)
    assert evaluation.table.attrs["n"] == 64 and evaluation.table.attrs["direction"] is Direction.LOWER


# --- manipex methods ----------------------------------------------------------------------------------------

def test_methods_prints_plain_text(capsys):
    from manipex.cli import main, plain_text

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "`" not in out and ":func:" not in out and ":class:" not in out
    assert re.search(r"^smoothgrad\s+SmoothGrad", out, re.M)
    names = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert names == manipex.methods()
    assert plain_text("``x * y``; :func:`manipex.explain`; :class:`~manipex.objectives.TargetMap`; *a*, **b**") \
        == "x * y; manipex.explain; TargetMap; a, b"
