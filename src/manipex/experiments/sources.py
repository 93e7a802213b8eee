"""The model and the data of an experiment or command, from what the user has.

**Data** (:class:`SourceConfig` keys ``dataset``, ``root``, ``split``, ``image_size``,
``labels``): the embedded MNIST-5k (default), MNIST / Fashion-MNIST IDX files, CIFAR-10 python
batches, or a class-per-folder image tree (e.g. the ImageNet validation set). Images are in
**pixel space**, [0, 1]: attacks clamp to it and their budget ε is in these units (8/255 is
0.031 on every dataset).

**Model** (keys ``weights``, ``arch``, ``num_classes``, ``normalize``):

* the default MNIST-5k model (no ``weights``, ``arch = "auto"``, ``dataset = "mnist5k"``);
* a checkpoint written by :func:`manipex.models.save`, which records its architecture;
* a zoo architecture (``manipex list`` names them) with a ``.safetensors`` or a torchvision-style
  ``.pth``/``.pt`` state_dict, read with ``weights_only=True`` (nothing pickled is executed);
* a Python factory ``arch = "package.module:function"`` returning an ``nn.Module`` (with
  ``weights`` loaded into it, or as it returns it). **Naming a factory imports and runs that
  code**: name only code you trust. It is imported only when named, from the current directory
  first (``mynet:build_net`` is ``./mynet.py``), then ``PYTHONPATH`` and the installed packages
  (:func:`import_factory`);
* no ``weights`` with a zoo architecture: trained here on the data for ``train_epochs``.

``normalize`` is the normalisation the weights expect; the model sees it as a
:class:`~manipex.models.Normalize` layer in front of it, so that attacks stay in pixel space.
``auto`` is ImageNet's for an image folder (torchvision's weights expect it) and none otherwise:
a model trained on :func:`manipex.data.load`'s [0, 1] images needs ``normalize = "none"``. The
normalisation in force is printed when a run starts and shown in its report
(:func:`normalization_text`).

**Image folders** are read by :func:`manipex.data.load_image_folder`, the function the Python
API uses, with ``image_size`` (an image already that size is kept as it is, others are resized
and center-cropped as torchvision's ImageNet evaluation) and, for a tree without ``val``/``test``
folders, ``holdout`` = the number of evaluated images and the run's ``seed``:
``manipex.data.load("image_folder", root=R, split="test", image_size=S, holdout=n, seed=seed)``
gives the images a run evaluates.

Every key is checked before any work (:meth:`SourceConfig.check`: files, folders, names,
the factory); the weights are checked against the architecture and the classes against the data
when the model is loaded, before any unit runs, with errors that name the key.
"""
from __future__ import annotations

import importlib
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .._validation import short
from .config import Config, ConfigError, key
from ..models import UnreadableWeightsError, architectures, with_normalization
from .. import models

IMAGE_DATASETS = ("mnist5k", "mnist", "fashion_mnist", "cifar10", "image_folder")
MNIST_LIKE = ("mnist5k", "mnist", "fashion_mnist")
NORMALIZATIONS: Dict[str, Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]] = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's ImageNet weights
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
#: a factory ``package.module:function`` (dotted module path, a function name)
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: the pixel range of every image loader, and the 8-bit scale in which budgets are also shown
PIXEL_RANGE = (0.0, 1.0)
PIXEL_LEVELS = 255


def _parse_normalize(text: str):
    """``auto``, a named normalisation, or ``"m1,m2,m3/s1,s2,s3"`` (per-channel mean / std)."""
    if text in NORMALIZATIONS or text == "auto":
        return text
    try:
        mean, std = (tuple(float(v) for v in part.split(",")) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"config key 'normalize': unknown value {short(text)}; choose from auto, "
                          f"{', '.join(NORMALIZATIONS)}, or per-channel 'mean/std' such as "
                          "'0.5,0.5,0.5/0.25,0.25,0.25'") from None
    if len(mean) != len(std) or not all(0 < s < math.inf for s in std) or not all(math.isfinite(m) for m in mean):
        raise ConfigError(f"config key 'normalize': {short(text)} needs as many finite means as positive finite stds")
    return mean, std


def _architecture_choices():
    return tuple(architectures())


