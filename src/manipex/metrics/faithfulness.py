"""Faithfulness: does a map point at what the model's own decision depends on?

Each metric removes (or inserts) the features a map ranks highest and watches the model's
output for the explained class; batched torch, one value (or curve) per image:

| function | what is measured | direction | paper | Quantus class |
|---|---|---|---|---|
| :func:`deletion_curve` | output as the top-ranked features are replaced by a baseline | falls fast = faithful | Samek et al. 2017 (pixel flipping) | ``PixelFlipping`` |
| :func:`pixel_flipping` | area under the deletion curve | lower = more faithful | Samek et al. 2017 | ``PixelFlipping(return_auc_per_sample=True)`` |
| :func:`insertion_curve` | output as the top-ranked features are put into the baseline image | rises fast = faithful | Petsiuk et al. 2018 | (none) |
| :func:`insertion` | area under the insertion curve | higher = more faithful | Petsiuk et al. 2018 | (none) |
| :func:`road` | the class kept (or its probability) after noisy linear imputation of the top-ranked pixels | falls fast = faithful | Rong et al. 2022 (ROAD) | ``ROAD`` |
| :func:`infidelity` | ``E[(I . a - (f(x) - f(x - I)))^2]`` over random perturbations ``I`` | lower = more faithful | Yeh et al. 2019, Eq. 2 | ``Infidelity`` (Captum's ``infidelity``) |

:data:`FAITHFULNESS_METRICS` lists the scalar ones with their direction.

**Features and ranking.** A map of the input's shape ranks every input value; a map with the
channel axis left out (what :func:`manipex.relevance` returns: ``(N, H, W)`` for images
``(N, C, H, W)``, ``(N, L)`` for tokens ``(N, L, D)``) ranks pixels (tokens), and removing one
removes all its channels, as Samek et al. flip pixels. The ranking is by the map's value,
highest first ("most relevant first", MoRF; ``order="lerf"`` ranks least relevant first), ties
broken by position (a stable sort), as Quantus's ``np.argsort(-a)`` does up to its tie order.

**Steps.** ``fractions``: the fractions of the features removed at each point of the curve,
``0`` and ``1`` included by default (``steps + 1`` points, ``ceil(f * F)`` features at fraction
``f``). The area is the trapezoid rule over the fraction axis, so it lies in the range of the
output and does not depend on the number of steps (Quantus integrates over step indices with
``dx = 1``: its area is ours times the number of steps).

**Output.** ``output="probability"`` (default): the softmax probability of the explained class;
``"logit"``: its logit. ``target``: the explained class per image (None: the class the model
predicts at ``x``).

**Baselines** (what removed features become): a number (``0.0``), ``"mean"`` (each image's own
per-channel mean), or a tensor broadcastable to ``x``. :func:`road` imputes instead: each removed
pixel becomes the weighted mean of its 8 neighbours (weights 1/6 direct, 1/12 diagonal; removed
neighbours are themselves unknowns of the same linear system, Rong et al. 2022, Sec. 4), solved
by conjugate gradients, plus Gaussian noise of sd ``noise``. Rong et al. show that a fixed
baseline makes the removal itself visible to the model (the "class information leakage" of
masks); imputation keeps the images in distribution, so ROAD separates faithful from random
rankings where deletion to a constant does not.

Checks: the model an ``nn.Module`` in eval mode that returns logits ``(N, K)``, ``x`` a finite
floating batch of its dtype, ``maps`` finite and of a matching shape; ``TypeError``/
``ValueError`` naming the argument. Nothing is differentiated; the model is never changed.
"""  # noqa: E501 -- the rows of the table above cannot be wrapped
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import (TargetLike, check_batch, check_call, check_choice, check_int, check_real, check_target,
                           forward, predicted_target, short)
from .direction import Direction

Baseline = Union[float, str, Tensor]


# --------------------------------------------------------------------------------------------
# Features: which input values a map's entry stands for


