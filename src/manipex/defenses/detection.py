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
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._validation import check_model
from ..explainers import explain, relevance
from ..metrics import pcc
from ..objectives import Objective


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
    check_model(model, where="noise_maps")
    param = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n,) + tuple(input_shape), generator=g, dtype=param.dtype).to(param.device)
    return relevance(explain(model, noise, method, **(method_options or {})))


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
    if n < 2:
        raise ValueError("noise_map_similarity: n must be at least 2")
    return pairwise_pcc(noise_maps(model, input_shape, method, n=n, seed=seed, method_options=method_options))


def similarity_threshold(reference_sims: Tensor, margin: float = 2.0) -> float:
    """``mean + margin * sd`` of a trusted model's pairwise noise-map PCCs
    (:func:`noise_map_similarity`): what a typical single pair of a clean model reaches."""
    return reference_sims.mean().item() + margin * reference_sims.std().item()


@dataclass
class DetectionReport:
    """``score``: mean pairwise PCC of the model's noise maps; ``threshold``: the largest
    ``mean + margin * sd`` of the reference models' pairwise PCCs (:func:`detect_manipulation`)."""

    score: float
    threshold: float
    manipulated: bool
    reference_scores: Tuple[float, ...]
    method: str

    def __str__(self) -> str:
        verdict = "MANIPULATED" if self.manipulated else "no evidence of manipulation"
        return (f"noise-map similarity ({self.method}): {self.score:.3f}; threshold {self.threshold:.3f} "
                f"from {len(self.reference_scores)} reference model(s): {verdict}")


def detect_manipulation(
    model: nn.Module,
    input_shape: Sequence[int],
    references: Sequence[nn.Module],
    method: str = "gradient",
    *,
    n: int = 64,
    seed: int = 0,
    margin: float = 2.0,
    method_options: Optional[Dict[str, Any]] = None,
) -> DetectionReport:
    """Flag ``model`` when its noise maps are more alike than those of trusted models.

    The threshold is ``max_ref (mean_ref + margin * sd_ref)`` over the reference models, with
    ``mean_ref`` and ``sd_ref`` the mean and standard deviation of their pairwise PCCs on the
    same noise inputs: the model is flagged when its *mean* similarity is above what a typical
    *single pair* of a clean model reaches (``margin = 2``: about the 95th percentile).
    Measured on MNIST-5k CNNs: clean models 0.20 and 0.24 (pair sd 0.16 to 0.20), a model
    manipulated towards a corner (center of mass, 2 to 3 epochs) 0.83 to 0.88.
    """
    if not references:
        raise ValueError("detect_manipulation: give at least one reference model the auditor trusts")
    kwargs = dict(n=n, seed=seed, method_options=method_options)
    score = noise_map_similarity(model, input_shape, method, **kwargs).mean().item()
    refs, bounds = [], []
    for ref in references:
        s = noise_map_similarity(ref, input_shape, method, **kwargs)
        refs.append(s.mean().item())
        bounds.append(similarity_threshold(s, margin))
    threshold = max(bounds)
    return DetectionReport(score, threshold, score > threshold, tuple(refs), method)


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

    from ..models import accuracy

    x, y = data
    opts = dict(method_options or {})
    target = model(x).argmax(1)
    rows = {}
    for sigma in sigmas:
        noisy = copy.deepcopy(model)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # perturbing weights of a copy, nothing is differentiated
            for p in noisy.parameters():
                noise = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)  # same draw on any device
                p.add_(noise * sigma * p.std().nan_to_num(0.0))

        def fn(inputs: Tensor, m: nn.Module = model) -> Tensor:
            return relevance(explain(m, inputs, method, target, **opts))

        obj = copy.copy(objective).prepare(fn, x, fn(x))
        rows[sigma] = {"accuracy": accuracy(noisy, x, y), objective.metric_name: obj.metric(fn(x, noisy)).mean().item()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "sigma"
    return table
