"""Worst-case robustness of explanations: how far a map moves when the input moves a little.

Three metrics, each the maximum of a ratio over perturbed inputs ``x'`` near ``x``, per image,
``(N,)`` float32; **higher = less robust** for all three:

| function | ratio maximised over ``x'`` | paper | Quantus class |
|---|---|---|---|
| :func:`max_sensitivity` | ``||a(x') - a(x)|| / ||a(x)||`` | Yeh et al. 2019 | ``MaxSensitivity`` |
| :func:`local_lipschitz` | ``||a(x') - a(x)|| / ||x' - x||`` | Alvarez-Melis & Jaakkola 2018 | ``LocalLipschitzEstimate`` |
| :func:`relative_input_stability` | ``||(a(x) - a(x')) / a(x)|| / max(||(x - x') / x||, eps_min)`` | Agarwal et al. 2022 | ``RelativeInputStability`` |

``a`` is the map of ``method`` (:func:`manipex.explain`) for the class of ``x`` (``target``;
None: the predicted class of ``x``), kept fixed at every ``x'`` (as Quantus explains
``y_batch`` at every perturbed input).

Sampling (Monte-Carlo, as Quantus): ``samples`` perturbations ``d_s`` are drawn once from
``seed`` and **the same** ``d_s`` are added to every image, so an image's score depends on the
image and the seed only, never on its batch (Quantus draws new noise per image and per batch).
Explicit ``perturbations`` replace the draw (common random numbers across methods, or someone
else's draws).

Samples whose predicted class changes (``prediction_changed``): ``"keep"`` counts them
(Quantus's default for max-sensitivity and the local Lipschitz estimate), ``"skip"`` leaves
them out of the maximum (the score is NaN where no sample is left; Agarwal et al.'s definition:
``x'`` with the prediction of ``x`` only), ``"nan"`` makes the score NaN when any sample
changed the class (Quantus's ``return_nan_when_prediction_changes=True``, the default of its
``RelativeInputStability``).

Worst case (``adversarial=True``): sampling finds a lower bound of the maximum that is often
loose. The attack :func:`manipex.attacks.manipulate_input` with the objective
:class:`manipex.objectives.MapDistance` then searches the L∞ ball of radius ``radius`` around
``x`` for a point whose normalised relevance map is far from that of ``x``, starting from the
best sampled point (from ``x`` where no sample counted; on the model itself, with
``attack_options={"beta": None}``, the objective has no gradient at ``x``), on a softplus
surrogate of the model (its ``beta``), keeping the predicted class of ``x``. The attack's point
is scored with the metric's own ratio on the model as it is, and the score is the larger of the
sampled and the adversarial value: never
below the sampled score, by construction. The attack runs on the whole batch at once (each
image's start and budget its own). ``return_details=True`` gives both values
(:class:`RobustnessScores`).

Checks (before any work): the model an ``nn.Module`` in eval mode with finite parameters, ``x``
a finite floating batch of the model's dtype and device, a known ``method`` and options,
positive radii, ``samples >= 1``; ``TypeError``/``ValueError`` naming the argument. The model
is never changed.
"""  # noqa: E501 -- the rows of the table above cannot be wrapped
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .._validation import (TargetLike, check_bool, check_call, check_choice, check_int, check_real, check_target,
                           predicted_target, short)
from ..explainers import get_explainer, relevance
from ..attacks import manipulate_input
from ..objectives import MapDistance
from .._progress import progress_bar

#: ``||v||`` of a flattened difference, by name (``"fro"`` and ``"l2"`` are the same here:
#: the Frobenius norm of a map is the L2 norm of the flattened map, Quantus's ``fro_norm``).
NORMS: Dict[str, Callable[[Tensor], Tensor]] = {
    "fro": lambda v: v.norm(dim=1),
    "l2": lambda v: v.norm(dim=1),
    "l1": lambda v: v.abs().sum(dim=1),
    "linf": lambda v: v.abs().amax(dim=1),
}

PREDICTION_RULES = ("keep", "skip", "nan")
NORMALISATIONS = ("none", "max", "relevance")

#: Options of ``attack_options`` that the metric sets itself.
_RESERVED = ("objective", "method", "method_options", "target", "eps", "norm", "clamp", "start")


