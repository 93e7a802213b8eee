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
from .config import ConfigError, read_config, short
from .report import damaged_note, is_text, published_lines, write_report
from .store import DamagedMetaError, ResultStore


def _experiment(name: Any):
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
    experiment = _experiment(name or named or "quick")
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
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device: unknown device {short(device, 60)}; use cpu, cuda, cuda:N or auto") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
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
    """A table of sentences (Findings, Verdict) as indented lines, not cut to the terminal's width."""
    lines = []
    for index, row in table.iterrows():
        lines.append(f"- {index}")
        lines += [f"    {column}: {value}" for column, value in row.items() if str(value)]
    return "\n".join(lines)


def environment(device: str) -> Dict[str, Any]:
    import manipex

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
) -> Dict[str, Any]:
    """Run (or resume) an experiment into ``out/<experiment>``; returns its tables.

    ``quiet`` hides the progress bar (for CI and logs); the tables are always printed.

    The config is validated before any work, the model and data are loaded and checked before
    ``meta.json`` is written. Finished units already in the store are skipped. One run writes a
    folder (its shard under torchrun) at a time: another one raises
    :class:`~manipex.experiments.store.FolderInUseError` at once.
    """
    experiment, config = load_config(name, config_file, overrides or {})
    _check_device(device)
    rank, world = _distributed()
    folder = Path(out) / experiment.name
    created = _make_folder(folder)
    store = ResultStore(folder, rank)
    lock = store.lock()
    try:
        try:
            lock.acquire()
        except OSError as err:
            raise ConfigError(f"--out: cannot write in the run folder {folder}: {err.strerror or err}") from None
        return _run_locked(experiment, config, store, folder, rank, world, device, quiet)
    finally:
        lock.release()
        if not store.shards():  # a run that stored nothing leaves no empty folders behind
            _remove_empty(created)


def _run_locked(experiment, config, store: ResultStore, folder: Path, rank: int, world: int, device: str,
                quiet: bool) -> Dict[str, Any]:
    done = store.done()
    try:
        old = store.meta()
    except DamagedMetaError:
        if done:
            raise
        old = None  # a folder without a finished unit holds nothing to protect
    if old is not None and done:
        changed = config.differences(old["config"])
        if changed:
            raise ConfigError(f"{folder} holds a run with another config: " + "; ".join(changed)
                              + ". Use another --out, delete the folder, or run with the stored config")
    units = experiment.units(config)[rank::world]
    todo = [u for u in units if u.id not in done]
    from .._progress import progress_bar

    # the model and data are loaded (and checked against the config: images in the split, classes)
    # before meta.json is written: a run refused there leaves the folder as it was
    try:
        ctx = experiment.setup(config, Context(out=folder, device=device, progress=not quiet)) if todo else None
    except Exception as err:
        raise _unreadable(err, config, folder) from None
    if rank == 0:
        store.write_meta({"experiment": experiment.name, "config": config.to_dict(), "seed": getattr(config, "seed", None),
                          "environment": environment(device), "world_size": world, "started": time.time()})
    if todo:
        bar = progress_bar(total=len(units), initial=len(units) - len(todo), desc=experiment.name, unit="unit",
                           enabled=not quiet)
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
    tables = {k: v for k, v in experiment.tables(df, config).items() if v is not None}
    figures = experiment.figures(df, config, folder)
    page = write_report(folder, experiment, config, tables, figures, notes=damaged_note(store))
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"\n{experiment.title}\n")
        for title, table in tables.items():
            setting = "".join(f"{k}: {v}\n" for k, v in published_lines(getattr(table, "attrs", {})))
            print(f"{title}\n{setting}{_text_table(table) if is_text(table) else table}\n")
    print(f"results: {folder / 'results.jsonl'}\nreport:  {page}")
    if store.damaged:
        print(f"damaged: {len(store.damaged)} line(s) of the results skipped ({store.damaged_text()}); their units "
              "were run again")
    return tables
