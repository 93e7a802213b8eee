"""Worst-case robustness metrics (max-sensitivity, local Lipschitz, RIS) and MapDistance:
closed forms, Quantus's formulas by hand, adversarial >= sampled, determinism, bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import manipex
from manipex import metrics
from manipex.metrics import Direction
from manipex.attacks import manipulate_input
from manipex.objectives import MapDistance

from conftest import assert_same_state, small_cnn, state_of

FAST = dict(steps=15)  # attack options that keep every test short


def linear(d: int = 6, k: int = 3, bias: bool = True) -> nn.Module:
    torch.manual_seed(3)
    return nn.Linear(d, k, bias=bias).double().eval()


def mlp(act: type = nn.Softplus, **kw) -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(6, 12), act(**kw), nn.Linear(12, 12), act(**kw), nn.Linear(12, 3)).double().eval()


def grad_of(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Input gradients of the target logits, by plain autograd (not through manipex)."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return g.detach().numpy()


# ------------------------------------------------------------------------------------ closed forms

def test_gradient_map_of_a_linear_model_is_constant_so_scores_are_zero():
    model, x = linear(), torch.rand(5, 6, dtype=torch.float64)
    for fn in (metrics.max_sensitivity, metrics.local_lipschitz):
        s = fn(model, x, "gradient", target=1, samples=8)
        assert s.dtype == torch.float32 and s.shape == (5,)
        assert s.abs().max() <= 1e-7
    # and the attack cannot do better than 0 either
    s = metrics.max_sensitivity(model, x[:2], target=1, samples=4, adversarial=True, attack_options=FAST)
    assert s.abs().max() <= 1e-7


def test_grad_x_input_on_a_linear_model_has_a_closed_form():
    """a(x) = w ⊙ x, so a(x + d) - a(x) = w ⊙ d: MS = ||w⊙d|| / ||w⊙x||, L = ||w⊙d|| / ||d||."""
    model, t = linear(), 2
    x = torch.rand(3, 6, dtype=torch.float64) + 0.5
    d = torch.tensor([[0.1, -0.2, 0.05, 0.0, 0.15, -0.1], [-0.2, 0.2, -0.2, 0.2, -0.2, 0.2]], dtype=torch.float64)
    w = model.weight[t].detach()
    ms = metrics.max_sensitivity(model, x, "grad_x_input", target=t, perturbations=d)
    lle = metrics.local_lipschitz(model, x, "grad_x_input", target=t, perturbations=d, normalise=False)
    for i in range(3):
        ms_hand = max(float((w * dk).norm() / (w * x[i]).norm()) for dk in d)
        lle_hand = max(float((w * dk).norm() / dk.norm()) for dk in d)
        assert ms[i].item() == pytest.approx(ms_hand, rel=1e-6)
        assert lle[i].item() == pytest.approx(lle_hand, rel=1e-6)
    # RIS: elementwise (w⊙d)/(w⊙x) = d/x, so RIS = ||d/x|| / ||d/x|| = 1 whatever d
    ris = metrics.relative_input_stability(model, x, "grad_x_input", target=t, perturbations=d,
                                           prediction_changed="keep")
    assert torch.allclose(ris, torch.ones(3), atol=1e-6)


# ------------------------------------------------------------- Quantus's formulas, computed by hand

def test_agreement_with_quantus_formulas_on_fixed_perturbations():
    model = mlp()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 6, generator=g, dtype=torch.float64)
    d = (torch.rand(7, 6, generator=g, dtype=torch.float64) * 2 - 1) * 0.2
    y = model(x).argmax(1)
    a = grad_of(model, x, y)
    xs = x.numpy()
    ms_ref, lle_ref, ris_ref = [], [], []
    for i in range(4):
        xp = xs[i][None] + d.numpy()                                           # (S, D)
        ap = grad_of(model, torch.from_numpy(xp), y[i].repeat(len(xp)))
        # MaxSensitivity: difference, fro_norm(diff) / fro_norm(a), np.nanmax
        ms_ref.append(np.max(np.linalg.norm(a[i] - ap, axis=-1) / np.linalg.norm(a[i])))
        # LocalLipschitzEstimate: normalise_by_max, lipschitz_constant with distance_euclidean twice
        an, apn = a[i] / np.abs(a[i]).max(), ap / np.abs(ap).max(axis=1, keepdims=True)
        lle_ref.append(np.max(np.sqrt(((an - apn) ** 2).sum(-1)) / (np.sqrt(((xs[i] - xp) ** 2).sum(-1)) + 1e-10)))
        # RelativeInputStability.relative_input_stability_objective, eps_min 1e-6
        e = 1e-6
        num = np.linalg.norm((a[i] - ap) / (a[i] + (a[i] == 0) * e), axis=-1)
        den = np.linalg.norm((xs[i] - xp) / (xs[i] + (xs[i] == 0) * e), axis=-1)
        den = den + (den == 0) * e
        ris_ref.append(np.max(num / den))
    kw = dict(perturbations=d, prediction_changed="keep")
    ms = metrics.max_sensitivity(model, x, **kw)
    lle = metrics.local_lipschitz(model, x, **kw)
    ris = metrics.relative_input_stability(model, x, **kw)
    np.testing.assert_allclose(ms.numpy(), ms_ref, rtol=1e-5)
    np.testing.assert_allclose(lle.numpy(), lle_ref, rtol=1e-5)
    np.testing.assert_allclose(ris.numpy(), ris_ref, rtol=1e-5)


def test_samples_that_change_the_class_keep_skip_or_nan():
    """A linear model with x on both sides of a boundary: d moves some images across it."""
    model = nn.Linear(2, 2, bias=False).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[0.5, 0.45], [0.9, 0.1], [0.5, 0.52]], dtype=torch.float64)  # classes 0, 0, 1
    d = torch.tensor([[0.0, 0.1], [0.1, 0.0], [0.0, -0.2]], dtype=torch.float64)
    a = lambda xx: (xx * model.weight[0]).detach()  # grad_x_input for target 0, D = 2
    kw = dict(target=0, perturbations=d, normalise=False)
    keep = metrics.local_lipschitz(model, x, "grad_x_input", prediction_changed="keep", **kw)
    skip = metrics.local_lipschitz(model, x, "grad_x_input", prediction_changed="skip", **kw)
    nan = metrics.local_lipschitz(model, x, "grad_x_input", prediction_changed="nan", **kw)
    ratios = torch.stack([(a(x + dk) - a(x)).norm(dim=1) / dk.norm() for dk in d], 1)  # (N, S): 0, 1, 0
    kept = torch.stack([(model(x + dk).argmax(1) == model(x).argmax(1)) for dk in d], 1)
    assert kept.tolist() == [[False, True, True], [True, True, True], [True, False, False]]
    assert torch.allclose(keep, ratios.amax(1).float())
    assert skip.tolist()[:2] == pytest.approx([1.0, 1.0]) and skip[2].item() == pytest.approx(0.0, abs=1e-9)
    assert torch.isnan(nan[0]) and torch.isnan(nan[2]) and nan[1].item() == pytest.approx(1.0)
    # no sample keeps the class: NaN under "skip"
    lone = metrics.local_lipschitz(model, x[2:], "grad_x_input", prediction_changed="skip", target=0,
                                   perturbations=d[2:])
    assert torch.isnan(lone).all()


def test_normalise_max_makes_the_lipschitz_estimate_scale_free():
    model = mlp()
    scaled = nn.Sequential(model, nn.Linear(3, 3, bias=False).double()).eval()
    with torch.no_grad():
        scaled[1].weight.copy_(7.0 * torch.eye(3, dtype=torch.float64))
    x = torch.rand(3, 6, dtype=torch.float64)
    kw = dict(samples=6)
    assert torch.allclose(metrics.local_lipschitz(model, x, **kw), metrics.local_lipschitz(scaled, x, **kw), rtol=1e-5)
    raw = metrics.local_lipschitz(model, x, normalise="none", **kw)
    assert torch.allclose(7 * raw, metrics.local_lipschitz(scaled, x, normalise="none", **kw), rtol=1e-5)
    # max-sensitivity is a relative change: scale-free without normalising
    assert torch.allclose(metrics.max_sensitivity(model, x, **kw), metrics.max_sensitivity(scaled, x, **kw), rtol=1e-5)


# ------------------------------------------------------------------- adversarial vs sampled

@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_adversarial_max_sensitivity_is_never_below_sampled(name):
    model = small_cnn() if name == "cnn" else mlp(nn.ReLU)
    shape = (1, 8, 8) if name == "cnn" else (6,)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = metrics.max_sensitivity(model, x, radius=0.1, samples=8, adversarial=True, attack_options=FAST,
                                  return_details=True)
    assert (out.score >= out.sampled).all()
    assert torch.equal(out.score, torch.fmax(out.sampled, out.adversarial))
    assert metrics.linf(x, out.x_worst).max() <= 0.1 + 1e-9  # the worst point lies in the ball


def test_the_attack_beats_sampling_on_most_images_of_a_relu_net():
    model = mlp(nn.ReLU)
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = metrics.max_sensitivity(model, x, radius=0.1, samples=10, adversarial=True,
                                  attack_options=dict(steps=30), return_details=True)
    wins = (out.adversarial > out.sampled).float().mean().item()
    assert wins >= 0.5, (out.sampled, out.adversarial)
    assert (out.score >= out.sampled).all()


def test_adversarial_also_for_lipschitz_and_ris():
    model, x = mlp(), torch.rand(3, 6, dtype=torch.float64) + 0.2
    for fn in (metrics.local_lipschitz, metrics.relative_input_stability):
        out = fn(model, x, samples=5, adversarial=True, attack_options=FAST, return_details=True)
        assert (torch.nan_to_num(out.score, nan=-1) >= torch.nan_to_num(out.sampled, nan=-1)).all()


# ------------------------------------------------------------------- determinism and batching

def test_seed_makes_it_deterministic_and_batch_independent():
    model = small_cnn()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for fn in (metrics.max_sensitivity, metrics.local_lipschitz, metrics.relative_input_stability):
        a = fn(model, x, samples=6, seed=3, prediction_changed="keep")
        assert torch.equal(a, fn(model, x, samples=6, seed=3, prediction_changed="keep"))
        assert not torch.equal(a, fn(model, x, samples=6, seed=4, prediction_changed="keep"))
        alone = torch.cat([fn(model, x[i:i + 1], samples=6, seed=3, prediction_changed="keep") for i in range(4)])
        torch.testing.assert_close(alone, a, rtol=1e-6, atol=0)
        chunked = fn(model, x, samples=6, seed=3, prediction_changed="keep", batch_size=5)  # 1 sample per chunk
        torch.testing.assert_close(chunked, a, rtol=1e-6, atol=0)


def test_the_metric_objects_give_the_functions_scores_and_name_an_unknown_option():
    """Issue 27: one ``WorstCase`` base, a ratio and a draw per metric; the functions are the
    objects called with their options."""
    from manipex.evaluation import LocalLipschitz, MaxSensitivity, RelativeInputStability, WorstCase

    model, x = mlp(), torch.rand(3, 6, dtype=torch.float64)
    for cls, fn in ((MaxSensitivity, metrics.max_sensitivity), (LocalLipschitz, metrics.local_lipschitz),
                    (RelativeInputStability, metrics.relative_input_stability)):
        assert issubclass(cls, WorstCase)
        torch.testing.assert_close(cls(samples=5, seed=2)(model, x, "grad_x_input"),
                                   fn(model, x, "grad_x_input", samples=5, seed=2), rtol=0, atol=0)
    with pytest.raises(TypeError, match="max_sensitivity: unknown option 'sample'.*samples"):
        metrics.max_sensitivity(model, x, sample=5)
    with pytest.raises(ValueError, match="local_lipschitz: std"):
        LocalLipschitz(std=-1.0)(model, x)


def test_the_registry_records_directions_and_calls_the_functions():
    model, x = mlp(), torch.rand(2, 6, dtype=torch.float64)
    assert set(metrics.ROBUSTNESS_METRICS) == {"max_sensitivity", "local_lipschitz", "relative_input_stability"}
    for name, m in metrics.ROBUSTNESS_METRICS.items():
        assert m.direction is Direction.LOWER
        assert torch.equal(m(model, x, "gradient", samples=3), getattr(metrics, name)(model, x, samples=3))


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, error, words", [
    (dict(radius=0.0), ValueError, "radius"),
    (dict(radius=-1), ValueError, "radius"),
    (dict(samples=0), ValueError, "samples"),
    (dict(method="no_such_method"), ValueError, "method"),
    (dict(norm="l3"), ValueError, "norm"),
    (dict(normalise="sum"), ValueError, "normalise"),
    (dict(prediction_changed="drop"), ValueError, "prediction_changed"),
    (dict(attack_options={"eps": 1.0}), ValueError, "attack_options"),
    (dict(perturbations=torch.zeros(3, 5, dtype=torch.float64)), ValueError, "perturbations"),
    (dict(clamp=(0.5, 1.0)), ValueError, "clamp"),
    (dict(method_options={"steps": 3}), TypeError, "steps"),
])
def test_bad_arguments_raise_clear_errors_and_leave_the_model(kwargs, error, words):
    model, x = mlp(), torch.rand(2, 6, dtype=torch.float64)
    before, x0 = state_of(model), x.clone()
    method = kwargs.pop("method", "gradient")
    with pytest.raises(error, match=words):
        metrics.max_sensitivity(model, x, method, **kwargs)
    assert_same_state(before, state_of(model))
    assert torch.equal(x, x0)


def test_bad_inputs_and_training_mode_are_refused():
    model = mlp()
    bad = torch.rand(2, 6, dtype=torch.float64)
    bad[0, 1] = math.nan
    with pytest.raises(ValueError, match="x contains"):
        metrics.local_lipschitz(model, bad)
    with pytest.raises(ValueError, match="x must be a batch"):
        metrics.relative_input_stability(model, torch.rand(6, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        metrics.max_sensitivity(model, torch.rand(2, 6))
    model.train()
    before = state_of(model)
    with pytest.raises(ValueError, match="training mode"):
        metrics.max_sensitivity(model, torch.rand(2, 6, dtype=torch.float64))
    assert model.training
    assert_same_state(before, state_of(model))


def test_a_full_adversarial_run_leaves_the_model_unchanged():
    model = small_cnn()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    before = state_of(model)
    metrics.relative_input_stability(model, x, samples=3, adversarial=True, attack_options=FAST)
    assert_same_state(before, state_of(model))
    assert not model.training


# ------------------------------------------------------------------------------ MapDistance

def test_map_distance_gradient_moves_the_map_away_from_its_start():
    model = mlp()
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    r0 = manipex.relevance(manipex.explain(model, x))
    objective = MapDistance().prepare(None, x, r0)
    assert torch.allclose(objective.metric(r0), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    z = (x + 0.01 * torch.randn(3, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64))
    start = objective.metric(manipex.relevance(manipex.explain(model, z)))
    for _ in range(5):  # plain gradient steps on the loss
        z = z.detach().requires_grad_(True)
        loss = objective.loss(manipex.relevance(manipex.explain(model, z, create_graph=True))).sum()
        (g,) = torch.autograd.grad(loss, z)
        z = z - 0.02 * g.sign()
    after = objective.metric(manipex.relevance(manipex.explain(model, z.detach())))
    assert (after > start).all(), (start, after)
    # a subset keeps its own references
    sub = objective.select(torch.tensor([2]))
    assert torch.allclose(sub.metric(r0[2:]), torch.zeros(1, dtype=torch.float64), atol=1e-5)


def test_map_distance_through_the_input_attack():
    """A fixed reference (the clean map) and a start away from it: a few steps raise the
    distance; attacks report it as metric_after > metric_before."""
    model = mlp(nn.ReLU)
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 0.6 + 0.2
    r0 = manipex.relevance(manipex.explain(model, x))
    start = x + 0.02
    res = manipulate_input(model, start, MapDistance(reference=r0), eps=0.1, steps=10, lr=0.01, progress=False)
    assert res.metric_name == "map_distance" and res.direction is Direction.HIGHER
    assert (res.metric_after >= res.metric_before).all() and (res.metric_after > res.metric_before).any()
    with pytest.raises(ValueError, match="reference"):
        MapDistance(reference=torch.full((1, 6), math.nan))


def test_clamp_keeps_every_point_in_the_data_range_also_under_no_grad():
    model = small_cnn()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    x[:, :, :2] = 0.0  # exact zeros at the edge of the range, as in MNIST
    with torch.no_grad():
        out = metrics.max_sensitivity(model, x, radius=0.2, samples=4, clamp=(0.0, 1.0), adversarial=True,
                                      attack_options=FAST, return_details=True)
    assert out.x_worst.min() >= 0.0 and out.x_worst.max() <= 1.0
    assert metrics.linf(x, out.x_worst).max() <= 0.2 + 1e-9
    assert torch.isfinite(out.score).all() and (out.score >= out.sampled).all()