def import_factory(spec: str):
    """The function named by ``package.module:function`` (imports that module: runs its code).

    The module is found as ``python -c "import package.module"`` run in the current directory
    would find it: the **current working directory first** (``mynet:build_net`` imports
    ``./mynet.py`` or ``./mynet/__init__.py``), then ``PYTHONPATH`` and the installed packages.
    The current directory is put in front of ``sys.path`` for the import only; ``sys.path`` is
    as it was afterwards (the imported module stays in ``sys.modules``, as after any import)."""
    module_name, function_name = spec.split(":")
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        importlib.invalidate_caches()  # a module written since the last import is found
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may fail in any way while it is imported
        raise ConfigError(f"config key 'arch': cannot import module {module_name!r} of factory {spec!r} (looked in "
                          f"the current directory {short(cwd, 120)}, then PYTHONPATH and the installed packages): "
                          f"{type(err).__name__}: {err}") from None
    finally:
        try:  # the entry put in front (the module's own code may have added others: they stay)
            sys.path.remove(cwd)
        except ValueError:  # the module removed it itself
            pass
    factory = getattr(module, function_name, None)
    if not callable(factory):
        where = short(getattr(module, "__file__", None) or "", 120)
        raise ConfigError(f"config key 'arch': module {module_name!r} ({where}) has no function {function_name!r}")
    return factory


