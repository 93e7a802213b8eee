"""Sanity checks for explanation maps: the model parameter randomisation test of Adebayo et al.
(2018), "Sanity Checks for Saliency Maps" (NeurIPS), Sec. 3.

A method whose maps explain the *model* must change when the model's learned weights are
destroyed. :func:`model_randomization` re-initialises the layers of a copy of the model, from the
top (the logits) down, and measures how similar each map of the randomised model is to the map
of the trained one:

- ``mode="cascading"`` (Adebayo Fig. 2 and 4): step ``k`` re-initialises the top ``k`` layers;
  the earlier randomisations are kept, so the last step is a fully random network.
- ``mode="independent"`` (Adebayo Fig. 5): step ``k`` re-initialises layer ``k`` alone; every
  other layer keeps its trained weights.

Definitions chosen here (and why):

- **Re-initialisation** draws the layer's parameters again from *its own initialiser*
  (``module.reset_parameters()``, e.g. Kaiming-uniform for ``Linear``/``Conv``; ``BatchNorm``
  goes back to weight 1, bias 0 and running statistics 0/1), as Adebayo re-initialise each layer
  from the distribution it was initialised with. (Quantus permutes the trained weights instead,
  which keeps their marginal distribution; that is a different test.) The draw of a layer is
  seeded by ``seed`` and the layer's name (not its position), so a layer gets the same random
  weights in both modes and whatever other layers are chosen; the global RNG is left as it was.
- **Layers** (default): every module that owns parameters and has ``reset_parameters``, in the
  order the forward pass calls them (found by forward pre-hooks on one input of the batch, on the
  copy), reversed so that the top comes first. Modules the forward pass never calls are left
  out: re-initialising them changes nothing. A container's name (``"features"``) may be given in
  ``layers``: its step re-initialises every such module inside it (Adebayo randomise Inception's
  "blocks" this way).
- **Maps compared**: by default the relevance maps (:func:`manipex.relevance`: sum of absolute
  values over channels, normalised to sum 1), the absolute-value comparison of Adebayo (they
  report both; the sign of a gradient map is fragile to begin with, so the absolute maps are the
  usual headline). ``absolute=False`` compares the signed maps: summed over channels, divided by
  their largest absolute value (so each lies in [-1, 1]).
- **Target**: the class the *original* model predicts for each input (or ``target``), fixed for
  every randomised model: the question is whether the explanation of the same output changes.
- **Metrics**: SSIM (11x11 Gaussian window, sigma 1.5) and Spearman rank correlation (ties
  averaged), as Adebayo Fig. 4; ``"pcc"`` and ``"cosine"`` may be added. All are "higher = more
  similar"; step 0 (``"original"``) compares the trained map with itself (1 by construction).

The model passed in is never changed: all work happens on a deep copy, also when an error is
raised midway.

Example::

    >>> res = manipex.evaluation.model_randomization(model, x[:16], ["gradient", "guided_backprop"])
    >>> res.table            # tidy: method, step, layer, mode, metric, mean, std
    >>> res.plot().savefig("sanity.png")
"""
from __future__ import annotations

import copy
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._progress import progress_bar
from .._validation import (TargetLike, check_bool, check_call, check_choice, check_int, check_target, predicted_target,
                          short)
from ..explainers import get_explainer, methods as available, relevance
from ..metrics import METRICS
from ..figures import randomization_figure

MODES = ("cascading", "independent")

#: Similarity metrics the test can report (all "higher = more similar", no required options).
SIMILARITIES = ("ssim", "spearman", "pcc", "cosine")

_WHERE = "model_randomization"


