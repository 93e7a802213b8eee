"""Input attacks on the default MNIST-5k model (seeded): the acceptance of the attack issue."""
from __future__ import annotations

import copy
import math
import time

import pytest
import torch

import manipex
from manipex.attacks import InputAttack, manipulate_input, transfer_matrix
from manipex.metrics import center_of_mass, pcc, topk_intersection
from manipex.objectives import CenterOfMass, TargetImage, TargetMap, TopKSuppression

from conftest import assert_same_state, state_of


@pytest.fixture(scope="module")
def setup(mnist_model):
    x, _ = manipex.data.load("mnist5k", split="test")
    return mnist_model, x[:32]


def random_sign(x, eps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (x + eps * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(x.dtype)).clamp(0, 1)


# 16 images; measured rises (2026-12-02): 0.38, 0.36, 0.30, 0.22, 0.22, random perturbations <= 0.02
TARGETED = [
    ("gradient", {}, 150, 0.2),
    ("grad_x_input", {}, 150, 0.1),
    ("integrated_gradients", {"steps": 5}, 100, 0.1),
    ("guided_backprop", {}, 150, 0.1),
    ("lrp", {}, 150, 0.1),
]


@pytest.mark.parametrize("method,opts,steps,required", TARGETED)
def test_targeted_attack_moves_map_to_target_and_keeps_class(setup, method, opts, steps, required):
    model, x = setup
    x = x[:16]
    before = state_of(model)
    x_target = x.roll(1, 0)  # each image's target is the map of another test image
    res = manipulate_input(model, x, TargetImage(x_target), method, method_options=opts,
                           steps=steps, eps=0.2, progress=False)
    assert_same_state(before, state_of(model))
    t = model(x).argmax(1)
    r_target = manipex.relevance(manipex.explain(model, x_target, method, t, **opts))
    r_random = manipex.relevance(manipex.explain(model, random_sign(x, 0.2), method, t, **opts))
    rise = (pcc(res.maps_after, r_target) - pcc(res.maps_before, r_target)).mean().item()
    random_rise = (pcc(r_random, r_target) - pcc(res.maps_before, r_target)).mean().item()
    assert rise >= required
    assert rise >= 3 * max(random_rise, 0.0)
    assert res.class_kept.float().mean().item() >= 0.95
    assert (res.x_adv - x).abs().max().item() <= 0.2 + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_topk_attack_beats_random_perturbation_of_same_norm(setup):
    model, x = setup
    x = x[:16]
    res = manipulate_input(model, x, TopKSuppression(50), "gradient", steps=100, lr=0.01,
                           optimizer="sign", eps=0.1, progress=False)
    t = model(x).argmax(1)
    r_rand = manipex.relevance(manipex.explain(model, random_sign(x, 0.1), "gradient", t))
    random_overlap = topk_intersection(r_rand, res.maps_before, 50).mean().item()
    attack_overlap = res.metric_after.mean().item()
    assert attack_overlap < random_overlap - 0.1


def test_center_of_mass_attack_beats_random_perturbation(setup):
    model, x = setup
    x = x[:16]
    res = manipulate_input(model, x, CenterOfMass(), "lrp", steps=100, lr=0.01,
                           optimizer="sign", eps=0.1, progress=False)
    t = model(x).argmax(1)
    r_rand = manipex.relevance(manipex.explain(model, random_sign(x, 0.1), "lrp", t))
    random_shift = (center_of_mass(r_rand) - center_of_mass(res.maps_before)).norm(dim=1).mean().item()
    assert res.metric_after.mean().item() > 2 * random_shift
    assert res.class_kept.all()


def test_center_of_mass_to_a_corner(setup):
    model, x = setup
    res = manipulate_input(model, x[:8], CenterOfMass((0.0, 0.0)), "gradient", steps=60, eps=0.2, progress=False)
    assert (res.metric_after < res.metric_before).float().mean() >= 0.9


def test_batching_is_exact(setup):
    model, x = setup
    model = copy.deepcopy(model).double()
    x = x[:8].double()
    target = TargetMap(manipex.relevance(manipex.explain(model, x.roll(1, 0), "gradient")))
    settings = dict(steps=15, eps=0.2, progress=False, check_every=5)
    batch = manipulate_input(model, x, target, "gradient", **settings)
    for i in range(8):
        single = manipulate_input(model, x[i : i + 1], target.select(torch.tensor([i])), "gradient", **settings)
        assert torch.allclose(single.x_adv, batch.x_adv[i : i + 1], atol=1e-9)
        assert torch.allclose(single.metric_after, batch.metric_after[i : i + 1], atol=1e-9)


@pytest.mark.parametrize("method, objective, optimizer", [("lrp", CenterOfMass(), "sign"),
                                                         ("smoothgrad", TopKSuppression(k=20), "adam")])
def test_an_image_alone_and_in_a_batch_agree_in_float64(setup, method, objective, optimizer):
    """The README's promise: no image's result depends on the others of its batch (early stop,
    kept iterate, SmoothGrad's noise), up to float64 rounding."""
    model, x = setup
    model, x = copy.deepcopy(model).double(), x[:3].double()
    options = {"samples": 3, "seed": 0} if method == "smoothgrad" else {}
    settings = dict(steps=8, eps=0.1, lr=0.01, optimizer=optimizer, check_every=2, patience=1, progress=False,
                    method_options=options)
    batch = manipulate_input(model, x, copy.copy(objective), method, **settings)
    single = manipulate_input(model, x[1:2], copy.copy(objective), method, **settings)
    assert (batch.x_adv[1:2] - x[1:2]).abs().max() > 1e-3  # the image did move
    assert torch.allclose(single.x_adv, batch.x_adv[1:2], atol=1e-9)


def test_adaptive_attack_on_smoothgrad_and_aggregates_runs(setup):
    model, x = setup
    for method, opts in [("smoothgrad", {"samples": 4, "seed": 0, "batch_size": 8}), ("agg_mean", {})]:
        res = manipulate_input(model, x[:4], TargetImage(x[4:8]), method, method_options=opts,
                               steps=10, eps=0.2, progress=False)
        assert res.x_adv.shape == (4, 1, 28, 28) and res.improvement.mean() > 0


def test_l2_budget_and_revert(setup):
    model, x = setup
    res = manipulate_input(model, x[:4], TargetImage(x[4:8]), "gradient", steps=20, eps=1.0, norm="l2",
                           gamma=0.0, progress=False)
    assert ((res.x_adv - x[:4]).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()
    assert res.class_kept.all()  # revert guarantees it even without the output term


def test_transfer_matrix_shape_and_diagonal(setup):
    model, x = setup
    methods = ["gradient", "lrp"]
    table = transfer_matrix(model, x[:8], TargetImage(x[8:16]), methods, steps=60, eps=0.2, progress=False)
    assert list(table.index) == methods and list(table.columns) == methods
    assert (table.values.diagonal() > 0).all()


def test_bad_attack_arguments(setup):
    model, x = setup
    obj = TargetImage(x[1:3])
    with pytest.raises(ValueError, match="steps"):
        manipulate_input(model, x[:2], obj, steps=0)
    with pytest.raises(ValueError, match="optimizer"):
        manipulate_input(model, x[:2], obj, optimizer="sgd")
    with pytest.raises(ValueError, match="unknown method"):
        manipulate_input(model, x[:2], obj, "saliency")
    with pytest.raises(TypeError, match="objective"):
        manipulate_input(model, x[:2], "target")
    with pytest.raises(ValueError, match="clamp range"):
        manipulate_input(model, x[:2] + 2, obj)
    with pytest.raises(ValueError, match="NaN"):
        manipulate_input(model, x[:2] * float("nan"), obj)
    with pytest.raises(TypeError, match="smooth_pools"):
        manipulate_input(model, x[:2], obj, smooth_pools="yes")


# --- defaults a user can trust: budget, success, early stopping, quiet progress ------------


def test_default_budget_is_a_tenth_of_the_data_range(setup):
    model, x = setup
    res = manipulate_input(model, x[:4], TargetImage(x[4:8]), "gradient", steps=20, lr=0.05, progress=False)
    assert res.eps == pytest.approx(0.1)
    assert (res.x_adv - x[:4]).abs().max().item() <= 0.1 + 1e-6
    res = manipulate_input(model, x[:4] * 0.5, TargetImage(x[4:8]), "gradient", steps=5, clamp=(0.0, 0.5),
                           progress=False)
    assert res.eps == pytest.approx(0.05)
    unbounded = manipulate_input(model, x[:4], TargetImage(x[4:8]), "gradient", steps=20, lr=0.05, eps=math.inf,
                                 gamma=0.0, keep_best=False, revert=False, progress=False)
    assert (unbounded.x_adv - x[:4]).abs().max().item() > 0.1 and unbounded.eps == math.inf


def test_unclear_budgets_are_refused(setup):
    model, x = setup
    obj = TargetImage(x[1:3])
    with pytest.raises(ValueError, match="eps=None is ambiguous.*math.inf"):
        manipulate_input(model, x[:2], obj, eps=None)
    with pytest.raises(ValueError, match="eps='auto'.*needs norm='linf' and clamp"):
        manipulate_input(model, x[:2], obj, clamp=None)
    with pytest.raises(ValueError, match="eps='auto'.*needs norm='linf'"):
        manipulate_input(model, x[:2], obj, norm="l2")
    with pytest.raises(ValueError, match="eps must be a positive number"):
        manipulate_input(model, x[:2], obj, eps=-0.1)


def test_success_means_the_documented_threshold_with_the_class_kept(setup):
    model, x = setup
    obj = TargetImage(x[8:16])
    res = manipulate_input(model, x[:8], obj, "gradient", steps=40, eps=0.2, progress=False)
    assert torch.equal(res.threshold, torch.full((8,), 0.8))
    assert torch.equal(res.success, res.class_kept & (res.metric_after >= 0.8) & (res.metric_before < 0.8))
    improved_only = res.class_kept & (res.metric_after > res.metric_before)
    assert improved_only.sum() > res.success.sum(), "the threshold is stricter than 'improved'"
    obj.success_threshold = 0.0  # a threshold of one's own, in the metric's units
    lenient = manipulate_input(model, x[:8], obj, "gradient", steps=40, eps=0.2, progress=False)
    assert torch.equal(lenient.success, lenient.class_kept & (lenient.metric_after >= 0.0) & (lenient.metric_before < 0.0))


@pytest.mark.parametrize("objective,expected", [
    (TopKSuppression(50), lambda before: torch.full_like(before, 0.5)),
    (CenterOfMass((0.0, 0.0)), lambda before: 0.5 * before),
    (CenterOfMass(), lambda before: torch.full_like(before, 2.8)),  # 10 % of 28 pixels
])
def test_default_thresholds_of_objectives(setup, objective, expected):
    model, x = setup
    r = manipex.relevance(manipex.explain(model, x[:4], "gradient"))
    objective = objective.prepare(lambda inputs: r, x[:4], r)
    before = objective.metric(r)
    assert torch.allclose(objective.threshold(before), expected(before))
    assert torch.allclose(objective.select(torch.tensor([1, 2])).threshold(before[1:3]), expected(before[1:3]))


def test_the_attack_s_adam_is_torch_s_adam():
    from manipex.optim import Adam

    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mine, theirs = x.clone(), x.clone().requires_grad_(True)
    adam, reference = Adam(mine, 0.05), torch.optim.Adam([theirs], lr=0.05)
    for step in range(25):
        grad = torch.sin(mine * (step + 1)) + 0.1 * step
        adam.step(grad)
        theirs.grad = grad.clone()
        reference.step()
        assert torch.equal(mine, theirs.detach())


@pytest.mark.parametrize("method", ["gradient", "lrp", "integrated_gradients"])
def test_the_attack_step_reuses_the_map_s_forward_for_the_output_term(setup, method):
    """The surrogate's output at x_adv, computed by the map's own forward pass, is the output
    term's: the step is the same as with a second forward (the attack result is unchanged),
    and only methods that run the model at x_adv itself report it."""
    from manipex.explainers.base import capture_output

    model, x = setup
    smooth, _ = manipex.surgery.smooth_copy(model, 10.0, pools=True)
    x_adv = x[:2].clone().requires_grad_(True)
    options = {"steps": 4} if method == "integrated_gradients" else {}
    with capture_output(x_adv) as seen:
        manipex.explain(smooth, x_adv, method, create_graph=True, **options)
    if method == "integrated_gradients":
        assert seen.output is None  # its forward passes run at the path's points, not at x_adv
        return
    assert seen.output is not None and seen.output.grad_fn is not None
    direct = smooth(x_adv)
    assert torch.allclose(seen.output, direct, rtol=1e-5, atol=1e-6)
    (g_seen,) = torch.autograd.grad(seen.output.softmax(1)[:, 0].sum(), x_adv)
    (g_direct,) = torch.autograd.grad(direct.softmax(1)[:, 0].sum(), x_adv)
    assert torch.allclose(g_seen, g_direct, rtol=1e-4, atol=1e-7)
    with capture_output(x_adv.detach().clone().requires_grad_(True)) as other:
        manipex.explain(smooth, x_adv, method, create_graph=True, **options)
    assert other.output is None  # only the very tensor it was opened for


def test_attack_stops_early_when_no_image_improves(setup):
    model, x = setup
    x = x[:8] * 0.9 + 0.05  # no exact zeros: a step of 1e-9 flips no max-pool tie
    res = manipulate_input(model, x[:4], TargetImage(x[4:8]), "gradient", steps=400, lr=1e-9, check_every=5,
                           patience=3, beta=50.0, progress=False)
    assert res.steps_run == 15  # three checks without improvement
    # not while beta grows: an image stopped at a small beta keeps an iterate of a far surrogate
    grows = manipulate_input(model, x[:4], TargetImage(x[4:8]), "gradient", steps=40, lr=1e-9, check_every=5,
                             patience=3, progress=False)
    assert grows.steps_run == 40
    full = manipulate_input(model, x[:4], TargetImage(x[4:8]), "gradient", steps=30, lr=1e-9, check_every=5,
                            patience=None, progress=False)
    assert full.steps_run == 30


def test_progress_bars_stay_quiet_off_a_terminal(setup, capfd, monkeypatch):
    model, x = setup
    monkeypatch.delenv("MANIPEX_PROGRESS", raising=False)
    manipulate_input(model, x[:2], TargetImage(x[2:4]), "gradient", steps=30, progress=True)
    assert capfd.readouterr().err == ""  # stderr is not a terminal under pytest
    monkeypatch.setenv("MANIPEX_PROGRESS", "1")
    started = time.perf_counter()
    manipulate_input(model, x[:2], TargetImage(x[2:4]), "gradient", steps=30, progress=True)
    elapsed = time.perf_counter() - started
    err = capfd.readouterr().err
    # a few refreshes, not one per step: at most four a second however loaded the machine is
    assert "attack gradient" in err and err.count("\r") <= elapsed / 0.25 + 3


def test_an_attack_can_start_elsewhere_in_its_budget(setup):
    """``start``: the optimisation begins at another point, projected onto the budget around
    ``x`` and the valid range; the budget stays that of ``x``."""
    from manipex.objectives import MapDistance

    model, x = setup[0], setup[1][:4]
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.5  # outside eps 0.1
    start = x + noise
    first = manipulate_input(model, x, MapDistance(), "gradient", start=start, eps=0.1, steps=1, lr=1e-7,
                             keep_best=False, revert=False, progress=False)
    assert torch.allclose(first.x_adv, (x + noise.clamp(-0.1, 0.1)).clamp(0, 1), atol=1e-6)
    options = dict(eps=0.1, steps=20, lr=0.01, progress=False)
    moved = manipulate_input(model, x, MapDistance(), "gradient", start=start, **options)
    assert (moved.x_adv - x).abs().max() <= 0.1 + 1e-6 and moved.x_adv.min() >= 0 and moved.x_adv.max() <= 1
    assert bool((moved.metric_after > moved.metric_before).all())
    with pytest.raises(ValueError, match="start must have x's shape"):
        manipulate_input(model, x, MapDistance(), "gradient", start=start[:2], **options)
    with pytest.raises(ValueError, match="start contains"):
        manipulate_input(model, x, MapDistance(), "gradient", start=start * math.nan, **options)


def test_the_attack_object_and_an_explainer_object_give_the_function_s_result(setup):
    """Issue 27: ``InputAttack(...).run`` is what ``manipulate_input`` computes; an explainer
    object carrying its options stands for the name and ``method_options``; the caller's
    objective and explainer are never changed."""
    from manipex.explainers import LRP

    model, x = setup
    x, x_target = x[:4], x[4:8]
    objective = TargetImage(x_target)
    before = copy.deepcopy(objective.__dict__)
    plain = manipulate_input(model, x, objective, "lrp", method_options={"composite": "epsilon"}, steps=5,
                             progress=False)
    explainer = LRP(composite="epsilon")
    config = dict(explainer.config)
    attack = InputAttack(objective, explainer, steps=5, progress=False)
    with_object = attack.run(model, x)
    torch.testing.assert_close(with_object.x_adv, plain.x_adv, rtol=0, atol=0)
    assert with_object.method == plain.method == "lrp"
    assert explainer.config == config
    assert objective.__dict__.keys() == before.keys() and all(
        torch.equal(v, before[k]) if isinstance(v, torch.Tensor) else v == before[k] for k, v in objective.__dict__.items())
    torch.testing.assert_close(manipex.explain(model, x, explainer), manipex.explain(model, x, "lrp", composite="epsilon"))
    with pytest.raises(TypeError, match="method must be a method name .* or an Explainer"):
        manipex.explain(model, x, 3)
