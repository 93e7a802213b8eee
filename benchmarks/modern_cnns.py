#!/usr/bin/env python
"""LRP on modern CNNs (issue 24): the LRP map and LRP attack step next to the gradient ones.

Run from the repository root::

    python benchmarks/modern_cnns.py                     # efficientnet_b0, convnext_tiny; 224 px, batch 8
    python benchmarks/modern_cnns.py --batch 2 --repeats 5
    python benchmarks/modern_cnns.py --models efficientnet_b0,convnext_tiny,mobilenet_v3_small
    python benchmarks/modern_cnns.py --attack-steps 2    # also time manipulate_input itself
    python benchmarks/modern_cnns.py --quick             # smoke run: mobilenet_v3_small, 32 px, batch 1
    python benchmarks/modern_cnns.py --quick --models efficientnet_b0,convnext_tiny

Models (``--models``, comma-separated): ``efficientnet_b0``, ``convnext_tiny`` (the default) and
``mobilenet_v3_small``, built as ``manipex.models.<name>(num_classes=1000)`` (torchvision's
structure), random initialisation (seed 0), eval mode, float32, inputs uniform in [0, 1] of
3x``--size``x``--size``, the explained class the predicted one (fixed, as the attack fixes it).

For each model and each method (``gradient``; ``lrp`` with its default composite), two calls are
timed:

* ``map``: ``manipex.explain(model, x, method, target)``: the map as a user computes it;
* ``attack step``: the body of :func:`manipex.attacks.manipulate_input`'s loop, written out with
  manipex's calls: ``r = relevance(explain(net, x_adv, method, target, create_graph=True))``,
  ``loss = (TargetMap(target_maps).loss(r) + gamma * (softmax(net(x_adv)) - p_orig)^2.mean(1)).sum()``
  (gamma = 100; the logits of the output term are the ones the map's own forward computed, which
  the attack reuses through ``manipex.explainers.base.capture_output``; a second forward where
  that helper is missing, and the output says so), ``torch.autograd.grad(loss, x_adv)``, an Adam
  step (lr 1e-2) and the projection onto the L∞ ball of 0.1 around ``x`` and [0, 1]. ``net`` is
  what the attack differentiates with its defaults: for ``gradient`` the Softplus surrogate
  ``manipex.surgery.smooth_copy(model, 10.0)[0]`` (β = 10, the start of the default schedule; the
  step's cost does not depend on β), for ``lrp`` the model as it is (``beta=None``). EfficientNet
  (SiLU) and ConvNeXt (GELU) have no ReLU, so their surrogate is a plain copy: the printout gives
  the number of units swapped.

``step / gradient step``: a row's attack step over the gradient row's of the same model. Target
(issue 24): LRP step <= 1.5x the gradient step, printed per model as ``met (ok)`` / ``missed
(miss)``; it applies as stated at 224 px, batch 8. ``--composite`` chooses LRP's composite.

Measured on 2 CPU cores (torch 2.13, quiet machine, 224 px, batch 8), LRP step / gradient step:

==================  ===============  ============  ===========================================
composite           efficientnet_b0  convnext_tiny
==================  ===============  ============  ===========================================
``epsilon``         0.91x            1.21x         met
``zb_zplus``        1.8-1.9x         3.2x          missed: z+ on inputs of both signs (SiLU,
(the default)                                      GELU, LayerNorm outputs) needs two
                                                   convolutions per layer and their two VJPs
==================  ===============  ============  ===========================================

The z+ rule shares ``(x_i w_ij)^+``: positive inputs through positive weights and negative
inputs through negative ones, ``conv(x+, w+) + conv(x-, w-)``, twice the FLOPs of the layer;
ε reuses the layer's own output. (The identity ``z+ = (conv(x, w) + conv(|x|, |w|)) / 2``
would save one convolution, but it cancels where a neuron has almost no positive contribution,
exactly where z+ divides by a near-zero sum.)

With ``--attack-steps K`` (K > 0) an extra column times ``manipulate_input`` itself (``steps=1``
and ``steps=1+K``, ``keep_best=False, progress=False``, ``beta=None`` for LRP, the defaults else;
same interleaved rounds) and reports the difference per step, (t(1+K) - t(1)) / K: the same
quantity without the set-up, the maps before and after, and the final checks. It is a check of
the written-out step, off by default because it costs ``2 + K`` steps per round.

Timing: ``--warmup`` calls of each function (at least 1), then all functions of one model are
called in turn for ``--repeats`` rounds, so that a change of load hits all alike, and the median
(``--stat min`` on a busy machine) is reported in seconds per call of the whole batch, and every
round's time is printed; on CUDA every call ends with ``torch.cuda.synchronize()``.
``torch.set_num_threads`` is ``--threads`` (default: the cores this process may use). With other
work on the cores, several threads wait for each other and calls become 10-200x slower (seen on 2
shared cores while a test run was going): compare only runs whose rounds agree, or use
``--threads 1`` on a busy machine.

Memory (``peak MB of the step``, MB = 1e6 bytes), measured on the last warm-up call of the attack
step, as ``benchmarks/graph_lrp.py`` and ``benchmarks/create_graph_memory.py`` do: on CUDA
``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats`` minus what was allocated
before the call; on Linux CPUs the growth of the process's peak resident memory (``VmHWM``, reset
via ``/proc/self/clear_refs`` after ``malloc_trim``) over the resident size before the call
(``benchmarks/explainers.py``'s ``peak_mib``; includes allocator slack, compare rows of one run).
The model, its surrogate and the inputs exist before the call and are not counted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

import manipex
from manipex import surgery
from manipex.objectives import TargetMap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_lrp import on_device, warm_up  # noqa: E402

try:  # what manipulate_input uses to reuse the map's forward for the output term
    from manipex.explainers.base import capture_output
except ImportError:  # pragma: no cover - an older manipex: a second forward
    capture_output = None

MODELS = ("efficientnet_b0", "convnext_tiny", "mobilenet_v3_small")
DEFAULT_MODELS = "efficientnet_b0,convnext_tiny"
METHODS = ("gradient", "lrp")
BETA = 10.0     # the start of the attack's default schedule (10 -> 100)
GAMMA = 100.0   # manipulate_input's default
LR = 1e-2       # manipulate_input's default
EPS = 0.1       # eps="auto" on [0, 1] inputs
TARGET = 1.5    # LRP step <= 1.5x the gradient step
OPTIONS: Dict[str, Dict[str, Any]] = {"gradient": {}, "lrp": {}}  # --composite sets LRP's


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def time_rounds(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, List[float]]:
    """Seconds of every call, the functions called in turn for ``repeats`` rounds (as
    ``benchmarks/attack_step.py``'s ``time_all``, keeping the samples; each function of
    :func:`graph_lrp.on_device` waits for the GPU before returning)."""
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def attack_net(model: nn.Module, method: str) -> Tuple[nn.Module, int]:
    """What manipulate_input differentiates with its defaults, and the units swapped."""
    if method == "lrp":
        return model, 0
    net, handle = surgery.smooth_copy(model, BETA)
    return net.eval(), len(getattr(handle, "units", ()))


def step_fn(net: nn.Module, x: Tensor, target: Tensor, method: str, target_maps: Tensor,
            p_orig: Tensor, options: Optional[Dict[str, Any]] = None, box: bool = True) -> Callable[[], Tensor]:
    """One step of manipulate_input's loop on ``net`` (see the module docstring); ``options``
    of the method (default :data:`OPTIONS`), ``box``: also project onto [0, 1] (images; not
    token embeddings). benchmarks/transformer_lrp.py times the same step."""
    options = OPTIONS[method] if options is None else options
    objective = TargetMap(target_maps)
    x_adv = x.clone().requires_grad_(True)
    adam = torch.optim.Adam([x_adv], lr=LR)
    low, high = x - EPS, x + EPS
    if box:
        low, high = low.clamp(min=0.0), high.clamp(max=1.0)

    def step() -> Tensor:
        with torch.enable_grad():
            if capture_output is not None:
                with capture_output(x_adv) as seen:
                    h = manipex.explain(net, x_adv, method, target, create_graph=True, **options)
                logits = seen.output if seen.output is not None else net(x_adv)
            else:
                h = manipex.explain(net, x_adv, method, target, create_graph=True, **options)
                logits = net(x_adv)
            r = manipex.relevance(h)
            out_term = (logits.softmax(1) - p_orig).pow(2).mean(1)
            loss = (objective.loss(r) + GAMMA * out_term).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv.grad = grad
            adam.step()
            x_adv.copy_(torch.minimum(torch.maximum(x_adv, low), high))
        return grad

    return step


def attack_fn(model: nn.Module, x: Tensor, target: Tensor, method: str, target_maps: Tensor,
              steps: int) -> Callable[[], object]:
    """``manipulate_input`` itself for ``steps`` steps."""
    from manipex.attacks import manipulate_input

    extra = {"beta": None} if method == "lrp" else {}
    return lambda: manipulate_input(model, x, TargetMap(target_maps), method, target=target, steps=steps,
                                    method_options=OPTIONS[method], keep_best=False, progress=False, **extra)


def bench_model(name: str, args, device: torch.device) -> Tuple[Dict[str, Dict[str, Any]], str]:
    """Per method: map and step seconds, step peak MiB and (optionally) the attack's per-step
    difference; and a line about the model."""
    torch.manual_seed(0)
    model = getattr(manipex.models, name)(num_classes=1000).eval().to(device)
    params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    target_maps = torch.rand(args.batch, args.size, args.size, device=device)
    with torch.no_grad():
        logits = model(x)
    target, p_orig = logits.argmax(1), logits.softmax(1)

    maps, steps, attacks = {}, {}, {}
    swapped = {}
    for method in METHODS:
        net, swapped[method] = attack_net(model, method)
        maps[method] = on_device(lambda m=method: manipex.explain(model, x, m, target, **OPTIONS[m]), device)
        steps[method] = on_device(step_fn(net, x, target, method, target_maps, p_orig), device)
        if args.attack_steps > 0:
            for k in (1, 1 + args.attack_steps):
                attacks[(method, k)] = on_device(attack_fn(model, x, target, method, target_maps, k), device)

    fns: Dict[str, Callable[[], None]] = {}
    for method in METHODS:
        fns[f"map {method}"] = maps[method]
        fns[f"step {method}"] = steps[method]
    for (method, k), fn in attacks.items():
        fns[f"attack {method} {k}"] = fn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, peaks = warm_up(fns, args.warmup, device)
        print(f"  {name}: warm-up done", file=sys.stderr, flush=True)
        samples = time_rounds(fns, args.repeats)
    print(f"  {name}: {args.repeats} timed round(s) done", file=sys.stderr, flush=True)
    reduce = statistics.median if args.stat == "median" else min
    secs = {key: reduce(v) for key, v in samples.items()}

    out: Dict[str, Dict[str, Any]] = {}
    for method in METHODS:
        row: Dict[str, Any] = {
            "map": secs[f"map {method}"], "step": secs[f"step {method}"], "peak": peaks[f"step {method}"],
            "attack": None, "rounds": samples[f"step {method}"], "map rounds": samples[f"map {method}"]}
        if args.attack_steps > 0:
            row["attack"] = (secs[f"attack {method} {1 + args.attack_steps}"]
                             - secs[f"attack {method} 1"]) / args.attack_steps
        out[method] = row
    line = (f"{name}: {params / 1e6:.2f} M parameters; gradient surrogate smooth_copy(model, {BETA:g}): "
            f"{swapped['gradient']} ReLU unit(s) swapped for Softplus"
            + (" (none: the surrogate is a plain copy)" if swapped["gradient"] == 0 else ""))
    return out, line


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None,
                        help=f"comma-separated, of {', '.join(MODELS)} (default {DEFAULT_MODELS})")
    parser.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="warm-up calls of each function, at least 1 (default 1; memory is read on the last)")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="median of the rounds (default) or min (on a busy machine)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch.set_num_threads (default: the cores this process may use)")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu (default)")
    parser.add_argument("--composite", default="zb_zplus",
                        help="LRP's composite (default zb_zplus, manipex's default; e.g. epsilon)")
    parser.add_argument("--attack-steps", type=int, default=0,
                        help="K > 0: also time manipulate_input at 1 and 1+K steps (default 0: off)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 32 px, batch 1, 1 round (mobilenet_v3_small unless --models)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats = 32, 1, 1
        args.models = args.models or "mobilenet_v3_small"
    args.models = args.models or DEFAULT_MODELS
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            parser.error(f"--models: unknown {m!r}, choose from {', '.join(MODELS)}")
    if not models:
        parser.error("--models: give at least one")
    if args.batch < 1 or args.size < 1 or args.repeats < 1 or args.attack_steps < 0:
        parser.error("--batch, --size and --repeats must be >= 1, --attack-steps >= 0")
    args.warmup = max(1, args.warmup)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    torch.set_num_threads(args.threads)
    if args.composite not in manipex.explainers.composites.composites():
        parser.error(f"--composite: unknown {args.composite!r}")
    OPTIONS["lrp"] = {"composite": args.composite}

    where = (f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu")
    print(f"manipex {getattr(manipex, '__version__', '?')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), device {where}; models (random init, eval, float32): "
          f"{', '.join(models)}; 3x{args.size}x{args.size}, batch {args.batch}; LRP composite "
          f"{args.composite}; {args.stat} of "
          f"{args.repeats} round(s) after {args.warmup} warm-up call(s)", flush=True)
    if hasattr(os, "getloadavg") and device.type == "cpu":
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
              "(others' load inflates and scatters the times)", flush=True)
        if args.threads > 1 and os.getloadavg()[0] >= (os.cpu_count() or 1):
            print(f"WARNING: the CPUs look busy: with {args.threads} threads and other work on the cores, threads "
                  "waiting for each other can make every call many times slower (seen here: 10-200x); "
                  "use a quiet machine or --threads 1", flush=True)
    print("attack step: written out (the body of manipulate_input's loop, timed per step), "
          + ("output term on the map's own forward (capture_output, as the attack does)"
             if capture_output is not None else "output term on a second forward (capture_output missing)")
          + (f"; column 'via attack': manipulate_input at 1 and {1 + args.attack_steps} steps, "
             f"difference per step" if args.attack_steps > 0 else ""), flush=True)
    began = time.perf_counter()
    results: Dict[str, Dict[str, Dict[str, Any]]] = {}
    lines: List[str] = []
    for name in models:
        results[name], line = bench_model(name, args, device)
        lines.append(line)

    mb = lambda mib: "-" if mib is None else f"{mib * 2**20 / 1e6:.0f}"  # noqa: E731
    heads = ["model", "method", "map (s)", "attack step (s)", "step / gradient step", "peak MB of the step"]
    if args.attack_steps > 0:
        heads.append("via attack (s)")
    widths = [max(len(heads[0]), max(len(m) for m in models)) + 2, 10] + [len(h) + 3 for h in heads[2:]]
    print()
    print(heads[0].ljust(widths[0]) + heads[1].ljust(widths[1])
          + "".join(h.rjust(w) for h, w in zip(heads[2:], widths[2:])))
    for name in models:
        grad_step = results[name]["gradient"]["step"]
        for method in METHODS:
            row = results[name][method]
            cells = [f"{row['map']:.3f}", f"{row['step']:.3f}", f"{row['step'] / grad_step:.2f}", mb(row["peak"])]
            if args.attack_steps > 0:
                cells.append(f"{row['attack']:.3f}")
            print(name.ljust(widths[0]) + method.ljust(widths[1])
                  + "".join(c.rjust(w) for c, w in zip(cells, widths[2:])))
    print()
    print("every timed round (s), in the order run (the spread shows others' load):")
    for name in models:
        for method in METHODS:
            row = results[name][method]
            print(f"  {name} {method}: map " + ", ".join(f"{t:.3f}" for t in row["map rounds"])
                  + "; attack step " + ", ".join(f"{t:.3f}" for t in row["rounds"]))
    print()
    applies = args.size == 224 and args.batch == 8
    note = "" if applies else (f"  [setting differs from the target's (224 px, batch 8): "
                               f"{args.size} px, batch {args.batch}]")
    for name in models:
        ratio = results[name]["lrp"]["step"] / results[name]["gradient"]["step"]
        verdict = "met (ok)" if ratio <= TARGET else "missed (miss)"
        print(f"{name}: target: LRP step <= {TARGET:g}x gradient step: {verdict}, {ratio:.2f}x{note}")
    print()
    for line in lines:
        print(line)
    how = ("CUDA max_memory_allocated above the allocation before the call" if device.type == "cuda" else
           "growth of the peak resident memory (VmHWM) over the trimmed resident size before the call")
    print(f"peak MB of the step: {how}, on the last warm-up call; MB = 1e6 bytes. "
          f"Total {time.perf_counter() - began:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
