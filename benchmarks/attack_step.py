#!/usr/bin/env python
"""Cost of one input-attack step of manipex, next to a hand-written plain-torch step.

Run from the repository root::

    python benchmarks/attack_step.py                       # batches 1 and 64, 2 threads
    python benchmarks/attack_step.py --batches 1 16 64 --repeats 21 --threads 4
    python benchmarks/attack_step.py --device cuda --models vgg16,resnet50 --batches 64
    python benchmarks/attack_step.py --batches 2 --channels-last --autocast bf16   # exactness

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
* ``plain lower bound``: what no gradient-map attack step can undercut, in plain torch on the same
  softplus net: ``out = net(x); g = autograd.grad(out.gather(1, t).sum(), x, create_graph=True);
  autograd.grad(g.pow(2).sum(), x)`` (forward, backward with ``create_graph``, backward of that);
  no normalisation, no output term, no optimiser;
* ``saliency``: one plain forward + backward (no ``create_graph``), for scale.

and the ratios ``manipex gradient / hand-written`` (target <= 1.1 at the largest batch),
``manipex lrp / manipex gradient`` (target <= 1.5 at the largest batch), ``manipex gradient /
plain lower bound`` (target <= 2, printed as "manipex gradient step <= 2x the plain lower bound:
ok/miss") and ``manipex lrp / plain lower bound`` (informational).

Models (``--models``, comma-separated): ``mnist`` (the default; ``manipex.models.mnist_cnn()``,
1x28x28), ``vgg16`` and ``resnet50`` (``manipex.models.vgg16()`` / ``resnet50()``, 1000 classes,
3x224x224), all random initialisation (seed 0), eval mode. The 224x224 models are meant for a GPU
(``--device cuda --models vgg16,resnet50 --batches 64``); on 2 CPU cores one VGG16 step of one
image takes seconds. On ResNet-50 Zennit gets its ``ResNetCanonizer``.

Device (``--device``, default cpu): model, inputs and target maps live on it; on cuda every timed
call is enclosed in ``torch.cuda.synchronize()`` (before the clock starts and before it stops).

Exactness of the fast formats (float32 contiguous stays the default and is what the rows above
time): ``--channels-last`` runs the manipex gradient and LRP steps with the softplus model and
``x_adv`` in ``torch.channels_last`` memory format, ``--autocast bf16`` runs the map and the step
(explain, loss, ``autograd.grad``) under ``torch.autocast(device_type, dtype=torch.bfloat16)``
(on CPU this works, slowly); each adds timed rows (``[channels_last]``, ``[bf16]``) and, at the
largest batch, a table of what it changes: the mean per-image cosine similarity and the max
relative difference (``max |a - b| / max |b|``) of the map (``manipex.relevance`` of the
``create_graph`` map) and of the step's gradient w.r.t. ``x_adv``, against the float32 contiguous
run on the same inputs and the same weights, at β = 10 and 100 (the worse of the two).

Timing: every step function is called ``--warmup`` times, then all are called in turn for up to
``--repeats`` rounds (so that a change of load hits all alike; no round starts after
``--budget`` seconds per batch size, at least 3 are run) and the median (``--stat min`` on a busy
machine) is reported. ``torch.set_num_threads`` is ``--threads``: on a machine whose cores are
busy with other work, several threads make small batches very slow (threads waiting for each
other), so compare runs only at the same load (printed at the start).
The β of the softplus units follows Dombrowski's schedule 10 -> 100 over ``--steps`` steps as in
the attack (``--fixed-beta`` keeps it at 10). Inputs are uniform in [0, 1], the target the predicted
class, target maps of random images. Before timing, the hand-written and the manipex gradient
steps are checked to give the same gradient w.r.t. ``x_adv`` (at β = 10 and 100).
"""
from __future__ import annotations

import argparse
import contextlib
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
from manipex.models import mnist_cnn, resnet50, vgg16
from manipex.objectives import TargetMap

GAMMA = 100.0
LR = 1e-2
BETA = (10.0, 100.0)


