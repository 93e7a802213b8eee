"""Explanation objectives shared by input attacks and model attacks.

An objective scores normalised relevance maps ``r`` (:func:`manipex.relevance`, ``(N, ...)``):
:meth:`Objective.loss` returns one differentiable loss per sample (lower = attack closer to
its goal) and :meth:`Objective.metric` the human-readable score of the goal, with
``direction`` its direction for the attacker (:class:`~manipex.metrics.direction.Direction`).
Objectives that refer to the start map (top-k suppression, moving the center of mass away) or
to another input's map (target image) are completed by :meth:`Objective.prepare`, which the
attacks call once with the explanation function being attacked; it returns a completed copy
and leaves the objective as it was (a subclass fills in :meth:`Objective.complete`). Every
sample carries its own target: batches are exact.

| objective | goal | paper |
|---|---|---|
| :class:`TargetMap` / :class:`TargetImage` | ``r`` -> a target map (MSE) | Dombrowski 2019, Eq. 4 |
| :class:`TopKSuppression` | mass off the start map's top-k pixels | Ghorbani 2019; Tang (ATEX) |
| :class:`CenterOfMass` | center of mass to a point, or away from the start | Ghorbani 2019; Pasliev 3.3 |
| :class:`RegionHighlight` | mass into a region | Tang (ATEX, targeted) ; Heo 2019 (location) |
| :class:`BlankRegion` | mass inside a region (or on features) to 0 | Rieger 2020, App. A.4.4 |
| :class:`HideFeatures` | features to 0, the rest of the map as it was | Pasliev 3.8 (fairwashing) |
| :class:`MapDistance` | ``r`` away from the start map (or a given map) | worst case of Yeh 2019's max-sensitivity |

Success: an attack succeeds on a sample when the metric reaches the objective's threshold, which
it had not reached before the attack (and the class is kept). Defaults, per sample (set
``objective.success_threshold``, in the metric's units, to state your own):

| objective | success when |
|---|---|
| ``TargetMap`` / ``TargetImage`` | PCC with the target >= 0.8 (the maps look alike, Dombrowski Fig. 3) |
| ``TopKSuppression`` | top-k intersection with the start map <= 0.5 |
| ``CenterOfMass(point)`` | distance to the point <= half the start distance |
| ``CenterOfMass()`` | shift from the start >= 10 % of the map's larger side |
| ``RegionHighlight`` | mass inside the region >= 0.5 |
| ``BlankRegion`` / ``HideFeatures`` | mass inside <= 10 % of the start mass |
| ``MapDistance`` | distance from the start >= 1 (RMS change as large as the mean pixel) |
"""
from __future__ import annotations

import abc
import copy
import math
import numbers

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._validation import short
from .metrics import center_of_mass, mass_in, pcc, topk_intersection
from .metrics.direction import Direction

ExplainFn = Callable[[Tensor], Tensor]  # inputs -> normalised relevance maps


