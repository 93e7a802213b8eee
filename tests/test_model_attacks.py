"""Model-manipulation attacks (Pasliev 2020; Heo et al. 2019), at small budgets."""
from __future__ import annotations

import pytest
import torch

import manipex
from manipex.attacks import evaluate_manipulation, manipulate_model
from manipex.attacks import model as model_attack
from manipex.data.adult import adult_protected_indices
from manipex.models import accuracy, tabular_mlp, train_classifier
from manipex.objectives import BlankRegion, CenterOfMass

from conftest import assert_same_state

CORNER = CenterOfMass((0.0, 0.0))


@pytest.fixture(scope="module")
def mnist(mnist_model):
    x, y = manipex.data.load("mnist5k", split="train")
    xt, yt = manipex.data.load("mnist5k", split="test")
    return mnist_model, (x, y), (xt[:500], yt[:500])


def test_center_of_mass_manipulation_moves_gradient_maps_and_keeps_accuracy(mnist, corner_manipulation):
    model, _, held_out = mnist
    before, after, result = corner_manipulation  # lam 0.03, 3 epochs, all 5000 training images
    assert_same_state(before, after)
    ev = evaluate_manipulation(model, result.model, held_out, CORNER, methods=["gradient", "lrp"])
    distance = ev.table.loc["gradient"]
    assert distance["original"] >= 3 * distance["manipulated"]
    assert ev.summary["accuracy_manipulated"] >= ev.summary["accuracy_original"] - 0.02
    assert ev.table.attrs["metric"] == "com_distance_to_point"
    assert not any(isinstance(m, torch.nn.Softplus) for m in result.model.modules())  # ReLU again


def test_identical_probabilities_keep_outputs_closer_than_cross_entropy(mnist):
    model, (x, y), held_out = mnist
    data = (x[:1000], y[:1000])
    changes = {}
    for mode in ("cross_entropy", "probabilities"):
        result = manipulate_model(model, data, CORNER, "gradient", classification=mode, lam=0.03,
                                  lr=1e-3, epochs=1, progress=False)
        changes[mode] = evaluate_manipulation(model, result.model, held_out, CORNER, methods=["gradient"]).summary["output_change"]
    assert changes["probabilities"] < changes["cross_entropy"]


def test_frozen_parameters_stay_bit_identical(mnist):
    model, (x, y), _ = mnist
    result = manipulate_model(model, (x[:256], y[:256]), CORNER, "gradient", trainable=["7"], lr=1e-3,
                              epochs=1, progress=False)
    assert result.trainable == ["7.weight", "7.bias"]
    for (name, p), q in zip(model.named_parameters(), result.model.parameters()):
        assert torch.equal(p, q) != name.startswith("7."), name
    with pytest.raises(ValueError, match="no parameter named 'fc'"):
        manipulate_model(model, (x[:8], y[:8]), CORNER, trainable=["fc"])


def test_manipulation_through_lrp_changes_lrp_maps(mnist):
    model, (x, y), held_out = mnist
    result = manipulate_model(model, (x[:512], y[:512]), CORNER, "lrp", beta=None, lam=0.05, lr=1e-3,
                              epochs=1, progress=False)
    table = evaluate_manipulation(model, result.model, held_out, CORNER, methods=["lrp"]).table
    assert table.loc["lrp", "manipulated"] < table.loc["lrp", "original"] - 1.0  # pixels closer


