"""Metrics: agreement with scipy / numpy / scikit-image, closed forms, directions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from manipex import metrics
from manipex.metrics import Direction

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
    assert metrics.METRICS["pcc"].direction is Direction.HIGHER and metrics.METRICS["mse"].direction is Direction.LOWER


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        metrics.pcc(torch.rand(2, 3), torch.rand(2, 4))


# --------------------------------------------------------------------------- input checks
# Every public metric x every kind of bad input: the error type, a message that names the
# function and the problem, and arguments left exactly as they were.

SHAPE = (2, 12, 12)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3)).eval()


_MODEL = _model()

# name -> (function of the two tensors, names of the two arguments in messages, function named)
PAIR_METRICS = {
    "mse": (metrics.mse, ("a", "b"), "mse"),
    "pcc": (metrics.pcc, ("a", "b"), "pcc"),
    "cosine": (metrics.cosine, ("a", "b"), "cosine"),
    "spearman": (metrics.spearman, ("a", "b"), "spearman"),
    "ssim": (lambda a, b: metrics.ssim(a, b, window=5), ("a", "b"), "ssim"),
    "topk_intersection": (lambda a, b: metrics.topk_intersection(a, b, 3), ("a", "b"), "topk_intersection"),
    "com_distance": (metrics.com_distance, ("a", "b"), "com_distance"),
    "l2": (metrics.l2, ("x", "x_adv"), "l2"),
    "linf": (metrics.linf, ("x", "x_adv"), "linf"),
    "image_mse": (metrics.image_mse, ("x", "x_adv"), "image_mse"),
    "output_change": (lambda a, b: metrics.output_change(_MODEL, a, b), ("x", "x_adv"), "output_change"),
    "class_agreement": (lambda a, b: metrics.class_agreement(_MODEL, a, b), ("x", "x_adv"), "class_agreement"),
    "delta": (lambda a, b: metrics.delta("mse", a, b, b), ("a", "b"), "mse"),
    "METRICS[spearman]": (lambda a, b: metrics.METRICS["spearman"](a, b), ("a", "b"), "spearman"),
}
SINGLE_METRICS = {
    "average_ranks": (metrics.average_ranks, "v", (2, 144)),
    "center_of_mass": (metrics.center_of_mass, "r", SHAPE),
    "mass_in": (lambda r: metrics.mass_in(r, torch.ones(12, 12, dtype=torch.bool)), "r", SHAPE),
}


def _good(shape=SHAPE, seed=0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _with_value(t: torch.Tensor, value: float, count: int = 1) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[:count] = value
    return t


# kind -> (make the bad tensor from a good one, error type, substring of the message)
BAD = {
    "nan": (lambda t: _with_value(t, float("nan")), ValueError, "1 NaN"),
    "nan3": (lambda t: _with_value(t, float("nan"), 3), ValueError, "3 NaN"),
    "inf": (lambda t: _with_value(t, float("inf")), ValueError, "1 Inf"),
    "-inf": (lambda t: _with_value(t, -float("inf"), 2), ValueError, "2 Inf"),
    "int": (lambda t: (t * 10).long(), TypeError, "floating dtype"),
    "uint8": (lambda t: (t * 255).to(torch.uint8), TypeError, "floating dtype"),
    "bool": (lambda t: t > 0.5, TypeError, "floating dtype"),
    "numpy": (lambda t: t.numpy().copy(), TypeError, "torch.Tensor"),
    "list": (lambda t: t.tolist(), TypeError, "torch.Tensor"),
}
# kinds that change both arguments (the shapes must agree for the problem to be this one)
BOTH = {
    "rank1": (lambda t: t.flatten()[:5].clone(), ValueError, "dimensions"),
    "empty_batch": (lambda t: t[:0].clone(), ValueError, "empty"),
    "empty_features": (lambda t: t[:, :0].clone(), ValueError, "empty"),  # (2, 0, 12): no values
}


def _snapshot(v):
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, np.ndarray):
        return v.copy()
    return [list(row) if isinstance(row, list) else row for row in v]


def _unchanged(v, snap) -> bool:
    if isinstance(v, torch.Tensor):  # same dtype, shape and values, NaN where NaN was
        return v.dtype == snap.dtype and v.shape == snap.shape and torch.equal(v.isnan(), snap.isnan()) and (
            torch.equal(torch.nan_to_num(v), torch.nan_to_num(snap)))
    if isinstance(v, np.ndarray):
        return np.array_equal(v, snap, equal_nan=True)
    return v == snap


PAIR_CASES = [(m, k, pos) for m in PAIR_METRICS for k in BAD for pos in (0, 1)]
PAIR_CASES += [(m, k, "both") for m in PAIR_METRICS for k in BOTH]
PAIR_CASES += [(m, "batch", pos) for m in PAIR_METRICS for pos in (0, 1)]


@pytest.mark.parametrize(("metric", "kind", "position"), PAIR_CASES)
def test_pair_metrics_refuse_bad_input(metric: str, kind: str, position) -> None:
    fn, names, where = PAIR_METRICS[metric]
    args = [_good(seed=0), _good(seed=1)]
    if kind == "batch":
        args[position] = args[position][:1].clone()  # a batch of 1 against a batch of 2
        error, fragment = ValueError, "same shape"
    elif position == "both":
        make, error, fragment = BOTH[kind]
        args = [make(a) for a in args]
    else:
        make, error, fragment = BAD[kind]
        args[position] = make(args[position])
    snaps = [_snapshot(a) for a in args]
    with pytest.raises(error) as info:
        fn(*args)
    message = str(info.value)
    assert fragment in message and message.startswith(f"{where}:")
    if kind == "batch":
        assert "(2, 12, 12)" in message and "(1, 12, 12)" in message
    elif position != "both":
        assert f" {names[position]} " in message  # the argument is named
    assert all(_unchanged(a, s) for a, s in zip(args, snaps))


SINGLE_CASES = [(m, k) for m in SINGLE_METRICS for k in [*BAD, *BOTH]]


@pytest.mark.parametrize(("metric", "kind"), SINGLE_CASES)
def test_single_map_functions_refuse_bad_input(metric: str, kind: str) -> None:
    fn, name, shape = SINGLE_METRICS[metric]
    make, error, fragment = {**BAD, **BOTH}[kind]
    arg = make(_good(shape))
    snap = _snapshot(arg)
    with pytest.raises(error, match=fragment) as info:
        fn(arg)
    assert str(info.value).startswith(f"{metric}: {name} ")
    assert _unchanged(arg, snap)


def test_ssim_and_average_ranks_refuse_other_ranks() -> None:
    with pytest.raises(ValueError, match="3 to 4 dimensions"):
        metrics.ssim(torch.rand(2, 144), torch.rand(2, 144))
    with pytest.raises(ValueError, match="3 to 4 dimensions"):
        metrics.ssim(torch.rand(1, 1, 1, 12, 12), torch.rand(1, 1, 1, 12, 12))
    with pytest.raises(ValueError, match="exactly 2 dimensions"):
        metrics.average_ranks(torch.rand(2, 3, 4))


def test_nan_and_inf_are_counted_separately() -> None:
    b = _with_value(_good(), float("nan"), 2)
    b.view(-1)[5:8] = float("inf")
    with pytest.raises(ValueError, match=r"pcc: b contains 2 NaN and 3 Inf values"):
        metrics.pcc(_good(), b)


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda a, b: metrics.topk_intersection(a, b, 0), ValueError, "k must be"),
        (lambda a, b: metrics.topk_intersection(a, b, 145), ValueError, "k must be"),
        (lambda a, b: metrics.topk_intersection(a, b, 2.0), TypeError, "k must be an int"),
        (lambda a, b: metrics.topk_intersection(a, b, True), TypeError, "k must be an int"),
        (lambda a, b: metrics.ssim(a, b, window=13), ValueError, "smaller than the 13x13 window"),
        (lambda a, b: metrics.ssim(a, b, window=5, data_range=0), ValueError, "data_range must be > 0"),
        (lambda a, b: metrics.ssim(a, b, window=5, data_range=float("nan")), ValueError, "data_range must be a finite number"),
        (lambda a, b: metrics.ssim(a, b, window=5, sigma=-1.0), ValueError, "sigma must be > 0"),
        (lambda a, b: metrics.ssim(a, b, window=5.0), TypeError, "window must be an int"),
        (lambda a, b: metrics.pcc(a, b, eps=-1e-3), ValueError, "eps must be > 0"),
        (lambda a, b: metrics.cosine(a, b, eps="small"), TypeError, "eps must be a number"),
        (lambda a, b: metrics.center_of_mass(a, eps=0.0), ValueError, "eps must be > 0"),
        (lambda a, b: metrics.mass_in(a, torch.ones(12)), ValueError, "mask must have the maps' shape"),
        (lambda a, b: metrics.mass_in(a, torch.ones(3, 12, 12)), ValueError, "mask must have the maps' shape"),
        (lambda a, b: metrics.mass_in(a, [[1.0] * 12] * 12), TypeError, "mask must be a torch.Tensor"),
        (lambda a, b: metrics.mass_in(a, torch.full((12, 12), float("nan"))), ValueError, "mask contains 144 NaN"),
        (lambda a, b: metrics.delta(["pcc"], a, b, b), TypeError, "metric must be a metric name"),
        (lambda a, b: metrics.output_change(_MODEL, a, b, space="softmax"), ValueError, "space must be"),
    ],
)
def test_bad_parameters(call, error, fragment) -> None:
    a, b = _good(seed=0), _good(seed=1)
    snaps = (a.clone(), b.clone())
    with pytest.raises(error, match=fragment):
        call(a, b)
    assert torch.equal(a, snaps[0]) and torch.equal(b, snaps[1])


def test_mass_in_takes_one_mask_for_all_or_one_per_map() -> None:
    r = _good()
    one = torch.zeros(12, 12, dtype=torch.bool)
    one[:6] = True
    expected = r[:, :6].flatten(1).sum(1) / r.flatten(1).sum(1)
    for mask in (one, one[None], one.expand(2, 12, 12), one.float(), one.long()):
        assert torch.allclose(metrics.mass_in(r, mask), expected)


def test_mixed_float_dtypes_are_promoted_not_refused() -> None:
    a, b = _good(seed=0), _good(seed=1)
    mixed = metrics.pcc(a, b.double())
    assert mixed.dtype == torch.float64 and torch.equal(mixed, metrics.pcc(a.double(), b.double()))


# --------------------------------------------------------------------------- low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_spearman_in_low_precision_equals_the_float32_result(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 64, 64, generator=g)  # 4096 values per map: ranks beyond float16's exact integers
    b = 0.5 * a + 0.5 * torch.rand(3, 64, 64, generator=g)
    a_low, b_low = a.to(dtype), b.to(dtype)
    snap = a_low.clone()
    ours = metrics.spearman(a_low, b_low)
    # the same (rounded) values in float32: the ranks, and so the correlation, must be identical
    ref32 = metrics.spearman(a_low.float(), b_low.float())
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    assert torch.allclose(ours, ref32, atol=1e-6)
    for i in range(3):
        ref = scipy_stats.spearmanr(a_low[i].float().flatten().numpy(), b_low[i].float().flatten().numpy()).statistic
        assert abs(ours[i].item() - ref) < 1e-5
    assert torch.equal(a_low, snap) and a_low.dtype == dtype
    assert torch.equal(metrics.average_ranks(a_low.flatten(1)), metrics.average_ranks(a_low.float().flatten(1)))


@pytest.mark.parametrize("name", ["mse", "pcc", "cosine", "topk_intersection", "com_distance"])
def test_other_metrics_in_float16_match_float32(name: str) -> None:
    a, b = _good(seed=0).half(), _good(seed=1).half()
    m = metrics.METRICS[name]
    kwargs = {"k": 10} if name == "topk_intersection" else {}
    ours = m(a, b, **kwargs)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, m(a.float(), b.float(), **kwargs), atol=1e-6)


# --------------------------------------------------------------------------- metrics with a model


class _Shape(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("fn", [metrics.output_change, metrics.class_agreement])
@pytest.mark.parametrize(
    ("model", "error", "fragment"),
    [
        (lambda: _model().train(), ValueError, "training mode"),
        (lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout()).train(), ValueError, "training mode"),
        (lambda: (lambda x: x.flatten(1)), TypeError, "torch.nn.Module"),
        (lambda: _Shape(lambda x: x.flatten(1).sum(1)).eval(), ValueError, r"logits.*shape \(N, classes\)"),
        (lambda: _Shape(lambda x: x.flatten(1) / 0).eval(), ValueError, "NaN"),
        (lambda: _model().double(), TypeError, "dtype"),
    ],
)
def test_model_metrics_check_the_model_and_leave_it_unchanged(fn, model, error, fragment) -> None:
    m = model()
    before = (
        {k: v.clone() for k, v in m.state_dict().items()} if isinstance(m, torch.nn.Module) else None,
        [mod.training for mod in m.modules()] if isinstance(m, torch.nn.Module) else None,
    )
    x = _good(seed=0)
    x[0, 0, 0] = 0.0  # makes x / 0 hold a NaN
    with pytest.raises(error, match=fragment):
        fn(m, x, _good(seed=1))
    if isinstance(m, torch.nn.Module):
        assert [mod.training for mod in m.modules()] == before[1]
        assert all(torch.equal(v, before[0][k]) for k, v in m.state_dict().items())


def test_model_metrics_values_and_model_untouched() -> None:
    m = _model()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x, x_adv = _good(seed=0), _good(seed=1)
    change = metrics.output_change(m, x, x_adv)
    expected = (m(x_adv).softmax(1) - m(x).softmax(1)).norm(dim=1)
    assert torch.allclose(change, expected) and not change.requires_grad
    assert torch.allclose(metrics.output_change(m, x, x, space="logits"), torch.zeros(2))
    assert torch.equal(metrics.class_agreement(m, x, x), torch.ones(2))
    assert not m.training and all(p.requires_grad for p in m.parameters())
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
