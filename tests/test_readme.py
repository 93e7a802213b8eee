"""README.md as a tested artefact (issue 31, "a newcomer's first hour").

**Python blocks.** Every ```python block of README.md runs, in README order, in one namespace
(the working directory a temporary folder; figures drawn off screen), on the embedded MNIST-5k and
the default model, with two exceptions:

* a block whose **first line** is ``# needs your files: <what>`` is skipped (it needs files a
  user brings: weights, an image folder); the reason is listed in the timing table;
* an expensive block runs with the **substitutions** of :data:`SUBSTITUTIONS`: an exact fragment
  of README source -> its cheaper replacement (fewer images, steps or epochs; nothing else). Each
  fragment must occur exactly once in the README's Python blocks, so the table cannot go stale.

Every block is either run or marked (asserted), and every fence names its language, so no code
hides from this test. ``pytest -s`` prints a table of each block's wall time (its number, README
line, first line, seconds; ``*`` where substitutions made it cheaper, so its time is not the
README's). ``MANIPEX_README_AS_WRITTEN=1`` runs every block as written, without substitutions
(minutes, not seconds), to time the README's own sizes.

**Shell blocks.** Every ``manipex`` command in the ```bash blocks (also ``.venv/bin/manipex``,
and ``torchrun ... -m manipex.cli``) is parsed by the real parsers (:func:`manipex.cli.build_parser`,
the experiments' run parsers, torchrun's own parser in front), so every command and flag named
exists. Lines are read in README order, as a user would run them, and must not contradict each
other: a ``--config FILE`` names a file made earlier in the README (``manipex list EXP > FILE``, or
a ```toml block whose first line is ``# FILE: ...``) for the experiment run; a second run of an
experiment on the same ``--out`` folder with other keys has ``--fresh`` (else manipex refuses it);
``manipex report FOLDER`` names the folder of a run made earlier. The cheap lines (``manipex
list``, ``manipex list EXP > FILE``, ``manipex methods``, ``--help``) run for real. Inline
``manipex ...`` spans and bare ``--flags`` in the prose (outside the Benchmarks section, whose
flags are the scripts') must name commands and flags that exist, in full.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch._dynamo  # noqa: F401  (the first optimiser of a process imports it, which sets
# TORCHINDUCTOR_CACHE_DIR: imported here, before conftest's check that a test leaves the environment alone)

README = Path(__file__).resolve().parents[1] / "README.md"

#: The mark of a Python block that needs the user's files: its first line starts with this.
NEEDS_FILES = "# needs your files:"

#: Exact README fragment -> its replacement in this test. Only sizes change (images, steps,
#: epochs), so that the blocks stay cheap on 2 shared cores; each fragment occurs exactly once.
SUBSTITUTIONS: Dict[str, str] = {
    # three references: 3 epochs on 4000 images each -> 1 epoch on 500
    "net, x_train, y_train, epochs=3": "net, x_train[:500], y_train[:500], epochs=1",
    # input attacks: 300 / 200 / 100 steps -> 10 / 10 / 5
    '"lrp", eps=0.2, steps=300)': '"lrp", eps=0.2, steps=10)',
    "eps=0.08, steps=200)": "eps=0.08, steps=10)",
    '{"samples": 10}, steps=100)': '{"samples": 10}, steps=5)',
    # model manipulation: 3 epochs on 4000 images -> 1 epoch on 128; evaluated on 64, not 1000
    "(x_train, y_train), CenterOfMass((0, 0))": "(x_train[:128], y_train[:128]), CenterOfMass((0, 0))",
    'epochs=3, checkpoint="run.pt"': 'epochs=1, checkpoint="run.pt"',
    "(x_test, y_test), CenterOfMass((0, 0))": "(x_test[:64], y_test[:64]), CenterOfMass((0, 0))",
    # beta sweep: 100 attack steps -> 5; ATEX: 2 epochs on 4000 images -> 1 epoch on 100
    "betas=(None, 10, 3, 1), steps=100)": "betas=(None, 10, 3, 1), steps=5)",
    "atex_finetune(model, x_train)": "atex_finetune(model, x_train[:100], epochs=1)",
    # robust training: 2 epochs on 4000 images -> 1 epoch on 64; the worst-case search 50 steps -> 5
    '(x_train, y_train), "hessian_norm",': '(x_train[:64], y_train[:64]), "hessian_norm", epochs=1,',
    '(x_train, y_train), ["weight_decay", make("ssr", weight=1.0)], epochs=2':
        '(x_train[:64], y_train[:64]), ["weight_decay", make("ssr", weight=1.0)], epochs=1',
    "adversarial=True)": 'adversarial=True, attack_options={"steps": 5})',
}

#: A fragment of a block -> what must hold in the namespace right after that block runs.
CHECKS: Dict[str, List[tuple]] = {
    "loss.backward()": [
        ("x_in.grad.abs().sum() > 0", "the second-order example gives a non-zero d loss / d x"),
        ("all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() "
         "if n.endswith('weight'))", "... and d loss / d weight for every weight"),
    ],
    "refs.append(net.eval())": [
        ("len(refs) == 3 and all(not r.training for r in refs)", "three references, in eval mode"),
        ("len(x_train) == 4000 and len(x_test) == 1000", "train on the train split, evaluate on the test split"),
    ],
    "suspect = fooled.model": [("suspect is fooled.model", "detection is shown on the manipulated model")],
}

LANGUAGES = {"python", "bash", "toml", "text"}


@dataclass
class Block:
    language: str
    line: int  # README line of the first line of code (the line after the fence)
    source: str

    @property
    def first_line(self) -> str:
        return self.source.strip().splitlines()[0] if self.source.strip() else ""


def read_blocks(text: Optional[str] = None) -> List[Block]:
    """The fenced blocks of the README, in order."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(.*)$", lines[i])
        if fence is None:
            i += 1
            continue
        language, start, body = fence.group(2).strip(), i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"README.md:{start - 1}: a code fence is not closed"
        blocks.append(Block(language, start, "\n".join(body) + "\n"))
        i += 1
    return blocks


