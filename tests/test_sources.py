"""Every experiment on the user's model and data: three sources, resume after SIGKILL, typed
configs that check every key before any work, factories, pixel space."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import manipex
from manipex.experiments import EXPERIMENTS, ConfigError, ResultStore, load_config, run
from manipex.experiments.sources import SourceConfig

#: the smallest budgets at which each experiment runs every part (at least two units)
TINY = {
    "quick": {"n": 2, "batch": 1, "steps": 2, "methods": ["gradient", "lrp"], "defenses": ["none", "agg_mean"]},
    "dombrowski2019": {"n": 2, "batch": 1, "steps": 2, "methods": ["lrp"], "beta_methods": ["gradient"],
                       "betas": [1.0], "budgets": [0.5]},
    "rieger2020": {"n": 2, "batch": 1, "steps": 2, "methods": ["gradient"], "transfer": ["gradient", "lrp"],
                   "blank": ["lrp"]},
    "tang_atex": {"n": 2, "batch": 1, "eps": [0.05], "steps": 2, "train_epochs": 1, "atex_n": 16, "atex_epochs": 1,
                  "examples": 1},
    "pasliev2020": {"epochs": 1, "n_train": 16, "n_eval": 4, "batch": 8, "models": ["th_gradient"],
                    "methods": ["gradient"], "noise_n": 4, "weight_noise": [0.0], "examples": 1},
    "audit": {"n": 2, "steps": 2, "eps": [0.1], "methods": ["gradient"], "defenses": ["beta_smoothing"],
              "betas": [3.0], "noise_n": 4, "weight_noise": [0.0], "n_references": 1, "train_epochs": 1,
              "faithfulness_n": 10,
              "n_train": 32},
    "adult_fairwashing": {"epochs": 1},
    "robust_training": {"n": 2, "batch": 1, "steps": 2, "defenses": ["hessian_norm"], "train_n": 16, "epochs": 1,
                        "train_batch": 8, "ms_samples": 2, "ms_steps": 2, "k": 5},
}
SOURCES = ("default", "checkpoint_idx", "image_folder")

#: runs an experiment in a subprocess that SIGKILLs itself right after its first unit is stored
KILL_AFTER_FIRST_UNIT = textwrap.dedent("""
    import json, os, signal, sys
    from manipex.experiments import store, run
    append = store.ResultStore.append
    def append_then_die(self, unit, rows):
        append(self, unit, rows)
        os.kill(os.getpid(), signal.SIGKILL)
    store.ResultStore.append = append_then_die
    run(sys.argv[1], overrides=json.loads(sys.argv[2]), out=sys.argv[3], quiet=True)
""")


@pytest.fixture(autouse=True)
def private_cache(mnist_model, model_cache, monkeypatch):
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(model_cache))


def _rows(folder):
    df = ResultStore(folder).frame()
    keys = ["unit"] + [c for c in ("kind", "model", "method", "part", "image", "epoch", "sigma", "feature") if c in df]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def test_tiny_budgets_cover_every_experiment():
    assert set(TINY) == set(EXPERIMENTS)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", sorted(TINY))
def test_every_experiment_runs_on_each_source_and_resumes_after_sigkill(name, source, user_sources, adult_sources,
                                                                        tmp_path):
    """The default, a manipex checkpoint on IDX files, an image folder with a ResNet (for the
    Adult study: its shipped files, the user's copy of them, a classifier saved by manipex)."""
    overrides = {**TINY[name], **(adult_sources if name == "adult_fairwashing" else user_sources)[source]}
    straight = run(name, overrides=overrides, out=tmp_path / "straight", quiet=True)
    assert straight, "no tables"
    killed = tmp_path / "killed"
    done = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_UNIT, name, json.dumps(overrides), str(killed)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-3000:]
    assert len(ResultStore(killed / name).done()) == 1
    assert not (killed / name / "report.html").exists()
    run(name, overrides=overrides, out=killed, quiet=True)
    a, b = _rows(tmp_path / "straight" / name), _rows(killed / name)
    assert len(a) == len(b) > 0
    # the first unit was computed in the killed process, the rest here: equal, up to the last bits
    # of a float reduction that two processes may order differently, amplified by the attack's
    # Adam steps (seen three times in ~45 runs of this test: linf 0.020014 vs 0.020015, and once
    # pcc_after 0.368419 vs 0.368367, 1.4e-4 relative, after 5 steps)
    numeric = [c for c in a.columns if a[c].dtype.kind == "f" and b[c].dtype.kind == "f"]
    close = a[numeric].sub(b[numeric]).abs().le(1e-9 + 1e-3 * b[numeric].abs()) | (a[numeric].isna() & b[numeric].isna())
    same = a.drop(columns=numeric).equals(b.drop(columns=numeric)) and bool(close.all().all())
    if not same:  # name the units and columns that differ
        differ = a.ne(b) & ~(a.isna() & b.isna())
        differ[numeric] = ~close
        rows = differ.any(axis=1)
        pytest.fail(f"resumed rows differ: units {sorted(set(a.unit[rows]))}, columns "
                    f"{list(differ.columns[differ.any()])}:\n{a[rows].to_string()}\n{b[rows].to_string()}")
    assert "<table" in (killed / name / "report.html").read_text()


