"""Metrics: agreement with scipy / numpy / scikit-image, closed forms, directions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from manipex import metrics

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.fixture
def maps():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 16, 16, generator=g, dtype=torch.float64)
    b = 0.6 * a + 0.4 * torch.rand(5, 16, 16, generator=g, dtype=torch.float64)
    return a, b


def test_pcc_matches_numpy_corrcoef(maps):
    a, b = maps
    ours = metrics.pcc(a, b)
    for i in range(a.shape[0]):
        assert abs(ours[i].item() - np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1]) < 1e-10


def test_spearman_matches_scipy_including_ties(maps):
    a, b = maps
    a = (a * 4).round()  # many ties
    ours = metrics.spearman(a, b)
    for i in range(a.shape[0]):
        ref = scipy_stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert abs(ours[i].item() - ref) < 1e-10


def test_average_ranks_match_scipy_rankdata():
    v = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 5.0, -1.0]])
    for i in range(2):
        assert torch.allclose(metrics.average_ranks(v)[i], torch.tensor(scipy_stats.rankdata(v[i].numpy()), dtype=torch.float32))


def test_ssim_matches_scikit_image(maps):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a, b = maps
    ours = metrics.ssim(a, b, data_range=1.0)
    for i in range(a.shape[0]):
        ref = skimage_metrics.structural_similarity(
            a[i].numpy(), b[i].numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
        assert abs(ours[i].item() - ref) < 1e-5


def test_closed_forms(maps):
    a, _ = maps
    one = torch.ones(a.shape[0], dtype=a.dtype)
    assert torch.allclose(metrics.pcc(a, a), one)
    assert torch.allclose(metrics.pcc(a, -a), -one)
    assert torch.allclose(metrics.pcc(a, 3 * a + 2), one)
    assert torch.allclose(metrics.spearman(a, a.exp()), one)  # monotone transform
    assert torch.allclose(metrics.ssim(a, a), one)
    assert torch.allclose(metrics.cosine(a, 2 * a), one)
    assert torch.allclose(metrics.mse(a, a + 0.5), 0.25 * one)
    assert torch.allclose(metrics.topk_intersection(a, a, 10), one.float().to(a.dtype))


def test_topk_intersection_counts_shared_features():
    a = torch.tensor([[5.0, 4.0, 3.0, 0.0, 0.0]])
    b = torch.tensor([[5.0, 0.0, 0.0, 4.0, 3.0]])
    assert metrics.topk_intersection(a, b, 3).item() == pytest.approx(1 / 3)
    assert metrics.topk_intersection(a, b, 1).item() == 1.0
    with pytest.raises(ValueError, match="k must be"):
        metrics.topk_intersection(a, b, 6)


def test_center_of_mass_of_a_point_and_of_two_points():
    r = torch.zeros(2, 5, 7)
    r[0, 1, 3] = 1.0
    r[1, 0, 0] = r[1, 4, 6] = 0.5
    assert torch.allclose(metrics.center_of_mass(r), torch.tensor([[1.0, 3.0], [2.0, 3.0]]))
    assert torch.allclose(metrics.com_distance(r[:1], r[1:]), torch.tensor([1.0]))


def test_delta_metric_is_rieger_difference(maps):
    a, b = maps
    start = torch.rand_like(a)
    d = metrics.delta("pcc", a, b, start)
    assert torch.allclose(d, metrics.pcc(a, b) - metrics.pcc(a, start))
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.delta("psnr", a, b, start)


def test_perturbation_sizes():
    x = torch.zeros(2, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = 0.3
    x_adv[1] = 0.1
    assert torch.allclose(metrics.linf(x, x_adv), torch.tensor([0.3, 0.1]))
    assert torch.allclose(metrics.l2(x, x_adv), torch.tensor([0.3, 0.2]))
    assert torch.allclose(metrics.image_mse(x, x_adv), torch.tensor([0.09 / 4, 0.01]))


def test_directions_are_declared():
    assert metrics.METRICS["pcc"].higher_is_similar and not metrics.METRICS["mse"].higher_is_similar


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        metrics.pcc(torch.rand(2, 3), torch.rand(2, 4))
