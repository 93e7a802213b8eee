"""CIFAR-10 from the "python version" batches (``cifar-10-python.tar.gz`` extracted).

Each batch is a pickled dict with ``data`` (uint8 array (10000, 3072): 1024 red, then green,
then blue values of a 32x32 image, row-major) and ``labels`` (list of ints 0..9). The pickles
are read with :class:`~manipex.data.safe_pickle.RestrictedUnpickler`, which refuses code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ._common import (
    PathLike,
    check_labels,
    check_split,
    existing_dir,
    find_file,
    images_to_tensor,
    labels_to_tensor,
    read_bytes,
)
from .safe_pickle import restricted_loads

SPLITS = ("train", "test")
"""Splits offered by :func:`load_cifar10`."""

BATCHES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
"""Batch file names of each split."""

SUBDIR = "cifar-10-batches-py"
"""Directory created by extracting the official archive."""

NUM_CLASSES = 10
"""Labels are 0..9."""

ROOT_CONTENTS = (
    "the folder of the CIFAR-10 python batches data_batch_1 .. data_batch_5 and test_batch "
    f"(each optionally .gz; {SUBDIR} as extracted from cifar-10-python.tar.gz), or its parent"
)
"""What ``root`` must hold, for messages."""


def _entry(batch: dict[Any, Any], key: str, path: Path) -> Any:
    """``batch[key]`` where the key may be stored as ``bytes`` (Python 2 pickle) or ``str``."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise ValueError(f"{path}: CIFAR batch has no {key!r} entry")


def _batch_dir(root: Path, split: str) -> Path:
    """``root``, or ``root/cifar-10-batches-py`` when the batches are only found there."""
    first = BATCHES[split][0]
    if (root / SUBDIR).is_dir() and not any((root / n).is_file() for n in (first, f"{first}.gz")):
        return root / SUBDIR
    return root


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch safely into (uint8 images (N, 3, 32, 32), int64 labels (N,)).

    Raises:
        pickle.UnpicklingError: if the pickle references anything but numpy arrays.
        ValueError: if the content is not a CIFAR-10 batch: no dict, data not uint8 (N, 3072)
            with N >= 1, not N integer labels, or a label outside 0..9 (the file is named).
    """
    try:
        batch = restricted_loads(read_bytes(path), encoding="bytes")
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(f"{path}: {err}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = np.asarray(_entry(batch, "data", path))
    labels = np.asarray(_entry(batch, "labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected uint8 data of shape (N, 3072), got {data.dtype} {data.shape}")
    if len(data) == 0:
        raise ValueError(f"{path}: CIFAR batch holds no images (data of shape {data.shape})")
    if labels.shape != (len(data),) or labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: expected {len(data)} integer labels (one per image), got {labels.dtype} {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), check_labels(labels, NUM_CLASSES, path)


def load_cifar10(root: PathLike, split: str = "train") -> tuple[Tensor, Tensor]:
    """Load CIFAR-10 from its python batches.

    Args:
        root: Directory holding ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``,
            or one containing the ``cifar-10-batches-py`` directory.
        split: ``"train"`` (the five data batches) or ``"test"``.

    Returns:
        ``(x, y)``: float32 images (N, 3, 32, 32) in [0, 1] and int64 labels (N,).

    Raises:
        FileNotFoundError: if the directory or a batch is missing (the path is named).
        pickle.UnpicklingError: if a batch tries to load anything but numpy arrays.
        ValueError: if ``root`` is ``None``, or a batch is malformed (see :func:`read_batch`).
    """
    check_split(split, SPLITS, "cifar10")
    directory = _batch_dir(existing_dir(root, "cifar10", ROOT_CONTENTS), split)
    parts = [read_batch(find_file(directory, name)) for name in BATCHES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images_to_tensor(images), labels_to_tensor(labels)
