#!/usr/bin/env python
"""Cost per image of manipex's maps and attack steps against batch size, image size and steps.

Run from the repository root::

    python benchmarks/scaling.py                                  # CPU, 2 threads, ~budget-bound
    python benchmarks/scaling.py --batches 1,4 --sizes 28,32 --repeats 1 --steps 10,50
    python benchmarks/scaling.py --device cuda --csv scaling.csv --figure scaling.png

Three measurements, all in milliseconds per image:

(a) ``map``: ``manipex.explain(model, x, method, target)``, the plain map;
(b) ``step``: one attack step's work, the map with ``create_graph=True`` and one backward pass
    of ``relevance(map).pow(2).sum()`` to the input (``torch.autograd.grad`` w.r.t. the input, as
    :func:`manipex.attacks.manipulate_input` does, so no weight gradients are accumulated);

for every method of ``--methods`` (default gradient, lrp, integrated_gradients), every batch size
of ``--batches`` (default 1, 4, 16, 64, 256) and every image size of ``--sizes``:

* 28: the default MNIST CNN (``manipex.models.load_default("mnist")``, 1x28x28);
* 32: a CIFAR ResNet-20 (``manipex.models.cifar_resnet(20)``, 3x32x32; ``--cifar vgg16`` for
  ``vgg16(num_classes=10, input_size=32)``), random initialisation;
* 224: ResNet-50 (``manipex.models.resnet50()``, 3x224x224; ``--imagenet vgg16`` for VGG16),
  random initialisation; on CPU only the batches of ``--batches-224`` (default 1, 4).

and (c) ``attack``: the whole :func:`manipex.attacks.manipulate_input` (``TargetMap`` objective
on random target maps, the default β schedule, ``patience=None`` so that every step runs) on the
``--attack-size`` model with ``--attack-batch`` images for each of ``--steps`` (default 10, 50,
100), as ms per image and ms per image per step. A straight line through (steps, ms per image)
splits it into a fixed cost (the softplus copy of the model, the original map and prediction,
the final checks) and a cost per step, printed next to the isolated step of (b) at that batch.

How to read it: per image, a larger batch amortises the per-call overhead (Python, the graph
walk of LRP, kernel launches on a GPU), so the ms per image should fall as the batch grows and
flatten once the machine is saturated (on 2 CPU cores that is early, at a few images for
224x224; on a GPU late); a line that rises again at large batches means the batch no longer
fits the caches (or memory). A larger image costs more per image roughly in proportion to the
model's FLOPs. The attack step should be a small multiple (about 2-5x) of the map: it is the
map's forward and backward plus a second backward through both; integrated gradients cost about
``steps`` times the gradient in both kinds. In (c), the per-step cost should be close to (b)'s
step (plus the output term's extra forward and the optimiser), and the fixed cost should fade
per step as the steps grow.

Timing: every cell is called once to warm up, then ``--repeats`` times, and the median is
reported. The peak memory growth is read during the first timed call: on cuda
``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats`` (less what was
allocated before), on Linux CPUs the resident set's peak from ``/proc/self/status`` after
``malloc_trim`` and resetting the peak (tracemalloc does not see torch's allocator). ``torch.set_num_threads`` is ``--threads``. Before a cell runs, its time
is estimated (from the last measured batch of the same line, scaled linearly in the batch; for
the first batch from one forward pass of the model times a cost factor of the method); a cell
whose estimate exceeds ``--budget`` seconds, or whose estimated memory exceeds ``--max-memory``,
is not run and is printed as ``skipped`` (and so are the larger batches of that line). All
models are in eval mode on ``--device``, the inputs uniform in [0, 1], the target the predicted
class.

Output: a plain-text table (rows: image size, model, method, kind; columns: batch sizes), the
peak memory in the same layout, the attack-vs-steps table; ``--csv PATH`` writes every cell as a
row, ``--figure PATH`` draws ms per image against batch size, log-log, one panel per image size.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

import manipex
from manipex.objectives import TargetMap

KINDS = ("map", "step")


# --------------------------------------------------------------------------------------------
# Models


def build_model(size: int, args) -> Tuple[str, nn.Module, Tuple[int, ...]]:
    """The model for images of ``size`` pixels: its name, the model (eval, on CPU) and the shape."""
    torch.manual_seed(0)
    if size == 28:
        return "MNIST CNN (trained)", manipex.models.load_default("mnist", progress=False), (1, 28, 28)
    if size == 32:
        if args.cifar == "vgg16":
            return "VGG16 CIFAR (random)", manipex.models.vgg16(10, input_size=32), (3, 32, 32)
        return "ResNet-20 CIFAR (random)", manipex.models.cifar_resnet(20), (3, 32, 32)
    if size == 224:
        if args.imagenet == "vgg16":
            return "VGG16 (random)", manipex.models.vgg16(), (3, 224, 224)
        return "ResNet-50 (random)", manipex.models.resnet50(), (3, 224, 224)
    raise ValueError(f"image size must be 28, 32 or 224: {size}")


def method_options(method: str, args) -> Dict[str, object]:
    if method == "integrated_gradients":
        return {"steps": args.ig_steps}
    if method == "smoothgrad":
        return {"samples": args.sg_samples}
    return {}


def cost_factor(method: str, options: Dict[str, object], kind: str) -> float:
    """Rough cost of a cell in forward passes, for the first estimate of a line (generous)."""
    base = {"gradient": 3.0, "grad_x_input": 3.0, "guided_backprop": 3.5, "lrp": 5.0, "gradcam": 3.5}
    factor = base.get(method, 5.0)
    if method == "integrated_gradients":
        factor = 3.0 * int(options.get("steps", 50))
    elif method == "smoothgrad":
        factor = 3.0 * int(options.get("samples", 50))
    return factor * (4.0 if kind == "step" else 1.0)


# --------------------------------------------------------------------------------------------
# Timing and memory


class Clock:
    """Wall-clock seconds and peak memory growth on one device (cuda: synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.proc = False
        if not self.cuda:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self._status("VmHWM")
                self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                self.libc.malloc_trim  # noqa: B018 - glibc only
                self.proc = True
            except (OSError, AttributeError):
                pass

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    @staticmethod
    def _status(key: str, path: str = "/proc/self/status") -> float:
        """A ``kB`` line of ``path`` (the process's status, or ``/proc/meminfo``) in MiB."""
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        raise OSError(f"no {key} in {path}")

    def seconds_and_peak(self, fn: Callable[[], object]) -> Tuple[float, Optional[float]]:
        """One timed call of ``fn`` and the peak memory growth (MiB) during it (None: unknown)."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            secs = self.seconds(fn)
            return secs, (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        if not self.proc:
            return self.seconds(fn), None
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = self._status("VmRSS")
        secs = self.seconds(fn)
        return secs, self._status("VmHWM") - base

    def available_mib(self) -> float:
        if self.cuda:
            free, _ = torch.cuda.mem_get_info(self.device)
            return free / 2**20
        try:
            return self._status("MemAvailable", "/proc/meminfo")
        except OSError:
            return math.inf


@dataclass
class Cell:
    size: int
    model: str
    method: str
    kind: str  # "map", "step" or "attack"
    batch: int
    steps: Optional[int] = None  # attack steps (kind "attack")
    ms_per_image: Optional[float] = None
    ms_per_image_step: Optional[float] = None  # kind "attack"
    peak_mib: Optional[float] = None
    estimate_s: Optional[float] = None
    rounds: int = 0
    status: str = "ok"  # "ok", "skipped (...)" or "OOM"


def run_cell(cell: Cell, fn: Callable[[], object], clock: Clock, repeats: int,
             estimate_s: float, estimate_mib: Optional[float], args) -> Cell:
    """A warm-up call, then ``repeats`` timed calls (the first also reads the peak memory), unless
    the estimate is over the budget or the memory limit."""
    cell.estimate_s = estimate_s
    if estimate_s > args.budget:
        cell.status = f"skipped (est. {estimate_s:.0f} s)"
        return cell
    if estimate_mib is not None and estimate_mib > args.max_memory_mib:
        cell.status = f"skipped (est. {estimate_mib / 1024:.1f} GiB)"
        return cell
    try:
        clock.seconds(fn)  # warm-up (one-off costs: LRP's graph trace, kernel selection, ...)
        first, cell.peak_mib = clock.seconds_and_peak(fn)
        times = [first] + [clock.seconds(fn) for _ in range(repeats - 1)]
    except torch.cuda.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        cell.status = "OOM"
        return cell
    cell.rounds = len(times)
    per_call = statistics.median(times)
    cell.ms_per_image = 1e3 * per_call / cell.batch
    if cell.steps:
        cell.ms_per_image_step = cell.ms_per_image / cell.steps
    return cell


# --------------------------------------------------------------------------------------------
# (a), (b): map and step against batch size


def bench_size(size: int, args, clock: Clock, cells: List[Cell]) -> None:
    name, model, shape = build_model(size, args)
    model = model.to(clock.device).eval()
    batches = args.batches_224 if size == 224 and clock.device.type == "cpu" else args.batches
    largest = max(batches)
    torch.manual_seed(0)
    x_all = torch.rand(largest, *shape, device=clock.device)
    with torch.no_grad():
        target_all = model(x_all[:1])  # warm-up of the forward
        forward_s = min(clock.seconds(lambda: model(x_all[:1])) for _ in range(2))
        target_all = torch.cat([model(x_all[i:i + 64]).argmax(1) for i in range(0, largest, 64)])
    print(f"  {size}: {name}, one forward at batch 1: {1e3 * forward_s:.1f} ms", file=sys.stderr,
          flush=True)

    for method in args.methods:
        options = method_options(method, args)
        for kind in KINDS:
            last: Optional[Cell] = None
            stop = ""
            for batch in sorted(batches):
                x, target = x_all[:batch], target_all[:batch]
                cell = Cell(size, name, method, kind, batch)
                if stop:
                    cell.status = stop
                    cells.append(cell)
                    continue
                if last is not None and last.ms_per_image is not None:
                    per_image_s = last.ms_per_image / 1e3
                    per_image_mib = None if last.peak_mib is None else max(last.peak_mib, 0) / last.batch
                else:
                    map_cell = next((c for c in cells if c.size == size and c.method == method and
                                     c.kind == "map" and c.batch == batch and c.ms_per_image), None)
                    per_image_s = (4 * map_cell.ms_per_image / 1e3 if kind == "step" and map_cell
                                   else forward_s * cost_factor(method, options, kind))
                    per_image_mib = None
                estimate_s = per_image_s * batch * (args.repeats + 1)
                estimate_mib = None if per_image_mib is None else per_image_mib * batch
                fn = make_map(model, x, target, method, options) if kind == "map" else \
                    make_step(model, x, target, method, options)
                run_cell(cell, fn, clock, args.repeats, estimate_s, estimate_mib, args)
                stop = kept(cell, cells, f"{size}: {method:<22} {kind:<5} batch {batch:>4}")
                last = cell if stop is None else last
    del model, x_all
    gc.collect()
    if clock.cuda:
        torch.cuda.empty_cache()


def make_map(model, x, target, method, options) -> Callable[[], Tensor]:
    return lambda: manipex.explain(model, x, method, target, **options)


def make_step(model, x, target, method, options) -> Callable[[], Tensor]:
    def step() -> Tensor:
        xg = x.detach().requires_grad_(True)
        h = manipex.explain(model, xg, method, target, create_graph=True, **options)
        loss = manipex.relevance(h).pow(2).sum()
        (g,) = torch.autograd.grad(loss, xg)
        return g

    return step


# --------------------------------------------------------------------------------------------
# (c): the whole attack against steps


def bench_attack(args, clock: Clock, cells: List[Cell]) -> None:
    size, batch = args.attack_size, args.attack_batch
    name, model, shape = build_model(size, args)
    model = model.to(clock.device).eval()
    torch.manual_seed(1)
    x = torch.rand(batch, *shape, device=clock.device)
    target_maps = torch.rand(batch, *shape[1:], device=clock.device)
    objective = TargetMap(target_maps)
    for method in args.methods:
        options = method_options(method, args)
        step_cell = next((c for c in cells if c.size == size and c.method == method and c.kind == "step"
                          and c.batch == batch and c.ms_per_image), None)
        last: Optional[Cell] = None
        stop = ""
        for steps in sorted(args.steps):
            cell = Cell(size, name, method, "attack", batch, steps=steps)
            if stop:
                cell.status = stop
                cells.append(cell)
                continue
            if last is not None:
                per_call = last.ms_per_image / 1e3 * batch * steps / last.steps
            else:
                per_step = (step_cell.ms_per_image / 1e3 * batch if step_cell else
                            clock.seconds(make_step(model, x, None, method, options)))
                per_call = 1.5 * per_step * steps
            estimate_s = per_call * (args.repeats + 1)

            def attack(steps=steps, method=method, options=options):
                return manipex.attacks.manipulate_input(
                    model, x, objective, method, method_options=options or None, steps=steps,
                    patience=None, progress=False)

            run_cell(cell, attack, clock, args.repeats, estimate_s, None, args)
            stop = kept(cell, cells, f"attack {method:<22} steps {steps:>4}")
            last = cell if stop is None else last


def kept(cell: "Cell", cells: List["Cell"], label: str) -> Optional[str]:
    """Keep a measured ``cell`` and print it (stderr); the status that ends its line (skipped,
    OOM) where it has no time, else None."""
    cells.append(cell)
    time_text = "-" if cell.ms_per_image is None else f"{cell.ms_per_image:.3f} ms/img"
    print(f"  {label}: {time_text} {cell.status}", file=sys.stderr, flush=True)
    if cell.ms_per_image is not None:
        return None
    return "skipped" if cell.status.startswith("skipped") else cell.status


# --------------------------------------------------------------------------------------------
# Output


#: The attack step's cost over the map's that the scaling table holds it to.
STEP_OVER_MAP = 5.0


def tables(cells: List[Cell], args) -> str:
    import pandas as pd

    df = pd.DataFrame([asdict(c) for c in cells])
    out: List[str] = []
    grid = df[df.kind.isin(KINDS)]
    if len(grid):
        def show(col: str, fmt: str) -> pd.DataFrame:
            text = grid.apply(lambda r: fmt.format(r[col]) if r.status == "ok" and pd.notna(r[col]) else
                              ("skipped" if r.status.startswith("skipped") else r.status), axis=1)
            table = grid.assign(cell=text).pivot_table(
                index=["size", "model", "method", "kind"], columns="batch", values="cell", aggfunc="first",
                sort=False)
            table.columns = [f"batch {b}" for b in table.columns]
            return table.fillna("")

        with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_rows", 500):
            out.append("ms per image (median of the timed calls):")
            out.append(show("ms_per_image", "{:.3f}").to_string())
            out.append("")
            out.append("peak memory growth during one call, MiB (" +
                       ("torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
                        else "resident set, /proc/self/status") + "):")
            out.append(show("peak_mib", "{:.0f}").to_string())
            ratio, targets = [], []
            for (size, method), g in grid[grid.status == "ok"].groupby(["size", "method"], sort=False):
                m = g[g.kind == "map"].set_index("batch").ms_per_image
                s = g[g.kind == "step"].set_index("batch").ms_per_image
                common = m.index.intersection(s.index)
                if len(common):
                    b = max(common)
                    ratio.append(f"  {size:>3} {method:<22} step / map at batch {b}: {s[b] / m[b]:.1f}x")
                    targets.append(f"  {size:>3} {method:<22} attack step <= {STEP_OVER_MAP:g}x the map at batch {b}: "
                                   f"{s[b] / m[b]:.1f}x {'ok' if s[b] / m[b] <= STEP_OVER_MAP else 'miss'}")
                for kind, series in (("map", m), ("step", s)):
                    if len(series) >= 2:
                        first, last = series.index.min(), series.index.max()
                        gain = series[first] / series[last]
                        targets.append(f"  {size:>3} {method:<22} {kind:<4} per image at batch {last} <= at batch "
                                       f"{first}: {gain:.1f}x cheaper {'ok' if gain >= 1 else 'miss'}")
            if ratio:
                out.append("")
                out.append("attack step / map (largest batch with both):")
                out += ratio
            if targets:
                out.append("")
                out.append("targets: batching pays (a larger batch costs no more per image); an attack step "
                           f"costs at most {STEP_OVER_MAP:g}x its map (forward, backward and a second backward "
                           "through both):")
                out += targets
    attack = df[df.kind == "attack"]
    if len(attack):
        out.append("")
        out.append(f"whole attack (manipulate_input, batch {args.attack_batch}, {args.attack_size}x"
                   f"{args.attack_size}) against steps:")
        rows = []
        for _, r in attack.iterrows():
            ok = r.status == "ok"
            rows.append({"method": r.method, "steps": int(r.steps),
                         "ms/img": f"{r.ms_per_image:.2f}" if ok else r.status,
                         "ms/img/step": f"{r.ms_per_image_step:.3f}" if ok else ""})
        fits = []
        for method, g in attack.groupby("method", sort=False):
            ok = g[g.status == "ok"]
            step = grid[(grid["size"] == args.attack_size) & (grid.method == method) & (grid.kind == "step")
                        & (grid.batch == args.attack_batch) & (grid.status == "ok")] if len(grid) else grid
            isolated = f"{step.ms_per_image.iloc[0]:.3f}" if len(step) else "-"
            if len(ok) >= 2:
                slope, intercept = _line(ok.steps.tolist(), ok.ms_per_image.tolist())
                fits.append({"method": method, "fixed ms/img": f"{intercept:.2f}",
                             "ms/img per step": f"{slope:.3f}", "isolated step (b) ms/img": isolated,
                             "per step / isolated": f"{slope / step.ms_per_image.iloc[0]:.1f}x"
                             if len(step) else "-"})
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            out.append(pd.DataFrame(rows).set_index(["method", "steps"]).to_string())
            if fits:
                out.append("")
                out.append("straight line ms/img = fixed + per step * steps, next to the isolated step "
                           "of (b) at the same batch:")
                out.append(pd.DataFrame(fits).set_index("method").to_string())
    return "\n".join(out)


def _line(xs: List[float], ys: List[float]) -> Tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((a - mx) ** 2 for a in xs)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def figure(cells: List[Cell], args, title_extra: str):
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullLocator

    from manipex.style import RC, color_for
    import matplotlib

    grid = [c for c in cells if c.kind in KINDS and c.ms_per_image is not None]
    sizes = [s for s in args.sizes if any(c.size == s for c in grid)] or args.sizes
    with matplotlib.rc_context({k: v for k, v in RC.items() if k != "axes.prop_cycle"}):
        fig = Figure(figsize=(3.2 * len(sizes) + 1.8, 3.4), layout="constrained")
        axes = fig.subplots(1, len(sizes), squeeze=False)[0]
        handles: Dict[str, object] = {}
        for ax, size in zip(axes, sizes):
            here = [c for c in grid if c.size == size]
            model = here[0].model if here else next((c.model for c in cells if c.size == size), "")
            for method in args.methods:
                for kind, style, marker in (("map", "-", "o"), ("step", "--", "s")):
                    line = sorted((c for c in here if c.method == method and c.kind == kind),
                                  key=lambda c: c.batch)
                    if not line:
                        continue
                    (h,) = ax.plot([c.batch for c in line], [c.ms_per_image for c in line], style,
                                   marker=marker, markersize=3.5, color=color_for(method),
                                   label=f"{method}, {'map' if kind == 'map' else 'attack step'}")
                    handles.setdefault(h.get_label(), h)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            batches = sorted({c.batch for c in here})
            if batches:
                ax.set_xticks(batches, [str(b) for b in batches])
                ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(
                lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
            ax.set_xlabel("batch size (images)")
            ax.set_title(f"{size}x{size}: {model}")
            if not here:
                ax.text(0.5, 0.5, "no cell measured", transform=ax.transAxes, ha="center")
        axes[0].set_ylabel("time per image (ms)")
        fig.suptitle(f"Cost per image against batch size (log-log){title_extra}")
        fig.legend(list(handles.values()), list(handles), loc="outside right center", frameon=False)
    return fig


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.replace(",", " ").split()]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="gradient,lrp,integrated_gradients",
                        help="comma-separated manipex methods")
    parser.add_argument("--batches", type=_ints, default=[1, 4, 16, 64, 256], help="e.g. 1,4,16,64,256")
    parser.add_argument("--batches-224", type=_ints, default=[1, 4],
                        help="batches at 224x224 on CPU (on cuda: --batches)")
    parser.add_argument("--sizes", type=_ints, default=[28, 32, 224], help="image sizes of 28, 32, 224")
    parser.add_argument("--cifar", choices=("resnet20", "vgg16"), default="resnet20", help="the 32x32 model")
    parser.add_argument("--imagenet", choices=("resnet50", "vgg16"), default="resnet50",
                        help="the 224x224 model")
    parser.add_argument("--steps", type=_ints, default=[10, 50, 100],
                        help="attack steps for (c); empty ('') skips (c)")
    parser.add_argument("--attack-batch", type=int, default=16, help="batch of the attack (c)")
    parser.add_argument("--attack-size", type=int, default=28, choices=(28, 32, 224))
    parser.add_argument("--ig-steps", type=int, default=50, help="integrated gradients steps")
    parser.add_argument("--sg-samples", type=int, default=20, help="SmoothGrad samples")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after one warm-up")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per cell (warm-up and repeats, estimated): larger is skipped")
    parser.add_argument("--max-memory", type=float, default=None,
                        help="GiB a cell may grow by (estimated); default 70%% of what is free")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--csv", help="write every cell as a row to this CSV")
    parser.add_argument("--figure", help="write the log-log figure to this PNG")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in manipex.explainers.methods()]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(manipex.explainers.methods())}")
    bad = [s for s in args.sizes if s not in (28, 32, 224)]
    if bad:
        parser.error(f"image sizes must be 28, 32 or 224: {bad[0]}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    torch.set_num_threads(args.threads)
    clock = Clock(device)
    args.max_memory_mib = (0.7 * clock.available_mib() if args.max_memory is None
                           else 1024 * args.max_memory)

    where = (torch.cuda.get_device_name(device) if clock.cuda
             else f"CPU, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}")
    print(f"manipex {getattr(manipex, '__version__', '?')}, torch {torch.__version__}, {where}; median of "
          f"{args.repeats} calls after 1 warm-up; budget {args.budget:g} s per cell, memory "
          f"{args.max_memory_mib / 1024:.1f} GiB; IG steps {args.ig_steps}")
    if hasattr(os, "getloadavg") and not clock.cuda:
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    start = time.perf_counter()
    cells: List[Cell] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size in args.sizes:
            bench_size(size, args, clock, cells)
        if args.steps:
            bench_attack(args, clock, cells)
    print()
    print(tables(cells, args))
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    if args.csv:
        import pandas as pd

        pd.DataFrame([asdict(c) for c in cells]).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if args.figure:
        extra = f" ({torch.cuda.get_device_name(device)})" if clock.cuda else \
            f" (CPU, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
        figure(cells, args, extra).savefig(args.figure, dpi=150)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
