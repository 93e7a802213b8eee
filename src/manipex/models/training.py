"""Plain, seeded classifier training and accuracy evaluation."""

from __future__ import annotations

import torch
from torch import nn

from ..training import fit, stream_orders

__all__ = ["accuracy", "train_classifier"]


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    deterministic: bool = True,
) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy on ``(x, y)``; return it.

    Mini-batches are drawn without replacement in an order fixed by a ``torch.Generator`` seeded
    with ``seed`` (the global RNG is not used, so dropout layers still draw from it). Only
    parameters with ``requires_grad`` are optimised, so frozen layers stay frozen. Batches are
    moved to the device of the model's first parameter. The model's train/eval mode is restored
    afterwards.

    Args:
        model: a classifier returning logits of shape (N, C).
        x: inputs (N, ...). y: integer class labels (N,).
        epochs, lr, batch_size: the Adam training schedule.
        seed: seed of the shuffling order.
        progress: show a tqdm progress bar (one tick per batch, running loss as postfix).
        deterministic: train on one intra-op thread (cuDNN's deterministic kernels on CUDA), so
            that the weights are bit-identical whatever ``torch.get_num_threads()`` is
            (:func:`manipex._determinism.reproducible`; the thread count is restored). Slower
            than training on every thread (measured: README, Measured figures behind the
            defaults); ``False`` uses every thread.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    device = params[0].device
    loss_fn = nn.CrossEntropyLoss()

    def step(idx, epoch, index):
        return loss_fn(model(x[idx].to(device)), y[idx].to(device)), {}

    was_training = model.training
    model.train()
    try:
        fit(model, len(x), step, params=params, epochs=epochs, lr=lr, batch_size=batch_size,
            orders=stream_orders(len(x), torch.Generator().manual_seed(seed)),
            bar={"desc": "training", "leave": True, "enabled": progress},
            deterministic_on=device if deterministic else None)
    finally:
        model.train(was_training)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (argmax of the logits).

    Evaluated in eval mode (restored afterwards) in batches of ``batch_size``, on the device of the
    model's parameters.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(x), batch_size):
            pred = model(x[i : i + batch_size].to(device)).argmax(dim=1)
            correct += int((pred == y[i : i + batch_size].to(device)).sum())
    finally:
        model.train(was_training)
    return correct / max(len(x), 1)
