#!/usr/bin/env python
"""Speed of manipex's explainers next to Captum (and Zennit) on the same model and batch.

Run from the repository root::

    python benchmarks/explainers.py                  # MNIST CNN and a small CIFAR VGG, batch 32
    python benchmarks/explainers.py --models mnist --batch 64 --repeats 9 --threads 4
    python benchmarks/explainers.py --device cuda --batch 256

For every method the script prints milliseconds per image for the reference implementation and
for manipex, their ratio (manipex / reference; below 1 means manipex is faster), the targets of
the performance issue, the time of the manipex map with ``create_graph=True`` (what an attack
step builds) and of that map plus one backward pass to the input (a whole attack step), and the
mean per-image cosine similarity of the two maps as a check that both compute the same thing.

Timing: each function is called once to warm up, then the reference and manipex (and the
create_graph variants) are called in turn for ``--repeats`` rounds, so that a change of load on
the machine hits both alike, and the median (``--stat min`` on a busy machine) is reported; a
comparison that has taken ``--budget`` seconds starts no further round (column ``n``).
``torch.set_num_threads`` is ``--threads``. Both models have random weights and are in eval mode; the inputs are uniform
in [0, 1] and the explained class is the predicted one, passed explicitly to both libraries.

Targets (performance issue): the gradient family (gradient, grad_x_input, guided backprop)
within 1.2x of Captum; integrated gradients and SmoothGrad faster than Captum with Captum's
default batching; LRP no slower than Zennit's EpsilonPlusFlat.

Memory (Linux): the peak growth of the process's resident memory during one more call of
each method, read from ``/proc/self/status`` after resetting the peak (tracemalloc does not see
torch's allocator); ``--no-memory`` skips it. The IG rows with ``--ig-batch`` show what chunking
costs in time and saves in memory. Column ``step MiB``: the same for the create_graph map of
every method plus one backward pass to the input (an attack step), at ``--batch`` (the run's one,
and so largest, batch); for the methods without a ``step ms`` it is measured (one call) but not
timed. With ``--device cuda`` the peaks are ``torch.cuda.max_memory_allocated`` after
``torch.cuda.reset_peak_memory_stats``, less what was allocated before the call, and every timed
call is enclosed in ``torch.cuda.synchronize``.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

import manipex

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _zennit import import_zennit  # noqa: E402

try:
    import captum.attr as ca
    from captum.attr._utils.lrp_rules import EpsilonRule
except Exception as err:  # pragma: no cover - captum is a test dependency
    ca = None
    CAPTUM_ERROR = f"{type(err).__name__}: {err}"
else:
    CAPTUM_ERROR = ""


# --------------------------------------------------------------------------------------------
# Models


def mnist_cnn() -> nn.Module:
    """The zoo's MNIST CNN, or the same ``nn.Sequential`` where the zoo is not importable."""
    try:
        from manipex.models import mnist_cnn as zoo_mnist_cnn

        return zoo_mnist_cnn()
    except Exception:
        return nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
        )


def small_vgg(widths=(16, 16, "M", 32, 32, "M", 64, "M"), num_classes: int = 10) -> nn.Module:
    """A small VGG with BatchNorm for 3x32x32 inputs, as a flat ``nn.Sequential``.

    Every ReLU is its own module and every module is used once (Captum's LRP needs both).
    """
    layers: List[nn.Module] = []
    channels = 3
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            channels = w
    side = 32 // 2 ** sum(1 for w in widths if w == "M")
    layers += [nn.Flatten(), nn.Linear(channels * side * side, 128), nn.ReLU(), nn.Dropout(0.5),
               nn.Linear(128, num_classes)]
    model = nn.Sequential(*layers)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that merging them matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


MODELS = {
    "mnist": ("MNIST CNN (1x28x28)", mnist_cnn, (1, 28, 28)),
    "vgg": ("small VGG-BN (3x32x32)", small_vgg, (3, 32, 32)),
}