@dataclass(frozen=True)
class SourceConfig(Config):
    """The model and data keys shared by every experiment on images and by ``manipex audit``."""

    dataset: str = key("mnist5k", "images: mnist5k is embedded; mnist and fashion_mnist are IDX files, cifar10 "
                       "python batches, image_folder class-per-folder images (e.g. ImageNet val) under root",
                       choices=IMAGE_DATASETS)
    root: str = key("", "folder of the dataset's files (every dataset but mnist5k)")
    split: str = key("test", "split whose images are attacked and evaluated (training uses train; image_folder: "
                     "root/test, else root/val; a folder without val/test subfolders is split by a seeded "
                     "permutation, as manipex.data.load(..., holdout=N, seed=seed))", choices=("test", "val", "train"))
    image_size: int = key(224, "image_folder: images of this size (square) are kept as they are; others are "
                          "resized (shorter side to size x 256/224, bilinear) and center-cropped to it, as "
                          "torchvision's ImageNet evaluation", ge=8, le=4096)
    channels: int = key(3, "image_folder: channels the model takes: 3 (RGB; grey images repeated) or 1 (grey; RGB "
                        "images as their luminance); every bit depth (8, 16 bits, float) is scaled to [0, 1]",
                        ge=1, le=3)
    labels: str = key("given", "labels for training and accuracy: given (the dataset's), or predicted (the model's "
                      "classes, e.g. for a subset of ImageNet's class folders)", choices=("given", "predicted"))
    weights: str = key("", "the model's weights: a .safetensors saved by manipex (records its architecture), or a "
                       ".safetensors/.pth/.pt state_dict for 'arch'; empty: the default model (mnist5k), the "
                       "factory's model, or one trained here")
    arch: str = key("auto", "zoo architecture (manipex list), or a factory package.module:function returning an "
                    "nn.Module (naming it runs that code; the module is looked up in the current directory first, "
                    "then PYTHONPATH and the installed packages); auto: the checkpoint's own, else mnist_cnn for "
                    "MNIST-like data and vgg16 for CIFAR-10 and image folders")
    num_classes: int = key(0, "the model's classes; 0: from the data (1000 for image_folder with predicted labels)",
                           ge=0, le=100_000)
    normalize: str = key("auto", "normalisation the weights expect, applied by a layer in front of the model "
                         "(printed when a run starts): auto (imagenet for an RGB image_folder, else none), none (the "
                         "model takes [0, 1] pixels, as manipex.data.load gives them), imagenet, cifar10, or "
                         "'mean/std' per channel such as '0.5,0.5,0.5/0.25,0.25,0.25'")
    train_epochs: int = key(3, "epochs to train a model here when no weights are given", ge=1, le=10_000)

    def check(self) -> None:
        super().check()
        if self.dataset != "mnist5k" and not self.root:
            raise ConfigError(f"config key 'root': dataset {self.dataset!r} needs the folder of its files")
        if self.channels == 2:
            raise ConfigError("config key 'channels': 1 (grey) or 3 (RGB), got 2")
        if self.channels != 3 and self.dataset != "image_folder":
            raise ConfigError(f"config key 'channels': only an image_folder is read with a chosen number of "
                              f"channels; dataset {self.dataset!r} has its own")
        if self.weights and Path(self.weights).suffix not in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
            raise ConfigError(f"config key 'weights': {self.weights!r} is neither .safetensors nor a "
                              ".pth/.pt state_dict")
        if self.arch != "auto":
            if ":" in self.arch:
                if not FACTORY.match(self.arch):
                    raise ConfigError(f"config key 'arch': {self.arch!r} is neither a zoo architecture nor a factory "
                                      "package.module:function")
            elif self.arch not in _architecture_choices():
                raise ConfigError(f"config key 'arch': unknown architecture {self.arch!r}; available: "
                                  f"{', '.join(_architecture_choices())}, or a factory package.module:function")
        if self.dataset == "image_folder" and not self.weights and ":" not in self.arch:
            raise ConfigError("config key 'weights': dataset 'image_folder' needs the model's weights (e.g. "
                              "torchvision's vgg16-397923af.pth) or a factory; training on an image folder is not "
                              "supported")
        norm = self.normalization()
        if norm is not None and len(norm[0]) not in (1, self.channels):
            raise ConfigError(f"config key 'normalize': {self.normalize!r} has {len(norm[0])} channels, the images "
                              f"{self.channels} (config key 'channels'); give one mean/std per channel, or none")

    def check_files(self) -> None:
        super().check_files()
        if self.root and not Path(self.root).expanduser().is_dir():
            raise ConfigError(f"config key 'root': {self.root!r} is not a folder")
        if self.weights and not Path(self.weights).expanduser().is_file():
            raise ConfigError(f"config key 'weights': {self.weights!r} does not exist")
        if ":" in self.arch:
            import_factory(self.arch)  # runs the module's code: only for a run, never for a report

    @property
    def trains_here(self) -> bool:
        """No weights, no factory, not the default model: the model is trained on the data."""
        return not self.weights and ":" not in self.arch and not self.is_default

    @property
    def default_model(self) -> Optional[str]:
        """The default model this config runs on (a key of ``models.DEFAULT_RECIPES``), or None:
        without ``weights`` on MNIST-5k, ``arch`` ``auto`` or ``mnist_cnn`` is the default CNN
        (``"mnist"``) and the architecture of another default recipe on that data
        (``vit_mnist``) is that default model, loaded with its shipped weights."""
        if self.weights or self.dataset != "mnist5k":
            return None
        if self.arch in ("auto", "mnist_cnn"):
            return "mnist"

        return next((name for name, recipe in models.DEFAULT_RECIPES.items()
                     if recipe.dataset == self.dataset and recipe.arch == self.arch), None)

    @property
    def is_default(self) -> bool:
        """The embedded data with a default model (:attr:`default_model`)."""
        return self.default_model is not None

    def auto_arch(self) -> str:
        """The zoo architecture ``arch = "auto"`` means for a model without a recorded one."""
        return "mnist_cnn" if self.dataset in MNIST_LIKE else "vgg16"

    def normalization(self):
        """``(mean, std)`` the weights expect, or None."""
        value = _parse_normalize(self.normalize)
        if value == "auto":  # ImageNet's statistics are of RGB images
            value = "imagenet" if self.dataset == "image_folder" and self.channels == 3 else "none"
        return NORMALIZATIONS[value] if isinstance(value, str) else value

    def normalization_name(self) -> Optional[str]:
        """The named normalisation in force (``auto`` resolved), or None for per-channel values."""
        value = _parse_normalize(self.normalize)
        if value == "auto":
            return "imagenet" if self.dataset == "image_folder" and self.channels == 3 else "none"
        return value if isinstance(value, str) else None

    def describe(self) -> str:
        """One line naming the model and data, for reports."""
        name = self.default_model if self.is_default else None
        model = (f"the default MNIST-5k model{'' if name in (None, 'mnist') else ' ' + name}" if self.is_default else
            f"{self.weights or 'a model trained here'} ({self.arch})")
        data = self.dataset + (f" at {self.root}" if self.root else "")
        return f"{model} on {data}, split {self.split}"