class Objective(abc.ABC):
    """Base of all explanation objectives."""

    metric_name: str = ""
    #: which way the metric goes for the attacker: ``Direction.HIGHER`` when a higher metric is a
    #: more manipulated map (:class:`~manipex.metrics.direction.Direction`)
    direction: Direction = Direction.HIGHER

    @property
    def success_threshold(self) -> Optional[float]:
        """Success threshold in the metric's units (None: the objective's default, see the
        table). Checked when set: a finite number, or None; a wrong one fails at once, not after
        an attack has run."""
        return self.__dict__.get("_success_threshold")

    @success_threshold.setter
    def success_threshold(self, value: Optional[float]) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{type(self).__name__}: success_threshold must be a finite number in the units of "
                                 f"its metric {self.metric_name!r}, or None; got {short(value)}")
            value = float(value)
        self.__dict__["_success_threshold"] = value

    def default_threshold(self, before: Tensor) -> Tensor:
        """The default success threshold per sample, given the metric at the start."""
        raise NotImplementedError(
            f"{type(self).__name__} states no success threshold: set objective.success_threshold (in the "
            f"units of its metric {self.metric_name!r}) or define default_threshold(before)"
        )

    def threshold(self, before: Tensor) -> Tensor:
        """The success threshold per sample (``success_threshold`` or the default)."""
        if self.success_threshold is not None:
            return torch.full_like(before, float(self.success_threshold))
        return self.default_threshold(before)

    def success(self, before: Tensor, after: Tensor) -> Tensor:
        """Per sample: the metric ``after`` the attack reached the threshold, which it had not
        reached ``before`` (a map that already met the goal is no success of the attack)."""
        t = self.threshold(before)
        if self.direction is Direction.HIGHER:
            return (after >= t) & (before < t)
        return (after <= t) & (before > t)

    def _inherit(self, out: "Objective") -> "Objective":
        """``out`` (a selection of this objective) with this objective's threshold."""
        out.success_threshold = self.success_threshold
        return out

    def prepare(self, explain_fn: ExplainFn, x: Tensor, r_start: Tensor) -> "Objective":
        """A copy of this objective completed for ``x`` and its start maps ``r_start`` (by
        :meth:`complete`: the start map, another input's map, the start's centre of mass, as the
        objective needs); this objective is never changed, so one serves any number of attacks."""
        out = copy.copy(self)
        out.complete(explain_fn, x, r_start)
        return out

    def complete(self, explain_fn: ExplainFn, x: Tensor, r_start: Tensor) -> None:
        """Fix, on this object (the copy :meth:`prepare` made), what the objective needs from the
        start maps ``r_start`` of ``x``; ``explain_fn`` maps inputs to normalised maps. Nothing
        by default."""

    @abc.abstractmethod
    def loss(self, r: Tensor) -> Tensor:
        """Differentiable loss per sample ``(N,)``; lower = closer to the goal."""
        ...

    @abc.abstractmethod
    def metric(self, r: Tensor) -> Tensor:
        """The goal's score per sample ``(N,)``; see ``direction``."""
        ...

    @abc.abstractmethod
    def select(self, index: Tensor) -> "Objective":
        """The objective restricted to samples ``index`` (for splitting batches)."""
        ...

    @staticmethod
    def _check(r: Tensor, ref: Optional[Tensor], name: str) -> None:
        if ref is None:
            raise RuntimeError(f"{name}: call prepare() first (the attacks do this)")
        if ref.shape[0] not in (1, r.shape[0]) or ref.shape[1:] != r.shape[1:]:
            raise ValueError(f"{name}: maps of shape {tuple(r.shape)} do not match the objective's {tuple(ref.shape)}")


def _scaled_mse(r: Tensor, t: Tensor) -> Tensor:
    """MSE of maps rescaled to mean 1 per pixel: independent of the image size.

    Dombrowski's reference weights the MSE of 224x224 maps summing to 1 by 1e11, i.e. about
    40 x P^2 for P = 224^2 pixels; rescaling by P makes one weight fit every image size.
    """
    p = r[0].numel()
    return ((r - t) * p).pow(2).flatten(1).mean(1)


class TargetMap(Objective):
    """Drive the map to a given target map per sample (Dombrowski 2019, Eq. 4: MSE).

    Args:
        target: target maps ``(N, ...)`` of the relevance maps' shape, or one map ``(1, ...)``
            for all samples (Pasliev Sec. 3.4); normalised like :func:`manipex.relevance`.
    Metric: PCC with the target (higher = more manipulated).
    """

    metric_name, direction = "pcc_target", Direction.HIGHER

    def __init__(self, target: Tensor) -> None:
        if not isinstance(target, Tensor) or not target.is_floating_point():
            raise TypeError("TargetMap: target must be a float tensor of maps")
        if target.dim() < 2 or target.shape[0] == 0:
            raise ValueError(f"TargetMap: target must be a batch of maps (N, ...), got shape {tuple(target.shape)}")
        if not bool(torch.isfinite(target).all()):
            raise ValueError("TargetMap: target contains NaN or Inf values")
        if bool((target.flatten(1).abs().sum(1) == 0).any()):
            raise ValueError("TargetMap: a target map is zero everywhere; it has no shape to drive a map to")
        t = target.abs()
        self.target = t / (t.flatten(1).sum(1).reshape(-1, *([1] * (t.dim() - 1))) + 1e-12)

    def loss(self, r):
        self._check(r, self.target, "TargetMap")
        return _scaled_mse(r, self.target.to(r))

    def metric(self, r):
        return pcc(r.detach(), self.target.to(r).expand_as(r))

    def default_threshold(self, before):
        return torch.full_like(before, 0.8)

    def select(self, index):
        return self._inherit(TargetMap(self.target if self.target.shape[0] == 1 else self.target[index]))


