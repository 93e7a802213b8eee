"""Images stored one folder per class, as for torchvision's ``ImageFolder``.

Layout: ``root/<class>/<image>`` (classes sorted by name get labels 0, 1, ...). If ``root``
has ``train``/``val``/``test`` subdirectories, each is such a class-per-folder tree and the
split picks one of them. A tree without ``val``/``test`` folders can be split here:
``holdout=N`` holds out N images (or a fraction) by a seeded permutation for ``"val"``/``"test"``
and leaves the rest for ``"train"``. ``manipex run``/``audit`` make their split with this same
function (``holdout`` = the number of images they evaluate, ``seed`` = the run's seed).

**Size.** ``image_size=S`` gives S x S images: an image that is already S x S is kept exactly
as it is (its pixels / 255, no resampling); any other is resized (bilinear) so that its shorter
side is ``round(S * 256 / 224)`` and its central S x S square is cut out: torchvision's ImageNet
evaluation protocol (256 -> 224), which is what ImageNet weights expect. ``size``/``crop`` set
the two steps separately (default 256/224); there too an image already ``crop`` x ``crop`` is
kept as it is.

**Values** are in [0, 1] unless ``mean``/``std`` are given: nothing is normalised by default.
(``manipex run`` normalises with a layer in front of the model instead; it prints which.)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ._common import PathLike, check_split, existing_dir, normalize_channels

SPLITS = ("train", "val", "test", "all")
"""Splits offered by :func:`load_image_folder`."""

ROOT_CONTENTS = (
    "the folder of a class-per-folder image tree, root/<class>/<image> (classes sorted by name "
    "get labels 0, 1, ...), optionally split into root/train, root/val and root/test"
)
"""What ``root`` must hold, for messages."""

HELD_OUT = ("val", "test")
"""The splits that ``holdout`` makes from a tree without these folders."""

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
    hint = ""
    if split in HELD_OUT and not any((base / s).is_dir() for s in HELD_OUT):
        hint = (f"; {str(base)!r} has no val/test folder: pass holdout=N (N images, or a fraction) to hold out "
                "images by a seeded permutation")
    raise FileNotFoundError(f"image_folder: split directory {str(base / split)!r} does not exist{hint}")


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


#: Pillow's modes of one channel of more than 8 bits: 16-bit integers (PNG, TIFF), 32-bit integers
#: and 32-bit floats (TIFF).
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _scaled(image: Image.Image) -> Image.Image:
    """A one-channel image of more than 8 bits as float pixels in [0, 1] (mode ``F``): 16-bit
    integers over 65535, wider integers over their largest value's type, floats as they are when
    in [0, 1] and over 255 when in [0, 255]."""
    values = np.asarray(image, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if image.mode == "F":
        scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else top
    elif image.mode.startswith("I;16") or top <= 65535:
        scale = 65535.0
    else:
        scale = 2.0 ** 32 - 1
    return Image.fromarray(np.clip(values / scale, 0.0, 1.0).astype(np.float32), mode="F")


def _pixels(image: Image.Image, channels: int) -> np.ndarray:
    """``(channels, H, W)`` float32 in [0, 1] of an 8-bit image or a float one already in [0, 1]
    (mode ``F``, :func:`_scaled`): RGB (a grey image's one channel three times) or one channel
    (an RGB image's luminance, ITU-R 601-2 as Pillow's ``L``)."""
    if image.mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        return grey[None] if channels == 1 else np.repeat(grey[None], 3, axis=0)
    if channels == 1:
        return np.asarray(image.convert("L"), dtype=np.float32)[None] / 255.0
    return np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0


def _read_image(path: Path, size: int | None, crop: int | None, channels: int = 3) -> np.ndarray:
    """Read one image as float32 ``(channels, H, W)`` in [0, 1] (:func:`_pixels`) after the
    optional resize and center crop; an image already ``crop`` x ``crop`` is kept as it is
    (resizing it would only blur it). A file Pillow cannot read, a damaged one and one larger
    than Pillow's decompression-bomb limit are refused naming the file."""
    try:
        with Image.open(path) as handle:
            handle.load()
            image = _scaled(handle) if handle.mode in _DEEP_MODES else handle.convert(
                "L" if channels == 1 and handle.mode in ("L", "LA", "1", "P") else "RGB")
    except Image.DecompressionBombError as err:
        raise ValueError(f"image_folder: {path}: the image is too large to read safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise ValueError(f"image_folder: {path}: not a readable image (damaged, cut short or another format): "
                         f"{type(err).__name__}: {str(err)[:200]}") from None
    if not (crop is not None and image.size == (crop, crop)):
        if size is not None:
            image = _resize_shorter(image, size)
        if crop is not None:
            image = _center_crop(image, crop)
    return _pixels(image, channels)


def _channel_values(values: object, name: str, count: int = 3) -> tuple[float, ...]:
    """``count`` finite per-channel values (``std``: positive), from any sequence or array."""
    try:
        if isinstance(values, (str, bytes)):
            raise TypeError
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"image_folder: {name} must be a sequence of {count} numbers, got {values!r}") from None
    if array.shape != (count,):
        what = "(R, G, B)" if count == 3 else "(one per channel)"
        raise ValueError(f"image_folder: {name} must hold {count} values {what}, got shape {array.shape}")
    if not np.isfinite(array).all() or (name == "std" and array.min() <= 0):
        raise ValueError(f"image_folder: {name} must hold {count} finite values{' > 0' if name == 'std' else ''}, "
                         f"got {array.tolist()}")
    return tuple(array.tolist())


