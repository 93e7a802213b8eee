"""Detecting manipulated models (Pasliev 2020, Sec. 4).

A model fine-tuned so that its maps lie on *all* inputs tends to give near-identical maps
whatever it is shown: on images of pure noise ``N(0, 1)`` a clean model's maps follow the noise,
a manipulated model's maps follow the manipulation. :func:`noise_map_similarity` scores this as
the mean pairwise PCC of the normalised maps of noise inputs; :func:`detect_manipulation` turns it
into a decision with a threshold from reference models the auditor trusts (or trained
themselves), so the threshold is justified by data rather than guessed.

What it cannot see: manipulations that are input-dependent (input attacks, which do not
change the model at all), targeted manipulations that only act on a data region noise never
reaches (e.g. a trigger patch), and manipulations of methods other than the one tested.
:func:`weight_noise_test` is the second test of Pasliev Sec. 4: accuracy and manipulation as
Gaussian noise of growing scale is added to the weights (manipulations often vanish first).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._validation import (check_call, check_int, check_labelled_data, check_model, check_real, check_target_range,
                           forward, short)
from ..explainers import explain, relevance
from ..metrics import pcc
from ..objectives import Objective
from ..models import accuracy


def noise_maps(
    model: nn.Module,
    input_shape: Sequence[int],
    method: str = "gradient",
    *,
    n: int = 64,
    seed: int = 0,
    method_options: Optional[Dict[str, Any]] = None,
) -> Tensor:
    """Normalised maps ``(n, ...)`` of ``n`` noise inputs ``N(0, 1)`` of ``input_shape``, each
    explaining the class the model predicts (Pasliev 2020, Sec. 4.1). The noise is drawn on
    the CPU from ``seed``, so every device sees the same inputs."""
    where = "noise_maps"
    check_model(model, where=where)
    shape = check_input_shape(input_shape, where=where)
    check_int(n, where=where, name="n", ge=1)
    check_int(seed, where=where, name="seed", ge=0, le=2**63 - 1)
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(f"{where}: method_options must be None or a dict, got {type(method_options).__name__}")
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype, device = (param.dtype, param.device) if param is not None else (torch.get_default_dtype(), "cpu")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n,) + shape, generator=g, dtype=dtype).to(device)
    return relevance(explain(model, noise, method, **(method_options or {})))


def check_input_shape(input_shape: Any, *, where: str) -> Tuple[int, ...]:
    """The shape of one input without the batch axis, e.g. ``(1, 28, 28)``: positive ints."""
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if (not isinstance(input_shape, (tuple, list)) or not input_shape
            or any(not isinstance(d, int) or isinstance(d, bool) for d in input_shape)):
        raise TypeError(f"{where}: input_shape must be the shape of one input as a tuple of ints, e.g. (1, 28, 28), "
                        f"got {short(input_shape)}")
    if any(d < 1 for d in input_shape) or math.prod(input_shape) > 2**28:
        raise ValueError(f"{where}: input_shape must hold positive sizes of at most 2**28 values in all, "
                         f"got {short(tuple(input_shape))}")
    return tuple(input_shape)


def pairwise_pcc(r: Tensor) -> Tensor:
    """PCC of every pair of maps ``r[i], r[j]`` with ``i < j``, one value per pair."""
    r = r.flatten(1)
    i, j = torch.triu_indices(len(r), len(r), offset=1, device=r.device)
    return pcc(r[i], r[j])


def noise_map_similarity(
    model: nn.Module,
    input_shape: Sequence[int],
    method: str = "gradient",
    *,
    n: int = 64,
    seed: int = 0,
    method_options: Optional[Dict[str, Any]] = None,
) -> Tensor:
    """Pairwise PCC of the maps of ``n`` noise inputs ``N(0, 1)``, one value per pair.

    Higher = the maps look alike whatever the input (a sign of manipulation; Pasliev 2020,
    Table 4.2).
    """
    check_int(n, where="noise_map_similarity", name="n", ge=2)
    return pairwise_pcc(noise_maps(model, input_shape, method, n=n, seed=seed, method_options=method_options))


def similarity_threshold(reference_sims: Tensor, margin: float = 2.0) -> float:
    """``mean + margin * sd`` of a trusted model's pairwise noise-map PCCs
    (:func:`noise_map_similarity`): what a typical single pair of a clean model reaches."""
    margin = check_real(margin, where="similarity_threshold", name="margin", ge=0)
    if not isinstance(reference_sims, Tensor) or reference_sims.numel() < 2:
        raise ValueError("similarity_threshold: reference_sims must be a tensor of at least 2 pairwise PCCs")
    if not bool(torch.isfinite(reference_sims).all()):
        raise ValueError("similarity_threshold: reference_sims contains NaN or Inf values")
    return reference_sims.mean().item() + margin * reference_sims.std().item()


def student_t_cdf(t: float, dof: int) -> float:
    """``P(T <= t)`` for Student's t with an integer number of degrees of freedom, in closed
    form (Abramowitz & Stegun 26.7.3-4): no SciPy needed at run time."""
    if not isinstance(dof, int) or dof < 1:
        raise ValueError(f"student_t_cdf: dof must be a positive int, got {dof!r}")
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, series = 1.0, 1.0 if dof > 1 else 0.0
        for k in range(1, (dof - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * c2
            series += term
        inside = 2 / math.pi * (theta + s * math.cos(theta) * series)
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, series = 1.0, 1.0
        for k in range(1, dof // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            series += term
        inside = s * series
    return 0.5 + 0.5 * inside if t >= 0 else 0.5 - 0.5 * inside


def student_t_quantile(q: float, dof: int) -> float:
    """The ``q``-quantile of Student's t (bisection on :func:`student_t_cdf`)."""
    if not 0 < q < 1:
        raise ValueError(f"student_t_quantile: q must lie in (0, 1), got {q!r}")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if student_t_cdf(mid, dof) < q else (lo, mid)
    return (lo + hi) / 2