class TargetImage(TargetMap):
    """Target map = the attacked method's map of another input (Dombrowski's experiments).

    Args:
        x_target: inputs ``(N, ...)`` whose maps are the targets, computed by the attacked
            explanation in :meth:`prepare`, so one objective serves every method.
    """

    def __init__(self, x_target: Tensor) -> None:
        if not isinstance(x_target, Tensor):
            raise TypeError("TargetImage: x_target must be a tensor of inputs")
        self.x_target = x_target
        self.target: Optional[Tensor] = None

    def complete(self, explain_fn, x, r_start):
        if self.x_target.shape != x.shape:
            raise ValueError(f"TargetImage: x_target of shape {tuple(self.x_target.shape)} must match "
                             f"x {tuple(x.shape)}")
        self.target = explain_fn(self.x_target).detach()

    def select(self, index):
        out = TargetImage(self.x_target[index])
        out.target = None if self.target is None else self.target[index]
        return self._inherit(out)


class TopKSuppression(Objective):
    """Move mass off the ``k`` most relevant features of the start map (Ghorbani 2019's top-k
    attack; the untargeted attack of Tang et al.). Loss: the mass on those features.

    Metric: top-k intersection with the start map (lower = more manipulated).
    """

    metric_name, direction = "topk_intersection", Direction.LOWER

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"TopKSuppression: k must be a positive int, got {k!r}")
        self.k = k
        self.start: Optional[Tensor] = None
        self.mask: Optional[Tensor] = None

    def complete(self, explain_fn, x, r_start):
        if self.k > r_start[0].numel():
            raise ValueError(f"TopKSuppression: k={self.k} exceeds the {r_start[0].numel()} features of a map")
        self.start = r_start.detach()
        idx = self.start.flatten(1).topk(self.k, dim=1).indices
        self.mask = torch.zeros_like(self.start.flatten(1)).scatter_(1, idx, 1.0).reshape(self.start.shape)

    def loss(self, r):
        self._check(r, self.mask, "TopKSuppression")
        return mass_in(r, self.mask.to(r))

    def metric(self, r):
        self._check(r, self.start, "TopKSuppression")
        return topk_intersection(r.detach(), self.start.to(r), self.k)

    def default_threshold(self, before):
        return torch.full_like(before, 0.5)

    def select(self, index):
        out = TopKSuppression(self.k)
        if self.start is not None:
            out.start, out.mask = self.start[index], self.mask[index]
        return self._inherit(out)


