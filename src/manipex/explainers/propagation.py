"""Methods that replace the backward pass: one base, a rule per layer.

:class:`PropagationExplainer` runs the model as a :class:`~manipex.explainers.graph.Graph`,
starts a signal at the logits (one-hot of the target, ``R^L_i = delta_{i,k}`` as in Dombrowski
et al. 2019, Eq. 1) and walks the recorded layers backwards in reverse topological order,
summing the signal of a tensor over its consumers and asking the subclass for the rule of each
layer. Every rule is written with differentiable torch operations and
``torch.autograd.grad(create_graph=...)`` vector-Jacobian products, so the map is exactly
differentiable w.r.t. the input and every parameter (Zennit's hooks drop weight gradients).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import select_target
from .base import Explainer, report_output, requires_grad_input
from .graph import Graph, Record, model_graph
from .rules import Gradient, GuidedReLU, Relevances

_GRADIENT = Gradient()
_GUIDED = GuidedReLU()


class PropagationExplainer(Explainer):
    """Base of guided backprop, LRP and PatternAttribution.

    Subclasses implement :meth:`propagate` for one recorded layer; the default passes the
    signal back with the layer's ordinary vector-Jacobian product (the gradient).
    """

    def attribute(self, model, x, target, create_graph):
        where = f"explain(method={self.name!r})"
        graph = model_graph(model, self.name, x)
        xg = requires_grad_input(x)
        out, records = graph.forward(xg)
        report_output(xg, out)
        t = select_target(out, target, where=where)
        signal = F.one_hot(t, out.shape[1]).to(out.dtype)
        self.prepare(model, records)
        return graph.backward(xg, records, signal, self.propagator(model, x, create_graph, graph))

    def prepare(self, model, records: List[Record]) -> None:
        """Hook for per-call set-up (e.g. checking that patterns fit the model)."""

    def propagator(self, model, x: Tensor, create_graph: bool, graph: Graph) -> Callable[[Record, Tensor], Relevances]:
        """The rule of this call on the traced ``graph``, ``propagate(record, signal)``: by
        default :meth:`propagate`.
        Per-call state (LRP's composite for this input) lives in the returned function, not on
        the explainer, so one explainer may serve several calls at once."""
        return lambda record, signal: self.propagate(record, signal, create_graph)

    def propagate(self, record: Record, signal, create_graph: bool) -> Relevances:
        return _GRADIENT(record, signal, create_graph)


class _GuidedActivation(torch.autograd.Function):
    """A ReLU whose backward is guided backprop's (:class:`~manipex.explainers.rules.GuidedReLU`):
    ``relu(g) * 1[z > 0]``, made of differentiable operations on ``g``, so that a map built with
    ``create_graph`` is differentiable again, w.r.t. the input and every weight (on the
    piecewise-linear models where it is used)."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        ctx.save_for_backward(z)
        return F.relu(z)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (z,) = ctx.saved_tensors
        return torch.where(z > 0, F.relu(grad), 0.0)


def _guided_activation(layer, z: Tensor) -> Optional[Tensor]:
    """Guided backprop's ReLU for :meth:`Graph.forward`; None (evaluated as usual) otherwise."""
    return _GuidedActivation.apply(z) if layer.activation == "relu" else None


class GuidedBackprop(PropagationExplainer):
    """Guided Backpropagation (Springenberg et al. 2015; Dombrowski et al. 2019, Sec. 2.1).

    The gradient, with negative components set to zero at every ReLU on the way back
    (Captum's ``GuidedBackprop``), on any model graph: residual sums and concatenations pass
    the gradient to every input. Other activations (tanh, sigmoid) pass the ordinary gradient,
    as in Captum. On a Softplus(β) network the smooth reference form of
    :class:`~manipex.explainers.rules.GuidedReLU` is used.

    On piecewise-linear models (ReLU, hard max-pools: :attr:`Graph.piecewise_linear`) it is
    computed in one backward pass: the traced model is run with activations whose backward is
    the guided rule (:class:`_GuidedActivation`) and differentiated once, instead of one
    vector-Jacobian product per layer; the same map, and the same derivatives of every order:
    no rule's backward there depends smoothly on a layer's input, so the second pass never needs
    how a layer's input moves with x (in the one-pass graph that motion would run through the
    guided backward, not the true one: wrong for Softplus, tanh or smooth max-pools, which take
    the per-layer form, :meth:`propagate`).
    """

    name = "guided_backprop"

    def attribute(self, model, x, target, create_graph):
        where = f"explain(method={self.name!r})"
        graph = model_graph(model, self.name, x)
        if not graph.piecewise_linear:
            return super().attribute(model, x, target, create_graph)
        xg = requires_grad_input(x)
        out, _ = graph.forward(xg, activation=_guided_activation)  # its backward is guided: not the model's
        t = select_target(out, target, where=where)
        (grad,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xg, create_graph=create_graph)
        return grad

    def propagate(self, record, signal, create_graph):
        """The same map layer by layer (``PropagationExplainer.attribute`` with this rule): the
        definition that the one-pass form is tested against."""
        if record.layer.kind == "activation":
            return _GUIDED(record, signal, create_graph)
        return super().propagate(record, signal, create_graph)
