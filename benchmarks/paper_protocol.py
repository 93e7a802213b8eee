#!/usr/bin/env python
"""Dombrowski et al. 2019's attack protocol, run as its reference code runs it and as manipex does.

Run from the repository root::

    python benchmarks/paper_protocol.py                                # all models, gradient + lrp
    python benchmarks/paper_protocol.py --models mnist --methods gradient --images 8 --device cuda
    OMP_NUM_THREADS=1 python benchmarks/paper_protocol.py --steps 20 --images 2 --threads 1  # smoke

On the same model, images, target maps, method and valid range, three ways of attacking are
timed and scored:

* ``reference``: the loop of the reference code (``pankessel/adv_explanation_ref``,
  ``src/run_attack.py`` with ``--beta_growth``), re-implemented here in plain torch: one image at
  a time, Adam on ``x_adv`` (lr ``--ref-lr``, 2e-4), ``--steps`` (1500) steps, at step ``i`` every
  ReLU is ``Softplus(β_i)`` with ``β_i = 10 * (100 / 10) ** (i / steps)`` (the reference's
  ``get_beta``: β ends just below 100), loss
  ``1e11 * mse(h(x_adv), h_t) + 1e6 * mse(softmax(x_adv), softmax(x))`` (``F.mse_loss``: means
  over pixels and classes; ``--ref-weights``), ``x_adv`` clamped to the valid range after each
  step, no budget, the last iterate returned. manipex is used only for the map on the softplus
  copy: :func:`manipex.surgery.smooth_copy` (ReLU -> Softplus, max-pools stay hard as in the
  reference), ``manipex.explain(..., create_graph=True)`` and :func:`manipex.relevance`
  (``sum_c |h_c|`` normalised to sum 1, as the reference's ``get_expl``);
* ``manipex default``: ``manipex.attacks.manipulate_input(model, x, TargetImage(x_target),
  method)`` with all its defaults (batched; 500 steps, Adam lr 1e-2, gamma 100 on maps rescaled
  to mean 1 per pixel, β 10 -> 100, smoothed max-pools, L∞ budget ``eps="auto"`` = 0.1, keep the
  best class-keeping iterate checked every 10 steps, revert images whose class changed);
* ``manipex eps=ref``: the same with the L∞ budget the reference's images reached in the end
  (the largest ``|x_adv - x|`` over its images): manipex held to the image change the reference
  made;
* ``manipex eps=inf``: the same with ``eps=math.inf``, the reference's unbounded setting (with
  lr 1e-2 manipex then changes the image far more than the reference's lr 2e-4 does).

What is *not* the reference's, and why:

* the model, data and explainer: the reference attacks an ImageNet VGG16 on ImageNet-normalised
  inputs with its own layer classes; here the models are manipex's (MNIST CNN, a small
  CIFAR-size VGG, a CIFAR ResNet-8) on inputs in [0, 1], and the maps are manipex's
  (``lrp``: its default composite, zB on the first layer and z+ elsewhere as the reference);
* lr 2e-4 and the weights 1e11 / 1e6 are the reference's numbers, tuned there for inputs in
  ImageNet-normalised units (a step of 2e-4 is ~4.5e-5 in [0, 1] units) and for 224x224 maps
  (pixels of ~2e-5); they are used unchanged here (``--ref-lr``, ``--ref-weights`` change them);
* the original map, output and target map: the reference computes them on the softplus net at
  β = 1000; here on the ReLU model (as manipex does; at β = 1000 the difference is tiny), so that
  both ways chase the same target map;
* the explained class of the target image: the reference explains ``x_target`` for its own
  predicted class; manipex's ``TargetImage`` explains it for the attacked image's class. By
  default both ways use manipex's target maps (``--target-class attacked``); with
  ``--target-class own`` both use the reference's (manipex then gets ``TargetMap(maps)``);
* the gradient: the reference calls ``total_loss.backward()`` with the model's parameters
  requiring grad (parameter gradients are computed and thrown away) and reuses the explanation's
  forward pass for the output term; here only ``d loss / d x_adv`` is computed
  (``torch.autograd.grad``) and the output term has its own forward pass (as manipex does), so
  the reference time here is not an upper bound of the reference code's.

Timing (wall clock, ``torch.cuda.synchronize`` on CUDA): the reference from its per-image set-up
(original output, target map) to its last step, for all images; manipex the whole
``manipulate_input`` call (target maps, attack, final maps). Each way runs once with 1 step
beforehand to warm up. Scores, per image and then averaged: MSE, PCC and SSIM of the relevance
map of the final ``x_adv`` on the ReLU model with the target map (:mod:`manipex.metrics`; the
reference evaluates on the ReLU net too), the PCC before the attack, the fraction of images whose
predicted class is unchanged, and the image change (MSE and L∞ of ``x_adv - x``), so that a
reader sees that the budgets differ.

Target (the issue): manipex >= 10x faster per image than the reference at equal or better final
PCC (``>= reference - 0.01``, the mean over the reference's images), per model, method and
manipex way. manipex attacks ``--images`` (16) in one batch, as a user would; the reference
attacks the first ``--ref-images`` (4) of them one at a time (its cost per image does not depend
on how many, and 1500 steps per image are long), so the PCCs are compared on those.

Models: ``mnist``: ``manipex.models.load_default("mnist")``, the first ``--images`` test images
of MNIST-5k attacked, the next ``--images`` as target images; ``vgg``: a small VGG-BN for 3x32x32
(``benchmarks/explainers.py``; ``--vgg vgg16``: the zoo's ``vgg16(input_size=32)``) and
``resnet``: ``manipex.models.cifar_resnet(8)``, both randomly initialised (seed ``--seed``), in
eval mode, on uniform random images in [0, 1] (targets: other random images).
``torch.set_num_threads`` is ``--threads``. ``--manipex-steps`` overrides manipex's default
of 500 steps (for quick checks only: the comparison is with manipex's defaults).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manipex
from manipex import metrics, surgery
from manipex.attacks import manipulate_input
from manipex.objectives import Objective, TargetImage, TargetMap

REF_LR = 2e-4
REF_WEIGHTS = (1e11, 1e6)
REF_BETA = (10.0, 100.0)
PCC_TOL = 0.01      # "equal" PCC: manipex's mean PCC may be this much below the reference's
SPEEDUP = 10.0      # the target
CLAMP = (0.0, 1.0)  # the valid range of every model's inputs here
WAYS = ("reference", "manipex default", "manipex eps=ref", "manipex eps=inf")


# --------------------------------------------------------------------------------------------
# Models and images


def small_vgg() -> nn.Module:
    """The small VGG-BN of ``benchmarks/explainers.py`` (non-trivial BatchNorm statistics)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from explainers import small_vgg as build

    return build()


