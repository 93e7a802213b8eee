"""One preprocessing for the CLI and Python: sizes, splits, normalisation (issue 31)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import manipex
from conftest import write_image_folder
from manipex.data.image_folder import held_out_order
from manipex.experiments.sources import load_images, load_source


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = manipex.models.cifar_resnet(depth=8, num_classes=3, width=4)
    return str(manipex.models.save(model, tmp_path_factory.mktemp("model") / "resnet.safetensors"))


def cli_config(*flags):
    """The config ``manipex run quick FLAGS`` runs with, built as the CLI builds it."""
    from manipex.cli import _run_parser, config_flags
    from manipex.experiments.runner import experiment_named, load_config

    args = _run_parser(experiment_named("quick")).parse_args([str(f) for f in flags])
    return load_config("quick", None, config_flags(args))[1]


def pixels(path):
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()).float() / 255


@pytest.mark.parametrize("layout", ["flat", "train_test"])
def test_the_cli_reads_an_image_folder_as_data_load_does(layout, tmp_path, weights):
    root = tmp_path / "images"
    if layout == "flat":
        write_image_folder(root, per_class=6)
    else:
        write_image_folder(root / "train", per_class=4, seed=1)
        write_image_folder(root / "test", per_class=3, seed=2)
    config = cli_config("--dataset", "image_folder", "--root", root, "--image-size", 32, "--split", "test",
                        "--weights", weights, "--n", 3, "--seed", 5)
    n_eval = 2 * config.n  # what quick evaluates: n attacked images and n targets
    train, test = load_images(config, n_train=None, n_eval=n_eval, seed=config.seed)
    # a folder without val/test is split by the same seeded permutation in Python: holdout = n_eval
    split = {"holdout": n_eval, "seed": 5} if layout == "flat" else {}
    x, y = manipex.data.load("image_folder", root=root, split="test", image_size=32, **split)
    x_train, y_train = manipex.data.load("image_folder", root=root, split="train", image_size=32, **split)
    if layout == "train_test":  # a run evaluates the first n_eval images of root/test
        assert len(x) == 9
        x, y = x[:n_eval], y[:n_eval]
    assert test[0].shape == (6, 3, 32, 32) and torch.equal(test[0], x) and torch.equal(test[1], y)
    assert torch.equal(train[0], x_train) and torch.equal(train[1], y_train)
    assert len(x_train) == (18 - 6 if layout == "flat" else 12)
    source = load_source(config, "cpu", n_train=0, n_eval=n_eval, seed=config.seed)  # what a run gets
    assert torch.equal(source.test[0], x) and torch.equal(source.test[1], y)
    if layout == "flat":  # held out and training images are disjoint; the split is refused without holdout
        assert not any(torch.equal(a, b) for a in x for b in x_train)
        with pytest.raises(FileNotFoundError, match="holdout"):
            manipex.data.load("image_folder", root=root, split="test", image_size=32)


def test_images_of_the_requested_size_are_not_resampled(tmp_path, weights):
    root = tmp_path / "images"
    write_image_folder(root, per_class=3, size=(32, 32))
    files = sorted(root.glob("*/*.png"))  # class by class, names sorted: the loader's order
    expected = torch.stack([pixels(f) for f in files])
    x, _ = manipex.data.load("image_folder", root=root, split="all", image_size=32)
    assert torch.equal(x, expected)
    config = cli_config("--dataset", "image_folder", "--root", root, "--image-size", 32, "--weights", weights,
                        "--n", 2)
    _, (x_eval, _) = load_images(config, n_train=0, n_eval=4, seed=config.seed)
    assert torch.equal(x_eval, expected[held_out_order(len(files), config.seed)[:4]])
    # other sizes follow torchvision's ImageNet evaluation: shorter side to 32 * 256 / 224, center crop
    x_16, _ = manipex.data.load("image_folder", root=root, split="all", image_size=16)
    assert torch.equal(x_16, manipex.data.load("image_folder", root=root, split="all", size=18, crop=16)[0])
    big = tmp_path / "big"
    write_image_folder(big, classes=("a",), per_class=1, size=(224, 224))
    assert torch.equal(manipex.data.load("image_folder", root=big)[0][0], pixels(big / "a" / "0.png"))
    with pytest.raises(ValueError, match="not both"):
        manipex.data.load("image_folder", root=root, image_size=32, crop=30)


@pytest.mark.parametrize("normalize, said", [
    ("auto", "inputs normalised with imagenet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225) in front of "
             "the model (normalize = auto: imagenet for image_folder"),
    ("none", "no normalisation in front of the model: it sees pixels in [0, 1] (normalize = none)"),
])
def test_the_normalisation_in_force_is_printed_and_in_the_report(normalize, said, tmp_path, weights, capsys):
    root = tmp_path / "images"
    write_image_folder(root, per_class=2, size=(32, 32))
    overrides = {"dataset": "image_folder", "root": str(root), "image_size": 32, "weights": weights,
                 "normalize": normalize, "n": 1, "batch": 1, "steps": 1, "methods": ["gradient"], "defenses": ["none"]}
    manipex.experiments.run("quick", overrides=overrides, out=tmp_path / "runs", quiet=True)
    err = capsys.readouterr().err
    assert f"manipex run quick: {said}" in err
    page = (tmp_path / "runs" / "quick" / "report.html").read_text(encoding="utf-8")
    assert "<b>Inputs:</b> " + said in page