def python_blocks() -> List[Block]:
    return [b for b in read_blocks() if b.language == "python"]


def prose() -> str:
    """The README without its fenced blocks."""
    return re.sub(r"^```.*?^```[^\n]*$", "", README.read_text(encoding="utf-8"), flags=re.S | re.M)


# --------------------------------------------------------------------------------------------
# Python blocks


def test_every_fence_names_its_language_and_every_substitution_is_found_once():
    blocks = read_blocks()
    unnamed = [b.line - 1 for b in blocks if b.language not in LANGUAGES]
    assert not unnamed, f"README.md lines {unnamed}: a fence without a known language ({sorted(LANGUAGES)})"
    sources = [b.source for b in python_blocks()]
    for fragment in SUBSTITUTIONS:
        count = sum(s.count(fragment) for s in sources)
        assert count == 1, (f"SUBSTITUTIONS: fragment {fragment!r} occurs {count} times in the README's Python "
                            "blocks (must be exactly once: update the table with the README)")


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    """Each ```python block as written (or with :data:`SUBSTITUTIONS`; marked ones skipped), in
    order, in one namespace; prints each block's wall time with ``-s``."""
    from manipex.explainers.composites import _COMPOSITES

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(tmp_path / "cache"))
    registered = set(_COMPOSITES.names())
    as_written = os.environ.get("MANIPEX_README_AS_WRITTEN", "") not in ("", "0")  # to time the README's own sizes
    namespace: dict = {"__name__": "__readme__"}
    blocks = python_blocks()
    rows, ran, marked, checked = [], 0, 0, set()
    try:
        for number, block in enumerate(blocks, 1):
            if block.first_line.startswith(NEEDS_FILES):
                marked += 1
                rows.append((number, block.line, block.first_line, None,
                             "skipped: needs " + block.first_line[len(NEEDS_FILES):].strip()))
                continue
            source, substituted = block.source, False
            for fragment, replacement in ({} if as_written else SUBSTITUTIONS).items():
                if fragment in source:
                    source, substituted = source.replace(fragment, replacement), True
            # README line numbers in tracebacks
            code = compile("\n" * (block.line - 1) + source, str(README), "exec")
            start = time.perf_counter()
            try:
                exec(code, namespace)
            except Exception as err:
                raise AssertionError(f"README.md python block {number} (line {block.line}, "
                                     f"{block.first_line!r}) raised {type(err).__name__}: {err}") from err
            finally:
                rows.append((number, block.line, block.first_line, time.perf_counter() - start,
                             "run with substitutions" if substituted else "run as written"))
            ran += 1
            for fragment, checks in CHECKS.items():
                if fragment in block.source:
                    checked.add(fragment)
                    for expression, meaning in checks:
                        assert eval(expression, namespace), (f"README.md python block {number}: {meaning} "
                                                             f"({expression})")
        assert ran + marked == len(blocks) and ran > 0
        assert checked == set(CHECKS), f"CHECKS: fragments not in any block run: {set(CHECKS) - checked}"
    finally:
        for name in set(_COMPOSITES.names()) - registered:  # register_composite("mine", ...)
            _COMPOSITES._items.pop(name, None)
        _print_times(rows)


