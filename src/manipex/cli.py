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



def _explain(args: argparse.Namespace) -> int:
    # deferred: each command loads what it needs
    import manipex
    from manipex.figures import map_grid

    torch.set_num_threads(max(1, args.threads))
    methods = args.methods or sorted(
        manipex.methods(),
        key=lambda m: (m not in DISPLAY_ORDER, DISPLAY_ORDER.index(m) if m in DISPLAY_ORDER else 0, m))
    unknown = [m for m in methods if m not in manipex.methods()]
    if unknown:
        # deferred: each command loads what it needs
        from manipex._validation import short

        print(f"manipex explain: unknown method {short(unknown[0])}; available: {', '.join(manipex.methods())}",
              file=sys.stderr)
        return 2
    if args.n < 1:
        print("manipex explain: --n must be at least 1", file=sys.stderr)
        return 2
    # deferred: each command loads what it needs
    from manipex.experiments.common import method_options
    from manipex.experiments.sources import SourceConfig, load_source, require_model

    given = {"dataset": args.data, "root": args.root, "image_size": args.image_size, "normalize": args.normalize,
             "arch": args.arch, "split": args.split, "labels": args.labels,
             "weights": None if args.model == "default" else args.model}
    config = SourceConfig.resolve({k: v for k, v in given.items() if v is not None}, sources=["manipex explain"])
    require_model(config, "explain")
    source = load_source(config, "cpu", n_train=2000 if "pattern_attribution" in methods else 0, n_eval=args.n)
    model, (x, y), x_train = source.model, source.test, source.train[0]
    if not args.methods:  # every method that applies: rollout only where the model computes attention
        # deferred: each command loads what it needs
        from manipex.explainers.base import requires_attention

        def applies(method: str) -> bool:
            try:
                return not requires_attention(method) or manipex.explain(model, x[:1], method) is not None
            except ValueError:
                return False

        methods = [m for m in methods if applies(m)]
    predicted = model(x).argmax(1)
    options = {m: method_options(m) for m in methods}
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
    path = map_grid(x, heatmaps, out / f"explanations.{args.format}", titles=titles)
    if not args.quiet:
        print(f"{'method':<22}{'ms / image':>12}")
        for method, ms in timings.items():
            print(f"{method:<22}{ms:>12.2f}")
    print(f"wrote {path.resolve()}")
    return 0


def plain_text(rst: str) -> str:
    """reStructuredText markup of a docstring as plain text: ````x```` -> ``x``,
    ``:func:`a.b``` -> ``a.b`` (``:class:`~a.B``` -> ``B``, ``:ref:`text <target>``` -> ``text``),
    ```x``` -> ``x``, ``**x**`` and ``*x*`` -> ``x``, ``\\*`` -> ``*``; whitespace runs as one space."""
    import re

    def role(match) -> str:  # :func:`a.b`, :class:`~a.B`, :ref:`text <target>`
        inner = match.group(1).strip()
        short = inner.startswith("~")
        inner = inner.lstrip("~")
        if inner.endswith(">") and "<" in inner:
            inner = inner[:inner.index("<")].strip()
        return inner.split(".")[-1] if short else inner

    text = re.sub(r":[\w:.+-]+:`([^`]+)`", role, rst)
    text = re.sub(r"``(.+?)``", r"\1", text)
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?![\w*])", r"\1", text)
    text = text.replace("\\*", "*").replace("\\", "")
    return " ".join(text.split())


def _methods(args: argparse.Namespace) -> int:
    """One line (wrapped) per method: its name and the first paragraph of its docstring, as
    plain text (:func:`plain_text`)."""
    import shutil
    import textwrap

    # deferred: each command loads what it needs
    import manipex
    from manipex.explainers.base import explainer_class

    width = max(60, min(120, shutil.get_terminal_size((100, 24)).columns))
    for name in manipex.methods():
        doc = (explainer_class(name).__doc__ or "").strip().split("\n\n")[0]
        text = plain_text(doc) or "-"
        print(textwrap.fill(text, width=width, initial_indent=f"{name:<22}", subsequent_indent=" " * 22,
                            break_long_words=False, break_on_hyphens=False))
    return 0


