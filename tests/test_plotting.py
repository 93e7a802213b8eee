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
from manipex.evaluation import ModelEvaluation  # noqa: E402
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


def _bars(images):
    """The distinct colour bars of ``images`` (a shared scale has one, on one of its images)."""
    bars = {id(im.colorbar): im.colorbar for im in images if im.colorbar is not None}
    return list(bars.values())


def _rows(images):
    """``images`` grouped by the row of their axes' grid cell."""
    rows = {}
    for im in images:
        rows.setdefault(im.axes.get_subplotspec().rowspan.start, []).append(im)
    return [rows[k] for k in sorted(rows)]


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
    # by default the maps of one image share a scale: one colour bar per row, the same limits
    assert len(_bars(maps)) == len(x)
    for row in _rows(maps):
        assert len({im.get_clim() for im in row}) == 1 and row[0].get_clim()[0] == 0
        assert len(_bars(row)) == 1
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["input", "Gradient", "Gradient ×\nInput", "LRP"]  # display names

    signed = manipex.plot_maps(mnist_model, x, ["gradient", "integrated_gradients"], sign="signed", overlay=True,
                               method_options={"integrated_gradients": {"steps": 5}}, shared_scale=False)
    for im in _heatmaps(signed):  # each map its own scale and bar
        lo, hi = im.get_clim()
        assert lo == -hi and im.get_cmap().name == style.CMAP_SIGNED and im.colorbar is not None
    assert "Integrated\nGradients" in [ax.get_title() for ax in signed.axes]
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


def test_input_attack_plot_shows_the_target_map_on_a_shared_scale(mnist_model) -> None:
    from manipex.attacks import manipulate_input
    from manipex.objectives import TargetImage

    x, _ = manipex.data.load("mnist5k", split="test")
    result = manipulate_input(mnist_model, x[:2], TargetImage(x[2:4]), "gradient", steps=2, progress=False)
    assert result.target_map is not None and result.target_map.shape == result.maps_before.shape
    mpl_before = _global_state()
    fig = result.plot(n=4)
    assert _global_state() == mpl_before
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2 * 6  # two images (n is capped); inputs, perturbation, and three maps
    heads = [ax.get_title().split("\n")[0] for ax in panels[:6]]
    assert heads == ["original", "manipulated", "perturbation", "original map", "target map", "manipulated map"]
    maps = _heatmaps(fig)
    assert len(maps) == 2 * 4  # three maps and the perturbation per row
    relevance = [im for im in maps if im.get_cmap().name == style.CMAP_ABSOLUTE]
    for i, row in enumerate(_rows(relevance)):  # a row's maps: one scale, one bar
        assert len(row) == 3 and len({im.get_clim() for im in row}) == 1 and len(_bars(row)) == 1
        target = row[1].get_array()  # the target map, normalised as drawn
        expected = result.target_map[i].double() / result.target_map[i].double().sum()
        assert np.allclose(np.asarray(target), expected.numpy())
    perturbation = [im for im in maps if im.get_cmap().name == style.CMAP_SIGNED]
    assert len(perturbation) == 2 and len(_bars(perturbation)) == 1  # one scale for the column
    delta = max((result.x_adv[i] - result.x[i]).sum(0).abs().max().item() for i in range(2))
    for im in perturbation:
        lo, hi = im.get_clim()
        assert lo == -hi and hi == pytest.approx(delta)  # the largest change is not clipped
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert f"PCC with target {float(result.metric_before[0]):.3g}" in titles
    assert f"{float(result.metric_after[1]):.3g}" in titles
    assert "class kept" in titles or "class changed" in titles
    assert "pcc_target" not in titles

    own = result.plot(shared_scale=False)  # each map its own bar, the perturbation of each row too
    own_maps = _heatmaps(own)
    assert all(im.colorbar is not None for im in own_maps) and len(_bars(own_maps)) == 2 * 4
    for i, im in enumerate(im for im in own_maps if im.get_cmap().name == style.CMAP_SIGNED):
        delta = (result.x_adv[i] - result.x[i]).sum(0).abs().max().item()
        assert im.get_clim()[1] == pytest.approx(delta)
    with pytest.raises(ValueError, match="shared_scale"):
        result.plot(shared_scale="rows")


def test_input_attack_plot_of_other_objectives_shows_what_they_have(mnist_model) -> None:
    from manipex.attacks import manipulate_input
    from manipex.objectives import CenterOfMass, TopKSuppression

    x, _ = manipex.data.load("mnist5k", split="test")
    topk = manipulate_input(mnist_model, x[:1], TopKSuppression(20), "gradient", steps=2, progress=False)
    fig = topk.plot()
    assert topk.target_map is None and topk.region is not None
    assert len([ax for ax in fig.axes if ax.get_images()]) == 5  # no target map column
    assert any(ax.collections for ax in fig.axes if ax.get_images())  # the top-k features outlined
    assert "top-k" in fig.get_suptitle()
    corner = manipulate_input(mnist_model, x[:1], CenterOfMass((0, 0)), "gradient", steps=2, progress=False)
    fig = corner.plot()
    markers = [line.get_marker() for ax in fig.axes for line in ax.lines]
    assert "x" in markers and "+" in markers  # the target point and the maps' centres of mass


