"""The one training loop of manipex: :func:`fit`.

``train_classifier``, ``manipulate_model``, ``train_robust`` and ``atex_finetune`` differ in
their loss, in the model they train (the model itself, or a copy) and in how they order the
batches; the loop is the same and lives here once: mini-batches of an order per epoch, Adam,
the backward pass (with the double-backward kernels where the loss holds gradients), the
progress bar, the running totals of the loss's terms per epoch, and the checkpoint that a killed
run resumes from (:class:`~manipex._resume.RunState`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._determinism import reproducible
from ._progress import progress_bar
from ._resume import RunState, restore
from ._second_order import second_order

#: ``step(idx, epoch, index) -> (loss, terms)``: the loss of the batch of sample indices
#: ``idx`` (``index``: the batch's place in its epoch) and the terms to keep per epoch
#: (name -> value of this batch, averaged over the epoch with the batch's share as weight).
Step = Callable[[Tensor, int, int], Tuple[Tensor, Dict[str, float]]]


def seeded_orders(n: int, seed: int) -> Callable[[int], Tensor]:
    """Epoch ``e`` draws its order from ``torch.Generator().manual_seed(seed + e)``: an epoch's
    batches do not depend on the epochs before it, so a resumed run draws what an uninterrupted
    one would (``manipulate_model``, ``train_robust``)."""
    return lambda epoch: torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def stream_orders(n: int, generator: torch.Generator) -> Callable[[int], Tensor]:
    """Every epoch's order drawn in turn from one ``generator`` (which the loss may draw from
    too: ``train_classifier``, ``atex_finetune``)."""
    return lambda epoch: torch.randperm(n, generator=generator)


@dataclass
class TrainResult:
    """What :func:`fit` did: ``history`` one dict per epoch (``epoch`` and the terms' means)."""

    history: List[Dict[str, float]] = field(default_factory=list)


def fit(
    model: nn.Module,
    n: int,
    step: Step,
    *,
    params: Sequence[Tensor],
    epochs: int,
    lr: float,
    batch_size: int,
    orders: Callable[[int], Tensor],
    bar: Dict[str, Any],
    exact: Optional[str] = None,
    checkpoint: Optional[RunState] = None,
    deterministic_on: Optional[torch.device] = None,
) -> TrainResult:
    """Train ``params`` of ``model`` with Adam on the loss ``step`` gives, ``epochs`` times over
    ``n`` samples in batches of ``batch_size`` in the order ``orders(epoch)``.

    Args:
        model: what trains (its state goes to the checkpoint); the caller sets its mode.
        step: the batch's loss and terms (:data:`Step`).
        bar: the progress bar: ``enabled`` (default True), ``postfix`` (``(epoch, loss, terms) ->
            {name: text}``; default the epoch and the loss) and tqdm's options (``desc``; ``unit``,
            ``leave``: default batches, not left on the screen).
        exact: the backward pass runs with kernels that have a double backward
            (:func:`~manipex._second_order.second_order`; the loss holds gradients of maps);
            the string names the caller in its errors. None: plain.
        checkpoint: the run's state file: it resumes from there, and is written after every
            epoch (model, optimizer, epoch, history).
        deterministic_on: train on one intra-op thread on this device
            (:func:`~manipex._determinism.reproducible`), for bit-identical weights.
    """
    optimizer = torch.optim.Adam(list(params), lr=lr)
    state = checkpoint.load() if checkpoint is not None else None
    start_epoch, history = restore(state, model, optimizer)
    per_epoch = (n + batch_size - 1) // batch_size
    options = {"leave": False, "unit": "batch", **bar}
    enabled, postfix = options.pop("enabled", True), options.pop("postfix", None)
    bar_ = progress_bar(total=epochs * per_epoch, initial=start_epoch * per_epoch, enabled=enabled, **options)
    exactly = (lambda: second_order(model, exact)) if exact is not None else contextlib.nullcontext
    with bar_, reproducible(deterministic_on, enabled=deterministic_on is not None):
        for epoch in range(start_epoch, epochs):
            order = orders(epoch)
            totals: Dict[str, float] = {}
            for index, i in enumerate(range(0, n, batch_size)):
                idx = order[i:i + batch_size]
                loss, terms = step(idx, epoch, index)
                optimizer.zero_grad(set_to_none=True)
                with exactly():  # a missing second derivative, named
                    loss.backward()
                optimizer.step()
                share = len(idx) / n
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + value * share
                bar_.update(1)
                bar_.set_postfix(**(postfix(epoch, loss, terms) if postfix is not None else
                                   {"epoch": epoch + 1, "loss": f"{loss.item():.3f}"}), refresh=False)
            if totals:
                history.append({"epoch": epoch + 1, **totals})
            if checkpoint is not None:
                checkpoint.save(model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch + 1,
                                history=history)
    return TrainResult(history)


__all__ = ["fit", "TrainResult", "Step", "seeded_orders", "stream_orders"]