def _parse_value(text: str):
    """A ``--set key=value`` value as TOML would read it (numbers, booleans, lists, strings)."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (ValueError, RecursionError):  # not TOML (tomllib.TOMLDecodeError), or beyond its limits: a string
        return text


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class Parser(argparse.ArgumentParser):
    """argparse's parser with a usage error on one line (the problem, then where the flags are
    listed) instead of the whole usage block above it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (the flags: {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, config_cls, skip=()) -> None:
    """One flag per key of a typed config (``--n-train 100``, ``--methods gradient lrp``,
    ``--save-models/--no-save-models``), with its help; unset flags leave the key alone."""
    for name, field in config_cls.fields().items():
        if name in skip:
            continue
        help_text = field.help + (f" (default {field.default!r})" if field.default not in ("", []) else "")
        if field.bounds_text():
            help_text += f" [{field.bounds_text()}]"
        kwargs = {"dest": f"key_{name}", "default": None, "help": help_text.replace("%", "%%")}
        if field.kind == "bool":
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if field.kind.startswith("list"):
            kwargs["nargs"] = "*" if field.empty else "+"
        kwargs["type"] = {"int": int, "float": float, "optional_float": float,
                          "list[float]": float}.get(field.kind, str)
        if field.choices is not None and len(field.choices) <= 16:
            kwargs["choices"] = field.choices
        kwargs["metavar"] = name.upper()
        parser.add_argument(_flag(name), **kwargs)


def config_flags(args: argparse.Namespace) -> dict:
    """The keys set by :func:`add_config_flags`' flags."""
    return {k[len("key_"):]: v for k, v in vars(args).items() if k.startswith("key_") and v is not None}


#: ``--fresh`` of ``manipex run`` and ``manipex audit``
FRESH_HELP = ("start over: remove the earlier run's files (results, meta.json, report, figures, models/, references/, "
              "maps/) in the experiment's folder under --out once the new config has passed its checks; without it, "
              "a folder holding a run with another config is refused and nothing is deleted")


def _run_parser(experiment) -> argparse.ArgumentParser:
    """``manipex run EXPERIMENT``'s flags: the common ones and one per key of its config."""
    parser = Parser(prog=f"manipex run {experiment.name}", description=experiment.title, allow_abbrev=False)
    parser.add_argument("--config", help="TOML or YAML file (.toml, .yaml, .yml) with the experiment's settings")
    parser.add_argument("--out", default="manipex-runs", help="folder of runs (default ./manipex-runs)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any config key as TOML, e.g. --set methods='[\"lrp\"]'")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quiet", action="store_true", help="no progress bar (for CI and logs); tables still print")
    parser.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback (for bug reports)")
    add_config_flags(parser, experiment.Config)
    return parser


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _run(args: argparse.Namespace) -> int:
    # deferred: each command loads what it needs
    from manipex.experiments import ConfigError, run
    from manipex._validation import short
    from manipex.experiments.config import read_config
    from manipex.experiments.runner import experiment_named

    name = args.experiment
    if name is None and args.config_hint:
        named = read_config(Path(args.config_hint)).get("experiment")
        name = named if isinstance(named, str) else None
    experiment = experiment_named(name or "quick")
    args = _run_parser(experiment).parse_args(args.rest)
    overrides = config_flags(args)
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {short(item)}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value.strip())
    torch.set_num_threads(max(1, args.threads))
    run(experiment.name, config_file=args.config, overrides=overrides, out=args.out, device=_device(args.device),
        quiet=args.quiet, fresh=args.fresh)
    return 0


def audit_overrides(args: argparse.Namespace) -> dict:
    """The audit's config keys from ``manipex audit``'s arguments: the model ('default': no
    ``weights``, so the default model of ``--arch``: auto is the CNN, vit_mnist the ViT; see
    :attr:`manipex.experiments.sources.SourceConfig.default_model`), the references and one key per flag."""
    overrides = config_flags(args)
    if args.model != "default":
        overrides["weights"] = args.model
    if args.reference:
        overrides["references"] = list(overrides.get("references", [])) + args.reference
    return overrides


def _audit(args: argparse.Namespace) -> int:
    # deferred: each command loads what it needs
    from manipex.experiments import run

    overrides = audit_overrides(args)
    torch.set_num_threads(max(1, args.threads))
    run("audit", overrides=overrides, out=args.out, device=_device(args.device), quiet=args.quiet, fresh=args.fresh)
    return 0


