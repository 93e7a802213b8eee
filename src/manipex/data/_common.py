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
    if split not in allowed:
        raise ValueError(
            f"unknown split {split!r} for dataset {dataset!r}; valid splits: {', '.join(allowed)}"
        )
    return split


def existing_dir(root: PathLike, dataset: str) -> Path:
    """Return ``root`` as a :class:`~pathlib.Path`, raising ``FileNotFoundError`` if it is no directory."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: data directory {str(path)!r} does not exist")
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


def labels_to_tensor(labels: np.ndarray | Sequence[int]) -> Tensor:
    """Convert class labels to an int64 tensor of shape (N,)."""
    return torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)).clone()
