"""One default model everywhere: the shipped weights, their recipe trained again, and training
that gives the same bytes whatever the thread count (issue: the default model depended on it)."""
from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

import manipex
from manipex import models
from manipex._determinism import blas_reproducible, cpu_capability, reproducible
from manipex.models import pretrained


def _shipped_meta(name="mnist"):
    return models.read_metadata(pretrained.shipped_path(name))["metadata"]


def _with_threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_the_default_model_is_the_shipped_file_and_trains_nothing(monkeypatch, tmp_path):
    def no_training(*args, **kwargs):
        raise AssertionError("load_default trained a model although its weights are shipped")

    monkeypatch.setattr(pretrained.training, "train_classifier", no_training)
    model = models.load_default("mnist", cache_dir=tmp_path)
    meta = _shipped_meta()
    assert meta["recipe"] == dataclasses.asdict(pretrained.DEFAULT_RECIPES["mnist"])
    assert pretrained.state_digest(model) == meta["state_sha256"]
    assert not any(tmp_path.iterdir())  # nothing cached
    assert not model.training and all(p.requires_grad for p in model.parameters())
    x, y = manipex.data.load("mnist5k", split="test")
    assert models.accuracy(model, x, y) == pytest.approx(meta["test_accuracy"]) and meta["test_accuracy"] > 0.93


@pytest.mark.parametrize("threads", [1, 2])
def test_training_the_recipe_again_reproduces_the_shipped_bytes(threads):
    """The recipe trained here, under 1 and under 2 intra-op threads, gives the shipped weights
    bit for bit. Only a CPU with the instruction set the file was made on can (AVX2 and
    AVX-512 kernels round differently): elsewhere the test says so and skips."""
    meta = _shipped_meta()
    assert meta["blas_reproducible"] and blas_reproducible()  # conftest imports manipex before any matmul
    if meta["cpu_capability"] != cpu_capability() or meta["torch"] != torch.__version__:
        pytest.skip(f"the shipped weights were trained with torch {meta['torch']} on {meta['cpu_capability']}; "
                    f"this is torch {torch.__version__} on {cpu_capability()}")
    model, trained = _with_threads(threads, lambda: pretrained.train_recipe(pretrained.DEFAULT_RECIPES["mnist"]))
    assert trained["state_sha256"] == pretrained.state_digest(model) == meta["state_sha256"]


def _small_training(deterministic=True):
    x, y = manipex.data.load("mnist5k", split="train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.mnist_cnn()
    models.train_classifier(model, x[:512], y[:512], epochs=1, seed=0, progress=False, deterministic=deterministic)
    return pretrained.state_digest(model)


def test_train_classifier_gives_the_same_bytes_on_1_and_2_threads_and_restores_the_count():
    one = _with_threads(1, _small_training)
    two = _with_threads(2, _small_training)
    assert one == two
    # the control: without the guarantee, the thread count changes the weights (so the test can fail)
    assert _with_threads(1, lambda: _small_training(False)) == one
    assert _with_threads(2, lambda: _small_training(False)) != one
    assert _with_threads(2, lambda: (_small_training(), torch.get_num_threads())[1]) == 2


def test_atex_finetune_gives_the_same_bytes_on_1_and_2_threads():
    from manipex.defenses import atex_finetune

    x, _ = manipex.data.load("mnist5k", split="train")
    base = models.load_default("mnist")

    def finetune():
        return pretrained.state_digest(atex_finetune(base, x[:64], epochs=1, batch_size=32, copies=2, samples=2,
                                                     progress=False))

    assert _with_threads(1, finetune) == _with_threads(2, finetune)


def test_reproducible_restores_the_thread_count_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with reproducible("cpu"):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with reproducible("cpu", enabled=False):
        assert torch.get_num_threads() == before


def test_a_damaged_or_foreign_shipped_file_is_refused(monkeypatch, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    path = shutil.copy(pretrained.shipped_path("mnist"), files)
    monkeypatch.setattr(pretrained, "SHIPPED_DIR", files)
    assert pretrained.state_digest(models.load_default("mnist")) == _shipped_meta()["state_sha256"]
    model = models.load(path)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-3
    meta = models.read_metadata(path)
    models.save(model, path, arch=meta["arch"], metadata=meta["metadata"])  # the old digest, new weights
    with pytest.raises(ValueError, match="damaged"):
        models.load_default("mnist")
    meta["metadata"]["recipe"]["epochs"] = 5
    models.save(model, path, arch=meta["arch"], metadata=meta["metadata"])
    with pytest.raises(ValueError, match="recipe"):
        models.load_default("mnist")


def test_a_command_leaves_the_callers_thread_count(capsys):
    from manipex.cli import main

    before = torch.get_num_threads()
    assert main(["run", "quick", "--threads", "1", "--n", "0"]) == 2  # refused after --threads took effect
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("method", ["gradient", "lrp", "integrated_gradients", "smoothgrad"])
def test_maps_and_attacks_are_bitwise_the_same_on_1_and_2_threads(method):
    """MKL's strict mode (set when manipex is imported) makes matrix products independent of the
    thread count; without it the default model's logits already differed in the last bits."""
    from manipex.attacks import manipulate_input
    from manipex.objectives import TargetImage

    model = models.load_default("mnist")
    x, _ = manipex.data.load("mnist5k", split="test")
    options = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3, "seed": 0}}.get(method, {})

    def measure():
        logits = model(x[:16])
        xr = x[:16].clone().requires_grad_()
        h = manipex.explain(model, xr, method, create_graph=True, **options)
        (g,) = torch.autograd.grad(manipex.relevance(h).pow(2).sum(), xr)
        res = manipulate_input(model, x[:4], TargetImage(x[4:8]), method, method_options=options, steps=3, eps=0.2,
                               progress=False, patience=None)
        return [t.detach().clone() for t in (logits, h, g, res.x_adv)]

    one, two = _with_threads(1, measure), _with_threads(2, measure)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_an_experiments_results_are_the_same_on_1_and_2_threads(tmp_path):
    """The main job, small: every stored figure is the same whatever the thread count."""
    from manipex.experiments import ResultStore, run

    small = {"n": 2, "steps": 5, "methods": ["gradient", "lrp"], "defenses": ["none", "beta_smoothing", "smoothgrad"]}
    frames = []
    for threads in (1, 2):
        _with_threads(threads, lambda: run("quick", overrides=small, out=tmp_path / str(threads), quiet=True))
        frames.append(ResultStore(tmp_path / str(threads) / "quick").frame().sort_values(["unit", "image"]))
    cols = [c for c in frames[0].columns if frames[0][c].dtype.kind == "f"]
    assert cols and (frames[0][cols].to_numpy() == frames[1][cols].to_numpy()).all()
