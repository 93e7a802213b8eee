#!/usr/bin/env python
"""Cost of one input-attack step of manipex, next to a hand-written plain-torch step.

Run from the repository root::

    python benchmarks/attack_step.py                       # batches 1 and 64, 2 threads
    python benchmarks/attack_step.py --batches 1 16 64 --repeats 21 --threads 4

One step of :func:`manipex.attacks.manipulate_input` (``src/manipex/attacks/input.py``) on the
softplus copy of the model (:func:`manipex.surgery.smooth_copy`) is::

    handle.beta = beta_t                                          # the β schedule, every step
    r = relevance(explain(softplus_model, x_adv, method, target, create_graph=True))
    loss = (objective.loss(r) + gamma * (softplus_model(x_adv).softmax(1) - p_orig).pow(2).mean(1)).sum()
    (grad,) = torch.autograd.grad(loss, x_adv)
    x_adv.grad = grad; adam.step(); x_adv.clamp_(0, 1)            # (the projection)

The rows, in milliseconds per image (step time / batch):

* ``manipex gradient``: the step above with ``method="gradient"`` and a ``TargetMap`` objective;
* ``manipex lrp``: the same with ``method="lrp"`` (default composite ``zb_zplus``);
* ``hand-written gradient``: the same computation for the gradient map in plain torch, without
  manipex (softplus forward, ``logits.gather(target).sum()``, ``autograd.grad(create_graph=True)``,
  abs-sum over channels normalised to sum 1, the scaled MSE of ``TargetMap``, the output term with
  a second forward as manipex does, ``autograd.grad`` w.r.t. ``x_adv``, the Adam step);
* ``zennit lrp``: Zennit's ``EpsilonPlusFlat`` double-backprop step (``Gradient(create_graph=True)``,
  hooks registered once, outside the timing, on a separate copy of the softplus model; output term
  on the hook-free copy), when Zennit imports;
* ``saliency``: one plain forward + backward (no ``create_graph``), for scale.

and the ratios ``manipex gradient / hand-written`` (target <= 1.1 at the largest batch) and
``manipex lrp / manipex gradient`` (target <= 1.5 at the largest batch).

Timing: every step function is called ``--warmup`` times, then all are called in turn for up to
``--repeats`` rounds (so that a change of load hits all alike; no round starts after
``--budget`` seconds per batch size, at least 3 are run) and the median (``--stat min`` on a busy
machine) is reported. ``torch.set_num_threads`` is ``--threads``: on a machine whose cores are
busy with other work, several threads make small batches very slow (threads waiting for each
other), so compare runs only at the same load (printed at the start).
The β of the softplus units follows Dombrowski's schedule 10 -> 100 over ``--steps`` steps as in
the attack (``--fixed-beta`` keeps it at 10). The model is ``manipex.models.mnist_cnn()`` with a
random initialisation (seed 0) in eval mode, inputs uniform in [0, 1], the target the predicted
class, target maps of random images. Before timing, the hand-written and the manipex gradient
steps are checked to give the same gradient w.r.t. ``x_adv`` (at β = 10 and 100).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

import manipex

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _zennit import import_zennit  # noqa: E402
from manipex import surgery
from manipex.models import mnist_cnn
from manipex.objectives import TargetMap

GAMMA = 100.0
LR = 1e-2
BETA = (10.0, 100.0)


# --------------------------------------------------------------------------------------------
# Zennit (optional); the same torchvision stub as benchmarks/explainers.py




# --------------------------------------------------------------------------------------------
# The setting shared by all steps


class Setting:
    """Model, batch, target, target maps and the β schedule for one batch size.

    ``model`` (in eval mode, on ``device``) with inputs of ``shape`` replaces the MNIST CNN
    (``benchmarks/graph_lrp.py`` uses this for ResNets)."""

    def __init__(self, batch: int, steps: int, fixed_beta: bool, model: Optional[nn.Module] = None,
                 shape: Tuple[int, ...] = (1, 28, 28), device: str = "cpu") -> None:
        torch.manual_seed(0)
        self.model = mnist_cnn().eval() if model is None else model
        self.x = torch.rand(batch, *shape, device=device)
        with torch.no_grad():
            logits = self.model(self.x)
        self.target = logits.argmax(1)
        self.p_orig = logits.softmax(1)
        self.target_maps = torch.rand(batch, *shape[1:], device=device)
        self.steps, self.fixed_beta = steps, fixed_beta
        self.calls = 0

    def beta(self) -> float:
        """The next β of the schedule (cycling through ``steps`` steps), as the attack sets it."""
        if self.fixed_beta:
            return BETA[0]
        step = self.calls % self.steps
        self.calls += 1
        return BETA[0] * (BETA[1] / BETA[0]) ** (step / max(1, self.steps - 1))

    def start(self):
        """A fresh ``x_adv`` leaf and its Adam optimiser."""
        x_adv = self.x.clone().requires_grad_(True)
        return x_adv, torch.optim.Adam([x_adv], lr=LR)


Grad = Callable[[Tensor], Tensor]  # x_adv -> d loss / d x_adv at the current β
SetBeta = Callable[[float], None]


def stepper(s: Setting, set_beta: SetBeta, grad_of: Grad) -> Callable[[], None]:
    """One attack step: the next β, the loss gradient, Adam and the projection to [0, 1]."""
    x_adv, adam = s.start()

    def step() -> None:
        set_beta(s.beta())
        grad = grad_of(x_adv)
        with torch.no_grad():
            x_adv.grad = grad
            adam.step()
            x_adv.clamp_(0.0, 1.0)

    return step


def manipex_loss(s: Setting, method: str, **explain_kw) -> Tuple[SetBeta, Grad]:
    """The attack loss of manipex's ``method`` map (``explain_kw``: e.g. its composite)."""
    attacked, handle = surgery.smooth_copy(s.model, BETA[0])
    objective = TargetMap(s.target_maps)

    def set_beta(beta: float) -> None:
        handle.beta = beta

    def grad_of(x_adv: Tensor) -> Tensor:
        h = manipex.explain(attacked, x_adv, method, s.target, create_graph=True, **explain_kw)
        r = manipex.relevance(h)
        out_term = (attacked(x_adv).softmax(1) - s.p_orig).pow(2).mean(1)
        loss = (objective.loss(r) + GAMMA * out_term).sum()
        return torch.autograd.grad(loss, x_adv)[0]

    return set_beta, grad_of