def imagenet_resize(image_size: int) -> int:
    """The shorter side images are resized to before the center crop of ``image_size``:
    ``round(image_size * 256 / 224)`` (torchvision's ImageNet evaluation, 256 -> 224)."""
    return round(image_size * 256 / 224)


def _check_pixels(arg: str, value: object) -> None:
    if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"image_folder: {arg} must be an int (pixels) or None, got {type(value).__name__}")
    if value is not None and value < 1:  # type: ignore[operator]
        raise ValueError(f"image_folder: {arg} must be a positive number of pixels or None, got {value}")


def _held_out_count(holdout: int | float, total: int) -> int:
    """How many of ``total`` images ``holdout`` (a count, or a fraction in (0, 1)) holds out."""
    if isinstance(holdout, (bool, np.bool_)) or not isinstance(holdout, numbers.Real):
        raise TypeError(f"image_folder: holdout must be a number of images or a fraction, got {type(holdout).__name__}")
    if isinstance(holdout, numbers.Integral):
        if holdout < 0:
            raise ValueError(f"image_folder: holdout must be >= 0 images, got {holdout}")
        return min(int(holdout), total)
    if not 0 < float(holdout) < 1:
        raise ValueError(f"image_folder: holdout must be a number of images or a fraction in (0, 1), got {holdout}")
    return math.ceil(float(holdout) * total)


def _class_files(directory: Path) -> list[tuple[Path, int]]:
    """``(path, label)`` of every image under ``directory``'s class folders, by class then name."""
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
    return files