def feature_masks(x: Tensor, maps: Tensor, *, where: str) -> Tuple[Tensor, int]:
    """``(maps as (N, F), channel axis or -1)``: the map flattened to one score per feature, and
    the axis of ``x`` a feature spans (``-1`` where a feature is one input value)."""
    maps = check_batch(maps, where=where, name="maps")
    if maps.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: maps has {maps.shape[0]} maps for {x.shape[0]} inputs")
    if maps.device != x.device:
        raise ValueError(f"{where}: maps is on {maps.device} but x on {x.device}")
    if maps.shape == x.shape:
        return maps.flatten(1), -1
    if maps.dim() == x.dim() - 1:
        for axis in (1, x.dim() - 1) if x.dim() >= 3 else ():
            if tuple(maps.shape) == tuple(s for i, s in enumerate(x.shape) if i != axis):
                return maps.flatten(1), axis
    raise ValueError(f"{where}: maps must have the shape of x {tuple(x.shape)}, or that shape without its channel "
                     f"axis (what manipex.relevance returns), got {tuple(maps.shape)}")


def ranking(scores: Tensor, order: str = "morf") -> Tensor:
    """Feature indices ``(N, F)`` from the highest score (``"morf"``) or the lowest (``"lerf"``),
    ties by position."""
    return torch.sort(-scores if order == "morf" else scores, dim=1, stable=True).indices


def removal_masks(order: Tensor, counts: Sequence[int]) -> Tensor:
    """``(N, S, F)`` bool: at step ``s`` the first ``counts[s]`` features of each ranking."""
    n, f = order.shape
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(f, device=order.device).expand(n, f))
    counts_t = torch.as_tensor(list(counts), device=order.device)
    return position[:, None, :] < counts_t[None, :, None]


def spread(mask: Tensor, x: Tensor, axis: int) -> Tensor:
    """A feature mask ``(..., F)`` of :func:`removal_masks` as a mask of ``x``'s shape (one
    leading axis per extra mask axis)."""
    lead = mask.shape[:-1]
    if axis < 0:
        return mask.reshape(*lead, *x.shape[1:])
    pixel_shape = [s for i, s in enumerate(x.shape[1:], start=1) if i != axis]
    m = mask.reshape(*lead, *pixel_shape)
    return m.unsqueeze(len(lead) - 1 + axis)


# --------------------------------------------------------------------------------------------
# Checks shared by the curves


@dataclass(frozen=True)
class _Call:
    """A checked call: the input, the map as feature scores, the class explained."""

    x: Tensor
    scores: Tensor
    axis: int
    target: Tensor


def _check_call(model: nn.Module, x: Tensor, maps: Tensor, target: TargetLike, *, where: str) -> _Call:
    check_call(model, x, where=where, autograd=False)
    scores, axis = feature_masks(x, maps, where=where)
    target = predicted_target(model, x, check_target(target, x.shape[0], where=where), where=where)
    return _Call(x, scores.to(torch.float64 if scores.dtype == torch.float64 else torch.float32), axis, target)


def default_fractions(steps: int, *, where: str) -> Tuple[float, ...]:
    check_int(steps, where=where, name="steps", ge=1, le=100_000)
    return tuple(k / steps for k in range(steps + 1))


def check_fractions(fractions: Optional[Sequence[float]], steps: int, *, where: str) -> Tuple[float, ...]:
    if fractions is None:
        return default_fractions(steps, where=where)
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, (list, tuple)) or not fractions:
        raise TypeError(f"{where}: fractions must be a non-empty sequence of fractions in [0, 1], got "
                        f"{short(fractions)}")
    values = tuple(check_real(f, where=where, name="each of fractions", ge=0, le=1) for f in fractions)
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{where}: fractions must increase, got {short(list(fractions))}")
    return values


def feature_counts(fractions: Sequence[float], n_features: int) -> Tuple[int, ...]:
    """Features removed at each fraction: ``ceil(f * F)``, computed so that ``0.1 * 10`` is 1."""
    return tuple(min(n_features, math.ceil(round(f * n_features, 9))) for f in fractions)


