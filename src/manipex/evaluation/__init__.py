"""The evaluation floor, above the attacks: measures of a model and a method that run attacks or
explainers themselves (issue 27's layout; :mod:`manipex.metrics` below it is pure tensor maths).

- :mod:`.robustness`: the worst-case robustness metrics (max-sensitivity, the local Lipschitz
  estimate, relative input stability) as one :class:`~.robustness.WorstCase` base with a ratio
  and a draw per metric, Quantus's shape (options in the object, the call on the model and the
  data), and the functions :func:`max_sensitivity`, :func:`local_lipschitz`,
  :func:`relative_input_stability` over them. ``ROBUSTNESS_METRICS`` holds their records
  (:class:`RobustnessMetric`, with their :class:`~manipex.metrics.direction.Direction`).
- :mod:`.sanity`: the model parameter randomisation test (Adebayo et al. 2018),
  :func:`model_randomization`.
- :mod:`.transfer`: the transfer of input attacks between methods (Rieger et al. 2020, Fig. 2),
  :func:`transfer_matrix`.
- :mod:`.manipulation`: whether a model manipulation worked and transfers (Pasliev 2020, Tables
  3.1-3.2), :func:`evaluate_manipulation`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

from torch import Tensor

from ..metrics.direction import Direction
from .manipulation import ModelEvaluation, evaluate_manipulation
from .sanity import RandomizationResult, model_randomization
from .transfer import transfer_matrix
from .robustness import (NORMS, PREDICTION_RULES, LocalLipschitz, MaxSensitivity, RelativeInputStability,
                         RobustnessScores, WorstCase, local_lipschitz, max_sensitivity, relative_input_stability)


@dataclass(frozen=True)
class RobustnessMetric:
    """A worst-case robustness metric ``fn(model, x, method, **options) -> (N,)`` and its
    direction (``LOWER``: a higher score is a less robust map)."""

    name: str
    fn: Callable[..., Tensor]
    direction: Direction

    def __call__(self, model, x: Tensor, method: str = "gradient", **kwargs):
        return self.fn(model, x, method, **kwargs)


ROBUSTNESS_METRICS: Dict[str, RobustnessMetric] = {
    "max_sensitivity": RobustnessMetric("max_sensitivity", max_sensitivity, Direction.LOWER),
    "local_lipschitz": RobustnessMetric("local_lipschitz", local_lipschitz, Direction.LOWER),
    "relative_input_stability": RobustnessMetric("relative_input_stability", relative_input_stability, Direction.LOWER),
}

__all__ = ["ROBUSTNESS_METRICS", "RobustnessMetric", "RobustnessScores", "WorstCase", "MaxSensitivity",
           "LocalLipschitz", "RelativeInputStability", "max_sensitivity", "local_lipschitz",
           "relative_input_stability", "NORMS", "PREDICTION_RULES", "model_randomization", "RandomizationResult",
           "transfer_matrix", "evaluate_manipulation", "ModelEvaluation"]
