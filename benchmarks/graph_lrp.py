#!/usr/bin/env python
"""LRP on ResNets: manipex's map next to Zennit's, and an LRP attack step next to a gradient one.

Run from the repository root::

    python benchmarks/graph_lrp.py                        # resnet18 and resnet50, batch 8 on CPU
    python benchmarks/graph_lrp.py --quick                # smoke run: resnet18, batch 2, 1 round
    python benchmarks/graph_lrp.py --device cuda          # batch 64
    python benchmarks/graph_lrp.py --models resnet18 --batch 16 --repeats 9

The models are ``manipex.models.resnet18()`` and ``resnet50()`` (graph models: residual sums),
random initialisation (seed 0), eval mode, float32, inputs uniform in [0, 1] of 3x224x224, the
explained class the predicted one. Two parts, each printed with one column per model:

1. The LRP map. ``manipex``: ``explain(model, x, "lrp", target, composite="epsilon_plus_flat",
   stabilizer=1e-6)`` (Zennit's stabilizer; ε = 1e-6 in both), which traces the model and finds
   BatchNorm and the residual sums itself, all inside the timed call. ``zennit``:
   ``Gradient(model, EpsilonPlusFlat(canonizers=[ResNetCanonizer()]))`` on a deep copy whose
   ``nn.ReLU`` are not in-place, built and registered once outside the timing (hooks and canonizers
   stay on the copy for the whole run, as a user explaining many batches would have them); the
   timed call is ``attributor(x, one_hot(target))``: forward, modified backward. ``manipex
   gradient`` (the plain gradient map) is there for scale. ``cos``: mean per-image cosine of the
   two LRP maps, a check that both compute the same thing (not exactly 1: Zennit's merged
   BatchNorm divides by sqrt(1 + eps), see ``tests/test_zennit_agreement.py``). Target: manipex's
   map time <= 1.0x Zennit's.
2. One attack step, as ``benchmarks/attack_step.py`` defines it (its ``Setting``, ``stepper`` and
   ``manipex_loss``): on the softplus copy of the model (``surgery.smooth_copy``, β following the
   attack's 10 -> 100 schedule), the map with ``create_graph=True``, the ``TargetMap`` loss (a
   scaled MSE of ``manipex.relevance(h)`` to fixed random target maps) plus the output term
   (gamma = 100), its gradient w.r.t. the input perturbation ``x_adv`` (``autograd.grad``, no
   parameter gradients), the Adam step and the projection to [0, 1]. ``lrp`` uses
   ``composite="epsilon_plus_flat"``, ``gradient`` the gradient map. Target: LRP step <= 1.5x
   the gradient step. On CPU, where one LRP step at ``--batch`` would take over ``--step-limit``
   seconds (measured on the warm-up), this part runs at a smaller batch and says so
   (``--step-batch`` fixes the batch).

Timing: ``--warmup`` calls of each function, then all of a part are called in turn for up to
``--repeats`` rounds (at least 3 unless ``--repeats`` is smaller; no round starts after
``--budget`` seconds), and the median (``--stat min`` on a busy machine) is reported, in
milliseconds per image; on CUDA every call ends with ``torch.cuda.synchronize()``.

Memory (MiB, measured on the last warm-up call): on CPU the peak growth of the process's resident
memory during the call (``benchmarks/explainers.py``'s ``peak_mib``: heap trimmed, kernel peak
``VmHWM`` reset, then read; tracemalloc does not see torch's allocator), on CUDA
``torch.cuda.max_memory_allocated()`` minus the memory allocated before the call (tensors held by
torch's caching allocator, not the cache's reserve).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manipex
from manipex.models import resnet18, resnet50

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zennit import import_zennit  # noqa: E402
from attack_step import Setting, manipex_loss, stepper, time_all  # noqa: E402
from explainers import cosine, memory_supported, peak_mib  # noqa: E402

MODELS = {"resnet18": resnet18, "resnet50": resnet50}
SHAPE = (3, 224, 224)
COMPOSITE = "epsilon_plus_flat"
STABILIZER = 1e-6  # Zennit's; both use epsilon = 1e-6
MAP_TARGET, STEP_TARGET = 1.0, 1.5

MPX_MAP, ZEN_MAP, GRAD_MAP = "manipex lrp epsilon_plus_flat", "zennit EpsilonPlusFlat+ResNetCanon", \
    "manipex gradient (scale)"
GRAD_STEP, LRP_STEP = "manipex gradient step", "manipex lrp step"


# --------------------------------------------------------------------------------------------
# Calls, warm-up and memory


def on_device(fn: Callable[[], object], device: torch.device, keep: Optional[Dict[str, object]] = None,
              name: str = "") -> Callable[[], None]:
    """``fn`` that waits for the GPU before returning (CUDA) and keeps its result in ``keep[name]``."""

    def run() -> None:
        out = fn()
        if keep is not None:
            keep[name] = out
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def peak_memory(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak memory of one call of ``fn`` in MiB (see the module docstring), None where unmeasurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    return peak_mib(fn) if memory_supported() else None


def warm_up(fns: Dict[str, Callable[[], None]], calls: int, device: torch.device
            ) -> Tuple[Dict[str, float], Dict[str, Optional[float]]]:
    """Calls every function ``calls`` times (at least once); the seconds and the peak memory of
    the last call of each."""
    secs: Dict[str, float] = {}
    peaks: Dict[str, Optional[float]] = {}
    for name, fn in fns.items():
        for i in range(max(1, calls)):
            start = time.perf_counter()
            if i == max(1, calls) - 1:
                peaks[name] = peak_memory(fn, device)
            else:
                fn()
            secs[name] = time.perf_counter() - start
    return secs, peaks


# --------------------------------------------------------------------------------------------
# Part 1: the LRP map


def zennit_map(model: nn.Module, x: Tensor, target: Tensor, classes: int, zennit) -> Callable[[], Tensor]:
    """Zennit's EpsilonPlusFlat map with ResNetCanonizer; hooks registered now, for the run."""
    composites, _, attribution = zennit
    from zennit.torchvision import ResNetCanonizer  # imported by import_zennit under the stub

    hooked = copy.deepcopy(model)
    for m in hooked.modules():  # Zennit's hooks cannot see through in-place ReLUs
        if isinstance(m, nn.ReLU):
            m.inplace = False
    attributor = attribution.Gradient(
        model=hooked, composite=composites.EpsilonPlusFlat(canonizers=[ResNetCanonizer()]))
    attributor.__enter__()  # once, outside the timing (left registered on the private copy)
    onehot = F.one_hot(target, classes).to(x.dtype)
    zx = x.clone()  # Zennit sets requires_grad on its input

    return lambda: attributor(zx, onehot)[1]


