"""Run an experiment: resolve its config, shard its units, skip finished ones, store rows.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each process runs the units ``rank::world``
into its own shard of the store and rank 0 waits for all (gloo barrier on CPU, NCCL on GPU)
before writing tables and the report. Units seed themselves, so the rows do not depend on
the sharding nor on interruptions.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from .base import Context, get_experiment
from .config import ConfigError, read_config
from .report import is_text, write_report
from .store import ResultStore


def load_config(name: Optional[str], path: Optional[os.PathLike], overrides: Mapping[str, Any]):
    """The experiment and its validated, typed config: defaults, then the file, then ``overrides``."""
    table: Dict[str, Any] = dict(read_config(Path(path))) if path else {}
    named = table.pop("experiment", None)
    if named is not None and not isinstance(named, str):
        raise ConfigError("config key 'experiment' must be a string")
    if name and named and name != named:
        raise ConfigError(f"config file is for experiment {named!r}, not {name!r}")
    experiment = get_experiment(name or named or "quick")
    config = experiment.Config.resolve(table, overrides,
                                       sources=[f"config {path}" if path else "config", "command line"])
    return experiment, config


def _distributed() -> tuple:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


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

    The config is validated before any work. Finished units already in the store are skipped.
    """
    experiment, config = load_config(name, config_file, overrides or {})
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    rank, world = _distributed()
    folder = Path(out) / experiment.name
    store = ResultStore(folder, rank)
    old = store.meta()
    if old is not None and store.done():  # a folder without a finished unit holds nothing to protect
        changed = config.differences(old.get("config", {}))
        if changed:
            raise ConfigError(f"{folder} holds a run with another config: " + "; ".join(changed)
                              + ". Use another --out, delete the folder, or run with the stored config")
    if rank == 0:
        store.write_meta({"experiment": experiment.name, "config": config.to_dict(), "seed": getattr(config, "seed", None),
                          "environment": environment(device), "world_size": world, "started": time.time()})
    units = experiment.units(config)[rank::world]
    done = store.done()
    todo = [u for u in units if u.id not in done]
    from .._progress import progress_bar

    if todo:
        ctx = experiment.setup(config, Context(out=folder, device=device, progress=not quiet))
        bar = progress_bar(total=len(units), initial=len(units) - len(todo), desc=experiment.name, unit="unit",
                           enabled=not quiet)
        for unit in todo:
            bar.set_postfix_str(unit.id, refresh=False)
            store.append(unit.id, experiment.run_unit(unit, ctx, config))
            bar.update(1)
        bar.close()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        dist.barrier()
        if rank != 0:
            return {}
    df = ResultStore(folder).frame()
    tables = {k: v for k, v in experiment.tables(df, config).items() if v is not None}
    figures = experiment.figures(df, config, folder)
    page = write_report(folder, experiment, config, tables, figures)
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"\n{experiment.title}\n")
        for title, table in tables.items():
            print(f"{title}\n{_text_table(table) if is_text(table) else table}\n")
    print(f"results: {folder / 'results.jsonl'}\nreport:  {page}")
    return tables
