"""Experiments: config validation, crash-safe store, resume after SIGKILL, sharding, reports.

The findings checked here are directions with a margin (a defense lowers the attack's rise, a
manipulation moves the center of mass), which must hold on any model at these tiny budgets; the
figures pinned at their measured size, on the default model, are in test_fidelity.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from golden import check_rows
from manipex.cli import main
from manipex.experiments import EXPERIMENTS, ConfigError, ResultStore, load_config, run

TINY = {"n": 2, "batch": 1, "steps": 3}
ONE_EACH = {"transfer": ["gradient"], "blank": ["gradient"]}  # rieger2020's other parts, small


@pytest.fixture(autouse=True)
def private_cache(mnist_model, model_cache, monkeypatch):
    """Experiments (and their subprocesses) load the default model from the session's cache."""
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(model_cache))


def test_malformed_configs_fail_before_any_work(tmp_path):
    bad = tmp_path / "bad.toml"
    cases = {
        'n = 4\nstepz = 3\n': "unknown key 'stepz'",
        'n = "four"\n': "'n' must be an integer",
        'methods = ["gradient", "saliency"]\n': "unknown value 'saliency'",
        'experiment = "nope"\n': "unknown experiment 'nope'",
        'eps = [1, 2]\n': "'eps' must be a number",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            run(config_file=bad, out=tmp_path / "runs")
        assert not (tmp_path / "runs").exists()
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "runs")]) == 2


def test_store_is_append_only_and_skips_a_torn_last_line(tmp_path):
    store = ResultStore(tmp_path)
    store.append("a", [{"v": 1}])
    with open(store.path, "ab") as f:
        f.write(b'{"unit": "b", "rows": [{"v"')  # a writer killed mid-line
    store = ResultStore(tmp_path)  # repairs on open
    assert store.done() == {"a"}
    store.append("b", [{"v": 2}, {"v": 3}])
    assert store.frame()["v"].tolist() == [1, 2, 3]


def _rows(folder: Path):
    df = ResultStore(folder).frame()
    return df.sort_values(["unit", "image"]).reset_index(drop=True)


