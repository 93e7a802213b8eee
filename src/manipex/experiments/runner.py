"""Run an experiment: resolve its config, shard its units, skip finished ones, store rows.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each process runs the units ``rank::world``
into its own shard of the store and rank 0 waits for all (gloo barrier on CPU, NCCL on GPU)
before writing tables and the report. Units seed themselves, so the rows do not depend on
the sharding nor on interruptions.
"""
from __future__ import annotations

import os
import pickle
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .base import EXPERIMENTS, Context, get_experiment
from .._validation import short
from .config import ConfigError, read_config
from .report import damaged_note, is_text, published_lines, write_report
from .store import DamagedMetaError, FolderLock, RESULT_SHARD, ResultStore
from ..style import format_table
from .._progress import log_line, logs_lines, progress_bar
from .sources import normalization_text
from .tables import as_entries
from .._files import refuse_outside_links


def experiment_named(name: Any):
    """The experiment registered as ``name``, or a :class:`ConfigError` quoting it briefly."""
    if not isinstance(name, str) or name not in EXPERIMENTS.names():
        raise ConfigError(f"unknown experiment {short(name, 60)}; available: {', '.join(EXPERIMENTS.names())}")
    return get_experiment(name)


def load_config(name: Optional[str], path: Optional[os.PathLike], overrides: Mapping[str, Any]):
    """The experiment and its validated, typed config: defaults, then the file, then ``overrides``."""
    table: Dict[str, Any] = dict(read_config(Path(path))) if path else {}
    named = table.pop("experiment", None)
    if named is not None and not isinstance(named, str):
        raise ConfigError(f"config key 'experiment' must be a string, got {short(named)}")
    if name and named and name != named:
        raise ConfigError(f"config file is for experiment {short(named, 60)}, not {short(name, 60)}")
    experiment = experiment_named(name or named or "quick")
    config = experiment.Config.resolve(table, overrides,
                                       sources=[f"config {short(str(path), 200)}" if path else "config",
                                                "command line"])
    return experiment, config


