"""Safe checkpoint I/O: safetensors files with architecture metadata, and weights-only ``.pt``.

No function here ever executes pickled code: ``.safetensors`` files hold raw tensors and a JSON
header, and ``.pt`` / ``.pth`` files are read with ``torch.load(weights_only=True)``, which refuses
any object that is not a tensor or a plain container.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .._files import replacing
from .architectures import ARCH_ATTR, build

__all__ = ["load", "read_metadata", "save", "UnreadableWeightsError"]

_META_KEY = "manipex"
_FORMAT_VERSION = 1
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys under which common training scripts nest the state_dict in a checkpoint dictionary.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
# torchvision's DenseNet weight files (2017) name a dense layer's modules "norm.1", "conv.2", ...
# where the modules are now "norm1", "conv2"; torchvision renames them on load with this pattern.
_LEGACY_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_NUM_BATCHES = ".num_batches_tracked"


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s state_dict to a ``.safetensors`` file, atomically.

    The safetensors header gets, as JSON, the architecture name and keyword arguments (``arch``,
    ``arch_kwargs``; when not given, those recorded by :func:`manipex.models.build` are used) and
    the user ``metadata`` (any JSON-serialisable mapping), so :func:`load` can rebuild the model.

    Returns:
        The path written.
    """
    path = Path(path)
    if arch is None and arch_kwargs is None:
        recorded = getattr(model, ARCH_ATTR, None)
        if recorded is not None:
            arch, arch_kwargs = recorded["name"], recorded["kwargs"]
    if arch is None and arch_kwargs is not None:
        raise ValueError("arch_kwargs given without arch")
    header = {
        "version": _FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "metadata": dict(metadata or {}),
    }
    try:
        header_json = json.dumps(header)
    except TypeError as e:
        raise TypeError(f"arch_kwargs and metadata must be JSON-serialisable: {e}") from None
    # Clone: safetensors refuses tensors that share memory (tied weights) or are non-contiguous.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", _META_KEY: header_json})
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the manipex header of a ``.safetensors`` file without loading its tensors.

    The result has the keys ``arch`` (str or None), ``arch_kwargs`` (dict) and ``metadata``
    (the user metadata given to :func:`save`); all are empty/None for foreign files.
    """
    path = _nonempty(_existing(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
        header = json.loads(raw) if raw else {}
    except Exception as e:  # a damaged header (SafetensorError), or manipex's entry not JSON
        raise _damaged_safetensors(path, e) from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: its manipex header is not a JSON object")
    return {
        "arch": header.get("arch"),
        "arch_kwargs": header.get("arch_kwargs", {}),
        "metadata": header.get("metadata", {}),
    }


def load(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Load weights from ``path`` into ``model``, or rebuild the model when none is given.

    ``.safetensors`` files are read with safetensors. ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``
    files (e.g. torchvision weight files) are read with
    ``torch.load(path, weights_only=True, map_location="cpu")``; they must hold a state_dict,
    possibly nested under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``, and need
    ``model``. A ``"module."`` prefix (``DataParallel``) is stripped when the model lacks it.
    Old torchvision files load too: DenseNet's legacy ``norm.1``-style keys are renamed and
    BatchNorm ``num_batches_tracked`` counters missing from pre-0.4.1 files are set to 0.

    Args:
        path: the checkpoint file.
        model: the module to load into (in place, on its device). When ``None``, the
            architecture recorded by :func:`save` is built, cast to the checkpoint's floating
            dtype and loaded.

    Returns:
        The model holding the loaded weights, in eval mode (as every explanation needs it;
        call ``.train()`` to fine-tune it).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no architecture metadata and no ``model``; a ``.pt`` file holding anything
            but tensors (refused unpickled); keys that do not match the model (first ones listed).
    """
    path = _existing(path)
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
        if model is None:
            meta = read_metadata(path)
            if not meta["arch"]:
                raise ValueError(
                    f"{path} records no architecture (it was not saved by manipex.models.save "
                    "with an arch); pass the model to load into: load(path, model)"
                )
            model = build(meta["arch"], **meta["arch_kwargs"])
            dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
            if len(dtypes) == 1:
                model = model.to(dtypes.pop())
            _load_state(model, state, path)
            return model.eval()
    elif path.suffix in _TORCH_SUFFIXES:
        if model is None:
            raise ValueError(f"{path}: a {path.suffix} file holds no architecture; pass a model")
        state = _read_torch_state(path)
    else:
        raise ValueError(
            f"{path}: unknown checkpoint type {path.suffix!r}; "
            f"expected .safetensors or one of {', '.join(_TORCH_SUFFIXES)}"
        )
    _load_state(model, state, path)
    return model.eval()


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _nonempty(path: Path) -> Path:
    """``path``, refused where the file is empty (every reader's first check)."""
    if path.stat().st_size == 0:
        raise UnreadableWeightsError(f"{path}: the weights file is empty")
    return path


