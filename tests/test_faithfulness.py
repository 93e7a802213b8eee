"""Faithfulness metrics (manipex.metrics.faithfulness): closed forms on a linear model, agreement
with Quantus 0.6 (pixel flipping, ROAD's imputation and curve) and Captum (infidelity), and a
faithful map beating a random one on a trained CNN."""
from __future__ import annotations

import importlib.util
import os
import unittest.mock

import numpy as np
import pytest
import torch
from torch import nn

import manipex
from manipex.metrics import faithfulness as fa
from manipex.metrics import Direction


def import_quantus():
    """Quantus imports Zennit when it is installed, and Zennit imports torchvision, which this
    CPU torch lacks: Quantus is imported with Zennit and TensorFlow hidden (it needs neither for
    the metrics tested here). Skipped where Quantus (or its OpenCV) is not installed."""
    real = importlib.util.find_spec
    hidden = ("zennit", "tensorflow", "tf_explain")

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in hidden else real(name, *args, **kwargs)

    if real("quantus") is None or real("cv2") is None:
        pytest.skip("quantus (pip install --no-deps quantus==0.6.0 opencv-python-headless cachetools) not installed")
    environment = dict(os.environ)  # OpenCV's import sets KMP_* and LD_LIBRARY_PATH
    try:
        with unittest.mock.patch("importlib.util.find_spec", find_spec):
            import quantus
    finally:
        os.environ.clear()
        os.environ.update(environment)
    return quantus