def baseline_image(x: Tensor, baseline: Baseline, *, where: str) -> Tensor:
    """What removed features become, of ``x``'s shape."""
    if isinstance(baseline, str):
        check_choice(baseline, ("mean",), where=where, name="baseline")
        axes = tuple(range(2, x.dim())) if x.dim() >= 3 else (1,)
        return x.mean(dim=axes, keepdim=True).expand_as(x)
    if isinstance(baseline, Tensor):
        if not baseline.is_floating_point():
            raise TypeError(f"{where}: a baseline tensor must be floating, got {baseline.dtype}")
        if not bool(torch.isfinite(baseline).all()):
            raise ValueError(f"{where}: the baseline tensor contains NaN or Inf values")
        try:
            return torch.broadcast_to(baseline.to(x), x.shape)
        except RuntimeError:
            raise ValueError(f"{where}: the baseline of shape {tuple(baseline.shape)} does not broadcast to x of shape "
                             f"{tuple(x.shape)}") from None
    value = check_real(baseline, where=where, name="baseline")
    return torch.full_like(x, value)


def scored_outputs(model: nn.Module, inputs: Tensor, target: Tensor, output: str, batch_size: int,
                   *, where: str) -> Tensor:
    """The explained class's probability or logit (or, for ``"class_kept"``, 1.0 where it is
    still the predicted class) for a batch ``(N, S, ...)`` of inputs whose image ``i`` explains
    ``target[i]``; ``(N, S)``, run ``batch_size`` inputs at a time."""
    n, s = inputs.shape[:2]
    flat = inputs.reshape(n * s, *inputs.shape[2:])
    labels = target.repeat_interleave(s)
    values = []
    with torch.no_grad():
        for start in range(0, n * s, batch_size):
            chunk = flat[start:start + batch_size]
            out = forward(model, chunk, where=where)
            wanted = labels[start:start + batch_size].to(out.device)
            if output == "class_kept":
                values.append((out.argmax(1) == wanted).float())
                continue
            if output == "probability":
                out = out.softmax(dim=1)
            values.append(out.gather(1, wanted[:, None])[:, 0])
    return torch.cat(values).reshape(n, s).float()


def _curve(model, x, maps, target, *, fractions, steps, baseline, output, order, batch_size, insert, where) -> Tensor:
    call = _check_call(model, x, maps, target, where=where)
    check_choice(output, ("probability", "logit"), where=where, name="output")
    check_choice(order, ("morf", "lerf"), where=where, name="order")
    check_int(batch_size, where=where, name="batch_size", ge=1)
    fractions = check_fractions(fractions, steps, where=where)
    base = baseline_image(x, baseline, where=where)
    counts = feature_counts(fractions, call.scores.shape[1])
    masks = removal_masks(ranking(call.scores, order), counts)  # (N, S, F)
    m = spread(masks, x, call.axis)
    if insert:
        inputs = torch.where(m, x[:, None], base[:, None])
    else:
        inputs = torch.where(m, base[:, None], x[:, None])
    return scored_outputs(model, inputs, call.target, output, batch_size, where=where)


def deletion_curve(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetLike = None,
    *,
    fractions: Optional[Sequence[float]] = None,
    steps: int = 20,
    baseline: Baseline = 0.0,
    output: str = "probability",
    order: str = "morf",
    batch_size: int = 256,
) -> Tensor:
    """The output for the explained class ``(N, S)`` as the top-ranked features of ``maps`` are
    replaced by ``baseline``, at each of ``fractions`` (pixel flipping, Samek et al. 2017,
    Sec. III-A; Quantus's ``PixelFlipping`` with ``features_in_step`` features per step). A
    faithful map makes the curve fall fast. See the module's docstring for features, steps and
    baselines."""
    return _curve(model, x, maps, target, fractions=fractions, steps=steps, baseline=baseline, output=output,
                  order=order, batch_size=batch_size, insert=False, where="deletion_curve")