def _print_times(rows) -> None:
    print("\nREADME python blocks (* with SUBSTITUTIONS: not the README's time)")
    print(f"{'block':>5} {'line':>5} {'seconds':>8}  first line")
    for number, line, first, seconds, how in rows:
        shown = "-" if seconds is None else f"{seconds:.1f}" + ("*" if how.endswith("substitutions") else "")
        note = f"   [{how}]" if seconds is None else ""
        print(f"{number:>5} {line:>5} {shown:>8}  {first[:80]}{note}")
    total = sum(r[3] for r in rows if r[3] is not None)
    print(f"{'':>5} {'':>5} {total:>8.1f}  total")


def test_relu_map_has_zero_input_gradient_as_the_readme_says():
    """The README's reason for ``softplus_beta``: on the ReLU model the gradient map's derivative
    w.r.t. the input is exactly 0 (d loss / d weight is not), on Softplus(10) it is not."""
    import manipex

    model = manipex.models.load_default("mnist")
    x, _ = manipex.data.load("mnist5k", split="test")
    target_map = manipex.relevance(manipex.explain(model, x[8:12], "gradient"))
    grads = {}
    for beta in (None, 10):
        x_in = x[:4].clone().requires_grad_()
        h = manipex.explain(model, x_in, "gradient", create_graph=True, softplus_beta=beta)
        weight = next(model.parameters())
        gx, gw = torch.autograd.grad((manipex.relevance(h) - target_map).pow(2).sum(), [x_in, weight])
        grads[beta] = (gx.abs().sum().item(), gw.abs().sum().item())
    assert grads[None][0] == 0 and grads[None][1] > 0
    assert grads[10][0] > 0 and grads[10][1] > 0


# --------------------------------------------------------------------------------------------
# Shell blocks


@dataclass
class Command:
    """One ``manipex`` invocation of a README ```bash block."""

    line: int
    text: str
    argv: List[str]
    stdout: Optional[str] = None  # ``> FILE``
    experiment: Optional[str] = None  # for run / audit
    out: str = "manipex-runs"
    fresh: bool = False
    config: Optional[str] = None
    overrides: Dict[str, object] = field(default_factory=dict)

    def where(self) -> str:
        return f"README.md:{self.line}: {self.text!r}"


def shell_lines(block: Block):
    """``(README line, logical line)`` of a shell block: continuations joined, blank lines left out."""
    out, pending, first = [], "", None
    for k, raw in enumerate(block.source.splitlines()):
        if first is None:
            first = block.line + k
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        text = (pending + raw).strip()
        if text:
            out.append((first, text))
        pending, first = "", None
    return out


def manipex_argvs(text: str):
    """The ``manipex`` argument lists in one shell line, each with the file its stdout goes to."""
    tokens = shlex.split(text, comments=True)
    segments, current = [], []
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    found = []
    for seg in segments:
        stdout, words, k = None, [], 0
        while k < len(seg):
            token = seg[k]
            if token == ">":
                stdout, k = seg[k + 1], k + 2
                continue
            if re.fullmatch(r"\d?>&\d", token) or token.startswith(("2>", "&>")):
                k += 1
                continue
            if token.startswith(">"):
                stdout, k = token[1:], k + 1
                continue
            words.append(token)
            k += 1
        if not words:
            continue
        if words[0] == "manipex" or words[0].endswith("/manipex"):
            found.append((words[1:], stdout))
        elif words[0] == "torchrun":
            from torch.distributed.run import get_args_parser

            args = _parse(get_args_parser(), words[1:], f"torchrun in {text!r}", exact=False)
            assert args.module and args.training_script == "manipex.cli", (
                f"{text!r}: torchrun runs {args.training_script!r}, not -m manipex.cli")
            found.append((list(args.training_script_args), stdout))
    return found


def _parse(parser, argv, where, exact=True):
    """``parser.parse_args(argv)``; an error (argparse's exit) as an AssertionError naming ``where``.
    ``exact``: every ``--flag`` is named in full (argparse would take an abbreviation)."""
    if exact:
        known = _options(parser)
        for word in argv:
            if word == "--":
                break
            assert not word.startswith("--") or word.split("=")[0] in known, f"{where}: no flag {word} (in full)"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit as stop:
        if stop.code == 0:  # --help
            return None
        raise AssertionError(f"{where}: {err.getvalue().strip().splitlines()[-1]}") from None


def _subparser(parser, command: str):
    """The parser of ``manipex COMMAND`` (``--debug`` of the main parser added)."""
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    sub = argparse.ArgumentParser(parents=[sub], add_help=False, allow_abbrev=False)
    sub.add_argument("--debug", action="store_true")
    return sub