# --------------------------------------------------------------------------------------------
# Zennit (optional)




# --------------------------------------------------------------------------------------------
# Timing


#: How the timed calls are summarised (``--stat``).
STAT: Callable[[List[float]], float] = statistics.median


def timed(
    fns: List[Callable[[], Tensor]], repeats: int, budget: float, memory: int = 0
) -> Tuple[List[float], List[Tensor], int, List[Optional[float]]]:
    """Seconds per call of each function (``STAT`` of the timed calls), their warm-up results,
    the number of rounds timed, and the peak memory of one more call of each of the first
    ``memory`` functions (see :func:`peak_mib`).

    Each function is called once to warm up; then the functions are called in turn, round after
    round, so that a load change on the machine hits all of them alike. After the first round,
    no new round starts once ``budget`` seconds have been spent timing.
    """
    results = [_value(fn()) for fn in fns]
    times: List[List[float]] = [[] for _ in fns]
    spent = 0.0
    for round_ in range(repeats):
        if round_ and spent > budget:
            break
        for fn, ts in zip(fns, times):
            sync()
            start = time.perf_counter()
            out = fn()
            sync()
            ts.append(out.seconds if isinstance(out, Timed) else time.perf_counter() - start)
            spent += ts[-1]
    peaks = [peak_mib(fn) for fn in fns[:memory]] if MEMORY else []
    peaks += [None] * (len(fns) - len(peaks))
    return [STAT(ts) for ts in times], results, len(times[0]), peaks


#: Whether to measure memory (``--no-memory`` turns it off; needs Linux's /proc on CPU).
MEMORY = True

#: Where models, inputs and maps live (``--device``).
DEVICE = torch.device("cpu")


def sync() -> None:
    """Wait for the GPU's queued work (no-op on CPU), so that clocks read finished work."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _proc_status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {key} in /proc/self/status")


def memory_supported() -> bool:
    """Whether the peak resident memory of the process can be reset and read (Linux; cuda)."""
    if DEVICE.type == "cuda":
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_mib("VmHWM")
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        return True
    except (OSError, AttributeError):
        return False


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak growth of the resident memory during one call of ``fn``, in MiB.

    tracemalloc does not see torch's allocations, so this uses the kernel's resident-set peak:
    free heap memory is handed back to the system (``malloc_trim``), the peak is reset to the
    current resident size (``/proc/self/clear_refs``), and after the call the peak (``VmHWM``)
    is read. Costs one call; cheap next to the timing. On cuda: the growth of
    ``torch.cuda.max_memory_allocated`` over what was allocated before the call.
    """
    gc.collect()
    if DEVICE.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base = torch.cuda.memory_allocated(DEVICE)
        fn()
        sync()
        return (torch.cuda.max_memory_allocated(DEVICE) - base) / 2**20
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _proc_status_mib("VmRSS")
    fn()
    return _proc_status_mib("VmHWM") - base


@dataclass
class Timed:
    """Returned by a benchmarked function that times itself (to leave set-up out)."""

    seconds: float
    value: Tensor


def _value(out):
    return out.value if isinstance(out, Timed) else out


def cosine(a: Tensor, b: Tensor) -> float:
    """Mean over the batch of the cosine similarity of the flattened maps (two zero maps: 1)."""
    a, b = a.detach().flatten(1).double(), b.detach().flatten(1).double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-30)
    both_zero = (a.abs().amax(1) == 0) & (b.abs().amax(1) == 0)
    return float(torch.where(both_zero, 1.0, cos).mean())


def attack_step(explain_fn: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], Tensor]:
    """One attack step: the map with ``create_graph=True`` and a backward pass to the input."""

    def run() -> Tensor:
        xg = x.detach().requires_grad_(True)
        h = explain_fn(xg)
        (g,) = torch.autograd.grad(h.pow(2).sum(), xg, allow_unused=True, materialize_grads=True)
        return g

    return run


