"""Regularizers of robust-explanation training (:func:`manipex.defenses.train_robust`).

Training minimises, per batch, ``CE(f(x), y) + sum_i weight_i * R_i`` with the penalties
``R_i`` below. Every penalty is built from exact derivatives (``create_graph=True``), so its
weight gradient is exact; each one's is checked against float64 finite differences in the tests.

========================  ==========================================================  =====================================
name                      penalty ``R`` (mean over the batch)                          paper
========================  ==========================================================  =====================================
``hessian_norm``          ``||H||_F^2``, ``H`` the input Hessian of the label's logit   Dombrowski et al. 2022, Sec. 5.3, App.
``curvature``             ``||grad l(x + h z) - grad l(x)||^2``, ``z = sign(grad l)``    Moosavi-Dezfooli et al. 2019 (CURE)
``ig_norm``               ``max_{x' in B(x, eps)} ||IG^l(x, x')||_1``                   Chen et al. 2019, IG-NORM
``ig_sum_norm``           ``max_{x'} [l(x') + lam ||IG^l(x, x')||_1]`` replaces ``l(x)``  Chen et al. 2019, IG-SUM-NORM
``ssr``                   ``lambda_max(J^T (diag p - p p^T) J)``                         Wang et al. 2020 (SSR)
``weight_decay``          ``1/2 sum ||theta||^2``                                       Dombrowski et al. 2022, Sec. 5.1
``softplus``              none: the network is trained with ``Softplus(beta)``          Dombrowski et al. 2022, Sec. 5.2
``atex``                  ATEX's perpendicular distillation term                        Tang et al. 2022, Eq. 4
========================  ==========================================================  =====================================

``l`` is the cross-entropy of the label, ``grad`` the gradient in the input. A penalty that
needs random numbers draws them from the ``generator`` it is given, so a batch's penalty is a
fixed function of the weights (what the finite-difference checks rely on) and a resumed run
draws what the first one would have.

Add your own: subclass :class:`Regularizer`, implement :meth:`Regularizer.penalty`, and pass an
instance to ``train_robust`` (or :func:`register` it to use it by name).
"""  # noqa: E501 -- the rows of the table above cannot be wrapped
from __future__ import annotations

import abc
import contextlib
import copy
from typing import Any, ClassVar, Dict, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import surgery
from ..geometry import hessian_frobenius_sq
from .._registry import Registry
from .._validation import check_choice, check_int, check_real, short
from .atex import perpendicular_kl

#: What a penalty returns: the penalty, and the classification term it replaces (or None).
Penalty = Tuple[Tensor, Optional[Tensor]]


