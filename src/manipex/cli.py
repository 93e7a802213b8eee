"""The ``manipex`` command line.

``manipex run [EXPERIMENT]`` runs (or resumes) a paper's experiment, by default the quick
benchmark on the embedded MNIST-5k data, and writes its tables and an HTML report.
``manipex audit [MODEL]`` audits one model's explanations (attacks, defenses, curvature, detection
against reference models, a verdict). ``manipex list`` lists experiments, methods, defenses and
datasets; ``manipex report DIR``
rebuilds a report. ``manipex explain`` writes a figure grid of every method's relevance map
for a few test images of the default model; ``manipex methods`` lists the methods.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

# the papers' order: gradient-based, propagation-based, smoothing, CAM/perturbation, aggregates
DISPLAY_ORDER = ["gradient", "grad_x_input", "integrated_gradients", "guided_backprop", "lrp",
                 "pattern_attribution", "smoothgrad", "gradcam", "occlusion", "agg_mean", "agg_var"]

DEFAULT_OPTIONS = {
    "integrated_gradients": {"steps": 30},  # Dombrowski's reference setting
    "smoothgrad": {"samples": 20, "seed": 0},
    "occlusion": {"window": 4, "stride": 2},
}


def _explain(args: argparse.Namespace) -> int:
    import manipex
    from manipex.figures import map_grid

    torch.set_num_threads(max(1, args.threads))
    methods = args.methods or sorted(manipex.methods(), key=lambda m: (m not in DISPLAY_ORDER, DISPLAY_ORDER.index(m) if m in DISPLAY_ORDER else 0, m))
    unknown = [m for m in methods if m not in manipex.methods()]
    if unknown:
        print(f"manipex explain: unknown method {unknown[0]!r}; available: {', '.join(manipex.methods())}", file=sys.stderr)
        return 2
    if args.n < 1:
        print("manipex explain: --n must be at least 1", file=sys.stderr)
        return 2
    from manipex.experiments import ConfigError
    from manipex.experiments.sources import (SOURCE_FIELDS, _normalization, check_sources, load_images,
                                             original_model, require_model)

    config = {key: field.default for key, field in SOURCE_FIELDS.items()}  # the audit's defaults
    given = {"dataset": args.data, "root": args.root, "image_size": args.image_size, "normalize": args.normalize,
             "arch": args.arch, "weights": None if args.model == "default" else args.model}
    config.update({key: value for key, value in given.items() if value is not None})
    try:
        check_sources(config)
        require_model(config, "explain")
        (x_train, _), (x, y) = load_images(config, n_train=2000, n_eval=args.n)
        model = original_model(config, (x_train, None), "cpu")
    except ConfigError as err:
        print(f"manipex explain: {err}", file=sys.stderr)
        return 2
    predicted = model(x).argmax(1)
    options = {k: dict(v) for k, v in DEFAULT_OPTIONS.items()}
    if "pattern_attribution" in methods:
        options["pattern_attribution"] = {"patterns": manipex.fit_patterns(model, x_train[:2000])}
    heatmaps, timings = {}, {}
    for method in methods:
        start = time.perf_counter()
        h = manipex.explain(model, x, method, **options.get(method, {}))
        timings[method] = (time.perf_counter() - start) * 1000 / len(x)
        heatmaps[method] = manipex.relevance(h)
    out = Path(args.out)
    titles = [f"label {int(a)} / pred {int(b)}" for a, b in zip(y, predicted)]
    norm = _normalization(config)
    if norm is not None:  # show the pixels, not the normalised values
        mean, std = (torch.tensor(v).reshape(1, -1, 1, 1) for v in norm)
        x = (x * std + mean).clamp(0, 1)
    path = map_grid(x, heatmaps, out / f"explanations.{args.format}", titles=titles)
    if not args.quiet:
        print(f"{'method':<22}{'ms / image':>12}")
        for method, ms in timings.items():
            print(f"{method:<22}{ms:>12.2f}")
    print(f"wrote {path.resolve()}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    import manipex
    from manipex.explainers.base import _REGISTRY

    for name in manipex.methods():
        cls = _REGISTRY[name]
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<22}{doc}")
    return 0


def _parse_value(text: str):
    """A ``--set key=value`` value as TOML would read it (numbers, booleans, lists, strings)."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _run(args: argparse.Namespace) -> int:
    from manipex.experiments import ConfigError, run

    overrides = {}
    for key in ("n", "steps", "eps", "batch", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    for item in args.set or []:
        if "=" not in item:
            print(f"manipex run: --set expects key=value, got {item!r}", file=sys.stderr)
            return 2
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value.strip())
    torch.set_num_threads(max(1, args.threads))
    try:
        run(args.experiment, config_file=args.config, overrides=overrides, out=args.out, device=args.device,
            quiet=args.quiet)
    except ConfigError as err:
        print(f"manipex run: {err}", file=sys.stderr)
        return 2
    return 0


def _audit(args: argparse.Namespace) -> int:
    from manipex.experiments import ConfigError, run

    overrides = {"references": ",".join(args.reference or [])}
    if args.model != "default":
        overrides["weights"] = args.model
    for key in ("data", "root", "arch", "normalize", "labels", "methods", "eps", "n", "steps", "image_size", "alpha"):
        value = getattr(args, key)
        if value is not None:
            overrides["dataset" if key == "data" else key] = value
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(max(1, args.threads))
    try:
        run("audit", overrides=overrides, out=args.out, device=device, quiet=args.quiet)
    except ConfigError as err:
        print(f"manipex audit: {err}", file=sys.stderr)
        return 2
    return 0