class CenterOfMass(Objective):
    """Move the map's center of mass to ``point`` (pixel coordinates, one per sample or one for
    all), or, with ``point=None``, as far as possible from the start map's center.

    Loss: squared distance to the point / minus the distance from the start (Ghorbani 2019;
    Pasliev 2020, Sec. 3.3, where the point is the corner (0, 0)).
    Metric: distance to the point (lower = more manipulated) or from the start (higher).
    """

    def __init__(self, point: Union[None, Sequence[float], Tensor] = None) -> None:
        if point is not None:
            try:
                point = torch.as_tensor(point, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"CenterOfMass: point must be a sequence of coordinates, got {short(point)}") from None
            if point.dim() not in (1, 2) or point.numel() == 0 or not bool(torch.isfinite(point).all()):
                raise ValueError(f"CenterOfMass: point must be finite coordinates, one per map axis, e.g. (0, 0), or "
                                 f"one such row per sample (N, axes); got {short(point.tolist())}")
        self.point = point
        self.start_com: Optional[Tensor] = None
        self.metric_name = "com_distance_to_point" if point is not None else "com_shift"
        self.direction = Direction.of(point is None)

    def complete(self, explain_fn, x, r_start):
        if self.point is not None:
            axes = r_start.dim() - 1
            if self.point.shape[-1] != axes:
                raise ValueError(f"CenterOfMass: point has {self.point.shape[-1]} coordinate(s), but the maps have "
                                 f"{axes} axes (shape {tuple(r_start.shape[1:])}): give one coordinate per axis, "
                                 f"e.g. {(0,) * axes}")
            if self.point.dim() == 2 and self.point.shape[0] != r_start.shape[0]:
                raise ValueError(f"CenterOfMass: {self.point.shape[0]} per-sample points for {r_start.shape[0]} maps")
        self.start_com = center_of_mass(r_start.detach())
        self.size = max(r_start.shape[1:])

    def default_threshold(self, before):
        if self.point is not None:
            return 0.5 * before
        return torch.full_like(before, 0.1 * getattr(self, "size", 0))

    def _reference(self, r: Tensor) -> Tensor:
        if self.point is not None:
            return self.point.to(r).expand(r.shape[0], -1) if self.point.dim() == 1 else self.point.to(r)
        if self.start_com is None:
            raise RuntimeError("CenterOfMass: call prepare() first (the attacks do this)")
        if self.start_com.shape[0] != r.shape[0]:
            raise ValueError(f"CenterOfMass: {r.shape[0]} maps do not match the objective's {self.start_com.shape[0]}")
        return self.start_com.to(r)

    def loss(self, r):
        d2 = (center_of_mass(r) - self._reference(r)).pow(2).sum(1)
        return d2 if self.point is not None else -torch.sqrt(d2 + 1e-12)

    def metric(self, r):
        return (center_of_mass(r.detach()) - self._reference(r)).norm(dim=1)

    def select(self, index):
        point = self.point if self.point is None or self.point.dim() == 1 else self.point[index]
        out = CenterOfMass(point)
        out.start_com = None if self.start_com is None else self.start_com[index]
        if hasattr(self, "size"):
            out.size = self.size
        return self._inherit(out)