#: ``--models``: label, builder (called after ``torch.manual_seed(0)``; None: the Setting's own
#: MNIST CNN) and input shape.
MODELS: Dict[str, Tuple[str, Optional[Callable[[], nn.Module]], Tuple[int, ...]]] = {
    "mnist": ("MNIST CNN (1x28x28)", None, (1, 28, 28)),
    "vgg16": ("VGG16 (3x224x224, 1000 classes)", vgg16, (3, 224, 224)),
    "resnet50": ("ResNet-50 (3x224x224, 1000 classes)", resnet50, (3, 224, 224)),
}


# --------------------------------------------------------------------------------------------
# The setting shared by all steps


class Setting:
    """Model, batch, target, target maps and the β schedule for one batch size.

    ``model`` (in eval mode, on ``device``) with inputs of ``shape`` replaces the MNIST CNN
    (``benchmarks/graph_lrp.py`` uses this for ResNets)."""

    def __init__(self, batch: int, steps: int, fixed_beta: bool, model: Optional[nn.Module] = None,
                 shape: Tuple[int, ...] = (1, 28, 28), device: str = "cpu") -> None:
        torch.manual_seed(0)
        self.model = (mnist_cnn().eval() if model is None else model).to(device)
        self.x = torch.rand(batch, *shape, device=device)
        with torch.no_grad():
            logits = self.model(self.x)
        self.target = logits.argmax(1)
        self.classes = logits.shape[1]
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
        """A fresh ``x_adv`` leaf (in ``x``'s memory format) and its Adam optimiser."""
        x_adv = self.x.clone().requires_grad_(True)
        return x_adv, torch.optim.Adam([x_adv], lr=LR)

    def variant(self, channels_last: bool = False, autocast: Optional[str] = None) -> "Setting":
        """The same setting (same weights, inputs, targets; the β schedule restarts) with the
        model and inputs in ``torch.channels_last`` format and/or the manipex steps under bf16
        autocast (read by :func:`manipex_parts`)."""
        v = copy.copy(self)
        v.calls = 0
        if channels_last:
            v.model = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
            v.x = self.x.contiguous(memory_format=torch.channels_last)
        v.autocast = autocast
        return v

    autocast: Optional[str] = None  # "bf16": manipex's map and step under torch.autocast


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


