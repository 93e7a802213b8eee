"""Structure of the experiments' figures: titles, labelled axes, n, legends outside the data,
one colour per name in every panel, every format written (synthetic results, no experiment run)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from manipex import style  # noqa: E402
from manipex.experiments import plots  # noqa: E402
from manipex.experiments.audit import Audit  # noqa: E402
from manipex.experiments.quick import Quick  # noqa: E402


@pytest.fixture(autouse=True)
def every_format(monkeypatch):
    """The suite writes PNG only (conftest); here every format is checked."""
    monkeypatch.setenv("MANIPEX_FIGURE_FORMATS", ",".join(style.FORMATS))

RNG = np.random.default_rng(0)
N = 6  # images per group


def _images(**columns):
    """Rows of per-image results: every combination of ``columns`` for images 0..N-1."""
    import itertools

    keys = list(columns)
    rows = [dict(zip(keys, combo), image=i) for combo in itertools.product(*columns.values()) for i in range(N)]
    return pd.DataFrame(rows)


def _quick():
    df = _images(method=["gradient", "lrp"], defense=["none", "beta_smoothing"])
    return df.assign(pcc_before=RNG.random(len(df)) * 0.2, pcc_after=RNG.random(len(df)))


def _beta():
    df = _images(method=["gradient", "lrp"], beta=[10.0, 3.0, 1.0, "relu"])
    return df.assign(beta=df.beta.astype(object), pcc_target=RNG.random(len(df)), pcc_original=RNG.random(len(df)))


def _transfer():
    df = _images(attacked=["gradient", "lrp"], evaluated=["gradient", "lrp", "agg_mean"])
    return df.assign(pcc_after=RNG.random(len(df)), mse_after=RNG.random(len(df)) * 1e-6,
                     top10_after=RNG.random(len(df)), d_pcc=RNG.random(len(df)))


def _table1():
    df = _images(method=["guided_backprop", "agg_mean"])
    return df.assign(pcc_after=RNG.random(len(df)), mse_after=RNG.random(len(df)) * 1e-6,
                     top10_after=RNG.random(len(df)), pcc_before=0.1)


def _tang(eps=(0.04, 0.08)):
    df = _images(attack=["untargeted", "targeted"], model=["softplus", "atex"], eps=list(eps))
    return df.assign(spearman=RNG.random(len(df)), topk=RNG.random(len(df)), ssim=RNG.random(len(df)))


def _history(epochs=(1,)):
    return pd.DataFrame([{"model": m, "epoch": e, "classification": 0.5 / e, "objective": 2.0 / e}
                         for m in ("com_gradient", "th_gradient") for e in epochs])


def _noise():
    rows = []
    for model, kinds in (("acc", ("com", "th")), ("com_gradient", ("com",)), ("th_gradient", ("th",))):
        for kind in kinds:
            for sigma in (0.0, 0.25, 0.5):
                rows.append({"model": model, "objective": kind, "sigma": sigma, "accuracy": RNG.random(),
                             "metric": RNG.random(), "metric_name": "com_distance_to_point" if kind == "com"
                             else "pcc_target"})
    return pd.DataFrame(rows)


def _features():
    return pd.DataFrame([{"feature": f, "model": m, "importance": RNG.random()}
                         for m in ("original", "fairwashed") for f in ("age", "race=White", "sex=Male", "hours")])


def _audit():
    df = _images(objective=["targeted", "topk"], method=["gradient", "lrp"], eps=[0.05, 0.1])
    return df.assign(part="attack", success=(RNG.random(len(df)) > 0.5).astype(float))


# --- what is checked ---------------------------------------------------------------------------------------
class Drawn:
    """Capture the Figure that a plots function saves (its first ``savefig``)."""

    def __init__(self, monkeypatch):
        self.figures = []
        original = Figure.savefig

        def savefig(fig, *args, **kwargs):
            if not any(f is fig for f in self.figures):
                self.figures.append(fig)
            return original(fig, *args, **kwargs)

        monkeypatch.setattr(Figure, "savefig", savefig)


def _data_artists(ax):
    """The artists of ``ax`` that show data: lines, bars and boxes, scatter points, error bars."""
    return list(ax.lines) + list(ax.patches) + list(ax.collections) + list(ax.images)


def _colour(handle) -> str:
    """The colour of a legend handle or a line: a line's colour, a bar's or a point's face."""
    if hasattr(handle, "patches"):  # a BarContainer
        handle = handle.patches[0]
    if hasattr(handle, "get_xdata"):
        return matplotlib.colors.to_hex(handle.get_color())
    return matplotlib.colors.to_hex(np.atleast_2d(handle.get_facecolor())[0], keep_alpha=False)