def held_out_order(count: int, seed: int = 0) -> Tensor:
    """The seeded permutation of ``count`` images that ``holdout`` cuts: the first ones are held
    out (``torch.randperm`` with a CPU generator seeded by ``seed``: the same on every machine)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(int(seed)))


def load_image_folder(
    root: PathLike,
    split: str = "train",
    *,
    image_size: int | None = None,
    size: int | None = 256,
    crop: int | None = 224,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    holdout: int | float | None = None,
    seed: int = 0,
    channels: int = 3,
) -> tuple[Tensor, Tensor]:
    """Load every image of a class-per-folder tree (or of its ``split``) into memory.

    Args:
        root: The tree (see :func:`split_dir` for how ``split`` selects a subdirectory).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        image_size: Square images of this side: an image already ``image_size`` x
            ``image_size`` is kept as it is; others are resized so that their shorter side is
            :func:`imagenet_resize` (bilinear) and center-cropped. Give it instead of
            ``size``/``crop`` (which must then keep their defaults).
        size: Resize the shorter side to this many pixels (bilinear); ``None`` keeps the size.
        crop: Center-crop a square of this side; ``None`` keeps the whole image. An image that
            already has this size is neither resized nor cropped.
        mean: Per-channel mean to subtract (one value per channel), e.g. ImageNet's ``(0.485, 0.456, 0.406)``.
        std: Per-channel standard deviation to divide by (one value per channel). ``mean``/``std`` both
            ``None`` keeps values in [0, 1].
        holdout: For a tree with no ``val``/``test`` folder: hold out this many images (an
            int), or this fraction (a float in (0, 1), rounded up), of ``root/train`` (or of
            ``root`` itself without split folders), chosen by :func:`held_out_order`; ``"val"``
            and ``"test"`` are these images (in the permutation's order), ``"train"`` the
            others. Unused where ``val``/``test`` folders exist, and for ``"all"``. ``None``:
            ``"train"`` is the whole tree and ``"val"``/``"test"`` are refused.
        seed: The seed of the ``holdout`` permutation.
        channels: 3 (RGB; a grey image's channel three times) or 1 (grey; an RGB image's
            luminance), as the model takes them. Every bit depth is scaled to [0, 1]: 8-bit
            images over 255, 16-bit PNG/TIFF over 65535, float TIFFs as they are (in [0, 1]) or
            over 255 (in [0, 255]).

    Returns:
        ``(x, y)``: float32 images (N, channels, H, W) and int64 labels (N,); label ``i`` is the
        ``i``-th class in :func:`find_classes` order. Files within a class are sorted by name
        (a ``holdout`` split: in the permutation's order).

    Raises:
        FileNotFoundError: if the directory is missing or holds no images, or ``split`` is
            missing (the message says whether ``holdout`` would make it).
        TypeError: if ``image_size``/``size``/``crop`` are not ints or ``None``, ``holdout`` is
            not a number, ``seed`` not an int, or ``mean``/``std`` not sequences of numbers.
        ValueError: if ``image_size``/``size``/``crop`` are below 1, ``image_size`` is given
            with ``size``/``crop``, ``holdout`` is negative or a fraction outside (0, 1),
            ``mean``/``std`` do not hold 3 finite values (``std`` > 0) or only one is given, or
            the images end up with different sizes (set ``size``/``crop``).
    """
    for arg, value in (("image_size", image_size), ("size", size), ("crop", crop)):
        _check_pixels(arg, value)
    if image_size is not None:
        if (size, crop) != (256, 224):
            raise ValueError("image_folder: give image_size, or size and crop, not both")
        size, crop = imagenet_resize(image_size), image_size
    if (mean is None) != (std is None):
        raise ValueError("image_folder: give both mean and std, or neither")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"image_folder: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if mean is not None and std is not None:
        mean, std = _channel_values(mean, "mean", channels), _channel_values(std, "std", channels)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"image_folder: seed must be an int, got {type(seed).__name__}")
    check_split(split, SPLITS, "image_folder")
    base = existing_dir(root, "image_folder", ROOT_CONTENTS)
    if holdout is not None and split != "all" and not any((base / s).is_dir() for s in HELD_OUT):
        directory = base / "train" if (base / "train").is_dir() else base
        pool = _class_files(directory)
        order = held_out_order(len(pool), seed).tolist()
        count = _held_out_count(holdout, len(pool))
        chosen = order[:count] if split in HELD_OUT else order[count:]
        files = [pool[i] for i in chosen]
    else:
        directory = split_dir(base, split)
        files = pool = _class_files(directory)
    # an empty part of a split still has the images' shape
    arrays = [_read_image(path, size, crop, channels) for path, _ in (files or pool[:1])]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images in {str(directory)!r} have different sizes {sorted(shapes)}; set size/crop")
    x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))[:len(files)]
    if mean is not None and std is not None:
        x = normalize_channels(x, mean, std)
    return x, torch.tensor([label for _, label in files], dtype=torch.int64)