def autocast_context(s: Setting):
    """``torch.autocast`` to bfloat16 on the setting's device where ``s.autocast`` asks for it."""
    if s.autocast == "bf16":
        return torch.autocast(device_type=s.x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def manipex_parts(s: Setting, method: str, **explain_kw
                  ) -> Tuple[SetBeta, Callable[[Tensor], Tuple[Tensor, Tensor]]]:
    """``set_beta`` and ``x_adv -> (relevance map, d loss / d x_adv)`` of manipex's ``method``
    attack loss (``explain_kw``: e.g. its composite), under ``s.autocast``."""
    attacked, handle = surgery.smooth_copy(s.model, BETA[0])
    objective = TargetMap(s.target_maps)

    def set_beta(beta: float) -> None:
        handle.beta = beta

    def map_and_grad(x_adv: Tensor) -> Tuple[Tensor, Tensor]:
        with autocast_context(s):
            h = manipex.explain(attacked, x_adv, method, s.target, create_graph=True, **explain_kw)
            r = manipex.relevance(h)
            out_term = (attacked(x_adv).softmax(1) - s.p_orig).pow(2).mean(1)
            loss = (objective.loss(r) + GAMMA * out_term).sum()
            return r, torch.autograd.grad(loss, x_adv)[0]

    return set_beta, map_and_grad


def manipex_loss(s: Setting, method: str, **explain_kw) -> Tuple[SetBeta, Grad]:
    """The attack loss of manipex's ``method`` map (``explain_kw``: e.g. its composite)."""
    set_beta, map_and_grad = manipex_parts(s, method, **explain_kw)
    return set_beta, lambda x_adv: map_and_grad(x_adv)[1]


def plain_softplus_copy(model: nn.Module) -> Tuple[nn.Module, List[nn.Softplus]]:
    """A deep copy with every ``nn.ReLU`` module swapped for ``nn.Softplus(beta=10)``, in plain
    torch, and the swapped units (to set β)."""
    attacked = copy.deepcopy(model)
    units = []
    for parent in list(attacked.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                unit = nn.Softplus(beta=BETA[0])
                setattr(parent, name, unit)
                units.append(unit)
    return attacked, units


def handwritten_loss(s: Setting) -> Tuple[SetBeta, Grad]:
    """The gradient-map attack loss in plain torch (no manipex in the timed code)."""
    attacked, units = plain_softplus_copy(s.model)
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


def lower_bound_step(s: Setting) -> Callable[[], None]:
    """Forward, backward with ``create_graph`` and the backward of that, on the softplus net in
    plain torch (β = 10): the least any gradient-map attack step has to do."""
    net, _ = plain_softplus_copy(s.model)
    t = s.target[:, None]

    def step() -> None:
        x = s.x.detach().requires_grad_(True)
        out = net(x)
        (g,) = torch.autograd.grad(out.gather(1, t).sum(), x, create_graph=True)
        torch.autograd.grad(g.pow(2).sum(), x)

    return step


def zennit_loss(s: Setting, zennit, resnet: bool = False) -> Tuple[SetBeta, Grad]:
    """Zennit's EpsilonPlusFlat map with ``create_graph=True`` in the same loss
    (``resnet``: with Zennit's ``ResNetCanonizer``)."""
    composites, _, attribution = zennit
    attacked, handle = surgery.smooth_copy(s.model, BETA[0])  # hook-free: the output term
    hooked, zhandle = surgery.smooth_copy(s.model, BETA[0])   # Zennit's hooks live here
    canonizers = []
    if resnet:
        from zennit.torchvision import ResNetCanonizer  # imported by import_zennit under the stub

        canonizers = [ResNetCanonizer()]
    attributor = attribution.Gradient(model=hooked,
                                      composite=composites.EpsilonPlusFlat(canonizers=canonizers),
                                      create_graph=True)
    attributor.__enter__()  # registered once, outside the timing, for the life of the benchmark
    onehot = torch.nn.functional.one_hot(s.target, s.classes).to(s.x.dtype)
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


def compare(a: Tensor, b: Tensor) -> Tuple[float, float]:
    """Mean per-image cosine similarity and max relative difference (``max|a-b| / max|b|``) of
    ``a`` against the reference ``b`` (in float64; two zero images count as cosine 1)."""
    a, b = a.detach().double().flatten(1), b.detach().double().flatten(1)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-30)
    both_zero = (a.abs().amax(1) == 0) & (b.abs().amax(1) == 0)
    cos = torch.where(both_zero, torch.ones_like(cos), cos)
    rel = (a - b).abs().max() / b.abs().max().clamp(min=1e-30)
    return float(cos.mean()), float(rel)


def exactness(s: Setting, variant: Setting, method: str) -> Dict[str, Tuple[float, float]]:
    """What ``variant`` changes in ``method``'s map and step gradient against ``s`` (float32,
    contiguous): ``{"map": (cos, rel), "grad": (cos, rel)}``, the worse over β = 10 and 100
    (lower cosine, larger relative difference)."""
    (set_ref, ref), (set_var, var) = manipex_parts(s, method), manipex_parts(variant, method)
    worst = {"map": (1.0, 0.0), "grad": (1.0, 0.0)}
    for beta in BETA:
        set_ref(beta)
        set_var(beta)
        r_ref, g_ref = ref(s.x.clone().requires_grad_(True))
        r_var, g_var = var(variant.x.clone().requires_grad_(True))
        for key, a, b in (("map", r_var, r_ref), ("grad", g_var, g_ref)):
            cos, rel = compare(a, b)
            worst[key] = (min(worst[key][0], cos), max(worst[key][1], rel))
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
             stat: str, device: Optional[torch.device] = None) -> Tuple[Dict[str, float], int]:
    """Seconds per call of every function (``stat`` over interleaved rounds) and the rounds run.

    Rounds stop early once ``budget`` seconds have gone by (at least 3 rounds are run). On a
    cuda ``device`` every timed call is enclosed in ``torch.cuda.synchronize``.
    """
    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    began = time.perf_counter()
    rounds = 0
    while rounds < repeats and (rounds < 3 or time.perf_counter() - began < budget):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
        rounds += 1
    reduce = statistics.median if stat == "median" else min
    return {name: reduce(v) for name, v in samples.items()}, rounds


