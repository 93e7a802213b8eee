"""manipex draws without touching matplotlib's global state: the user's backend, their open
pyplot figures, pyplot's current figure and the rcParams stay as they were."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from manipex import figures  # noqa: E402
from manipex.experiments import plots  # noqa: E402
from manipex.experiments.audit import Audit  # noqa: E402
from manipex.experiments.quick import Quick  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def user_state():
    """A notebook-like pyplot session on a backend other than Agg ("svg"), with two open
    figures; restored afterwards for the other tests."""
    original = matplotlib.get_backend()
    plt.switch_backend("svg")
    first = plt.figure(num="user figure")
    first.gca().plot([0, 1], [1, 0])
    second = plt.figure()
    yield second
    plt.close("all")
    plt.switch_backend(original)


def _state():
    return matplotlib.get_backend(), plt.get_fignums(), plt.gcf(), dict(matplotlib.rcParams)


def _frames():
    rng = np.random.default_rng(0)
    box = pd.DataFrame({"method": ["gradient", "lrp"] * 4, "pcc_gain": rng.random(8)})
    features = pd.DataFrame({"feature": ["age", "sex=Male"] * 2, "model": ["original"] * 2 + ["fairwashed"] * 2,
                             "importance": rng.random(4)})
    quick = pd.DataFrame({"method": ["gradient", "gradient", "lrp", "lrp"],
                          "defense": ["none", "agg_mean", "none", "agg_mean"],
                          "pcc_before": rng.random(4), "pcc_after": rng.random(4)})
    audit = pd.DataFrame({"part": "attack", "objective": ["targeted"] * 4 + ["topk"] * 4,
                          "method": ["gradient", "lrp"] * 4, "eps": [0.01, 0.01, 0.03, 0.03] * 2,
                          "success": rng.random(8)})
    return box, features, quick, audit


def test_drawing_leaves_backend_and_user_figures_unchanged(user_state, tmp_path: Path) -> None:
    before = _state()
    assert before[0] == "svg" and len(before[1]) == 2
    box, features, quick, audit = _frames()
    images = torch.rand(2, 1, 12, 12)
    maps = {"gradient": torch.rand(2, 12, 12), "lrp": torch.rand(2, 12, 12)}
    paths = [
        figures.map_grid(images, maps, tmp_path / "sub" / "grid.png", titles=["a", "b"]),
        plots.box_plot(box, "pcc_gain", "method", tmp_path / "box.png", "PCC gain"),
        plots.feature_importance(features, tmp_path / "features.png"),
        plots.transfer_heatmap(pd.DataFrame(np.eye(2), index=["a", "b"], columns=["a", "b"]),
                               tmp_path / "heat.png", "t"),
        *Quick().figures(quick, Quick.Config(), tmp_path),
        *Audit().figures(audit, None, tmp_path),
    ]
    after = _state()
    assert after[0] == before[0]  # the backend was not switched
    assert after[1] == before[1]  # no figure of the user's was closed, none was added
    assert after[2] is before[2] is user_state  # pyplot's current figure is the user's
    assert after[3] == before[3]  # no rcParam changed
    assert len(paths) == 6
    for path in paths:
        assert Path(path).read_bytes().startswith(PNG)


def test_every_plot_of_the_experiments_leaves_the_state_unchanged(user_state, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grid = {m: [plots.Panel("input", torch.rand(1, 8, 8), "input"), plots.Panel("map", torch.rand(8, 8)),
                plots.Panel("perturbation", torch.randn(3, 8, 8), "signed")] for m in ("gradient", "lrp")}
    beta = pd.DataFrame({"method": ["gradient"] * 3, "beta": pd.Series([1.0, 3.0, "relu"], dtype=object),
                         "pcc_target": rng.random(3), "pcc_original": rng.random(3)})
    curves = pd.DataFrame({"eps": [0.04, 0.08] * 2, "model": ["atex"] * 2 + ["softplus"] * 2,
                           "spearman": rng.random(4), "attack": "untargeted"})
    history = pd.DataFrame({"model": ["com"] * 2, "epoch": [1, 2], "classification": [0.5, 0.4],
                            "objective": [2.0, 1.0]})
    noise = pd.DataFrame({"model": ["acc", "acc", "com", "com"], "objective": "com", "sigma": [0.0, 0.1] * 2,
                          "accuracy": rng.random(4), "metric": rng.random(4), "metric_name": "com_distance"})
    before = _state()
    paths = [
        plots.manipulation_grid(grid, tmp_path / "grid.png"),
        plots.beta_curve(beta, tmp_path / "beta.png"),
        plots.metric_curves(curves, "eps", "model", ["spearman"], "attack", tmp_path / "curves.png"),
        plots.training_curves(history, tmp_path / "training.png"),
        plots.weight_noise_curves(noise, tmp_path / "noise.png"),
    ]
    after = _state()
    assert after[:2] == before[:2] and after[2] is before[2] and after[3] == before[3]
    for path in paths:
        assert Path(path).read_bytes().startswith(PNG)


def test_map_grid_writes_other_formats_without_pyplot(user_state, tmp_path: Path) -> None:
    before = _state()
    for suffix, magic in ((".pdf", b"%PDF"), (".svg", b"<?xml")):
        path = figures.map_grid(torch.rand(1, 3, 8, 8), {"gradient": torch.rand(1, 8, 8)}, tmp_path / f"g{suffix}")
        assert path.read_bytes().startswith(magic)
    assert _state()[:3] == before[:3]


def test_grouped_bars_draw_what_pandas_draws() -> None:
    """The pyplot-free bar chart of plots.grouped_bars puts the bars where pandas does."""
    table = pd.DataFrame({"none": [0.5, 0.2, 0.1], "agg_mean": [0.1, -0.2, 0.3]},
                         index=pd.Index(["gradient", "lrp", "ig"], name="method"))
    table.columns.name = "defense"
    ours_ax = Figure().subplots()
    plots.grouped_bars(ours_ax, table, width=0.8)
    ref_ax = Figure().subplots()
    table.plot.bar(ax=ref_ax, width=0.8)

    def bars(ax):
        return sorted((round(p.get_x(), 6), round(p.get_width(), 6), round(p.get_height(), 6)) for p in ax.patches)

    assert bars(ours_ax) == bars(ref_ax)
    # ticks and legend in display names (pandas shows the code names)
    assert [t.get_text() for t in ours_ax.get_xticklabels()] == ["Gradient", "LRP", "ig"]
    assert [t.get_text() for t in ref_ax.get_xticklabels()] == ["gradient", "lrp", "ig"]
    assert [t.get_text() for t in ours_ax.get_legend().get_texts()] == ["no defense", "AGG-Mean"]
    assert ours_ax.get_legend().get_title().get_text() == "defense" and ours_ax.get_xlabel() == "method"
