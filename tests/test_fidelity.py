"""The papers' claims that do not hold on MNIST-5k, pinned at their measured size, so that a
later change cannot silently flip them (the claims that hold are checked as directions in
test_experiments).

Every figure here is *pinned*: measured on the default model, whose weights ship with manipex and
are the same on every machine (and maps and attacks are bitwise the same on any thread count).
Its tolerance is the measured spread over seeds (``benchmarks/pinned_spread.py``: the default
recipe trained with seeds 0 to 4, each figure measured as here; tolerance ``max(0.02, 2 sd)``),
so a change of the code that moves a figure by more than another equally good model would is
caught. The directions asserted beside them (``>``, ``<``) are the claims themselves."""
from __future__ import annotations

import pytest
import torch

import manipex
from manipex.explainers import explain, relevance
from manipex.metrics import pcc

#: figure -> (value on the shipped default model, tolerance = max(0.02, 2 sd over seeds 0-4)), from
#: benchmarks/pinned_spread.py (mean over seeds in the comments)
PINNED = {
    "noise stability lrp": ([0.995, 0.861, 0.730], [0.02, 0.07, 0.10]),      # mean 0.995, 0.882, 0.752
    "noise stability gradient": ([0.932, 0.925, 0.891], [0.03, 0.03, 0.04]),  # mean 0.932, 0.916, 0.884
    "rieger Δ-PCC": ({"guided_backprop": 0.204, "agg_mean": 0.225, "lrp": 0.197, "gradient": 0.298},
                     {"guided_backprop": 0.05, "agg_mean": 0.04, "lrp": 0.04, "gradient": 0.06}),
    "gradient before": (0.460, 0.09),                                       # mean 0.446
    "gradient hard pools": (0.703, 0.10),                                   # mean 0.662
    "gradient smooth pools": (0.829, 0.06),                                 # mean 0.801
    "lrp before": (0.401, 0.07),                                            # mean 0.406
    "lrp eps 0.2": (0.630, 0.08),                                           # mean 0.647
    "lrp eps 0.5": (0.868, 0.04),                                           # mean 0.867
}