def _list(args: argparse.Namespace) -> int:
    # deferred: each command loads what it needs
    import manipex
    from manipex.experiments import EXPERIMENTS
    from manipex.defenses.catalog import DEFENSES

    if args.experiment:
        # deferred: each command loads what it needs
        from manipex.experiments.runner import experiment_named

        exp = experiment_named(args.experiment)
        print(exp.Config.template(exp.name, exp.title), end="")
        return 0
    print("experiments:")
    for name in EXPERIMENTS.names():
        print(f"  {name:<20}{EXPERIMENTS[name].title}")
    print("methods:\n  " + ", ".join(manipex.methods()))
    print("defenses:")
    for name, defense in DEFENSES.items():
        print(f"  {name:<20}{defense.description}")
    print(f"  {'atex':<20}a model transform: manipex.defenses.atex_finetune (experiment tang_atex)")
    print("datasets:\n  " + ", ".join(manipex.data.datasets()))
    print("architectures:\n  " + ", ".join(manipex.models.architectures()))
    return 0


def _report(args: argparse.Namespace) -> int:
    # deferred: each command loads what it needs
    from manipex.experiments import report_from_folder

    print(f"report: {report_from_folder(Path(args.folder))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="manipex", description="Attack and defend explanation maps.", allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback (for bug reports; "
                        "also MANIPEX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices  # name -> the subcommand's parser
    p = sub.add_parser("explain", help="figure grid of every method's map, on the default MNIST-5k model or yours")
    p.add_argument("model", nargs="?", default="default",
                   help="a .safetensors saved by manipex, a .pth state_dict (with --arch), or 'default'")
    p.add_argument("--data", help="dataset: mnist5k (default), mnist, fashion_mnist, cifar10, image_folder")
    p.add_argument("--root", help="folder of the dataset's files")
    p.add_argument("--arch", help="architecture of a .pth file, or a factory package.module:function (runs its code)")
    p.add_argument("--normalize", help="normalisation the weights expect: auto, none, imagenet, cifar10")
    p.add_argument("--image-size", dest="image_size", type=int, help="image_folder: crop size (default 224)")
    p.add_argument("--split", help="split of the images shown (default test)")
    p.add_argument("--labels", choices=["given", "predicted"], help="labels shown: the dataset's or predicted")
    p.add_argument("--n", type=int, default=4, help="number of test images (default 4)")
    p.add_argument("--methods", nargs="+", help="methods to show (default: all)")
    p.add_argument("--out", default="manipex-out", help="output folder (default ./manipex-out)")
    p.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    p.set_defaults(func=_explain)
    p = sub.add_parser("methods", help="list the explanation methods")
    p.set_defaults(func=_methods)
    p = sub.add_parser("run", help="run (or resume) an experiment; default: the quick benchmark. "
                       "'manipex run EXPERIMENT --help' lists its flags, one per config key",
                       description="Run (or resume) an experiment. 'manipex run EXPERIMENT --help' lists its flags: "
                       "--config, --out, --device, --set KEY=VALUE, --threads, --quiet, --fresh, and one per config "
                       "key.")
    p.add_argument("experiment", nargs="?", help="quick (default), dombrowski2019, rieger2020, tang_atex, "
                   "pasliev2020, adult_fairwashing, audit")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)
    # deferred: each command loads what it needs
    from manipex.experiments.audit import AuditConfig

    p = sub.add_parser("audit", help="can this model's explanations be trusted? attacks, defenses, curvature, "
                       "detection against reference models, a verdict; an HTML report (resumes if killed)")
    p.add_argument("model", nargs="?", default="default",
                   help="the audited model: a .safetensors saved by manipex, a .pth state_dict (with --arch), or "
                        "'default' (the default MNIST-5k model: the CNN, or the ViT with --arch vit_mnist); a "
                        "factory is given as --arch package.module:function")
    p.add_argument("--data", dest="key_dataset", metavar="DATASET",
                   help="dataset: mnist5k (default), mnist, fashion_mnist, cifar10, image_folder")
    p.add_argument("--reference", action="append", metavar="TRUSTED",
                   help="a trusted clean model of the same kind (repeat; 3 or more give a calibrated test); "
                        "default: n_references (3) trained here on the data, with the audited model's architecture "
                        "(a factory is called once per reference) and the recipe of the --reference-* flags")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--out", default="manipex-runs", help="folder of runs (default ./manipex-runs)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quiet", action="store_true", help="no progress bar; the tables are still printed")
    p.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    add_config_flags(p, AuditConfig, skip=("weights", "references", "dataset"))
    p.set_defaults(func=_audit)
    p = sub.add_parser("list", help="experiments, methods, defenses and datasets; with an experiment, its config "
                       "keys as a TOML file to edit (manipex list pasliev2020 > my.toml)")
    p.add_argument("experiment", nargs="?", help="print this experiment's config keys, defaults and help as TOML")
    p.set_defaults(func=_list)
    p = sub.add_parser("report", help="rebuild the HTML report of a run folder")
    p.add_argument("folder")
    p.set_defaults(func=_report)
    for command in sub.choices.values():  # a shortened flag (--reference-epoch) is refused, never guessed
        command.allow_abbrev = False
    return parser


