"""Metrics of manipex, batched torch, each with its definition and direction.

``METRICS`` maps names of map-similarity metrics to :class:`Metric` records, for tables:
``higher_is_similar`` tells the direction. :func:`delta` is Rieger et al.'s Δ-metric.
``ROBUSTNESS_METRICS`` maps names of the worst-case robustness metrics of one model and method
(:mod:`manipex.metrics.robustness`: max-sensitivity, local Lipschitz estimate, relative input
stability) to :class:`RobustnessMetric` records; ``higher_is_robust`` is False for all three
(higher = less robust). ``FAITHFULNESS_METRICS`` maps the faithfulness metrics
(:mod:`manipex.metrics.faithfulness`: pixel flipping, insertion, infidelity; ROAD's curves) to
:class:`~manipex.metrics.faithfulness.FaithfulnessMetric` records (``higher_is_faithful``).

Every function checks its inputs the same way (:mod:`manipex.metrics._checks`): tensors of a
floating dtype (``TypeError`` otherwise: integer or bool maps are refused, not rounded),
non-empty batches ``(N, ...)`` without NaN or Inf, pairs of exactly the same shape (no
broadcasting), a model in eval mode (``ValueError`` otherwise). float16/bfloat16 inputs are
computed in float32, and the result is float32. Arguments are never changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

from torch import Tensor

from .faithfulness import (FAITHFULNESS_METRICS, FaithfulnessMetric, deletion_curve, infidelity, insertion,
                           insertion_curve, pixel_flipping, road)
from .location import center_of_mass, com_distance, mass_in
from .perturbation import class_agreement, image_mse, l2, linf, output_change
from .robustness import RobustnessScores, local_lipschitz, max_sensitivity, relative_input_stability
from .similarity import average_ranks, cosine, mse, pcc, spearman, ssim, topk_intersection


@dataclass(frozen=True)
class Metric:
    """A similarity metric of two batches of maps and its direction."""

    name: str
    fn: Callable[..., Tensor]
    higher_is_similar: bool

    def __call__(self, a: Tensor, b: Tensor, **kwargs) -> Tensor:
        return self.fn(a, b, **kwargs)


METRICS: Dict[str, Metric] = {
    "mse": Metric("mse", mse, False),
    "pcc": Metric("pcc", pcc, True),
    "cosine": Metric("cosine", cosine, True),
    "spearman": Metric("spearman", spearman, True),
    "ssim": Metric("ssim", ssim, True),
    "topk_intersection": Metric("topk_intersection", topk_intersection, True),
    "com_distance": Metric("com_distance", com_distance, False),
}


@dataclass(frozen=True)
class RobustnessMetric:
    """A worst-case robustness metric ``fn(model, x, method, **options) -> (N,)`` and its
    direction."""

    name: str
    fn: Callable[..., Tensor]
    higher_is_robust: bool

    def __call__(self, model, x: Tensor, method: str = "gradient", **kwargs):
        return self.fn(model, x, method, **kwargs)


ROBUSTNESS_METRICS: Dict[str, RobustnessMetric] = {
    "max_sensitivity": RobustnessMetric("max_sensitivity", max_sensitivity, False),
    "local_lipschitz": RobustnessMetric("local_lipschitz", local_lipschitz, False),
    "relative_input_stability": RobustnessMetric("relative_input_stability", relative_input_stability, False),
}


def delta(metric: str, target: Tensor, manipulated: Tensor, start: Tensor, **kwargs) -> Tensor:
    """Rieger et al. 2020's Δ-metric: ``m(target, manipulated) - m(target, start)`` per sample.

    How much closer (for similarity metrics: higher) the attack brought the map to the target
    than it was at the start; for ``mse`` a negative value means closer.
    """
    if not isinstance(metric, str):
        raise TypeError(f"delta: metric must be a metric name (str), got {type(metric).__name__}")
    if metric not in METRICS:
        raise ValueError(f"delta: unknown metric {metric!r}; available: {', '.join(METRICS)}")
    m = METRICS[metric]
    return m(target, manipulated, **kwargs) - m(target, start, **kwargs)


__all__ = [
    "METRICS", "Metric", "delta", "mse", "pcc", "cosine", "spearman", "ssim", "topk_intersection",
    "average_ranks", "center_of_mass", "com_distance", "mass_in", "l2", "linf", "image_mse",
    "output_change", "class_agreement", "ROBUSTNESS_METRICS", "RobustnessMetric", "RobustnessScores",
    "max_sensitivity", "local_lipschitz", "relative_input_stability", "FAITHFULNESS_METRICS", "FaithfulnessMetric",
    "deletion_curve", "insertion_curve", "pixel_flipping", "insertion", "road", "infidelity",
]