def _evaluation(per_image: bool = False) -> ModelEvaluation:
    methods = ["gradient", "grad_x_input", "integrated_gradients", "lrp"]
    table = pd.DataFrame({"original": [0.1, 0.2, 0.3, 0.6], "manipulated": [0.5, 0.7, 0.1, 0.65]},
                         index=pd.Index(methods, name="method"))
    table.attrs["metric"] = "com_shift"
    frame = None
    if per_image:
        rng = np.random.default_rng(0)
        frame = pd.concat({m: pd.DataFrame({"original": table.loc[m, "original"] + rng.normal(0, 0.1, 12),
                                            "manipulated": table.loc[m, "manipulated"] + rng.normal(0, 0.1, 12)})
                           for m in methods}, names=["method", "image"])
        table = frame.groupby(level=0, sort=False).mean().rename_axis("method")
        table.attrs["metric"] = "com_shift"
    return ModelEvaluation(table, {"accuracy_original": 0.91, "accuracy_manipulated": 0.875}, frame)


def test_model_evaluation_plot_is_labelled_and_its_legend_is_off_the_bars() -> None:
    mpl_before = _global_state()
    fig = _evaluation().plot()
    assert _global_state() == mpl_before
    (ax,) = fig.axes
    assert "centre of mass" in ax.get_ylabel() and "(pixels)" in ax.get_ylabel() and ax.get_xlabel()
    assert "91.0 %" in ax.get_title() and "87.5 %" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Gradient", "Gradient ×\nInput", "Integrated\nGradients",
                                                           "LRP"]
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


def test_model_evaluation_plot_has_error_bars_over_the_images() -> None:
    from manipex.figures import bootstrap_ci

    ev = _evaluation(per_image=True)
    (ax,) = ev.plot().axes
    segments = [seg for c in ax.collections for seg in c.get_segments()]
    assert len(segments) == 8  # one interval per bar
    low, high = bootstrap_ci(ev.per_image.loc["lrp", "manipulated"])
    assert any(np.allclose(sorted(seg[:, 1]), [low, high]) for seg in segments)
    assert "n = 12 images" in ax.get_title() and "95 %" in ax.get_title()


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
    assert len(_bars(_heatmaps(signed))) == 2  # one bar per row (shared_scale="row")
    own = figures.map_figure(images, maps, sign="signed", shared_scale=False)
    assert all(im.colorbar is not None for im in _heatmaps(own))
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
    # the grey inputs share one pixel bar; an RGB input has none
    grey = [im for im in images if im.get_array().ndim == 2]
    assert len(grey) == 2 * 4
    inputs = [im for im in grey if im.get_cmap().name == style.CMAP_INPUT]
    assert len(inputs) == 2 and len(_bars(inputs)) == 1
    assert all(im.colorbar is None for im in images if im.get_array().ndim == 3)
    signed = [im for im in images if im.get_cmap().name == style.CMAP_SIGNED]
    assert len(signed) == 2 and len(_bars(signed)) == 1  # the perturbations: one symmetric scale
    delta = max(rows[m][-1].data.sum(0).abs().max().item() for m in rows)
    for im in signed:
        lo, hi = im.get_clim()
        assert lo == -hi and hi == pytest.approx(delta)  # nothing saturates
    maps = [im for im in grey if im.get_cmap().name == style.CMAP_ABSOLUTE]
    assert len(maps) == 2 * 2 and all(im.get_clim()[0] == 0 for im in maps)
    for row in _rows(maps):  # the maps of a row: one scale, one colour bar
        assert len({im.get_clim() for im in row}) == 1 and len(_bars(row)) == 1
    # column titles on the first row, notes under the panels, the row label at the left
    axes = [im.axes for im in images]
    assert [ax.get_title() for ax in axes[:5]] == [p.title for p in rows["gradient"]]
    assert [ax.get_xlabel() for ax in axes[:5]] == ["", "", "PCC 0.10", "PCC 0.90", ""]
    assert axes[0].get_ylabel() == "Gradient" and "Integrated" in axes[5].get_ylabel()
    drawn.clear()
    plots.manipulation_grid(rows, tmp_path / "own.png", shared_scale=False)  # a bar per panel
    grey = [im for _, im in _images(drawn[0]) if im.get_array().ndim == 2]
    assert len(_bars(grey)) == len(grey) == 2 * 4


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
    assert 0.04 < one[0] < 0.08 < one[1] < 0.12  # within the half-width single_x gives one x


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