@dataclass
class Row:
    method: str
    reference: str
    ref_s: Optional[float]
    mpx_s: float
    target: str = ""  # "<=1.2", "<1", "<=1" or ""
    cg_s: Optional[float] = None
    step_s: Optional[float] = None
    cos: Optional[float] = None
    rounds: int = 0
    ref_mib: Optional[float] = None
    mpx_mib: Optional[float] = None
    step_mib: Optional[float] = None  # create_graph map + backward to the input


def status(row: Row) -> str:
    if not row.target or row.ref_s is None:
        return ""
    ratio = row.mpx_s / row.ref_s
    bound = float(row.target.lstrip("<="))
    ok = ratio <= bound if row.target.startswith("<=") else ratio < bound
    return f"{row.target}x {'ok' if ok else 'MISS'}"


def print_table(title: str, rows: List[Row], batch: int) -> None:
    ms = lambda s: "-" if s is None else f"{1000 * s / batch:.3f}"  # noqa: E731
    mib = lambda m: "-" if m is None else f"{m:.0f}"  # noqa: E731
    header = ("manipex method", "reference", "ref ms", "mpx ms", "ratio", "target", "cg ms", "step ms",
              "ref MiB", "mpx MiB", "step MiB", "cos", "n")
    table = [header]
    for r in rows:
        ratio = "-" if r.ref_s is None else f"{r.mpx_s / r.ref_s:.2f}"
        cos = "-" if r.cos is None else f"{r.cos:.4f}"
        table.append((r.method, r.reference, ms(r.ref_s), ms(r.mpx_s), ratio, status(r), ms(r.cg_s),
                      ms(r.step_s), mib(r.ref_mib), mib(r.mpx_mib), mib(r.step_mib), cos,
                      str(r.rounds)))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    left = {0, 1, 5}
    fmt = lambda line: "  ".join(c.ljust(w) if i in left else c.rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(line, widths)))
    print(f"\n== {title} ==")
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for line in table[1:]:
        print(fmt(line))


# --------------------------------------------------------------------------------------------
# The benchmark of one model