COMMANDS = ("explain", "methods", "run", "audit", "list", "report")


def _expected_errors() -> tuple:
    """What a user's input can cause (a bad value, file or folder, a refused weights file, a
    folder in use): one line and exit code 2. Anything else is a bug: exit code 1."""
    # deferred: each command loads what it needs
    from manipex.experiments.store import FolderInUseError

    import pickle

    # ConfigError and the checkpoint refusals are ValueErrors; an empty or cut weights file: EOFError, UnpicklingError
    errors = [ValueError, TypeError, OSError, FolderInUseError, EOFError, pickle.UnpicklingError]
    try:
        from safetensors import SafetensorError  # a damaged .safetensors file

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _one_line(err: BaseException) -> str:
    """An error as one line: an OSError as its reason and file, others as their message."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.strerror}: {err.filename}" + (f" -> {err.filename2}" if err.filename2 is not None else "")
    elif isinstance(err, EOFError) and not str(err):
        text = "EOFError: a file ends too early (is it empty or cut short?)"
    else:
        text = str(err) or type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= 1000 else text[:1000] + f"... ({len(text)} chars)"


def _show_warning(prefix: str):
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {_one_line(message if isinstance(message, Warning) else Warning(message))}",
              file=sys.stderr)

    return show


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns its exit code: 0 done, 2 a problem with the input (one line on
    stderr, no traceback), 1 a bug (one line; ``--debug`` or ``MANIPEX_DEBUG=1`` re-raises it with
    its traceback), 130 interrupted. The process's torch thread count (``--threads``) is
    restored on return, so that a caller's later work is not changed by a command it ran."""
    import os
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end] or os.environ.get("MANIPEX_DEBUG", "") not in ("", "0")
    argv = [a for i, a in enumerate(argv) if not (a == "--debug" and i < end)]
    command = argv[0] if argv and argv[0] in COMMANDS else ""
    prefix = f"manipex {command}".rstrip()
    # deferred: each command loads what it needs
    from manipex.experiments.store import DamagedResultsWarning

    # deferred: each command loads what it needs
    from manipex._determinism import kept_thread_count

    with warnings.catch_warnings(), kept_thread_count():
        warnings.simplefilter("always", DamagedResultsWarning)  # each command reports the damage it finds
        if not debug:
            warnings.showwarning = _show_warning(prefix)
            # torch's note on a refused weights file's pickle protocol: the refusal itself is the message
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        try:
            return _main(argv)
        except KeyboardInterrupt:
            if debug:
                raise
            kept = "; finished units are kept: the same command resumes the run" if command in ("run", "audit") else ""
            print(f"{prefix}: interrupted{kept}", file=sys.stderr)
            return 130
        except Exception as err:
            if debug:
                raise
            if isinstance(err, _expected_errors()):
                print(f"{prefix}: {_one_line(err)}", file=sys.stderr)
                return 2
            print(f"{prefix}: unexpected error (a bug?): {type(err).__name__}: {_one_line(err)}; run with --debug "
                  "for the traceback", file=sys.stderr)
            return 1


def _main(argv: List[str]) -> int:
    if argv and argv[0] == "run":  # the experiment's own flags are parsed by _run
        named = len(argv) > 1 and not argv[1].startswith("-")
        rest = argv[2:] if named else argv[1:]
        if not named and rest in (["-h"], ["--help"]):
            build_parser().parse_args(["run", "--help"])
        args = argparse.Namespace(experiment=argv[1] if named else None, rest=rest,
                                  config_hint=_option_value(rest, "--config"))
        return _run(args)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand's parser, which names its own --help
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.func(args)


def _option_value(argv: List[str], flag: str) -> Optional[str]:
    for i, item in enumerate(argv):
        if item == flag and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