def _check_mask(mask: object, name: str) -> Tensor:
    """A region: a tensor of 0/1 (or bool) values, not empty (broadcast to the maps later)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: mask must be a tensor (bool or 0/1) of the map's shape, got {type(mask).__name__}")
    if mask.numel() == 0 or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name}: mask must hold only 0/1 (or bool) values, and at least one")
    if not bool(mask.bool().any()):
        raise ValueError(f"{name}: mask selects no feature")
    return mask


class _Region(Objective):
    def __init__(self, mask: Tensor) -> None:
        self.mask = _check_mask(mask, type(self).__name__).float()

    def _mask(self, r: Tensor) -> Tensor:
        m = self.mask.to(r)
        try:
            return torch.broadcast_to(m, r.shape)
        except RuntimeError:
            raise ValueError(f"{type(self).__name__}: mask of shape {tuple(m.shape)} does not fit "
                             f"maps {tuple(r.shape)}") from None

    def metric(self, r):
        return mass_in(r.detach(), self._mask(r))

    def default_threshold(self, before):
        return 0.1 * before  # hide: 10 % of the start mass is left (RegionHighlight overrides)

    def select(self, index):
        return self._inherit(type(self)(self.mask[index] if self.mask.dim() > 2 and self.mask.shape[0] > 1
                                        else self.mask))


class RegionHighlight(_Region):
    """Put the map's mass inside ``mask`` (Tang et al.'s targeted attack; Heo's location).

    Loss: minus the mass inside. Metric: mass inside (higher = more manipulated).
    """

    metric_name, direction = "mass_in_region", Direction.HIGHER

    def loss(self, r):
        return -mass_in(r, self._mask(r))

    def default_threshold(self, before):
        return torch.full_like(before, 0.5)


class BlankRegion(_Region):
    """Drive the map's mass inside ``mask`` to zero (Rieger 2020, App. A.4.4, blank square;
    for tabular inputs a mask over features hides them: Pasliev 2020, Sec. 3.8).

    Loss and metric: mass inside (lower = more manipulated).
    """

    metric_name, direction = "mass_in_region", Direction.LOWER

    def loss(self, r):
        return mass_in(r, self._mask(r))


class HideFeatures(Objective):
    """Target map = the start map with the features in ``mask`` set to zero, renormalised:
    hide those features and keep every other feature's importance (Pasliev 2020, Sec. 3.8,
    fairwashing: "the original feature importance for continuous features in combination with
    an importance score of zero for categorical features").

    Unlike :class:`BlankRegion`, which only empties the mask and lets the rest move anywhere,
    the rest of the map is held to the start map, so the explanation looks unchanged but for
    the hidden features. Loss: MSE to that target (as :class:`TargetMap`).
    Metric: mass inside ``mask`` (lower = more manipulated).
    """

    metric_name, direction = "mass_in_region", Direction.LOWER

    def __init__(self, mask: Tensor) -> None:
        self.mask = _check_mask(mask, "HideFeatures").bool()
        self.target: Optional[Tensor] = None

    def complete(self, explain_fn, x, r_start):
        r = r_start.detach()
        try:
            kept = r * (~torch.broadcast_to(self.mask.to(r.device), r.shape)).to(r.dtype)
        except RuntimeError:
            raise ValueError(f"HideFeatures: mask of shape {tuple(self.mask.shape)} does not fit "
                             f"maps {tuple(r.shape)}") from None
        self.target = kept / (kept.flatten(1).sum(1).reshape(-1, *([1] * (r.dim() - 1))) + 1e-12)

    def loss(self, r):
        self._check(r, self.target, "HideFeatures")
        return _scaled_mse(r, self.target.to(r))

    def metric(self, r):
        return mass_in(r.detach(), torch.broadcast_to(self.mask.to(r.device), r.shape))

    def default_threshold(self, before):
        return 0.1 * before

    def select(self, index):
        out = HideFeatures(self.mask)
        out.target = None if self.target is None else self.target[index]
        return self._inherit(out)


class MapDistance(Objective):
    """Move the map as far as possible from a reference map: the start map (default), or the
    map given as ``reference`` (e.g. the map of the clean input when the attack starts
    elsewhere). The untargeted worst case behind max-sensitivity (Yeh et al. 2019), searched
    by :func:`manipex.evaluation.max_sensitivity` with ``adversarial=True``.

    Distance, per sample, on maps rescaled to mean 1 per pixel (as :class:`TargetMap`'s MSE,
    so one scale fits every image size), ``P`` features per map::

        d(r, s) = sqrt( mean_p ((r_p - s_p) * P)^2 ) = sqrt(P) * ||r - s||_2

    Loss: ``-d`` (lower = farther; its gradient is zero where ``r == s``, so an attack must
    start away from the reference map to move). Metric ``"map_distance"``: ``d`` (higher = more
    manipulated).

    Args:
        reference: maps ``(N, ...)`` or one map ``(1, ...)`` for all samples, in the units of
            :func:`manipex.relevance` (normalised here like :class:`TargetMap`); None: the
            start map that :meth:`prepare` receives.
    """

    metric_name, direction = "map_distance", Direction.HIGHER

    def __init__(self, reference: Optional[Tensor] = None) -> None:
        self.reference: Optional[Tensor] = None
        self.fixed = reference is not None
        if reference is not None:
            if not isinstance(reference, Tensor) or not reference.is_floating_point():
                raise TypeError(f"MapDistance: reference must be None or a float tensor of maps, "
                                f"got {type(reference).__name__}")
            if reference.dim() < 2 or reference.shape[0] == 0:
                raise ValueError(f"MapDistance: reference must be a batch of maps (N, ...), "
                                 f"got shape {tuple(reference.shape)}")
            if not bool(torch.isfinite(reference).all()):
                raise ValueError("MapDistance: reference contains NaN or Inf values")
            r = reference.detach().abs()
            self.reference = r / (r.flatten(1).sum(1).reshape(-1, *([1] * (r.dim() - 1))) + 1e-12)

    def complete(self, explain_fn, x, r_start):
        if not self.fixed:
            self.reference = r_start.detach()

    def distance(self, r: Tensor) -> Tensor:
        """``d(r, reference)`` per sample (differentiable)."""
        self._check(r, self.reference, "MapDistance")
        return torch.sqrt(_scaled_mse(r, self.reference.to(r)) + 1e-12)

    def loss(self, r):
        return -self.distance(r)

    def metric(self, r):
        return self.distance(r.detach())

    def default_threshold(self, before):
        return torch.full_like(before, 1.0)

    def select(self, index):
        out = MapDistance()
        out.fixed = self.fixed
        if self.reference is not None:
            out.reference = self.reference if self.reference.shape[0] == 1 else self.reference[index]
        return self._inherit(out)


def square_mask(shape: Tuple[int, int], size: int, corner: Tuple[int, int] = (0, 0)) -> Tensor:
    """A ``(H, W)`` bool mask with a ``size x size`` square at ``corner`` (row, column), inside
    the map (``size >= 1``, the corner within ``shape``)."""
    def whole(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if not (isinstance(shape, (tuple, list)) and len(shape) == 2 and all(whole(v) and v >= 1 for v in shape)):
        raise ValueError(f"square_mask: shape must be (H, W) of positive integers, got {short(shape)}")
    if not whole(size) or size < 1:
        raise ValueError(f"square_mask: size must be a positive integer (pixels), got {short(size)}")
    if not (isinstance(corner, (tuple, list)) and len(corner) == 2 and all(whole(v) for v in corner)
            and 0 <= corner[0] < shape[0] and 0 <= corner[1] < shape[1]):
        raise ValueError(f"square_mask: corner must be (row, column) inside a map of shape {tuple(shape)}, got "
                         f"{short(corner)}")
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[corner[0] : corner[0] + size, corner[1] : corner[1] + size] = True
    return mask


def cross_mask(shape: Tuple[int, int], thickness: Optional[float] = None) -> Tensor:
    """A ``(H, W)`` bool mask of an X along both diagonals: the "cross" target heatmap of
    Pasliev 2020 (Sec. 3.4, Fig. 3.8), used as ``TargetMap(cross_mask(...)[None].float())``.

    The thesis draws its cross by hand and does not say whether it is upright or diagonal; the
    X keeps the center of mass in the middle, far from where maps of centred objects lie.

    Args:
        shape: ``(H, W)`` of the maps.
        thickness: half-width of each stroke in pixels; default ``max(H, W) / 20`` (1.4 px on
            28x28, 1.6 px on 32x32, 11 px on 224x224).
    """
    h, w = shape
    half = max(h, w) / 20 if thickness is None else float(thickness)
    if h < 1 or w < 1 or half <= 0:
        raise ValueError(f"cross_mask: need a positive shape and thickness, got {shape} and {thickness}")
    rows = torch.arange(h, dtype=torch.float32)[:, None] / max(h - 1, 1)
    cols = torch.arange(w, dtype=torch.float32)[None, :] / max(w - 1, 1)
    scale = max(h, w) - 1
    return ((rows - cols).abs() * scale <= half) | ((rows + cols - 1).abs() * scale <= half)


__all__ = ["Objective", "TargetMap", "TargetImage", "TopKSuppression", "CenterOfMass",
           "RegionHighlight", "BlankRegion", "HideFeatures", "MapDistance", "square_mask", "cross_mask"]
