"""Issue 26, second round: models and inputs manipex cannot work with get one named error
through every entry point (TorchScript, the meta device, sparse inputs, a forward under no_grad,
a target beyond int64), with the model and the input byte-identical afterwards; Grad-CAM reads the
layer's own output even when an in-place ReLU follows; damaged weights files are named."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import manipex
from conftest import assert_same_state, state_of
from manipex.attacks import manipulate_input
from manipex.evaluation import max_sensitivity
from manipex.objectives import TargetImage


def cnn(inplace: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(4 * 26 * 26, 3)).eval()


class NoGradForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 3)

    def forward(self, x):
        with torch.no_grad():
            return self.linear(x.flatten(1))


#: entry points: a map (a gradient and a propagation method), an attack, a robustness metric
ENTRIES = {
    "gradient": lambda m, x, **kw: manipex.explain(m, x, "gradient", **kw),
    "lrp": lambda m, x, **kw: manipex.explain(m, x, "lrp", **kw),
    "attack": lambda m, x, **kw: manipulate_input(m, x, TargetImage(torch.rand(2, 1, 28, 28)), "gradient", steps=2,
                                                  progress=False, **kw),
    "max_sensitivity": lambda m, x, **kw: max_sensitivity(m, x, "gradient", samples=2, **kw),
}

CASES = {
    "torchscript": (lambda: torch.jit.script(cnn()), lambda: torch.rand(2, 1, 28, 28), {}, TypeError,
                    "TorchScript module .* pass the nn.Module the script was made from"),
    "meta model": (lambda: cnn().to("meta"), lambda: torch.rand(2, 1, 28, 28), {}, ValueError,
                   "'0.weight' is on the meta device"),
    "meta input": (cnn, lambda: torch.rand(2, 1, 28, 28, device="meta"), {}, ValueError, "x is on the meta device"),
    "sparse input": (cnn, lambda: torch.rand(2, 1, 28, 28).to_sparse(), {}, TypeError,
                     "x must be a dense tensor, got layout torch.sparse_coo"),
}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_models_and_inputs_manipex_cannot_use_get_one_named_error(case, entry):
    make_model, make_x, kwargs, error, message = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's own deprecation note
        model = make_model()
    x = make_x()
    before = state_of(model) if case != "meta model" else None
    x_before = x.clone() if not x.is_meta else None
    with pytest.raises(error, match=message) as info:
        ENTRIES[entry](model, x, **kwargs)
    assert len(str(info.value)) < 400
    if before is not None:
        assert_same_state(before, state_of(model))
    if x_before is not None:
        assert torch.equal(x.to_dense() if x.layout != torch.strided else x,
                           x_before.to_dense() if x_before.layout != torch.strided else x_before)


@pytest.mark.parametrize("entry", ["gradient", "attack"])
def test_a_forward_under_no_grad_is_named(entry):
    model, x = NoGradForward().eval(), torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="output does not depend on x through autograd: its forward runs under "
                                         r"torch.no_grad\(\)"):
        ENTRIES[entry](model, x)


def test_a_target_beyond_int64_is_named():
    with pytest.raises(ValueError, match="target 1180591620717411303424 is not a class index"):
        manipex.explain(cnn(), torch.rand(2, 1, 28, 28), "gradient", target=2 ** 70)


def test_grad_cam_reads_the_layer_output_even_when_an_in_place_relu_follows():
    """The hook hands the rest of the forward a copy, so ReLU(inplace=True) does not rectify the
    activation the CAM is made of: the same map as the net with an out-of-place ReLU."""
    x = torch.rand(4, 1, 28, 28)
    inplace, plain = cnn(inplace=True), cnn()
    for layer in ("0", None):
        a = manipex.explain(inplace, x, "gradcam", layer=layer)
        b = manipex.explain(plain, x, "gradcam", layer=layer)
        assert a.abs().max() > 0 and torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("kind", ["empty", "cut", "garbage"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_damaged_weights_files_are_named(tmp_path, kind, suffix):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 3))
    good = tmp_path / f"good{suffix}"
    if suffix == ".pt":
        torch.save(model.state_dict(), good)
    else:
        manipex.models.save(model, good)
    data = {"empty": b"", "cut": good.read_bytes()[:len(good.read_bytes()) // 2], "garbage": b"\xff" * 64}[kind]
    path = tmp_path / f"{kind}{suffix}"
    path.write_bytes(data)
    before = state_of(model)
    with pytest.raises(ValueError, match=f"{kind}{suffix}: (the weights file is empty|not a readable|refused)") as info:
        manipex.models.load(path, model)
    assert len(str(info.value)) < 400
    assert_same_state(before, state_of(model))
    if suffix == ".safetensors":
        with pytest.raises(ValueError, match=f"{kind}{suffix}"):
            manipex.models.load(path)


# --- images: every bit depth, grey kept, damaged and oversized files named ----------------------


def _png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def image_tree(tmp_path):
    """Two classes of 16x16 images: a 16-bit grey PNG and a float TIFF in [0, 1] (class a), an
    8-bit RGB PNG and an 8-bit grey PNG (class b); each a ramp from 0 to its full scale."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    ramp = np.linspace(0.0, 1.0, 256).reshape(16, 16)
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(root / "a" / "deep.png")
    Image.fromarray(ramp.astype(np.float32), mode="F").save(root / "a" / "float.tiff")
    rgb = np.stack([ramp, ramp[::-1], ramp.T], -1)
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(root / "b" / "rgb.png")
    Image.fromarray((ramp * 255).round().astype(np.uint8)).save(root / "b" / "grey.png")
    return root, ramp


