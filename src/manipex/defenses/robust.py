"""Robust-explanation training: :func:`train_robust` (Dombrowski et al. 2022; Chen et al. 2019;
Wang et al. 2020; Moosavi-Dezfooli et al. 2019; composes with ATEX, Tang et al.).

A copy of the model is trained with ``CE(f(x), y) + sum_i weight_i * R_i`` (the penalties of
:mod:`manipex.defenses.regularizers`), with Adam, from the model's own weights: pass a freshly
initialised model to train from scratch, a trained one to fine-tune. With no regularizer the
same loop is plain training, the baseline every robust model is compared to.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._resume import RunState, config_key
from .._second_order import second_order
from .._validation import (check_bool, check_call, check_int, check_labelled_data, check_real,
                           check_target_range, forward, short)
from ..training import fit, seeded_orders
from .regularizers import Regularizer, make

RegularizerLike = Union[None, str, Regularizer, Sequence[Union[str, Regularizer]]]


@dataclass(repr=False)
class RobustTrainingResult:
    """The trained model (eval mode) and one row per epoch: the loss, its cross-entropy, each
    penalty (unweighted, by name) and the training accuracy. Its repr is a one-line summary."""

    model: nn.Module
    history: List[Dict[str, float]] = field(default_factory=list)
    regularizers: List[Regularizer] = field(default_factory=list)

    def __repr__(self) -> str:
        """``RobustTrainingResult(MNISTCNN, regularizers hessian_norm, 2 epochs, loss 0.81 -> 0.42,
        training accuracy 91.2 %)``: the last epoch's accuracy."""
        names = [str(getattr(r, "name", type(r).__name__)) for r in self.regularizers]
        parts = [type(self.model).__name__, f"regularizers {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
                 if names else "no regularizer", f"{len(self.history)} epoch{'s' if len(self.history) != 1 else ''}"]
        rows = [h for h in self.history if isinstance(h, dict)]
        losses = [h["loss"] for h in rows if isinstance(h.get("loss"), (int, float))]
        if losses:
            parts.append(f"loss {losses[0]:.3g} -> {losses[-1]:.3g}" if len(losses) > 1 else f"loss {losses[0]:.3g}")
        if rows and isinstance(rows[-1].get("accuracy"), (int, float)):
            parts.append(f"training accuracy {100 * rows[-1]['accuracy']:.1f} %")
        return f"{type(self).__name__}({', '.join(parts)})"


def _regularizers(regularizer: RegularizerLike, options: Dict[str, Any], where: str) -> List[Regularizer]:
    if regularizer is None or isinstance(regularizer, (str, Regularizer)):
        items = [] if regularizer is None else [regularizer]
    elif isinstance(regularizer, (list, tuple)):
        items = list(regularizer)
    else:
        raise TypeError(f"{where}: regularizer must be None, a name, a Regularizer or a list of them, "
                        f"got {short(regularizer)}")
    if options and not (len(items) == 1 and isinstance(items[0], str)):
        raise TypeError(f"{where}: options {', '.join(map(repr, sorted(options)))} go with one regularizer given "
                        "by name; build a list of regularizers with manipex.defenses.regularizers.make(name, ...)")
    built = []
    for item in items:
        if isinstance(item, str):
            built.append(make(item, **options))
        elif isinstance(item, Regularizer):
            built.append(copy.deepcopy(item))  # prepare() may keep state (ATEX's teacher): not on the caller's object
        else:
            raise TypeError(f"{where}: a regularizer must be a name or a Regularizer, got {short(item)}")
    names = [r.name for r in built]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ValueError(f"{where}: regularizer {doubled[0]!r} is given twice")
    return built


