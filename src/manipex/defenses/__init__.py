"""Defenses of explanations and detection of manipulated models.

* β-smoothing: ``manipex.explain(..., softplus_beta=1.0)``; :func:`beta_sweep` (Dombrowski Fig. 4).
* SmoothGrad and AGG-Mean / AGG-Var are explainers (``"smoothgrad"``, ``"agg_mean"``,
  ``"agg_var"``); attack them adaptively with :func:`manipex.attacks.manipulate_input`.
* ATEX fine-tuning: :func:`atex_finetune` (Tang et al.).
* Robust-explanation training: :func:`train_robust` with the penalties of
  :mod:`~manipex.defenses.regularizers` (Hessian norm, curvature, IG-NORM, IG-SUM-NORM, SSR,
  weight decay, softplus, ATEX's term; Dombrowski 2022, Chen 2019, Wang 2020, CURE).
* Detection of manipulated models: :func:`combined_detection` (every test, one decision by
  Holm's procedure), :func:`faithfulness_test` (reference-free), :func:`detect_manipulation`
  (noise maps against references), :func:`weight_noise_test`.
* The defenses of a shown map by name, and how an adaptive attacker attacks each:
  :data:`DEFENSES`, :func:`defended` (:mod:`~manipex.defenses.catalog`).
"""
from .atex import atex_finetune
from .detection import (DetectionReport, detect_manipulation, noise_map_similarity, noise_maps, pairwise_pcc,
                        similarity_threshold, weight_noise_test, with_weight_noise)
from .combined_detection import CombinedReport, Signal, combined_detection, holm, reference_mismatch
from .faithfulness_detection import FaithfulnessReport, faithfulness_test
from . import regularizers
from .regularizers import Regularizer
from .robust import RobustTrainingResult, train_robust
from .smoothing import beta_sweep
from .catalog import DEFENSES, Defense, defended

__all__ = ["atex_finetune", "beta_sweep", "detect_manipulation", "noise_map_similarity", "noise_maps", "pairwise_pcc",
           "similarity_threshold", "weight_noise_test", "with_weight_noise", "DetectionReport", "regularizers",
           "Regularizer", "RobustTrainingResult", "train_robust", "CombinedReport", "Signal", "combined_detection",
           "holm", "reference_mismatch", "FaithfulnessReport", "faithfulness_test", "DEFENSES", "Defense", "defended"]