def _values(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def normalization_text(config: SourceConfig) -> str:
    """What is in front of the model, in one sentence (printed when a run starts, and in the
    report): ``inputs normalised with imagenet mean (0.485, 0.456, 0.406) / std (0.229, 0.224,
    0.225) in front of the model (normalize = auto: imagenet for image_folder; ...)`` or ``no
    normalisation in front of the model: it sees pixels in [0, 1] (normalize = none)``."""
    norm, name = config.normalization(), config.normalization_name()
    why = f"normalize = {config.normalize}" + (f": {name} for {config.dataset}" if config.normalize == "auto" else "")
    if norm is None:
        return f"no normalisation in front of the model: it sees pixels in [0, 1] ({why})"
    mean, std = norm
    if config.normalize == "auto":
        why += "; set normalize to none for a model that takes [0, 1] pixels"
    return (f"inputs normalised with {name + ' ' if name else ''}mean {_values(mean)} / std {_values(std)} in front "
            f"of the model ({why})")


@dataclass(frozen=True)
class ImageSource:
    """An experiment's model and images, loaded from a :class:`SourceConfig`.

    ``model`` takes pixel-space inputs (a :class:`~manipex.models.Normalize` in front where the
    weights expect normalised ones), in eval mode. ``train`` and ``test`` are ``(x, y)`` in
    [0, 1] with the configured labels; ``clamp`` is the pixel range that attacks keep to."""

    model: nn.Module
    train: Tuple[Tensor, Tensor]
    test: Tuple[Tensor, Tensor]
    num_classes: int
    clamp: Tuple[float, float] = PIXEL_RANGE


def load_images(config: SourceConfig, *, n_train: Optional[int], n_eval: int, seed: int = 0):
    """``((x_train, y_train), (x_eval, y_eval))`` in pixel space: at most ``n_train`` training
    images (None: all; 0: none, without reading them) and ``n_eval`` images of ``split``, read
    by :func:`manipex.data.load`. An image folder is read with ``image_size``; ``split`` is
    ``root/<split>``, else (for ``test``/``val``) the other one of the two; a folder without
    ``val``/``test`` subfolders is split by :func:`manipex.data.load_image_folder`'s
    ``holdout``: ``n_eval`` images held out by a permutation seeded with ``seed`` for
    evaluation, the rest for training."""
    from .. import data  # deferred: the data loaders import PIL and numpy

    dataset, root = config.dataset, Path(config.root).expanduser() if config.root else None

    def load(split):
        kwargs = {} if dataset == "mnist5k" else {"root": root}
        if dataset == "image_folder":
            kwargs.update(image_size=config.image_size, holdout=n_eval, seed=seed, channels=config.channels)
        try:
            return data.load(dataset, split=split, **kwargs)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"config key 'split' ({split!r}) of dataset {dataset!r}: {err}") from None

    held_out = config.split
    if dataset == "image_folder":
        other = {"test": "val", "val": "test"}.get(held_out)
        if other and not (root / held_out).is_dir() and (root / other).is_dir():
            held_out = other
    elif held_out == "val":
        raise ConfigError(f"config key 'split': dataset {dataset!r} has the splits train and test")
    test = load(held_out)
    train = load("train") if n_train != 0 else (test[0][:0], test[1][:0])
    train = (train[0][:n_train], train[1][:n_train])
    test = (test[0][:n_eval], test[1][:n_eval])
    if n_train != 0 and len(train[0]) == 0 and config.trains_here:
        raise ConfigError(f"dataset {dataset!r} at {str(root)!r}: no images left to train a model on")
    if len(test[0]) == 0:
        raise ConfigError(f"dataset {dataset!r} at {str(root)!r}: no images in split {config.split!r} to evaluate")
    return train, test


def zoo_arch(config: SourceConfig, num_classes: int) -> Tuple[str, Dict]:
    name = config.auto_arch() if config.arch == "auto" else config.arch
    kwargs: Dict = {"num_classes": num_classes}
    if name.startswith("vgg16"):
        kwargs["input_size"] = 224 if config.dataset == "image_folder" else 32
    return name, kwargs


def build_model(config: SourceConfig, num_classes: int) -> nn.Module:
    """A fresh model of the configured architecture (zoo or factory), not normalised."""
    if ":" in config.arch:
        try:
            model = import_factory(config.arch)()
        except ConfigError:
            raise
        except Exception as err:  # the user's code may fail in any way
            raise ConfigError(f"config key 'arch': factory {config.arch!r} failed: {type(err).__name__}: "
                              f"{err}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"config key 'arch': factory {config.arch!r} returned an object of type "
                              f"{type(model).__name__}, not an nn.Module")
        return model
    name, kwargs = zoo_arch(config, num_classes)
    return models.build(name, **kwargs)


def _classes(config: SourceConfig, y: Tensor) -> int:
    if config.num_classes:
        return config.num_classes
    if config.dataset == "image_folder" and config.labels == "predicted":
        return 1000
    return max(10 if config.dataset != "image_folder" else 0, int(y.max()) + 1 if len(y) else 0)