def _texts(fig):
    texts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.texts]
        texts += [t.get_text() for t in ax.get_xticklabels()]
    return "\n".join(texts)


def _check(fig, path: Path, *, n: int, what: str = "images", colours=True):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    title = fig._suptitle.get_text() if fig._suptitle else ""
    plotted = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and _data_artists(ax)]
    assert plotted
    for ax in plotted:
        assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), (path.name, ax.get_title())
        assert ax.get_title().strip() or title.strip(), path.name
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        for other in plotted:  # a legend outside the data: it overlaps no plotted artist of any panel
            for artist in _data_artists(other):
                extent = artist.get_window_extent(renderer)
                if extent.width > 0 or extent.height > 0:
                    assert not box.overlaps(extent), (path.name, artist)
        assert not box.overlaps(ax.get_window_extent(renderer)), f"{path.name}: legend inside the axes"
    if colours:  # the same name has the same colour, the house colour, in every panel
        seen = {}
        for ax in plotted:
            handles, labels = ax.get_legend_handles_labels()
            for line in ax.lines:
                label = str(line.get_label())
                if not label.startswith("_"):
                    handles.append(line)
                    labels.append(label)
            for handle, label in zip(handles, labels):
                seen.setdefault(label, set()).add(_colour(handle))
        for label, found in seen.items():
            assert len(found) == 1, (path.name, label, found)
        colour_of = {label: next(iter(found)) for label, found in seen.items()}
        # different names, different colours; each the house's (its fixed colour where it has one)
        assert len(set(colour_of.values())) == len(colour_of), (path.name, colour_of)
        # legends show display names ("β-smoothing", "LRP"): the house colour is that of the code name
        house = style.colors_for(style.code_name(label) for label in colour_of)
        for label, colour in colour_of.items():
            assert colour == matplotlib.colors.to_hex(house[style.code_name(label)]), (path.name, label)
    assert f"n = {n} {what}" in _texts(fig), path.name
    for fmt in style.FORMATS:
        written = path.with_suffix(f".{fmt}")
        assert written.is_file() and written.stat().st_size > 0, written


