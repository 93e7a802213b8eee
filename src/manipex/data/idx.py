"""MNIST and Fashion-MNIST from their original IDX files.

IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number ``0x00 0x00 T D`` where
``T`` is the element type code and ``D`` the number of dimensions, then ``D`` big-endian
uint32 sizes, then the elements in row-major (C) order, big-endian. Image files have magic
2051 (ubyte, 3 dims); label files have magic 2049 (ubyte, 1 dim).
"""

from __future__ import annotations

from pathlib import Path

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

SPLITS = ("train", "test")
"""Splits offered by :func:`load_idx_dataset`."""

IMAGES_MAGIC = 0x00000803
"""Magic number of an IDX image file (unsigned bytes, 3 dimensions) = 2051."""

LABELS_MAGIC = 0x00000801
"""Magic number of an IDX label file (unsigned bytes, 1 dimension) = 2049."""

NUM_CLASSES = 10
"""Labels of MNIST and Fashion-MNIST are 0..9."""

IMAGE_SIZE = (28, 28)
"""Height and width of MNIST and Fashion-MNIST images."""

_IDX_TYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}
_TORCHVISION_SUBDIR = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def read_idx(path: Path, expected_magic: int | None = None) -> np.ndarray:
    """Parse one IDX file (plain or ``.gz``) into a numpy array of native byte order.

    Args:
        path: The file.
        expected_magic: If given, the magic number the file must start with.

    Raises:
        ValueError: on a bad magic number, unknown type code or truncated data.
    """
    data = read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(
            f"{path}: bad IDX magic number {magic} (0x{magic:08x}), expected {expected_magic} "
            f"(0x{expected_magic:08x}); is this the right file?"
        )
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (magic 0x{magic:08x})")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX header announces shape {shape} ({count * dtype.itemsize} bytes) "
            f"but {len(data) - header} bytes of data follow"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def root_contents(name: str = "mnist") -> str:
    """What ``root`` must hold for dataset ``name``, for messages."""
    return (
        "the folder of train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
        "and t10k-labels-idx1-ubyte (each optionally .gz), or torchvision's download folder "
        f"holding {_TORCHVISION_SUBDIR.get(name, 'MNIST')}/raw"
    )


def _data_dir(root: Path, name: str, prefix: str) -> Path:
    """``root`` itself, or torchvision's ``root/<MNIST|FashionMNIST>/raw`` if the files are there."""
    raw = root / _TORCHVISION_SUBDIR[name] / "raw"
    has_files = any(root.glob(f"{prefix}-images-idx3-ubyte*"))
    return raw if not has_files and raw.is_dir() else root


def load_idx_dataset(root: PathLike, split: str = "train", *, name: str = "mnist") -> tuple[Tensor, Tensor]:
    """Load MNIST or Fashion-MNIST from IDX files.

    Args:
        root: Directory with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``),
            or torchvision's download directory containing ``MNIST/raw`` / ``FashionMNIST/raw``.
        split: ``"train"`` or ``"test"`` (the ``t10k`` files).
        name: ``"mnist"`` or ``"fashion_mnist"``; only used to find torchvision's layout.

    Returns:
        ``(x, y)``: float32 images (N, 1, 28, 28) in [0, 1] and int64 labels (N,).

    Raises:
        FileNotFoundError: if the directory or a file is missing (the path is named).
        ValueError: on a bad split, ``root`` ``None``, a bad magic number, images that are not
            28x28, an empty file, different numbers of images and labels, or a label outside
            0..9 (the file is named).
    """
    if not isinstance(name, str) or name not in _TORCHVISION_SUBDIR:
        raise ValueError(f"load_idx_dataset: name must be one of {', '.join(_TORCHVISION_SUBDIR)}, got {name!r}")
    check_split(split, SPLITS, name)
    prefix = _PREFIX[split]
    directory = _data_dir(existing_dir(root, name, root_contents(name)), name, prefix)
    image_path = find_file(directory, f"{prefix}-images-idx3-ubyte")
    label_path = find_file(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(image_path, IMAGES_MAGIC)
    labels = read_idx(label_path, LABELS_MAGIC)
    if images.shape[1:] != IMAGE_SIZE:
        raise ValueError(f"{image_path}: expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} images, got shape {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{image_path}: holds no images")
    if len(images) != len(labels):
        raise ValueError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels")
    return images_to_tensor(images[:, None]), labels_to_tensor(check_labels(labels, NUM_CLASSES, label_path))
