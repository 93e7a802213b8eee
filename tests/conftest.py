"""Shared test models and helpers.

Chain models: a small CNN with max-pooling and a VGG-style network with batch norm. Graph
models: a ResNet of BasicBlocks (a ReLU module called twice per block, a strided block with a
1x1-conv + BatchNorm downsample), a Bottleneck ResNet, a DenseNet (concatenation, standalone
BatchNorm, transitions) and a U-Net-like net (upsampling, interpolation, scaling, a skip
concatenation). Every one exists in a ReLU and a Softplus(β) version, in float64, with random
(but fixed) batch-norm statistics so that merging is actually exercised.
"""
from __future__ import annotations

import os
import random
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manipex
from manipex.models.densenet import DenseNet

# experiments' figures as PNG only (PDF and SVG quadruple a report's drawing time); the formats
# themselves are tested in test_experiment_figures.py and test_plotting.py. Inherited by the CLI
# runs the tests start.
os.environ.setdefault("MANIPEX_FIGURE_FORMATS", "png")
from manipex.models.resnet import BasicBlock, Bottleneck, ResNet


# ---------------------------------------------------------------------------------------------
# Order independence. Every test starts from the same seeded global RNGs, whatever ran before
# it, and must leave the process as it found it: a test that changes the thread count, default
# dtype, deterministic-algorithm or grad mode, matplotlib's rcParams, an environment variable,
# sys.path or the working directory fails (at teardown, naming what changed), and the state is
# restored so that the tests after it are not affected. ``--order reverse`` or
# ``--order random --order-seed N`` runs the suite in another order.

def pytest_addoption(parser):
    parser.addoption("--order", choices=("given", "reverse", "random"), default="given",
                     help="manipex: run the tests in the given, reversed or a random order")
    parser.addoption("--order-seed", type=int, default=0, help="manipex: seed of --order random")


def pytest_collection_modifyitems(config, items):
    order = config.getoption("--order")
    if order == "reverse":
        items.reverse()
    elif order == "random":
        random.Random(config.getoption("--order-seed")).shuffle(items)


def pytest_report_header(config):
    return (f"manipex: test order {config.getoption('--order')}, torch {torch.get_num_threads()} intra-op "
            f"thread(s), CPU {manipex._determinism.cpu_capability()}")


#: Variables set by pytest itself and by torch on the first import of its compiler stack
#: (``torch._inductor``, pulled in by the optimizers): not the tests' doing.
_NOT_THE_TESTS = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR"}


def _process_state() -> dict:
    state = {
        "torch thread count": torch.get_num_threads(),
        "torch default dtype": torch.get_default_dtype(),
        "torch deterministic algorithms": (torch.are_deterministic_algorithms_enabled(),
                                           torch.is_deterministic_algorithms_warn_only_enabled()),
        "cuDNN flags": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
        "torch grad mode": torch.is_grad_enabled(),
        "torch anomaly detection": torch.is_anomaly_enabled(),
        "environment variables": {k: v for k, v in os.environ.items() if k not in _NOT_THE_TESTS},
        "working directory": os.getcwd(),
        "sys.path": list(sys.path),
    }
    if "matplotlib" in sys.modules:
        import matplotlib

        # the backend as a name (pyplot's first import writes 'agg' as 'Agg' and sets the fallback)
        state["matplotlib rcParams"] = {k: v for k, v in matplotlib.rcParams.items()
                                        if k not in ("backend", "backend_fallback")}
        state["matplotlib backend"] = matplotlib.get_backend().lower()
    return state


