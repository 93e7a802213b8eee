"""Model-manipulation attacks: fine-tune a model so that its explanations lie on all inputs
(Heo et al. 2019; Pasliev 2020, Sec. 3 and 4).

The loss of a batch is ``C + lambda * O``: ``C`` is the classification term, cross-entropy on
the labels, or, for *identical prediction probabilities* (Pasliev Sec. 3.5), the MSE between the
softmax of the manipulated and of the original model; ``O`` is an explanation objective of
:mod:`manipex.objectives`, computed on the map of the class the original model predicts, with
``create_graph=True`` so that its exact weight gradient drives the update. Training runs on a
Softplus(β) copy (β = 20 as Pasliev); the result is the same weights in the original (ReLU)
architecture. The model passed in is never changed.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import surgery
from .._resume import RunState, config_key
from .._validation import (check_bool, check_call, check_choice, check_int, check_labelled_data, check_model,
                           check_real, check_target_range, forward)
from ..explainers import explain, get_explainer, relevance
from ..models.interfaces import Output, logits_model
from ..objectives import Objective
from ..training import fit, seeded_orders

CLASSIFICATION_TERMS = ("cross_entropy", "probabilities")


@dataclass(repr=False)
class ModelAttackResult:
    """The manipulated model (original architecture, eval mode) and the training history
    (one dict per epoch: ``epoch``, ``loss``, ``classification``, ``objective``); ``trainable``
    the names of the parameters trained. Its repr is a one-line summary."""

    model: nn.Module
    history: List[Dict[str, float]] = field(default_factory=list)
    trainable: List[str] = field(default_factory=list)

    def __repr__(self) -> str:
        """``ModelAttackResult(MNISTCNN, 3 epochs, loss 0.52 -> 0.31, 8 of 8 parameter tensors
        trained)``."""
        parts = [type(self.model).__name__, f"{len(self.history)} epoch{'s' if len(self.history) != 1 else ''}"]
        losses = [h.get("loss") for h in self.history if isinstance(h, dict) and h.get("loss") is not None]
        if losses:
            parts.append(f"loss {losses[0]:.3g} -> {losses[-1]:.3g}" if len(losses) > 1 else f"loss {losses[0]:.3g}")
        total = sum(1 for _ in self.model.parameters()) if isinstance(self.model, nn.Module) else len(self.trainable)
        parts.append(f"{len(self.trainable)} of {total} parameter tensors trained")
        return f"{type(self).__name__}({', '.join(parts)})"


def _trainable_names(model: nn.Module, trainable: Optional[Sequence[str]]) -> List[str]:
    names = [n for n, _ in model.named_parameters()]
    if trainable is None:
        return names
    if isinstance(trainable, str):
        trainable = [trainable]
    if not list(trainable):
        raise ValueError("manipulate_model: trainable is empty, so no parameter would be trained; name parameters "
                         f"or module prefixes to train (e.g. {names[-1].rpartition('.')[0] or names[-1]!r}), or pass "
                         "None to train all" if names else "manipulate_model: the model has no parameters to train")
    chosen = [n for n in names if any(n == p or n.startswith(p + ".") for p in trainable)]
    unknown = [p for p in trainable if not any(n == p or n.startswith(p + ".") for n in names)]
    if unknown:
        raise ValueError(f"manipulate_model: no parameter named {unknown[0]!r}; parameters: {', '.join(names)}")
    return chosen


def manipulate_model(  # noqa: PLR0913 -- the documented flat options of the model attack
    model: nn.Module,
    data: Tuple[Tensor, Tensor],
    objective: Objective,
    method: str = "gradient",
    *,
    method_options: Optional[Dict[str, Any]] = None,
    classification: str = "cross_entropy",
    gamma: Optional[float] = None,
    lam: float = 1.0,
    epochs: int = 3,
    lr: float = 1e-4,
    batch_size: int = 64,
    beta: Optional[float] = 20.0,
    trainable: Optional[Sequence[str]] = None,
    seed: int = 0,
    checkpoint: Union[None, str, os.PathLike] = None,
    progress: bool = True,
    output: Optional[Output] = None,
) -> ModelAttackResult:
    """Fine-tune a copy of ``model`` so that ``objective`` holds for its ``method`` maps.

    Args:
        model: the model to manipulate (eval mode); left unchanged.
        data: ``(x, y)`` training inputs and labels.
        objective: e.g. ``CenterOfMass((0, 0))`` (Pasliev 3.3), ``TargetMap(map[None])`` (3.4),
            ``TopKSuppression(k)`` (Heo), ``BlankRegion(feature_mask)`` (3.8). Objectives
            that refer to the start map are prepared per batch with the original model's maps.
        method: any differentiable method of :func:`manipex.explain`.
        classification: ``"cross_entropy"`` on labels or ``"probabilities"``: MSE between the
            new and the original softmax (Pasliev 3.5, identical prediction probabilities).
        gamma: weight of the classification term; default 1 for cross-entropy and 10 for
            ``"probabilities"``, whose squared differences are much smaller than a
            cross-entropy near a confident model. Gamma 10 changed the output less than
            cross-entropy at nearly the same manipulation; larger gammas changed it still less
            but manipulated less (measured: README, Measured figures behind the defaults).
        lam: weight of the explanation objective.
        epochs, lr, batch_size: Adam fine-tuning schedule (the model stays in eval mode, Heo).
        beta: softplus β of the training surrogate (Pasliev: 20); None trains the model as is.
        trainable: parameter names or module prefixes to train (Pasliev 3.7); the rest is
            frozen and stays bit-identical. None trains all.
        seed: seeds the batch order.
        checkpoint: a file; the run saves its state there after every epoch and, started
            again with the same settings, resumes from it.
        progress: show a progress bar.
        output: what selects the logits of a model that returns more than a tensor (a dict,
            a tuple, an object with ``.logits``), as in :func:`manipex.explain`; None: a tensor
            as it is, else its logits found automatically (with a warning once per model). The
            returned model is of the kind passed in (its output as it was), with the new weights;
            ``trainable`` names its parameters as they are named in it.
    """
    where = "manipulate_model"
    check_model(model, where=where)
    x, y = check_labelled_data(data, where=where)
    if not isinstance(objective, Objective):
        raise TypeError(f"{where}: objective must be a manipex.objectives.Objective, got {type(objective).__name__}")
    check_choice(classification, CLASSIFICATION_TERMS, where=where, name="classification")
    check_int(epochs, where=where, name="epochs", ge=1)
    check_int(batch_size, where=where, name="batch_size", ge=1)
    check_int(seed, where=where, name="seed", ge=0, le=2**63 - 1)
    check_real(lr, where=where, name="lr", gt=0)
    check_real(lam, where=where, name="lam", ge=0)
    check_real(beta, where=where, name="beta", gt=0, allow_none=True)
    check_bool(progress, where=where, name="progress")
    if gamma is None:
        gamma = 1.0 if classification == "cross_entropy" else 10.0
    check_real(gamma, where=where, name="gamma", ge=0)
    check_call(model, x, where=where)
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(f"{where}: method_options must be None or a dict, got {type(method_options).__name__}")
    method_options = dict(method_options or {})
    get_explainer(method, **method_options)
    names = _trainable_names(model, trainable)
    user_model = model
    # the run works on the logits (one wrapper for all steps, where the model returns more); the
    # user's kind of model is trained, saved and returned
    model = logits_model(model, x, output, where=where)
    wrapped = model is not user_model
    with torch.no_grad():  # class indices of the original model: constants of the objective
        logits = [forward(model, b, where=where) for b in x.split(512)]
    check_target_range(y, logits[0].shape[1], where=where, what="label")
    targets = torch.cat([out.argmax(1) for out in logits])
    key = config_key(method=method, options=method_options, classification=classification, gamma=gamma, lam=lam,
                      epochs=epochs, lr=lr, batch_size=batch_size, beta=beta, trainable=names, seed=seed,
                      n=x.shape[0], objective=type(objective).__name__)
    run_state = RunState(checkpoint, owner=where, key=key) if checkpoint is not None else None

    work = surgery.softplus_copy(model, beta) if beta is not None else copy.deepcopy(model)
    inner = work.model if wrapped else work  # the copy of the user's model (the wrapper has no state)
    params = dict(inner.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in names)

    def step(idx, epoch, index):
        xb, yb, tb = x[idx], y[idx], targets[idx]
        out = work(xb)
        if classification == "cross_entropy":
            cls = F.cross_entropy(out, yb)
        else:
            with torch.no_grad():  # the original model's outputs are fixed targets
                p_orig = model(xb).softmax(1)
            cls = (out.softmax(1) - p_orig).pow(2).sum(1).mean()
        r = relevance(explain(work, xb, method, tb, create_graph=True, **method_options))
        obj = objective
        if type(objective).complete is not Objective.complete or type(objective).prepare is not Objective.prepare:
            r_orig = relevance(explain(model, xb, method, tb, **method_options))
            obj = copy.copy(objective).prepare(
                lambda inputs: relevance(explain(model, inputs, method, tb, **method_options)), xb, r_orig)
        expl = obj.loss(r).mean()
        loss = gamma * cls + lam * expl
        return loss, {"loss": loss.item(), "classification": cls.item(), "objective": expl.item()}

    def postfix(epoch, loss, terms):
        return {"epoch": epoch + 1, "cls": f"{terms['classification']:.3g}", "obj": f"{terms['objective']:.3g}"}

    history = fit(inner, x.shape[0], step, params=[params[n] for n in names], epochs=epochs, lr=lr,
                  batch_size=batch_size, orders=seeded_orders(x.shape[0], seed), exact=where, checkpoint=run_state,
                  bar={"desc": f"manipulate {method}", "enabled": progress, "postfix": postfix}).history

    manipulated = copy.deepcopy(user_model)
    manipulated.load_state_dict(inner.state_dict())
    return ModelAttackResult(manipulated.eval(), history, names)
