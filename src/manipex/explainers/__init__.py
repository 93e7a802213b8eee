"""Explanation methods of manipex, each exactly differentiable to second order.

Importing this package registers every method; :func:`methods` lists them.
"""
from .base import Explainer, explain, get_explainer, methods, relevance
from .._second_order import MissingDerivativeError
from .graph import UnsupportedModelError
from .gradient import Gradient, GradXInput, IntegratedGradients
from .propagation import GuidedBackprop
from .lrp import LRP
from .patterns import PatternAttribution, Patterns, fit_patterns
from .smoothgrad import SmoothGrad
from .gradcam import GradCAM
from .occlusion import Occlusion
from .rollout import AttentionRollout
from .aggregate import AggMean, AggVar
from . import swin  # noqa: F401  (registers the tracing patch for torchvision's Swin attention)
from . import huggingface  # noqa: F401  (registers the tracing patch for Hugging Face transformers)

__all__ = [
    "Explainer", "explain", "get_explainer", "methods", "relevance", "fit_patterns", "Patterns",
    "UnsupportedModelError", "MissingDerivativeError", "Gradient", "GradXInput", "IntegratedGradients",
    "GuidedBackprop",
    "LRP", "PatternAttribution", "SmoothGrad", "GradCAM", "Occlusion", "AttentionRollout", "AggMean", "AggVar",
]