def bench_maps(model: nn.Module, batch: int, args, device: torch.device, zennit):
    """Seconds per call, peak MiB, rounds and the cosine of the two LRP maps."""
    torch.manual_seed(0)
    x = torch.rand(batch, *SHAPE, device=device)
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1)
    maps: Dict[str, object] = {}
    raw = {MPX_MAP: lambda: manipex.explain(model, x, "lrp", target, composite=COMPOSITE,
                                            stabilizer=STABILIZER)}
    if zennit is not None:
        raw[ZEN_MAP] = zennit_map(model, x, target, logits.shape[1], zennit)
    raw[GRAD_MAP] = lambda: manipex.explain(model, x, "gradient", target)
    fns = {name: on_device(fn, device, maps, name) for name, fn in raw.items()}
    _, peaks = warm_up(fns, args.warmup, device)
    secs, rounds = time_all(fns, 0, args.repeats, args.budget, args.stat)
    cos = cosine(maps[MPX_MAP], maps[ZEN_MAP]) if zennit is not None else None
    return secs, peaks, rounds, cos


# --------------------------------------------------------------------------------------------
# Part 2: the attack step


def steps_at(model: nn.Module, batch: int, args, device: torch.device) -> Dict[str, Callable[[], None]]:
    s = Setting(batch, args.steps, False, model=model, shape=SHAPE, device=str(device))
    return {GRAD_STEP: on_device(stepper(s, *manipex_loss(s, "gradient")), device),
            LRP_STEP: on_device(stepper(s, *manipex_loss(s, "lrp", composite=COMPOSITE,
                                                         stabilizer=STABILIZER)), device)}


