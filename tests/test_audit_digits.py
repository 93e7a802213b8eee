"""``manipex audit`` on data it never saw (issue 30): scikit-learn's digits at 16x16, written here
as class folders of PNG images, a user's BatchNorm/AvgPool CNN given as a ``module:function``
factory with ``.pt`` state_dicts, three references of its recipe, the detection part at its
defaults."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import manipex
from manipex.attacks import manipulate_model
from manipex.experiments import run
from manipex.models import train_classifier
from manipex.objectives import CenterOfMass

FACTORY = '''
from torch import nn


def build():
    """A small CNN of the kind a user brings: BatchNorm and average pooling, 3 x 16 x 16 inputs."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
'''

#: The audit's attack parts kept small; the detection part (d) at its defaults.
SMALL = {"n": 2, "steps": 5, "eps": [0.1], "defenses": ["beta_smoothing"], "betas": [3.0], "weight_noise": [0.0]}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits as ``root/{train,val}/<digit>/<i>.png`` (RGB, 16x16, bilinear from 8x8), the
    factory's module in a folder put on ``sys.path``, and state dicts of 4 clean models (seeds
    1-4, 4 epochs) and of model 4 centre-of-mass-manipulated (gradient, 3 epochs)."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    root = tmp_path_factory.mktemp("digits")
    images, labels = sklearn_datasets.load_digits(return_X_y=True)
    small = torch.from_numpy(images.reshape(-1, 1, 8, 8) / 16.0).float()
    big = torch.nn.functional.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)
    pixels = (big.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    for i, (image, label) in enumerate(zip(pixels, labels)):
        split = "val" if i % 5 == 0 else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([image] * 3, axis=-1)).save(folder / f"{i}.png")
    site = root / "site"
    site.mkdir()
    (site / "user_digits_cnn.py").write_text(FACTORY)
    sys.path.insert(0, str(site))
    try:
        import user_digits_cnn
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("user_digits_cnn", None)
    x, y = manipex.data.load("image_folder", root=root / "train", image_size=16)
    paths = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {}
        for seed in (1, 2, 3, 4):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = user_digits_cnn.build()
            models[seed] = train_classifier(model, x, y, epochs=4, seed=seed, progress=False).eval()
        models["manipulated"] = manipulate_model(models[4], (x, y), CenterOfMass((0.0, 0.0)), "gradient", lam=0.03,
                                                 lr=1e-3, epochs=3, progress=False).model.eval()
    finally:
        torch.set_num_threads(threads)
    for name, model in models.items():
        paths[name] = root / f"{name}.pt"
        torch.save(model.state_dict(), paths[name])
    return root, site, paths


def audit(digits, weights, tmp_path, monkeypatch):
    root, site, paths = digits
    monkeypatch.syspath_prepend(str(site))
    config = {**SMALL, "dataset": "image_folder", "root": str(root), "split": "val", "image_size": 16,
              "normalize": "none", "arch": "user_digits_cnn:build", "weights": str(paths[weights]),
              "references": [str(paths[s]) for s in (1, 2, 3)]}
    try:
        return run("audit", overrides=config, out=tmp_path / str(weights), quiet=True)
    finally:
        sys.modules.pop("user_digits_cnn", None)


def test_the_audit_of_a_manipulated_model_of_unseen_data_never_reads_as_a_clean_bill(digits, tmp_path, monkeypatch):
    """The issue's own case (centre of mass, lam 0.03, 3 epochs; the maps' centre moved from 10.7 to
    5.5 px from the corner): the digit fills the image, so the maps still point at what the model
    uses and the reference-free test cannot see it; the noise-map test of gradient against 3
    references has p = 0.037, not significant after Holm's correction for 4 tests. The verdict
    must say so ("weak evidence", naming the test), where it read "no evidence" before (issue 30)."""
    tables = audit(digits, "manipulated", tmp_path, monkeypatch)
    finding = tables["verdict"].loc["Was the model itself manipulated?", "finding"]
    tests = tables["detection"]
    assert tests.counted.sum() == 4  # faithfulness of both methods, and the calibrated noise-map tests
    noise = tests.loc[("noise-map similarity", "gradient")]
    assert noise.p_value < 0.05 <= noise.adjusted_p
    assert "weak evidence" in finding and "noise-map similarity (gradient, p = " in finding, finding
    # the report states the test's power: the similarity a model must reach to be flagged with probability 0.8
    assert noise.statistic > noise.bound and noise.power > noise.statistic


def test_the_audit_does_not_call_a_clean_model_of_the_same_recipe_manipulated(digits, tmp_path, monkeypatch):
    tables = audit(digits, 4, tmp_path, monkeypatch)
    finding = tables["verdict"].loc["Was the model itself manipulated?", "finding"]
    assert finding.startswith("no evidence of manipulation (4 tests") and "weak evidence" not in finding, finding