def train_robust(
    model: nn.Module,
    data: "tuple[torch.Tensor, torch.Tensor]",
    regularizer: RegularizerLike,
    *,
    epochs: int = 2,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    checkpoint: Union[None, str, os.PathLike] = None,
    progress: bool = True,
    **options: Any,
) -> RobustTrainingResult:
    """Train a copy of ``model`` on ``data`` with robust-explanation ``regularizer``(s).

    >>> result = manipex.defenses.train_robust(model, (x, y), "hessian_norm", weight=1e-3)
    >>> result = manipex.defenses.train_robust(model, (x, y), ["weight_decay", "ssr"])
    >>> robust = result.model   # eval mode; ``model`` is unchanged

    Args:
        model: the model to start from (eval mode); never changed.
        data: ``(x, y)``, inputs and integer labels.
        regularizer: a name of :data:`~manipex.defenses.regularizers.REGULARIZERS`
            (``hessian_norm``, ``curvature``, ``ig_norm``, ``ig_sum_norm``, ``ssr``,
            ``weight_decay``, ``softplus``, ``atex``), a
            :class:`~manipex.defenses.regularizers.Regularizer`, a list of them (their penalties
            add up: e.g. ATEX with a Hessian penalty), or None for plain training.
        epochs, lr, batch_size: the Adam schedule, of the parameters with ``requires_grad``
            (frozen layers stay bit-identical). The copy trains in eval mode: batch-norm
            statistics and dropout stay as they are, so every penalty sees the network that is
            explained (as ATEX and model manipulation fine-tune).
        seed: the batch order and every random draw of the penalties.
        checkpoint: a file; the run saves its state there after every epoch and, started
            again with the same settings, resumes where it stopped.
        progress: a progress bar with the running cross-entropy and penalties.
        options: options of a single regularizer given by name (``weight=...`` and its own).

    Returns:
        :class:`RobustTrainingResult`. With ``softplus``, the model has ``nn.Softplus(beta)``
        units where it had ``nn.ReLU``; every other regularizer keeps the architecture.
    """
    where = "train_robust"
    x, y = check_labelled_data(data, where=where)
    check_call(model, x, where=where)
    regs = _regularizers(regularizer, options, where)
    check_int(epochs, where=where, name="epochs", ge=1)
    check_int(batch_size, where=where, name="batch_size", ge=1)
    check_int(seed, where=where, name="seed", ge=0, le=2**62)
    check_real(lr, where=where, name="lr", gt=0)
    check_bool(progress, where=where, name="progress")
    frozen = [not p.requires_grad for p in model.parameters()]
    if all(frozen):
        raise ValueError(f"{where}: the model has no parameters to train (none, or all with requires_grad=False)")
    with torch.no_grad():  # one forward for the number of classes, before any training
        out = forward(model, x[:1], where=where)
    check_target_range(y, out.shape[1], where=where, what="label")
    replacing = [r.name for r in regs if r.replaces_classification]
    if len(replacing) > 1:
        raise ValueError(f"{where}: {replacing[0]!r} and {replacing[1]!r} both replace the classification term; "
                         "use one of them")

    key = config_key(regularizers=[r.describe() for r in regs], epochs=epochs, lr=lr, batch_size=batch_size,
                     seed=seed, n=x.shape[0])
    run_state = RunState(checkpoint, owner=where, key=key) if checkpoint is not None else None

    work = copy.deepcopy(model)
    for reg in regs:
        work = reg.prepare(work, model)
    work.eval()
    params = [p for p, off in zip(work.parameters(), frozen) if not off]  # frozen layers stay as they are
    device = params[0].device

    def step(idx, epoch, index):
        xb, yb = x[idx].to(device), y[idx].to(device)
        # every draw of this batch's penalties: fixed by (seed, epoch, step), so a resumed
        # run draws what an uninterrupted one would have
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 100_003 + index)
        out = work(xb)
        ce = F.cross_entropy(out, yb)
        classification, loss = ce, None
        terms: Dict[str, float] = {}
        with second_order(work, "train_robust"):  # penalties differentiate gradients
            for reg in regs:
                penalty, replaced = reg.penalty(work, xb, yb, generator=generator)
                if replaced is not None:
                    classification = replaced
                loss = reg.weight * penalty if loss is None else loss + reg.weight * penalty
                terms[reg.name] = penalty.item()
            loss = classification if loss is None else classification + loss
        accuracy = (out.argmax(1) == yb).float().mean().item()
        return loss, {"loss": loss.item(), "cross_entropy": ce.item(), **terms, "accuracy": accuracy}

    label = "+".join(r.name for r in regs) or "plain"

    def postfix(epoch, loss, terms):
        penalties = {r.name: f"{terms[r.name]:.3g}" for r in regs}
        return {"epoch": epoch + 1, "ce": f"{terms['cross_entropy']:.3g}", **penalties}

    history = fit(work, x.shape[0], step, params=params, epochs=epochs, lr=lr, batch_size=batch_size,
                  orders=seeded_orders(x.shape[0], seed), exact="train_robust", checkpoint=run_state,
                  bar={"desc": f"train {label}", "enabled": progress, "postfix": postfix}).history
    return RobustTrainingResult(work.eval(), history, regs)
