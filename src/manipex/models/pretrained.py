"""Default trained models: shipped inside the package, bit-identical on every machine.

A default model is a :class:`Recipe` (architecture, data, Adam schedule, seed) and the weights
that recipe trained, shipped as a small safetensors file in ``manipex/models/files`` by
``scripts/make_default_models.py``. Loading reads that file and checks it against the recipe
(its digest) and against the digest of its own weights; nothing is trained on first use, and
every machine, thread count and test order gets the same model. Training the recipe again
(``retrain=True``) runs it deterministically (one intra-op thread,
:func:`manipex._determinism.reproducible`) and reproduces the shipped weights bit for bit on a
CPU of the instruction set they were made on (tested); on another instruction set the kernels
round differently, which is why the weights are shipped rather than trained here.
"""

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

from .._determinism import blas_reproducible, cpu_capability
from . import training
from .architectures import build
from .checkpoint import load, read_metadata, save

__all__ = ["DEFAULT_RECIPES", "Recipe", "default_cache_dir", "load_default", "shipped_path", "state_digest",
           "train_recipe"]

#: Where the shipped default weights live (package data).
SHIPPED_DIR = Path(__file__).with_name("files")


@dataclass(frozen=True)
class Recipe:
    """How a default model is trained: architecture, data set and Adam schedule, trained
    deterministically (one intra-op thread)."""

    arch: str
    dataset: str
    epochs: int
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    deterministic: bool = True

    def digest(self) -> str:
        """Short hash naming the weights file, so a changed recipe never reuses an old file."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


#: The default models by name. ``"mnist"``: the ReLU CNN of :func:`mnist_cnn` on MNIST-5k;
#: ``"vit_mnist"``: the Vision Transformer of :func:`~manipex.models.vit.vit_mnist` on MNIST-5k (plain
#: Adam as the CNN, no weight decay or schedule; 50 epochs, where its test accuracy has plateaued;
#: measured: README, Measured figures behind the defaults).
DEFAULT_RECIPES: dict[str, Recipe] = {
    "mnist": Recipe(arch="mnist_cnn", dataset="mnist5k", epochs=3),
    "vit_mnist": Recipe(arch="vit_mnist", dataset="mnist5k", epochs=50),
}


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state_dict: names, dtypes, shapes and the bytes of every tensor, in
    name order. Equal digests mean bit-identical weights and buffers."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def shipped_path(name: str) -> Path:
    """The shipped weights file of the default model ``name`` (it may be missing for a recipe
    registered by a user)."""
    return SHIPPED_DIR / f"{name}-{DEFAULT_RECIPES[name].digest()}.safetensors"


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
    """Return the default trained model ``name``: the weights shipped with manipex.

    ``"mnist"`` is :func:`manipex.models.mnist_cnn` (ReLU) trained on the MNIST-5k train split
    (seed 0, Adam lr 1e-3, batch 64, 3 epochs, one intra-op thread). ``"vit_mnist"`` is the
    Vision Transformer :func:`manipex.models.vit_mnist` (7x7 patches, dim 64, depth 4, 4 heads,
    MLP 128; 139,018 parameters) trained on the same split with the same optimiser (seed 0, plain
    Adam lr 1e-3 without weight decay or schedule, batch 64, one intra-op thread) for 50 epochs,
    past the point where its test accuracy plateaus: on 4000 images without augmentation it does
    not pass the CNN (test accuracies, training time and the plateau measured: README, Measured
    figures behind the defaults). The shipped file's metadata
    (:func:`manipex.models.read_metadata`) holds the recipe, the digest of its weights
    (:func:`state_digest`), the test accuracy, the torch
    version and CPU instruction set it was trained with; both digests are checked on load.
    A recipe without a shipped file is trained on first use and cached as
    ``<cache>/<name>-<recipe digest>.safetensors``, written atomically. Training uses its own
    RNG state; the caller's global RNG and thread count are left as they were.

    Args:
        name: the default model; see ``DEFAULT_RECIPES``.
        cache_dir: where a model trained here is cached; default ``$MANIPEX_CACHE_DIR`` or the
            user cache directory.
        retrain: train the recipe again (deterministically) and overwrite the cached file; the
            shipped file is never changed, and later calls without ``retrain`` return it.
        progress: show a progress bar while training.

    Returns:
        The model on CPU in eval mode, all parameters with ``requires_grad=True``.

    Raises:
        ValueError: unknown ``name``; a shipped file that does not match its recipe or its
            recorded weights (a damaged installation).
    """
    if name not in DEFAULT_RECIPES:
        raise ValueError(f"unknown default model {name!r}; known: {', '.join(DEFAULT_RECIPES)}")
    recipe = DEFAULT_RECIPES[name]
    shipped = shipped_path(name)
    if shipped.is_file() and not retrain:
        return _load_shipped(shipped, recipe).eval()
    path = default_cache_dir(cache_dir) / f"{name}-{recipe.digest()}.safetensors"
    if path.is_file() and not retrain:
        try:
            return load(path, build(recipe.arch)).eval()
        except Exception as e:  # a damaged cache file is replaced, never fatal
            warnings.warn(f"could not load cached model {path} ({e}); retraining", stacklevel=2)
    model, metadata = train_recipe(recipe, progress=progress)
    save(model, path, arch=recipe.arch, metadata=metadata)
    return model.eval()


def _load_shipped(path: Path, recipe: Recipe) -> nn.Module:
    """The shipped model at ``path``, checked against ``recipe`` and its recorded digest."""
    meta = read_metadata(path)["metadata"]
    if meta.get("recipe") != asdict(recipe):
        raise ValueError(f"the shipped default model {path} was trained with recipe {meta.get('recipe')}, not "
                         f"{asdict(recipe)}: reinstall manipex, or run scripts/make_default_models.py")
    model = load(path, build(recipe.arch))
    if state_digest(model) != meta.get("state_sha256"):
        raise ValueError(f"the shipped default model {path} is damaged: its weights do not match their recorded "
                         "digest; reinstall manipex")
    return model


def train_recipe(recipe: Recipe, *, progress: bool = False) -> tuple[nn.Module, dict]:
    """Train ``recipe`` from scratch; return the model (eval mode) and the metadata a default
    model's file records: the recipe, :func:`state_digest`, test accuracy, training time, torch
    version, CPU instruction set and whether MKL ran in its reproducible mode. The caller's global
    RNG and thread count are restored."""
    from manipex import data  # lazy: data is a heavier, independent subpackage

    x_train, y_train = data.load(recipe.dataset, split="train")
    x_test, y_test = data.load(recipe.dataset, split="test")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build(recipe.arch)
        training.train_classifier(model, x_train, y_train, epochs=recipe.epochs, lr=recipe.lr,
                                  batch_size=recipe.batch_size, seed=recipe.seed, progress=progress,
                                  deterministic=recipe.deterministic)
    seconds = time.perf_counter() - start
    model.eval()
    metadata = {
        "recipe": asdict(recipe),
        "state_sha256": state_digest(model),
        "test_accuracy": training.accuracy(model, x_test, y_test),
        "train_seconds": round(seconds, 2),
        "torch": torch.__version__,
        "cpu_capability": cpu_capability(),
        "blas_reproducible": blas_reproducible(),
    }
    return model, metadata