def parse_command(line: int, text: str, argv: List[str], stdout: Optional[str], files: Dict[str, dict]) -> Command:
    """Parse one README invocation with the real CLI parsers; ``files``: config files made so far."""
    from manipex import cli
    from manipex.experiments.runner import experiment_named

    cmd = Command(line, text, argv, stdout)
    assert argv and argv[0] in cli.COMMANDS, f"{cmd.where()}: unknown command {argv[:1]} (known: {cli.COMMANDS})"
    if argv[0] == "run":
        named = len(argv) > 1 and not argv[1].startswith("-")
        rest = argv[2:] if named else argv[1:]
        config = cli._option_value(rest, "--config")
        name = argv[1] if named else None
        if config is not None:
            assert config in files, f"{cmd.where()}: --config {config} is not a file made earlier in the README"
            made_for = files[config]["experiment"]
            assert name in (None, made_for), (f"{cmd.where()}: {config} was made for experiment {made_for!r}, "
                                              f"not {name!r}")
            name = made_for
        try:
            experiment = experiment_named(name or "quick")
        except ValueError as err:
            raise AssertionError(f"{cmd.where()}: {err}") from None
        args = _parse(cli._run_parser(experiment), rest, cmd.where())
        cmd.experiment = experiment.name
        if args is not None:
            cmd.out, cmd.fresh, cmd.config = args.out, args.fresh, args.config
            cmd.overrides = dict(files[config]["keys"]) if config else {}
            cmd.overrides.update(cli.config_flags(args))
            for item in args.set or []:
                assert "=" in item, f"{cmd.where()}: --set {item!r} is not key=value"
                key, value = item.split("=", 1)
                cmd.overrides[key.strip()] = cli._parse_value(value.strip())
        return cmd
    parser = cli.build_parser()
    _parse(_subparser(parser, argv[0]), argv[1:], cmd.where())  # every flag exists, in full
    args = _parse(parser, argv, cmd.where(), exact=False)
    if argv[0] == "audit" and args is not None:
        cmd.experiment, cmd.out, cmd.fresh = "audit", args.out, args.fresh
        cmd.overrides = cli.config_flags(args)
        if args.model != "default":
            cmd.overrides["weights"] = args.model
        if args.reference:
            cmd.overrides["references"] = list(args.reference)
    return cmd


def resolved(experiment_name: str, overrides: Dict[str, object]) -> Dict[str, object]:
    """The experiment's config with ``overrides``, each value checked as manipex checks it (types,
    choices, bounds, profiles) but without the checks of files on disk (a user's paths)."""
    from manipex.experiments.runner import experiment_named

    config_cls = experiment_named(experiment_name).Config
    fields = config_cls.fields()
    values = {name: f.default for name, f in fields.items()}
    for name, value in overrides.items():
        assert name in fields, f"experiment {experiment_name}: unknown key {name!r}"
        values[name] = fields[name].check(value)
    for name, value in config_cls.PROFILES.get(values.get("profile"), {}).items():
        if name not in overrides:
            values[name] = value
    return values


def run_cheap(cmd: Command, folder: Path) -> Optional[str]:
    """Run a cheap command for real (``list``, ``methods``, ``--help``); its stdout, or None when
    it is not cheap."""
    from manipex.cli import main

    if not (cmd.argv[0] in ("list", "methods") or "--help" in cmd.argv or "-h" in cmd.argv):
        return None
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(cmd.argv)
        except SystemExit as stop:  # --help
            code = stop.code
    assert code == 0, f"{cmd.where()}: exit code {code}: {err.getvalue().strip()}"
    assert out.getvalue().strip(), f"{cmd.where()}: printed nothing"
    if cmd.stdout:
        (folder / cmd.stdout).write_text(out.getvalue(), encoding="utf-8")
    return out.getvalue()


def toml_files() -> Dict[int, tuple]:
    """README line -> (file name, table) of ```toml blocks whose first line is ``# NAME: ...``."""
    found = {}
    for block in read_blocks():
        if block.language != "toml":
            continue
        head = re.match(r"#\s*([\w.-]+\.toml)\b", block.first_line)
        if head:
            found[block.line] = (head.group(1), tomllib.loads(block.source))
    return found