class Regularizer(abc.ABC):
    """One penalty of robust training, ``weight * R``: the base of every regularizer.

    Subclasses set :attr:`name`, :attr:`paper` and :attr:`default_weight`, implement
    :meth:`penalty`, and may override :meth:`prepare` (a change of the network itself, as
    softplus training) and :meth:`options` (their settings, for checkpoints and tables).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0
    #: whether :meth:`penalty` returns a classification term that replaces the cross-entropy of x
    replaces_classification: ClassVar[bool] = False

    def __init__(self, weight: Optional[float] = None) -> None:
        self.weight = check_real(self.default_weight if weight is None else weight,
                                 where=self.where, name="weight", ge=0)

    @property
    def where(self) -> str:
        return f"regularizer {self.name or type(self).__name__!r}"

    def prepare(self, model: nn.Module, original: nn.Module) -> nn.Module:
        """The network to train, made once from the working copy ``model`` (default: itself);
        ``original`` is the model passed to ``train_robust``, left unchanged."""
        return model

    @abc.abstractmethod
    def penalty(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Penalty:
        """``(R, None)``, or ``(R, classification)`` where the regularizer replaces the
        cross-entropy of ``x`` by its own (IG-SUM-NORM); ``R`` is a scalar, the batch mean,
        differentiable in the weights."""

    def options(self) -> Dict[str, Any]:
        """The settings that define the penalty (besides its weight)."""
        return {}

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "weight": self.weight, **self.options()}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in {"weight": self.weight, **self.options()}.items())
        return f"{type(self).__name__}({opts})"


def _per_sample_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The input gradient of each sample's cross-entropy, with ``create_graph=True``: it stays
    differentiable in the weights."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)  # data: a leaf; the weights stay in the graph
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x, create_graph=True)
    return grad


def _sq_norm(v: Tensor) -> Tensor:
    return v.flatten(1).pow(2).sum(1)


class HessianNorm(Regularizer):
    """``||H(x)||_F^2``, the squared Frobenius norm of the input Hessian of the label's logit
    (Dombrowski et al. 2022, "Towards robust explanations for deep neural networks", Sec. 5.3:
    the manipulability of a gradient-type explanation is bounded by the Hessian's norm).

    Two estimators of ``||H||_F^2 = E_v ||H v||^2`` (``v ~ N(0, I)``, Hutchinson):

    * ``"finite_difference"`` (default; the paper's appendix): ``H v ~ (grad g(x + h v) -
      grad g(x)) / h``. It also sees a ReLU network's kinks, where the exact Hessian is zero.
    * ``"hutchinson"``: ``H v`` exactly, by a Hessian-vector product. A ReLU network's
      Hessian is zero almost everywhere, so its ReLUs are swapped for ``Softplus(beta)``
      while the penalty is computed (``beta=None``: the network as it is).

    Args:
        weight: of the penalty. samples: directions ``v`` per image.
        h: finite-difference step (in the units of ``x``; ``||h v|| ~ h sqrt(dim x)``).
    """

    name, paper, default_weight = "hessian_norm", "Dombrowski et al. 2022, Sec. 5.3", 1e-3

    def __init__(self, weight: Optional[float] = None, *, estimator: str = "finite_difference", h: float = 1e-2,
                 samples: int = 1, beta: Optional[float] = 10.0) -> None:
        super().__init__(weight)
        self.estimator = check_choice(estimator, ("finite_difference", "hutchinson"), where=self.where,
                                      name="estimator")
        self.h = check_real(h, where=self.where, name="h", gt=0)
        self.samples = check_int(samples, where=self.where, name="samples", ge=1)
        self.beta = check_real(beta, where=self.where, name="beta", gt=0, allow_none=True)

    def options(self) -> Dict[str, Any]:
        return {"estimator": self.estimator, "h": self.h, "samples": self.samples, "beta": self.beta}

    def prepare(self, model: nn.Module, original: nn.Module) -> nn.Module:
        if self.estimator == "hutchinson" and self.beta is not None:
            # traced once here (cached per model structure), so that the per-batch swap
            # (check=False) puts the functional-ReLU surrogate in only where forward calls F.relu
            surgery.has_functional_relu(model)
        return model

    def penalty(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Penalty:
        swap = surgery.softplus(model, self.beta, check=False) if (
            self.estimator == "hutchinson" and self.beta is not None) else None
        with swap if swap is not None else contextlib.nullcontext():
            sq = hessian_frobenius_sq(model, x, y, estimator=self.estimator, h=self.h, samples=self.samples,
                                      generator=generator)
        return sq.mean(), None


class Curvature(Regularizer):
    """CURE (Moosavi-Dezfooli et al. 2019, "Robustness via curvature regularization, and vice
    versa", Eq. 4): ``||grad l(x + h z) - grad l(x)||^2`` with ``z = sign(grad l(x)) /
    ||sign(grad l(x))||`` (a unit direction, held fixed: not differentiated), the finite
    difference of the loss gradient along the direction where the loss curves most.

    Args:
        weight: CURE's gamma. h: the step, an L2 length in the units of ``x`` (ours: 1.0 for
            images in [0, 1]; CURE anneals h on CIFAR-10).
    """

    name, paper, default_weight = "curvature", "Moosavi-Dezfooli et al. 2019 (CURE), Eq. 4", 1.0

    def __init__(self, weight: Optional[float] = None, *, h: float = 1.0) -> None:
        super().__init__(weight)
        self.h = check_real(h, where=self.where, name="h", gt=0)

    def options(self) -> Dict[str, Any]:
        return {"h": self.h}

    def penalty(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Penalty:
        grad = _per_sample_grad(model, x, y)
        z = grad.detach().sign()  # CURE's direction is held fixed (sign has no useful derivative)
        z = z / z.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(-1, *([1] * (x.dim() - 1)))
        moved = _per_sample_grad(model, x + self.h * z, y)
        return _sq_norm(moved - grad).mean(), None


class IGNorm(Regularizer):
    """IG-NORM (Chen et al. 2019, "Robust Attribution Regularization", Eq. 6):
    ``max_{||x' - x||_inf <= eps} ||IG^l(x, x')||_1``, the L1 norm of the integrated gradients
    of the loss from ``x`` to its worst point ``x'``:
    ``IG_i = (x'_i - x_i) * 1/m sum_{k=1..m} d l(x + k/m (x' - x)) / d x_i``.

    The inner maximum is found by ``attack_steps`` projected signed-gradient steps of
    ``attack_lr`` from a uniform random start in the ball (Madry et al.'s PGD, as Chen et al.);
    the weight gradient is taken at the point found (Danskin), through the exact second-order
    derivative of IG. Chen et al.'s MNIST settings (their code's ``MNIST/IG-NORM-config.json``):
    ``lambda = 1``, ``eps = 0.3``, ``m = 50`` IG steps in training and ``m / 5 = 10`` inside the
    PGD steps (``approx_factor = 5``), PGD 40 steps of 0.01 from a random start.

    Args:
        weight: Chen's lambda. eps: the L-inf ball. steps: ``m``. attack_steps, attack_lr: PGD.
        approx_factor: the PGD steps use ``max(1, steps // approx_factor)`` IG steps (Chen: 5).
        clamp: the valid input range ``(low, high)`` or None.
    """

    name, paper, default_weight = "ig_norm", "Chen et al. 2019, IG-NORM (Eq. 6)", 1.0

    def __init__(self, weight: Optional[float] = None, *, eps: float = 0.3, steps: int = 50, attack_steps: int = 40,
                 attack_lr: float = 0.01, approx_factor: int = 1,
                 clamp: Optional[Tuple[float, float]] = (0.0, 1.0)) -> None:
        super().__init__(weight)
        self.eps = check_real(eps, where=self.where, name="eps", gt=0)
        self.steps = check_int(steps, where=self.where, name="steps", ge=1)
        self.attack_steps = check_int(attack_steps, where=self.where, name="attack_steps", ge=0)
        self.attack_lr = check_real(attack_lr, where=self.where, name="attack_lr", gt=0)
        self.approx_factor = check_int(approx_factor, where=self.where, name="approx_factor", ge=1)
        if clamp is not None and (not isinstance(clamp, (tuple, list)) or len(clamp) != 2
                                  or not all(isinstance(c, (int, float)) for c in clamp) or clamp[0] >= clamp[1]):
            raise ValueError(f"{self.where}: clamp must be None or a pair (low, high) with low < high, "
                             f"got {short(clamp)}")
        self.clamp = None if clamp is None else (float(clamp[0]), float(clamp[1]))

    def options(self) -> Dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "attack_steps": self.attack_steps,
                "attack_lr": self.attack_lr, "approx_factor": self.approx_factor, "clamp": self.clamp}

    def ig_l1(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, steps: Optional[int] = None) -> Tensor:
        """``||IG^l(x, x_adv)||_1`` per sample with ``steps`` (default ``m``) Riemann steps,
        differentiable in ``x_adv`` and the weights."""
        m, n = steps or self.steps, x.shape[0]
        alphas = torch.arange(1, m + 1, dtype=x.dtype, device=x.device).div(m).reshape(-1, *([1] * x.dim()))
        points = (x + alphas * (x_adv - x)).reshape(m * n, *x.shape[1:])  # step-major rows
        if not points.requires_grad:
            points.requires_grad_(True)
        loss = F.cross_entropy(model(points), y.repeat(m), reduction="sum")
        (grad,) = torch.autograd.grad(loss, points, create_graph=True)
        ig = (x_adv - x) * grad.reshape(m, n, *x.shape[1:]).mean(0)
        return ig.abs().flatten(1).sum(1)

    @property
    def attack_ig_steps(self) -> int:
        """IG steps inside the PGD steps: ``steps // approx_factor`` (at least 1)."""
        return max(1, self.steps // self.approx_factor)

    def inner_objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        """What the inner maximum maximises, per sample."""
        return self.ig_l1(model, x, x_adv, y, self.attack_ig_steps)

    def worst_point(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Tensor:
        """The PGD estimate of the inner maximiser ``x'`` (detached)."""
        x = x.detach()
        start = (torch.rand(x.shape, generator=generator).to(x) * 2 - 1) * self.eps
        x_adv = self._project(x + start, x)
        for _ in range(self.attack_steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(self.inner_objective(model, x, x_adv, y).sum(), x_adv)
            x_adv = self._project(x_adv.detach() + self.attack_lr * grad.sign(), x)  # an ascent step, not trained
        return x_adv.detach()

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        x_adv = torch.max(torch.min(x_adv, x + self.eps), x - self.eps)
        return x_adv if self.clamp is None else x_adv.clamp(*self.clamp)

    def penalty(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Penalty:
        x_adv = self.worst_point(model, x, y, generator=generator)
        return self.ig_l1(model, x, x_adv, y).mean(), None


class IGSumNorm(IGNorm):
    """IG-SUM-NORM (Chen et al. 2019, Eq. 7): the loss of ``x`` is replaced by
    ``max_{||x' - x||_inf <= eps} [l(x') + weight * ||IG^l(x, x')||_1]``: the worst point
    raises the loss and the attribution change together (with ``weight = 0``, Madry's
    adversarial training). The penalty reported is the IG norm; the cross-entropy at ``x'``
    replaces the one at ``x``. Settings as :class:`IGNorm`."""

    name, paper, default_weight = "ig_sum_norm", "Chen et al. 2019, IG-SUM-NORM (Eq. 7)", 1.0
    replaces_classification = True

    def inner_objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x_adv), y, reduction="none") + self.weight * self.ig_l1(
            model, x, x_adv, y, self.attack_ig_steps)

    def penalty(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Penalty:
        x_adv = self.worst_point(model, x, y, generator=generator)
        return self.ig_l1(model, x, x_adv, y).mean(), F.cross_entropy(model(x_adv), y)


class SSR(Regularizer):
    """The smoothed surrogate regulariser (Wang et al. 2020, "Smoothed Geometry for Robust
    Attribution", Sec. 4): the largest eigenvalue of the input Hessian of the cross-entropy of a
    piecewise-linear network, ``J^T (diag p - p p^T) J`` (``J = d logits / d x``, ``p`` the
    softmax), a bound on how fast the gradient explanation can change.

    Computed exactly in ``C x C`` (``C`` classes): with ``s = sqrt(p)`` and
    ``P = I - s s^T`` (a projection, ``||s|| = 1``), ``diag p - p p^T = L L^T`` for
    ``L = diag(s) P``, and the nonzero eigenvalues of ``J^T L L^T J`` are those of
    ``L^T (J J^T) L``. The reference code averages the input gradients over colour channels
    before this; the paper does not, and nor does manipex. The reference trains with
    ``(1 - alpha) l + alpha * scale * R`` (alpha = scale = 0.3): ``weight = alpha * scale /
    (1 - alpha)`` is the same up to the learning rate.
    """

    name, paper, default_weight = "ssr", "Wang et al. 2020 (SSR), Sec. 4", 0.13

    def penalty(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Penalty:
        xr = x.detach().requires_grad_(True)  # data: a leaf for the Jacobian; the weights stay in the graph
        out = model(xr)
        c = out.shape[1]
        rows = [torch.autograd.grad(out[:, k].sum(), xr, create_graph=True)[0].flatten(1) for k in range(c)]
        jac = torch.stack(rows, dim=1)  # (N, C, D)
        gram = jac @ jac.transpose(1, 2)  # J J^T, (N, C, C)
        s = out.softmax(1).sqrt()
        proj = torch.eye(c, dtype=x.dtype, device=x.device) - s[:, :, None] * s[:, None, :]
        factor = s[:, :, None] * proj  # L = diag(s) P
        inner = factor.transpose(1, 2) @ gram @ factor
        inner = (inner + inner.transpose(1, 2)) / 2 + 1e-12 * torch.eye(c, dtype=x.dtype, device=x.device)
        return torch.linalg.eigvalsh(inner)[:, -1].mean(), None


class WeightDecay(Regularizer):
    """``1/2 sum ||theta||^2`` over the trained parameters (Dombrowski et al. 2022, Sec. 5.1:
    the manipulability bound grows with the weights' norms, so weight decay tightens it)."""

    name, paper, default_weight = "weight_decay", "Dombrowski et al. 2022, Sec. 5.1", 1e-3

    def penalty(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Penalty:
        params = [p for p in model.parameters() if p.requires_grad]
        return sum((p.pow(2).sum() for p in params), x.new_zeros(())) / 2, None


class SoftplusTraining(Regularizer):
    """Train (and keep) the network with ``Softplus(beta)`` in place of every ``nn.ReLU``
    (Dombrowski et al. 2022, Sec. 5.2: a smaller beta bounds the curvature, hence the
    manipulability). The model returned has the Softplus units; it adds no penalty."""

    name, paper, default_weight = "softplus", "Dombrowski et al. 2022, Sec. 5.2", 0.0

    def __init__(self, weight: Optional[float] = None, *, beta: float = 5.0) -> None:
        super().__init__(weight)
        self.beta = check_real(beta, where=self.where, name="beta", gt=0)

    def options(self) -> Dict[str, Any]:
        return {"beta": self.beta}

    def prepare(self, model: nn.Module, original: nn.Module) -> nn.Module:
        if not surgery.has_relu(model):
            raise ValueError(f"{self.where}: the model has no nn.ReLU module to train as Softplus")
        return surgery.softplus_copy(model, self.beta)

    def penalty(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Penalty:
        return x.new_zeros(()), None


class ATEXTerm(Regularizer):
    """ATEX's regulariser (Tang et al., Eq. 4 to 6; :func:`~manipex.defenses.atex_finetune`):
    ``copies * KL(f0(x^i) || g(x^p))`` at temperature ``T``, where ``f0`` is the model passed
    to ``train_robust`` (frozen), ``x^i`` shifts ``x`` along ``f0``'s SmoothGrad map and ``x^p``
    moves perpendicular to it. With it, robust training composes with ATEX: e.g.
    ``[ATEXTerm(), HessianNorm()]``. Unlike :func:`atex_finetune`, the classification term is
    the cross-entropy on the labels (not distillation at ``x``)."""

    name, paper, default_weight = "atex", "Tang et al. 2022, Eq. 4", 1.0

    def __init__(self, weight: Optional[float] = None, *, eps: float = 0.08, shift: Optional[float] = None,
                 copies: int = 8, samples: int = 10, temperature: float = 4.0) -> None:
        super().__init__(weight)
        self.eps = check_real(eps, where=self.where, name="eps", gt=0)
        self.shift = 4 * self.eps if shift is None else check_real(shift, where=self.where, name="shift", gt=0)
        self.copies = check_int(copies, where=self.where, name="copies", ge=1)
        self.samples = check_int(samples, where=self.where, name="samples", ge=1)
        self.temperature = check_real(temperature, where=self.where, name="temperature", gt=0)
        self.teacher: Optional[nn.Module] = None

    def options(self) -> Dict[str, Any]:
        return {"eps": self.eps, "shift": self.shift, "copies": self.copies, "samples": self.samples,
                "temperature": self.temperature}

    def prepare(self, model: nn.Module, original: nn.Module) -> nn.Module:
        self.teacher = copy.deepcopy(original).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        return model

    def penalty(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> Penalty:
        if self.teacher is None:
            raise RuntimeError(f"{self.where}: prepare() was not called (train_robust calls it)")
        kl = perpendicular_kl(model, self.teacher, x.detach(), eps=self.eps, shift=self.shift, copies=self.copies,
                              samples=self.samples, temperature=self.temperature, generator=generator)
        return self.copies * kl, None


REGULARIZERS: Registry[Type[Regularizer]] = Registry("regularizer")
for _cls in (HessianNorm, Curvature, IGNorm, IGSumNorm, SSR, WeightDecay, SoftplusTraining, ATEXTerm):
    REGULARIZERS.register(_cls.name, _cls)


def register(cls: Type[Regularizer], *, overwrite: bool = False) -> Type[Regularizer]:
    """Make a :class:`Regularizer` subclass available by its ``name``; usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)) or not cls.name:
        raise TypeError(f"register: expected a Regularizer subclass with a name, got {short(cls)}")
    return REGULARIZERS.register(cls.name, cls, overwrite=overwrite)


def make(name: str, **options: Any) -> Regularizer:
    """The regularizer registered as ``name``, built with ``options`` (``weight`` and its own);
    an unknown name or option is a ``ValueError`` / ``TypeError`` that lists what exists."""
    if not isinstance(name, str):
        raise TypeError(f"make: a regularizer name must be a str, got {short(name)}")
    cls = REGULARIZERS.get(name)
    try:
        return cls(**options)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        import inspect

        known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        bad = sorted(set(options) - set(known))
        raise TypeError(f"regularizer {name!r} has no option {', '.join(map(repr, bad))}; "
                        f"its options: {', '.join(known)}") from None


__all__ = ["Regularizer", "HessianNorm", "Curvature", "IGNorm", "IGSumNorm", "SSR", "WeightDecay",
           "SoftplusTraining", "ATEXTerm", "REGULARIZERS", "register", "make", "Penalty"]