def _restore(before: dict) -> None:
    torch.set_num_threads(before["torch thread count"])
    torch.set_default_dtype(before["torch default dtype"])
    torch.use_deterministic_algorithms(before["torch deterministic algorithms"][0],
                                       warn_only=before["torch deterministic algorithms"][1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before["cuDNN flags"]
    torch.set_grad_enabled(before["torch grad mode"])
    torch.set_anomaly_enabled(before["torch anomaly detection"])
    for name in set(os.environ) - set(before["environment variables"]) - _NOT_THE_TESTS:
        del os.environ[name]
    os.environ.update(before["environment variables"])
    os.chdir(before["working directory"])
    sys.path[:] = before["sys.path"]
    if "matplotlib rcParams" in before:
        import matplotlib

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matplotlib.rcParams.update(before["matplotlib rcParams"])


def _changes(before: dict, after: dict) -> list:
    changed = []
    for name, value in before.items():
        now = after.get(name)
        if now == value:
            continue
        if isinstance(value, dict) and isinstance(now, dict):
            keys = sorted(k for k in set(value) | set(now) if value.get(k) != now.get(k))
            changed.append(f"{name} ({', '.join(map(str, keys[:5]))}{', ...' if len(keys) > 5 else ''})")
        else:
            changed.append(f"{name} ({value!r} -> {now!r})")
    return changed


@pytest.fixture(autouse=True)
def _leaves_the_process_as_it_found_it():
    """Seed the global RNGs, run the test, and fail it if it left process-wide state changed."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    before = _process_state()
    yield
    after = _process_state()
    changed = _changes(before, after)
    if changed:
        _restore(before)
        pytest.fail("the test left process-wide state changed: " + "; ".join(changed), pytrace=False)


def small_cnn(act: type = nn.ReLU, **kw) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), act(**kw), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), act(**kw), nn.Flatten(), nn.Linear(6 * 2 * 2, 16), act(**kw),
        nn.Dropout(0.5), nn.Linear(16, 5),
    ).double().eval()


def vgg_style(act: type = nn.ReLU, **kw) -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), act(**kw),
                      nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), act(**kw), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), act(**kw), nn.AvgPool2d(2)),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(),
        nn.Sequential(nn.Linear(24, 12), act(**kw), nn.Linear(12, 4)),
    ).double()
    return random_batchnorm(model).eval()


def random_batchnorm(model: nn.Module) -> nn.Module:
    """Random but fixed BatchNorm statistics and affine parameters (so merging matters)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _relu_or_softplus(model: nn.Module, act: type, kw: dict) -> nn.Module:
    model = random_batchnorm(model.double()).eval()
    return manipex.surgery.softplus_copy(model, kw["beta"]) if act is nn.Softplus else model


def resnet_basic(act: type = nn.ReLU, **kw) -> nn.Module:
    """Stem, a BasicBlock with an identity shortcut, a strided one with a downsample."""
    torch.manual_seed(5)
    return _relu_or_softplus(ResNet(BasicBlock, [1, 1], 5, stem="cifar", width=4), act, kw)


def resnet_bottleneck(act: type = nn.ReLU, **kw) -> nn.Module:
    """Two stages of one Bottleneck each, both with a 1x1-conv + BatchNorm downsample."""
    torch.manual_seed(6)
    return _relu_or_softplus(ResNet(Bottleneck, [1, 1], 5, stem="cifar", width=2), act, kw)


def densenet_small(act: type = nn.ReLU, **kw) -> nn.Module:
    """A DenseNet-BC of two blocks of two layers (torchvision's structure, tiny widths)."""
    torch.manual_seed(7)
    return _relu_or_softplus(DenseNet(2, (2, 2), 4, bn_size=2, num_classes=4), act, kw)


class UNetLike(nn.Module):
    """Encoder, max-pool, bottleneck, two upsamplings (module and F.interpolate), a scaled sum,
    a skip concatenation with the encoder, average pooling and a mean over the plane."""

    def __init__(self, act: type, **kw) -> None:
        super().__init__()
        self.enc, self.mid = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.dec, self.fc = nn.Conv2d(6, 4, 3, padding=1), nn.Linear(4, 3)
        self.act, self.pool = act(**kw), nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x):
        e = self.act(self.enc(x))
        m = self.act(self.mid(self.pool(e)))
        u = self.up(m) + 0.5 * F.interpolate(m, scale_factor=2.0, mode="nearest")
        d = self.act(self.dec(torch.cat([e, u], 1)))
        return self.fc(F.avg_pool2d(d, 2).mean((2, 3)))


def unet_like(act: type = nn.ReLU, **kw) -> nn.Module:
    torch.manual_seed(8)
    return UNetLike(act, **kw).double().eval()


MODELS = {
    "small_cnn": (small_cnn, (2, 1, 8, 8)), "vgg_style": (vgg_style, (2, 3, 8, 8)),
    "resnet_basic": (resnet_basic, (2, 3, 8, 8)), "resnet_bottleneck": (resnet_bottleneck, (2, 3, 8, 8)),
    "densenet_small": (densenet_small, (2, 3, 16, 16)), "unet_like": (unet_like, (2, 1, 8, 8)),
}
GRAPH_MODELS = ["resnet_basic", "resnet_bottleneck", "densenet_small", "unet_like"]


def make(name: str, softplus: bool = True):
    build, shape = MODELS[name]
    model = build(nn.Softplus, beta=3.0) if softplus else build()
    torch.manual_seed(2)
    x = torch.rand(shape, dtype=torch.float64) * 0.8 + 0.1
    return model, x


@pytest.fixture(scope="session")
def patterns_for():
    cache = {}

    def get(name: str, model: nn.Module):
        if name not in cache:
            torch.manual_seed(3)
            shape = MODELS[name][1]
            cache[name] = manipex.fit_patterns(model, torch.rand((64,) + shape[1:], dtype=torch.float64))
        return cache[name]

    return get


def method_options(method: str, name: str, model: nn.Module, patterns_for) -> dict:
    """Small but non-trivial options for every method, for fast tests.

    The SmoothGrad seed is one whose noisy copies stay away from max-pool ties: a map
    through max-pooling jumps where the winner changes (seed 0 puts a sample within 1e-6 of
    one, which a finite difference of that size cannot resolve).
    """
    return {
        "integrated_gradients": {"steps": 4},
        "smoothgrad": {"samples": 3, "seed": 1, "sigma": 0.1},
        "occlusion": {"window": 3, "stride": 2},
        "pattern_attribution": {"patterns": patterns_for(name, model)} if method == "pattern_attribution" else {},
        "lrp": {},
        "gradcam": {"layer": GRADCAM_LAYERS[name]} if name in GRADCAM_LAYERS else {},
    }.get(method, {})


#: Grad-CAM layers where the default (the last stage's output) is not the one these tests need:
#: on the random vgg_style net every map after its last BatchNorm is exactly zero, so it is read
#: at the last convolution. The graph models' entries are their defaults, written out.
GRADCAM_LAYERS = {"resnet_basic": "layer2", "resnet_bottleneck": "layer2", "densenet_small": "features",
                  "vgg_style": "1.0"}


def state_of(model: nn.Module):
    """Everything about a model that an explainer must leave unchanged."""
    return {
        "params": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
        "modules": [(n, type(m), id(m), m.training) for n, m in model.named_modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
    }


def assert_same_state(before, after):
    assert before["modules"] == after["modules"]
    assert before["hooks"] == after["hooks"]
    assert before["requires_grad"] == after["requires_grad"]
    assert all(g is None for g in after["grads"]) == all(g is None for g in before["grads"])
    for k, v in before["params"].items():
        assert torch.equal(v, after["params"][k]), k


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """A private model cache for the session (the user's cache is never touched)."""
    return tmp_path_factory.mktemp("manipex-cache")


@pytest.fixture(scope="session")
def mnist_model(model_cache):
    """The default MNIST-5k model: the weights shipped with manipex (the same on every machine;
    nothing is trained or written to the private cache)."""
    return manipex.models.load_default("mnist", cache_dir=model_cache, progress=False)


@pytest.fixture(scope="session")
def default_recipe_models():
    """``get(seed)``: an MNIST-5k CNN of the default model's recipe (3 epochs on the 5000
    training images) initialised and trained from ``seed``, trained once per session and shared
    by the tests that need clean models of the default recipe (references, a clean model)."""
    from manipex.models import mnist_cnn, train_classifier
    from manipex.models.pretrained import DEFAULT_RECIPES

    x, y = manipex.data.load("mnist5k", split="train")
    models = {}

    def get(seed: int) -> nn.Module:
        if seed not in models:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                models[seed] = train_classifier(mnist_cnn(), x, y, epochs=DEFAULT_RECIPES["mnist"].epochs, seed=seed,
                                                progress=False).eval()
        return models[seed]

    return get


@pytest.fixture(scope="session")
def corner_manipulation(mnist_model):
    """The default model fine-tuned so that its gradient maps' centre of mass moves to the corner
    (0, 0) at unchanged accuracy (Heo et al. 2019's location fooling; lam 0.03, 3 epochs on the
    5000 training images): ``(state_before, state_after, result)``, the default model's state
    recorded around the call, shared by the model-attack, detection and audit tests."""
    from manipex.attacks import manipulate_model
    from manipex.objectives import CenterOfMass

    x, y = manipex.data.load("mnist5k", split="train")
    before = state_of(mnist_model)
    result = manipulate_model(mnist_model, (x, y), CenterOfMass((0.0, 0.0)), "gradient", lam=0.03, lr=1e-3,
                              epochs=3, progress=False)
    return before, state_of(mnist_model), result


def write_idx(root, images, labels) -> None:
    """MNIST-format IDX files (gzipped) of uint8 ``images`` (N, H, W) split 2:1 into train/t10k."""
    import gzip

    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    cut = 2 * len(images) // 3
    for prefix, (a, b) in {"train": (images[:cut], labels[:cut]), "t10k": (images[cut:], labels[cut:])}.items():
        for kind, array, magic in (("images-idx3-ubyte", a, 2051), ("labels-idx1-ubyte", b, 2049)):
            header = np.array([magic, *array.shape], dtype=">i4").tobytes()
            with gzip.open(root / f"{prefix}-{kind}.gz", "wb") as f:
                f.write(header + np.asarray(array, dtype=np.uint8).tobytes())


def write_image_folder(root, classes=("cat", "dog", "owl"), per_class=10, size=(40, 48), seed=0) -> None:
    """Random RGB images in class folders (no splits)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


@pytest.fixture(scope="session")
def user_sources(tmp_path_factory, mnist_model):
    """The three model-and-data sources every experiment must run on (config overrides):
    the default; a checkpoint saved by manipex with MNIST IDX files written here; an image
    folder with a small ResNet at random init (labels from the model)."""
    root = tmp_path_factory.mktemp("sources")
    x, y = manipex.data.load("mnist5k", split="test")
    write_idx(root / "mnist", (x[:300, 0] * 255).round().to(torch.uint8).numpy(), y[:300].numpy())
    checkpoint = manipex.models.save(mnist_model, root / "mnist_cnn.safetensors")
    write_image_folder(root / "images")
    torch.manual_seed(0)
    resnet = manipex.models.save(manipex.models.cifar_resnet(depth=8, num_classes=3, width=4),
                                 root / "resnet.safetensors")
    return {
        "default": {},
        "checkpoint_idx": {"dataset": "mnist", "root": str(root / "mnist"), "weights": str(checkpoint)},
        "image_folder": {"dataset": "image_folder", "root": str(root / "images"), "weights": str(resnet),
                         "image_size": 32, "labels": "predicted", "normalize": "cifar10"},
    }


@pytest.fixture(scope="session")
def adult_sources(tmp_path_factory):
    """The Adult study's sources: the shipped files; the files in a folder of the user's; and a
    classifier saved by manipex."""
    import shutil

    from manipex.data.adult import adult_dir

    root = tmp_path_factory.mktemp("adult")
    for f in adult_dir().iterdir():
        if f.name.startswith("adult."):
            shutil.copy(f, root / f.name)
    x, y = manipex.data.load("adult", split="train")
    torch.manual_seed(0)
    model = manipex.models.tabular_mlp(x.shape[1], hidden=(16,))
    manipex.models.train_classifier(model, x[:2000], y[:2000], epochs=1, progress=False)
    path = manipex.models.save(model, root / "mlp.safetensors")
    return {"default": {}, "checkpoint_idx": {"root": str(root)}, "image_folder": {"weights": str(path)}}


#: The methods that apply to any model, CNNs included: all but those that read self-attention
#: (attention rollout, which refuses a model without attention).
CNN_METHODS = [m for m in manipex.methods() if not manipex.explainers.base.requires_attention(m)]