class Linear(nn.Module):
    """``logits = [w . x, 0]``: a closed form for every removal."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        z = (x.flatten(1) * self.w.flatten()).sum(1, keepdim=True)
        return torch.cat([z, torch.zeros_like(z)], 1)


def tiny_cnn(channels: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5)).double().eval()


def test_the_deletion_curve_of_a_linear_model_is_the_sum_of_the_removed_contributions():
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4, dtype=torch.float64)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    model = Linear(w).eval()
    maps = (x * w)[:, 0]  # grad x input: each pixel's contribution
    fractions = [0, 0.25, 0.5, 1.0]
    curve = fa.deletion_curve(model, x, maps, target=0, fractions=fractions, output="logit")
    contributions = (x * w).flatten(1)
    ranked = contributions.sort(dim=1, descending=True).values
    for k, f in enumerate(fractions):
        removed = ranked[:, : int(f * 16)].sum(1)
        torch.testing.assert_close(curve[:, k].double(), contributions.sum(1) - removed, rtol=1e-6, atol=1e-6)
    # insertion is the mirror: what the top features contribute on their own
    ins = fa.insertion_curve(model, x, maps, target=0, fractions=fractions, output="logit")
    for k, f in enumerate(fractions):
        torch.testing.assert_close(ins[:, k].double(), ranked[:, : int(f * 16)].sum(1), rtol=1e-6, atol=1e-6)
    # the most relevant first removes the positive contributions first: the curve falls, then rises
    assert bool((curve[:, 1] <= curve[:, 0] + 1e-9).all())
    lerf = fa.deletion_curve(model, x, maps, target=0, fractions=fractions, output="logit", order="lerf")
    assert bool((lerf[:, 1] >= lerf[:, 0] - 1e-9).all())
    # the area over the fraction axis by the trapezoid rule
    area = fa.area(curve, fractions)
    expected = sum((fractions[i + 1] - fractions[i]) * (curve[:, i] + curve[:, i + 1]) / 2 for i in range(3))
    torch.testing.assert_close(area, expected)


def test_pixel_maps_remove_every_channel_of_a_pixel_and_the_mean_baseline_is_per_channel():
    torch.manual_seed(1)
    w = torch.randn(3, 2, 2, dtype=torch.float64)
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    model = Linear(w).eval()
    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]] * 2, dtype=torch.float64)  # pixel (0, 0) first
    curve = fa.deletion_curve(model, x, maps, target=0, fractions=[0.25], output="logit", baseline="mean")
    mean = x.mean(dim=(2, 3), keepdim=True)
    kept = x.clone()
    kept[:, :, 0, 0] = mean[:, :, 0, 0]
    torch.testing.assert_close(curve[:, 0].double(), (kept * w).flatten(1).sum(1))


def test_pixel_flipping_agrees_with_quantus():
    quantus = import_quantus()
    model = tiny_cnn()
    torch.manual_seed(2)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    a = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = model(x).argmax(1)
    metric = quantus.PixelFlipping(features_in_step=4, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True)
    theirs = np.array(metric(model=model.float(), x_batch=x.float().numpy(), y_batch=y.numpy(),
                             a_batch=a.float().numpy(), softmax=True, device="cpu"))
    model.double()
    fractions = [4 * k / 64 for k in range(1, 17)]
    ours = fa.deletion_curve(model, x, a, y, fractions=fractions, baseline=0.0)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)
    # Quantus's area is over step indices (dx = 1): ours over the fraction axis times the steps
    auc = quantus.PixelFlipping(features_in_step=4, perturb_baseline=0.0, normalise=False, abs=False,
                                disable_warnings=True, return_auc_per_sample=True)
    with unittest.mock.patch.object(np, "trapz", np.trapezoid, create=True):  # removed in NumPy 2.4
        their_auc = np.array(auc(model=model.float(), x_batch=x.float().numpy(), y_batch=y.numpy(),
                                 a_batch=a.float().numpy(), softmax=True, device="cpu"))
    model.double()
    np.testing.assert_allclose(fa.area(ours, fractions).numpy() * 15, their_auc, atol=1e-4)


def test_linear_imputation_agrees_with_quantus_road_imputation():
    import_quantus()
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(3)
    image = rng.random((2, 9, 7))
    for share in (0.1, 0.5, 0.9):
        indices = np.sort(rng.choice(63, int(63 * share), replace=False))
        theirs = noisy_linear_imputation(image.copy(), indices, noise=0.0)
        mask = torch.zeros(1, 1, 63, dtype=torch.bool)
        mask[0, 0, torch.from_numpy(indices)] = True
        ours = fa.linear_imputation(torch.from_numpy(image)[None], mask.reshape(1, 1, 9, 7))
        np.testing.assert_allclose(ours[0].numpy(), theirs, atol=1e-6)


def test_road_agrees_with_quantus():
    quantus = import_quantus()
    model = tiny_cnn(seed=4).float()
    torch.manual_seed(4)
    x = torch.rand(8, 1, 8, 8)
    a = torch.randn(8, 1, 8, 8)
    y = model(x).argmax(1)
    percentages = [10, 30, 50, 70, 90]
    metric = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, abs=False, disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu")
    ours = fa.road(model, x, a[:, 0], y, percentages=percentages, noise=0.0)
    np.testing.assert_allclose(ours.mean(0).numpy(), [theirs[p] for p in percentages], atol=1e-6)


def test_infidelity_agrees_with_captum():
    from captum.metrics import infidelity as captum_infidelity

    model = tiny_cnn(seed=5)
    torch.manual_seed(5)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    a = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = model(x).argmax(1)
    noise = torch.randn(7, 1, 8, 8, dtype=torch.float64) * 0.1

    def perturb(inputs):  # Captum repeats each input 7 times in a row (repeat_interleave)
        p = noise.repeat(len(inputs) // 7, 1, 1, 1)
        return p, inputs - p

    for normalize in (True, False):
        theirs = captum_infidelity(model, perturb, x, a, target=y, n_perturb_samples=7, normalize=normalize)
        ours = fa.infidelity(model, x, a, y, perturbations=noise, normalize=normalize)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)


def test_a_faithful_map_beats_a_random_one_on_a_trained_cnn(mnist_model):
    x, _ = manipex.data.load("mnist5k", split="test")
    x = x[:16]
    maps = manipex.relevance(manipex.explain(mnist_model, x, "lrp"))
    random_maps = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    for fn, better in ((fa.pixel_flipping, torch.lt), (fa.insertion, torch.gt)):
        assert bool(better(fn(mnist_model, x, maps).mean(), fn(mnist_model, x, random_maps).mean()))
    road_map = fa.road(mnist_model, x, maps, percentages=[10, 20, 30], output="probability").mean()
    road_random = fa.road(mnist_model, x, random_maps, percentages=[10, 20, 30], output="probability").mean()
    assert road_map < road_random - 0.1
    assert fa.FAITHFULNESS_METRICS["insertion"].direction is Direction.HIGHER
    assert fa.FAITHFULNESS_METRICS["pixel_flipping"].direction is Direction.LOWER


def test_faithfulness_metrics_refuse_bad_input_and_leave_the_model_alone():
    model = tiny_cnn().float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 8, 8)
    maps = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match="maps must have the shape of x"):
        fa.deletion_curve(model, x, torch.rand(3, 7, 8))
    with pytest.raises(ValueError, match="maps has 2 maps for 3 inputs"):
        fa.deletion_curve(model, x, maps[:2])
    with pytest.raises(ValueError, match="NaN"):
        fa.pixel_flipping(model, x, maps.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="fractions must increase"):
        fa.deletion_curve(model, x, maps, fractions=[0.5, 0.1])
    with pytest.raises(ValueError, match="does not broadcast"):
        fa.deletion_curve(model, x, maps, baseline=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="baseline must be one of"):
        fa.deletion_curve(model, x, maps, baseline="blur")
    with pytest.raises(ValueError, match="ROAD imputes pixels of images"):
        fa.road(nn.Sequential(nn.Linear(5, 2)).eval(), torch.rand(3, 5), torch.rand(3, 5))
    with pytest.raises(ValueError, match="out of range"):
        fa.deletion_curve(model, x, maps, target=9)
    with pytest.raises(ValueError, match="attributions must have the shape of x"):
        fa.infidelity(model, x, maps)
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        fa.insertion(model, x, maps)
    model.eval()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