def test_killed_run_resumes_with_exactly_the_uninterrupted_results(tmp_path):
    args = ["run", "quick", "--quiet", "--n", "4", "--batch", "1", "--steps", "5",
            "--set", 'methods=["gradient", "lrp"]', "--set", 'defenses=["none", "beta_smoothing"]']
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    main(args + ["--out", str(tmp_path / "straight")])
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "manipex.cli"] + args + ["--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = killed / "quick" / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(results.read_text().splitlines())
    assert 3 <= finished < 16, "the kill must land mid-run"
    main(args + ["--out", str(killed)])
    a, b = _rows(tmp_path / "straight" / "quick"), _rows(killed / "quick")
    assert len(a) == len(b) == 16 and a["unit"].tolist() == b["unit"].tolist()
    assert a.equals(b)
    units = [json.loads(line)["unit"] for line in (killed / "quick" / "results.jsonl").read_text().splitlines()]
    assert len(units) == len(set(units)) == 16  # nothing lost, nothing duplicated


def test_torchrun_two_processes_match_one(tmp_path):
    pytest.importorskip("torch.distributed")
    # torchrun's own parser takes "--n..." for one of its options: pass settings with --set
    args = ["run", "rieger2020", "--quiet", "--set", "n=4", "--set", "batch=1", "--set", "steps=4",
            "--set", 'methods=["gradient", "lrp"]', "--set", 'transfer=["gradient"]', "--set", 'blank=["lrp"]',
            "--set", "budgets=[]"]
    main(args + ["--out", str(tmp_path / "one")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "manipex.cli"] + args + ["--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _rows(tmp_path / "one" / "rieger2020"), _rows(tmp_path / "two" / "rieger2020")
    assert len(a) == len(b) == 16
    assert a[sorted(a.columns)].equals(b[sorted(b.columns)])  # NaN where a part has no such column
    assert (tmp_path / "two" / "rieger2020" / "results-rank1.jsonl").exists()


TINY_CONFIGS = {
    "audit": {"n": 2, "steps": 5, "eps": [0.1], "methods": ["gradient"], "defenses": ["beta_smoothing"],
              "betas": [3.0], "noise_n": 8, "weight_noise": [0.0, 0.1], "n_references": 1, "faithfulness_n": 10},
    "quick": {"n": 4, "batch": 2, "steps": 40, "methods": ["gradient"], "defenses": ["none", "beta_smoothing"]},
    "rieger2020": {"n": 4, "batch": 2, "steps": 40, "methods": ["gradient", "lrp"], "transfer": ["gradient", "lrp"],
                   "blank": ["gradient"], "budgets": []},
    "dombrowski2019": {"n": 4, "batch": 2, "steps": 40, "methods": ["gradient", "lrp"], "beta_methods": ["gradient"],
                       "betas": [1.0], "budgets": [0.5]},
    "tang_atex": {"n": 16, "batch": 16, "eps": [0.08], "steps": 30, "train_epochs": 2, "atex_n": 1000},
    "pasliev2020": {"epochs": 1, "n_train": 640, "n_eval": 32, "models": ["com_gradient", "th_gradient", "ipp_gradient"],
                    "methods": ["gradient", "lrp"], "noise_n": 8, "weight_noise": [0.0, 0.1], "examples": 1},
    "adult_fairwashing": {"epochs": 1},
    "robust_training": {"n": 4, "batch": 4, "steps": 20, "defenses": ["softplus", "hessian_norm", "ig_norm"],
                        "train_n": 256, "epochs": 1, "ms_samples": 4, "ms_steps": 5, "ig_train_steps": 4,
                        "ig_attack_steps": 2},
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_at_a_tiny_budget(name, tmp_path):
    tables = run(name, overrides=TINY_CONFIGS[name], out=tmp_path, quiet=True)
    assert tables
    check_rows(name, ResultStore(tmp_path / name).rows())  # the rows recorded before the architecture change
    page = (tmp_path / name / "report.html").read_text()
    assert "<table" in page and "Configuration" in page
    first = next(v for k, v in tables.items() if k != "findings")
    if name != "audit":  # every paper experiment opens with its findings: claim, paper, ours, verdict, why
        from manipex.experiments.published import VERDICTS

        findings = tables["findings"]
        assert list(findings.columns) == ["paper", "ours", "verdict", "why"] and len(findings)
        assert set(findings.verdict) <= set(VERDICTS) and 'class="dataframe text"' in page
        verdict = dict(zip(findings.index.str.split(":").str[0], findings.verdict))
        if name == "quick":  # the direction of the claims that hold at this budget
            assert verdict["Dombrowski 2019, Sec. 4"] == "holds"
        if name == "pasliev2020":
            assert verdict["Pasliev 2020, Table 3.1"] in ("holds", "partly")
        if name == "adult_fairwashing":
            assert verdict["Pasliev 2020, Sec. 3.8"] == "holds"
        if name == "tang_atex":
            assert verdict["Tang et al., Table 1"] in ("holds", "partly")
        if name == "dombrowski2019":  # Fig. 4 for the gradient; the smoothed maps' noise stability is measured
            assert verdict["Dombrowski 2019, Fig. 4"] == "holds"
            rows = ResultStore(tmp_path / name).frame()
            beta = rows[rows.unit.str.startswith("beta/")]
            assert ((beta.pcc_noise > 0.5) & (beta.pcc_noise <= 1.0 + 1e-6)).all()
    if name == "quick":  # the main finding: beta-smoothing cuts the attack's success
        assert first.shape == (1, 2)
        assert first.loc["gradient", "beta_smoothing"] < first.loc["gradient", "none"]
        from manipex.experiments.quick import Quick

        config = Quick.Config(**TINY_CONFIGS[name])
        grid = Quick().example_rows(ResultStore(tmp_path / name).frame(), config, tmp_path / name)
        labels = list(grid)  # the typical and the best image of the undefended attack, each under both defenses
        assert labels[0].startswith("gradient\ntypical") and len(labels) in (1, 2)
        titles = [p.title for p in grid[labels[0]]]
        assert titles[:4] == ["input", "manipulated input\n(eps 0.2)", "original map", "target map"]
        assert titles[4:] == ["shown after attack:\nno defense", "shown after attack:\nβ-smoothing"]
        assert "quick_maps.png" in page
    if name == "rieger2020":
        assert {"Δ-PCC", "Δ-MSE"} <= set(first.columns) and list(first.index) == ["gradient", "lrp"]
        assert (first["Δ-PCC"] > 0).all() and "ImageNet, VGG16, 224 px" in tables["table1_published"].attrs["published"]
        transfer = tables["fig2_transfer"]
        assert transfer.shape == (2, 2) and transfer.loc["gradient", "gradient"] > transfer.loc["gradient", "lrp"]
        blank = tables["table4_blank"]
        assert blank.loc["gradient", "square_mass_after"] < blank.loc["gradient", "square_mass_before"]
        assert "fig2_transfer.png" in page
        assert "fig2_transfer_scatter_gradient.png" in page and "fig2_transfer_scatter_lrp.png" in page
        rows = ResultStore(tmp_path / name).frame()
        moved = rows[rows.unit.str.startswith("transfer/")]
        assert {"pcc_after", "mse_after", "top10_after"} <= set(moved.columns)
        mean_pcc = moved.groupby(["attacked", "evaluated"]).pcc_after.mean()
        # Fig. 2's finding per image, on average: the attack transfers poorly to another method
        assert mean_pcc["gradient", "gradient"] > mean_pcc["gradient", "lrp"]
    if name == "dombrowski2019":
        assert list(first.index) == ["gradient", "lrp"]
        assert (first["pcc_after"] > first["pcc_before"]).all()
        assert "fig3_maps.png" in page and "fig4_beta_curve.png" in page
        from manipex.experiments.dombrowski2019 import Dombrowski2019

        config = Dombrowski2019.Config(**TINY_CONFIGS[name])
        rows = ResultStore(tmp_path / name).frame()
        grid = Dombrowski2019().example_rows(rows[rows.unit.str.startswith("attack/")], config, tmp_path / name)
        assert [k.split("\n")[0] for k in grid][:1] == ["gradient"] and {k.split("\n")[1] for k in grid} <= {
            "typical", "best"}
        for label, panels in grid.items():  # the same image at eps 0.2 and, in the last column, at eps 0.5
            assert [p.title for p in panels][-2:] == ["manipulated map\neps 0.2", "manipulated map\neps 0.5"]
            index = int(label.rsplit(" ", 1)[1])
            budget = rows[(rows.unit.str.startswith("budget/")) & (rows.method == label.split("\n")[0])
                          & (rows.image == index)]
            assert panels[-1].note == f"PCC {budget.pcc_after.item():.2f}"
        budgets = tables["fig3_budgets"]
        assert list(budgets.columns) == ["before", "eps 0.2", "eps 0.5"]
        assert budgets.loc["lrp", "eps 0.5"] > budgets.loc["lrp", "eps 0.2"] > budgets.loc["lrp", "before"]
        curve = tables["fig4"]
        assert curve.loc[("gradient", 1.0), "pcc_original"] > curve.loc[("gradient", "relu"), "pcc_original"]
    if name == "tang_atex":
        assert {"spearman atex", "spearman softplus", "accuracy (%) atex"} <= set(first.columns)
        assert first.loc[0.08, "spearman atex"] > first.loc[0.08, "spearman softplus"]
        assert "tables_metrics_vs_eps.png" in page and "fig3_maps.png" in page
    if name == "pasliev2020":  # manipulated as aimed, while the original model is as it was
        com = tables["t31"]
        assert com.loc["com_gradient", "gradient"] < com.loc["acc", "gradient"] - 1.0
        target = tables["t32"]
        assert target.loc[("th_gradient", "gradient"), "target_pcc"] > target.loc[("acc", "gradient"), "target_pcc"] + 0.05
        published = tables["t32_published"]
        assert published.loc[("acc", "gradient"), "target_pcc"] == 0.162
        # layout only: one tiny epoch is too little for its finding, which test_model_attacks checks
        same_outputs = tables["t33_gradient"]
        assert list(same_outputs.index) == ["acc", "th_gradient", "ipp_gradient"]
        assert same_outputs.loc["acc", "classification_loss"] == 0.0
        noise = tables["t42"]
        assert noise.loc["acc", "flagged"] == 0.0
        for figure in ("fig3_heatmaps_0.png", "fig3_4_training.png", "fig4_4_weight_noise.png"):
            assert figure in page
        assert (tmp_path / name / "models" / "th_gradient.safetensors").exists()
    if name == "robust_training":  # one row per defense, the baseline first; each figure in the report
        assert list(first.index) == ["plain", "softplus", "hessian_norm", "ig_norm"]
        assert first.loc["plain", "Δ accuracy (%)"] == 0.0
        rows = ResultStore(tmp_path / name).frame()
        model = rows[rows.kind == "model"]  # the worst case is at least the sampled one, on every model
        assert (model.ms_adversarial >= model.ms_sampled - 1e-6).all()
        assert {"Adebayo et al. 2018, Fig. 2", "Chen et al. 2019, Sec. 5"} <= set(
            tables["findings"].index.str.split(":").str[0])
        assert "robust_training_summary.png" in page and "robust_training_sanity.png" in page
        assert (tmp_path / name / "models" / "robust_ig_norm.safetensors").exists()
    if name == "adult_fairwashing":  # race and sex hidden from the gradient, yet still used
        adult = first
        assert adult.loc["fairwashed", "gradient_share_race_sex"] < 0.5 * adult.loc["original", "gradient_share_race_sex"]
        assert "fig3_14_adult_importance.png" in page


def test_examples_keep_the_first_images_and_pick_the_typical_and_the_best(tmp_path):
    from manipex.experiments.common import EXAMPLE_IMAGES, load_examples, pick_examples, save_examples

    x = torch.rand(4, 1, 4, 4)
    before, after = torch.tensor([0.8, 0.1, 0.2, 0.1]), torch.tensor([0.9, 0.5, 0.3, 0.8])  # rises .1 .4 .1 .7
    save_examples(tmp_path, 0, {"input": x, "pcc_before": before, "pcc_after": after})
    save_examples(tmp_path, EXAMPLE_IMAGES - 1, {"input": x[:3], "pcc_before": before[:3], "pcc_after": before[:3]})
    save_examples(tmp_path, EXAMPLE_IMAGES, {"input": x, "pcc_before": before, "pcc_after": after})  # beyond: none
    kept = load_examples(tmp_path)
    assert sorted(kept) == [0, 1, 2, 3, EXAMPLE_IMAGES - 1]
    assert torch.equal(kept[2]["input"], x[2]) and "index" not in kept[2]
    # the median rise of all attacked images is 0.425: the kept image closest to it, and the largest rise
    assert pick_examples([0.1, 0.4, 0.1, 0.7, 0.45, 0.5], kept) == [("typical", 1), ("best", 3)]
    assert pick_examples([0.7], kept) == [("typical", 3)]  # the best is the typical one: shown once
    assert pick_examples([], kept) == [] and pick_examples([0.1], {}) == []
    assert load_examples(tmp_path / "missing") == {}


def test_rieger_scatter_plots_take_the_right_columns(tmp_path):
    import pandas as pd

    from manipex.experiments import plots
    from manipex.experiments.rieger2020 import Rieger2020, Rieger2020Config

    rows = [{"image": i, "attacked": a, "evaluated": e, "pcc_after": 10 * i + len(e) + (a == e),
             "mse_after": -i, "top10_after": i / 10, "d_pcc": 0.0}
            for i in range(3) for a in ("gradient", "lrp") for e in ("gradient", "lrp", "agg_mean")]
    df = pd.DataFrame(rows).sample(frac=1, random_state=0)  # order must not matter
    points = plots._scatter_points(df, "gradient")
    assert set(points) == {"top10_after", "pcc_after", "mse_after"}
    assert set(points["pcc_after"]) == {"lrp", "agg_mean"}  # y: the other evaluated methods
    x, y = points["pcc_after"]["lrp"]
    assert list(x) == [9, 19, 29] and list(y) == [3, 13, 23]  # x: gradient on itself, same images
    assert list(points["mse_after"]["agg_mean"][1]) == [0, -1, -2]
    path = plots.transfer_scatter(df, "gradient", tmp_path / "t.png")
    assert path == tmp_path / "t.png" and path.read_bytes()[:4] == b"\x89PNG"

    table1 = pd.DataFrame([{"image": i, "method": m, "pcc_before": 0.0, "pcc_after": i + (m == "agg_mean"),
                            "mse_after": 0.0, "top10_after": 0.5, "unit": f"table1/{m}/00000"}
                           for i in range(3) for m in ("lrp", "guided_backprop", "agg_mean")])
    config = Rieger2020Config.resolve({"methods": ["lrp", "guided_backprop", "agg_mean"], "transfer": []})
    figs = Rieger2020().figures(table1, config, tmp_path)
    assert [f.name for f in figs] == ["table1_d_pcc_boxes.png", "fig5_agg_mean_vs_guided_backprop.png"]
    x, y = plots._paired(table1, "method", "guided_backprop", "agg_mean", "pcc_after")
    assert list(x) == [0, 1, 2] and list(y) == [1, 2, 3]


def test_list_and_report_commands(tmp_path, capsys):
    assert main(["list"]) == 0
    assert "rieger2020" in capsys.readouterr().out
    run("rieger2020", overrides={**TINY, **ONE_EACH, "methods": ["gradient"]}, out=tmp_path, quiet=True)
    (tmp_path / "rieger2020" / "report.html").unlink()
    assert main(["report", str(tmp_path / "rieger2020")]) == 0
    assert (tmp_path / "rieger2020" / "report.html").exists()
    assert main(["report", str(tmp_path)]) == 2


def test_changed_config_does_not_mix_with_old_results(tmp_path):
    run("rieger2020", overrides={**TINY, **ONE_EACH, "methods": ["gradient"]}, out=tmp_path, quiet=True)
    with pytest.raises(ConfigError, match="another config"):
        run("rieger2020", overrides={**TINY, **ONE_EACH, "methods": ["lrp"]}, out=tmp_path, quiet=True)


def test_load_config_defaults_to_quick():
    experiment, config = load_config(None, None, {})
    assert experiment.name == "quick" and config.n == 16


def _fake_cifar(root: Path, n: int) -> None:
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        (root / name).write_bytes(pickle.dumps(batch))


def test_pasliev_on_cifar_files_with_torchvision_format_weights(tmp_path):
    """The user's data and weights: CIFAR-10 batches and a VGG16 state_dict saved as torchvision
    does (``torch.save(model.state_dict())``); the tables come out in the same layout."""
    from safetensors.torch import load_file

    from manipex.models import vgg16

    _fake_cifar(tmp_path / "cifar", 8)
    torch.manual_seed(0)
    torch.save(vgg16(num_classes=10, input_size=32).state_dict(), tmp_path / "vgg16_cifar.pth")
    config = {"dataset": "cifar10", "root": str(tmp_path / "cifar"), "weights": str(tmp_path / "vgg16_cifar.pth"),
              "normalize": "cifar10", "models": ["com_gradient"], "methods": ["gradient"], "epochs": 1,
              "n_train": 16, "n_eval": 8, "batch": 8, "noise_n": 4, "weight_noise": [0.0],
              "examples": 1, "save_models": False}
    tables = run("pasliev2020", overrides=config, out=tmp_path / "runs", quiet=True)
    com = tables["t31"]
    assert list(com.index) == ["acc", "com_gradient"]
    assert ((com["gradient"] > 0) & (com["gradient"] < 32 * 2 ** 0.5)).all()
    maps = load_file(str(tmp_path / "runs" / "pasliev2020" / "maps" / "acc.safetensors"))
    assert maps["gradient"].shape == (1, 32, 32) and maps["input"].shape == (1, 3, 32, 32)
    assert not (tmp_path / "runs" / "pasliev2020" / "models" / "com_gradient.safetensors").exists()


@pytest.mark.parametrize("overrides, key", [
    ({"dataset": "cifar10"}, "'root'"),
    ({"dataset": "cifar10", "root": "/does/not/exist"}, "'root'"),
    ({"weights": "/does/not/exist.pth"}, "'weights'"),
    ({"dataset": "image_folder", "root": "."}, "'weights'"),
    ({"models": ["com_nonsense"]}, "'models'"),
    ({"n_eval": 1}, "'n_eval'"),
])
def test_pasliev_sources_are_checked_before_any_work(overrides, key, tmp_path):
    with pytest.raises(ConfigError, match=key):
        run("pasliev2020", overrides=overrides, out=tmp_path)
    assert not (tmp_path / "pasliev2020").exists()


def test_pasliev_on_an_image_folder_with_predicted_labels(tmp_path):
    """ImageNet-style use: class folders of images, a saved model, labels from the model itself
    (the folders need not be all of the model's classes), ImageNet normalisation."""
    import numpy as np
    from PIL import Image

    from manipex import models

    rng = np.random.default_rng(0)
    for c in ("n01440764", "n01443537"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "val" / c / f"{i}.png")
    torch.manual_seed(0)
    models.save(models.build("vgg16", num_classes=20, input_size=32), tmp_path / "vgg.safetensors")
    config = {"dataset": "image_folder", "root": str(tmp_path / "val"), "weights": str(tmp_path / "vgg.safetensors"),
              "image_size": 32, "labels": "predicted", "models": ["th_gradient"], "methods": ["gradient"],
              "epochs": 1, "n_eval": 4, "batch": 4, "noise_n": 4, "weight_noise": [0.0],
              "examples": 1, "save_models": False}
    tables = run("pasliev2020", overrides=config, out=tmp_path / "runs", quiet=True)
    target = tables["t32"]
    assert target.loc[("acc", "gradient"), "accuracy (%)"] == 100.0  # labels are F_acc's own predictions
    rows = ResultStore(tmp_path / "runs" / "pasliev2020").frame()
    assert (rows[(rows.kind == "maps") & (rows.inputs == "test")].groupby("model").size() == 4).all()
