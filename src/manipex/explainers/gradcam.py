"""Grad-CAM (Selvaraju et al. 2017).

``L = ReLU(sum_c alpha_c A_c)`` with ``alpha_c`` the spatial mean of ``dg_k/dA_c`` at a
convolutional layer's output ``A``, upsampled bilinearly to the input size and repeated over
the input's channels so that the map has ``x``'s shape. The layer's output is captured with a
forward hook that is always removed; ``alpha`` is computed with ``create_graph`` so the map is
exactly differentiable (almost everywhere: ReLU) w.r.t. the input and the weights.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import select_target, short
from .base import Explainer, requires_grad_input


def find_layers(model: nn.Module, layer: Optional[Union[str, nn.Module]], where: str) -> List[nn.Module]:
    """The module named (or given) by ``layer``; by default every Conv2d (the last one the
    forward calls is taken)."""
    if layer is None:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{where}: the model has no Conv2d layer; pass layer=<module or name>")
        return convs
    if isinstance(layer, str):
        try:
            return [model.get_submodule(layer)]
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"{where}: the model has no layer {short(layer)}; layers: {', '.join(names[:20])}") from None
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"{where}: layer {type(layer).__name__} is not a submodule of the model")
        return [layer]
    raise TypeError(f"{where}: layer must be a module name or an nn.Module, got {type(layer).__name__}")


class GradCAM(Explainer):
    """Grad-CAM. Options: ``layer`` (module or its name; default the last Conv2d that the
    forward calls; for a ResNet the usual choice is the last stage, ``layer="layer4"``)."""

    name = "gradcam"
    options = {"layer": None}

    def attribute(self, model, x, target, create_graph):
        where = "explain(method='gradcam')"
        if x.dim() != 4:
            raise ValueError(f"{where}: x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        layers = find_layers(model, self.config["layer"], where)
        captured: List[Tuple[nn.Module, Tensor]] = []
        handles = [m.register_forward_hook(lambda module, inputs, output: captured.append((module, output)))
                   for m in layers]
        try:
            out = model(requires_grad_input(x))
        finally:
            for handle in handles:
                handle.remove()
        chosen = [a for m, a in captured if captured and m is captured[-1][0]]
        if len(chosen) != 1 or not isinstance(chosen[0], Tensor) or chosen[0].dim() != 4:
            raise ValueError(f"{where}: the layer must be called once per forward and return (N, C, H, W) maps")
        activation = chosen[0]
        t = select_target(out, target, where=where)
        score = out.gather(1, t[:, None]).sum()
        (grad,) = torch.autograd.grad(score, activation, create_graph=create_graph)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
        return cam.expand(-1, x.shape[1], -1, -1).contiguous()