def bench_model(key: str, args, zennit) -> List[Row]:
    _, build, shape = MODELS[key]
    torch.manual_seed(0)
    model = build().eval().to(DEVICE)
    x = torch.rand(args.batch, *shape).to(DEVICE)
    with torch.no_grad():
        target = model(x).argmax(1)
    for _ in range(3):  # warm up the allocator and the convolution kernels for this model
        manipex.explain(model, x, "gradient", target)
    rows: List[Row] = []

    def mpx(method, **kw):
        return lambda: manipex.explain(model, x, method, target, **kw)

    def cg(method, **kw):
        return lambda xx: manipex.explain(model, xx, method, target, create_graph=True, **kw)

    step_peaks = {}  # (method, options) -> MiB, so that a map shared by two rows is measured once

    def step_mib(method, **kw) -> Optional[float]:
        """Peak memory of the create_graph map plus a backward pass to the input (one call)."""
        if not MEMORY:
            return None
        key = (method, tuple(sorted(kw.items())))
        if key not in step_peaks:
            step_peaks[key] = peak_mib(attack_step(cg(method, **kw), x))
        return step_peaks[key]

    def add(method, reference, ref_fn, mpx_fn, target_="", cg_fn=None, cos_map=None, step_mem=None):
        """Time reference and manipex (and the create_graph map and attack step) in turn.

        ``step_mem``: a thunk giving the peak memory of the attack step (``step MiB``)."""
        fns = ([ref_fn] if ref_fn is not None else []) + [mpx_fn]
        if cg_fn is not None:
            fns += [lambda: cg_fn(x), attack_step(cg_fn, x)]
        secs, maps, rounds, peaks = timed(fns, args.repeats, args.budget, memory=2 if ref_fn else 1)
        if ref_fn is None:
            secs, maps, peaks = [None] + secs, [None] + maps, [None] + peaks
        row = Row(method, reference, secs[0], secs[1], target_, rounds=rounds, ref_mib=peaks[0],
                  mpx_mib=peaks[1])
        if cg_fn is not None:
            row.cg_s, row.step_s = secs[2], secs[3]
        if maps[0] is not None:
            row.cos = cosine(maps[1], cos_map(maps[0]) if cos_map else maps[0])
        if step_mem is not None:
            row.step_mib = step_mem()
        rows.append(row)
        print(f"  {key}: {method:<36} done", file=sys.stderr, flush=True)

    have_captum = ca is not None
    cap = (lambda f: f) if have_captum else (lambda f: None)

    # -- gradient family
    sal = ca.Saliency(model) if have_captum else None
    add("gradient", "Saliency(abs=False)", cap(lambda: sal.attribute(x, target=target, abs=False)),
        mpx("gradient"), "<=1.2", cg("gradient"), step_mem=lambda: step_mib("gradient"))
    ixg = ca.InputXGradient(model) if have_captum else None
    add("grad_x_input", "InputXGradient", cap(lambda: ixg.attribute(x, target=target)),
        mpx("grad_x_input"), "<=1.2", cg("grad_x_input"), step_mem=lambda: step_mib("grad_x_input"))
    gbp = ca.GuidedBackprop(model) if have_captum else None
    add("guided_backprop", "GuidedBackprop", cap(lambda: gbp.attribute(x, target=target)),
        mpx("guided_backprop"), "<=1.2", cg("guided_backprop"),
        step_mem=lambda: step_mib("guided_backprop"))

    # -- integrated gradients: Captum's defaults (Gauss-Legendre, all rows at once), then chunked
    ig = ca.IntegratedGradients(model) if have_captum else None
    steps, rows_per_fwd = args.ig_steps, args.ig_batch
    add(f"integrated_gradients steps={steps} gl", f"IntegratedGradients n_steps={steps}",
        cap(lambda: ig.attribute(x, target=target, n_steps=steps, method="gausslegendre")),
        mpx("integrated_gradients", steps=steps, rule="gausslegendre"), "<1",
        step_mem=lambda: step_mib("integrated_gradients", steps=steps, rule="gausslegendre"))
    add(f"  ... batch_size={rows_per_fwd}", f"  ... internal_batch_size={rows_per_fwd}",
        cap(lambda: ig.attribute(x, target=target, n_steps=steps, method="gausslegendre",
                                 internal_batch_size=rows_per_fwd)),
        mpx("integrated_gradients", steps=steps, rule="gausslegendre", batch_size=rows_per_fwd),
        step_mem=lambda: step_mib("integrated_gradients", steps=steps, rule="gausslegendre",
                                  batch_size=rows_per_fwd))

    # -- SmoothGrad of the gradient, absolute noise sigma on [0, 1] inputs, all samples at once
    nt = ca.NoiseTunnel(ca.Saliency(model)) if have_captum else None
    n, sigma = args.sg_samples, args.sg_sigma
    add(f"smoothgrad samples={n} sigma={sigma}", f"NoiseTunnel(Saliency) nt_samples={n}",
        cap(lambda: nt.attribute(x, nt_type="smoothgrad", nt_samples=n, stdevs=sigma, target=target,
                                 abs=False)),
        mpx("smoothgrad", samples=n, sigma=sigma, relative=False, seed=0), "<1",
        step_mem=lambda: step_mib("smoothgrad", samples=n, sigma=sigma, relative=False, seed=0))

    # -- LRP
    eps = args.epsilon
    lrp = ca.LRP(model) if have_captum else None

    def captum_lrp():
        for m in model.modules():  # Captum deletes the rules after every call
            if not list(m.children()) and not isinstance(m, (nn.ReLU, nn.Dropout)):
                m.rule = EpsilonRule(epsilon=eps)
        return lrp.attribute(x, target=target)

    add("lrp composite=epsilon", "LRP(EpsilonRule everywhere)", cap(captum_lrp),
        mpx("lrp", composite="epsilon", epsilon=eps), "", cg("lrp", composite="epsilon", epsilon=eps),
        step_mem=lambda: step_mib("lrp", composite="epsilon", epsilon=eps))
    if zennit is not None:
        composites, canonizers, attribution = zennit
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        composite = composites.EpsilonPlusFlat(
            epsilon=eps, canonizers=[canonizers.SequentialMergeBatchNorm()] if has_bn else None)
        onehot = torch.nn.functional.one_hot(target, 10).to(x.dtype)
        attributor = attribution.Gradient(model=model, composite=composite)

        def zennit_lrp():
            # Zennit's hooks and canonizers change the model while registered, so they are
            # registered around each call; the timing covers only the attribution itself.
            with attributor:
                sync()
                start = time.perf_counter()
                relevance = attributor(x, onehot)[1]
                sync()
                return Timed(time.perf_counter() - start, relevance)

        cg_zb = cg("lrp", composite="zb_zplus")
        secs, maps, rounds, peaks = timed(
            [zennit_lrp, mpx("lrp", composite="epsilon", epsilon=eps), mpx("lrp", composite="zb_zplus"),
             lambda: cg_zb(x), attack_step(cg_zb, x)], args.repeats, args.budget, memory=3)
        rows.append(Row("lrp composite=epsilon", "Zennit EpsilonPlusFlat", secs[0], secs[1],
                        cos=cosine(maps[1], maps[0]), rounds=rounds, ref_mib=peaks[0], mpx_mib=peaks[1],
                        step_mib=step_mib("lrp", composite="epsilon", epsilon=eps)))
        rows.append(Row("lrp composite=zb_zplus", "Zennit EpsilonPlusFlat", secs[0], secs[2], "<=1",
                        secs[3], secs[4], cosine(maps[2], maps[0]), rounds, peaks[0], peaks[2],
                        step_mib("lrp", composite="zb_zplus")))
        print(f"  {key}: {'lrp vs zennit':<36} done", file=sys.stderr, flush=True)
    else:
        add("lrp composite=zb_zplus", "(zennit not available)", None, mpx("lrp", composite="zb_zplus"),
            "", cg("lrp", composite="zb_zplus"), step_mem=lambda: step_mib("lrp", composite="zb_zplus"))

    # -- Grad-CAM at the last Conv2d, upsampled bilinearly (Captum: ReLU on, as Grad-CAM)
    last_conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    gc = ca.LayerGradCam(model, last_conv) if have_captum else None

    def captum_gradcam():
        cam = gc.attribute(x, target=target, relu_attributions=True)
        return ca.LayerAttribution.interpolate(cam, tuple(shape[1:]), interpolate_mode="bilinear")

    add("gradcam", "LayerGradCam+interpolate", cap(captum_gradcam), mpx("gradcam"),
        cos_map=lambda m: m.expand(-1, shape[0], -1, -1), step_mem=lambda: step_mib("gradcam"))

    # -- Occlusion, window over all channels, the same number of occluded rows per forward
    window, stride = (args.occ_window, args.occ_stride) if key == "mnist" else (8, 4)
    per_eval = max(1, args.occ_batch // args.batch)
    occ = ca.Occlusion(model) if have_captum else None
    add(f"occlusion window={window} stride={stride}", f"Occlusion perturbations_per_eval={per_eval}",
        cap(lambda: occ.attribute(x, sliding_window_shapes=(shape[0], window, window),
                                  strides=(shape[0], stride, stride), baselines=0.0, target=target,
                                  perturbations_per_eval=per_eval)),
        mpx("occlusion", window=window, stride=stride, batch_size=args.occ_batch),
        step_mem=lambda: step_mib("occlusion", window=window, stride=stride, batch_size=args.occ_batch))
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images per call (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after a warm-up (default 5)")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="seconds of timing per comparison after which no new round starts")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="statistic of the timed calls (min is steadier on a busy machine)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory columns")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (or cuda:N)")
    parser.add_argument("--models", default="mnist,vgg", help=f"comma-separated of {','.join(MODELS)}")
    parser.add_argument("--ig-steps", type=int, default=50, help="IG steps (Captum's default 50)")
    parser.add_argument("--ig-batch", type=int, default=256, help="rows per forward of chunked IG")
    parser.add_argument("--sg-samples", type=int, default=20, help="SmoothGrad samples, both libraries")
    parser.add_argument("--sg-sigma", type=float, default=0.15, help="SmoothGrad absolute noise std")
    parser.add_argument("--epsilon", type=float, default=1e-6, help="LRP epsilon, all libraries")
    parser.add_argument("--occ-window", type=int, default=4, help="occlusion window on MNIST (VGG: 8)")
    parser.add_argument("--occ-stride", type=int, default=2, help="occlusion stride on MNIST (VGG: 4)")
    parser.add_argument("--occ-batch", type=int, default=256, help="occluded rows per forward")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")

    torch.set_num_threads(args.threads)
    global STAT, MEMORY, DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    STAT = statistics.median if args.stat == "median" else min
    MEMORY = not args.no_memory and memory_supported()
    if not args.no_memory and not MEMORY:
        print("memory: not measured (needs Linux's /proc/self/clear_refs and glibc)")
    zennit = import_zennit()
    if ca is not None:
        import captum

    print(f"manipex {manipex.__version__}, torch {torch.__version__}, "
          f"captum {captum.__version__ if ca is not None else 'not available: ' + CAPTUM_ERROR}, "
          f"zennit {'available' if zennit is not None else 'not available'}")
    print(f"batch {args.batch}, threads {torch.get_num_threads()}, {args.stat} of up to {args.repeats} "
          "calls after 1 warm-up; ms per image"
          + (f"; {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else ""))
    start = time.perf_counter()
    for key in keys:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum: "Input Tensor 0 did not already require grad..."
            rows = bench_model(key, args, zennit)
        print_table(f"{MODELS[key][0]}, batch {args.batch}", rows, args.batch)
    print(f"""
ratio = manipex / reference (below 1: manipex is faster); target: the goal of the performance issue.
cg ms: the manipex map with create_graph=True; step ms: that map plus one backward pass of
sum(map**2) to the input (an attack step). n: rounds timed (fewer than --repeats where a comparison
took over --budget={args.budget:g} s). MiB: peak growth of the resident memory in one call (after
malloc_trim; the model's parameters require grad, as by default; on cuda: of max_memory_allocated);
step MiB: the same for manipex's create_graph map plus the backward pass to the input, at batch
{args.batch}, for every method (also those whose step is not timed). cos: mean per-image cosine of
the two maps, a check that both compute the same thing; below 1 by design for SmoothGrad (other
noise) and LRP vs Zennit (EpsilonPlusFlat: flat first layer, z+ on convs, epsilon on dense layers;
manipex zb_zplus: zB first layer, z+ elsewhere; manipex epsilon: epsilon everywhere).
IG: {args.ig_steps} Gauss-Legendre steps in both. SmoothGrad: {args.sg_samples} samples of absolute
sigma {args.sg_sigma} in both, all samples in one batch (Captum's default). Zennit: its hooks and
canonizers are registered around each call, outside the timed part. Occlusion: window
{args.occ_window}, stride {args.occ_stride} on MNIST; 8, 4 on the VGG; {max(1, args.occ_batch // args.batch)} windows per forward in both.
Total {time.perf_counter() - start:.0f} s.""")


if __name__ == "__main__":
    main()