def _list(args: argparse.Namespace) -> int:
    import manipex
    from manipex.experiments import EXPERIMENTS
    from manipex.experiments.config import template
    from manipex.experiments.common import DEFENSES

    if args.experiment:
        if args.experiment not in EXPERIMENTS:
            print(f"manipex list: unknown experiment {args.experiment!r}; available: {', '.join(sorted(EXPERIMENTS))}",
                  file=sys.stderr)
            return 2
        exp = EXPERIMENTS[args.experiment]
        print(template(exp.name, exp.title, exp.schema), end="")
        return 0
    print("experiments:")
    for name, exp in sorted(EXPERIMENTS.items()):
        print(f"  {name:<18}{exp.title}")
    print("methods:\n  " + ", ".join(manipex.methods()))
    print("defenses:\n  " + ", ".join(DEFENSES) + ", atex (manipex.defenses.atex_finetune)")
    print("datasets:\n  " + ", ".join(manipex.data.datasets()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from manipex.experiments import ConfigError, report_from_folder

    try:
        print(f"report: {report_from_folder(Path(args.folder))}")
    except ConfigError as err:
        print(f"manipex report: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manipex", description="Attack and defend explanation maps.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="figure grid of every method's map, on the default MNIST-5k model or yours")
    p.add_argument("model", nargs="?", default="default",
                   help="a .safetensors saved by manipex, a .pth state_dict (with --arch), or 'default'")
    p.add_argument("--data", help="dataset: mnist5k (default), mnist, fashion_mnist, cifar10, image_folder")
    p.add_argument("--root", help="folder of the dataset's files")
    p.add_argument("--arch", help="architecture of a .pth file")
    p.add_argument("--normalize", help="normalisation the weights expect: auto, none, imagenet, cifar10")
    p.add_argument("--image-size", dest="image_size", type=int, help="image_folder: crop size (default 224)")
    p.add_argument("--n", type=int, default=4, help="number of test images (default 4)")
    p.add_argument("--methods", nargs="+", help="methods to show (default: all)")
    p.add_argument("--out", default="manipex-out", help="output folder (default ./manipex-out)")
    p.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    p.set_defaults(func=_explain)
    p = sub.add_parser("methods", help="list the explanation methods")
    p.set_defaults(func=_methods)
    p = sub.add_parser("run", help="run (or resume) an experiment; default: the quick benchmark")
    p.add_argument("experiment", nargs="?", help="quick (default), dombrowski2019, rieger2020, tang_atex, pasliev2020")
    p.add_argument("--config", help="TOML or YAML file (.toml, .yaml, .yml) with the experiment's settings")
    p.add_argument("--out", default="manipex-runs", help="folder of runs (default ./manipex-runs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--n", type=int, help="number of images (experiments with the key n; others: --set)")
    p.add_argument("--steps", type=int, help="attack steps (experiments with the key steps)")
    p.add_argument("--eps", type=float, help="attack budget, L-infinity (experiments with a single eps)")
    p.add_argument("--batch", type=int, help="images per unit of work (experiments with the key batch)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. --set methods='[\"lrp\"]'")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quiet", action="store_true", help="no progress bar (for CI and logs); the tables are still printed")
    p.set_defaults(func=_run)
    p = sub.add_parser("audit", help="can this model's explanations be trusted? attacks, defenses, curvature, "
                       "detection against reference models, a verdict; an HTML report (resumes if killed)")
    p.add_argument("model", nargs="?", default="default",
                   help="the audited model: a .safetensors saved by manipex, a .pth state_dict (with --arch), or "
                        "'default' (the MNIST-5k model)")
    p.add_argument("--data", help="dataset: mnist5k (default), mnist, fashion_mnist, cifar10, image_folder")
    p.add_argument("--root", help="folder of the dataset's files")
    p.add_argument("--arch", help="architecture of a .pth file (manipex list shows the zoo)")
    p.add_argument("--normalize", help="normalisation the weights expect: auto, none, imagenet, cifar10")
    p.add_argument("--labels", choices=["dataset", "predicted"])
    p.add_argument("--image-size", dest="image_size", type=int, help="image_folder: crop size (default 224)")
    p.add_argument("--reference", action="append", metavar="TRUSTED",
                   help="a trusted clean model of the same kind (repeat; 3 or more give a calibrated test); "
                        "default: 3 trained here with other seeds")
    p.add_argument("--methods", nargs="+", help="methods audited (default gradient lrp)")
    p.add_argument("--eps", nargs="+", type=float, help="L-infinity budgets (default 0.02 0.05 0.1)")
    p.add_argument("--n", type=int, help="images attacked (default 8)")
    p.add_argument("--steps", type=int, help="attack steps (default 100)")
    p.add_argument("--alpha", type=float, help="false-positive rate of the detection test (default 0.05)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--out", default="manipex-runs", help="folder of runs (default ./manipex-runs)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quiet", action="store_true", help="no progress bar; the tables are still printed")
    p.set_defaults(func=_audit)
    p = sub.add_parser("list", help="experiments, methods, defenses and datasets; with an experiment, its config "
                       "keys as a TOML file to edit (manipex list pasliev2020 > my.toml)")
    p.add_argument("experiment", nargs="?", help="print this experiment's config keys, defaults and help as TOML")
    p.set_defaults(func=_list)
    p = sub.add_parser("report", help="rebuild the HTML report of a run folder")
    p.add_argument("folder")
    p.set_defaults(func=_report)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