def insertion_curve(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetLike = None,
    *,
    fractions: Optional[Sequence[float]] = None,
    steps: int = 20,
    baseline: Baseline = 0.0,
    output: str = "probability",
    order: str = "morf",
    batch_size: int = 256,
) -> Tensor:
    """The output for the explained class ``(N, S)`` as the top-ranked features of ``maps`` are
    put into the ``baseline`` image (Petsiuk et al. 2018, "RISE", Sec. 4.1). A faithful map makes
    the curve rise fast."""
    return _curve(model, x, maps, target, fractions=fractions, steps=steps, baseline=baseline, output=output,
                  order=order, batch_size=batch_size, insert=True, where="insertion_curve")


def area(curve: Tensor, fractions: Optional[Sequence[float]] = None) -> Tensor:
    """The trapezoid area ``(N,)`` under curves ``(N, S)`` over the fraction axis (default:
    ``S`` evenly spaced points from 0 to 1)."""
    if fractions is None:
        fractions = default_fractions(curve.shape[1] - 1, where="area")
    f = torch.as_tensor(fractions, dtype=curve.dtype, device=curve.device)
    if curve.shape[1] == 1:
        return curve[:, 0]
    return torch.trapezoid(curve, f, dim=1) / (f[-1] - f[0])


def pixel_flipping(model: nn.Module, x: Tensor, maps: Tensor, target: TargetLike = None, *,
                   fractions: Optional[Sequence[float]] = None, steps: int = 20, **options) -> Tensor:
    """The area under the :func:`deletion_curve` ``(N,)``, over the fraction removed (Samek et
    al. 2017). **Lower = more faithful.** ``options``: those of :func:`deletion_curve`."""
    curve = deletion_curve(model, x, maps, target, fractions=fractions, steps=steps, **options)
    return area(curve, check_fractions(fractions, steps, where="pixel_flipping"))


def insertion(model: nn.Module, x: Tensor, maps: Tensor, target: TargetLike = None, *,
              fractions: Optional[Sequence[float]] = None, steps: int = 20, **options) -> Tensor:
    """The area under the :func:`insertion_curve` ``(N,)``. **Higher = more faithful.**"""
    curve = insertion_curve(model, x, maps, target, fractions=fractions, steps=steps, **options)
    return area(curve, check_fractions(fractions, steps, where="insertion"))


# --------------------------------------------------------------------------------------------
# ROAD: remove and debias (Rong et al. 2022)

#: The 8 neighbours of a pixel and their weights in ROAD's linear imputation (Rong et al. 2022,
#: Sec. 4; direct neighbours 1/6, diagonal ones 1/12, summing to 1).
ROAD_KERNEL = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def linear_imputation(x: Tensor, removed: Tensor, *, tol: float = 1e-7, max_iter: Optional[int] = None) -> Tensor:
    """``x`` with each removed pixel replaced by the weighted mean of its 8 neighbours
    (:data:`ROAD_KERNEL`; neighbours outside the image do not count, removed neighbours are
    unknowns themselves), the linear system of Rong et al. 2022, Sec. 4, solved exactly (to
    ``tol``) by conjugate gradients on every channel of every image at once.

    ``x``: ``(B, C, H, W)``; ``removed``: bool ``(B, 1, H, W)`` or ``(B, C, H, W)``. A group of
    removed pixels that touches no kept pixel (everything removed) is imputed with 0.
    """
    if x.dim() != 4:
        raise ValueError(f"linear_imputation: x must be images (B, C, H, W), got shape {tuple(x.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(dtype)
    b, c, h, w = xc.shape
    kernel = torch.tensor(ROAD_KERNEL, dtype=dtype, device=x.device).reshape(1, 1, 3, 3)
    unknown = removed.expand(b, c, h, w).reshape(b * c, 1, h, w).to(dtype)
    known_x = xc.reshape(b * c, 1, h, w) * (1 - unknown)

    def conv(v: Tensor) -> Tensor:
        return F.conv2d(v, kernel, padding=1)

    weight = conv(torch.ones(1, 1, h, w, dtype=dtype, device=x.device))  # in-image neighbour weight
    diag = weight * unknown + (1 - unknown)  # Jacobi preconditioner (1 off the unknowns)

    def operator(u: Tensor) -> Tensor:  # (weight u - sum of neighbours' u) on the unknowns
        return unknown * (weight * u - conv(u))

    rhs = unknown * conv(known_x)
    u = torch.zeros_like(rhs)
    r = rhs.clone()
    z = r / diag
    p = z.clone()
    rz = (r * z).flatten(1).sum(1)
    scale = rhs.flatten(1).norm(dim=1).clamp_min(1e-30)
    for _ in range(max_iter or 10 * (h + w) + 50):
        if bool((r.flatten(1).norm(dim=1) <= tol * scale).all()):
            break
        ap = operator(p)
        pap = (p * ap).flatten(1).sum(1)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-300), torch.zeros_like(rz)).reshape(-1, 1, 1, 1)
        u = u + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_new = (r * z).flatten(1).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz)).reshape(-1, 1, 1, 1)
        p = z + beta * p
        rz = rz_new
    return (known_x + unknown * u).reshape(b, c, h, w).to(x.dtype)


