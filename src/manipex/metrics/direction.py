"""Which way a score goes: one vocabulary for every score of manipex (Quantus's ``ScoreDirection``).

A score measures something by name: a similarity how similar two maps are, a robustness metric
how far a map moves, a faithfulness metric how well a map predicts the model, an objective's
metric how far the attacker got. :class:`Direction` says whether a higher score means more of
that thing (``HIGHER``) or less (``LOWER``); :meth:`Direction.gain` turns a change of the score
into a change towards it, positive when the score moved the favoured way.
"""
from __future__ import annotations

import enum
from typing import Union

from torch import Tensor

__all__ = ["Direction"]


class Direction(enum.Enum):
    """``HIGHER``: a higher score means more of what the score is named for (more similar, more
    faithful, more manipulated); ``LOWER``: less (a larger max-sensitivity is a less robust map,
    a smaller top-k intersection a more manipulated one)."""

    HIGHER = "higher"
    LOWER = "lower"

    @classmethod
    def of(cls, higher: bool) -> "Direction":
        """The direction of a score for which "higher is more" is ``higher``."""
        return cls.HIGHER if higher else cls.LOWER

    @property
    def higher(self) -> bool:
        """True where a higher score means more."""
        return self is Direction.HIGHER

    def gain(self, after: Union[Tensor, float], before: Union[Tensor, float]) -> Union[Tensor, float]:
        """``after - before`` towards the favoured side: positive when the score moved the way
        that means more (``before - after`` for ``LOWER``)."""
        return after - before if self is Direction.HIGHER else before - after

    def better(self, a: Union[Tensor, float], b: Union[Tensor, float]):
        """Whether ``a`` is further the favoured way than ``b`` (element-wise on tensors)."""
        return a > b if self is Direction.HIGHER else a < b

    def __str__(self) -> str:
        return f"{self.value} is more"
