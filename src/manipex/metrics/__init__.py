"""Metrics of manipex, batched torch, each with its definition and direction.

Every record states its score's direction, a :class:`~manipex.metrics.direction.Direction`
(``HIGHER``: a higher score is more of what the record is named for).
``METRICS`` maps names of map-similarity metrics to :class:`Metric` records, for tables:
``direction`` HIGHER for the similarities, LOWER for the distances. :func:`delta` is Rieger et al.'s Δ-metric.
The worst-case robustness metrics (max-sensitivity, local Lipschitz estimate, relative input
stability) run explainers and attacks, so they live a floor up, in :mod:`manipex.evaluation`;
``manipex.metrics.max_sensitivity`` and the other old names still reach them (lazily: this
package imports nothing above it). ``FAITHFULNESS_METRICS`` maps the faithfulness metrics
(:mod:`manipex.metrics.faithfulness`: pixel flipping, insertion, infidelity; ROAD's curves) to
:class:`~manipex.metrics.faithfulness.FaithfulnessMetric` records (``direction``: of
faithfulness).

Every function checks its inputs the same way (:mod:`manipex._validation`): tensors of a
floating dtype (``TypeError`` otherwise: integer or bool maps are refused, not rounded),
non-empty batches ``(N, ...)`` without NaN or Inf, pairs of exactly the same shape (no
broadcasting), a model in eval mode (``ValueError`` otherwise). float16/bfloat16 inputs are
computed in float32, and the result is float32. Arguments are never changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

from torch import Tensor

from .direction import Direction
from .faithfulness import (FAITHFULNESS_METRICS, FaithfulnessMetric, deletion_curve, infidelity, insertion,
                           insertion_curve, pixel_flipping, road)
from .location import center_of_mass, com_distance, mass_in
from .perturbation import class_agreement, image_mse, l2, linf, output_change
from .similarity import average_ranks, cosine, mse, pcc, spearman, ssim, topk_intersection


@dataclass(frozen=True)
class Metric:
    """A similarity metric of two batches of maps and its direction (``HIGHER``: a higher
    score is more similar)."""

    name: str
    fn: Callable[..., Tensor]
    direction: Direction

    def __call__(self, a: Tensor, b: Tensor, **kwargs) -> Tensor:
        return self.fn(a, b, **kwargs)


METRICS: Dict[str, Metric] = {
    "mse": Metric("mse", mse, Direction.LOWER),
    "pcc": Metric("pcc", pcc, Direction.HIGHER),
    "cosine": Metric("cosine", cosine, Direction.HIGHER),
    "spearman": Metric("spearman", spearman, Direction.HIGHER),
    "ssim": Metric("ssim", ssim, Direction.HIGHER),
    "topk_intersection": Metric("topk_intersection", topk_intersection, Direction.HIGHER),
    "com_distance": Metric("com_distance", com_distance, Direction.LOWER),
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
    "output_change", "class_agreement", "FAITHFULNESS_METRICS", "FaithfulnessMetric",
    "deletion_curve", "insertion_curve", "pixel_flipping", "insertion", "road", "infidelity", "Direction",
]

#: names that moved to :mod:`manipex.evaluation` (issue 27), still reachable from here
MOVED_TO_EVALUATION = ("ROBUSTNESS_METRICS", "RobustnessMetric", "RobustnessScores", "max_sensitivity",
                       "local_lipschitz", "relative_input_stability")


def __getattr__(name: str):
    """``manipex.metrics.max_sensitivity`` and the other robustness names of
    :data:`MOVED_TO_EVALUATION`, from :mod:`manipex.evaluation` on first use (PEP 562), so that
    importing the metrics imports nothing above them."""
    if name in MOVED_TO_EVALUATION:
        from .. import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'manipex.metrics' has no attribute {name!r}")
