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
