"""Attacks on explanations: input perturbations (and, later, model fine-tuning)."""
from .input import InputAttackResult, manipulate_input
from .transfer import transfer_matrix

__all__ = ["manipulate_input", "InputAttackResult", "transfer_matrix"]