@dataclass(repr=False)
class DetectionReport:
    """The outcome of :func:`detect_manipulation`.

    ``score``: mean pairwise PCC of the model's noise maps; ``reference_scores``: the same for
    each trusted model; ``threshold``: the score above which the model is flagged; ``p_value``:
    the probability that a clean model of the references' kind scores at least ``score`` (None
    with fewer than 3 references: then the decision is not calibrated); ``alpha``: the stated
    false-positive rate; ``test``: which test decided.
    """

    score: float
    threshold: float
    manipulated: bool
    reference_scores: Tuple[float, ...]
    method: str
    p_value: Optional[float] = None
    alpha: float = 0.05
    test: str = ""
    #: Where the test cannot reach significance: about how many references of the same spread
    #: it would need (None where it can, or where the spread cannot be estimated).
    references_needed: Optional[int] = None
    #: The power of the test, from the references' spread: the mean score at which a model is
    #: flagged with probability 0.8 (see :func:`detectable_score`); None without 3 references.
    detectable_score: Optional[float] = None

    @property
    def calibrated(self) -> bool:
        """Whether the false-positive rate is controlled at ``alpha`` (3 or more references)."""
        return self.p_value is not None

    @property
    def conclusive(self) -> bool:
        """Whether a clean verdict means something: the model is flagged, or the threshold lies
        below the largest score there is (a mean PCC is at most 1). A threshold at or above 1,
        from few references with a wide spread, could flag no model at all: "no evidence" would
        then be a statement about the references, not about the model."""
        return self.manipulated or self.threshold < MAX_SCORE

    def finding(self) -> str:
        """``MANIPULATED``, ``inconclusive: ...`` or ``no evidence of manipulation``."""
        if self.manipulated:
            return "MANIPULATED"
        if not self.conclusive:
            k = len(self.reference_scores)
            if self.references_needed is not None:
                needed = f"; about {self.references_needed} are needed"
            elif k < 3:
                needed = "; give 3 or more references"
            else:
                needed = "; no number of references with this spread would do (it is too wide near the maximum)"
            return (f"inconclusive: {k} reference{'s' if k != 1 else ''} are too few for this spread (the threshold "
                    f"{self.threshold:.3g} is above the largest attainable score, 1){needed}")
        if self.detectable_score is not None:
            return (f"no evidence of manipulation (with these references, a model scoring {self.detectable_score:.3g} "
                    "on average would be flagged with probability 0.8)")
        return "no evidence of manipulation"

    def __repr__(self) -> str:
        """``DetectionReport(method 'gradient', score 0.81, threshold 0.52, manipulated yes, p 0.003,
        5 references)``."""
        p = f", p {self.p_value:.3g}" if self.p_value is not None else ", uncalibrated"
        k = len(self.reference_scores)
        return (f"{type(self).__name__}(method {self.method!r}, score {self.score:.3g}, "
                f"threshold {self.threshold:.3g}, "
                f"manipulated {'yes' if self.manipulated else 'no'}{p}, {k} reference{'s' if k != 1 else ''})")

    def __str__(self) -> str:
        verdict = self.finding()
        p = f", p = {self.p_value:.3g} (alpha {self.alpha:g})" if self.p_value is not None else " (uncalibrated)"
        return (f"noise-map similarity ({self.method}): {self.score:.3f}; threshold {self.threshold:.3f} "
                f"from {len(self.reference_scores)} reference model(s){p}: {verdict}")