def _distributed() -> Tuple[int, int]:
    """``(rank, world size)`` from torchrun's ``RANK`` and ``WORLD_SIZE``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise ConfigError(f"RANK and WORLD_SIZE must be integers, got RANK={short(os.environ.get('RANK'))} "
                          f"WORLD_SIZE={short(os.environ.get('WORLD_SIZE'))}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return rank, world


def _check_device(device: str) -> None:
    if not isinstance(device, str):
        raise ConfigError(f"--device must be a string, got {short(device)}")
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device: unknown device {short(device, 60)}; use cpu, cuda, cuda:N or auto") from None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"--device {short(device, 60)}: manipex runs on cpu or cuda (cuda:N, or auto); "
                          + ("the meta device holds no values" if kind == "meta" else
                             f"device type {kind!r} is not supported"))
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")


def _make_folder(folder: Path) -> List[Path]:
    """Create the run folder; the folders this created (deepest first), to remove if the run
    stores nothing. A :class:`ConfigError` where ``--out`` is a file or cannot be written."""
    created = []
    for path in [folder, *folder.parents]:
        if os.path.lexists(path):
            if not path.is_dir():
                raise ConfigError(f"--out: {path} is a file, not a folder")
            break
        created.append(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out: cannot create the run folder {folder}: {err.strerror or err}") from None
    return created


def _unreadable(err: Exception, config: Any, folder: Path) -> Exception:
    """``err`` as a :class:`ConfigError` naming the config's files where it is a model file that
    cannot be read (empty or cut short: ``EOFError``, ``UnpicklingError``; a damaged
    ``.safetensors``: safetensors' own error, which is no ``ValueError``); else ``err`` itself."""
    if not isinstance(err, (EOFError, pickle.UnpicklingError)) and type(err).__name__ != "SafetensorError":
        return err
    files = [f"'{k}' ({short(getattr(config, k), 200)})" for k in ("weights", "references") if getattr(config, k, None)]
    where = "config key " + " or ".join(files) if files else f"a model file in {folder / 'models'}"
    why = str(err) or "the file ends too early: is it empty or cut short?"
    return ConfigError(f"{where}: a weights file cannot be read ({type(err).__name__}: {why})")


def _remove_empty(folders: List[Path]) -> None:
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # not empty: something was kept there
            return


def _text_table(table) -> str:
    """A table as the terminal shows it: a table of sentences (Findings, Verdict) as indented
    lines, not cut to the terminal's width; a table of numbers with its cells formatted by kind
    (:func:`manipex.style.format_table`: similarities to 3 decimals within their range, counts as
    integers, flags yes / no, percentages to one decimal), as the report shows them. The table's
    own numbers are not rounded."""
    if not is_text(table):
        return format_table(table).to_string()
    lines = []
    for index, row in table.iterrows():
        lines.append(f"- {index}")
        lines += [f"    {column}: {value}" for column, value in row.items() if str(value)]
    return "\n".join(lines)


#: the folders manipex writes in a run folder (cached models, references, example maps, training checkpoints)
RUN_FOLDERS = ("models", "references", "maps", "checkpoints")


def run_files(folder: Path, experiment) -> List[Path]:
    """What manipex wrote in a run folder ``folder`` of ``experiment``, and ``--fresh`` removes:
    the results shards, ``meta.json``, ``report.html``, their temporary files, the figures (files
    named as the experiment's figures, in PNG, PDF or SVG) and :data:`RUN_FOLDERS`. Nothing else
    (a file of the user's, a link, the lock files) is listed."""
    import fnmatch

    if not folder.is_dir():
        return []
    patterns = list(getattr(experiment, "captions", {}) or {})
    out = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_symlink():
            continue
        if path.is_dir():
            if name in RUN_FOLDERS:
                out.append(path)
        elif (RESULT_SHARD.match(name) or name in ("meta.json", "report.html")
              or (name.startswith((".meta.json.", ".report.html.")) and name.endswith(".tmp"))
              or (path.suffix in (".png", ".pdf", ".svg")
                  and any(fnmatch.fnmatchcase(path.stem, p) for p in patterns))):
            out.append(path)
    return out


class _FreshStart:
    """``--fresh``: the earlier run's files (:func:`run_files`) are moved into a hidden folder
    (:meth:`begin`, holding every other shard's lock, so no process writing the folder loses its
    files), removed once the new run has passed its checks (:meth:`commit`), or put back where
    they were if it did not (:meth:`undo`)."""

    PREFIX = ".manipex-fresh-"

    def __init__(self, experiment, folder: Path, world: int) -> None:
        self.experiment, self.folder, self.world = experiment, folder, world
        self.aside = folder / f"{self.PREFIX}{os.getpid()}"
        self.moved: List[str] = []
        self.locks: List[Any] = []
        self.done = False

    def begin(self) -> None:
        import re
        import shutil

        if self.world > 1:
            raise ConfigError("--fresh cannot start over under torchrun (each rank would remove the others' files): "
                              "run once without torchrun with --fresh, or use another --out")
        for path in self.folder.iterdir():  # a process writing another shard keeps the folder
            found = re.match(r"^results-rank(\d+)\.jsonl(?:\.lock)?$", path.name)
            lock = self.folder / f"results-rank{found.group(1)}.jsonl.lock" if found else None
            if lock is not None and all(held.path != lock for held in self.locks):
                self.locks.append(FolderLock(lock, self.folder).acquire())
        for stale in self.folder.glob(self.PREFIX + "*"):  # left by a --fresh run that was killed
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        files = run_files(self.folder, self.experiment)
        if not files:
            return
        self.aside.mkdir()
        for path in files:
            os.replace(path, self.aside / path.name)
            self.moved.append(path.name)

    def commit(self) -> None:
        import shutil

        self.done = True
        if self.moved:
            shutil.rmtree(self.aside, ignore_errors=True)
            print(f"--fresh: the earlier run in {self.folder} was removed ({len(self.moved)} files and folders: "
                  f"{', '.join(self.moved[:6])}{', ...' if len(self.moved) > 6 else ''})", file=sys.stderr)

    def undo(self) -> None:
        import shutil

        if self.done or not self.moved:
            return
        for name in self.moved:  # what the refused run wrote meanwhile (a model cache) makes way
            target = self.folder / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif os.path.lexists(target):
                target.unlink()
            os.replace(self.aside / name, target)
        shutil.rmtree(self.aside, ignore_errors=True)
        self.moved = []

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks = []


def environment(device: str) -> Dict[str, Any]:
    import manipex  # local: the root package, whose import runs this module's

    return {"manipex": manipex.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "device": device, "threads": torch.get_num_threads()}


def run(
    name: Optional[str] = None,
    *,
    config_file: Optional[os.PathLike] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    out: os.PathLike | str = "manipex-runs",
    device: str = "cpu",
    quiet: bool = False,
    fresh: bool = False,
) -> Dict[str, Any]:
    """Run (or resume) an experiment into ``out/<experiment>``; returns its tables.

    ``quiet`` hides the progress: the bar on a terminal, and elsewhere (logs, CI, pipes) the plain
    line printed on stderr per finished unit or every ~30 s (``MANIPEX_PROGRESS_INTERVAL``; see
    :mod:`manipex._progress`). The tables are always printed, and so is one line on stderr with
    the input normalisation in front of the model and, for a finished run, that it was.

    The config is validated before any work, the model and data are loaded and checked before
    ``meta.json`` is written. Finished units already in the store are skipped. One run writes a
    folder (its shard under torchrun) at a time: another one raises
    :class:`~manipex.experiments.store.FolderInUseError` at once.

    A folder that holds a run with another config is refused, naming the keys that differ;
    nothing is deleted. ``fresh`` (``--fresh``) starts over instead: the earlier run's files in
    ``out/<experiment>`` (what manipex writes there: :func:`run_files`) are removed once the new
    config, model and data have passed their checks (until then they are only set aside, and put
    back if a check fails). Not under torchrun, and not while another process holds any shard
    of the folder.
    """
    experiment, config = load_config(name, config_file, overrides or {})
    _check_device(device)
    rank, world = _distributed()
    folder = Path(out) / experiment.name
    created = _make_folder(folder)
    refuse_outside_links(folder)
    store = ResultStore(folder, rank)
    lock = store.lock()
    try:
        try:
            lock.acquire()
        except OSError as err:
            raise ConfigError(f"--out: cannot write in the run folder {folder}: {err.strerror or err}") from None
        start_over = _FreshStart(experiment, folder, world) if fresh else None
        try:
            if start_over is not None:
                start_over.begin()
            return _run_locked(experiment, config, store, folder, rank, world, device, quiet,
                               ready=start_over.commit if start_over is not None else None)
        except BaseException:
            if start_over is not None:
                start_over.undo()
            raise
        finally:
            if start_over is not None:
                start_over.release()
    finally:
        lock.release()
        if not store.shards():  # a run that stored nothing leaves no empty folders behind
            _remove_empty(created)


def _run_locked(experiment, config, store: ResultStore, folder: Path, rank: int, world: int, device: str,
                quiet: bool, ready=None) -> Dict[str, Any]:
    started = time.monotonic()
    done = store.done()
    try:
        old = store.meta()
    except DamagedMetaError:
        if done:
            raise
        old = None  # a folder without a finished unit holds nothing to protect
    if old is None and done:  # rows of an unknown config: resuming would mix them with this one's
        raise ConfigError(f"{folder} holds {len(done)} finished unit(s) but no meta.json, so the config they were "
                          "made with is unknown. Nothing was changed: start over in this folder with --fresh "
                          "(deletes those results), or use another --out")
    if old is not None and done:
        changed = config.differences(old["config"])
        if changed:
            raise ConfigError(f"{folder} holds a run with another config: " + "; ".join(changed)
                              + ". Nothing was changed: keep that run and use another --out, or start over in this "
                              "folder with --fresh (deletes that run's results), or run with the stored config to "
                              "resume it")
    units = experiment.units(config)[rank::world]
    todo = [u for u in units if u.id not in done]

    program = ("manipex audit" if experiment.name == "audit" else f"manipex run {experiment.name}") + (
        f" [rank {rank}/{world}]" if world > 1 else "")
    lines = not quiet and logs_lines()  # no bar is shown: plain progress lines on stderr
    # the model and data are loaded (and checked against the config: images in the split, classes)
    # before meta.json is written: a run refused there leaves the folder as it was
    try:
        ctx = experiment.setup(config, Context(out=folder, device=device, progress=not quiet)) if todo else None
    except Exception as err:
        raise _unreadable(err, config, folder) from None
    # said once the model is loaded: a refused run prints its one-line error only
    if todo and hasattr(config, "normalization"):  # what the model sees is a fact of the results: said always

        log_line(f"{program}: {normalization_text(config)}")
    if todo and lines:
        before = len(units) - len(todo)
        log_line(f"{program}: {len(todo)} units to run" + (f" ({before} of {len(units)} done before)" if before
                                                             else ""))
    elif units and not todo:
        log_line(f"{program}: already done: {len(units)} units in {folder}; report rebuilt")
    if ready is not None:  # --fresh: the checks passed, the earlier run's files go
        ready()
    if rank == 0:
        store.write_meta({"experiment": experiment.name, "config": config.to_dict(),
                          "seed": getattr(config, "seed", None), "environment": environment(device),
                          "world_size": world, "started": time.time()})
    if todo:
        bar = progress_bar(total=len(units), initial=len(units) - len(todo), desc=program if lines else experiment.name,
                           unit="unit", enabled=not quiet, log_lines=True, started=started)
        for unit in todo:
            bar.set_postfix_str(unit.id, refresh=False)
            try:
                rows = experiment.run_unit(unit, ctx, config)
            except Exception as err:
                raise _unreadable(err, config, folder) from None
            store.append(unit.id, rows)
            bar.update(1)
        bar.close()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        dist.barrier()
        if rank != 0:
            return {}
    df = store.frame()  # every shard
    tables = experiment.tables(df, config)
    figures = experiment.figures(df, config, folder)
    page = write_report(folder, experiment, config, tables, figures, notes=damaged_note(store))
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"\n{experiment.title}\n")
        for spec, table in as_entries(tables):
            setting = "".join(f"{k}: {v}\n" for k, v in published_lines(getattr(table, "attrs", {})))
            print(f"{spec.title}\n{setting}{_text_table(table)}\n")
    print(f"results: {folder / 'results.jsonl'}\nreport:  {page}")
    if store.damaged:
        print(f"damaged: {len(store.damaged)} line(s) of the results skipped ({store.damaged_text()}); their units "
              "were run again")
    return tables
