"""The README's coverage table (model family x method) is what the suite measures.

A cell is ✓ when the method's map of a small replica of the family (tests/replicas.py; the
ResNet, VGG and DenseNet nets of tests/conftest.py) is computed with ``create_graph=True`` and
differentiated again, and, for the attack columns, a 3-step ``manipulate_input`` runs. The
exactness of those derivatives is tests/test_derivatives.py's and tests/test_modern_cnns.py's.
"""
from __future__ import annotations

import pathlib
import re
from typing import Callable, Dict, List, Tuple

import pytest
import torch

import manipex
from conftest import densenet_small, resnet_basic, vgg_style
from replicas import build
from manipex.attacks import manipulate_input
from manipex.objectives import TargetImage

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

FAMILIES: Dict[str, Callable[[], torch.nn.Module]] = {
    "VGG": lambda: vgg_style().float(),
    "ResNet": lambda: resnet_basic().float(),
    "DenseNet": lambda: densenet_small().float(),
    "Inception (functional ReLU)": lambda: build("inception"),
    "MobileNetV3": lambda: build("mobilenet_v3"),
    "EfficientNet": lambda: build("efficientnet"),
    "RegNet-Y": lambda: build("regnet_y"),
    "ConvNeXt": lambda: build("convnext"),
    "timm BatchNormAct2d": lambda: build("timm_bn_act"),
    "forward(x, mask=None)": lambda: build("optional_args"),
}
COLUMNS: List[Tuple[str, str]] = [
    ("gradient", "gradient"), ("grad×input", "grad_x_input"), ("IG", "integrated_gradients"),
    ("SmoothGrad", "smoothgrad"), ("guided BP", "guided_backprop"), ("LRP", "lrp"),
    ("PatternAttr.", "pattern_attribution"), ("Grad-CAM", "gradcam"), ("occlusion", "occlusion"),
    ("AGG-Mean", "agg_mean"), ("AGG-Var", "agg_var"), ("gradient attack", "attack:gradient"),
    ("LRP attack", "attack:lrp"),
]
OPTIONS = {"integrated_gradients": {"steps": 3}, "smoothgrad": {"samples": 2, "seed": 0},
           "occlusion": {"window": 4, "stride": 4}}


def cell(model: torch.nn.Module, x: torch.Tensor, column: str) -> bool:
    try:
        if column.startswith("attack:"):
            manipulate_input(model, x, TargetImage(x.roll(1, 0)), column.split(":")[1], steps=3, eps=0.1,
                             progress=False)
            return True
        opts = dict(OPTIONS.get(column, {}))
        if column == "pattern_attribution":
            opts["patterns"] = manipex.fit_patterns(model, torch.rand((16,) + x.shape[1:]))
        xg = x.clone().requires_grad_(True)
        h = manipex.explain(model, xg, column, create_graph=True, **opts)
        (g,) = torch.autograd.grad((h * torch.randn_like(h)).sum(), xg, allow_unused=True)
        return bool(torch.isfinite(h).all()) and (g is None or bool(torch.isfinite(g).all()))
    except (ValueError, TypeError, RuntimeError):
        return False


def coverage_table() -> str:
    torch.manual_seed(0)
    lines = ["| family | " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for family, make in FAMILIES.items():
        model = make()
        x = torch.rand((2, model_channels(model), 16, 16))
        marks = ["✓" if cell(model, x, column) else "✗" for _, column in COLUMNS]
        lines.append(f"| {family} | " + " | ".join(marks) + " |")
    return "\n".join(lines)


def model_channels(model: torch.nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return first.in_channels


def readme_table() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"^\| family \| gradient .*?(?=\n\n)", text, flags=re.M | re.S)
    assert found, "the README's coverage table (a row starting '| family | gradient') is missing"
    return found.group(0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_readme_coverage_table_is_measured():
    measured = coverage_table()
    assert readme_table() == measured, f"update the README's coverage table to:\n{measured}"


if __name__ == "__main__":  # print the table for the README
    print(coverage_table())