def detect_manipulation(
    model: nn.Module,
    input_shape: Sequence[int],
    references: Sequence[nn.Module],
    method: str = "gradient",
    *,
    n: int = 64,
    seed: int = 0,
    alpha: float = 0.05,
    margin: float = 2.0,
    method_options: Optional[Dict[str, Any]] = None,
) -> DetectionReport:
    """Flag ``model`` when its noise maps are more alike than those of trusted models.

    The statistic is the mean pairwise PCC of the normalised maps of ``n`` noise inputs
    (:func:`noise_map_similarity`, the same inputs for every model; Pasliev 2020, Sec. 4.1).

    With 3 or more references (clean models of the same kind, e.g. trained with other seeds)
    the decision is a one-sided prediction-interval test: clean models' scores vary from model
    to model, and the references estimate that spread. Under the assumption that clean scores
    are log-normal, a new clean model's log score ``S`` satisfies ``(S - m) / (sd sqrt(1 + 1/K))
    ~ t_{K-1}`` (``m``, ``sd``: mean and standard deviation of the ``K`` references' log scores),
    so flagging when the p-value is below ``alpha`` keeps the false-positive rate at ``alpha``.
    The threshold is ``exp(m + t_{1-alpha, K-1} sd sqrt(1 + 1/K))``. The log scale: clean scores
    are positive and right-skewed; on the raw scale the measured false-positive rate of the
    gradient test exceeded alpha, on the log scale it stays below it
    (measured: README, Measured figures behind the defaults; ``benchmarks/detection_calibration.py``).
    Where a score is not positive the raw scale is used.

    With 1 or 2 references the spread between clean models cannot be estimated; the model is
    then flagged when its mean score exceeds ``mean + margin * sd`` of a reference's single
    pairs (the largest over the references): a heuristic, reported as uncalibrated. Models
    manipulated towards a corner score far above clean ones
    (measured: README, Measured figures behind the defaults).
    """
    where = "detect_manipulation"
    check_model(model, where=where)
    if isinstance(references, nn.Module) or not isinstance(references, (list, tuple)):
        raise TypeError(f"{where}: references must be a list of trusted models, got {type(references).__name__}")
    if not references:
        raise ValueError(f"{where}: give at least one reference model the auditor trusts")
    for i, ref in enumerate(references):
        check_model(ref, where=f"{where}: references[{i}]")
    check_input_shape(input_shape, where=where)
    check_real(alpha, where=where, name="alpha", gt=0, lt=1)
    margin = check_real(margin, where=where, name="margin", ge=0)
    kwargs = dict(n=n, seed=seed, method_options=method_options)
    score = _finite_score(noise_map_similarity(model, input_shape, method, **kwargs), "the model")
    sims = [noise_map_similarity(ref, input_shape, method, **kwargs) for ref in references]
    refs = tuple(_finite_score(s, f"reference {i}") for i, s in enumerate(sims))
    k = len(refs)
    if k >= 3:
        p_value, threshold, test = prediction_interval_test(score, refs, alpha)
        needed = references_needed(refs, alpha) if threshold >= MAX_SCORE else None
        return DetectionReport(score, threshold, p_value < alpha, refs, method, p_value, alpha, test, needed,
                               detectable_score(refs, alpha))
    threshold = max(similarity_threshold(s, margin) for s in sims)
    return DetectionReport(score, threshold, score > threshold, refs, method, None, alpha,
                           f"mean + {margin:g} sd of a reference's pairs (uncalibrated)")


