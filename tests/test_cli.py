"""The README's main command, at a small size."""
from __future__ import annotations

from pathlib import Path

import pytest

import manipex
from manipex.cli import main


def test_explain_writes_a_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["explain", "--n", "2", "--out", str(tmp_path / "out"), "--quiet",
                 "--methods", "gradient", "lrp", "pattern_attribution"]) == 0
    out = capsys.readouterr().out
    path = Path(out.strip().split("wrote ")[-1])
    assert path.exists() and path.stat().st_size > 1000


@pytest.mark.parametrize("arch,rollout", [("auto", False), ("vit_mnist", True)])
def test_explain_without_methods_shows_every_method_that_applies(tmp_path, capsys, arch, rollout):
    """The README's `manipex explain`: every method on the default CNN (attention rollout needs
    a transformer and is left out there), and every method, rollout too, on the default ViT."""
    assert main(["explain", "--n", "2", "--arch", arch, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert ("attention_rollout" in out) == rollout
    assert all(m in out for m in manipex.methods() if m != "attention_rollout")
    assert Path(out.strip().split("wrote ")[-1]).stat().st_size > 1000


def test_explain_rejects_unknown_method(capsys):
    assert main(["explain", "--methods", "saliency"]) == 2
    assert "unknown method 'saliency'" in capsys.readouterr().err


def test_methods_lists_all(capsys):
    main(["methods"])
    assert "integrated_gradients" in capsys.readouterr().out


def test_explain_takes_a_users_model_and_image_folder(tmp_path, capsys):
    """A CIFAR ResNet saved by manipex on class folders of images (ImageNet normalisation)."""
    import numpy as np
    from PIL import Image

    from manipex import models

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "val" / c / f"{i}.png")
    path = models.save(models.cifar_resnet(depth=8, width=4), tmp_path / "net.safetensors")
    assert main(["explain", str(path), "--data", "image_folder", "--root", str(tmp_path / "val"), "--image-size",
                 "32", "--n", "2", "--methods", "gradient", "lrp", "guided_backprop", "--out", str(tmp_path / "out"),
                 "--quiet"]) == 0
    assert Path(capsys.readouterr().out.strip().split("wrote ")[-1]).stat().st_size > 1000
    assert main(["explain", "--data", "cifar10", "--root", str(tmp_path)]) == 2
    assert "config key 'weights'" in capsys.readouterr().err
