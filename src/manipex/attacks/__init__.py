"""Attacks on explanations: input perturbations and model fine-tuning."""
from .input import InputAttack, InputAttackResult, manipulate_input
from .model import ModelAttackResult, ModelEvaluation, evaluate_manipulation, manipulate_model
from .transfer import transfer_matrix

__all__ = ["manipulate_input", "InputAttack", "InputAttackResult", "transfer_matrix", "manipulate_model",
           "ModelAttackResult", "evaluate_manipulation", "ModelEvaluation"]
