"""The papers' claims that do not hold on MNIST-5k, pinned at their measured size, so that a
later change cannot silently flip them (the claims that hold are pinned in test_experiments)."""
from __future__ import annotations

import pytest
import torch

import manipex
from manipex.explainers import explain, relevance
from manipex.metrics import pcc


@pytest.fixture(autouse=True)
def private_cache(mnist_model, model_cache, monkeypatch):
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(model_cache))


def _noise_stability(model, x, method, beta):
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return pcc(relevance(explain(model, noisy, method, softplus_beta=beta)),
               relevance(explain(model, x, method, softplus_beta=beta))).median().item()


def test_beta_smoothing_makes_lrp_less_stable_and_the_gradient_about_as_stable(mnist_model):
    """Dombrowski Fig. 4 holds for the gradient, not for LRP: without any attack, LRP's
    beta-smoothed map is less stable under plain noise (measured 0.995 ReLU, 0.874 at beta 1,
    0.736 at beta 0.5 on 32 test images); the gradient's stays near 0.9 (0.935, 0.928, 0.892)."""
    x, _ = manipex.data.load("mnist5k", split="test")
    x = x[:32]
    lrp = [_noise_stability(mnist_model, x, "lrp", b) for b in (None, 1.0, 0.5)]
    grad = [_noise_stability(mnist_model, x, "gradient", b) for b in (None, 1.0, 0.5)]
    assert lrp[0] > 0.98 and lrp[0] > lrp[1] + 0.05 > lrp[2] + 0.1
    assert lrp == pytest.approx([0.995, 0.874, 0.736], abs=0.03)
    assert min(grad) > 0.85 and grad == pytest.approx([0.935, 0.928, 0.892], abs=0.03)


def test_agg_mean_is_not_below_every_single_method_on_mnist(tmp_path):
    """Rieger Table 1 holds only partly at eps 0.2: the adaptive attack raises AGG-Mean's PCC with its
    target less than the gradient's but more than guided backprop's and LRP's (measured at this
    budget, max-pools smoothed in the surrogate: LRP 0.198, guided backprop 0.209, AGG-Mean 0.226,
    gradient 0.302; with hard max-pools 0.177, 0.156, 0.174, 0.188)."""
    from manipex.experiments import run

    tables = run("rieger2020", overrides={"n": 8, "batch": 8, "steps": 40, "transfer": [], "blank": [], "budgets": [0.5],
                                          "methods": ["gradient", "guided_backprop", "lrp", "agg_mean"]},
                 out=tmp_path, quiet=True)
    findings = tables["Findings"]
    assert findings.verdict.tolist() == ["partly"] and "guided_backprop" in findings.why.iloc[0]
    d_pcc = next(v for k, v in tables.items() if k.startswith("Table 1"))["Δ-PCC"]
    assert d_pcc["guided_backprop"] < d_pcc["agg_mean"] < d_pcc["gradient"]
    # at eps 0.5, where the input no longer pins LRP and guided backprop, AGG-Mean moves least
    # (measured 0.299 vs gradient 0.324, guided backprop 0.319, LRP 0.324)
    larger = tables["Table 1 by budget: Δ-PCC of the targeted attack"]["eps 0.5"]
    assert larger["agg_mean"] < larger.drop("agg_mean").min()
    assert larger["lrp"] > d_pcc["lrp"] + 0.08 and larger["guided_backprop"] > d_pcc["guided_backprop"] + 0.08
    assert d_pcc.to_dict() == pytest.approx({"guided_backprop": 0.209, "agg_mean": 0.226, "lrp": 0.198,
                                             "gradient": 0.302}, abs=0.02)


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
    max-pools) the gradient map's PCC with the target plateaus at 0.70 (0.73 after 300 steps);
    smoothing the max-pools too (manipex's default) reaches 0.83 in the same 100 steps."""
    before, hard = _targeted(mnist_model, "gradient", smooth_pools=False)
    _, smooth = _targeted(mnist_model, "gradient")
    assert before == pytest.approx(0.49, abs=0.02)
    assert hard == pytest.approx(0.70, abs=0.04) and smooth == pytest.approx(0.83, abs=0.04)


def test_the_budget_limits_input_shaped_maps_on_mnist(mnist_model):
    """Fig. 3 holds only partly for LRP at ε 0.2: MNIST's strokes are 1 on a background of exact
    0, and a perturbation of ε gives a background pixel at most ε of a stroke's input. LRP's
    PCC with the target reaches 0.64 at ε 0.2 and 0.87 at ε 0.5; the gradient, which does not
    follow the input, is 0.83 already at ε 0.2."""
    before, small = _targeted(mnist_model, "lrp", eps=0.2)
    _, large = _targeted(mnist_model, "lrp", eps=0.5)
    assert before == pytest.approx(0.40, abs=0.02)
    assert small == pytest.approx(0.64, abs=0.04) and large == pytest.approx(0.87, abs=0.04)
