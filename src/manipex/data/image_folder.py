"""Images stored one folder per class, as for torchvision's ``ImageFolder``.

Layout: ``root/<class>/<image>`` (classes sorted by name get labels 0, 1, ...). If ``root``
has ``train``/``val``/``test`` subdirectories, each is such a class-per-folder tree and the
split picks one of them.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ._common import PathLike, check_split, existing_dir, images_to_tensor, normalize_channels

SPLITS = ("train", "val", "test", "all")
"""Splits offered by :func:`load_image_folder`."""

ROOT_CONTENTS = (
    "the folder of a class-per-folder image tree, root/<class>/<image> (classes sorted by name "
    "get labels 0, 1, ...), optionally split into root/train, root/val and root/test"
)
"""What ``root`` must hold, for messages."""

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"})
"""File suffixes (lower case) read as images; other files are ignored."""


def split_dir(root: PathLike, split: str = "train") -> Path:
    """The class-per-folder directory that holds ``split``.

    ``root/<split>`` if it exists. Otherwise, if ``root`` has none of the split directories
    ``train``/``val``/``test``, ``root`` itself is the single tree, returned for ``"train"``
    and ``"all"``. ``"all"`` always means ``root`` itself when ``root/all`` is absent.

    Raises:
        FileNotFoundError: if ``split`` is ``"val"``/``"test"`` and ``root/<split>`` is missing,
            or ``"train"`` is asked for while only other split directories exist.
    """
    check_split(split, SPLITS, "image_folder")
    base = existing_dir(root, "image_folder", ROOT_CONTENTS)
    if (base / split).is_dir():
        return base / split
    has_split_dirs = any((base / s).is_dir() for s in SPLITS if s != "all")
    if split == "all" or (split == "train" and not has_split_dirs):
        return base
    raise FileNotFoundError(f"image_folder: split directory {str(base / split)!r} does not exist")


def find_classes(directory: PathLike) -> list[str]:
    """Sorted class names (the subdirectory names) of a class-per-folder tree; label = index."""
    return sorted(
        entry.name for entry in Path(directory).iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size`` pixels, keeping the aspect ratio (bilinear)."""
    width, height = image.size
    if width <= height:
        new = (size, max(1, int(size * height / width)))
    else:
        new = (max(1, int(size * width / height)), size)
    return image.resize(new, Image.Resampling.BILINEAR) if new != image.size else image


def _center_crop(image: Image.Image, crop: int) -> Image.Image:
    """Crop the central ``crop`` x ``crop`` square (as torchvision's ``CenterCrop``)."""
    width, height = image.size
    if width < crop or height < crop:
        raise ValueError(f"image of size {width}x{height} is smaller than crop {crop}; raise `size`")
    left, top = int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def _read_image(path: Path, size: int | None, crop: int | None) -> np.ndarray:
    """Read one image as RGB uint8 (3, H, W) after the optional resize and center crop."""
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    if size is not None:
        image = _resize_shorter(image, size)
    if crop is not None:
        image = _center_crop(image, crop)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _channel_values(values: object, name: str) -> tuple[float, ...]:
    """Three finite per-channel values (``std``: positive), from any sequence or array."""
    try:
        if isinstance(values, (str, bytes)):
            raise TypeError
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"image_folder: {name} must be a sequence of 3 numbers, got {values!r}") from None
    if array.shape != (3,):
        raise ValueError(f"image_folder: {name} must hold 3 values (R, G, B), got shape {array.shape}")
    if not np.isfinite(array).all() or (name == "std" and array.min() <= 0):
        raise ValueError(f"image_folder: {name} must hold 3 finite values{' > 0' if name == 'std' else ''}, got {array.tolist()}")
    return tuple(array.tolist())


def load_image_folder(
    root: PathLike,
    split: str = "train",
    *,
    size: int | None = 256,
    crop: int | None = 224,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Load every image of a class-per-folder tree into memory.

    Args:
        root: The tree (see :func:`split_dir` for how ``split`` selects a subdirectory).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        size: Resize the shorter side to this many pixels (bilinear); ``None`` keeps the size.
        crop: Center-crop a square of this side; ``None`` keeps the whole image.
        mean: Per-channel mean to subtract (3 values), e.g. ImageNet's ``(0.485, 0.456, 0.406)``.
        std: Per-channel standard deviation to divide by (3 values). ``mean``/``std`` both
            ``None`` keeps values in [0, 1].

    Returns:
        ``(x, y)``: float32 images (N, 3, H, W) and int64 labels (N,); label ``i`` is the
        ``i``-th class in :func:`find_classes` order. Files within a class are sorted by name.

    Raises:
        FileNotFoundError: if the directory is missing or holds no images.
        TypeError: if ``size``/``crop`` are not ints or ``None``, or ``mean``/``std`` not
            sequences of numbers.
        ValueError: if ``size``/``crop`` are below 1, ``mean``/``std`` do not hold 3 finite
            values (``std`` > 0) or only one is given, or the images end up with different
            sizes (set ``size``/``crop``).
    """
    for arg, value in (("size", size), ("crop", crop)):
        if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)):
            raise TypeError(f"image_folder: {arg} must be an int (pixels) or None, got {type(value).__name__}")
        if value is not None and value < 1:
            raise ValueError(f"image_folder: {arg} must be a positive number of pixels or None, got {value}")
    if (mean is None) != (std is None):
        raise ValueError("image_folder: give both mean and std, or neither")
    if mean is not None and std is not None:
        mean, std = _channel_values(mean, "mean"), _channel_values(std, "std")
    directory = split_dir(root, split)
    classes = find_classes(directory)
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(
            p for p in (directory / name).rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
        )
        if not found:
            raise FileNotFoundError(
                f"image_folder: no image files in class directory {str(directory / name)!r}"
            )
        files.extend((path, label) for path in found)
    if not files:
        raise FileNotFoundError(f"image_folder: no class subdirectories with images in {str(directory)!r}")
    arrays = [_read_image(path, size, crop) for path, _ in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images in {str(directory)!r} have different sizes {sorted(shapes)}; set size/crop")
    x = images_to_tensor(np.stack(arrays))
    if mean is not None and std is not None:
        x = normalize_channels(x, mean, std)
    return x, torch.tensor([label for _, label in files], dtype=torch.int64)