def verdict(value: float, limit: float, applies: bool) -> str:
    if not applies:
        return ""
    return f"<= {limit:g}  {'ok' if value <= limit else 'miss'}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mnist",
                        help=f"comma-separated, of {', '.join(MODELS)} (default mnist)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
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
    parser.add_argument("--channels-last", action="store_true",
                        help="also time the manipex steps in torch.channels_last and report the change")
    parser.add_argument("--autocast", choices=("bf16",), default=None,
                        help="also time the manipex steps under bf16 autocast and report the change")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for key in models:
        if key not in MODELS:
            parser.error(f"--models: unknown {key!r}, choose from {', '.join(MODELS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    torch.set_num_threads(args.threads)
    zennit = None if args.no_zennit else import_zennit()
    if args.no_zennit:
        print("zennit: not available (--no-zennit)")

    print(f"manipex {getattr(manipex, '__version__', '?')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; models (random init, eval): {', '.join(MODELS[k][0] for k in models)}; "
          f"TargetMap + gamma={GAMMA:g} output term, Adam lr={LR:g}, "
          f"beta {'fixed at 10' if args.fixed_beta else f'10 -> 100 over {args.steps} steps'}; "
          f"{args.stat} of up to {args.repeats} rounds after {args.warmup} warm-up calls")
    if hasattr(os, "getloadavg"):
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
              "(others' load inflates and scatters the times)")
    variants: List[Tuple[str, bool, Optional[str]]] = []  # (suffix, channels_last, autocast)
    if args.channels_last:
        variants.append(("channels_last", True, None))
    if args.autocast:
        variants.append((args.autocast, False, args.autocast))
    for key in models:
        run_model(key, args, device, zennit, variants)
    return 0