def test_every_bit_depth_is_scaled_to_the_unit_range_and_grey_stays_grey(image_tree):
    root, ramp = image_tree
    x, y = manipex.data.load("image_folder", root=root, split="all", image_size=16)
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    expected = torch.tensor(ramp, dtype=torch.float32)
    for i in (0, 1):  # 16-bit and float: the ramp itself, not saturated, not black
        assert torch.allclose(x[i, 0], expected, atol=1e-4) and torch.equal(x[i, 0], x[i, 2])
    assert torch.allclose(x[2, 0], expected, atol=1 / 255)  # the 8-bit grey (files sorted: grey, rgb), as before
    grey, _ = manipex.data.load("image_folder", root=root, split="all", image_size=16, channels=1)
    assert grey.shape == (4, 1, 16, 16) and torch.equal(grey[0, 0], x[0, 0]) and torch.equal(grey[2, 0], x[2, 0])
    luminance = 0.299 * x[3, 0] + 0.587 * x[3, 1] + 0.114 * x[3, 2]  # ITU-R 601-2, as Pillow's L
    assert torch.allclose(grey[3, 0], luminance, atol=1.5 / 255)
    with pytest.raises(ValueError, match="channels must be 1 \\(grey\\) or 3 \\(RGB\\), got 2"):
        manipex.data.load("image_folder", root=root, split="all", image_size=16, channels=2)


@pytest.mark.parametrize("content,message", [
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "broken.png: not a readable image"),
    (_png_claiming(30000, 30000), "broken.png: the image is too large to read safely"),
])
def test_damaged_and_oversized_images_are_named(image_tree, content, message):
    root, _ = image_tree
    (root / "b" / "broken.png").write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        manipex.data.load("image_folder", root=root, split="all", image_size=16)
    assert len(str(info.value)) < 400


def test_a_grey_image_folder_runs_with_one_channel_and_its_normalisation_is_checked(image_tree):
    from manipex.experiments.config import ConfigError
    from manipex.experiments.sources import SourceConfig

    root, _ = image_tree
    config = SourceConfig.resolve({"dataset": "image_folder", "root": str(root), "channels": 1, "arch": "mnist_cnn",
                                   "weights": "grey_cnn.safetensors"}, files=False)
    assert config.normalization() is None  # auto: ImageNet's statistics are RGB ones
    with pytest.raises(ConfigError, match="'normalize': 'imagenet' has 3 channels, the images 1"):
        SourceConfig.resolve({"dataset": "image_folder", "root": str(root), "channels": 1, "normalize": "imagenet",
                              "weights": "grey_cnn.safetensors"}, files=False)
    with pytest.raises(ConfigError, match="only an image_folder is read with a chosen number of channels"):
        SourceConfig.resolve({"channels": 1})