def bench_steps(model: nn.Module, args, device: torch.device, key: str):
    """Seconds per step, peak MiB, rounds, the batch used and a note where it was reduced.

    On CPU (unless ``--step-batch`` is given), where a warm-up step took over ``--step-limit``
    seconds, the batch shrinks in proportion (at least by one) and the warm-up is run again."""
    batch = args.batch if args.step_batch is None else args.step_batch
    auto = device.type == "cpu" and args.step_batch is None and args.step_limit > 0
    notes = []
    while True:
        fns = steps_at(model, batch, args, device)
        warm, peaks = warm_up(fns, args.warmup, device)
        slowest = max(warm.values())
        if not auto or slowest <= args.step_limit or batch == 1:
            break
        smaller = max(1, min(batch - 1, int(batch * args.step_limit / slowest)))
        notes.append(f"a warm-up step at batch {batch} took {slowest:.0f} s > --step-limit "
                     f"{args.step_limit:g} s")
        batch = smaller
    note = (f"{key}: attack-step batch reduced from {args.batch} to {batch} on CPU: " + "; ".join(notes)
            if notes else "")
    secs, rounds = time_all(fns, 0, args.repeats, args.budget, args.stat)
    return secs, peaks, rounds, batch, note


# --------------------------------------------------------------------------------------------
# Output