def original_model(config: SourceConfig, train: Tuple[Tensor, Tensor], device: str,
                   cache: Optional[Path] = None, seed: int = 0, labels: Optional[Tensor] = None,
                   prepare: Optional[Callable[[nn.Module], nn.Module]] = None) -> nn.Module:
    """The configured model in eval mode on ``device``, without its input normalisation: the
    default MNIST-5k model, loaded from ``weights``, the factory's, or trained on ``train`` for
    ``train_epochs`` (seeded) and kept in ``cache`` (a ``.safetensors`` path) so that a resumed
    or sharded run trains it once. ``labels`` (default: ``train``'s) give the number of classes
    where ``num_classes`` is 0. ``prepare`` rewrites the model before it is trained here, and
    after it is loaded (e.g. Tang's softplus models: the cache holds the weights)."""
    def ready(model: nn.Module) -> nn.Module:
        return (prepare(model) if prepare is not None else model).to(device).eval()

    if config.is_default:
        return ready(models.load_default(config.default_model or "mnist", progress=False))
    num_classes = _classes(config, train[1] if labels is None else labels)
    if config.weights:
        path = Path(config.weights).expanduser()
        try:
            if path.suffix == ".safetensors" and config.arch == "auto" and models.read_metadata(path)["arch"]:
                model = models.load(path)
            else:
                model = models.load(path, build_model(config, num_classes))
        except ConfigError:  # the factory's own (it fails, or returns no nn.Module)
            raise
        except UnreadableWeightsError as err:  # the file itself, before any architecture: it names itself
            raise ConfigError(f"config key 'weights': {err}") from None
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"config key 'weights': {config.weights!r} does not fit architecture "
                              f"{config.arch!r}: {err}") from None
        return ready(model)
    if ":" in config.arch:
        return ready(build_model(config, num_classes))
    if cache is not None and cache.exists():
        return ready(models.load(cache))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config, num_classes)
        model = (prepare(model) if prepare is not None else model).to(device)
    norm = config.normalization()
    trained = normalized(model, norm)
    models.train_classifier(trained, train[0].to(device), train[1].to(device), epochs=config.train_epochs,
                            seed=seed, progress=False)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        models.save(model, cache, metadata={"trained_by": "manipex experiment", "epochs": config.train_epochs})
    return model.eval()


def normalized(model: nn.Module, norm) -> nn.Module:
    return model if norm is None else with_normalization(model, *norm)


def load_source(config: SourceConfig, device: str, *, n_train: Optional[int], n_eval: int, seed: int = 0,
                cache: Optional[Path] = None,
                prepare: Optional[Callable[[nn.Module], nn.Module]] = None) -> ImageSource:
    """Data and model of ``config``, checked against each other (``num_classes``, ``labels``);
    ``prepare``: see :func:`original_model`."""
    train, test = load_images(config, n_train=n_train, n_eval=n_eval, seed=seed)
    labels = torch.cat([train[1], test[1]])
    model = normalized(original_model(config, train, device, cache=cache, seed=seed, labels=labels, prepare=prepare),
                        config.normalization())
    model.eval()
    try:
        with torch.no_grad():  # labels and a shape check only
            outputs = model(test[0][:1].to(device)).shape[-1]
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"config key 'arch': the model does not take the images of {config.dataset!r} "
                          f"(shape {tuple(test[0].shape[1:])}): {err}") from None
    if config.num_classes and outputs != config.num_classes:
        raise ConfigError(f"config key 'num_classes': the model has {outputs} outputs, not {config.num_classes}")
    splits = []
    for x, y in (train, test):
        x, y = x.to(device), y.to(device)
        if config.labels == "predicted":
            with torch.no_grad():  # labels only
                y = torch.cat([model(b).argmax(1) for b in x.split(256)]) if len(x) else y
        elif len(y) and int(y.max()) >= outputs:
            raise ConfigError(f"config key 'labels': the dataset has label {int(y.max())} but the model has "
                              f"{outputs} outputs; use labels = \"predicted\" or a model for these classes")
        splits.append((x, y))
    return ImageSource(model=model, train=splits[0], test=splits[1], num_classes=outputs)


def eps_text(eps: float) -> str:
    """A budget in both units: ``0.0314 (8/255)``."""
    levels = eps * PIXEL_LEVELS
    return f"{eps:.4g} ({levels:.3g}/{PIXEL_LEVELS})"


def require_model(config: SourceConfig, purpose: str) -> None:
    """Refuse a run that would ``purpose`` (e.g. "audit") a user's data without the user's model:
    only the embedded MNIST-5k data has a default model."""
    if not config.weights and ":" not in config.arch and config.dataset != "mnist5k":
        raise ConfigError(f"config key 'weights': the model to {purpose} (a .safetensors saved by manipex, or a .pth "
                          f"for 'arch'); without it, the default MNIST-5k model is used on MNIST-5k")
