"""Methods that replace the backward pass: one base, a rule per layer kind.

:class:`PropagationExplainer` runs the model as a :class:`~manipex.explainers.chain.Chain`,
starts a signal at the logits (one-hot of the target, ``R^L_i = delta_{i,k}`` as in Dombrowski
et al. 2019, Eq. 1) and walks the recorded steps backwards, asking the subclass for the rule of
each step. Every rule is written with differentiable torch operations and
``torch.autograd.grad(create_graph=...)`` vector-Jacobian products, so the map is exactly
differentiable w.r.t. the input and every parameter (Zennit's hooks drop weight gradients).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import select_target
from .base import Explainer, requires_grad_input
from .chain import Record, layer_chain


def vjp(output: Tensor, inputs: Tensor, signal: Tensor, create_graph: bool) -> Tensor:
    """Vector-Jacobian product ``signal^T d output / d inputs`` (graph kept if asked)."""
    (g,) = torch.autograd.grad(output, inputs, signal, create_graph=create_graph, retain_graph=True)
    return g


def stabilize(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = 1``: a denominator that is never zero."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


class PropagationExplainer(Explainer):
    """Base of guided backprop, LRP and PatternAttribution.

    Subclasses implement :meth:`propagate` for one recorded step; the default passes the
    signal through with the step's ordinary vector-Jacobian product (the gradient rule).
    """

    def attribute(self, model, x, target, create_graph):
        where = f"explain(method={self.name!r})"
        chain = layer_chain(model, self.name)
        xg = requires_grad_input(x)
        out, records = chain.forward(xg)
        t = select_target(out, target, where=where)
        signal = F.one_hot(t, out.shape[1]).to(out.dtype)
        first_affine = next((i for i, r in enumerate(records) if r.step.kind == "affine"), -1)
        self.prepare(model, records)
        for i in range(len(records) - 1, -1, -1):
            signal = self.propagate(records[i], signal, create_graph, first=(i == first_affine))
        return self.finish(xg, signal)

    def prepare(self, model, records: List[Record]) -> None:
        """Hook for per-call set-up (e.g. checking that patterns fit the model)."""

    def propagate(self, record: Record, signal: Tensor, create_graph: bool, first: bool) -> Tensor:
        return vjp(record.output, record.input, signal, create_graph)

    def finish(self, x: Tensor, signal: Tensor) -> Tensor:
        return signal


def guided_relu(signal: Tensor, z: Tensor, activation: str, beta: float) -> Tensor:
    """Guided backprop through one activation (Springenberg et al. 2015).

    ReLU: ``relu(R) * 1[z > 0]``. Softplus(β): ``softplus_β(R) * sigmoid(β z)``, the smooth
    form of Dombrowski et al.'s reference code, so that the map of a softplus network is
    twice differentiable.
    """
    if activation == "relu":
        return torch.where(z > 0, F.relu(signal), 0.0)
    return F.softplus(signal, beta=beta) * torch.sigmoid(beta * z)


class GuidedBackprop(PropagationExplainer):
    """Guided Backpropagation (Springenberg et al. 2015; Dombrowski et al. 2019, Sec. 2.1).

    The gradient, with negative components set to zero at every ReLU on the way back
    (Captum's ``GuidedBackprop``). Other activations (tanh, sigmoid) pass the ordinary gradient,
    as in Captum. On a Softplus(β) network the smooth reference form of :func:`guided_relu`
    is used.
    """

    name = "guided_backprop"

    def propagate(self, record, signal, create_graph, first):
        step = record.step
        if step.kind == "activation" and step.activation in ("relu", "softplus"):
            return guided_relu(signal, record.input, step.activation, step.softplus_beta())
        return super().propagate(record, signal, create_graph, first)