def pinned(value, name):
    expected, tolerance = PINNED[name]
    if isinstance(expected, dict):
        return all(value[k] == pytest.approx(v, abs=tolerance[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return all(a == pytest.approx(b, abs=t) for a, b, t in zip(value, expected, tolerance))
    return value == pytest.approx(expected, abs=tolerance)


@pytest.fixture(autouse=True)
def private_cache(mnist_model, model_cache, monkeypatch):
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(model_cache))


def _noise_stability(model, x, method, beta):
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return pcc(relevance(explain(model, noisy, method, softplus_beta=beta)),
               relevance(explain(model, x, method, softplus_beta=beta))).median().item()


def test_beta_smoothing_makes_lrp_less_stable_and_the_gradient_about_as_stable(mnist_model):
    """Dombrowski Fig. 4 holds for the gradient, not for LRP: without any attack, LRP's
    beta-smoothed map is less stable under plain noise (measured 0.995 ReLU, 0.861 at beta 1,
    0.730 at beta 0.5 on 32 test images); the gradient's stays near 0.9 (0.932, 0.925, 0.891).
    Pinned, with the directions as the claim."""
    x, _ = manipex.data.load("mnist5k", split="test")
    x = x[:32]
    lrp = [_noise_stability(mnist_model, x, "lrp", b) for b in (None, 1.0, 0.5)]
    grad = [_noise_stability(mnist_model, x, "gradient", b) for b in (None, 1.0, 0.5)]
    assert lrp[0] > 0.98 and lrp[0] > lrp[1] + 0.05 > lrp[2] + 0.1
    assert pinned(lrp, "noise stability lrp"), lrp
    assert min(grad) > 0.85 and pinned(grad, "noise stability gradient"), grad


def test_agg_mean_is_not_below_every_single_method_on_mnist(tmp_path):
    """Rieger Table 1 holds only partly at eps 0.2: the adaptive attack raises AGG-Mean's PCC with its
    target less than the gradient's but more than guided backprop's and LRP's (measured at this
    budget, max-pools smoothed in the surrogate: LRP 0.197, guided backprop 0.204, AGG-Mean 0.225,
    gradient 0.298). Pinned; the order is the claim. On the other seeds of the recipe the order
    at eps 0.2 holds for 4 of 5 models (seed 1: guided backprop 0.174 below LRP 0.186), and at
    eps 0.5 AGG-Mean moves least on 4 of 5 (seed 4: gradient 0.306 below its 0.318)."""
    from manipex.experiments import run

    tables = run("rieger2020", overrides={"n": 8, "batch": 8, "steps": 40, "transfer": [], "blank": [], "budgets": [0.5],
                                          "methods": ["gradient", "guided_backprop", "lrp", "agg_mean"]},
                 out=tmp_path, quiet=True)
    findings = tables["findings"]
    assert findings.verdict.tolist() == ["partly"] and "guided_backprop" in findings.why.iloc[0]
    d_pcc = tables["table1"]["Δ-PCC"]
    assert d_pcc["guided_backprop"] < d_pcc["agg_mean"] < d_pcc["gradient"]
    # at eps 0.5, where the input no longer pins LRP and guided backprop, AGG-Mean moves least
    # (measured 0.300 vs gradient 0.321, guided backprop 0.313, LRP 0.321)
    larger = tables["table1_budgets"]["eps 0.5"]
    assert larger["agg_mean"] < larger.drop("agg_mean").min()
    assert larger["lrp"] > d_pcc["lrp"] + 0.08 and larger["guided_backprop"] > d_pcc["guided_backprop"] + 0.08
    assert pinned(d_pcc.to_dict(), "rieger Δ-PCC"), d_pcc.to_dict()


def _targeted(model, method, steps=100, eps=0.2, **attack):
    from manipex.attacks import manipulate_input
    from manipex.objectives import TargetImage

    x, _ = manipex.data.load("mnist5k", split="test")
    xs, xt = x[:8], x[16:24]
    target = relevance(explain(model, xt, method, model(xs).argmax(1)))
    torch.manual_seed(0)
    res = manipulate_input(model, xs, TargetImage(xt), method, steps=steps, eps=eps, progress=False, **attack)
    assert bool(res.class_kept.all())
    return pcc(res.maps_before, target).mean().item(), pcc(res.maps_after, target).mean().item()


def test_smoothing_the_max_pools_lifts_the_targeted_attack_on_the_default_model(mnist_model):
    """Dombrowski Fig. 3 on the default model: with the paper's surrogate (softplus, hard
    max-pools) the gradient map's PCC with the target (0.46 before) plateaus at 0.70; smoothing
    the max-pools too (manipex's default) reaches 0.83 in the same 100 steps. Pinned; smoothing's
    lead is the claim (over the seeds of the recipe: 0.80 vs 0.66 on average)."""
    before, hard = _targeted(mnist_model, "gradient", smooth_pools=False)
    _, smooth = _targeted(mnist_model, "gradient")
    assert smooth > hard + 0.05 > before + 0.15
    assert pinned(before, "gradient before") and pinned(hard, "gradient hard pools"), (before, hard)
    assert pinned(smooth, "gradient smooth pools"), smooth


def test_the_budget_limits_input_shaped_maps_on_mnist(mnist_model):
    """Fig. 3 holds only partly for LRP at ε 0.2: MNIST's strokes are 1 on a background of exact
    0, and a perturbation of ε gives a background pixel at most ε of a stroke's input. LRP's
    PCC with the target (0.40 before) reaches 0.63 at ε 0.2 and 0.87 at ε 0.5; the gradient,
    which does not follow the input, is 0.83 already at ε 0.2. Pinned; the rise with the budget
    is the claim."""
    before, small = _targeted(mnist_model, "lrp", eps=0.2)
    _, large = _targeted(mnist_model, "lrp", eps=0.5)
    assert large > small + 0.15 > before + 0.3
    assert pinned(before, "lrp before") and pinned(small, "lrp eps 0.2") and pinned(large, "lrp eps 0.5"), (
        before, small, large)
