"""Images and the original model of an experiment: the embedded MNIST-5k default, or the files a
user points to (MNIST/Fashion-MNIST IDX files, CIFAR-10 batches, an image folder such as the
ImageNet validation set) with weights in manipex's safetensors or torchvision's ``.pth`` format.

Experiments that can run on other data add :data:`SOURCE_FIELDS` to their schema, call
:func:`check_sources` from :meth:`Experiment.check` (so a wrong path fails before any work) and
:func:`load_images` / :func:`original_model` from their setup.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..data._common import normalize_channels
from .config import ConfigError, Field

IMAGE_DATASETS = ("mnist5k", "mnist", "fashion_mnist", "cifar10", "image_folder")
NORMALIZATIONS: Dict[str, Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]] = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's ImageNet weights
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def _architectures() -> Tuple[str, ...]:
    from ..models import architectures

    return ("auto",) + tuple(architectures())


SOURCE_FIELDS = {
    "dataset": Field("str", "mnist5k", "images: mnist5k is embedded; mnist and fashion_mnist are IDX files, cifar10 "
                     "python batches, image_folder class-per-folder images (e.g. ImageNet val) under root",
                     IMAGE_DATASETS),
    "root": Field("str", "", "folder of the dataset's files (every dataset but mnist5k)"),
    "image_size": Field("int", 224, "image_folder: images are resized (shorter side x 256/224) and center-cropped "
                        "to this size"),
    "normalize": Field("str", "auto", "per-channel normalisation the weights expect; auto: imagenet for "
                       "image_folder, none otherwise", ("auto",) + tuple(NORMALIZATIONS)),
    "weights": Field("str", "", "the original model: a .safetensors saved by manipex, or a torchvision-format "
                     ".pth state_dict for 'arch'; empty: the default model (mnist5k) or one trained here"),
    "arch": Field("str", "auto", "architecture of a .pth or of the model trained here; auto: mnist_cnn for "
                  "MNIST-like data, vgg16 for CIFAR-10 (32x32 head) and image folders (ImageNet head)",
                  _architectures()),
    "train_epochs": Field("int", 3, "epochs to train the original model when no weights are given"),
    "labels": Field("str", "dataset", "labels for fine-tuning and accuracy: dataset, or predicted (the original "
                    "model's classes, e.g. for a subset of ImageNet's class folders)", ("dataset", "predicted")),
}


def check_sources(config: Dict[str, Any]) -> None:
    """Fail before any work when the dataset's folder or the weights are missing."""
    dataset, root, weights = config["dataset"], config["root"], config["weights"]
    if dataset != "mnist5k" and not root:
        raise ConfigError(f"config key 'root': dataset {dataset!r} needs the folder of its files")
    if root and not Path(root).expanduser().is_dir():
        raise ConfigError(f"config key 'root': {root!r} is not a folder")
    if weights and not Path(weights).expanduser().is_file():
        raise ConfigError(f"config key 'weights': {weights!r} does not exist")
    if config["image_size"] < 1:
        raise ConfigError(f"config key 'image_size' must be a positive number of pixels, got {config['image_size']}")
    if dataset == "image_folder" and not weights:
        raise ConfigError("config key 'weights': dataset 'image_folder' needs the original model's weights "
                          "(e.g. torchvision's vgg16-397923af.pth); training on an image folder is not supported")


def require_model(config: Dict[str, Any], purpose: str) -> None:
    """Refuse a run that would ``purpose`` (e.g. "audit") a user's data without the user's model:
    only the embedded MNIST-5k data has a default model."""
    if not config["weights"] and config["dataset"] != "mnist5k":
        raise ConfigError(f"config key 'weights': the model to {purpose} (a .safetensors saved by manipex, or a .pth "
                          f"for 'arch'); without it, the default MNIST-5k model is used on MNIST-5k")


def _normalization(config: Dict[str, Any]):
    name = config["normalize"]
    if name == "auto":
        name = "imagenet" if config["dataset"] == "image_folder" else "none"
    return NORMALIZATIONS[name]


def _normalize(x: Tensor, norm) -> Tensor:
    if norm is None:
        return x
    if x.shape[1] != len(norm[0]):
        raise ConfigError(f"config key 'normalize': {len(norm[0])} channel values for images with {x.shape[1]} channels")
    return normalize_channels(x, *norm)


