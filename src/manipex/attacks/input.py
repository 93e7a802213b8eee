"""Input-manipulation attacks on explanation maps (Dombrowski et al. 2019; Ghorbani et al. 2019).

An imperceptible perturbation ``x_adv = x + delta`` keeps the output ``g(x_adv) ≈ g(x)`` and
drives the explanation ``h(x_adv)`` towards an objective (:mod:`manipex.objectives`):

    ``L_i = objective(r(x_adv_i)) + gamma * mean_k (softmax g_β(x_adv_i)_k - softmax g(x_i)_k)^2``

(Dombrowski Eq. 4; the reference code's MSE on softmax outputs). Gradient maps of a ReLU net
have no useful derivative w.r.t. the input, so the attack optimises on a copy with every ReLU
replaced by Softplus(β), β growing exponentially from 10 to 100 over the run (Dombrowski
Sec. 3), and evaluates on the original model. Each image has its own loss, the optimisers are
element-wise, and early stopping and the kept iterate are decided per image, so an image's
result depends on no other image of its batch: in float64, alone and in a batch agree to 1e-9
(tested). In float32 the batched kernels round differently from single-image ones, and Adam
can amplify that over many steps (measured: README, Measured figures behind the defaults);
use float64 where per-image reproducibility matters.

Defaults a user can trust: the budget is ``eps="auto"``, 10 % of the data range in L∞ (0.1 on
[0, 1] images; pass ``eps=math.inf`` for an unbounded attack); ``success`` means the objective
reached its documented threshold (:mod:`manipex.objectives`) with the class kept; with a fixed
surrogate the run stops early when no image's best class-keeping iterate has improved for
``patience`` checks.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .. import surgery
from ..optim import NORMS, STEPS, Bound, Budget, BetaSchedule, make_step
from .._second_order import second_order
from .._validation import (TargetLike, check_bool, check_call, check_choice, check_input, check_int, check_real,
                           check_target, predicted_target)
from ..explainers import get_explainer, relevance
from ..explainers.base import capture_output
from ..metrics import class_agreement, l2, linf, output_change
from ..metrics.direction import Direction
from ..models.interfaces import Output, logits_model
from ..objectives import CenterOfMass, HideFeatures, Objective, TargetMap, TopKSuppression, _Region
from ..style import display_name
from ..figures import input_attack_figure
from .._progress import progress_bar



@dataclass(repr=False)
class InputAttackResult:
    """Outcome of :func:`manipulate_input`, per image (all tensors have N rows).

    Maps are normalised relevance maps of the *original* model (ReLU), before and after.
    ``metric_before``/``metric_after`` are the objective's score (``metric_name``;
    ``direction`` for the attacker: :class:`~manipex.metrics.direction.Direction`).
    ``success``: the class is kept and the metric reached ``threshold`` (the objective's success
    threshold, per image). ``eps``: the budget used; ``steps_run``: the steps taken before the
    end or an early stop. ``method`` and
    ``objective``: the attacked method and the objective's class name. What the objective aims
    at, where it has it (for :meth:`plot`): ``target_map`` the target maps (normalised,
    ``(N, ...)``; :class:`~manipex.objectives.TargetMap`, :class:`~manipex.objectives.TargetImage`),
    ``region`` the mask whose mass is filled or emptied (region objectives, the top-k features
    of :class:`~manipex.objectives.TopKSuppression`), ``point`` the point a centre of mass is
    driven to (pixels, row and column). Its repr is a one-line summary.
    """

    x: Tensor
    x_adv: Tensor
    maps_before: Tensor
    maps_after: Tensor
    metric_name: str
    direction: Direction
    metric_before: Tensor
    metric_after: Tensor
    output_change: Tensor
    class_kept: Tensor
    success: Tensor
    threshold: Optional[Tensor] = None
    eps: float = math.inf
    steps_run: int = 0
    history: List[float] = field(default_factory=list)
    method: str = ""
    objective: str = ""
    target_map: Optional[Tensor] = None
    region: Optional[Tensor] = None
    point: Optional[Tensor] = None

    def __repr__(self) -> str:
        """``InputAttackResult(8 images, method 'lrp', objective TargetImage, PCC with target
        0.41 -> 0.83, success 6/8, class kept 8/8, 300 steps)``: means over the images."""
        n = int(self.x.shape[0]) if isinstance(self.x, Tensor) and self.x.dim() else 0
        parts = [f"{n} image{'s' if n != 1 else ''}"]
        if self.method:
            parts.append(f"method {self.method!r}")
        if self.objective:
            parts.append(f"objective {self.objective}")
        try:
            before, after = float(self.metric_before.float().mean()), float(self.metric_after.float().mean())
            parts.append(f"{display_name(self.metric_name)} {before:.3g} -> {after:.3g}")
            parts.append(f"success {int(self.success.sum())}/{n}")
            parts.append(f"class kept {int(self.class_kept.sum())}/{n}")
        except (AttributeError, TypeError, RuntimeError, ValueError):  # hand-made results with other values
            pass
        parts.append(f"{self.steps_run} step{'s' if self.steps_run != 1 else ''}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @property
    def improvement(self) -> Tensor:
        """Metric change in the attacker's favour (positive = manipulated), per image."""
        return self.direction.gain(self.metric_after, self.metric_before)

    def summary(self) -> Dict[str, float]:
        """Means over the batch, for tables."""
        return {
            f"{self.metric_name}_before": self.metric_before.mean().item(),
            f"{self.metric_name}_after": self.metric_after.mean().item(),
            "improvement": self.improvement.mean().item(),
            "class_kept": self.class_kept.float().mean().item(),
            "success": self.success.float().mean().item(),
            "output_change": self.output_change.mean().item(),
            "linf": linf(self.x, self.x_adv).mean().item(),
            "l2": l2(self.x, self.x_adv).mean().item(),
            "eps": self.eps,
            "steps_run": self.steps_run,
        }

    def to_frame(self):
        """One row per image as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame({
            f"{self.metric_name}_before": self.metric_before.cpu().numpy(),
            f"{self.metric_name}_after": self.metric_after.cpu().numpy(),
            "class_kept": self.class_kept.cpu().numpy(),
            "success": self.success.cpu().numpy(),
            "output_change": self.output_change.cpu().numpy(),
            "linf": linf(self.x, self.x_adv).cpu().numpy(),
            "l2": l2(self.x, self.x_adv).cpu().numpy(),
        })

    def plot(self, n: int = 4, *, sign: str = "absolute", shared_scale="row"):
        """A figure of the attack (:func:`manipex.figures.input_attack_figure`): one row per image
        (the first ``n``); columns: original input, manipulated input, the perturbation
        ``x_adv - x`` (signed, symmetric limits, one scale for the column), the original map, the
        target map (target-map objectives; region objectives outline their region on the maps,
        centre-of-mass objectives mark the centres) and the manipulated map; titles give the
        metric before/after and whether the class was kept. ``shared_scale``: the maps of a row
        on one colour scale with one colour bar (default ``"row"``; ``True``, ``"column"``,
        ``False`` as :func:`manipex.figures.map_grid`). ``sign``: the view of the stored maps
        (normalised relevance, non-negative; see :func:`manipex.figures.draw_map`). Returns the
        :class:`~matplotlib.figure.Figure`, not saved."""
        return input_attack_figure(self, n, sign=sign, shared_scale=shared_scale)


Beta = Union[None, float, Tuple[float, float], BetaSchedule]


@dataclass
class InputAttack:
    """An input attack as an object (torchattacks' and Captum's shape): the options in the
    constructor, :meth:`run` on a model and its inputs. :func:`manipulate_input` is this object
    called once; every option is documented there.

    The concerns are separate pieces: the budget and projection (:class:`~manipex.optim.Budget`),
    the surrogate's β (:class:`~manipex.optim.BetaSchedule`), the step
    (:func:`~manipex.optim.make_step`: Adam or the sign step), the keep-best, patience and revert
    bookkeeping (:class:`_KeepBest`) and the result (:func:`_result`). The caller's objective is
    never changed: the attack prepares a copy.
    """

    objective: Objective
    method: str = "gradient"
    method_options: Optional[Dict[str, Any]] = None
    steps: int = 500
    lr: float = 1e-2
    gamma: float = 100.0
    beta: Beta = (10.0, 100.0)
    smooth_pools: bool = True
    optimizer: str = "adam"
    eps: Union[float, str] = "auto"
    norm: str = "linf"
    clamp: Optional[Tuple[Bound, Bound]] = (0.0, 1.0)
    keep_best: bool = True
    revert: bool = True
    check_every: int = 10
    patience: Optional[int] = 10
    progress: bool = True
    output: Optional[Output] = None

    where = "manipulate_input"

    def check(self) -> Tuple[Any, BetaSchedule]:
        """Check every option (``TypeError``/``ValueError`` naming it, before any work); the
        explainer and the β schedule."""
        where = self.where
        if not isinstance(self.objective, Objective):
            raise TypeError(f"{where}: objective must be a manipex.objectives.Objective, got "
                            f"{type(self.objective).__name__}")
        check_int(self.steps, where=where, name="steps", ge=1)
        check_real(self.lr, where=where, name="lr", gt=0)
        check_real(self.gamma, where=where, name="gamma", ge=0)
        check_choice(self.optimizer, tuple(STEPS), where=where, name="optimizer")
        check_choice(self.norm, NORMS, where=where, name="norm")
        check_int(self.check_every, where=where, name="check_every", ge=1)
        check_int(self.patience, where=where, name="patience", ge=1, allow_none=True)
        for name in ("smooth_pools", "keep_best", "revert", "progress"):
            check_bool(getattr(self, name), where=where, name=name)
        beta = BetaSchedule.of(self.beta, where=where)
        if self.method_options is not None and not isinstance(self.method_options, dict):
            raise TypeError(f"{where}: method_options must be None or a dict, got "
                            f"{type(self.method_options).__name__}")
        explainer = get_explainer(self.method, **(self.method_options or {}))  # unknown method or option
        return explainer, beta

    def run(self, model: nn.Module, x: Tensor, target: TargetLike = None,
            start: Optional[Tensor] = None) -> InputAttackResult:
        """Attack ``model`` at ``x`` (explained class ``target``; None: the predicted class),
        starting from ``start`` (default ``x``): see :func:`manipulate_input`."""
        where = self.where
        check_call(model, x, where=where)
        explainer, beta = self.check()
        budget = Budget.resolve(self.eps, self.norm, self.clamp, x, where=where)
        if start is not None:  # before any work
            check_input(start, where=where, name="start")
            if start.shape != x.shape:
                raise ValueError(f"{where}: start must have x's shape {tuple(x.shape)}, got {tuple(start.shape)}")
        x = x.detach()
        # one wrapper for the whole run (where the model returns more than logits), so that the
        # per-model caches (propagation graphs, parameter checks) are hit at every step
        model = logits_model(model, x, self.output, where=where)
        target = predicted_target(model, x, check_target(target, x.shape[0], where=where), where=where)

        def relevance_on(m: nn.Module, inputs: Tensor, create_graph: bool = False) -> Tensor:
            return relevance(explainer(m, inputs, target, create_graph=create_graph))

        defended_map = explainer.config.get("softplus_beta") is not None
        if defended_map:
            beta = BetaSchedule()  # the defended map is smooth already: attack exactly that map
        # a map computed at x_adv itself runs the surrogate's forward there once; its output is the
        # output term's (not when the map is on a beta-smoothed copy of its own)
        share_output = not defended_map

        r_start = relevance_on(model, x)
        objective = copy.deepcopy(self.objective).prepare(lambda inputs: relevance_on(model, inputs), x, r_start)
        with torch.no_grad():
            logits = model(x)
        p_orig, classes = logits.softmax(1), logits.argmax(1)

        attacked, handle = (model, None) if not beta.smooth else surgery.smooth_copy(
            model, beta.at(0, self.steps), pools=self.smooth_pools)
        with torch.no_grad():  # the start is a point, not part of what is differentiated
            x_adv = x.clone() if start is None else budget.project(start.detach().to(x), x)
        x_adv.requires_grad_(True)
        step_rule = make_step(self.optimizer, x_adv, self.lr)
        keeper = _KeepBest(lambda candidate: objective.loss(relevance_on(model, candidate)).detach(), model, x,
                           classes, objective.loss(r_start).detach())
        history: List[float] = []
        shape = (-1,) + (1,) * (x.dim() - 1)
        steps_run = 0

        bar = progress_bar(range(self.steps), desc=f"attack {explainer.name}", enabled=self.progress, leave=False)
        for step in bar:
            steps_run = step + 1
            if handle is not None:
                handle.beta = beta.at(step, self.steps)
            # checked once above: the model, and x_adv, finite by construction (projected, clamped);
            # enable_grad: also when called under no_grad()
            with torch.enable_grad(), second_order(attacked, where), capture_output(x_adv) as seen:
                r = relevance(explainer.compute(attacked, x_adv, target, True))
                logits = seen.output if share_output and seen.output is not None else attacked(x_adv)
                out_term = (logits.softmax(1) - p_orig).pow(2).mean(1)
                loss = (objective.loss(r) + self.gamma * out_term).sum()
                (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():  # the update and projection are not differentiated
                previous = x_adv.detach().clone()
                step_rule.step(grad)
                # images that stalled stay where they are, so no image depends on its batch
                x_adv.copy_(torch.where(keeper.active.reshape(shape), budget.project(x_adv, x), previous))
            history.append(loss.item() / x.shape[0])
            bar.set_postfix(loss=f"{history[-1]:.4g}", beta=f"{handle.beta:.3g}" if handle else "-", refresh=False)
            if self.keep_best and ((step + 1) % self.check_every == 0 or step == self.steps - 1):
                keeper.check(x_adv.detach(), self.patience if not beta.growing else None)
                if not bool(keeper.active.any()):
                    break
        bar.close()

        final = keeper.best_x if self.keep_best else x_adv.detach()
        if self.revert:
            with torch.no_grad():
                kept = model(final).argmax(1) == classes
            final = torch.where(kept.reshape(shape), final, x)
        return _result(model, x, final, r_start, relevance_on(model, final), objective, budget.eps, steps_run,
                       history, explainer.name)


class _KeepBest:
    """Per image, the best iterate (on the original model) whose predicted class is unchanged
    (Ghorbani et al. 2019), and the patience count: an image whose best has not improved (by 1e-4
    relative) for ``patience`` checks in a row stops moving (``active`` False)."""

    def __init__(self, loss_at, model: nn.Module, x: Tensor, classes: Tensor, start_loss: Tensor):
        self.loss_at, self.model, self.classes = loss_at, model, classes
        self.best_x, self.best_loss = x.clone(), start_loss
        self.stalled = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        self.shape = (-1,) + (1,) * (x.dim() - 1)

    def check(self, candidate: Tensor, patience: Optional[int]) -> None:
        """Keep the images' better iterates among ``candidate``; with ``patience`` (None: never),
        stop the images that stalled."""
        loss = self.loss_at(candidate)
        with torch.no_grad():
            kept = self.model(candidate).argmax(1) == self.classes
        better = kept & (loss < self.best_loss - 1e-4 * self.best_loss.abs())
        self.best_x = torch.where(better.reshape(self.shape), candidate, self.best_x)
        self.best_loss = torch.where(better, loss, self.best_loss)
        self.stalled = torch.where(better, 0, self.stalled + 1)
        if patience is not None:
            self.active = self.stalled < patience


def _result(model: nn.Module, x: Tensor, final: Tensor, r_start: Tensor, r_after: Tensor, objective: Objective,
            eps: float, steps_run: int, history: List[float], method: str) -> InputAttackResult:
    """The :class:`InputAttackResult` of an attack that ended at ``final``."""
    metric_before, metric_after = objective.metric(r_start), objective.metric(r_after)
    kept = class_agreement(model, x, final).bool()
    reached = objective.success(metric_before, metric_after)
    target_map, region, point = _aims(objective, r_start)
    return InputAttackResult(
        x=x, x_adv=final, maps_before=r_start, maps_after=r_after,
        metric_name=objective.metric_name, direction=objective.direction,
        metric_before=metric_before, metric_after=metric_after,
        output_change=output_change(model, x, final), class_kept=kept, success=kept & reached,
        threshold=objective.threshold(metric_before), eps=eps, steps_run=steps_run, history=history,
        method=method, objective=type(objective).__name__, target_map=target_map, region=region, point=point,
    )


def manipulate_input(  # noqa: PLR0913 -- the documented flat options of InputAttack
    model: nn.Module,
    x: Tensor,
    objective: Objective,
    method: str = "gradient",
    *,
    target: TargetLike = None,
    method_options: Optional[Dict[str, Any]] = None,
    steps: int = 500,
    lr: float = 1e-2,
    gamma: float = 100.0,
    beta: Beta = (10.0, 100.0),
    smooth_pools: bool = True,
    optimizer: str = "adam",
    eps: Union[float, str] = "auto",
    norm: str = "linf",
    clamp: Optional[Tuple[Bound, Bound]] = (0.0, 1.0),
    keep_best: bool = True,
    revert: bool = True,
    check_every: int = 10,
    patience: Optional[int] = 10,
    start: Optional[Tensor] = None,
    progress: bool = True,
    output: Optional[Output] = None,
) -> InputAttackResult:
    """Perturb ``x`` so that its ``method`` explanation meets ``objective`` while the output stays.

    Args:
        model: the attacked model (eval mode); never changed: the attack optimises on a copy.
        x: inputs ``(N, ...)`` inside the ``clamp`` range.
        objective: an :class:`~manipex.objectives.Objective`, e.g. ``TargetImage(x_target)``.
        method: any method of :func:`manipex.explain`, including ``smoothgrad``, ``agg_mean``
            and ``agg_var`` (an adaptive attacker sees the defense); ``method_options`` its options.
        target: the explained class (None: the predicted class of ``x``), fixed during the run.
        steps, lr: optimisation steps and step size (Adam's lr, or the signed step). The
            default lr suits inputs in [0, 1]; Dombrowski's 2e-4 was for ImageNet-normalised
            inputs and 1500 steps.
        gamma: weight of the output term (MSE of the softmax probabilities), relative to the
            objective (target-map MSE is taken on maps rescaled to mean 1 per pixel). The
            default kept every class, while much larger gammas slowed the attack down
            (measured: README, Measured figures behind the defaults).
        beta: softplus β: ``(start, end)`` for exponential growth (Dombrowski: 10 -> 100), a
            fixed number, or None to attack the model as it is (e.g. LRP on ReLU). Ignored when
            ``method_options`` holds ``softplus_beta``: a β-smoothed map is attacked as it is.
        smooth_pools: with ``beta``, the surrogate also smooths every max-pool module
            (:class:`~manipex.surgery.SmoothMaxPool`, the log-sum-exp maximum of its window at
            the same β): manipex's extension of Dombrowski's surrogate. With hard max-pools the
            attack cannot see that moving a pixel would change a window's winner; on the
            MNIST-5k CNN, where many pool windows are tied at clean images (exact zeros), it
            lifts the map's PCC with the target. The result is still evaluated on the model as
            it is. It can also hurt: on a random-init CIFAR VGG (gradient,
            ``benchmarks/paper_protocol.py``) the PCC fell, for a reason not established (its
            windows spread far more than the ``log(4) / β`` offset, and few are tied); pass
            ``smooth_pools=False`` and compare where the attack falls short (both measured:
            README, Measured figures behind the defaults).
        optimizer: ``"adam"`` (Dombrowski) or ``"sign"`` (L∞ sign steps: Ghorbani, ATEX).
        eps, norm: budget ``||x_adv - x|| <= eps`` in ``"linf"`` or ``"l2"``, in the units of
            ``x``; ``"auto"`` (default): 10 % of the ``clamp`` range in L∞ (0.1 on [0, 1]
            images); ``math.inf``: no budget.
        clamp: valid input range ``(low, high)``, floats or per-channel sequences; None: none.
        keep_best: return, per image, the iterate with the best objective (on the original
            model) among those whose predicted class is unchanged (Ghorbani), checked every
            ``check_every`` steps and at the end.
        revert: images whose predicted class changed anyway are returned unperturbed.
        patience: with ``keep_best``, an image whose best iterate has not improved (by 1e-4
            relative) for this many checks in a row stops moving, and the run stops when all
            have; None: run all ``steps``. Not while β grows (a ``(start, end)`` schedule): an
            image stopped at a small β keeps an iterate made for a surrogate far from the model
            (it reached less of the target than the run without early stopping; measured:
            README, Measured figures behind the defaults).
        start: where the optimisation starts (``x``'s shape; default ``x`` itself), projected
            onto the budget around ``x`` and the ``clamp`` range. The budget, the output to
            keep and the start map of the objective stay those of ``x`` (max-sensitivity's worst
            case starts at the worst sampled point).
        progress: show a progress bar (on a terminal or in a notebook; never in logs).
        output: what selects the logits of a model that returns more than a tensor (a dict,
            a tuple, an object with ``.logits``), as in :func:`manipex.explain`; None: a tensor
            as it is, else its logits found automatically (with a warning once per model).

    Returns:
        :class:`InputAttackResult`.
    """
    return InputAttack(objective, method, method_options, steps=steps, lr=lr, gamma=gamma, beta=beta,
                       smooth_pools=smooth_pools, optimizer=optimizer, eps=eps, norm=norm, clamp=clamp,
                       keep_best=keep_best, revert=revert, check_every=check_every, patience=patience,
                       progress=progress, output=output).run(model, x, target, start)


def _aims(objective: Objective, r_start: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """``(target_map, region, point)`` of a prepared objective, each broadcast to the ``N``
    maps (or None where it has none), detached: what :meth:`InputAttackResult.plot` shows."""
    def expand(t: Optional[Tensor]) -> Optional[Tensor]:
        if not isinstance(t, Tensor):
            return None
        try:
            return torch.broadcast_to(t.detach().to(r_start.device), r_start.shape).clone()
        except RuntimeError:  # a shape the maps do not have: nothing to show
            return None

    if isinstance(objective, TargetMap):
        return expand(getattr(objective, "target", None)), None, None
    if isinstance(objective, TopKSuppression):
        return None, expand(objective.mask), None
    if isinstance(objective, (_Region, HideFeatures)):
        return None, expand(objective.mask.to(r_start.dtype)), None
    if isinstance(objective, CenterOfMass) and objective.point is not None:
        point = objective.point.detach().to(r_start.device, r_start.dtype)
        return None, None, point.reshape(-1, point.shape[-1]).expand(r_start.shape[0], -1).clone()
    return None, None, None
