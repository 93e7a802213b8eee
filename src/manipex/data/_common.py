"""Helpers shared by the dataset loaders: split checks, file lookup, tensor conversion."""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

PathLike = str | os.PathLike[str]
"""A file-system path accepted by the loaders."""


def check_split(split: str, allowed: Sequence[str], dataset: str) -> str:
    """Return ``split`` if it is one of ``allowed``, else raise ``ValueError``.

    Args:
        split: The split name the user asked for.
        allowed: The splits the dataset offers.
        dataset: Name of the dataset, used in the error message.
    """
    if not isinstance(split, str):
        raise TypeError(f"{dataset}: split must be a str (one of {', '.join(allowed)}), got {type(split).__name__}")
    if split not in allowed:
        raise ValueError(
            f"unknown split {split!r} for dataset {dataset!r}; valid splits: {', '.join(allowed)}"
        )
    return split


def existing_dir(root: PathLike | None, dataset: str, contents: str = "the data files") -> Path:
    """Return ``root`` as a :class:`~pathlib.Path` after checking that it names a directory.

    Args:
        root: The directory the user gave.
        dataset: Name of the dataset, used in messages.
        contents: What the directory must hold, for the message when ``root`` is missing.

    Raises:
        ValueError: if ``root`` is ``None`` (the message says what the folder must hold).
        TypeError: if ``root`` is not a ``str`` or ``os.PathLike``.
        FileNotFoundError: if ``root`` does not exist, or is not a directory.
    """
    if root is None:
        raise ValueError(f"{dataset}: root is required: {contents}")
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{dataset}: root must be a path (str or os.PathLike), got {type(root).__name__}")
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{dataset}: data directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: root {str(path)!r} is a file, not a directory ({contents})")
    return path


def find_file(directory: Path, name: str) -> Path:
    """Find ``directory/name`` or its gzipped form ``directory/name.gz``.

    Raises:
        FileNotFoundError: if neither exists; the message names the paths expected.
    """
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"expected file {str(directory / name)!r} (or {str(directory / name) + '.gz'!r}) not found"
    )


def read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it transparently when its name ends in ``.gz``."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle:
            return handle.read()
    return path.read_bytes()


def package_dir(name: str) -> Path | None:
    """Directory of an installed top-level package, found *without importing it*.

    Returns ``None`` when the package is not installed.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def images_to_tensor(images: np.ndarray) -> Tensor:
    """Convert ``uint8`` images of shape (N, C, H, W) to float32 in [0, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images of shape (N, C, H, W), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)


def normalize_channels(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel of images ``(N, C, H, W)``."""
    shape = (-1, 1, 1)
    return (x - torch.tensor(mean, dtype=x.dtype).view(shape)) / torch.tensor(std, dtype=x.dtype).view(shape)


def check_labels(labels: np.ndarray, num_classes: int, source: object) -> np.ndarray:
    """Return ``labels`` as int64 after checking they are integer class indices in
    ``0 .. num_classes - 1``, one dimension.

    Args:
        labels: The labels as read.
        num_classes: Number of classes of the dataset.
        source: The file they were read from, named in messages.

    Raises:
        ValueError: on a non-integer dtype, a wrong shape, or a label out of range (the first
            bad label and how many there are are named).
    """
    labels = np.asarray(labels)
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{source}: labels must be integers, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{source}: labels must be one-dimensional, got shape {labels.shape}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"{source}: label {int(labels[bad][0])} is out of range 0..{num_classes - 1} "
            f"({int(bad.sum())} of {len(labels)} labels out of range)"
        )
    return labels.astype(np.int64)


def labels_to_tensor(labels: np.ndarray | Sequence[int]) -> Tensor:
    """Convert class labels to an int64 tensor of shape (N,)."""
    return torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)).clone()
