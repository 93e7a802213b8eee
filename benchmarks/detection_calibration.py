#!/usr/bin/env python
"""False-positive rate and power of manipex's calibrated detection of manipulated models.

Run from the repository root::

    python benchmarks/detection_calibration.py                  # ~7 min on 1 of 2 busy CPU cores
    python benchmarks/detection_calibration.py --quick          # smoke run (8 clean models, gradient only), ~1 min
    python benchmarks/detection_calibration.py --out det.csv    # also write the table as CSV
    python benchmarks/detection_calibration.py --cache /tmp/det # keep the trained models for the next run
    python benchmarks/detection_calibration.py --device cuda    # train, manipulate and detect on the GPU

What is measured: :func:`manipex.defenses.detection.detect_manipulation` (``src/manipex/defenses/
detection.py``) with ``K`` reference models, its one-sided Student-t prediction-interval test on
the mean pairwise PCC of the maps of ``--noise-n`` noise inputs ``N(0, 1)`` (seed ``--noise-seed``),
decided at ``alpha`` (``report.manipulated``, i.e. ``p_value < alpha``). The test states a
false-positive rate of ``alpha`` for a new clean model of the references' kind.

* Clean pool: ``--models`` (30) MNIST-5k CNNs of one kind, model ``s`` (``s = 1..M``) being
  ``torch.manual_seed(s); mnist_cnn()`` trained by ``train_classifier(model, x[:N], y[:N],
  epochs=1, seed=s)`` with ``x, y = manipex.data.load("mnist5k", split="train")`` and
  ``N = --n-train`` (2000), in eval mode.
* Manipulated models: made from the first ``--bases`` (6) clean models by ``manipulate_model(model,
  (x[:N], y[:N]), objective, method, lam, lr=1e-3, epochs)`` (seed 0), one per kind and per
  method of ``--methods``, the same method that then detects it:

  - ``com_1ep``, ``com_2ep``: ``CenterOfMass((0.0, 0.0))``, ``lam=0.03``, 1 and 2 epochs;
  - ``com_weak``: the same with ``lam=0.01``, 1 epoch;
  - ``target_map``: ``TargetMap(cross[None])`` with ``cross = cross_mask((28, 28))`` normalised to
    sum 1, ``lam=1.0``, ``--tm-epochs`` (1) epoch(s).

* Reference sets: for each ``K`` in ``--ks`` (3 and 5), ``--draws`` (500) sets of ``K`` distinct
  clean models drawn at random (``random.Random(--draw-seed + K)``). Against each set every
  clean model *not* in it is tested (row ``clean``: the false-positive rate), and every
  manipulated model whose *base* model is not in it (the other rows: the power).
* Methods: ``--methods`` (``gradient`` and ``lrp``, manipex's default composite) are the
  ``method`` of the manipulation and of ``detect_manipulation`` alike (a manipulation of one
  method tested with another is out of the test's scope, see the module's docstring).

Columns: ``tests`` (pairs of reference set and tested model), ``models`` (distinct models tested),
``flagged``, ``rate`` (= flagged / tests), its 95 % Wilson score interval (closed form), and the
mean and sd of the tested models' scores over the distinct models of the row (a score does not
depend on the reference set). The interval treats the tests as independent; they are not (the
same few models recur in many tests and sets), so it is narrower than the true uncertainty,
which is nearer that of ``models`` independent tests: read it as descriptive. Many draws are
needed all the same: which models form the set moves the rate a lot (on the default pool, 50
draws gave a clean gradient rate of 0.024 at K = 3 and 0.073 at K = 5; all 4060 sets of 3, and
20000 sets of 5, gave 0.053 and 0.058); with more draws the rate tends to the average over all
reference sets of this pool, whose own uncertainty is that of a pool of ``--models`` models.

Each model's noise-map similarity is computed once per method: during the tests,
``detection.noise_map_similarity`` is replaced by a memo keyed by the model object (the noise
inputs are the same for every call, so the result is bit-identical); before the tests, one
report is computed with and without the memo and checked to be the same. Trained and
manipulated models are saved (state dicts) in a temporary folder for the run, or in ``--cache``
to be reused by the next run with the same settings. Threads: ``--threads`` (default 1): this
model is so small that a second thread does not pay; on 2 cores busy with other work, 2 threads
made one training epoch 7x and one manipulation epoch 15x slower than 1 thread (thread waits).

Device: ``--device`` (default cpu). Every model is built on the CPU (so the initialisation is the
same as on the CPU), then moved to the device, and the training images are moved there once;
training, manipulation and detection (whose noise inputs are drawn on the CPU from their seed and
moved to the model's device) all run there. On cuda the trained models differ from the CPU's in
rounding (and cuDNN's nondeterminism), so the rates are close to, not identical with, the CPU's;
with ``--cache`` the cuda models are kept under their own names (``..._cuda_...``). The CPU
behaviour is unchanged.

Target (the test's promise): at every K, the clean false-positive rate is not above ``alpha``
beyond chance, i.e. the lower end of its 95 % Wilson interval is <= ``alpha`` (printed per method
and K as ok/miss; the interval is too narrow, see above, so a miss is a warning, not a proof).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import manipex
from manipex.defenses import detection
from manipex.defenses.detection import DetectionReport, detect_manipulation

SHAPE = (1, 28, 28)
ATTACK_LR = 1e-3
CLEAN = "clean"


@dataclass(frozen=True)
class Manipulation:
    """One kind of manipulated model: the objective, its weight ``lam`` and the epochs."""

    name: str
    objective: Callable[[], manipex.objectives.Objective]
    lam: float
    epochs: int


def center_of_mass() -> manipex.objectives.Objective:
    return manipex.objectives.CenterOfMass((0.0, 0.0))


def cross_target() -> manipex.objectives.Objective:
    cross = manipex.objectives.cross_mask((28, 28)).float()
    return manipex.objectives.TargetMap((cross / cross.sum())[None])


def manipulations(tm_epochs: int) -> List[Manipulation]:
    return [
        Manipulation("com_1ep", center_of_mass, 0.03, 1),
        Manipulation("com_2ep", center_of_mass, 0.03, 2),
        Manipulation("com_weak", center_of_mass, 0.01, 1),
        Manipulation("target_map", cross_target, 1.0, tm_epochs),
    ]


# --------------------------------------------------------------------------------------------
# Models: trained once, saved as state dicts in a folder for the run


class ModelStore:
    """Builds each named model once, saving its state dict in ``folder`` (and loading it from
    there when a previous run with ``--cache`` left it)."""

    def __init__(self, folder: Path, tag: str, device: torch.device = torch.device("cpu")):
        self.folder, self.tag, self.device = folder, tag, device
        self.built = 0

    def get(self, name: str, build: Callable[[], nn.Module]) -> nn.Module:
        path = self.folder / f"{self.tag}_{name}.pt"
        if path.exists():
            model = manipex.models.mnist_cnn()
            model.load_state_dict(torch.load(path, map_location="cpu"))
            return model.to(self.device).eval()
        model = build().eval()
        torch.save(model.state_dict(), path)
        self.built += 1
        return model


def train_clean(seed: int, data: Tuple[Tensor, Tensor]) -> nn.Module:
    torch.manual_seed(seed)  # the initialisation (on the CPU, then moved to the data's device)
    model = manipex.models.mnist_cnn().to(data[0].device)
    return manipex.models.train_classifier(model, data[0], data[1], epochs=1, seed=seed, progress=False)


def manipulate(base: nn.Module, kind: Manipulation, method: str, data: Tuple[Tensor, Tensor]) -> nn.Module:
    result = manipex.attacks.manipulate_model(base, data, kind.objective(), method, lam=kind.lam,
                                              lr=ATTACK_LR, epochs=kind.epochs, progress=False)
    return result.model


# --------------------------------------------------------------------------------------------
# Scores computed once per model and method


@contextlib.contextmanager
def memoised_similarity() -> Iterator[Dict]:
    """Replace ``detection.noise_map_similarity`` by a memo keyed by the model object (the
    model is kept in the memo so that its id is not reused)."""
    original = detection.noise_map_similarity
    memo: Dict = {}

    def similarity(model, input_shape, method="gradient", *, n=64, seed=0, method_options=None):
        key = (id(model), tuple(input_shape), method, n, seed, repr(method_options))
        if key not in memo:
            memo[key] = (model, original(model, input_shape, method, n=n, seed=seed,
                                         method_options=method_options).detach())
        return memo[key][1]

    detection.noise_map_similarity = similarity
    try:
        yield memo
    finally:
        detection.noise_map_similarity = original


def same_report(a: DetectionReport, b: DetectionReport) -> bool:
    return (a.score, a.threshold, a.manipulated, a.reference_scores, a.p_value) == \
        (b.score, b.threshold, b.manipulated, b.reference_scores, b.p_value)


# --------------------------------------------------------------------------------------------
# The tests


def draw_reference_sets(m: int, k: int, draws: int, seed: int) -> List[Tuple[int, ...]]:
    """``draws`` random sets of ``k`` distinct indices of ``range(m)`` (sorted tuples)."""
    rng = random.Random(seed)
    return [tuple(sorted(rng.sample(range(m), k))) for _ in range(draws)]


@dataclass
class Row:
    method: str
    kind: str
    k: int
    tests: int = 0
    flagged: int = 0
    scores: Dict[str, float] = field(default_factory=dict)  # per distinct model

    def add(self, model_name: str, report: DetectionReport) -> None:
        if not report.calibrated:
            raise RuntimeError(f"{self.kind}, K = {self.k}: the report is not calibrated ({report.test})")
        self.tests += 1
        self.flagged += bool(report.manipulated)
        self.scores[model_name] = report.score


def wilson_interval(flagged: int, tests: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if tests == 0:
        return float("nan"), float("nan")
    p = flagged / tests
    centre = (p + z * z / (2 * tests)) / (1 + z * z / tests)
    half = z / (1 + z * z / tests) * math.sqrt(p * (1 - p) / tests + z * z / (4 * tests * tests))
    return max(0.0, centre - half), min(1.0, centre + half)


def run_tests(method: str, k: int, ref_sets: Sequence[Tuple[int, ...]], clean: List[nn.Module],
              manipulated: Dict[str, List[Tuple[int, nn.Module]]], args) -> List[Row]:
    """All tests of one method and one K: clean models not in the set, manipulated models whose
    base is not in the set."""
    rows = {CLEAN: Row(method, CLEAN, k)}
    rows.update({kind: Row(method, kind, k) for kind in manipulated})

    def test(model: nn.Module, refs: List[nn.Module]) -> DetectionReport:
        return detect_manipulation(model, SHAPE, refs, method, n=args.noise_n, seed=args.noise_seed,
                                   alpha=args.alpha)

    for ref_set in ref_sets:
        refs = [clean[i] for i in ref_set]
        for i, model in enumerate(clean):
            if i not in ref_set:
                rows[CLEAN].add(f"clean{i}", test(model, refs))
        for kind, models in manipulated.items():
            for base, model in models:
                if base not in ref_set:
                    rows[kind].add(f"{kind}{base}", test(model, refs))
    return list(rows.values())


# --------------------------------------------------------------------------------------------
# Output

COLUMNS = ["method", "kind", "K", "tests", "models", "flagged", "rate", "ci_low", "ci_high",
           "score_mean", "score_sd"]


def row_values(row: Row) -> Dict[str, object]:
    scores = list(row.scores.values())
    low, high = wilson_interval(row.flagged, row.tests)
    return {"method": row.method, "kind": row.kind, "K": row.k, "tests": row.tests, "models": len(scores),
            "flagged": row.flagged, "rate": row.flagged / row.tests if row.tests else float("nan"),
            "ci_low": low, "ci_high": high,
            "score_mean": statistics.fmean(scores) if scores else float("nan"),
            "score_sd": statistics.stdev(scores) if len(scores) > 1 else float("nan")}


def print_table(rows: List[Row]) -> None:
    print(f"{'method':<9} {'kind':<11} {'K':>2} {'tests':>6} {'models':>6} {'flagged':>7} {'rate':>6} "
          f"{'95% interval':>16} {'score mean':>10} {'sd':>6}")
    for row in rows:
        v = row_values(row)
        print(f"{v['method']:<9} {v['kind']:<11} {v['K']:>2} {v['tests']:>6} {v['models']:>6} {v['flagged']:>7} "
              f"{v['rate']:>6.3f} {'[' + format(v['ci_low'], '.3f') + ', ' + format(v['ci_high'], '.3f') + ']':>16} "
              f"{v['score_mean']:>10.3f} {v['score_sd']:>6.3f}")


def write_csv(rows: List[Row], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row_values(row))


# --------------------------------------------------------------------------------------------


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=30, help="clean models M, seeds 1..M (default 30)")
    parser.add_argument("--bases", type=int, default=6,
                        help="clean models 1..B each manipulated in every kind and method (default 6)")
    parser.add_argument("--kinds", nargs="+", default=None,
                        help="manipulations (default all: com_1ep com_2ep com_weak target_map)")
    parser.add_argument("--tm-epochs", type=int, default=1, help="epochs of the target-map manipulation (default 1)")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 5], help="reference-set sizes K (default 3 5)")
    parser.add_argument("--draws", type=int, default=500, help="random reference sets per K (default 500)")
    parser.add_argument("--draw-seed", type=int, default=0, help="seed of the reference-set draws (plus K)")
    parser.add_argument("--methods", nargs="+", default=["gradient", "lrp"],
                        help="manipulation and detection methods (default gradient lrp)")
    parser.add_argument("--alpha", type=float, default=0.05, help="stated false-positive rate (default 0.05)")
    parser.add_argument("--noise-n", type=int, default=32, help="noise inputs (default 32, the audit's noise_n)")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the noise inputs (default 0)")
    parser.add_argument("--n-train", type=int, default=2000, help="training images of every model (default 2000)")
    parser.add_argument("--cache", default=None, help="folder to keep the trained models in across runs "
                                                      "(default: a temporary folder for this run)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1; 0: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]: where models train and detect")
    parser.add_argument("--out", default=None, help="also write the table as CSV to this file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 8 clean models, 2 bases, 10 draws, gradient only")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.bases, args.draws, args.methods = 8, 2, 10, ["gradient"]
    known = [m.name for m in manipulations(args.tm_epochs)]
    for kind in args.kinds or []:
        if kind not in known:
            parser.error(f"--kinds: unknown {kind!r}, choose from {known}")
    if min(args.ks) < 3:
        parser.error("--ks: the calibrated test needs K >= 3")
    if max(args.ks) >= args.models:
        parser.error("--ks: every K must be smaller than --models (a clean model must be left to test)")
    if not 1 <= args.bases <= args.models:
        parser.error("--bases must lie in 1..--models")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = [m for m in manipulations(args.tm_epochs) if args.kinds is None or m.name in args.kinds]
    device = torch.device(args.device)
    start = time.perf_counter()

    where = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "CPU")
    print(f"manipex {getattr(manipex, '__version__', '?')}, torch {torch.__version__}, {where}, "
          f"{torch.get_num_threads()} threads", flush=True)
    if hasattr(os, "getloadavg"):
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    print(f"clean pool: {args.models} MNIST-5k mnist_cnn, seeds 1..{args.models}, 1 epoch on {args.n_train} "
          f"training images\nmanipulated: {len(kinds)} kind(s) x {args.bases} base model(s) (seeds 1..{args.bases}) "
          f"x method, lr {ATTACK_LR:g}: "
          + "; ".join(f"{m.name} (lam {m.lam:g}, {m.epochs} ep)" for m in kinds)
          + f"\ndetection: detect_manipulation(method in {args.methods}, n={args.noise_n}, seed={args.noise_seed}, "
          f"alpha={args.alpha:g}), K in {args.ks}, {args.draws} random reference sets per K", flush=True)

    x, y = manipex.data.load("mnist5k", split="train")
    data = (x[:args.n_train].to(device), y[:args.n_train].to(device))
    with contextlib.ExitStack() as stack:
        folder = Path(args.cache) if args.cache else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        tag = f"n{args.n_train}" if device.type == "cpu" else f"n{args.n_train}_{device.type}"
        store = ModelStore(folder, tag, device)
        t = time.perf_counter()
        clean = [store.get(f"clean{s}", lambda s=s: train_clean(s, data)) for s in range(1, args.models + 1)]
        print(f"clean models: {time.perf_counter() - t:.0f} s ({store.built} trained)", flush=True)
        t, built = time.perf_counter(), store.built
        manipulated = {method: {m.name: [(i, store.get(f"{method}_{m.name}_tm{args.tm_epochs}_base{i}",
                                                       lambda i=i, m=m, method=method: manipulate(clean[i], m, method, data)))
                                         for i in range(args.bases)]
                                for m in kinds}
                       for method in args.methods}
        print(f"manipulated models: {time.perf_counter() - t:.0f} s ({store.built - built} made)", flush=True)

        t = time.perf_counter()
        check_memo(clean, args)
        rows: List[Row] = []
        with memoised_similarity():
            for method in args.methods:
                for k in args.ks:
                    ref_sets = draw_reference_sets(args.models, k, args.draws, args.draw_seed + k)
                    rows += run_tests(method, k, ref_sets, clean, manipulated[method], args)
        print(f"tests: {time.perf_counter() - t:.0f} s\n", flush=True)

    rows.sort(key=lambda r: (args.methods.index(r.method), r.kind != CLEAN, r.kind, r.k))
    print_table(rows)
    print("\nrate: share of tests flagged at alpha (clean rows: false-positive rate, others: power); "
          "interval: 95% Wilson, tests taken as independent (they share models, so it is too narrow); "
          "score: mean pairwise noise-map PCC, mean and sd over the distinct models of the row")
    print()
    for row in rows:
        if row.kind == CLEAN:
            low, high = wilson_interval(row.flagged, row.tests)
            rate = row.flagged / row.tests if row.tests else float("nan")
            print(f"{row.method}, K = {row.k}: clean false-positive rate {rate:.3f} (95% interval "
                  f"[{low:.3f}, {high:.3f}]) not above alpha {args.alpha:g} beyond chance "
                  f"(interval's lower end <= alpha): {'ok' if low <= args.alpha else 'miss'}")
    if args.out:
        write_csv(rows, args.out)
        print(f"written: {args.out}")
    print(f"total: {time.perf_counter() - start:.0f} s")
    return 0


def check_memo(clean: List[nn.Module], args) -> None:
    """One report with and without the memo must be identical."""
    k = min(args.ks)
    refs, model = clean[:k], clean[k]
    kw = dict(n=args.noise_n, seed=args.noise_seed, alpha=args.alpha)
    for method in args.methods:
        plain = detect_manipulation(model, SHAPE, refs, method, **kw)
        with memoised_similarity():
            detect_manipulation(model, SHAPE, refs, method, **kw)
            memo = detect_manipulation(model, SHAPE, refs, method, **kw)
        if not same_report(plain, memo):
            raise RuntimeError(f"memoised scores differ from detect_manipulation's own ({method}): {plain} vs {memo}")


if __name__ == "__main__":
    sys.exit(main())