def _damaged_safetensors(path: Path, err: Exception) -> "UnreadableWeightsError":
    return UnreadableWeightsError(f"{path}: not a readable safetensors file (damaged or cut short): "
                                  f"{type(err).__name__}: {str(err)[:200]}")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged or empty one is refused naming the file."""
    try:
        return load_file(str(_nonempty(path)), device="cpu")
    except Exception as e:  # safetensors raises SafetensorError (and others) on a damaged header
        raise _damaged_safetensors(path, e) from None


def _unpickler_reason(err: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to load with
    ``weights_only=False`` (which would run the file's code)."""
    advice = ("Weights only load failed", "Check the documentation of torch.load")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1][:200]
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()[:200]
    reasons = [line for line in lines if not line.startswith(advice)]
    return (reasons[0] if reasons else "the file holds objects other than tensors")[:200]


class UnreadableWeightsError(ValueError):
    """A weights file that cannot be read at all (empty, cut short, damaged, a zip bomb, or
    holding pickled objects): the message starts with its path."""


def _refuse_zip_bomb(path: Path) -> None:
    """Refuse a torch zip archive whose entries unpack to far more than the file holds (a zip
    bomb): ``torch.save`` stores tensors uncompressed, so a real checkpoint unpacks to about
    its own size."""
    if not zipfile.is_zipfile(path):
        return  # the legacy (pre-1.6) format, or not a torch file: torch.load says which
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UnreadableWeightsError(f"{path}: not a readable torch weights file (a damaged zip archive): "
                                     f"{e}") from None
    size = path.stat().st_size
    if unpacked > 4 * size + (64 << 20):
        raise UnreadableWeightsError(f"{path}: its archive unpacks to {unpacked / 1e9:.1f} GB from {size / 1e6:.1f} "
                                     "MB (a zip bomb?); torch.save stores tensors uncompressed, so a checkpoint "
                                     "unpacks to its own size")


def _read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a torch pickle file without executing any pickled code."""
    _refuse_zip_bomb(_nonempty(path))
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise UnreadableWeightsError(
            f"{path}: refused to unpickle; only files holding plain tensors (a state_dict) are "
            f"loaded, never pickled objects or code. torch said: {_unpickler_reason(e)}"
        ) from e
    except (EOFError, RuntimeError, OSError) as e:  # cut short, a damaged zip archive
        raise UnreadableWeightsError(f"{path}: not a readable torch weights file (damaged or cut short): "
                         f"{type(e).__name__}: {str(e)[:200] or 'the file ends early'}") from None
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    return dict(obj)


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict(strict=True)`` with a readable report of mismatching keys."""
    expected = set(model.state_dict())
    if not any(k.startswith("module.") for k in expected) and all(
        k.startswith("module.") for k in state
    ):
        state = {k[len("module.") :]: v for k, v in state.items()}
    state = _upgrade_legacy_keys(state, expected)
    missing = [k for k in model.state_dict() if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{path}: state_dict keys do not match {type(model).__name__}: "
            f"{len(missing)} missing (first: {missing[:5]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:5]})"
        )
    model.load_state_dict(state, strict=True)


def _upgrade_legacy_keys(
    state: Mapping[str, torch.Tensor], expected: set[str]
) -> dict[str, torch.Tensor]:
    """Bring keys of old torchvision weight files to today's names, as torchvision does on load.

    * ``...denselayerN.norm.1.weight`` -> ``...denselayerN.norm1.weight`` (DenseNet files of
      2017), only where the new key is one the model expects.
    * ``<bn>.num_batches_tracked`` (a BatchNorm buffer since PyTorch 0.4.1) is set to 0 where the
      file has that BatchNorm's ``running_mean`` but not the counter, as ``nn.BatchNorm2d`` itself
      does for old state_dicts; the counter only matters for ``momentum=None``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _LEGACY_DENSE_KEY.match(key)
        if match and key not in expected and match.group(1) + match.group(2) in expected:
            key = match.group(1) + match.group(2)
        out[key] = value
    for key in expected:
        prefix = key[: -len(_NUM_BATCHES)]
        if key.endswith(_NUM_BATCHES) and key not in out and f"{prefix}.running_mean" in out:
            out[key] = torch.tensor(0, dtype=torch.long)
    return out