def _bad_values(field):
    """Values of the wrong type, and out of range where the key has bounds."""
    wrong_type = {"int": "3", "float": "0.1", "optional_float": "x", "bool": 1, "str": 3, "list[str]": "gradient",
                  "list[float]": ["a"]}[field.kind]
    bad = [wrong_type]
    for bound, delta in (("ge", -1), ("gt", 0)):
        limit = getattr(field, bound)
        if limit is not None:
            value = limit + delta if field.kind in ("int", "list[float]") or bound == "ge" else limit
            if field.kind == "int":
                value = int(limit) - 1 if bound == "ge" else int(limit)
            bad.append([float(value)] if field.kind == "list[float]" else value)
    if field.choices is not None:
        bad.append(["no_such_value"] if field.kind == "list[str]" else "no_such_value")
    return bad


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_key_rejects_a_wrong_type_or_range_naming_the_key(name, tmp_path):
    fields = EXPERIMENTS[name].Config.fields()
    checked = 0
    for key, field in fields.items():
        for value in _bad_values(field):
            with pytest.raises(ConfigError, match=f"'{key}'"):
                run(name, overrides={key: value}, out=tmp_path)
            checked += 1
    bounded = [f for f in fields.values() if f.ge is not None or f.gt is not None or f.choices is not None]
    assert checked == len(fields) + len(bounded)  # a wrong type for every key, a wrong value for every bounded one
    assert not (tmp_path / name).exists()  # before any work


def test_a_changed_config_on_resume_names_the_key(tmp_path):
    run("quick", overrides=TINY["quick"], out=tmp_path, quiet=True)
    with pytest.raises(ConfigError, match=r"'steps' was 2, now 3"):
        run("quick", overrides={**TINY["quick"], "steps": 3}, out=tmp_path, quiet=True)