def test_interrupted_run_resumes_to_the_same_model(mnist, tmp_path, monkeypatch):
    model, (x, y), _ = mnist
    data = (x[:192], y[:192])
    settings = dict(lam=0.03, lr=1e-3, epochs=2, batch_size=64, progress=False)
    straight = manipulate_model(model, data, CORNER, "gradient", **settings).model
    path = tmp_path / "run.pt"
    real_replace = model_attack.os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        raise KeyboardInterrupt  # killed right after the first epoch was saved

    monkeypatch.setattr(model_attack.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        manipulate_model(model, data, CORNER, "gradient", checkpoint=path, **settings)
    monkeypatch.setattr(model_attack.os, "replace", real_replace)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    resumed = manipulate_model(model, data, CORNER, "gradient", checkpoint=path, **settings)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for p, q in zip(straight.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("content", ["state_dict", "garbage", "pickle", "other_settings"])
def test_a_checkpoint_path_holding_another_file_is_refused_and_left_untouched(mnist, tmp_path, content):
    """A user's own weights at the checkpoint path must never be overwritten (issue 12)."""
    model, (x, y), _ = mnist
    data = (x[:64], y[:64])
    path = tmp_path / "my_weights.pt"
    if content == "state_dict":
        torch.save(model.state_dict(), path)
    elif content == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif content == "pickle":
        import pickle

        path.write_bytes(pickle.dumps({"key": "x", "model": {}, "optimizer": {}, "epoch": 1, "history": []}))
    else:  # a manipulate_model checkpoint of another run
        manipulate_model(model, data, CORNER, "gradient", lam=0.03, epochs=1, checkpoint=path, progress=False)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="other settings" if content == "other_settings" else "not a manipulate_model"):
        manipulate_model(model, data, CORNER, "gradient", lam=0.5, epochs=1, checkpoint=path, progress=False)
    assert path.read_bytes() == before


def _protected_mask():
    mask = torch.zeros(12, dtype=torch.bool)
    mask[sum(adult_protected_indices().values(), [])] = True
    return mask


def test_adult_fairwashing_hides_race_and_sex_but_the_model_still_uses_them():
    x, y = manipex.data.load("adult", split="train")
    xt, yt = manipex.data.load("adult", split="test")
    torch.manual_seed(0)
    model = train_classifier(tabular_mlp(12), x, y, epochs=3, lr=1e-3, batch_size=128, seed=0, progress=False).eval()
    mask = _protected_mask()
    result = manipulate_model(model, (x, y), BlankRegion(mask), "gradient", classification="probabilities",
                              lam=1.0, lr=1e-3, epochs=3, batch_size=128, progress=False)
    washed = result.model

    def share(m):
        return manipex.relevance(manipex.explain(m, xt, "gradient"))[:, mask].sum(1).mean().item()

    def permutation_drop(m):
        base, drops = accuracy(m, xt, yt), []
        for seed in range(5):
            perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))
            xp = xt.clone()
            xp[:, mask] = xt[perm][:, mask]
            drops.append(base - accuracy(m, xp, yt))
        return sum(drops) / len(drops)

    assert share(model) >= 5 * share(washed)
    assert accuracy(washed, xt, yt) >= accuracy(model, xt, yt) - 0.015
    assert permutation_drop(washed) > 0.005  # it still relies on race and sex


def test_bad_arguments(mnist):
    model, (x, y), _ = mnist
    with pytest.raises(ValueError, match="classification"):
        manipulate_model(model, (x[:8], y[:8]), CORNER, classification="kl")
    with pytest.raises(TypeError, match="pair"):
        manipulate_model(model, x[:8], CORNER)
    with pytest.raises(ValueError, match="labels"):
        manipulate_model(model, (x[:8], y[:7]), CORNER)


def test_an_empty_trainable_list_is_refused_naming_the_argument():
    """Issue 26: ``trainable=[]`` said "optimizer got an empty parameter list"."""
    from manipex.objectives import CenterOfMass

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="trainable is empty.*'1'"):
        manipex.attacks.manipulate_model(model, (x, y), CenterOfMass((0, 0)), "gradient", trainable=[], progress=False)


def test_an_explainer_object_trains_what_its_name_and_options_train():
    """Issue 27: an explainer object carrying its options stands for the name and
    ``method_options`` in the model attack too; its text (in progress bars and a checkpoint's
    key) is its name and the options that differ from the defaults."""
    from conftest import make
    from manipex.explainers import SmoothGrad

    model, x = make("small_cnn")
    y = model(x).argmax(1)
    options = {"samples": 2, "sigma": 0.1, "seed": 0}
    by_name = manipulate_model(model, (x, y), CORNER, "smoothgrad", method_options=options, epochs=1, batch_size=4,
                               progress=False)
    by_object = manipulate_model(model, (x, y), CORNER, SmoothGrad(**options), epochs=1, batch_size=4,
                                 progress=False)
    for (name, a), b in zip(by_name.model.state_dict().items(), by_object.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert str(SmoothGrad(**options)) == "smoothgrad(samples=2, sigma=0.1, seed=0)"
