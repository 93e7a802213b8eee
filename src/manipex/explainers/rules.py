"""LRP rules: how one layer sends the relevance of its output to its inputs.

A rule is an object with ``__call__(record, relevance, create_graph)`` returning one relevance
per input of the layer (a tensor alone for a one-input layer); ``record.layer`` describes the
layer (:class:`~manipex.explainers.graph.Layer`), ``record.inputs`` and ``record.output`` are the
tensors of this batch. Every rule is written with differentiable torch operations and
``torch.autograd.grad(create_graph=...)``, so the map stays exactly differentiable w.r.t. the
input and every weight (Zennit's hooks drop weight gradients). Notation: ``x`` the layer input,
``w``/``b`` its weight and bias (a following BatchNorm merged in), ``z_j = sum_i x_i w_ij + b_j``,
``R_j`` the relevance of output ``j``, ``stab(z) = z + eps sign(z)`` with ``sign(0) = 1``.

Writing your own rule: subclass :class:`Rule` and compute with ``record.parameters()``,
``record.layer.forward_with(x, weight, bias)``, :func:`vjp` and :func:`stabilize`. For example
LRP-0 with absolute weights::

    class AbsZ(Rule):
        def __call__(self, record, relevance, create_graph):
            x = record.input
            weight, _ = record.parameters()
            z = record.layer.forward_with(x, weight.abs(), None)
            return x * vjp(z, x, relevance / stabilize(z, 1e-6), create_graph)

and put it in a :class:`~manipex.explainers.composites.Composite`.
"""
from __future__ import annotations

import abc
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._validation import check_real
from .graph import Record
from .nodes import RECTIFIERS

Relevances = Union[Tensor, Sequence[Tensor]]


def vjp(output: Tensor, inputs: Tensor, signal: Tensor, create_graph: bool) -> Tensor:
    """Vector-Jacobian product ``signal^T d output / d inputs`` (graph kept if asked)."""
    (g,) = torch.autograd.grad(output, inputs, signal, create_graph=create_graph, retain_graph=True)
    return g