@dataclass(repr=False)
class RandomizationResult:
    """What :func:`model_randomization` measured (its repr is a one-line summary).

    Attributes:
        table: a tidy ``pandas.DataFrame``, one row per (method, step, metric), with columns
            ``method``, ``step`` (0 = the original model), ``layer`` (``"original"``, then the
            layer randomised at that step), ``mode``, ``metric``, ``mean`` and ``std`` (over the
            images; ``ddof=1``, NaN for a single image).
        scores: the per-image similarities, a float32 tensor ``(methods, steps, metrics, N)``
            in the order of ``methods``, ``steps`` and ``metrics``.
        steps: ``("original", layer_1, ..., layer_L)``, the x axis of the figure.
        methods, metrics: the names, in the order of ``scores``.
        mode: ``"cascading"`` or ``"independent"``.
        target: the ``N`` class indices explained (the original model's prediction by default).
        absolute: whether relevance (absolute, normalised) maps were compared (else signed).
        seed: the seed of the re-initialisations.
        method_options: the options each method was called with.
        kinds: the class name of each step's module (``""`` for ``"original"``), for labels.
    """

    table: Any
    scores: Tensor
    steps: Tuple[str, ...]
    methods: Tuple[str, ...]
    metrics: Tuple[str, ...]
    mode: str
    target: Tensor
    absolute: bool = True
    seed: int = 0
    method_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    kinds: Tuple[str, ...] = ()

    def __repr__(self) -> str:
        """``RandomizationResult(cascading, 2 methods (gradient, lrp), 5 layers, metrics ssim,
        spearman, 8 images)``."""
        methods = list(self.methods)
        n = int(self.scores.shape[-1]) if isinstance(self.scores, Tensor) and self.scores.dim() else 0
        shown = ", ".join(methods[:4]) + (", ..." if len(methods) > 4 else "")
        layers = max(0, len(self.steps) - 1)
        return (f"{type(self).__name__}({self.mode}, {len(methods)} method{'s' if len(methods) != 1 else ''} "
                f"({shown}), "
                f"{layers} layer{'s' if layers != 1 else ''}, metrics {', '.join(self.metrics)}, {n} images)")

    def score(self, method: str, metric: str) -> Tensor:
        """The per-image scores ``(steps, N)`` of one method and metric."""
        check_choice(method, self.methods, where="RandomizationResult.score", name="method")
        check_choice(metric, self.metrics, where="RandomizationResult.score", name="metric")
        return self.scores[self.methods.index(method), :, self.metrics.index(metric)]

    def plot(self):
        """Similarity to the original map vs the randomised layer (Adebayo Fig. 2 and 4 curves):
        a :class:`matplotlib.figure.Figure` from :func:`manipex.figures.randomization_figure`."""
        return randomization_figure(self)


# ----------------------------------------------------------------------------------------------
# layers and re-initialisation

def _resettable(module: nn.Module) -> bool:
    """A module that owns parameters and can draw them again."""
    has_own = any(True for _ in module.parameters(recurse=False))
    return has_own and callable(getattr(module, "reset_parameters", None))


def _forward_order(model: nn.Module, x: Optional[Tensor]) -> List[str]:
    """Names of the resettable modules, bottom (input) first: in the order the forward pass
    first calls them (one input of ``x``), or in registration order without ``x``."""
    named = [(name, m) for name, m in model.named_modules() if _resettable(m)]
    if x is None:
        return [name for name, _ in named]
    order: List[str] = []
    handles = []
    for name, m in named:
        def hook(_module, _inputs, name=name):
            if name not in order:
                order.append(name)
        handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():  # one forward only records the order the layers are called in
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return order


def default_layers(model: nn.Module, x: Optional[Tensor] = None) -> List[str]:
    """The layers :func:`model_randomization` randomises by default, **top (logits) first**:
    every module that owns parameters and has ``reset_parameters`` (``Linear``, ``Conv*``,
    ``BatchNorm*`` with affine parameters, ...), in reverse order of the forward pass on ``x[:1]``
    (modules the pass never calls are left out), or in reverse registration order without ``x``.
    The model is left unchanged (the hooks are removed)."""
    return list(reversed(_forward_order(model, x)))