def test_model_and_data_keys_are_checked_before_any_work(tmp_path, user_sources):
    cases = [
        ({"dataset": "cifar10"}, "'root'"),
        ({"dataset": "mnist", "root": str(tmp_path / "nope")}, "'root'"),
        ({"weights": str(tmp_path / "nope.pth")}, "'weights'"),
        ({"arch": "resnet9000"}, "'arch'"),
        ({"arch": "no_such_module_xyz:make"}, "'arch'"),
        ({"arch": "json:no_such_function"}, "'arch'"),
        ({"normalize": "0.5/-1"}, "'normalize'"),
        ({"dataset": "image_folder", "root": str(tmp_path)}, "'weights'"),
    ]
    for overrides, key in cases:
        with pytest.raises(ConfigError, match=key):
            run("quick", overrides=overrides, out=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_weights_that_do_not_fit_the_architecture_or_classes_that_do_not_fit_the_data(tmp_path, user_sources):
    idx = user_sources["checkpoint_idx"]
    resnet = user_sources["image_folder"]["weights"]
    with pytest.raises(ConfigError, match="'weights'.*does not fit"):  # a ResNet's weights for the MNIST CNN
        run("quick", overrides={**TINY["quick"], **idx, "weights": resnet, "arch": "mnist_cnn"}, out=tmp_path)
    small = manipex.models.save(manipex.models.mnist_cnn(num_classes=3), tmp_path / "three.safetensors")
    with pytest.raises(ConfigError, match="'labels'.*has label [3-9].*3 outputs"):  # MNIST's labels 0..9, three outputs
        run("quick", overrides={**TINY["quick"], **idx, "weights": str(small)}, out=tmp_path)
    with pytest.raises(ConfigError, match="'num_classes'.*10 outputs, not 7"):
        run("quick", overrides={**TINY["quick"], **idx, "num_classes": 7}, out=tmp_path)


def test_a_factory_names_the_users_own_model(tmp_path, monkeypatch):
    """``arch = "package.module:function"``: imported only when named; with weights loaded into it."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        CALLS = []
        def tiny(num_classes=10):
            CALLS.append(1)
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "my_models" not in sys.modules
    tables = run("quick", overrides={**TINY["quick"], "arch": "my_models:tiny"}, out=tmp_path / "a", quiet=True)
    import my_models

    assert my_models.CALLS and set(tables["class_kept"].index) == {"gradient", "lrp"}
    weights = tmp_path / "tiny.pth"
    model = my_models.tiny()
    torch.nn.init.constant_(model[3].bias, 0.5)
    torch.save(model.state_dict(), weights)
    config = SourceConfig.resolve({"arch": "my_models:tiny", "weights": str(weights)})
    from manipex.experiments.sources import load_source

    source = load_source(config, "cpu", n_train=0, n_eval=4)
    assert torch.equal(source.model[3].bias, torch.full((10,), 0.5))


def test_attacks_work_in_pixel_space_behind_the_normalisation_layer(tmp_path, user_sources):
    """eps is in the data's pixel units and the images stay in [0, 1], whatever the model's
    normalisation; the report gives eps in both units."""
    overrides = {**TINY["audit"], **user_sources["image_folder"], "eps": [8 / 255], "references":
                 [user_sources["image_folder"]["weights"]]}
    run("audit", overrides=overrides, out=tmp_path, quiet=True)
    rows = ResultStore(tmp_path / "audit").frame()
    attack = rows[rows.part == "attack"]
    assert (attack.linf <= 8 / 255 + 1e-6).all() and (attack.linf > 0).any()
    page = (tmp_path / "audit" / "report.html").read_text()
    assert "0.03137 (8/255)" in page


def test_lrp_through_the_normalisation_layer_equals_lrp_on_normalised_inputs():
    from manipex.models import with_normalization

    torch.manual_seed(0)
    base = manipex.models.mnist_cnn().double().eval()
    model = with_normalization(base, [0.5], [0.25])
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    for method in ("lrp", "gradient", "guided_backprop"):
        ours = manipex.explain(model, x, method)
        direct = manipex.explain(base, (x - 0.5) / 0.25, method, **({"low": -2.0, "high": 2.0} if method == "lrp"
                                                                    else {}))
        scale = 1.0 if method == "lrp" else 1 / 0.25  # the chain rule through the normalisation
        torch.testing.assert_close(ours, direct * scale)
    assert torch.allclose(manipex.explain(model, x, "lrp").flatten(1).sum(1), torch.ones(2, dtype=torch.float64))


def test_list_and_run_flags_come_from_the_typed_config(capsys, tmp_path):
    from manipex.cli import main

    with pytest.raises(SystemExit) as exit_:  # pasliev2020 has no key n: a usage error naming the flag
        main(["run", "pasliev2020", "--n", "3"])
    assert exit_.value.code == 2 and "unrecognized arguments: --n 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "pasliev2020", "--help"])
    assert "--lam-com" in capsys.readouterr().out
    code = main(["run", "quick", "--quiet", "--out", str(tmp_path), "--n", "2", "--batch", "1", "--steps", "2",
                 "--methods", "gradient", "--defenses", "none"])
    assert code == 0
    _, config = load_config("quick", None, {})
    assert config.n == 16  # defaults untouched by the run above


def test_a_profile_sets_the_papers_protocol_and_keys_given_win():
    _, paper = load_config("tang_atex", None, {"profile": "paper"})
    assert (paper.atex_epochs, paper.steps) == (2, 200) and paper.atex_n >= 4000
    _, mine = load_config("tang_atex", None, {"profile": "paper", "steps": 50})
    assert (mine.atex_epochs, mine.steps) == (2, 50)
    _, default = load_config("tang_atex", None, {})
    assert (default.profile, default.atex_epochs, default.steps) == ("default", 1, 100)