def handwritten_loss(s: Setting) -> Tuple[SetBeta, Grad]:
    """The gradient-map attack loss in plain torch (no manipex in the timed code)."""
    attacked = copy.deepcopy(s.model)
    units = []
    for parent in list(attacked.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                unit = nn.Softplus(beta=BETA[0])
                setattr(parent, name, unit)
                units.append(unit)
    t = s.target[:, None]
    tmap = s.target_maps.abs()
    tmap = tmap / (tmap.flatten(1).sum(1).reshape(-1, 1, 1) + 1e-12)
    pixels = tmap[0].numel()

    def set_beta(beta: float) -> None:
        for unit in units:
            unit.beta = beta

    def grad_of(x_adv: Tensor) -> Tensor:
        logits = attacked(x_adv)
        (g,) = torch.autograd.grad(logits.gather(1, t).sum(), x_adv, create_graph=True)
        r = g.abs().sum(1)
        r = r / (r.flatten(1).sum(1).reshape(-1, 1, 1) + 1e-12)
        objective = ((r - tmap) * pixels).pow(2).flatten(1).mean(1)
        out_term = (attacked(x_adv).softmax(1) - s.p_orig).pow(2).mean(1)
        loss = (objective + GAMMA * out_term).sum()
        return torch.autograd.grad(loss, x_adv)[0]

    return set_beta, grad_of


def zennit_loss(s: Setting, zennit) -> Tuple[SetBeta, Grad]:
    """Zennit's EpsilonPlusFlat map with ``create_graph=True`` in the same loss."""
    composites, _, attribution = zennit
    attacked, handle = surgery.smooth_copy(s.model, BETA[0])  # hook-free: the output term
    hooked, zhandle = surgery.smooth_copy(s.model, BETA[0])   # Zennit's hooks live here
    attributor = attribution.Gradient(model=hooked, composite=composites.EpsilonPlusFlat(),
                                      create_graph=True)
    attributor.__enter__()  # registered once, outside the timing, for the life of the benchmark
    onehot = torch.nn.functional.one_hot(s.target, 10).to(s.x.dtype)
    objective = TargetMap(s.target_maps)

    def set_beta(beta: float) -> None:
        handle.beta = zhandle.beta = beta

    def grad_of(x_adv: Tensor) -> Tensor:
        _, h = attributor(x_adv, onehot)
        r = manipex.relevance(h)
        out_term = (attacked(x_adv).softmax(1) - s.p_orig).pow(2).mean(1)
        loss = (objective.loss(r) + GAMMA * out_term).sum()
        return torch.autograd.grad(loss, x_adv)[0]

    return set_beta, grad_of


def check_same(s: Setting) -> float:
    """Largest relative difference of the hand-written and manipex gradients (β = 10 and 100)."""
    worst = 0.0
    (set_a, grad_a), (set_b, grad_b) = manipex_loss(s, "gradient"), handwritten_loss(s)
    for beta in BETA:
        set_a(beta)
        set_b(beta)
        x = s.x.clone().requires_grad_(True)
        a, b = grad_a(x), grad_b(x)
        worst = max(worst, ((a - b).abs().max() / a.abs().max().clamp(min=1e-30)).item())
    return worst


def saliency_step(s: Setting) -> Callable[[], None]:
    model = s.model
    t = s.target[:, None]

    def step() -> None:
        x = s.x.detach().requires_grad_(True)
        torch.autograd.grad(model(x).gather(1, t).sum(), x)

    return step


# --------------------------------------------------------------------------------------------


def time_all(fns: Dict[str, Callable[[], None]], warmup: int, repeats: int, budget: float,
             stat: str) -> Tuple[Dict[str, float], int]:
    """Seconds per call of every function (``stat`` over interleaved rounds) and the rounds run.

    Rounds stop early once ``budget`` seconds have gone by (at least 3 rounds are run).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    began = time.perf_counter()
    rounds = 0
    while rounds < repeats and (rounds < 3 or time.perf_counter() - began < budget):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
        rounds += 1
    reduce = statistics.median if stat == "median" else min
    return {name: reduce(v) for name, v in samples.items()}, rounds


def verdict(value: float, limit: float, applies: bool) -> str:
    if not applies:
        return ""
    return f"<= {limit:g}  {'PASS' if value <= limit else 'MISS'}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=15.0,
                        help="seconds of timed rounds per batch size before no further round starts")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="median of the rounds (default) or min (on a busy machine)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=500, help="length of the β schedule 10 -> 100")
    parser.add_argument("--fixed-beta", action="store_true", help="keep β at 10 (no schedule)")
    parser.add_argument("--no-zennit", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    zennit = None if args.no_zennit else import_zennit()
    if args.no_zennit:
        print("zennit: not available (--no-zennit)")

    print(f"manipex {getattr(manipex, '__version__', '?')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, MNIST CNN (random init, eval) on 1x28x28, "
          f"TargetMap + gamma={GAMMA:g} output term, Adam lr={LR:g}, "
          f"beta {'fixed at 10' if args.fixed_beta else f'10 -> 100 over {args.steps} steps'}; "
          f"{args.stat} of up to {args.repeats} rounds after {args.warmup} warm-up calls")
    if hasattr(os, "getloadavg"):
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
              "(others' load inflates and scatters the times)")
    rows = ["manipex gradient", "manipex lrp", "hand-written gradient"]
    if zennit is not None:
        rows.append("zennit lrp EpsilonPlusFlat")
    rows.append("saliency (fwd+bwd)")

    results: Dict[int, Dict[str, float]] = {}
    rounds: Dict[int, int] = {}
    for batch in args.batches:
        s = Setting(batch, args.steps, args.fixed_beta)
        diff = check_same(s)
        if diff > 1e-4:
            print(f"WARNING: batch {batch}: hand-written and manipex gradients differ "
                  f"(max relative difference {diff:.2e})")
        fns = {
            rows[0]: stepper(s, *manipex_loss(s, "gradient")),
            rows[1]: stepper(s, *manipex_loss(s, "lrp")),
            rows[2]: stepper(s, *handwritten_loss(s)),
        }
        if zennit is not None:
            fns[rows[3]] = stepper(s, *zennit_loss(s, zennit))
        fns[rows[-1]] = saliency_step(s)
        secs, rounds[batch] = time_all(fns, args.warmup, args.repeats, args.budget, args.stat)
        results[batch] = {name: 1e3 * t / batch for name, t in secs.items()}
        print(f"  batch {batch}: done (hand-written vs manipex gradient: max relative "
              f"difference {diff:.1e})", file=sys.stderr, flush=True)

    largest = max(args.batches)
    width = max(len(r) for r in rows) + 2
    head = "".join(f"{f'batch {b}':>12}" for b in args.batches)
    print()
    print(f"{'ms per image':<{width}}{head}")
    for name in rows:
        print(f"{name:<{width}}" + "".join(f"{results[b][name]:>12.3f}" for b in args.batches))
    print(f"{'(timed rounds)':<{width}}" + "".join(f"{rounds[b]:>12d}" for b in args.batches))
    print()
    print(f"{'ratio':<{width + 6}}" + "".join(f"{f'batch {b}':>12}" for b in args.batches)
          + f"   target (batch {largest})")
    ratios = [("manipex gradient / hand-written", rows[0], rows[2], 1.1),
              ("manipex lrp / manipex gradient", rows[1], rows[0], 1.5)]
    if zennit is not None:
        ratios.append(("zennit lrp / manipex gradient", rows[3], rows[0], None))
        ratios.append(("manipex lrp / zennit lrp", rows[1], rows[3], None))
    for label, num, den, limit in ratios:
        values = {b: results[b][num] / results[b][den] for b in args.batches}
        line = f"{label:<{width + 6}}" + "".join(f"{values[b]:>12.2f}" for b in args.batches)
        if limit is not None:
            line += "   " + verdict(values[largest], limit, True)
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
