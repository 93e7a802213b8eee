"""Attacks on explanations: input perturbations and model fine-tuning.

:func:`transfer_matrix`, :func:`evaluate_manipulation` and :class:`ModelEvaluation` measure
attacks and live on the evaluation floor above (:mod:`manipex.evaluation`); their names here
reach them on first use."""
from .input import InputAttack, InputAttackResult, manipulate_input
from .model import ModelAttackResult, manipulate_model

#: Names that moved to :mod:`manipex.evaluation` (issue 27) and stay importable from here.
MOVED_TO_EVALUATION = ("transfer_matrix", "evaluate_manipulation", "ModelEvaluation")


def __getattr__(name: str):
    """``manipex.attacks.transfer_matrix`` and the other names of :data:`MOVED_TO_EVALUATION`,
    from :mod:`manipex.evaluation` on first use (PEP 562): the evaluation floor imports the
    attacks, never the other way round."""
    if name in MOVED_TO_EVALUATION:
        from .. import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'manipex.attacks' has no attribute {name!r}")


__all__ = ["manipulate_input", "InputAttack", "InputAttackResult", "transfer_matrix", "manipulate_model",
           "ModelAttackResult", "evaluate_manipulation", "ModelEvaluation"]
