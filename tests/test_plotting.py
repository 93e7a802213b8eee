"""Figures of maps, attacks and evaluations: every heatmap has a colour bar, the signed view is
symmetric about zero on the diverging map, the absolute view starts at zero, the figures are
returned (not saved) without changing the model or matplotlib's global state, and files are
written in every format asked for."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

import manipex  # noqa: E402
from manipex import figures, style  # noqa: E402
from manipex.attacks.model import ModelEvaluation  # noqa: E402
from manipex.experiments import plots  # noqa: E402

from conftest import assert_same_state, state_of  # noqa: E402


def _images(fig):
    """Every AxesImage of ``fig`` outside its colour bars, with its axis."""
    return [(ax, im) for ax in fig.axes for im in ax.get_images() if isinstance(im, AxesImage)]


def _heatmaps(fig):
    """The heatmap images of ``fig`` (those drawn on a relevance or signed colour map)."""
    names = {style.CMAP_ABSOLUTE, style.CMAP_SIGNED}
    return [im for _, im in _images(fig) if im.get_cmap().name in names]


def _global_state():
    return matplotlib.get_backend(), plt.get_fignums(), dict(matplotlib.rcParams)


def test_draw_map_views_have_colour_bars_and_the_documented_limits() -> None:
    h = torch.randn(3, 10, 10)
    fig = Figure()
    a, b, c = fig.subplots(1, 3)
    im_abs = figures.draw_map(a, h, sign="absolute")
    im_sig = figures.draw_map(b, h, sign="signed")
    im_over = figures.draw_map(c, h, sign="signed", image=torch.rand(3, 10, 10), alpha=0.5)
    assert len(fig.axes) == 6  # three panels, three colour bars
    for im in (im_abs, im_sig, im_over):
        assert im.colorbar is not None
    vmin, vmax = im_abs.get_clim()
    assert vmin == 0 and im_abs.get_cmap().name == style.CMAP_ABSOLUTE
    assert vmax == pytest.approx(torch.quantile(h.abs().sum(0).flatten().double(), 0.99).item())
    lo, hi = im_sig.get_clim()
    assert lo == -hi and hi > 0 and im_sig.get_cmap().name == style.CMAP_SIGNED
    assert hi == pytest.approx(torch.quantile(h.sum(0).abs().flatten().double(), 0.99).item())
    assert im_sig.colorbar.ax.get_ylabel() == "relevance (signed)"
    assert im_abs.colorbar.ax.get_ylabel() == "relevance"
    assert len(c.get_images()) == 2 and im_over.get_alpha() == 0.5  # the map over the grey input
    with pytest.raises(ValueError, match="sign"):
        figures.draw_map(a, h, sign="both")


def test_draw_map_of_an_all_zero_map_has_a_usable_scale() -> None:
    fig = Figure()
    ax = fig.subplots()
    im = figures.draw_map(ax, torch.zeros(5, 5), sign="signed")
    assert im.get_clim() == (-1.0, 1.0)


def test_plot_maps_returns_a_figure_and_changes_nothing(mnist_model) -> None:
    x, _ = manipex.data.load("mnist5k", split="test")
    x = x[:2]
    methods = ["gradient", "grad_x_input", "lrp"]
    before, mpl_before = state_of(mnist_model), _global_state()
    fig = manipex.plot_maps(mnist_model, x, methods)
    assert_same_state(before, state_of(mnist_model))
    assert _global_state() == mpl_before
    assert isinstance(fig, Figure) and "plot_maps" in manipex.__all__
    maps = _heatmaps(fig)
    assert len(maps) == len(methods) * len(x)  # one map panel per method and image
    assert all(im.colorbar is not None for im in maps)
    assert all(im.get_clim()[0] == 0 for im in maps)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["input", "gradient", "grad x input", "lrp"]

    signed = manipex.plot_maps(mnist_model, x, ["gradient", "integrated_gradients"], sign="signed", overlay=True,
                               method_options={"integrated_gradients": {"steps": 5}})
    for im in _heatmaps(signed):
        lo, hi = im.get_clim()
        assert lo == -hi and im.get_cmap().name == style.CMAP_SIGNED and im.colorbar is not None
    assert "integrated\ngradients" in [ax.get_title() for ax in signed.axes]
    assert _global_state() == mpl_before


def test_plot_maps_default_methods_and_bad_arguments(mnist_model) -> None:
    x, _ = manipex.data.load("mnist5k", split="test")
    fig = manipex.plot_maps(mnist_model, x[:1], target=3,
                            method_options={"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 2}})
    assert len(_heatmaps(fig)) == len(figures.DEFAULT_METHODS) == 6
    with pytest.raises(ValueError, match="sign"):
        manipex.plot_maps(mnist_model, x[:1], ["gradient"], sign="abs")
    with pytest.raises(ValueError, match="images"):
        manipex.plot_maps(mnist_model, x[0], ["gradient"])


def test_input_attack_plot_has_five_columns_and_colour_bars(mnist_model) -> None:
    from manipex.attacks import manipulate_input
    from manipex.objectives import TargetImage

    x, _ = manipex.data.load("mnist5k", split="test")
    result = manipulate_input(mnist_model, x[:2], TargetImage(x[2:4]), "gradient", steps=2, progress=False)
    mpl_before = _global_state()
    fig = result.plot(n=4)
    assert _global_state() == mpl_before
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2 * 5  # two images (n is capped), five columns
    maps = _heatmaps(fig)
    assert len(maps) == 2 * 3  # two maps and the perturbation per row
    assert all(im.colorbar is not None for im in maps)
    assert len(fig.axes) == len(panels) + len(maps)
    perturbation = [im for im in maps if im.get_cmap().name == style.CMAP_SIGNED]
    assert len(perturbation) == 2
    for i, im in enumerate(perturbation):
        lo, hi = im.get_clim()
        delta = (result.x_adv[i] - result.x[i]).sum(0).abs().max().item()
        assert lo == -hi and hi == pytest.approx(delta)  # the largest change is not clipped
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert f"{result.metric_name.replace('_', ' ')} {float(result.metric_before[0]):.3g}" in titles
    assert f"{float(result.metric_after[1]):.3g}" in titles
    assert "class kept" in titles or "class changed" in titles


def _evaluation() -> ModelEvaluation:
    table = pd.DataFrame({"original": [0.1, 0.2, 0.3, 0.6], "manipulated": [0.5, 0.7, 0.1, 0.65]},
                         index=pd.Index(["gradient", "grad_x_input", "integrated_gradients", "lrp"], name="method"))
    table.attrs["metric"] = "com_shift"
    return ModelEvaluation(table, {"accuracy_original": 0.91, "accuracy_manipulated": 0.875})


def test_model_evaluation_plot_is_labelled_and_its_legend_is_off_the_bars() -> None:
    mpl_before = _global_state()
    fig = _evaluation().plot()
    assert _global_state() == mpl_before
    (ax,) = fig.axes
    assert ax.get_ylabel() == "com shift" and ax.get_xlabel()
    assert "91.0%" in ax.get_title() and "87.5%" in ax.get_title()
    bars = list(ax.patches)
    assert len(bars) == 8
    colours = {matplotlib.colors.to_hex(b.get_facecolor()) for b in bars}
    assert colours == {style.color_for("original").lower(), style.color_for("manipulated").lower()}
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["original", "manipulated"]
    box = legend.get_window_extent()
    for bar in bars:
        assert not box.overlaps(bar.get_window_extent())
    assert box.x0 >= ax.get_window_extent().x1  # outside the data area
    assert fig.bbox.contains(box.x1 - 1, box.y1 - 1)  # and inside the figure


def test_model_evaluation_plot_says_the_direction_when_known() -> None:
    ev = _evaluation()
    ev.table.attrs["higher_is_better"] = False
    assert "lower" in ev.plot().axes[0].get_ylabel()


def test_map_grid_writes_every_format_asked_for(tmp_path: Path) -> None:
    images = torch.rand(2, 1, 8, 8)
    maps = {"gradient": torch.rand(2, 8, 8), "integrated_gradients": torch.randn(2, 1, 8, 8)}
    path = figures.map_grid(images, maps, tmp_path / "out" / "grid.png", formats=style.FORMATS)
    assert path == tmp_path / "out" / "grid.png"
    for fmt in style.FORMATS:
        written = path.with_suffix(f".{fmt}")
        assert written.exists() and written.stat().st_size > 0
    assert figures.map_grid(images, maps, tmp_path / "only.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "only.pdf").exists()  # without formats, only the path's own format
    assert figures.map_grid(images, maps, tmp_path / "nosuffix").suffix == ".png"
    signed = figures.map_figure(images, maps, sign="signed")
    assert all(im.get_clim()[0] == -im.get_clim()[1] for im in _heatmaps(signed))
    assert all(im.colorbar is not None for im in _heatmaps(signed))
    with pytest.raises(ValueError, match="format"):
        figures.map_grid(images, maps, tmp_path / "bad.png", formats=("jpeg2000",))


def _grid_rows(methods=("gradient", "integrated_gradients"), channels=3):
    return {m: [plots.Panel("input", torch.rand(channels, 8, 8), "input"),
                plots.Panel("manipulated input", torch.rand(1, 8, 8), "input"),
                plots.Panel("original map", torch.rand(8, 8), note="PCC 0.10"),
                plots.Panel("manipulated map", torch.rand(8, 8), note="PCC 0.90"),
                plots.Panel("perturbation", torch.randn(3, 8, 8), "signed")] for m in methods}


def test_manipulation_grid_has_colour_bars_and_an_unsaturated_perturbation(tmp_path: Path, monkeypatch) -> None:
    drawn = []
    original = figures.save_figure

    def spy(fig, path, **kwargs):
        drawn.append(fig)
        return original(fig, path, **kwargs)

    monkeypatch.setattr(figures, "save_figure", spy)
    rows = _grid_rows()
    path = plots.manipulation_grid(rows, tmp_path / "fig3.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "fig3.pdf").exists()  # one format per call (plots.each_format calls it per format)
    (fig,) = drawn
    images = [im for _, im in _images(fig)]
    assert len(images) == 2 * 5
    # every map has a colour bar, so has a grey input (its pixel scale); an RGB input has none
    grey = [im for im in images if im.get_array().ndim == 2]
    assert len(grey) == 2 * 4 and all(im.colorbar is not None for im in grey)
    assert all(im.colorbar is None for im in images if im.get_array().ndim == 3)
    signed = [im for im in images if im.get_cmap().name == style.CMAP_SIGNED]
    assert len(signed) == 2
    for im, method in zip(signed, rows):
        lo, hi = im.get_clim()
        assert lo == -hi and hi == pytest.approx(rows[method][-1].data.sum(0).abs().max().item())
    maps = [im for im in grey if im.get_cmap().name == style.CMAP_ABSOLUTE]
    assert len(maps) == 2 * 2 and all(im.get_clim()[0] == 0 for im in maps)
    # column titles on the first row, notes under the panels, the row label at the left
    axes = [im.axes for im in images]
    assert [ax.get_title() for ax in axes[:5]] == [p.title for p in rows["gradient"]]
    assert [ax.get_xlabel() for ax in axes[:5]] == ["", "", "PCC 0.10", "PCC 0.90", ""]
    assert axes[0].get_ylabel() == "gradient" and "integrated" in axes[5].get_ylabel()


def test_manipulation_grid_rows_of_unequal_length_and_bad_kinds(tmp_path: Path) -> None:
    rows = _grid_rows(("gradient",))
    rows["short"] = rows["gradient"][:2]
    assert plots.manipulation_grid(rows, tmp_path / "ragged.png").stat().st_size > 0
    with pytest.raises(ValueError, match="panel kind"):
        plots.manipulation_grid({"x": [plots.Panel("t", torch.rand(8, 8), "heat")]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no rows"):
        plots.manipulation_grid({}, tmp_path / "none.png")


def test_manipulation_grid_writes_the_formats_asked_for(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MANIPEX_FIGURE_FORMATS", ",".join(style.FORMATS))  # the suite writes PNG only
    rows = _grid_rows(("lrp",), channels=1)
    path = plots.manipulation_grid(rows, tmp_path / "fig3.png", formats=style.FORMATS)
    assert all(path.with_suffix(f".{f}").stat().st_size > 0 for f in style.FORMATS)
    each = plots.each_format(lambda p: plots.manipulation_grid(rows, p), tmp_path / "each" / "fig3.png")
    assert all(each.with_suffix(f".{f}").stat().st_size > 0 for f in style.FORMATS)


def test_dodged_lines_spread_around_their_x_and_stay_inside_the_axis() -> None:
    xs = [0.02, 0.04, 0.08]
    shifted = [plots.dodged(xs, k, 3) for k in range(3)]
    assert np.allclose(shifted[1], xs)  # the middle line stays
    assert np.allclose(shifted[0] - xs, -(shifted[2] - xs)) and np.all(shifted[2] > xs)
    assert np.all(shifted[2] - shifted[0] <= 0.2 * 0.02 + 1e-12)  # 20 % of the smallest gap
    assert np.allclose(plots.dodged(xs, 0, 1), xs)  # one line: not moved
    log = [plots.dodged([1.0, 10.0], k, 2, log=True) for k in range(2)]
    assert np.allclose(np.log10(log[1]) - np.log10(log[0]), 0.2)  # on a log axis, in decades
    one = [plots.dodged([0.08], k, 2)[0] for k in range(2)]
    assert 0.04 < one[0] < 0.08 < one[1] < 0.12  # within the half-width _single_x gives one x


def test_names_drawn_together_get_distinct_colours_and_keep_their_fixed_ones() -> None:
    assert sum(map(ord, "ab")) % 6 == sum(map(ord, "ba")) % 6  # the same place in the spare colours
    colours = style.colors_for(["ba", "ab", "gradient", "lrp", "atex", "softplus"])
    assert len(set(colours.values())) == 6
    assert colours["gradient"] == style.FIXED["gradient"] and colours["atex"] == style.FIXED["atex"]
    assert colours == style.colors_for(["softplus", "atex", "lrp", "gradient", "ab", "ba"])  # order-free
    # two names with the same fixed colour: the first in sorted order keeps it
    both = style.colors_for(["original", "none"])
    assert both["none"] == style.FIXED["none"] and both["original"] != both["none"]
    assert style.color_for("ab", among=["ba"]) != style.color_for("ba", among=["ab"])
    assert style.color_for("lrp") == style.FIXED["lrp"]