def _check_layers(model: nn.Module, layers: Any, default: List[str]) -> List[str]:
    if layers is None:
        if not default:
            raise ValueError(f"{_WHERE}: the model has no module with parameters and reset_parameters() "
                             "(Linear, Conv, BatchNorm, ...): there is nothing to re-initialise")
        return default
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise TypeError(f"{_WHERE}: layers must be None or a sequence of module names, got {type(layers).__name__}")
    if not layers:
        raise ValueError(f"{_WHERE}: layers is empty; give module names (top first) or None for {', '.join(default)}")
    modules = dict(model.named_modules())
    valid = default or [n for n, m in modules.items() if _resettable(m)]
    seen = set()
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"{_WHERE}: layers must hold module names (str), got {short(name)}")
        ok = name in modules and name != "" and any(_resettable(m) for m in modules[name].modules())
        if not ok:
            raise ValueError(f"{_WHERE}: layers: {name!r} is not a module of the model with parameters to "
                             f"re-initialise; valid layers (top first): {', '.join(map(repr, valid))} "
                             "(or a container holding some of them)")
        if name in seen:
            raise ValueError(f"{_WHERE}: layers: {name!r} is given twice")
        seen.add(name)
    return list(layers)


@contextmanager
def _seeded(seed: int, name: str, model: nn.Module):
    """The global RNGs (CPU and the model's CUDA devices) seeded from ``seed`` and ``name``,
    restored afterwards."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
        yield


def reinitialize(model: nn.Module, name: str, *, seed: int = 0) -> None:
    """Re-initialise, **in place**, every module with parameters and ``reset_parameters`` inside
    ``model``'s submodule ``name``, seeded by ``seed`` and ``name`` (the same draw every time).
    Used on copies by :func:`randomized_models`; call it on a copy yourself."""
    module = model.get_submodule(name)
    with _seeded(seed, name, model):
        for m in module.modules():
            if _resettable(m):
                m.reset_parameters()


def _steps(model: nn.Module, layers: Sequence[str], mode: str, seed: int) -> Iterator[str]:
    """Randomise ``model`` (a copy) step by step; yield the name of the layer of each step."""
    for name in layers:
        if mode == "cascading":
            reinitialize(model, name, seed=seed)
            yield name
        else:
            module = model.get_submodule(name)
            saved = {k: v.detach().clone() for k, v in module.state_dict().items()}  # a copy to restore
            try:
                reinitialize(model, name, seed=seed)
                yield name
            finally:
                with torch.no_grad():  # restoring the trained weights is not part of any graph
                    module.load_state_dict(saved)


def randomized_models(
    model: nn.Module,
    x: Optional[Tensor] = None,
    *,
    layers: Optional[Sequence[str]] = None,
    mode: str = "cascading",
    seed: int = 0,
) -> Iterator[Tuple[str, nn.Module]]:
    """Yield ``(layer, randomised_model)`` for each step of the randomisation test, on a deep
    copy of ``model`` (which is never changed).

    ``mode="cascading"``: the copy with the layers up to ``layer`` (top first) re-initialised;
    ``"independent"``: the copy with ``layer`` alone re-initialised. The **same** copy is yielded
    at every step and changed by the next one: ``copy.deepcopy`` it to keep a step. ``layers``
    default to :func:`default_layers` (forward order on ``x[:1]`` when ``x`` is given, else
    registration order), top first. See :func:`reinitialize` for the draw.
    """
    check_choice(mode, MODES, where=_WHERE, name="mode")
    seed = check_int(seed, where=_WHERE, name="seed", ge=0)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_WHERE}: model must be a torch.nn.Module, got {type(model).__name__}")
    clone = _copy(model)
    names = _check_layers(clone, layers, default_layers(clone, x))
    for name in _steps(clone, names, mode, seed):
        yield name, clone


def _copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as err:  # e.g. a module holding a lock or an open file
        raise TypeError(f"{_WHERE}: the model cannot be deep-copied ({type(err).__name__}: {err}); the test "
                        "re-initialises a copy so that the model passed in is never changed") from err


# ----------------------------------------------------------------------------------------------
# the test

def _methods(method: Any) -> Tuple[str, ...]:
    names = [method] if isinstance(method, str) else method
    if not isinstance(names, (list, tuple)) or not names:
        raise TypeError(f"{_WHERE}: method must be a method name or a non-empty sequence of names, got {short(method)}")
    valid = available()
    for name in names:
        check_choice(name, valid, where=_WHERE, name="method")
    if len(set(names)) != len(names):
        raise ValueError(f"{_WHERE}: method lists a name twice: {short(list(names))}")
    return tuple(names)


def _options(method_options: Any, methods: Tuple[str, ...]) -> Dict[str, Dict[str, Any]]:
    """Per-method options: for one method, its options; for several, ``{method: options}``."""
    if method_options is None:
        return {m: {} for m in methods}
    if not isinstance(method_options, Mapping):
        raise TypeError(f"{_WHERE}: method_options must be None or a dict, got {type(method_options).__name__}")
    if len(methods) == 1 and not (set(method_options) <= set(methods)
                                  and all(isinstance(v, Mapping) for v in method_options.values())):
        return {methods[0]: dict(method_options)}
    out = {m: {} for m in methods}
    for key, value in method_options.items():
        if key not in methods:
            raise ValueError(f"{_WHERE}: method_options: with several methods it maps method names to option dicts; "
                             f"{short(key)} is not one of {', '.join(map(repr, methods))}")
        if not isinstance(value, Mapping):
            raise TypeError(f"{_WHERE}: method_options[{key!r}] must be a dict of options, got {type(value).__name__}")
        out[key] = dict(value)
    return out


def _metrics(metrics: Any) -> Tuple[str, ...]:
    names = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(names, (list, tuple)) or not names:
        raise TypeError(f"{_WHERE}: metrics must be a metric name or a non-empty sequence of names, "
                        f"got {short(metrics)}")
    for name in names:
        check_choice(name, SIMILARITIES, where=_WHERE, name="metrics")
    if len(set(names)) != len(names):
        raise ValueError(f"{_WHERE}: metrics lists a name twice: {short(list(names))}")
    return tuple(names)


def _compared(h: Tensor, absolute: bool) -> Tensor:
    """The map that is compared: relevance (absolute) or the signed channel sum scaled to [-1, 1]."""
    if absolute:
        return relevance(h)
    s = h.sum(1) if h.dim() >= 3 else h
    scale = s.abs().flatten(1).amax(1).clamp(min=1e-12)
    return s / scale.reshape(-1, *([1] * (s.dim() - 1)))


def model_randomization(
    model: nn.Module,
    x: Tensor,
    method: Union[str, Sequence[str]] = "gradient",
    *,
    target: TargetLike = None,
    mode: str = "cascading",
    layers: Optional[Sequence[str]] = None,
    metrics: Union[str, Sequence[str]] = ("ssim", "spearman"),
    method_options: Optional[Mapping[str, Any]] = None,
    absolute: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> RandomizationResult:
    """Adebayo et al. (2018)'s model parameter randomisation test (see the module docstring).

    Args:
        model: an ``nn.Module`` in eval mode; never changed (the test works on a deep copy).
        x: a batch ``(N, ...)`` of inputs (images for SSIM).
        method: a method name (:func:`manipex.explainers.methods`) or a sequence of them; the
            figure then compares the methods, as Adebayo do.
        target: ``None`` (the class the original model predicts, fixed across randomisations),
            an int, or ``N`` class indices.
        mode: ``"cascading"`` (top ``k`` layers re-initialised at step ``k``) or
            ``"independent"`` (layer ``k`` alone).
        layers: module names to randomise, one per step, in the order given (top first for the
            cascade); ``None``: :func:`default_layers` (forward order, reversed). A container's
            name re-initialises everything inside it in one step.
        metrics: names from :data:`SIMILARITIES` (``"ssim"`` needs image maps).
        method_options: options of the method (one method), or ``{method: options}`` (several).
        absolute: compare relevance maps (absolute, normalised; default) or signed maps.
        seed: seeds the re-initialisations (per layer name; the global RNG is untouched).
        progress: show a progress bar (in a terminal or notebook).

    Returns:
        A :class:`RandomizationResult`: ``.table``, ``.scores``, ``.plot()``.
    """
    methods = _methods(method)
    check_choice(mode, MODES, where=_WHERE, name="mode")
    metric_names = _metrics(metrics)
    options = _options(method_options, methods)
    absolute = check_bool(absolute, where=_WHERE, name="absolute")
    seed = check_int(seed, where=_WHERE, name="seed", ge=0)
    progress = check_bool(progress, where=_WHERE, name="progress")
    check_call(model, x, where=_WHERE)

    explainers = {m: get_explainer(m, **options[m]) for m in methods}  # bad options fail here
    resolved = check_target(target, x.shape[0], where=_WHERE)
    if resolved is not None:
        resolved = resolved.to(x.device)
    target_t = predicted_target(model, x, resolved, where=_WHERE)
    if "ssim" in metric_names and (x.dim() < 3):
        raise ValueError(f"{_WHERE}: metrics: 'ssim' compares images, but x of shape {tuple(x.shape)} gives "
                         "vector maps; use metrics=('spearman',) or ('spearman', 'pcc')")

    clone = _copy(model)
    names = _check_layers(clone, layers, default_layers(clone, x))

    def maps(net: nn.Module) -> Dict[str, Tensor]:
        return {m: _compared(explainers[m](net, x, target_t), absolute) for m in methods}

    def similarity(ref: Dict[str, Tensor], now: Dict[str, Tensor]) -> Tensor:
        return torch.stack([torch.stack([METRICS[k](ref[m], now[m]).detach().float().cpu() for k in metric_names])
                            for m in methods])  # (methods, metrics, N)

    scores: List[Tensor] = []
    with progress_bar(total=len(names) + 1, desc=f"{mode} randomization", unit="step", enabled=progress) as bar:
        original = maps(clone)
        scores.append(similarity(original, original))
        bar.update(1)
        for name in _steps(clone, names, mode, seed):
            scores.append(similarity(original, maps(clone)))
            bar.set_postfix(layer=name, refresh=False)
            bar.update(1)
    all_scores = torch.stack(scores, 1)  # (methods, steps, metrics, N)
    steps = ("original", *names)
    kinds = ("", *(type(clone.get_submodule(n)).__name__ for n in names))
    return RandomizationResult(
        table=_table(all_scores, steps, methods, metric_names, mode), scores=all_scores, steps=steps,
        methods=methods, metrics=metric_names, mode=mode, target=target_t.detach().cpu(), absolute=absolute,
        seed=seed, method_options=options, kinds=kinds,
    )


def _table(scores: Tensor, steps: Tuple[str, ...], methods: Tuple[str, ...], metrics: Tuple[str, ...], mode: str):
    import pandas as pd

    n = scores.shape[-1]
    mean = scores.double().mean(-1)
    std = scores.double().std(-1) if n > 1 else torch.full_like(mean, float("nan"))
    rows = [
        {"method": m, "step": s, "layer": steps[s], "mode": mode, "metric": k,
         "mean": float(mean[i, s, j]), "std": float(std[i, s, j])}
        for i, m in enumerate(methods) for s in range(len(steps)) for j, k in enumerate(metrics)
    ]
    return pd.DataFrame(rows, columns=["method", "step", "layer", "mode", "metric", "mean", "std"])


__all__ = ["MODES", "SIMILARITIES", "RandomizationResult", "model_randomization", "randomized_models",
           "default_layers", "reinitialize"]