def print_part(title: str, rows: List[str], keys: List[str], batches: Dict[str, int],
               secs: Dict[str, Dict[str, float]], peaks: Dict[str, Dict[str, Optional[float]]],
               rounds: Dict[str, int], width: int, extra: Optional[Tuple[str, Dict[str, str]]] = None) -> None:
    col = lambda text: f"{text:>12}"  # noqa: E731
    mib = lambda m: "-" if m is None else f"{m:.0f}"  # noqa: E731
    print()
    print(f"{title:<{width}}" + "".join(col(k) for k in keys))
    print(f"{'  batch':<{width}}" + "".join(col(batches[k]) for k in keys))
    for name in rows:
        print(f"{name:<{width}}" + "".join(col(f"{1e3 * secs[k][name] / batches[k]:.2f}")
                                           if name in secs[k] else col("-") for k in keys))
    for name in rows:
        print(f"{'  peak MiB ' + name.replace('manipex ', ''):<{width}}"
              + "".join(col(mib(peaks[k].get(name))) for k in keys))
    if extra is not None:
        print(f"{extra[0]:<{width}}" + "".join(col(extra[1][k]) for k in keys))
    print(f"{'  (timed rounds)':<{width}}" + "".join(col(rounds[k]) for k in keys))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch", type=int, default=None, help="images per call (default 8 on CPU, 64 on CUDA)")
    parser.add_argument("--step-batch", type=int, default=None,
                        help="batch of the attack-step part (default --batch, reduced on CPU per --step-limit)")
    parser.add_argument("--step-limit", type=float, default=60.0,
                        help="on CPU, seconds one attack step may take before its batch is reduced (0: never)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds at most (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="warm-up calls of each function, at least 1 (default 1; memory is read on the last)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timed rounds per part and model before no further round starts")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="median of the rounds (default) or min (on a busy machine)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--steps", type=int, default=500, help="length of the β schedule 10 -> 100")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--no-zennit", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet18, batch 2, 1 round")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.quick:
        args.models, args.batch, args.repeats = ["resnet18"], 2, 1
    if args.batch is None:
        args.batch = 64 if device.type == "cuda" else 8
    torch.set_num_threads(args.threads)
    zennit = None if args.no_zennit else import_zennit()
    if args.no_zennit:
        print("zennit: not available (--no-zennit)")

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"manipex {getattr(manipex, '__version__', '?')}, torch {torch.__version__}, {where}; "
          f"{', '.join(args.models)} (random init, eval, float32) on {'x'.join(map(str, SHAPE))}; "
          f"{args.stat} of up to {args.repeats} rounds after {args.warmup} warm-up call(s); ms per image",
          flush=True)
    if hasattr(os, "getloadavg") and device.type == "cpu":
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
              "(others' load inflates and scatters the times)", flush=True)
    began = time.perf_counter()
    map_rows = [MPX_MAP] + ([ZEN_MAP] if zennit is not None else []) + [GRAD_MAP]
    step_rows = [GRAD_STEP, LRP_STEP]
    res: Dict[str, dict] = {}
    notes: List[str] = []
    for key in args.models:
        torch.manual_seed(0)
        model = MODELS[key]().eval().to(device)
        m_secs, m_peaks, m_rounds, cos = bench_maps(model, args.batch, args, device, zennit)
        print(f"  {key}: maps done", file=sys.stderr, flush=True)
        s_secs, s_peaks, s_rounds, s_batch, note = bench_steps(model, args, device, key)
        print(f"  {key}: attack steps done", file=sys.stderr, flush=True)
        if note:
            notes.append(note)
        res[key] = dict(m_secs=m_secs, m_peaks=m_peaks, m_rounds=m_rounds, cos=cos, s_secs=s_secs,
                        s_peaks=s_peaks, s_rounds=s_rounds, s_batch=s_batch)
        del model

    keys = args.models
    width = max(len(r) for r in map_rows + step_rows) + 16
    get = lambda field: {k: res[k][field] for k in keys}  # noqa: E731
    cos_cells = {k: "-" if res[k]["cos"] is None else f"{res[k]['cos']:.4f}" for k in keys}
    print_part("1. LRP map (ms per image)", map_rows, keys, {k: args.batch for k in keys}, get("m_secs"),
               get("m_peaks"), get("m_rounds"), width, ("  cos(manipex lrp, zennit)", cos_cells))
    print_part("2. attack step (ms per image)", step_rows, keys, get("s_batch"), get("s_secs"),
               get("s_peaks"), get("s_rounds"), width)
    for note in notes:
        print(f"NOTE {note}")

    print()
    print(f"{'ratio':<{width}}" + "".join(f"{k:>12}{'':>6}" for k in keys) + "  target")
    ratios = [("manipex lrp map / zennit map", "m_secs", MPX_MAP, ZEN_MAP, MAP_TARGET),
              ("lrp step / gradient step", "s_secs", LRP_STEP, GRAD_STEP, STEP_TARGET)]
    for label, field, num, den, limit in ratios:
        if any(den not in res[k][field] for k in keys):
            print(f"{label:<{width}}" + "".join(f"{'-':>12}{'':>6}" for _ in keys) + "  (zennit not available)")
            continue
        values = [res[k][field][num] / res[k][field][den] for k in keys]
        print(f"{label:<{width}}" + "".join(f"{v:>12.2f}{'PASS' if v <= limit else 'MISS':>6}" for v in values)
              + f"  <= {limit:.1f}")
    print(f"""
Timed: manipex map = one explain() call (tracing, BatchNorm folding and rules included); zennit map =
one attributor(x, one_hot) call with its canonizer and hooks registered once beforehand (not timed);
attack step = map with create_graph=True, TargetMap loss + output term, grad w.r.t. x_adv, Adam.
Peak MiB: {'CUDA max_memory_allocated above the allocation before the call' if device.type == 'cuda'
           else 'growth of the peak resident memory (VmHWM) over the trimmed resident size before the call'},
on the last warm-up call. Total {time.perf_counter() - began:.0f} s.""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