def test_shell_blocks_name_real_commands_and_do_not_contradict_each_other(tmp_path, monkeypatch):
    """Every ``manipex`` line of the ```bash blocks parses; in README order: config files exist and
    fit, a run with other keys on a folder in use has --fresh, a report names a run folder;
    cheap lines run for real."""
    from manipex.experiments.runner import load_config

    monkeypatch.chdir(tmp_path)
    files: Dict[str, dict] = {}  # config file -> {"experiment", "keys"}
    runs: Dict[tuple, tuple] = {}  # (out folder, experiment) -> (resolved config, command)
    tomls = toml_files()
    commands = 0
    for block in read_blocks():
        if block.line in tomls:
            name, table = tomls[block.line]
            table = dict(table)
            files[name] = {"experiment": table.pop("experiment", None), "keys": table}
        if block.language != "bash":
            continue
        for line, text in shell_lines(block):
            for argv, stdout in manipex_argvs(text):
                cmd = parse_command(line, text, argv, stdout, files)
                commands += 1
                printed = run_cheap(cmd, tmp_path)
                if cmd.argv[0] == "list" and len(cmd.argv) > 1 and cmd.stdout:
                    # the template is a file for this experiment and reads back as its defaults
                    experiment, config = load_config(cmd.argv[1], tmp_path / cmd.stdout, {})
                    _, defaults = load_config(cmd.argv[1], None, {})
                    assert config == defaults, f"{cmd.where()}: the template does not read back as the defaults"
                    table = tomllib.loads(printed)
                    files[cmd.stdout] = {"experiment": table.pop("experiment"), "keys": table}
                elif cmd.stdout is not None:
                    files.pop(cmd.stdout, None)  # a log, not a config
                if cmd.argv[0] == "report":
                    folder = os.path.normpath(cmd.argv[1])
                    made = {os.path.normpath(os.path.join(out, exp)) for out, exp in runs}
                    assert folder in made, f"{cmd.where()}: no run earlier in the README writes {folder}"
                if cmd.experiment is None or "--help" in cmd.argv:
                    continue
                key = (os.path.normpath(cmd.out), cmd.experiment)
                config = resolved(cmd.experiment, cmd.overrides)
                if key in runs and runs[key][0] != config and not cmd.fresh:
                    before, earlier = runs[key]
                    differ = sorted(k for k in config if config[k] != before[k])
                    raise AssertionError(
                        f"{cmd.where()}: runs {cmd.experiment} in {os.path.join(*key)} with other keys "
                        f"({', '.join(differ)}) than README.md:{earlier.line} {earlier.text!r}: manipex refuses "
                        "it; give it another --out or --fresh")
                runs[key] = (config, cmd)
    assert commands >= 10, f"only {commands} manipex commands found in the README's bash blocks"


# --------------------------------------------------------------------------------------------
# Commands and flags named in the prose

#: placeholders of the prose (``manipex run EXP --help``) and what stands in for them here
PLACEHOLDERS = {"EXP": "dombrowski2019", "EXPERIMENT": "dombrowski2019"}


def _options(parser) -> set:
    return {s for action in parser._actions for s in action.option_strings}


def all_flags() -> set:
    """Every flag of every manipex command and of every experiment's run parser."""
    import argparse

    from manipex import cli
    from manipex.experiments import EXPERIMENTS

    parser = cli.build_parser()
    flags = _options(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _options(sub)
    for name in EXPERIMENTS.names():
        flags |= _options(cli._run_parser(EXPERIMENTS[name]))
    return flags


def test_commands_and_flags_in_the_prose_exist():
    import argparse

    from manipex import cli
    from manipex.experiments.runner import experiment_named

    text = prose()
    text = text[:text.index("## Benchmarks")] + text[text.index("## Licence"):]  # the scripts' own flags
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]
    flags, checked = all_flags(), 0
    for span in spans:
        words = [PLACEHOLDERS.get(w, w) for w in span.split()]
        if any(w.endswith(":") for w in words[:3]):  # a line manipex prints (`manipex run quick: 12/40 units ...`)
            continue
        if words[0] == "manipex":
            argv = manipex_argvs(" ".join(words))[0][0]  # redirections left out
            assert argv and argv[0] in cli.COMMANDS, f"README: `{span}`: unknown command"
            if argv[0] == "run" and len(argv) > 1 and not argv[1].startswith("-"):
                known = _options(cli._run_parser(experiment_named(argv[1])))
            else:
                sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
                known = _options(sub.choices[argv[0]]) | {"--debug"}
            for word in argv[1:]:
                if word.startswith("--"):
                    assert word.split("=")[0] in known, f"README: `{span}`: manipex {argv[0]} has no flag {word}"
            checked += 1
        elif words[0].startswith("--") and re.fullmatch(r"--[a-z][a-z0-9-]*", words[0].split("=")[0]):
            assert words[0].split("=")[0] in flags, f"README: `{span}`: no manipex command has the flag {words[0]}"
            checked += 1
    assert checked >= 10
