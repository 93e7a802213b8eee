#!/usr/bin/env python
"""Peak extra memory of an attack step on Integrated Gradients and SmoothGrad, chunked and not.

Run from the repository root::

    python benchmarks/create_graph_memory.py                     # CPU: small CIFAR VGG, batch 8
    python benchmarks/create_graph_memory.py --device cuda       # VGG16 224x224, batch 64
    python benchmarks/create_graph_memory.py --chunks none,256,64,16 --steps 30 --samples 30

Target (performance issue, "GPU"): IG with 50 steps and SmoothGrad with 50 samples under
``create_graph``, chunked (the methods' ``batch_size`` option), with <= 300 MB extra memory at
VGG16 batch 64 (on a GPU).

What is measured, for each method (``integrated_gradients`` with ``--steps`` steps, riemann_right,
baseline 0; ``smoothgrad`` of the gradient with ``--samples`` samples, sigma 0.15, seed 0) and each
chunk size of ``--chunks`` (rows per forward pass, ``batch_size=`` of :func:`manipex.explain`;
``none`` = all ``batch * steps`` rows at once; a chunk holds ``max(1, chunk // batch)`` copies of
the batch, so never fewer rows than the batch): the peak memory *beyond what was allocated before
the call* of one attack step's work, ``h = manipex.explain(model, x, method, target,
create_graph=True, batch_size=chunk)`` followed by ``torch.autograd.grad(relevance(h).pow(2).sum(),
x)`` (the gradient to the input, as ``manipulate_input`` takes it). The model (and its weights)
and the input are allocated before, so they are not counted.

Reference rows:

* ``manipex gradient (one copy of the batch)``: the same step on the plain gradient map: the
  floor of any chunking that keeps at least one copy of the batch per chunk (as the
  ``batch_size`` option does);
* ``manipex ... map only``: the map without ``create_graph`` and without a backward, un-chunked
  (what Captum's rows compute too);
* ``captum IntegratedGradients`` (``n_steps=--steps``, ``method="riemann_right"``,
  ``internal_batch_size=None``, its default: un-chunked) and ``captum NoiseTunnel(Saliency)``
  (``nt_type="smoothgrad"``, ``nt_samples=--samples``, ``nt_samples_batch_size=None``, its
  default, ``abs=False``): Captum's maps are not differentiable (no ``create_graph``), so these
  are the memory of the map alone, for comparison with the un-chunked manipex map;
* ``hand-written IG, two passes per chunk``: what chunking can save under ``create_graph`` when the
  backward is also done chunk by chunk, in plain torch: first the map chunk by chunk without a
  graph, then ``dL/dh``, then per chunk the chunk's ``create_graph`` gradient and its
  vector-Jacobian product with ``dL/dh`` (only one chunk's graph alive at a time). Same gradient
  as manipex's (the column ``diff``: max relative difference of the input gradient against the
  un-chunked manipex step).

How to read it: in manipex the chunks are summed without detaching, so under ``create_graph``
every chunk's graph stays alive until the backward; chunking then bounds only the transient
memory of one forward/backward, not the graph that is kept, and the rows with and without
chunking differ little. Column ``diff`` for manipex's chunked rows: max relative difference of
the input gradient against its un-chunked row (chunking should change nothing but rounding).

Memory: ``benchmarks/explainers.py``'s ``peak_mib``: on cuda ``torch.cuda.max_memory_allocated``
after ``torch.cuda.reset_peak_memory_stats``, less ``torch.cuda.memory_allocated`` before the call;
on Linux CPUs the growth of the resident set's peak (``VmHWM``, reset via
``/proc/self/clear_refs`` after ``malloc_trim``) over the resident size before the call. The CPU
number includes allocator slack and is coarser; compare rows of one run. MiB = 2**20 bytes; the
target's 300 MB = 286.1 MiB. Each row is one call (after one warm-up call of the same kind at
the smallest setting, so that lazily loaded kernels do not count); its wall time is printed for
orientation, not as a benchmark.

Models (random initialisation, seed 0, eval mode, inputs uniform in [0, 1], the target the
predicted class): ``--model vgg16``: ``manipex.models.vgg16()`` at 3x224x224 (default on cuda,
batch 64); ``--model small``: ``benchmarks/explainers.py``'s small CIFAR VGG-BN at 3x32x32
(default on CPU, batch 8, about a minute on one thread). The target's verdict is printed always;
it applies as stated only to VGG16 at batch 64.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

import manipex

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
import explainers  # noqa: E402
from explainers import memory_supported, peak_mib, small_vgg  # noqa: E402

TARGET_MB = 300.0
TARGET_MIB = TARGET_MB * 1e6 / 2**20
SIGMA = 0.15


def build_model(name: str) -> Tuple[nn.Module, Tuple[int, ...], str]:
    torch.manual_seed(0)
    if name == "vgg16":
        return manipex.models.vgg16().eval(), (3, 224, 224), "VGG16 (3x224x224, 1000 classes)"
    return small_vgg().eval(), (3, 32, 32), "small CIFAR VGG-BN (3x32x32, 10 classes)"


def parse_chunks(text: str) -> List[Optional[int]]:
    out: List[Optional[int]] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part:
            out.append(None if part in ("none", "0") else int(part))
    return out


def step_fn(model: nn.Module, x: Tensor, target: Tensor, method: str, **options
            ) -> Callable[[], Tensor]:
    """The create_graph map and the backward of ``relevance(h).pow(2).sum()`` to the input."""

    def run() -> Tensor:
        xg = x.detach().requires_grad_(True)
        h = manipex.explain(model, xg, method, target, create_graph=True, **options)
        (g,) = torch.autograd.grad(manipex.relevance(h).pow(2).sum(), xg)
        return g

    return run


def map_fn(model: nn.Module, x: Tensor, target: Tensor, method: str, **options) -> Callable[[], Tensor]:
    return lambda: manipex.explain(model, x, method, target, **options)


def ig_two_pass(model: nn.Module, x: Tensor, target: Tensor, steps: int, chunk: Optional[int]
                ) -> Callable[[], Tensor]:
    """IG (riemann_right, baseline 0) step with the backward done chunk by chunk, plain torch."""
    n = x.shape[0]
    copies = steps if chunk is None else max(1, min(steps, chunk // n))
    alphas = (torch.arange(steps, dtype=torch.float64) + 1.0) / steps  # riemann_right
    weight = 1.0 / steps

    def chunk_grad(xg: Tensor, a: Tensor, create_graph: bool) -> Tensor:
        shape = (len(a),) + (1,) * x.dim()
        path = (a.view(shape).to(xg) * xg.unsqueeze(0)).reshape(-1, *x.shape[1:])
        if not create_graph:
            path = path.detach().requires_grad_(True)
        out = model(path)
        t = target.repeat(len(a))[:, None]
        (g,) = torch.autograd.grad(out.gather(1, t).sum(), path, create_graph=create_graph)
        return (weight * g).reshape(len(a), n, *x.shape[1:]).sum(0)

    def run() -> Tensor:
        xg = x.detach().requires_grad_(True)
        total = torch.zeros_like(x)
        for i in range(0, steps, copies):  # pass 1: the map, no graph kept
            total += chunk_grad(xg, alphas[i:i + copies], False).detach()
        h = (x * total).requires_grad_(True)  # IG = (x - 0) * sum_k w_k grad(alpha_k x)
        (dh,) = torch.autograd.grad(manipex.relevance(h).pow(2).sum(), h)
        grad = (dh * total)  # d/dx of the (x * total) factor
        for i in range(0, steps, copies):  # pass 2: one chunk's graph at a time
            part = chunk_grad(xg, alphas[i:i + copies], True)
            (gx,) = torch.autograd.grad(part, xg, grad_outputs=dh * x)
            grad += gx
        return grad

    return run


def captum_rows(model: nn.Module, x: Tensor, target: Tensor, args) -> Dict[str, Callable[[], Tensor]]:
    try:
        import captum.attr as ca
    except Exception as err:  # pragma: no cover - captum is a test dependency
        print(f"captum: not available ({type(err).__name__}: {err})")
        return {}
    ig, nt = ca.IntegratedGradients(model), ca.NoiseTunnel(ca.Saliency(model))
    sd = float(SIGMA * (x.max() - x.min()))
    return {
        f"captum IntegratedGradients ({args.steps} steps, default un-chunked), map only":
            lambda: ig.attribute(x, target=target, n_steps=args.steps, method="riemann_right"),
        f"captum NoiseTunnel smoothgrad ({args.samples} samples, default un-chunked), map only":
            lambda: nt.attribute(x, nt_type="smoothgrad", nt_samples=args.samples, stdevs=sd,
                                 target=target, abs=False),
    }


def measure(fn: Callable[[], Tensor], device: torch.device) -> Tuple[Optional[float], float, Optional[Tensor], str]:
    """Peak extra MiB (None where unmeasurable), seconds, the result, and an error text."""
    gc.collect()
    box: Dict[str, Tensor] = {}

    def call() -> None:
        box["out"] = fn().detach()

    start = time.perf_counter()
    try:
        if memory_supported():
            mib: Optional[float] = peak_mib(call)
        else:
            call()
            mib = None
    except torch.cuda.OutOfMemoryError as err:  # type: ignore[attr-defined]
        return None, time.perf_counter() - start, None, f"OOM ({str(err).splitlines()[0][:60]})"
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out = box.pop("out", None)
    return mib, time.perf_counter() - start, out, ""


def rel_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--model", choices=("vgg16", "small"), default=None,
                        help="default: vgg16 on cuda, small on cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on cuda, 8 on cpu")
    parser.add_argument("--steps", type=int, default=50, help="IG steps (default 50)")
    parser.add_argument("--samples", type=int, default=50, help="SmoothGrad samples (default 50)")
    parser.add_argument("--chunks", default="none,256,64",
                        help="comma-separated batch_size values, 'none' = un-chunked (default none,256,64)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on CPU (default 1)")
    parser.add_argument("--no-captum", action="store_true")
    parser.add_argument("--no-two-pass", action="store_true", help="skip the hand-written two-pass IG rows")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    explainers.DEVICE = device  # peak_mib / memory_supported read it
    if args.model is None:
        args.model = "vgg16" if device.type == "cuda" else "small"
    if args.batch is None:
        args.batch = 64 if device.type == "cuda" else 8
    chunks = parse_chunks(args.chunks)
    if not chunks:
        parser.error("--chunks: give at least one value")
    if args.threads:
        torch.set_num_threads(args.threads)

    model, shape, label = build_model(args.model)
    model = model.to(device)
    torch.manual_seed(0)
    x = torch.rand(args.batch, *shape, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)
    print(f"manipex {getattr(manipex, '__version__', '?')}, torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} thread(s)")
          + f"; {label}, random init, eval; batch {args.batch}; IG {args.steps} steps, "
          f"SmoothGrad {args.samples} samples")
    if hasattr(os, "getloadavg") and device.type == "cpu":
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if not memory_supported():
        print("memory: not measurable here (needs Linux /proc/self/clear_refs or cuda); times only")
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"before the calls (not counted): weights {weights:.1f} MiB, input "
          f"{x.numel() * x.element_size() / 2**20:.1f} MiB")

    ig = dict(steps=args.steps)
    sg = dict(samples=args.samples, sigma=SIGMA, seed=0)
    # warm-up at the smallest setting (lazily loaded kernels, allocator), not reported
    step_fn(model, x[:1], target[:1], "integrated_gradients", steps=2)()
    step_fn(model, x[:1], target[:1], "smoothgrad", samples=2, seed=0)()

    def chunk_name(c: Optional[int]) -> str:
        if c is None:
            return "un-chunked"
        return f"batch_size {c} ({max(1, c // args.batch)} cop{'y' if c // args.batch <= 1 else 'ies'})"

    rows: List[Tuple[str, Callable[[], Tensor], Optional[str]]] = []  # name, fn, diff-against key
    rows.append(("manipex gradient (one copy of the batch), step", step_fn(model, x, target, "gradient"), None))
    for c in chunks:
        rows.append((f"manipex IG, {chunk_name(c)}, step",
                     step_fn(model, x, target, "integrated_gradients", batch_size=c, **ig), "ig"))
    for c in chunks:
        rows.append((f"manipex SmoothGrad, {chunk_name(c)}, step",
                     step_fn(model, x, target, "smoothgrad", batch_size=c, **sg), "sg"))
    if not args.no_two_pass:
        for c in chunks:
            if c is not None:
                rows.append((f"hand-written IG, two passes, {chunk_name(c)}, step",
                             ig_two_pass(model, x, target, args.steps, c), "ig"))
    rows.append(("manipex IG, un-chunked, map only", map_fn(model, x, target, "integrated_gradients", **ig), None))
    rows.append(("manipex SmoothGrad, un-chunked, map only", map_fn(model, x, target, "smoothgrad", **sg), None))
    if not args.no_captum:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows += [(name, fn, None) for name, fn in captum_rows(model, x, target, args).items()]

    results: Dict[str, Tuple[Optional[float], float, str]] = {}
    first: Dict[str, Tensor] = {}  # the first (un-chunked where listed first) step gradient per method
    diffs: Dict[str, Optional[float]] = {}
    for name, fn, key in rows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mib, secs, out, err = measure(fn, device)
        results[name] = (mib, secs, err)
        diffs[name] = None
        if key is not None and out is not None:
            if key not in first:
                first[key] = out
            else:
                diffs[name] = rel_diff(out, first[key])
        print(f"  {name}: done", file=sys.stderr, flush=True)
        del out

    width = max(len(n) for n, _, _ in rows) + 2
    print()
    print(f"{'peak extra memory of one call':<{width}}{'MiB':>10}{'MB':>10}{'s':>9}{'diff':>11}")
    for name, _, _ in rows:
        mib, secs, err = results[name]
        d = diffs[name]
        mem = (f"{mib:>10.1f}{mib * 2**20 / 1e6:>10.1f}" if mib is not None else f"{err or 'n/a':>20}")
        print(f"{name:<{width}}{mem}{secs:>9.2f}{'' if d is None else format(d, '.1e'):>11}")

    print()
    applies = args.model == "vgg16" and args.batch == 64 and device.type == "cuda"
    note = "" if applies else (f"  [setting differs from the target's (VGG16 224, batch 64, cuda): "
                               f"{args.model}, batch {args.batch}, {device.type}]")
    for method, prefix in (("IG", "manipex IG, "), ("SmoothGrad", "manipex SmoothGrad, ")):
        chunked = [(results[n][0], n) for n, _, _ in rows
                   if n.startswith(prefix) and "batch_size" in n and results[n][0] is not None]
        if not chunked:
            print(f"manipex {method} under create_graph, chunked, <= {TARGET_MB:g} MB extra: miss "
                  f"(no chunked row measured){note}")
            continue
        best, best_name = min(chunked)
        ok = best <= TARGET_MIB
        print(f"manipex {method} under create_graph, chunked, <= {TARGET_MB:g} MB extra: "
              f"{'ok' if ok else 'miss'} (best {best * 2**20 / 1e6:.1f} MB: {best_name}){note}")
    two = [(results[n][0], n) for n, _, _ in rows if n.startswith("hand-written IG") and results[n][0] is not None]
    if two:
        best, best_name = min(two)
        print(f"(hand-written two-pass IG, informational: best {best * 2**20 / 1e6:.1f} MB, "
              f"{'within' if best <= TARGET_MIB else 'above'} {TARGET_MB:g} MB: {best_name})")
    floor = results[rows[0][0]][0]
    if floor is not None:
        print(f"(floor of a chunk with one copy of the batch, the gradient step: "
              f"{floor * 2**20 / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