def stabilize(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(+0) = 1``: a denominator that is never zero.

    Computed as ``z + copysign(eps, z)``, two passes over ``z`` instead of three (half the time
    of ``torch.where(z >= 0, eps, -eps)`` on large maps); ``-0.0`` takes ``-eps``, which changes
    nothing: a sum that is exactly ``-0.0`` has only zero contributions to share. With ``eps = 0``
    (LRP-0) a sum that is exactly zero is divided by 1 instead of 0: where all its contributions
    are zero (a convolution over a black border) it shares nothing, and never gives NaN."""
    if eps == 0:  # LRP-0: a sum that is exactly 0 (an all-zero receptive field) shares nothing
        return torch.where(z == 0, torch.ones_like(z), z)
    return z + torch.copysign(torch.tensor(eps, dtype=z.dtype, device=z.device), z)


class Rule(abc.ABC):
    """Base of LRP rules; see the module docstring for the contract."""

    #: Layer kinds the rule applies to (None: any). Checked before the rule runs.
    kinds: Optional[Tuple[str, ...]] = None

    @abc.abstractmethod
    def __call__(self, record: Record, relevance: Tensor, create_graph: bool) -> Relevances:
        ...

    def check(self, record: Record) -> None:
        """Raise an error naming the layer when the rule cannot be applied to it."""
        if self.kinds is not None and record.layer.kind not in self.kinds:
            raise ValueError(
                f"LRP rule {type(self).__name__} applies to {'/'.join(self.kinds)} layers, not to "
                f"{record.layer.name} (a {record.layer.kind} layer); change the composite"
            )

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


AFFINE = ("conv", "dense", "batchnorm")


class Gradient(Rule):
    """The plain vector-Jacobian product ``R_i = sum_j dz_j/dx_i R_j``.

    For max-pooling this is winner-takes-all (the pooled relevance goes to the arg-max, as
    Dombrowski et al.'s reference code); concatenation, reshapes and identities pass each
    entry's relevance to where it came from.
    """

    def __call__(self, record, relevance, create_graph):
        return torch.autograd.grad(record.output, record.inputs, relevance,
                                   create_graph=create_graph, retain_graph=True)


class Pass(Rule):
    """``R_in = R_out``: the identity rule. An element-wise layer passes relevance through:
    activations (Zennit's ``Pass``; AttnLRP's identity rule for element-wise nonlinearities
    such as GELU and SiLU, Achtibat et al. 2024), a standalone BatchNorm (its bias is no input's contribution), and
    normalisation layers (LayerNorm, GroupNorm, RMSNorm) with the normaliser held constant
    (AttnLRP's treatment of normalisation: the centring and scaling are no input's contribution)."""

    def __call__(self, record, relevance, create_graph):
        if record.input.shape != relevance.shape:
            raise ValueError(f"LRP rule Pass needs a layer that keeps the shape, not {record.layer.name}")
        return relevance


class Product(Rule):
    """A product of two activations ``z = a * b`` (element-wise, broadcast).

    * A **gate** ``z = x * g(s)`` with ``g`` a sigmoid or hardsigmoid (squeeze-excitation in
      MobileNetV3, EfficientNet and RegNet-Y; :attr:`Layer.gate` says which operand): the gate
      is held constant and the signal takes all, ``R_x = R``, ``R_g = 0`` (the "signal-take-all"
      rule of Arras et al. 2017 for the gates of LSTMs). The gate only rescales each
      channel of ``x``; passing its relevance down its own branch would spread it uniformly over
      the positions that the gate's global pooling averaged, blurring the map.
    * **Any other product** (GLU-style ``a * b`` of two signals): the uniform rule of AttnLRP
      (Achtibat et al. 2024) for bilinear products, ``R_a = R_b = R / 2``.

    Both conserve: the relevances sum to ``sum R`` (an operand broadcast over some dimensions
    gets the sum over them). ``uniform=True`` applies the uniform rule to gates too.
    """

    kinds = ("product",)

    def __init__(self, uniform: bool = False) -> None:
        self.uniform = bool(uniform)

    def __call__(self, record, relevance, create_graph):
        operands = record.inputs
        if len(operands) == 1:  # x * x: both shares go to x
            return relevance.sum_to_size(operands[0].shape)
        gate = record.layer.gate
        if gate is not None and not self.uniform:
            # the node's arguments are (a, b) in this order; inputs follow argument order
            return tuple(torch.zeros_like(t) if i == gate else relevance.sum_to_size(t.shape)
                         for i, t in enumerate(operands))
        return tuple((relevance / 2).sum_to_size(t.shape) for t in operands)


class Epsilon(Rule):
    """LRP-ε (Bach et al. 2015, Eq. 58; Montavon et al. 2019, Eq. 4 of "Layer-wise relevance
    propagation: an overview"): ``R_i = x_i sum_j dz_j/dx_i R_j / stab(z_j, ε)`` with the bias
    in ``z`` (Captum's ``EpsilonRule``, Zennit's ``Epsilon``). ``ε = 0`` (with a tiny
    stabiliser) is LRP-0. On any layer that is linear in its inputs (a sum of two branches,
    pooling, interpolation) it shares relevance in proportion to each input's contribution.
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = check_real(epsilon, where="Epsilon", name="epsilon", ge=0)

    def __call__(self, record, relevance, create_graph):
        z = record.output
        grads = torch.autograd.grad(z, record.inputs, relevance / stabilize(z, self.epsilon),
                                    create_graph=create_graph, retain_graph=True)
        return tuple(x * g for x, g in zip(record.inputs, grads))


class Norm(Epsilon):
    """The proportional rule for parameter-free linear layers (Zennit's ``Norm``; the z-rule):
    a residual sum ``z = a + b`` gives ``R_a = a / stab(z) R``, ``R_b = b / stab(z) R``
    (conserving), average pooling, means and interpolation share by contribution. It is
    :class:`Epsilon` with ``ε`` only a stabiliser."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(stabilizer)


class AlphaBeta(Rule):
    """LRP-αβ (Bach et al. 2015, Eq. 60): ``R_i = sum_j (α (x_i w_ij)^+ / z_j^+ - β (x_i w_ij)^- / z_j^-) R_j``
    with positive and negative contributions split, ``α - β = 1``.

    ``bias=False`` (default) leaves the bias out of ``z^±`` (Captum's ``Alpha1_Beta0_Rule`` with
    ``set_bias_to_zero=True``, Dombrowski Eq. 2); ``bias=True`` adds ``b^+`` to ``z^+`` and
    ``b^-`` to ``z^-`` (Zennit's ``AlphaBeta``/``ZPlus``), which then absorb relevance.
    """

    kinds = AFFINE

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, bias: bool = False) -> None:
        self.alpha = check_real(alpha, where="AlphaBeta", name="alpha", ge=0)
        self.beta = check_real(beta, where="AlphaBeta", name="beta", ge=0)
        if abs(self.alpha - self.beta - 1) > 1e-9:
            raise ValueError(f"AlphaBeta: alpha - beta must be 1 (conservation), got alpha={alpha}, beta={beta}")
        self.stabilizer = check_real(stabilizer, where="AlphaBeta", name="stabilizer", ge=0)
        self.bias = bool(bias)

    def __call__(self, record, relevance, create_graph):
        layer, x = record.layer, record.input
        weight, bias = record.parameters()
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        if not self.bias:
            bias = None
        negative = bool(x.amin() < 0)
        if self.alpha == 1 and not negative:
            # z+ on non-negative inputs (after a ReLU): z >= 0, so stab(z) = z + eps; the same
            # values and derivatives as the general form, with fewer operations
            z = layer.forward_with(x, wp, None if bias is None else bias.clamp(min=0))
            return x * vjp(z, x, relevance / (z + self.stabilizer), create_graph)
        xp = x.clamp(min=0)
        xn = x.clamp(max=0) if negative else None

        def share(w_pos: Tensor, w_neg: Tensor, b: Optional[Tensor], sign: float) -> Tensor:
            # every term of the positive share is >= 0 and of the negative one <= 0: stab(z) is
            # z + eps or z - eps, without looking at z's sign
            if xn is None:
                z = layer.forward_with(xp, w_pos, b)
                return xp * vjp(z, xp, relevance / (z + sign * self.stabilizer), create_graph)
            z = layer.forward_with(xp, w_pos, b) + layer.forward_with(xn, w_neg, None)
            gp, gn = torch.autograd.grad(z, (xp, xn), relevance / (z + sign * self.stabilizer),
                                         create_graph=create_graph, retain_graph=True)
            return xp * gp + xn * gn

        out = share(wp, wn, None if bias is None else bias.clamp(min=0), 1.0)
        if self.alpha != 1:
            out = self.alpha * out
        if self.beta != 0:
            out = out - self.beta * share(wn, wp, None if bias is None else bias.clamp(max=0), -1.0)
        return out


class ZPlus(AlphaBeta):
    """The z+ rule (Montavon et al. 2017; Dombrowski et al. 2019, Eq. 2):
    ``R_i = sum_j x_i w_ij^+ / sum_i x_i w_ij^+ R_j`` for non-negative inputs; ``AlphaBeta(1, 0)``.
    ``bias=True`` is Zennit's ``ZPlus`` (the positive bias in the denominator)."""

    def __init__(self, stabilizer: float = 1e-6, bias: bool = False) -> None:
        super().__init__(1.0, 0.0, stabilizer, bias)


class ZBox(Rule):
    """The zB rule for inputs bounded by ``low <= x <= high`` (Montavon et al. 2017, Sec. 4;
    Dombrowski et al. 2019, Eq. 3): ``R_i = sum_j (x_i w_ij - l_i w_ij^+ - h_i w_ij^-) /
    sum_i (...) R_j``, bias left out (as in Zennit's ``ZBox``, where it cancels).

    ``low``/``high`` are floats or tensors broadcastable to one input of the layer (or with as
    many elements, e.g. per-pixel bounds before a Flatten). For Conv/Linear layers the three
    terms are one layer applied to ``[x, l, h]`` stacked on the channel axis with weights
    ``[W, -W+, -W-]``; a zero lower bound is dropped exactly.
    """

    kinds = AFFINE

    def __init__(self, low: Union[float, Tensor] = 0.0, high: Union[float, Tensor] = 1.0,
                 stabilizer: float = 1e-6) -> None:
        self.low, self.high = low, high
        self.stabilizer = check_real(stabilizer, where="ZBox", name="stabilizer", ge=0)

    def __call__(self, record, relevance, create_graph):
        layer, x = record.layer, record.input
        weight, _ = record.parameters()
        low, high = (fit_bound(b, x) for b in (self.low, self.high))
        terms = [(x, weight), (high.expand_as(x), -weight.clamp(max=0))]
        if bool(low.any()):
            terms.insert(1, (low.expand_as(x), -weight.clamp(min=0)))
        m = layer.module
        stackable = layer.call is None and (layer.kind == "dense" or (layer.kind == "conv" and m.groups == 1))
        if stackable:
            axis = -1 if layer.kind == "dense" else 1  # a Linear reads the last axis (N, ..., C)
            inputs = torch.cat([t for t, _ in terms], dim=axis)  # in the graph through x
            z = layer.forward_with(inputs, torch.cat([w for _, w in terms], dim=1), None)
            (g,) = torch.autograd.grad(z, inputs, relevance / stabilize(z, self.stabilizer),
                                       create_graph=create_graph, retain_graph=True)
            return sum(t * g_i for (t, _), g_i in zip(terms, g.chunk(len(terms), dim=axis)))
        leaves = [x] + [t.clone().requires_grad_(True) for t, _ in terms[1:]]
        z = sum(layer.forward_with(t, w, None) for t, (_, w) in zip(leaves, terms))
        grads = torch.autograd.grad(z, leaves, relevance / stabilize(z, self.stabilizer),
                                    create_graph=create_graph, retain_graph=True)
        return sum(t * g for t, g in zip(leaves, grads))


def fit_bound(bound: Union[float, Tensor], x: Tensor) -> Tensor:
    """A bound as a tensor shaped ``(1, *x.shape[1:])`` for the layer input ``x``."""
    b = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    per_input = x.shape[1:]
    if b.dim() == len(per_input) + 1 and b.shape[0] == 1:
        b = b[0]
    try:
        return torch.broadcast_to(b, per_input).unsqueeze(0)
    except RuntimeError:
        if b.numel() == per_input.numel():
            return b.reshape(1, *per_input)
        raise ValueError(
            f"LRP zB: bounds of shape {tuple(b.shape)} do not fit the first layer's input of shape "
            f"{tuple(per_input)}"
        ) from None


class Flat(Rule):
    """The flat rule (Lapuschkin et al. 2019): every input of a neuron's receptive field gets
    an equal share, ``R_i = sum_j 1 / (sum_i' 1) R_j`` (Zennit's ``Flat``); bias ignored. The
    map depends on the input only through the relevance arriving from above."""

    kinds = AFFINE

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = check_real(stabilizer, where="Flat", name="stabilizer", ge=0)

    def __call__(self, record, relevance, create_graph):
        return _receptive_share(record, relevance, torch.ones_like(record.parameters()[0]),
                                self.stabilizer, create_graph)


class WSquare(Rule):
    """The w² rule (Montavon et al. 2017, Sec. 4): ``R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j``
    (Zennit's ``WSquare``); bias ignored."""

    kinds = AFFINE

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = check_real(stabilizer, where="WSquare", name="stabilizer", ge=0)

    def __call__(self, record, relevance, create_graph):
        weight = record.parameters()[0]
        return _receptive_share(record, relevance, weight * weight, self.stabilizer, create_graph)


def _receptive_share(record: Record, relevance: Tensor, weight: Tensor, stabilizer: float,
                     create_graph: bool) -> Tensor:
    """``R_i = sum_j v_ij / sum_i' v_i'j R_j`` for a non-negative weight ``v`` (flat, w²)."""
    ones = torch.ones_like(record.input).requires_grad_(True)
    z = record.layer.forward_with(ones, weight, None)
    return vjp(z, ones, relevance / stabilize(z, stabilizer), create_graph)


class Gamma(Rule):
    """LRP-γ (Montavon et al. 2019, Eq. 5), in the generalised form of Andéol et al. 2021 and
    Zennit's ``Gamma`` for inputs of both signs.

    With ``w' = w + γ w^+`` and ``w'' = w + γ w^-``, an output with ``z_j > 0`` shares
    ``R_j`` by ``x^+ w' + x^- w''`` (bias ``b + γ b^+`` in the denominator), one with ``z_j < 0``
    by ``x^+ w'' + x^- w'`` (bias ``b + γ b^-``). For non-negative inputs this is Montavon's
    ``R_i = sum_j x_i (w_ij + γ w_ij^+) / sum_i x_i (w_ij + γ w_ij^+) R_j``; ``γ -> inf`` is z+.
    """

    kinds = AFFINE

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        self.gamma = check_real(gamma, where="Gamma", name="gamma", ge=0)
        self.stabilizer = check_real(stabilizer, where="Gamma", name="stabilizer", ge=0)

    def __call__(self, record, relevance, create_graph):
        layer, x, z = record.layer, record.input, record.output
        weight, bias = record.parameters()
        g = self.gamma
        w_up, w_down = weight + g * weight.clamp(min=0), weight + g * weight.clamp(max=0)
        b_up = None if bias is None else bias + g * bias.clamp(min=0)
        b_down = None if bias is None else bias + g * bias.clamp(max=0)
        xp = x.clamp(min=0)
        xn = x.clamp(max=0) if bool((x < 0).any()) else None
        r_pos = torch.where(z > 0, relevance, 0.0)
        r_neg = torch.where(z < 0, relevance, 0.0)
        z_pos = layer.forward_with(xp, w_up, b_up)
        z_neg = layer.forward_with(xp, w_down, b_down)
        if xn is not None:
            z_pos = z_pos + layer.forward_with(xn, w_down, None)
            z_neg = z_neg + layer.forward_with(xn, w_up, None)
        leaves = (xp,) if xn is None else (xp, xn)
        grads = torch.autograd.grad(
            (z_pos, z_neg), leaves,
            (r_pos / stabilize(z_pos, self.stabilizer), r_neg / stabilize(z_neg, self.stabilizer)),
            create_graph=create_graph, retain_graph=True,
        )
        return sum(t * gr for t, gr in zip(leaves, grads))


class GuidedReLU(Rule):
    """Guided backprop through one activation (Springenberg et al. 2015, Sec. 3.4).

    * ReLU: ``relu(R) * 1[z > 0]`` (Springenberg's rule; Captum's ``GuidedBackprop``).
    * Softplus(β): ``softplus_β(R) * sigmoid(β z)``, the smooth form of Dombrowski et al.'s
      reference code, so that the map of a softplus network is twice differentiable.
    * Other rectifiers (ReLU6, Hardswish, GELU, SiLU, Mish, ELU, LeakyReLU, ...:
      :data:`~manipex.explainers.nodes.RECTIFIERS`): ``relu(R) * relu(f'(z))``: the signal
      passes where the activation's derivative is positive and only its positive part, the
      ReLU rule with ``1[z > 0]`` read as ``f'(z)^+`` (for ReLU the two agree).
    * Squashing activations (tanh, sigmoid, hardsigmoid, hardtanh, softsign): the ordinary
      gradient, as Captum does for every activation that is not an ``nn.ReLU``.
    """

    kinds = ("activation",)

    def __call__(self, record, relevance, create_graph):
        layer, z = record.layer, record.input
        relu = torch.nn.functional.relu
        if layer.activation == "relu":
            return torch.where(z > 0, relu(relevance), 0.0)
        if layer.activation == "softplus":
            beta = layer.softplus_beta()
            return torch.nn.functional.softplus(relevance, beta=beta) * torch.sigmoid(beta * z)
        if layer.activation in RECTIFIERS:
            slope = vjp(record.output, z, torch.ones_like(record.output), create_graph)
            return relu(relevance) * relu(slope)
        return Gradient()(record, relevance, create_graph)


class Softmax(Rule):
    """The softmax rule of AttnLRP (Achtibat et al. 2024, Prop. 3.1), for attention
    probabilities ``s = softmax(x)`` along ``dim``: ``R_in_i = x_i (R_i - s_i sum_j R_j)``, the
    first-order Taylor decomposition of the softmax at ``x`` (gradient x input of the relevance
    signal ``R / s``: the same as LXT's plain gradient through the softmax, written without
    dividing by ``s``, which is zero at masked positions). Masked scores (``-inf``) get none.

    It does not conserve: ``sum R_in = sum_i x_i R_i - (sum_i x_i s_i) sum_j R_j``, and the
    rest is the share of the softmax's implicit bias (AttnLRP, Sec. 3.3). Shifting all scores
    by a constant changes the map.
    """

    kinds = ("softmax",)

    def __call__(self, record, relevance, create_graph):
        x, s = record.input, record.output
        x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))
        return x * (relevance - s * relevance.sum(record.layer.dim, keepdim=True))


class Matmul(Rule):
    """A matrix product ``z = a @ b``, ``z_jk = sum_i a_ji b_ik`` (attention: ``q @ k^T``,
    ``A @ v``).

    * Two activations, the **uniform rule** of AttnLRP (Achtibat et al. 2024, Eq. 7): each
      product ``a_ji b_ik`` gets ``a_ji b_ik / stab(z_jk) R_jk`` and gives half of it to each
      factor: ``R_a = a * ((R / stab(z)) @ b^T) / 2``, ``R_b = b * (a^T @ (R / stab(z))) / 2``
      (LXT's ``divide_gradient`` by 2 at the product). Conserves: ``sum R_a + sum R_b = sum R``
      (up to the stabiliser).
    * ``hold_attention=True`` (**CP-LRP**, Ali et al. 2022, the AH-rule): an operand that is an
      attention matrix (a softmax output, :attr:`Layer.attention`) is held constant: the other
      operand takes all, ``R_v = v * (A^T @ (R / stab(z)))``, and the attention none; so no
      relevance reaches the queries and keys. Conserves.
    * One activation and a constant (``x @ W``): linear in ``x``, shared in proportion,
      ``R_x = x * ((R / stab(z)) @ W^T)`` (the ε-rule without bias). Conserves.
    """

    kinds = ("matmul",)

    def __init__(self, hold_attention: bool = False, stabilizer: float = 1e-6) -> None:
        self.hold_attention = bool(hold_attention)
        self.stabilizer = check_real(stabilizer, where="Matmul", name="stabilizer", ge=0)

    def __call__(self, record, relevance, create_graph):
        layer = record.layer
        # each operand's share in proportion to its contributions (the z-rule), halved below
        shares = Norm(self.stabilizer)(record, relevance, create_graph)
        if layer.operands < 2:
            return tuple(shares)
        if len(shares) == 1:  # x @ x.mT: both halves go to x; x * grad counts both factors
            return shares[0] / 2
        if self.hold_attention and layer.attention is not None:
            return tuple(torch.zeros_like(t) if i == layer.attention else t for i, t in enumerate(shares))
        return tuple(t / 2 for t in shares)


class LinearizedNorm(Rule):
    """A normalisation layer with its normaliser held constant, the ε-rule on what is left
    (the LN-rule of Ali et al. 2022, Sec. 3.2; AttnLRP, Achtibat et al. 2024, as LXT implements
    it): LayerNorm ``y = (x - mean(x)) / sigma * w + b`` is linear in ``x`` for a fixed
    ``sigma``, so ``R_in = x * J^T (R / stab(y))`` with ``J = dy/dx`` at constant ``sigma``
    (the centring kept: every input shares in each output). ``sigma`` is held constant inside
    the rule only: it is still computed from ``x``, so the map stays exactly differentiable
    w.r.t. ``x`` through it (LXT detaches it, which drops that derivative).

    Conserves without bias (``J x = y``); the bias ``b`` absorbs its share. LayerNorm
    (module or ``F.layer_norm``), RMSNorm (``y = x / rms(x) * w``) and GroupNorm are
    supported; :class:`Pass` is the identity rule for the others.
    """

    kinds = ("norm",)

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = check_real(stabilizer, where="LinearizedNorm", name="stabilizer", ge=0)

    def __call__(self, record, relevance, create_graph):
        x = record.input
        xv = x.view_as(x)  # the input the partial derivative is taken at; sigma is read from x
        y = _linearized_norm(record, x, xv)
        return x * vjp(y, xv, relevance / stabilize(y, self.stabilizer), create_graph)


def _linearized_norm(record: Record, x: Tensor, xv: Tensor) -> Tensor:
    """The norm layer's output, linear in ``xv`` with the normaliser computed from ``x``."""
    import torch.nn.functional as F

    layer, m = record.layer, record.layer.module
    args, kwargs = record.args, record.kwargs

    def arg(i: int, key: str, default=None):
        return kwargs[key] if key in kwargs else (args[i] if len(args) > i else default)

    if isinstance(m, torch.nn.LayerNorm) or (m is None and layer.node.target is F.layer_norm):
        shape, weight, bias, eps = ((m.normalized_shape, m.weight, m.bias, m.eps) if m is not None else
                                    (arg(1, "normalized_shape"), arg(2, "weight"), arg(3, "bias"), arg(4, "eps", 1e-5)))
        dims = tuple(range(-len(tuple(shape)), 0))
        sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
        y = (xv - xv.mean(dims, keepdim=True)) / sigma
    elif isinstance(m, torch.nn.RMSNorm) or (m is None and layer.node.target is F.rms_norm):
        shape, weight, eps = ((m.normalized_shape, m.weight, m.eps) if m is not None else
                              (arg(1, "normalized_shape"), arg(2, "weight"), arg(3, "eps")))
        bias = None
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        dims = tuple(range(-len(tuple(shape)), 0))
        y = xv * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
    elif isinstance(m, torch.nn.GroupNorm) or (m is None and layer.node.target is F.group_norm):
        groups, weight, bias, eps = ((m.num_groups, m.weight, m.bias, m.eps) if m is not None else
                                     (arg(1, "num_groups"), arg(2, "weight"), arg(3, "bias"), arg(4, "eps", 1e-5)))
        grouped, view = x.unflatten(1, (groups, -1)), xv.unflatten(1, (groups, -1))
        dims = tuple(range(2, grouped.dim()))
        sigma = torch.sqrt(grouped.var(dims, unbiased=False, keepdim=True) + eps)
        y = ((view - view.mean(dims, keepdim=True)) / sigma).flatten(1, 2)
        shape = (-1,) + (1,) * (x.dim() - 2)
        weight = weight.reshape(shape) if weight is not None else None
        bias = bias.reshape(shape) if bias is not None else None
    else:
        raise ValueError(f"LRP rule LinearizedNorm does not know {layer.name}; use Pass for it in the composite")
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


__all__ = [
    "Rule", "Gradient", "Pass", "Epsilon", "Norm", "AlphaBeta", "ZPlus", "ZBox", "Flat", "WSquare",
    "Gamma", "GuidedReLU", "Product", "Softmax", "Matmul", "LinearizedNorm", "vjp", "stabilize", "fit_bound",
]