def road(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetLike = None,
    *,
    percentages: Sequence[float] = tuple(range(1, 100, 2)),
    order: str = "morf",
    noise: float = 0.01,
    output: str = "class_kept",
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """ROAD, "remove and debias" (Rong et al. 2022): ``(N, P)``, for each percentage ``p`` of
    ``percentages``, the model's output after the top ``floor(p / 100 * H W)`` pixels of
    ``maps`` are removed by noisy linear imputation (:func:`linear_imputation` plus Gaussian
    noise of sd ``noise`` on the imputed values, drawn from ``seed``).

    ``output="class_kept"`` (default, Quantus's ``ROAD``): 1.0 where the model still predicts the
    explained class, else 0.0 (averaged over images this is the accuracy curve of Rong et al.'s
    Fig. 4); ``"probability"`` or ``"logit"``: the explained class's probability or logit.
    **MoRF: a curve that falls fast = faithful**; ``order="lerf"`` removes the least relevant
    first (a faithful map keeps the curve high).

    ``x``: images ``(N, C, H, W)``; ``maps``: ``(N, H, W)`` or of ``x``'s shape (then summed over
    channels for the ranking: a pixel is removed in all channels, as Quantus does for one channel).
    """
    where = "road"
    call = _check_call(model, x, maps, target, where=where)
    if x.dim() != 4:
        raise ValueError(f"{where}: ROAD imputes pixels of images (N, C, H, W), got x of shape {tuple(x.shape)}")
    check_choice(output, ("class_kept", "probability", "logit"), where=where, name="output")
    check_choice(order, ("morf", "lerf"), where=where, name="order")
    noise = check_real(noise, where=where, name="noise", ge=0)
    check_int(seed, where=where, name="seed", ge=0, le=2**63 - 1)
    check_int(batch_size, where=where, name="batch_size", ge=1)
    if isinstance(percentages, (str, bytes)) or not isinstance(percentages, (list, tuple)) or not percentages:
        raise TypeError(f"{where}: percentages must be a non-empty sequence of numbers in [0, 100], got "
                        f"{short(percentages)}")
    pcts = tuple(check_real(p, where=where, name="each of percentages", ge=0, le=100) for p in percentages)
    n, _, h, w = x.shape
    scores = call.scores if call.axis == 1 else call.scores.reshape(n, x.shape[1], h * w).sum(1)
    counts = tuple(int(h * w * p / 100) for p in pcts)
    masks = removal_masks(ranking(scores, order), counts).reshape(n * len(pcts), 1, h, w)
    repeated = x.repeat_interleave(len(pcts), dim=0)
    g = torch.Generator().manual_seed(seed)
    imputed = torch.cat([linear_imputation(repeated[i:i + batch_size], masks[i:i + batch_size])
                         for i in range(0, len(repeated), batch_size)])
    jitter = torch.randn(imputed.shape, generator=g, dtype=imputed.dtype).to(x.device) * noise
    inputs = torch.where(masks, imputed + jitter, repeated).reshape(n, len(pcts), *x.shape[1:])
    return scored_outputs(model, inputs, call.target, output, batch_size, where=where)


# --------------------------------------------------------------------------------------------
# Infidelity (Yeh et al. 2019)


def infidelity(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetLike = None,
    *,
    samples: int = 32,
    std: float = 0.1,
    normalize: bool = True,
    seed: int = 0,
    perturbations: Optional[Tensor] = None,
) -> Tensor:
    """Infidelity (Yeh et al. 2019, Eq. 2) ``(N,)``: ``E_I[(I . a - (f(x) - f(x - I)))^2]``, the
    mean squared error of the attribution ``a`` (of ``x``'s shape) as a linear prediction of the
    output change, over ``samples`` Gaussian perturbations ``I ~ N(0, std^2)`` (drawn from
    ``seed``, the same for every image, or given as ``perturbations`` ``(samples, *x.shape[1:])``).
    ``f``: the explained class's logit. **Lower = more faithful.**

    ``normalize=True`` (Captum's default, Yeh et al.'s Sec. 3 remark): ``a`` is first scaled by the
    ``beta`` that minimises the error, ``beta = E[(I . a) d] / E[(I . a)^2]``, so that the score
    measures the map's shape, not its scale (a map normalised to sum 1 would otherwise be
    penalised for its scale alone). This matches ``captum.metrics.infidelity`` given the same
    perturbations.
    """
    where = "infidelity"
    call = _check_call(model, x, attributions, target, where=where)
    if call.axis != -1:
        raise ValueError(f"{where}: attributions must have the shape of x {tuple(x.shape)} (the linear prediction "
                         f"I . a needs a value per input value), got {tuple(attributions.shape)}")
    check_int(samples, where=where, name="samples", ge=1, le=1_000_000)
    std = check_real(std, where=where, name="std", gt=0)
    check_int(seed, where=where, name="seed", ge=0, le=2**63 - 1)
    if perturbations is None:
        g = torch.Generator().manual_seed(seed)
        perturbations = torch.randn((samples,) + tuple(x.shape[1:]), generator=g, dtype=x.dtype).to(x.device) * std
    else:
        perturbations = check_batch(perturbations, where=where, name="perturbations")
        if tuple(perturbations.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"{where}: perturbations must have shape (S, {', '.join(map(str, x.shape[1:]))}), got "
                             f"{tuple(perturbations.shape)}")
        perturbations = perturbations.to(x)
    s = perturbations.shape[0]
    n = x.shape[0]
    with torch.no_grad():
        f0 = forward(model, x, where=where).gather(1, call.target[:, None])[:, 0]
        shifted = (x[:, None] - perturbations[None]).reshape(n * s, *x.shape[1:])
        f1 = forward(model, shifted, where=where).gather(1, call.target.repeat_interleave(s)[:, None])[:, 0]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    change = (f0[:, None] - f1.reshape(n, s)).to(dtype)  # (N, S)
    linear = (perturbations.flatten(1).to(dtype) @ attributions.flatten(1).to(dtype).T).T  # (N, S)
    if normalize:
        beta = (linear * change).mean(1) / (linear.pow(2).mean(1)).clamp_min(1e-30)
        linear = linear * beta[:, None]
    return (linear - change).pow(2).mean(1)


@dataclass(frozen=True)
class FaithfulnessMetric:
    """A faithfulness metric ``fn(model, x, maps, target, **options) -> (N,)`` and its direction
    (``HIGHER``: a higher score is a more faithful map)."""

    name: str
    fn: Callable[..., Tensor]
    direction: Direction

    def __call__(self, model, x: Tensor, maps: Tensor, target: TargetLike = None, **options) -> Tensor:
        return self.fn(model, x, maps, target, **options)


FAITHFULNESS_METRICS: Dict[str, FaithfulnessMetric] = {
    "pixel_flipping": FaithfulnessMetric("pixel_flipping", pixel_flipping, Direction.LOWER),
    "insertion": FaithfulnessMetric("insertion", insertion, Direction.HIGHER),
    "infidelity": FaithfulnessMetric("infidelity", infidelity, Direction.LOWER),
}