def load_images(config: Dict[str, Any], *, n_train: int, n_eval: int, seed: int = 0):
    """``((x_train, y_train), (x_eval, y_eval))`` of the configured dataset, normalised, at most
    ``n_train`` (0: all) and ``n_eval`` images. An image folder without ``train``/``val``/``test``
    subfolders is split by a seeded permutation: the first ``n_eval`` images for evaluation."""
    from .. import data

    dataset, root = config["dataset"], Path(config["root"]).expanduser() if config["root"] else None
    if dataset == "mnist5k":
        train, test = data.load("mnist5k", split="train"), data.load("mnist5k", split="test")
    elif dataset == "image_folder":
        size = {"root": root, "size": round(config["image_size"] * 256 / 224), "crop": config["image_size"]}
        if (root / "train").is_dir() and any((root / s).is_dir() for s in ("val", "test")):
            held_out = "val" if (root / "val").is_dir() else "test"
            train, test = data.load(dataset, split="train", **size), data.load(dataset, split=held_out, **size)
        else:
            x, y = data.load(dataset, split="all", **size)
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
            test, train = (x[order[:n_eval]], y[order[:n_eval]]), (x[order[n_eval:]], y[order[n_eval:]])
    else:
        train, test = data.load(dataset, split="train", root=root), data.load(dataset, split="test", root=root)
    norm = _normalization(config)
    train = (_normalize(train[0][: n_train or None], norm), train[1][: n_train or None])
    test = (_normalize(test[0][:n_eval], norm), test[1][:n_eval])
    if len(train[0]) == 0 or len(test[0]) == 0:
        raise ConfigError(f"dataset {dataset!r} at {str(root)!r}: no images left for fine-tuning or evaluation")
    return train, test


def _arch(config: Dict[str, Any], num_classes: int) -> Tuple[str, Dict[str, Any]]:
    name = config["arch"]
    if name == "auto":
        name = "mnist_cnn" if config["dataset"] in ("mnist5k", "mnist", "fashion_mnist") else "vgg16"
    kwargs: Dict[str, Any] = {"num_classes": num_classes}
    if name.startswith("vgg16"):
        kwargs["input_size"] = 224 if config["dataset"] == "image_folder" else 32
    return name, kwargs


def original_model(config: Dict[str, Any], train: Tuple[Tensor, Tensor], device: str,
                   cache: Optional[Path] = None) -> nn.Module:
    """The original model F_acc in eval mode on ``device``: loaded from ``weights``, the default
    MNIST-5k model, or trained on ``train`` for ``train_epochs`` (seeded) and kept in ``cache``
    (a ``.safetensors`` path) so that a resumed or sharded run trains it once."""
    from .. import models

    weights = config["weights"]
    if not weights and config["dataset"] == "mnist5k" and config["arch"] in ("auto", "mnist_cnn"):
        return models.load_default("mnist", progress=False).to(device).eval()
    if weights and weights.endswith(".safetensors"):
        return models.load(Path(weights).expanduser()).to(device).eval()
    num_classes = 1000 if config["dataset"] == "image_folder" and config["labels"] == "predicted" else None
    if num_classes is None:
        num_classes = 10 if config["dataset"] != "image_folder" else int(train[1].max()) + 1
    name, kwargs = _arch(config, num_classes)
    if weights:
        return models.load(Path(weights).expanduser(), models.build(name, **kwargs)).to(device).eval()
    if cache is not None and cache.exists():
        return models.load(cache).to(device).eval()
    torch.manual_seed(config.get("seed", 0))
    model = models.build(name, **kwargs).to(device)
    models.train_classifier(model, train[0].to(device), train[1].to(device), epochs=config["train_epochs"],
                            seed=config.get("seed", 0), progress=False)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        models.save(model, cache, metadata={"trained_by": "manipex experiment", "epochs": config["train_epochs"]})
    return model.eval()


def apply_labels(config: Dict[str, Any], model: nn.Module, *splits: Tuple[Tensor, Tensor]):
    """The splits with ``labels = "predicted"`` applied, after checking that the dataset's labels
    fit the model's outputs (``labels = "dataset"``)."""
    out = []
    for x, y in splits:
        with torch.no_grad():  # labels only
            pred = torch.cat([model(b).argmax(1) for b in x.split(256)])
            classes = model(x[:1]).shape[1]
        if config["labels"] == "predicted":
            y = pred.to(y.device)
        elif int(y.max()) >= classes:
            raise ConfigError(f"config key 'labels': the dataset has label {int(y.max())} but the model has {classes} "
                              "outputs; use labels = \"predicted\" or a model for these classes")
        out.append((x, y))
    return out