@dataclass(repr=False)
class RobustnessScores:
    """Per image (``N`` rows): ``score`` the metric (float32; the larger of ``sampled`` and
    ``adversarial``), ``sampled`` the maximum over the sampled points, ``adversarial`` the
    attack's value (None without ``adversarial``; NaN where the attack did not move or its
    point does not count), ``x_worst`` the input that gave ``score`` (``x`` itself where no
    point counted) and ``counted`` how many sampled points counted. Its repr is a one-line
    summary."""

    score: Tensor
    sampled: Tensor
    adversarial: Optional[Tensor]
    x_worst: Tensor
    counted: Tensor

    def __repr__(self) -> str:
        """``RobustnessScores(8 images, score mean 0.31 (max 0.52), sampled mean 0.27,
        adversarial mean 0.3 on 7 images)``."""
        def mean(t: Tensor) -> str:
            finite = t[torch.isfinite(t)].double()
            return f"{float(finite.mean()):.3g}" if finite.numel() else "–"

        n = int(self.score.shape[0]) if self.score.dim() else 1
        finite = self.score[torch.isfinite(self.score)]
        top = f" (max {float(finite.max()):.3g})" if finite.numel() else ""
        parts = [f"{n} image{'s' if n != 1 else ''}", f"score mean {mean(self.score)}{top}",
                 f"sampled mean {mean(self.sampled)}"]
        if self.adversarial is not None:
            moved = int(torch.isfinite(self.adversarial).sum())
            parts.append(f"adversarial mean {mean(self.adversarial)} on {moved} image{'s' if moved != 1 else ''}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _normalise(a: Tensor, how: str) -> Tensor:
    """Maps ``(N, ...)`` flattened to ``(N, D)``, normalised per sample."""
    if how == "relevance":
        return relevance(a).flatten(1)
    a = a.flatten(1)
    if how == "max":  # Quantus's normalise_by_max, per sample; an all-zero map stays zero
        m = a.abs().amax(dim=1, keepdim=True)
        return a / torch.where(m > 0, m, torch.ones_like(m))
    return a


def _check_normalise(value: Any, *, where: str) -> str:
    if value is False or value is None:
        return "none"
    if value is True:
        return "max"
    return check_choice(value, NORMALISATIONS, where=where, name="normalise")


#: ratio(x, a, x', a') -> (rows,), for rows of flattened inputs and normalised maps.
#: ratio(x, a, x', a') -> (rows,), for rows of flattened inputs and normalised maps.
Ratio = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(eq=False)
class WorstCase(abc.ABC):
    """The base of the worst-case robustness metrics (Quantus's shape: the options are the
    object, the call takes the model and the data): the maximum over perturbed inputs ``x'``
    of :meth:`ratio`, with the perturbations of :meth:`draw` and, with ``adversarial``, an
    attack from the best sampled point (the module docstring). A subclass states its ratio,
    its draw and its own options; the loop, the checks and the attack are here, once.

    Options (every metric): ``samples``, ``normalise``, ``seed``, ``prediction_changed``,
    ``adversarial``, ``radius`` (the ball of the adversarial search), ``attack_options``,
    ``clamp``, ``perturbations``, ``batch_size``, ``progress``, ``return_details``: see
    :func:`max_sensitivity`. Call: ``metric(model, x, method="gradient", *, target=None,
    method_options=None)`` -> ``(N,)`` float32 or :class:`RobustnessScores`.
    """

    samples: int = 50
    normalise: Union[bool, str] = False
    seed: int = 0
    prediction_changed: str = "keep"
    adversarial: bool = False
    radius: float = 0.2
    attack_options: Optional[Dict[str, Any]] = None
    clamp: Optional[Tuple[float, float]] = None
    perturbations: Optional[Tensor] = None
    batch_size: int = 256
    progress: bool = False
    return_details: bool = False

    #: the metric's name, in its error messages and progress bar
    name: ClassVar[str] = "worst_case"

    @abc.abstractmethod
    def ratio(self, xr: Tensor, a: Tensor, xp: Tensor, b: Tensor) -> Tensor:
        """The ratio maximised, per row: inputs ``xr`` (at ``x``) and ``xp`` (perturbed),
        flattened, and their normalised maps ``a`` and ``b``."""

    @abc.abstractmethod
    def draw(self, gen: torch.Generator, shape: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """``shape[0]`` perturbations of one input, from ``gen``."""

    def check(self) -> None:
        """Check the options (every metric's here; a subclass adds its own): ``ValueError`` or
        ``TypeError`` naming the option, before any work."""
        where = self.name
        self.radius = check_real(self.radius, where=where, name="radius", gt=0)
        check_int(self.samples, where=where, name="samples", ge=1)
        check_int(self.seed, where=where, name="seed", ge=0)
        check_choice(self.prediction_changed, PREDICTION_RULES, where=where, name="prediction_changed")
        for name in ("adversarial", "progress", "return_details"):
            check_bool(getattr(self, name), where=where, name=name)
        check_int(self.batch_size, where=where, name="batch_size", ge=1)
        if self.attack_options is not None and not isinstance(self.attack_options, dict):
            raise TypeError(f"{where}: attack_options must be None or a dict, got {type(self.attack_options).__name__}")
        reserved = sorted(set(self.attack_options or {}) & set(_RESERVED))
        if reserved:
            raise ValueError(f"{where}: attack_options may not set {reserved[0]!r}; the metric sets "
                             f"{', '.join(_RESERVED)} itself (the ball is radius={self.radius})")

    @classmethod
    def with_options(cls, options: Dict[str, Any]) -> "WorstCase":
        """The metric with ``options``, checked; an unknown option is a ``TypeError`` naming it
        and the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"{cls.name}: unknown option {unknown[0]!r}; options: model, x, method, target, "
                            f"method_options, {', '.join(known)}")
        metric = cls(**options)
        metric.check()
        return metric

    def __call__(self, model: nn.Module, x: Tensor, method: str = "gradient", *, target: TargetLike = None,
                 method_options: Optional[Dict[str, Any]] = None) -> Union[Tensor, RobustnessScores]:
        """Check, sample in chunks, keep the maximum ratio per image, then (optionally) attack
        from the best point."""
        where = self.name
        self.check()
        check_call(model, x, where=where)
        if method_options is not None and not isinstance(method_options, dict):
            raise TypeError(f"{where}: method_options must be None or a dict, got {type(method_options).__name__}")
        method_options = dict(method_options or {})
        try:
            explainer = get_explainer(method, **method_options)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where}: method {method!r}: {err}") from None
        how = _check_normalise(self.normalise, where=where)
        low, high = _check_clamp(self.clamp, x, where=where)
        samples, seed, perturbations, draw, ratio = self.samples, self.seed, self.perturbations, self.draw, self.ratio
        prediction_changed, batch_size, progress = self.prediction_changed, self.batch_size, self.progress
        n, shape = x.shape[0], tuple(x.shape[1:])
        if perturbations is not None:
            noise = _check_perturbations(perturbations, x, where=where)
        else:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            noise = draw(gen, (samples,) + shape, x.dtype).to(x.device)
        target = predicted_target(model, x.detach(), check_target(target, n, where=where), where=where)
        x = x.detach()

        def maps_at(inputs: Tensor, t: Tensor) -> Tensor:
            return _normalise(explainer(model, inputs, t), how)

        def classes_at(inputs: Tensor) -> Tensor:
            with torch.no_grad():
                return model(inputs).argmax(1)

        h_x = explainer(model, x, target)  # the map at x, also the attack's reference
        a_x, c_x = _normalise(h_x, how), classes_at(x)
        flat_x = x.flatten(1)
        count = noise.shape[0]
        best = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
        best_at = x.clone()
        counted = torch.zeros(n, dtype=torch.long, device=x.device)
        changed_any = torch.zeros(n, dtype=torch.bool, device=x.device)
        per_chunk = max(1, batch_size // n)

        bar = progress_bar(total=count, desc=where, enabled=progress, leave=False)
        for s0 in range(0, count, per_chunk):
            d = noise[s0:s0 + per_chunk]                          # (k, ...)
            k = d.shape[0]
            xp = (x.unsqueeze(1) + d.unsqueeze(0)).reshape(n * k, *shape)  # image-major rows
            if low is not None:
                xp = torch.maximum(torch.minimum(xp, high), low)
            rows_t = target.repeat_interleave(k)
            value = ratio(flat_x.repeat_interleave(k, 0), a_x.repeat_interleave(k, 0), xp.flatten(1),
                          maps_at(xp, rows_t)).reshape(n, k)
            same = (classes_at(xp) == c_x.repeat_interleave(k)).reshape(n, k)
            changed_any |= ~same.all(1)
            counts = same if prediction_changed != "keep" else torch.ones_like(same)
            value = torch.where(counts, value, torch.full_like(value, -math.inf))
            counted += counts.sum(1)
            top, idx = value.max(1)
            better = top > best
            best = torch.where(better, top, best)
            pick = xp.reshape(n, k, *shape)[torch.arange(n, device=x.device), idx]
            best_at = torch.where(better.reshape(-1, *([1] * len(shape))), pick, best_at)
            bar.update(k)
        bar.close()

        nan = torch.full_like(best, math.nan)
        sampled = torch.where(counted > 0, best, nan)
        score, worst = sampled.clone(), best_at
        adv_value = None
        if self.adversarial:
            adv_value, adv_x = _attack(self, model, x, h_x, a_x, best_at, target, method, method_options, maps_at,
                                       low, high)
            if prediction_changed != "keep":
                adv_value = torch.where(classes_at(adv_x) == c_x, adv_value, nan)
            wins = adv_value > torch.nan_to_num(score, nan=-math.inf)  # False where adv_value is NaN
            score = torch.where(wins, adv_value, score)
            worst = torch.where(wins.reshape(-1, *([1] * len(shape))), adv_x, worst)
        if prediction_changed == "nan":
            score = torch.where(changed_any, nan, score)
        if not self.return_details:
            return score.float()
        return RobustnessScores(score=score.float(), sampled=sampled.float(),
                                adversarial=None if adv_value is None else adv_value.float(),
                                x_worst=worst, counted=counted)


def _attack(metric: WorstCase, model, x, h_x, a_x, start, target, method, method_options, maps_at, low,
            high) -> Tuple[Tensor, Tensor]:
    """:func:`manipulate_input` with :class:`MapDistance` from ``start``, inside the L∞ ball of
    ``radius`` around ``x`` (and the clamp range), the whole batch at once; the metric's ratio
    at the attack's point (NaN where it did not move) and that point. ``h_x`` and ``a_x``: the map
    at ``x``, as is and as the metric normalises it (``maps_at``)."""
    radius, ratio = metric.radius, metric.ratio
    options = {"steps": 50, "lr": radius / 10, "progress": metric.progress, **(metric.attack_options or {})}
    result = manipulate_input(model, x, MapDistance(reference=relevance(h_x)), method, target=target,
                              method_options=method_options, eps=radius, norm="linf",
                              clamp=None if low is None else (low, high), start=start, **options)
    xa = result.x_adv.detach()
    value = ratio(x.flatten(1), a_x, xa.flatten(1), maps_at(xa, target))
    moved = (xa != x).flatten(1).any(1)
    return torch.where(moved, value, torch.full_like(value, math.nan)), xa


def _check_clamp(clamp: Any, x: Tensor, *, where: str) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    if clamp is None:
        return None, None
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise TypeError(f"{where}: clamp must be None or a pair (low, high) of numbers, got {short(clamp)}")
    low = check_real(clamp[0], where=where, name="clamp[0]")
    high = check_real(clamp[1], where=where, name="clamp[1]")
    if not low < high:
        raise ValueError(f"{where}: clamp must have low < high, got {short(clamp)}")
    if bool((x < low).any()) or bool((x > high).any()):
        raise ValueError(f"{where}: x lies outside clamp=({low:g}, {high:g}); pass the range of your data or "
                         "clamp=None")
    return (torch.tensor(low, dtype=x.dtype, device=x.device), torch.tensor(high, dtype=x.dtype, device=x.device))


def _check_perturbations(p: Any, x: Tensor, *, where: str) -> Tensor:
    if not isinstance(p, Tensor) or not p.is_floating_point():
        raise TypeError(f"{where}: perturbations must be None or a float tensor (S, *x.shape[1:]), "
                        f"got {type(p).__name__}")
    if tuple(p.shape[1:]) != tuple(x.shape[1:]) or p.shape[0] == 0:
        raise ValueError(f"{where}: perturbations must have shape (S, {', '.join(map(str, x.shape[1:]))}) with S >= 1, "
                         f"got {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{where}: perturbations contain NaN or Inf values")
    return p.detach().to(dtype=x.dtype, device=x.device)


@dataclass(eq=False)
class MaxSensitivity(WorstCase):
    """Max-sensitivity (Yeh et al. 2019) as an object: :func:`max_sensitivity`'s options, called
    on ``(model, x, method)``. ``norm``: of the flattened map difference (:data:`NORMS`)."""

    norm: str = "fro"
    name: ClassVar[str] = "max_sensitivity"

    def check(self) -> None:
        super().check()
        check_choice(self.norm, tuple(NORMS), where=self.name, name="norm")

    def draw(self, gen, shape, dtype):
        return (torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1) * self.radius

    def ratio(self, xr, a, xp, b):
        measure = NORMS[self.norm]
        num, den = measure(b - a), measure(a)
        safe = torch.where(den > 0, den, torch.ones_like(den))
        zero_den = torch.where(num > 0, torch.full_like(num, math.inf), torch.zeros_like(num))
        return torch.where(den > 0, num / safe, zero_den)


@dataclass(eq=False)
class LocalLipschitz(WorstCase):
    """The local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018) as an object:
    :func:`local_lipschitz`'s options. ``std``: of the Gaussian noise; ``radius``: the ball of
    the adversarial search only."""

    std: float = 0.1
    norm: str = "l2"
    normalise: Union[bool, str] = "max"
    name: ClassVar[str] = "local_lipschitz"

    def check(self) -> None:
        super().check()
        self.std = check_real(self.std, where=self.name, name="std", gt=0)
        check_choice(self.norm, tuple(NORMS), where=self.name, name="norm")

    def draw(self, gen, shape, dtype):
        return torch.randn(shape, generator=gen, dtype=dtype) * self.std

    def ratio(self, xr, a, xp, b):
        measure = NORMS[self.norm]
        return measure(b - a) / (measure(xp - xr) + 1e-10)


@dataclass(eq=False)
class RelativeInputStability(WorstCase):
    """Relative input stability (Agarwal et al. 2022, Eq. 2) as an object:
    :func:`relative_input_stability`'s options."""

    norm: str = "l2"
    eps_min: float = 1e-6
    prediction_changed: str = "skip"
    name: ClassVar[str] = "relative_input_stability"

    def check(self) -> None:
        super().check()
        self.eps_min = check_real(self.eps_min, where=self.name, name="eps_min", gt=0)
        check_choice(self.norm, tuple(NORMS), where=self.name, name="norm")

    def draw(self, gen, shape, dtype):
        return (torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1) * self.radius

    def ratio(self, xr, a, xp, b):
        measure, eps_min = NORMS[self.norm], self.eps_min
        num = measure((a - b) / (a + (a == 0) * eps_min))
        den = measure((xr - xp) / (xr + (xr == 0) * eps_min))
        return num / den.clamp(min=eps_min)


def max_sensitivity(model: nn.Module, x: Tensor, method: str = "gradient", *, target: TargetLike = None,
                    method_options: Optional[Dict[str, Any]] = None, **options) -> Union[Tensor, RobustnessScores]:
    """Max-sensitivity of Yeh et al. 2019 ("On the (in)fidelity and sensitivity of
    explanations", NeurIPS), as Quantus's ``MaxSensitivity`` computes it. Higher = less robust.

    Per image::

        MS(x) = max_{s = 1..S} ||a(x + d_s) - a(x)|| / ||a(x)||,   d_s ~ U[-radius, radius]^D

    ``a`` the map of ``method`` for the class of ``x``, normalised per ``normalise``;
    ``||.||`` the ``norm`` of the flattened map (``"fro"``, Quantus's default, = ``"l2"``;
    ``"l1"``, ``"linf"``). An all-zero ``a(x)`` gives 0 where ``a(x + d_s)`` is zero too and
    ``inf`` otherwise (Quantus divides by zero).

    Args:
        model, x, method, target, method_options: as :func:`manipex.explain`.
        radius: L∞ radius of the uniform noise (Quantus ``lower_bound``, default 0.2) and of the
            adversarial search.
        samples: number of noise draws (Quantus ``nr_samples`` = 200; 50 here, a quarter of
            the cost: pass 200 to match).
        normalise: ``False``/``"none"`` (Quantus's default), ``True``/``"max"`` (divide by the
            largest ``|a|``, Quantus's ``normalise_by_max`` -- per image here, where Quantus
            divides by the maximum over the whole batch, which makes an image's score depend
            on its batch), or ``"relevance"`` (:func:`manipex.relevance`: sum of ``|a|`` over
            channels, normalised to sum 1).
        seed: the draw of the noise (the same ``d_s`` for every image).
        prediction_changed: ``"keep"`` (Quantus's default), ``"skip"`` or ``"nan"``: see the
            module docstring.
        adversarial: also search the worst case with :func:`manipex.attacks.manipulate_input`
            (the module docstring); ``attack_options`` go to it (default ``steps=50``,
            ``lr=radius / 10``; ``eps``, ``clamp``, ``norm``, ``objective``, ``method`` and
            ``target`` are set by the metric).
        clamp: ``(low, high)``: clip every perturbed input to the data range (Quantus does not
            clip; default None).
        perturbations: ``(S, *x.shape[1:])`` noise to use instead of drawing ``samples``.
        batch_size: perturbed inputs per call of the explainer (at least one per image).
        progress: a progress bar over the samples (and the attack).
        return_details: return :class:`RobustnessScores` instead of the scores.

    Returns:
        ``(N,)`` float32 (or :class:`RobustnessScores`).

    Deviations from Quantus: the same noise for every image (an image's score does not depend
    on its batch), per-image ``"max"`` normalisation, 50 samples by default, a zero map gives
    0 or ``inf`` instead of a division by zero.
    """
    return MaxSensitivity.with_options(options)(model, x, method, target=target, method_options=method_options)


def local_lipschitz(model: nn.Module, x: Tensor, method: str = "gradient", *, target: TargetLike = None,
                    method_options: Optional[Dict[str, Any]] = None, **options) -> Union[Tensor, RobustnessScores]:
    """Local Lipschitz estimate of Alvarez-Melis & Jaakkola 2018 ("On the robustness of
    interpretability methods", ICML WHI), as Quantus's ``LocalLipschitzEstimate`` computes it.
    Higher = less robust.

    Per image::

        L(x) = max_{s = 1..S} ||a(x + d_s) - a(x)|| / (||d_s|| + 1e-10),   d_s ~ N(0, std^2 I)

    (``||d_s|| = ||x' - x||`` after ``clamp``, if any). ``a`` normalised per ``normalise``,
    ``||.||`` the ``norm`` of the flattened difference for both the numerator and the
    denominator (Quantus: Euclidean distance for both; the 1e-10 is Quantus's).

    Args:
        std: standard deviation of the Gaussian noise (Quantus ``perturb_std`` = 0.1).
        samples: Quantus ``nr_samples`` = 200; 50 here (pass 200 to match).
        normalise: ``"max"`` (= ``True``; Quantus's default ``normalise=True`` with
            ``normalise_by_max``, per image here instead of per batch), ``"none"`` or
            ``"relevance"``.
        radius: the L∞ ball of the adversarial search (the paper's neighbourhood
            ``B_eps(x)``; Gaussian samples have no ball). Default 0.2 = 2 ``std``.
        others: as :func:`max_sensitivity`.

    Returns:
        ``(N,)`` float32 (or :class:`RobustnessScores`). With ``adversarial=True`` the attack
        maximises the map's distance, not the ratio; its point is scored with the ratio.
    """
    return LocalLipschitz.with_options(options)(model, x, method, target=target, method_options=method_options)


def relative_input_stability(model: nn.Module, x: Tensor, method: str = "gradient", *, target: TargetLike = None,
                             method_options: Optional[Dict[str, Any]] = None,
                             **options) -> Union[Tensor, RobustnessScores]:
    """Relative input stability (RIS) of Agarwal et al. 2022 ("Rethinking stability for
    attribution-based explanations", Eq. 2), as Quantus's ``RelativeInputStability``
    computes it. Higher = less robust.

    Per image, with elementwise divisions::

        RIS(x) = max_{x'} ||(a(x) - a(x')) / a~(x)||_p / max(||(x - x') / x~||_p, eps_min)

    over ``x' = x + d_s`` with the predicted class of ``x`` (``prediction_changed="skip"``),
    ``d_s ~ U[-radius, radius]^D``; ``a~(x) = a(x) + eps_min * [a(x) == 0]`` and likewise
    ``x~`` (Quantus's guard against division by zero); ``||.||_p`` the ``norm`` of the
    flattened tensor (Quantus: L2 over all axes).

    Deviations from Quantus: the noise is symmetric, ``U[-radius, radius]`` (Quantus draws
    ``U[0.02, 0.2]``, shifting every feature up, a quirk of its ``upper_bound`` argument);
    the denominator is ``max(., eps_min)`` as in the paper (Quantus replaces only an exact 0
    by ``eps_min``); a sample that changes the class is skipped, the paper's definition
    (Quantus's default makes the whole score NaN: ``prediction_changed="nan"``); 50 samples
    (Quantus 200).

    Args:
        eps_min: the paper's ``eps_min`` (Quantus default 1e-6).
        others: as :func:`max_sensitivity`.

    Returns:
        ``(N,)`` float32 (or :class:`RobustnessScores`); NaN where no sample kept the class.
    """
    return RelativeInputStability.with_options(options)(model, x, method, target=target,
                                                        method_options=method_options)


__all__ = ["max_sensitivity", "local_lipschitz", "relative_input_stability", "RobustnessScores", "NORMS",
           "PREDICTION_RULES", "WorstCase", "MaxSensitivity", "LocalLipschitz", "RelativeInputStability"]
