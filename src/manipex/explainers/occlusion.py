"""Occlusion (Zeiler & Fergus 2014), batched.

A window of ``baseline`` values slides over the input with ``stride``; the map of a feature is
the mean, over the windows that cover it, of ``g_k(x) - g_k(x occluded)`` (Captum's
``Occlusion`` with a window over all channels). Features no window covers get 0. The map is a
sum of forward passes, so it is exactly differentiable w.r.t. the weights (and the input).
"""
from __future__ import annotations

import itertools
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._validation import check_int, predicted_target, short
from .base import Explainer
from .gradient import broadcast_baseline, check_baseline

Size = Union[int, Sequence[int]]


def _per_dim(value: Size, dims: int, key: str) -> Tuple[int, ...]:
    values = (value,) * dims if isinstance(value, int) else tuple(value)
    if len(values) != dims or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(
            f"explain(method='occlusion'): {key} must be a positive int or {dims} positive ints, got {value!r}"
        )
    return values


class Occlusion(Explainer):
    """Occlusion sensitivity.

    Options:
        window: window size over the spatial axes (int or one int per axis; for ``(N, D)``
            inputs over the features); the window always covers all channels.
        stride: step between windows (int or per axis).
        baseline: value (float or tensor broadcastable to ``x``) put into the window.
        batch_size: occluded inputs per forward pass.
    """

    name = "occlusion"
    options = {"window": 4, "stride": 2, "baseline": 0.0, "batch_size": 256}
    differentiable_input = False
    needs_autograd = False

    def validate_options(self):
        where = "explain(method='occlusion')"
        for key in ("window", "stride"):
            value = self.config[key]
            values = [value] if isinstance(value, int) else value if isinstance(value, (list, tuple)) else None
            if values is None or not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1
                                                   for v in values):
                raise ValueError(f"{where}: {key} must be a positive int or a sequence of positive ints, "
                                 f"got {short(value)}")
        check_int(self.config["batch_size"], where=where, name="batch_size", ge=1)
        check_baseline(self.config["baseline"], where)

    def attribute(self, model, x, target, create_graph):
        where = "explain(method='occlusion')"
        spatial = x.shape[2:] if x.dim() > 2 else x.shape[1:]
        window = _per_dim(self.config["window"], len(spatial), "window")
        stride = _per_dim(self.config["stride"], len(spatial), "stride")
        if any(w > s for w, s in zip(window, spatial)):
            raise ValueError(f"{where}: window {window} is larger than the input's spatial size {tuple(spatial)}")
        batch_size = self.config["batch_size"]
        baseline = broadcast_baseline(self.config["baseline"], x, where)
        target = predicted_target(model, x, target, where=where)
        starts = list(itertools.product(*(range(0, s - w + 1, st) for s, w, st in zip(spatial, window, stride))))
        # a map without graph keeps no chunk's graph alive: memory bounded by one chunk
        with torch.set_grad_enabled(create_graph):
            return self._occlude(model, x, target, baseline, starts, window, batch_size)

    def _occlude(self, model, x, target, baseline, starts, window, batch_size):
        n, rest = x.shape[0], x.shape[1:]
        clean = model(x).gather(1, target[:, None])  # (N, 1)
        per_chunk = max(1, batch_size // n)
        total = torch.zeros_like(x)
        count = torch.zeros(rest, dtype=x.dtype, device=x.device)
        for i in range(0, len(starts), per_chunk):
            masks = self._masks(starts[i : i + per_chunk], window, rest, x)  # (P, *rest)
            occluded = x.unsqueeze(1) * (1 - masks) + baseline.unsqueeze(1) * masks  # (N, P, *rest)
            scores = model(occluded.reshape(-1, *rest)).gather(1, target.repeat_interleave(len(masks))[:, None])
            drop = clean - scores.reshape(n, len(masks))  # (N, P)
            total = total + torch.einsum("np,p...->n...", drop, masks)
            count = count + masks.sum(0)
        return total / count.clamp(min=1)

    @staticmethod
    def _masks(starts: List[Tuple[int, ...]], window: Tuple[int, ...], rest: torch.Size, x: Tensor) -> Tensor:
        masks = torch.zeros((len(starts),) + tuple(rest), dtype=x.dtype, device=x.device)
        offset = len(rest) - len(window)  # leading channel axis, if any
        for p, start in enumerate(starts):
            index = (p,) + (slice(None),) * offset + tuple(slice(s, s + w) for s, w in zip(start, window))
            masks[index] = 1
        return masks