#: The largest noise-map similarity there is: a mean of PCCs.
MAX_SCORE = 1.0


def references_needed(reference_scores: Sequence[float], alpha: float = 0.05, at_most: int = 1000) -> Optional[int]:
    """The smallest number ``K`` of references with the spread of ``reference_scores`` (their
    mean and standard deviation, on the test's scale) for which the prediction-interval
    threshold of :func:`prediction_interval_test` falls below :data:`MAX_SCORE`, so that a model
    could be flagged at all; None if not even ``at_most`` would do (the references' mean is at
    the maximum already)."""
    k = len(reference_scores)
    m, sd, log = reference_moments(reference_scores)
    top = math.log(MAX_SCORE) if log else MAX_SCORE
    for n in range(max(k, 3), at_most + 1):
        if m + student_t_quantile(1 - alpha, n - 1) * sd * math.sqrt(1 + 1 / n) < top:
            return n
    return None


#: The standard normal quantile of 0.8: the power at which :func:`detectable_score` is stated.
Z_POWER = 0.8416212335729143


def detectable_score(reference_scores: Sequence[float], alpha: float = 0.05) -> float:
    """The power of :func:`prediction_interval_test` with these references, as the smallest
    effect it detects: the mean score ``S*`` at which a model is flagged with probability 0.8
    when its own score varies from model to model as the references' do
    (log-normal with their sd), i.e. ``exp(log threshold + z_power sd)``. Above
    :data:`MAX_SCORE` no model can be detected with that probability."""
    k = len(reference_scores)
    m, sd, log = reference_moments(reference_scores)
    scale = max(sd, 1e-12) * math.sqrt(1 + 1 / k)
    value = m + student_t_quantile(1 - alpha, k - 1) * scale + Z_POWER * sd
    return math.exp(value) if log else value


def _finite_score(sims: Tensor, who: str) -> float:
    """The mean pairwise PCC, refused when not finite: a NaN score must never read as "no
    evidence of manipulation" (constant maps have no PCC)."""
    score = sims.mean().item()
    if not math.isfinite(score):
        raise ValueError(f"detect_manipulation: the noise-map similarity of {who} is {score}: its maps of noise "
                         "inputs are constant or not finite, so the test cannot decide")
    return score


def reference_moments(reference_scores: Sequence[float], *, log: bool = True) -> Tuple[float, float, bool]:
    """``(mean, sd, on_log_scale)`` of 2 or more reference scores, on the log scale where all
    are positive (and ``log``), else on the raw scale."""
    log = log and all(r > 0 for r in reference_scores)
    values = [math.log(r) if log else r for r in reference_scores]
    m = sum(values) / len(values)
    return m, math.sqrt(sum((r - m) ** 2 for r in values) / (len(values) - 1)), log