# --- the command line: one-line usage errors, devices named ------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["run", "quick", "--bogus"], r"manipex run quick: error: unrecognized arguments: --bogus \(the flags: manipex "
                                  r"run quick --help\)"),
    (["--nope"], "manipex: error:"),
    (["audit", "--bogus"], r"manipex audit: error: unrecognized arguments: --bogus \(the flags: manipex audit --help\)"),
    (["report", "folder", "--bogus"], r"manipex report: error: unrecognized arguments: --bogus"),
    (["run", "quick", "--device", "mps"], "--device 'mps': manipex runs on cpu or cuda .* device type 'mps' is not "
                                          "supported"),
    (["run", "quick", "--device", "meta"], "the meta device holds no values"),
])
def test_command_line_errors_are_one_line(argv, message, capsys, tmp_path):
    from manipex.cli import main

    try:
        code = main(argv + (["--out", str(tmp_path)] if argv[0] == "run" and "--device" in argv else []))
    except SystemExit as exit_:  # argparse's own exit
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    import re

    assert re.search(message, err), err


def test_a_damaged_maps_file_is_named_and_the_report_still_renders(tmp_path):
    """An empty or damaged saved-maps file (the examples a figure shows) is named in a warning
    and left out of the figure; the report of the run is still written."""
    from manipex.experiments import run
    from manipex.experiments.report import report_from_folder

    run("dombrowski2019", overrides={"n": 2, "batch": 2, "steps": 3, "methods": ["gradient"],
                                     "beta_methods": ["gradient"], "betas": [1.0], "budgets": [0.5]},
        out=tmp_path, quiet=True)
    folder = tmp_path / "dombrowski2019"
    saved = sorted(folder.rglob("maps/**/*.safetensors"))
    assert saved
    saved[0].write_bytes(b"")
    with pytest.warns(UserWarning, match=f"{saved[0].name}: the saved maps cannot be read"):
        page = report_from_folder(folder)
    assert "<table" in page.read_text()


def test_a_zip_bomb_posing_as_weights_is_refused_before_it_unpacks(tmp_path):
    import zipfile

    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x00" * (300 << 20))  # 300 MB of zeros in a few hundred KB
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 3))
    before = state_of(model)
    with pytest.raises(ValueError, match=r"bomb.pt: its archive unpacks to 0.3 GB from 0.\d MB \(a zip bomb\?\)"):
        manipex.models.load(path, model)
    assert_same_state(before, state_of(model))
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    manipex.models.load(good, model)  # a real checkpoint unpacks to its own size


@pytest.mark.parametrize("kind", ["empty", "cut", "pickled code"])
@pytest.mark.parametrize("entry", ["explain", "audit", "audit --reference"])
def test_unreadable_weights_are_named_on_the_command_line_without_blaming_the_architecture(tmp_path, capsys, kind,
                                                                                             entry):
    """``manipex explain``, ``manipex audit`` and an audit's reference: one line, exit code 2,
    the file and what is wrong with it (not "does not fit architecture"); nothing executed."""
    import os

    from manipex.cli import main

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "weights.pt"
    if kind == "pickled code":
        torch.save({"w": Payload()}, path)
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 3))
        torch.save(model.state_dict(), path)
        path.write_bytes(b"" if kind == "empty" else path.read_bytes()[:40])
    before = path.read_bytes()
    argv = {"explain": ["explain", str(path), "--arch", "mnist_cnn", "--out", str(tmp_path / "m.png")],
            "audit": ["audit", str(path), "--arch", "mnist_cnn", "--out", str(tmp_path / "a"), "--quiet"],
            "audit --reference": ["audit", "--reference", str(path), "--out", str(tmp_path / "r"), "--quiet"]}[entry]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "weights.pt: " in err[0] and "does not fit" not in err[0] and len(err[0]) < 400
    assert ("empty" if kind == "empty" else "refused to unpickle" if kind == "pickled code" else "not a readable") \
        in err[0]
    assert not marker.exists() and path.read_bytes() == before