CASES = {
    "quick": lambda tmp: Quick().figures(_quick(), Quick.Config(), tmp),
    "audit": lambda tmp: Audit().figures(_audit(), None, tmp),
    "beta_curve": lambda tmp: [plots.beta_curve(_beta(), tmp / "beta.png")],
    "box_plot": lambda tmp: [plots.box_plot(_quick().query("defense == 'none'").assign(gain=lambda d: d.pcc_after - d.pcc_before), "gain",
                                            "method", tmp / "box.png", "rise of PCC (higher = more manipulated)")],
    "transfer_heatmap": lambda tmp: [plots.transfer_heatmap(
        _transfer().pivot_table(index="attacked", columns="evaluated", values="d_pcc"), tmp / "heat.png", "transfer",
        label="mean rise", n=N)],
    "transfer_scatter": lambda tmp: [plots.transfer_scatter(_transfer(), "gradient", tmp / "scatter.png")],
    "robustness_scatter": lambda tmp: [plots.robustness_scatter(_table1(), "guided_backprop", "agg_mean",
                                                                tmp / "robust.png")],
    "training_curves": lambda tmp: [plots.training_curves(_history(), tmp / "train.png", n=N)],
    "weight_noise_curves": lambda tmp: [plots.weight_noise_curves(_noise(), tmp / "noise.png", n=N)],
    "feature_importance": lambda tmp: [plots.feature_importance(_features(), tmp / "features.png", n=N)],
    "metric_curves": lambda tmp: [plots.metric_curves(_tang(), "eps", "model", ["spearman", "topk"], "attack",
                                                      tmp / "curves.png", labels={"spearman": "Spearman (higher)"})],
}
WHAT = {"training_curves": "training images", "weight_noise_curves": "held-out images",
        "feature_importance": "test rows"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_experiment_figure_is_labelled_with_legends_outside(name, tmp_path, monkeypatch):
    drawn = Drawn(monkeypatch)
    paths = CASES[name](tmp_path)
    assert len(paths) == 1 and Path(paths[0]).suffix == ".png"  # the report embeds the PNG
    assert Path(paths[0]).read_bytes().startswith(b"\x89PNG")
    _check(drawn.figures[0], Path(paths[0]), n=N, what=WHAT.get(name, "images"))


def test_one_colour_per_name_across_figures(tmp_path, monkeypatch):
    """gradient is gradient's colour in the bar chart, the curves and the scatter alike."""
    drawn = Drawn(monkeypatch)
    plots.beta_curve(_beta(), tmp_path / "beta.png")
    Audit().figures(_audit(), None, tmp_path)
    for fig in drawn.figures:
        for ax in fig.axes:
            for line in ax.lines:
                if line.get_label() == style.display_name("gradient"):
                    assert matplotlib.colors.to_hex(line.get_color()) == style.color_for("gradient").lower()


def test_one_epoch_draws_a_marker_on_one_integer_tick(tmp_path, monkeypatch):
    drawn = Drawn(monkeypatch)
    plots.training_curves(_history((1,)), tmp_path / "one.png", n=N)
    fig = drawn.figures[0]
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        assert [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]] == [1.0]
        low, high = ax.get_xlim()
        assert high - low >= 0.5  # not collapsed onto the point
        assert all(line.get_marker() not in (None, "None", "") for line in ax.lines)
    plots.training_curves(_history((1, 2, 3, 4, 5)), tmp_path / "five.png", n=N)
    for ax in drawn.figures[1].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)


def test_scatter_labels_say_mse_is_a_distance(tmp_path, monkeypatch):
    drawn = Drawn(monkeypatch)
    plots.transfer_scatter(_transfer(), "gradient", tmp_path / "scatter.png")
    labels = {ax.get_title(): ax.get_xlabel() + ax.get_ylabel() for ax in drawn.figures[0].axes}
    assert "lower = closer" in labels["MSE"] and "similarity" not in labels["MSE"]
    assert "higher = closer" in labels["PCC"]


def test_single_budget_is_not_collapsed(tmp_path, monkeypatch):
    drawn = Drawn(monkeypatch)
    plots.metric_curves(_tang((0.08,)), "eps", "model", ["spearman"], "attack", tmp_path / "one.png")
    for ax in drawn.figures[0].axes:
        low, high = ax.get_xlim()
        assert low < 0.08 < high and high - low > 0.01


def test_bootstrap_interval_is_seeded_and_contains_the_mean():
    values = RNG.normal(size=50)
    low, high = plots.bootstrap_ci(values)
    assert (low, high) == plots.bootstrap_ci(values)
    assert low < values.mean() < high
    assert plots.bootstrap_ci([3.0]) == (3.0, 3.0)
    centre, low, high, n = plots.summarize([1.0, 2.0, float("nan"), 3.0], "median")
    assert centre == 2.0 and n == 3 and low <= 2.0 <= high
    assert plots.n_text([4, 4]) == "n = 4 images" and plots.n_text([2, 4]) == "n = 2-4 images per point"


def test_figure_formats_follow_the_environment(monkeypatch):
    monkeypatch.setenv("MANIPEX_FIGURE_FORMATS", "svg")
    assert style.figure_formats() == ("png", "svg")  # the PNG the report embeds, always
    monkeypatch.delenv("MANIPEX_FIGURE_FORMATS")
    assert style.figure_formats() == style.FORMATS
    monkeypatch.setenv("MANIPEX_FIGURE_FORMATS", "gif")
    with pytest.raises(ValueError, match="gif"):
        style.figure_formats()