def setting(name: str, n: int, seed: int, vgg: str) -> Tuple[nn.Module, Tensor, Tensor]:
    """``(model, x, x_target)`` of ``--models`` entry ``name`` with ``n`` images each."""
    if name == "mnist":
        model = manipex.models.load_default("mnist", progress=False)
        x, _ = manipex.data.load("mnist5k", split="test")
        if 2 * n > x.shape[0]:
            raise SystemExit(f"--images {n}: MNIST-5k test has {x.shape[0]} images, {2 * n} needed")
        return model, x[:n], x[n:2 * n]
    torch.manual_seed(seed)
    if name == "vgg":
        model = small_vgg() if vgg == "small" else manipex.models.vgg16(10, input_size=32)
    else:
        model = manipex.models.cifar_resnet(8)
    images = torch.rand(2 * n, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    return model, images[:n], images[n:]


MODELS = {
    "mnist": "MNIST CNN, trained (1x28x28, MNIST-5k test images)",
    "vgg": "VGG for 3x32x32, random init (uniform random images)",
    "resnet": "CIFAR ResNet-8, random init (uniform random images)",
}


# --------------------------------------------------------------------------------------------
# The two ways


def maps_of(model: nn.Module, x: Tensor, method: str, target: Optional[Tensor]) -> Tensor:
    """Normalised relevance maps of the model as it is (no graph)."""
    return manipex.relevance(manipex.explain(model, x, method, target)).detach()


def ref_beta(step: int, steps: int) -> float:
    """The reference's ``get_beta``: exponential growth 10 -> 100, ``i / num_iter``."""
    b0, b1 = REF_BETA
    return b0 * (b1 / b0) ** (step / steps)


def reference_attack(model: nn.Module, x: Tensor, x_target: Tensor, method: str, classes: Tensor,
                     target_class: str, steps: int, lr: float, weights: Sequence[float]) -> Tensor:
    """The reference code's loop, one image at a time; returns the last iterates ``(N, ...)``."""
    attacked, handle = surgery.smooth_copy(model, ref_beta(0, steps))  # hard max-pools
    w_expl, w_out = weights
    out = []
    for i in range(x.shape[0]):
        xi, ci = x[i:i + 1], classes[i:i + 1]
        with torch.no_grad():
            p_orig = model(xi).softmax(1)
        h_t = maps_of(model, x_target[i:i + 1], method, ci if target_class == "attacked" else None)
        x_adv = xi.clone().requires_grad_(True)
        adam = torch.optim.Adam([x_adv], lr=lr)
        for step in range(steps):
            handle.beta = ref_beta(step, steps)
            h = manipex.relevance(manipex.explain(attacked, x_adv, method, ci, create_graph=True))
            p = attacked(x_adv).softmax(1)
            loss = w_expl * F.mse_loss(h, h_t) + w_out * F.mse_loss(p, p_orig)
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv.grad = grad
                adam.step()
                x_adv.clamp_(*CLAMP)
        out.append(x_adv.detach())
    return torch.cat(out)


def manipex_attack(model: nn.Module, x: Tensor, objective: Objective, method: str,
                   eps, steps: Optional[int] = None) -> Tuple[Tensor, int]:
    """``manipulate_input`` with its defaults but ``eps`` (and ``steps``, None: its default);
    returns x_adv and the steps run."""
    extra = {} if steps is None else {"steps": steps}
    result = manipulate_input(model, x, objective, method, eps=eps, progress=False, **extra)
    return result.x_adv.detach(), result.steps_run


# --------------------------------------------------------------------------------------------
# Scores and timing


@dataclass
class Row:
    model: str
    method: str
    way: str
    images: int
    steps: int
    wall_s: float
    mse: float
    pcc: float
    ssim: float
    pcc_before: float
    class_kept: float
    img_mse: float
    img_linf: float
    pcc_shared: float = float("nan")
    speedup: float = 1.0

    @property
    def s_per_image(self) -> float:
        return self.wall_s / self.images


def score(model: nn.Module, x: Tensor, x_adv: Tensor, method: str, classes: Tensor,
          target_maps: Tensor, shared: int) -> Dict[str, float]:
    """Mean map similarity to the target (ReLU model) and the image change; ``pcc_shared``: the
    mean PCC over the first ``shared`` images (those the reference attacks too)."""
    n = x_adv.shape[0]
    x, classes, target_maps = x[:n], classes[:n], target_maps[:n]
    r_before, r_after = maps_of(model, x, method, classes), maps_of(model, x_adv, method, classes)
    with torch.no_grad():
        kept = (model(x_adv).argmax(1) == classes).float()
    pcc = metrics.pcc(r_after, target_maps)
    return {
        "mse": metrics.mse(r_after, target_maps).mean().item(),
        "pcc": pcc.mean().item(), "pcc_shared": pcc[:shared].mean().item(),
        "ssim": metrics.ssim(r_after, target_maps).mean().item(),
        "pcc_before": metrics.pcc(r_before, target_maps).mean().item(),
        "class_kept": kept.mean().item(),
        "img_mse": (x_adv - x).pow(2).flatten(1).mean(1).mean().item(),
        "img_linf": (x_adv - x).abs().flatten(1).amax(1).max().item(),
    }


def timed(fn: Callable[[], object], device: torch.device) -> Tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def run_model(name: str, args: argparse.Namespace, device: torch.device) -> List[Row]:
    label = MODELS[name]
    model, x, x_target = setting(name, args.images, args.seed, args.vgg)
    model = model.eval().to(device)
    x, x_target = x.to(device), x_target.to(device)
    with torch.no_grad():
        classes = model(x).argmax(1)
    print(f"\n== {name}: {label}; {x.shape[0]} image(s) on {device}", flush=True)
    rows: List[Row] = []
    k = min(args.ref_images, x.shape[0])  # the reference's images: one at a time, so its cost per image
    for method in args.methods:
        own = args.target_class == "own"
        target_maps = maps_of(model, x_target, method, None if own else classes)

        def objective() -> Objective:  # a fresh one per call: prepare() stores the target maps
            return TargetMap(target_maps) if own else TargetImage(x_target)

        ways = {
            WAYS[0]: (lambda s: (reference_attack(model, x[:k], x_target[:k], method, classes[:k],
                                                  args.target_class, s, args.ref_lr, args.ref_weights), s)),
            WAYS[1]: (lambda s: manipex_attack(model, x, objective(), method, "auto", s)),
            # the L-inf budget the reference used in the end (filled in once it has run)
            WAYS[2]: (lambda s: manipex_attack(model, x, objective(), method, reached["linf"], s)),
            WAYS[3]: (lambda s: manipex_attack(model, x, objective(), method, math.inf, s)),
        }
        reached = {"linf": math.inf}
        budgets = {WAYS[0]: args.steps, WAYS[1]: args.manipex_steps, WAYS[2]: args.manipex_steps,
                   WAYS[3]: args.manipex_steps}
        for way, fn in ways.items():
            print(f"  {name} {method}: {way} ...", file=sys.stderr, flush=True)
            fn(1)  # warm-up: lazy initialisation, allocator
            wall, (x_adv, steps_run) = timed(lambda: fn(budgets[way]), device)
            if way == WAYS[0]:
                reached["linf"] = max(float((x_adv - x[:k]).abs().max()), 1e-6)
            rows.append(Row(name, method, way, x_adv.shape[0], steps_run, wall,
                            **score(model, x, x_adv, method, classes, target_maps, k)))
            print(f"  {name} {method}: {way} {wall:.1f} s", file=sys.stderr, flush=True)
        ref = rows[-len(WAYS)]
        for row in rows[-len(WAYS):]:
            row.speedup = ref.s_per_image / row.s_per_image
    return rows


# --------------------------------------------------------------------------------------------
# Output


COLUMNS = [  # header, width, format of the value
    ("method", 22, lambda r: r.method),
    ("way", 16, lambda r: r.way),
    ("steps", 6, lambda r: f"{r.steps:d}"),
    ("wall s", 9, lambda r: f"{r.wall_s:.2f}"),
    ("s/image", 9, lambda r: f"{r.s_per_image:.3f}"),
    ("speed-up", 9, lambda r: f"{r.speedup:.1f}x" if r.speedup >= 1 else f"{r.speedup:.2f}x"),
    ("MSE", 10, lambda r: f"{r.mse:.3e}"),
    ("images", 7, lambda r: f"{r.images:d}"),
    ("PCC", 7, lambda r: f"{r.pcc:.3f}"),
    ("PCC ref imgs", 13, lambda r: f"{r.pcc_shared:.3f}"),
    ("SSIM", 7, lambda r: f"{r.ssim:.3f}"),
    ("PCC0", 7, lambda r: f"{r.pcc_before:.3f}"),
    ("kept", 6, lambda r: f"{r.class_kept:.2f}"),
    ("img MSE", 10, lambda r: f"{r.img_mse:.2e}"),
    ("img Linf", 9, lambda r: f"{r.img_linf:.3f}"),
]


def print_table(rows: List[Row]) -> None:
    head = "".join(f"{h:<{w}}" if i < 2 else f"{h:>{w}}" for i, (h, w, _) in enumerate(COLUMNS))
    print(head)
    print("-" * len(head))
    for r in rows:
        print("".join(f"{f(r):<{w}}" if i < 2 else f"{f(r):>{w}}" for i, (_, w, f) in enumerate(COLUMNS)))


def print_targets(rows: List[Row]) -> None:
    print(f"target: manipex >= {SPEEDUP:g}x faster than the reference at equal or better PCC "
          f"(>= reference - {PCC_TOL:g})")
    for i in range(0, len(rows), len(WAYS)):
        ref = rows[i]
        for row in rows[i + 1:i + len(WAYS)]:
            ok = row.speedup >= SPEEDUP and row.pcc_shared >= ref.pcc - PCC_TOL
            print(f"  {row.model} {row.method:<22} {row.way:<16} {row.speedup:6.2f}x per image, "
                  f"PCC on the reference's images {row.pcc_shared:.3f} vs {ref.pcc:.3f}: {'ok' if ok else 'miss'}")


def write_csv(path: str, rows: List[Row], args: argparse.Namespace) -> None:
    fields = ["model", "method", "way", "images", "steps", "wall_s", "s_per_image", "speedup", "mse",
              "pcc", "pcc_shared", "ssim", "pcc_before", "class_kept", "img_mse", "img_linf"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields + ["device", "threads", "ref_steps", "target_class"])
        for r in rows:
            values = [getattr(r, k) for k in fields]
            writer.writerow(values + [args.device, torch.get_num_threads(), args.steps, args.target_class])


def csv_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=csv_list, default=list(MODELS),
                        help=f"comma-separated, of {','.join(MODELS)} (default all)")
    parser.add_argument("--methods", type=csv_list, default=["gradient", "lrp"],
                        help="comma-separated manipex method names (default gradient,lrp)")
    parser.add_argument("--images", type=int, default=16,
                        help="images manipex attacks per model, in one batch (default 16)")
    parser.add_argument("--ref-images", type=int, default=4,
                        help="the first of them that the reference attacks, one at a time (default 4): its "
                             "cost per image does not depend on how many")
    parser.add_argument("--steps", type=int, default=1500, help="steps of the reference (default 1500)")
    parser.add_argument("--manipex-steps", type=int, default=None,
                        help="steps of manipex (default: its own default, 500); for smoke runs")
    parser.add_argument("--ref-lr", type=float, default=REF_LR)
    parser.add_argument("--ref-weights", type=float, nargs=2, default=list(REF_WEIGHTS),
                        metavar=("EXPL", "OUT"), help="the reference's loss weights (default 1e11 1e6)")
    parser.add_argument("--target-class", choices=("attacked", "own"), default="attacked",
                        help="class for which the target image is explained: the attacked image's "
                             "(manipex's TargetImage, default) or its own (the reference code's)")
    parser.add_argument("--vgg", choices=("small", "vgg16"), default="small",
                        help="VGG for 3x32x32: small VGG-BN (default) or the zoo's vgg16(input_size=32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--csv", metavar="PATH", help="write one row per model, method and way")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {','.join(MODELS)}")
    unknown = [m for m in args.methods if m not in manipex.methods()]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; known: {','.join(manipex.methods())}")
    if min(args.images, args.ref_images, args.steps, args.manipex_steps or 1) < 1:
        parser.error("--images, --ref-images, --steps and --manipex-steps must be >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(f"manipex {manipex.__version__}, torch {torch.__version__}, device {device}, "
          f"{torch.get_num_threads()} threads; reference: {args.steps} Adam steps lr {args.ref_lr:g}, "
          f"weights {args.ref_weights[0]:g} / {args.ref_weights[1]:g}, beta 10 -> 100, one image at a "
          f"time, no budget; manipex: manipulate_input defaults (eps='auto' and eps=inf)"
          f"{'' if args.manipex_steps is None else f' but steps={args.manipex_steps}'}; "
          f"target maps explained for the {args.target_class} class")
    if hasattr(os, "getloadavg") and device.type == "cpu":
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
              "(others' load inflates the times)")
    all_rows: List[Row] = []
    for name in args.models:
        rows = run_model(name, args, device)
        print_table(rows)
        print_targets(rows)
        all_rows += rows
    if args.csv:
        write_csv(args.csv, all_rows, args)
        print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