def run_model(key: str, args, device: torch.device, zennit,
              variants: List[Tuple[str, bool, Optional[str]]]) -> None:
    """Times and prints every row for one model of ``--models``."""
    label, build, shape = MODELS[key]
    rows = ["manipex gradient", "manipex lrp", "hand-written gradient"]
    if zennit is not None:
        rows.append("zennit lrp EpsilonPlusFlat")
    rows += ["plain lower bound", "saliency (fwd+bwd)"]
    for suffix, _, _ in variants:
        rows += [f"manipex gradient [{suffix}]", f"manipex lrp [{suffix}]"]

    results: Dict[int, Dict[str, float]] = {}
    rounds: Dict[int, int] = {}
    exact: Dict[Tuple[str, str], Dict[str, Tuple[float, float]]] = {}
    largest = max(args.batches)
    print(f"\n== {label} on {device}", flush=True)
    for batch in args.batches:
        model = None
        if build is not None:
            torch.manual_seed(0)
            model = build().eval()
        s = Setting(batch, args.steps, args.fixed_beta, model=model, shape=shape, device=str(device))
        diff = check_same(s)
        if diff > 1e-4:
            print(f"WARNING: batch {batch}: hand-written and manipex gradients differ "
                  f"(max relative difference {diff:.2e})")
        fns = {
            "manipex gradient": stepper(s, *manipex_loss(s, "gradient")),
            "manipex lrp": stepper(s, *manipex_loss(s, "lrp")),
            "hand-written gradient": stepper(s, *handwritten_loss(s)),
        }
        if zennit is not None:
            fns["zennit lrp EpsilonPlusFlat"] = stepper(s, *zennit_loss(s, zennit, resnet=key == "resnet50"))
        fns["plain lower bound"] = lower_bound_step(s)
        fns["saliency (fwd+bwd)"] = saliency_step(s)
        for suffix, channels_last, autocast in variants:
            v = s.variant(channels_last, autocast)
            fns[f"manipex gradient [{suffix}]"] = stepper(v, *manipex_loss(v, "gradient"))
            fns[f"manipex lrp [{suffix}]"] = stepper(v, *manipex_loss(v, "lrp"))
            if batch == largest:
                for method in ("gradient", "lrp"):
                    exact[(suffix, method)] = exactness(s, v, method)
        secs, rounds[batch] = time_all(fns, args.warmup, args.repeats, args.budget, args.stat, device)
        results[batch] = {name: 1e3 * t / batch for name, t in secs.items()}
        print(f"  batch {batch}: done (hand-written vs manipex gradient: max relative "
              f"difference {diff:.1e})", file=sys.stderr, flush=True)

    width = max(len(r) for r in rows) + 2
    head = "".join(f"{f'batch {b}':>12}" for b in args.batches)
    print()
    print(f"{'ms per image':<{width}}{head}")
    for name in rows:
        print(f"{name:<{width}}" + "".join(f"{results[b][name]:>12.3f}" for b in args.batches))
    print(f"{'(timed rounds)':<{width}}" + "".join(f"{rounds[b]:>12d}" for b in args.batches))
    print()
    labels = ["manipex gradient / hand-written", "manipex lrp / manipex gradient",
              "manipex gradient / plain lower bound", "manipex lrp / plain lower bound"]
    lw = max(max(len(x) for x in labels) + 4, width + 6)
    print(f"{'ratio':<{lw}}" + "".join(f"{f'batch {b}':>12}" for b in args.batches)
          + f"   target (batch {largest})")
    ratios = [(labels[0], rows[0], rows[2], 1.1),
              (labels[1], rows[1], rows[0], 1.5),
              (labels[2], rows[0], "plain lower bound", 2.0),
              (labels[3], rows[1], "plain lower bound", None)]
    if zennit is not None:
        ratios.append(("zennit lrp / manipex gradient", rows[3], rows[0], None))
        ratios.append(("manipex lrp / zennit lrp", rows[1], rows[3], None))
    for suffix, _, _ in variants:
        ratios.append((f"[{suffix}] gradient / float32", f"manipex gradient [{suffix}]", rows[0], None))
        ratios.append((f"[{suffix}] lrp / float32", f"manipex lrp [{suffix}]", rows[1], None))
    for name, num, den, limit in ratios:
        values = {b: results[b][num] / results[b][den] for b in args.batches}
        line = f"{name:<{lw}}" + "".join(f"{values[b]:>12.2f}" for b in args.batches)
        if limit is not None:
            line += "   " + verdict(values[largest], limit, True)
        print(line)
    to_bound = results[largest][rows[0]] / results[largest]["plain lower bound"]
    lrp_bound = results[largest][rows[1]] / results[largest]["plain lower bound"]
    print(f"\nmanipex gradient step <= 2x the plain lower bound: {'ok' if to_bound <= 2.0 else 'miss'} "
          f"({to_bound:.2f}x at batch {largest}; LRP step: {lrp_bound:.2f}x, informational)")
    if exact:
        print(f"\nexactness at batch {largest} against float32 contiguous (same inputs and weights; "
              f"worse of beta 10 and 100):")
        print(f"{'variant':<16}{'method':<10}{'map cos':>12}{'map max rel':>14}{'grad cos':>12}"
              f"{'grad max rel':>14}")
        for (suffix, method), d in exact.items():
            print(f"{suffix:<16}{method:<10}{d['map'][0]:>12.6f}{d['map'][1]:>14.2e}"
                  f"{d['grad'][0]:>12.6f}{d['grad'][1]:>14.2e}")


if __name__ == "__main__":
    sys.exit(main())
