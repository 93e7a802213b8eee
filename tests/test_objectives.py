"""Objectives: closed-form checks of the cross target and of HideFeatures (Pasliev 2020)."""
from __future__ import annotations

import pytest
import torch

import manipex
from manipex.attacks import manipulate_model
from manipex.data.adult import adult_protected_indices
from manipex.metrics import center_of_mass, pcc
from manipex.models import tabular_mlp, train_classifier
from manipex.objectives import BlankRegion, HideFeatures, cross_mask


@pytest.mark.parametrize("shape", [(28, 28), (32, 32), (20, 30)])
def test_cross_mask_is_an_x_through_the_center(shape):
    m = cross_mask(shape)
    h, w = shape
    assert m[0, 0] and m[0, -1] and m[-1, 0] and m[-1, -1]  # both diagonals reach every corner
    assert not m[0, w // 2] and not m[h // 2, 0]  # not an upright cross
    assert torch.equal(m, m.flip(0)) and torch.equal(m, m.flip(1))
    com = center_of_mass(m[None].float())[0]
    assert torch.allclose(com, torch.tensor([(h - 1) / 2, (w - 1) / 2]), atol=1e-4)
    assert cross_mask(shape, thickness=3).sum() > m.sum()
    with pytest.raises(ValueError, match="cross_mask"):
        cross_mask(shape, thickness=0)


def test_hide_features_targets_the_start_map_without_the_mask():
    r = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    mask = torch.tensor([False, True, False, True])
    objective = HideFeatures(mask).prepare(None, None, r)
    expected = torch.tensor([[0.25, 0.0, 0.75, 0.0], [0.5, 0.0, 0.5, 0.0]])
    assert torch.allclose(objective.target, expected)
    assert torch.allclose(objective.loss(expected), torch.zeros(2))
    assert (objective.loss(r) > 0).all()
    assert torch.allclose(objective.metric(r), torch.tensor([0.6, 0.5]))
    assert torch.allclose(objective.select(torch.tensor([1])).target, expected[1:])
    with pytest.raises(ValueError, match="HideFeatures"):
        HideFeatures(torch.ones(3, dtype=torch.bool)).prepare(None, None, r)
    with pytest.raises(RuntimeError, match="prepare"):
        HideFeatures(mask).loss(r)


def test_hide_features_keeps_the_rest_of_the_map_where_blank_region_does_not():
    """Pasliev Sec. 3.8: the fairwashed map should look like the original but for race and sex."""
    x, y = manipex.data.load("adult", split="train")
    x, y = x[:8000], y[:8000]
    mask = torch.zeros(x.shape[1], dtype=torch.bool)
    mask[sum(adult_protected_indices().values(), [])] = True
    torch.manual_seed(0)
    model = train_classifier(tabular_mlp(x.shape[1]), x, y, epochs=2, batch_size=128, seed=0, progress=False).eval()

    def maps(m):
        return manipex.relevance(manipex.explain(m, x[:2000], "gradient")).detach()

    before = maps(model)
    rest = {}
    for objective in (HideFeatures(mask), BlankRegion(mask)):
        washed = manipulate_model(model, (x, y), objective, "gradient", classification="probabilities", lam=1.0,
                                  lr=1e-3, epochs=1, batch_size=128, progress=False).model
        after = maps(washed)
        assert after[:, mask].sum(1).mean() < 0.5 * before[:, mask].sum(1).mean()
        rest[type(objective).__name__] = pcc(after[:, ~mask], before[:, ~mask]).mean().item()
    assert rest["HideFeatures"] > rest["BlankRegion"]


def test_objective_arguments_are_checked_when_made_not_after_an_attack():
    """Issue 26: a one-coordinate point, a negative square, a NaN or text threshold are refused
    at once, naming the argument; per-sample points, as documented, are accepted."""
    import math as _math

    from manipex.objectives import CenterOfMass, TopKSuppression, square_mask

    objective = TopKSuppression(5)
    for bad in (float("nan"), _math.inf, "high", True):
        with pytest.raises(ValueError, match="success_threshold"):
            objective.success_threshold = bad
    objective.success_threshold = 0.3
    assert objective.success_threshold == 0.3 and objective.select(torch.tensor([0])).success_threshold == 0.3
    objective.success_threshold = None
    with pytest.raises(ValueError, match="1 coordinate"):
        CenterOfMass((3.0,)).prepare(None, None, torch.rand(2, 8, 8))
    per_sample = CenterOfMass([[0.0, 0.0], [7.0, 7.0]]).prepare(None, None, torch.rand(2, 8, 8))
    r = torch.zeros(2, 8, 8)
    r[0, 0, 0] = r[1, 7, 7] = 1.0
    assert torch.allclose(per_sample.metric(r), torch.zeros(2))
    with pytest.raises(ValueError, match="3 per-sample points for 2 maps"):
        CenterOfMass([[0.0, 0.0]] * 3).prepare(None, None, torch.rand(2, 8, 8))
    for args in (((8, 8), -3), ((8, 8), 0), ((8, 8), 2.5), ((8, 8), 2, (9, 0)), ((8, -8), 2)):
        with pytest.raises(ValueError, match="square_mask"):
            square_mask(*args)
    assert square_mask((8, 8), 3).sum() == 9


def test_prepare_returns_a_completed_copy_and_leaves_the_objective_unchanged():
    """Issue 27: one objective serves any number of attacks; ``prepare`` completes a copy."""
    from manipex.objectives import TopKSuppression

    r = torch.rand(2, 6, 6)
    objective = TopKSuppression(3)
    done = objective.prepare(None, None, r)
    assert done is not objective and getattr(objective, "start", None) is None
    assert torch.equal(done.start, r) and done.mask.sum().item() == 6
    with pytest.raises(RuntimeError, match="call prepare"):
        objective.loss(r)
