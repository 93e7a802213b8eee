"""Default trained models: trained on first use from data shipped with manipex, then cached."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs
import torch
from torch import nn

from . import training
from .architectures import build
from .checkpoint import load, save

__all__ = ["DEFAULT_RECIPES", "Recipe", "default_cache_dir", "load_default"]


@dataclass(frozen=True)
class Recipe:
    """How a default model is trained: architecture, data set and Adam schedule."""

    arch: str
    dataset: str
    epochs: int
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def digest(self) -> str:
        """Short hash naming the cache file, so a changed recipe never reuses an old file."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


#: The default models by name. ``"mnist"``: the ReLU CNN of :func:`mnist_cnn` on MNIST-5k.
DEFAULT_RECIPES: dict[str, Recipe] = {
    "mnist": Recipe(arch="mnist_cnn", dataset="mnist5k", epochs=3),
}


def default_cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The directory of cached models: ``override``, else ``$MANIPEX_CACHE_DIR``, else the
    platform's user cache directory for ``manipex`` (``platformdirs.user_cache_dir``)."""
    if override is not None:
        return Path(override)
    env = os.environ.get("MANIPEX_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("manipex"))


def load_default(
    name: str = "mnist",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Return the default trained model ``name``, training and caching it on first use.

    ``"mnist"`` is :func:`manipex.models.mnist_cnn` (ReLU) trained on the MNIST-5k train split
    (seed 0, Adam lr 1e-3, batch 64, 3 epochs: about 4 s on 2 CPU cores, 0.947 accuracy on
    the 1000 test images). The weights are cached as
    ``<cache>/<name>-<recipe hash>.safetensors``, written atomically, with the recipe, test
    accuracy and training time in the metadata (:func:`manipex.models.read_metadata`).
    Training uses its own RNG state; the caller's global RNG is left as it was.

    Args:
        name: the default model; see ``DEFAULT_RECIPES``.
        cache_dir: where the file is cached; default ``$MANIPEX_CACHE_DIR`` or the user cache.
        retrain: train again and overwrite the cached file.
        progress: show a progress bar while training.

    Returns:
        The model on CPU in eval mode, all parameters with ``requires_grad=True``.

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in DEFAULT_RECIPES:
        raise ValueError(f"unknown default model {name!r}; known: {', '.join(DEFAULT_RECIPES)}")
    recipe = DEFAULT_RECIPES[name]
    path = default_cache_dir(cache_dir) / f"{name}-{recipe.digest()}.safetensors"
    if path.is_file() and not retrain:
        try:
            return load(path, build(recipe.arch)).eval()
        except Exception as e:  # a damaged cache file is replaced, never fatal
            warnings.warn(f"could not load cached model {path} ({e}); retraining", stacklevel=2)
    model = _train(recipe, progress=progress, path=path)
    return model.eval()



def _train(recipe: Recipe, *, progress: bool, path: Path) -> nn.Module:
    """Train ``recipe`` from scratch, save it to ``path`` and return the model."""
    from manipex import data  # lazy: data is a heavier, independent subpackage

    x_train, y_train = data.load(recipe.dataset, split="train")
    x_test, y_test = data.load(recipe.dataset, split="test")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build(recipe.arch)
        training.train_classifier(
            model,
            x_train,
            y_train,
            epochs=recipe.epochs,
            lr=recipe.lr,
            batch_size=recipe.batch_size,
            seed=recipe.seed,
            progress=progress,
        )
    seconds = time.perf_counter() - start
    acc = training.accuracy(model, x_test, y_test)
    save(
        model,
        path,
        arch=recipe.arch,
        metadata={
            "recipe": asdict(recipe),
            "test_accuracy": acc,
            "train_seconds": round(seconds, 2),
            "torch": torch.__version__,
        },
    )
    return model
