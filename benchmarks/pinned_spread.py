#!/usr/bin/env python
"""The spread over seeds of the figures that ``tests/test_fidelity.py`` pins.

Run from the repository root::

    python benchmarks/pinned_spread.py               # 5 seeds, about 5 min on 2 CPU cores
    python benchmarks/pinned_spread.py --seeds 0 1    # fewer

The pinned figures are measured on the default model, whose weights ship with manipex and so
are the same on every machine. How far a figure may move before a test calls it a change comes
from how much it moves between equally good models: for each seed ``s`` the default recipe is
trained again with ``seed=s`` (seed 0 is the shipped model), every pinned figure is measured on
it exactly as the test measures it, and the table gives each figure on seed 0, the mean and
standard deviation over the seeds, and the tolerance the test uses:
``max(0.02, 2 sd)``, rounded up to 0.01.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time

import torch

import manipex
from manipex.explainers import explain, relevance
from manipex.metrics import pcc
from manipex.models import pretrained


def noise_stability(model, x, method, beta):
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return pcc(relevance(explain(model, noisy, method, softplus_beta=beta)),
               relevance(explain(model, x, method, softplus_beta=beta))).median().item()


def targeted(model, method, steps=100, eps=0.2, **attack):
    from manipex.attacks import manipulate_input
    from manipex.objectives import TargetImage

    x, _ = manipex.data.load("mnist5k", split="test")
    xs, xt = x[:8], x[16:24]
    target = relevance(explain(model, xt, method, model(xs).argmax(1)))
    torch.manual_seed(0)
    res = manipulate_input(model, xs, TargetImage(xt), method, steps=steps, eps=eps, progress=False, **attack)
    return pcc(res.maps_before, target).mean().item(), pcc(res.maps_after, target).mean().item()


def rieger(weights, out):
    import contextlib
    import io

    from manipex.experiments import run

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its tables
            tables = run("rieger2020", overrides={"n": 8, "batch": 8, "steps": 40, "transfer": [], "blank": [],
                                              "budgets": [0.5], "weights": str(weights),
                                              "methods": ["gradient", "guided_backprop", "lrp", "agg_mean"]},
                     out=out, quiet=True)
    d_pcc = next(v for k, v in tables.items() if k.startswith("Table 1"))["Δ-PCC"]
    larger = tables["Table 1 by budget: Δ-PCC of the targeted attack"]["eps 0.5"]
    return {**{f"rieger Δ-PCC eps 0.2 {m}": float(v) for m, v in d_pcc.items()},
            **{f"rieger Δ-PCC eps 0.5 {m}": float(v) for m, v in larger.items()}}


def figures(model, weights, out):
    x, _ = manipex.data.load("mnist5k", split="test")
    x = x[:32]
    row = {}
    for method in ("lrp", "gradient"):
        for beta in (None, 1.0, 0.5):
            row[f"noise stability {method} beta {beta}"] = noise_stability(model, x, method, beta)
    before, hard = targeted(model, "gradient", smooth_pools=False)
    row.update({"gradient before": before, "gradient hard pools": hard,
                "gradient smooth pools": targeted(model, "gradient")[1]})
    before, small = targeted(model, "lrp", eps=0.2)
    row.update({"lrp before": before, "lrp eps 0.2": small, "lrp eps 0.5": targeted(model, "lrp", eps=0.5)[1]})
    row.update(rieger(weights, out))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    recipe = pretrained.DEFAULT_RECIPES["mnist"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            start = time.perf_counter()
            if seed == recipe.seed:
                model = manipex.models.load_default("mnist")
            else:
                model, _ = pretrained.train_recipe(dataclasses.replace(recipe, seed=seed))
            weights = manipex.models.save(model, f"{tmp}/seed{seed}.safetensors")
            rows[seed] = figures(model, weights, f"{tmp}/run{seed}")
            print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\n{'figure':<40}{'seed 0':>8}{'mean':>8}{'sd':>8}{'tol':>7}")
    for name in rows[args.seeds[0]]:
        values = [rows[s][name] for s in args.seeds]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        tol = math.ceil(max(0.02, 2 * sd) * 100) / 100
        first = rows[0][name] if 0 in rows else float("nan")
        print(f"{name:<40}{first:8.3f}{statistics.mean(values):8.3f}{sd:8.3f}{tol:7.2f}")


if __name__ == "__main__":
    main()