def prediction_interval_test(score: float, reference_scores: Sequence[float], alpha: float = 0.05, *,
                             log: bool = True):
    """``(p_value, threshold, description)`` of the one-sided Student-t prediction-interval test
    of :func:`detect_manipulation` for a model's ``score`` against 3 or more reference scores,
    on the log scale where all are positive (and ``log``); ``p_value`` is the upper tail."""
    k = len(reference_scores)
    if k < 3:
        raise ValueError(f"prediction_interval_test: needs 3 or more reference scores, got {k}")
    m, sd, log = reference_moments(reference_scores, log=log and score > 0)  # clean scores are right-skewed
    to, back = (math.log, math.exp) if log else ((lambda v: v), (lambda v: v))
    scale = max(sd, 1e-12) * math.sqrt(1 + 1 / k)
    p_value = 1 - student_t_cdf((to(score) - m) / scale, k - 1)
    threshold = back(m + student_t_quantile(1 - alpha, k - 1) * scale)
    return p_value, threshold, f"prediction interval{' of log scores' if log else ''}, t with {k - 1} dof"


def with_weight_noise(model: nn.Module, sigma: float, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with ``N(0, (sigma * std(W))^2)`` noise added to every weight tensor
    (relative to its own spread; Pasliev 2020, Sec. 4.2). The noise is drawn on the CPU from
    ``seed``, so every device sees the same copy."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"with_weight_noise: model must be a torch.nn.Module, got {type(model).__name__}")
    check_real(sigma, where="with_weight_noise", name="sigma", ge=0)
    check_int(seed, where="with_weight_noise", name="seed", ge=0, le=2**63 - 1)
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # perturbing the weights of a copy, nothing is differentiated
        for p in noisy.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
            p.add_(noise * sigma * p.std().nan_to_num(0.0))
    return noisy


def weight_noise_test(
    model: nn.Module,
    data: Tuple[Tensor, Tensor],
    objective: Objective,
    method: str = "gradient",
    sigmas: Sequence[float] = (0.0, 0.01, 0.02, 0.05, 0.1),
    *,
    seed: int = 0,
    method_options: Optional[Dict[str, Any]] = None,
):
    """Accuracy and the objective's metric as ``N(0, (sigma * std(W))^2)`` noise is added to
    every weight tensor (relative to its own spread), on copies of ``model``.

    Returns a pandas DataFrame indexed by ``sigma``.
    """
    import pandas as pd

    where = "weight_noise_test"
    check_model(model, where=where)
    x, y = check_labelled_data(data, where=where)
    check_call(model, x, where=where)
    if not isinstance(objective, Objective):
        raise TypeError(f"{where}: objective must be a manipex.objectives.Objective, got {type(objective).__name__}")
    if isinstance(sigmas, (int, float)) or not isinstance(sigmas, (list, tuple)) or not sigmas:
        raise TypeError(f"{where}: sigmas must be a non-empty sequence of noise scales, got {short(sigmas)}")
    for sigma in sigmas:
        check_real(sigma, where=where, name="each of sigmas", ge=0)
    opts = dict(method_options or {})
    with torch.no_grad():
        logits = forward(model, x, where=where)
    check_target_range(y, logits.shape[1], where=where, what="label")
    target = logits.argmax(1)
    rows = {}
    for sigma in sigmas:
        noisy = with_weight_noise(model, sigma, seed)

        def fn(inputs: Tensor, m: nn.Module = model) -> Tensor:
            return relevance(explain(m, inputs, method, target, **opts))

        obj = copy.copy(objective).prepare(fn, x, fn(x))
        rows[sigma] = {"accuracy": accuracy(noisy, x, y), objective.metric_name: obj.metric(fn(x, noisy)).mean().item()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "sigma"
    return table
