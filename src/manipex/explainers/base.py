"""One base for every explanation method, a registry by name, and :func:`explain`.

A method is a subclass of :class:`Explainer` that declares its options (name -> default) as a
class attribute and implements :meth:`Explainer.attribute`. :func:`explain` validates the call
once for all methods (model, input, target, options), so that a method only computes.

Conventions (DESIGN.md): a map has the shape of ``x``; with ``create_graph=True`` it carries the
exact autograd graph w.r.t. ``x`` and every parameter; the model is never left changed.
"""
from __future__ import annotations

import abc
import contextlib
import contextvars
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Type, Union

import torch
from torch import Tensor, nn

from .._registry import Registry
from .._second_order import second_order
from .._validation import TargetLike, check_call, check_target, translate_runtime_error
from ..models.interfaces import Output, logits_model
from ..surgery import has_relu, softplus, warn_nothing_to_smooth, warn_unsmoothed

_REGISTRY: Registry[Type["Explainer"]] = Registry("method")

#: Options every method accepts. ``softplus_beta``: compute the map on the model with every
#: ReLU replaced by Softplus(β) (β-smoothing, Dombrowski et al. 2019, Sec. 4); None: as is.
COMMON_OPTIONS: Dict[str, Any] = {"softplus_beta": None}


class Explainer(abc.ABC):
    """Base of all explanation methods.

    Subclasses set ``name``, ``options`` (every accepted keyword with its default),
    ``differentiable_input`` (False where the map is not a smooth function of the input) and
    ``needs_autograd``, and implement :meth:`attribute`; :meth:`validate_options` checks the
    options (with :func:`manipex._validation.check_real` and its kin) when the method is made.
    """

    name: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Any]] = {}
    differentiable_input: ClassVar[bool] = True
    #: False where the map needs no gradient (occlusion): it then also works under
    #: ``torch.inference_mode()`` unless ``create_graph`` is asked for.
    needs_autograd: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _REGISTRY.register(cls.name, cls)

    def __init__(self, **options: Any) -> None:
        accepted = {**COMMON_OPTIONS, **self.options}
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = ", ".join(sorted(accepted))
            raise TypeError(
                f"explain(method={self.name!r}) got unknown option {unknown[0]!r}; valid options: {valid}"
            )
        self.config: Dict[str, Any] = {**accepted, **options}
        beta = self.config["softplus_beta"]
        if beta is not None and (not isinstance(beta, (int, float)) or isinstance(beta, bool)
                                 or not 0 < beta < float("inf")):
            raise ValueError(f"explain(method={self.name!r}): softplus_beta must be None or a positive number, "
                             f"got {beta!r}")
        self.validate_options()

    def validate_options(self) -> None:
        """Check ``self.config``; raise ValueError/TypeError naming the option."""

    def __repr__(self) -> str:
        """The method's name and the options that differ from its defaults, e.g.
        ``lrp(composite='epsilon')``: what labels, progress bars and run keys show for an
        explainer object (the same for equal options, so a checkpoint key is stable)."""
        defaults = {**COMMON_OPTIONS, **self.options}
        changed = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if not _same(v, defaults.get(k)))
        return f"{self.name}({changed})" if changed else self.name

    __str__ = __repr__

    @abc.abstractmethod
    def attribute(
        self, model: nn.Module, x: Tensor, target: Optional[Tensor], create_graph: bool
    ) -> Tensor:
        """Return the map of ``x``'s shape. ``target`` is None (predicted) or N class indices."""
        ...

    def compute(
        self, model: nn.Module, x: Tensor, target: Optional[Tensor], create_graph: bool
    ) -> Tensor:
        """:meth:`attribute`, on the β-smoothed model when ``softplus_beta`` is set.

        The ReLUs are swapped in place for the call and always put back (the graph of the map
        refers to functions, not modules, so it stays valid afterwards).
        """
        beta = self.config["softplus_beta"]
        if beta is None:
            return self.attribute(model, x, target, create_graph)

        where = f"explain(method={self.name!r}, softplus_beta={beta})"
        if not has_relu(model):
            warn_nothing_to_smooth(model, where)
        warn_unsmoothed(model, where)
        with softplus(model, beta):
            return self.attribute(model, x, target, create_graph)

    def __call__(
        self, model: nn.Module, x: Tensor, target: TargetLike = None, *, create_graph: bool = False,
        output: Optional[Output] = None,
    ) -> Tensor:
        """The map of ``x``, as :func:`explain` computes it (its arguments, ``output`` too)."""
        where = f"explain(method={self.name!r})"
        if not isinstance(create_graph, bool):
            raise TypeError(f"{where}: create_graph must be True or False, got {create_graph!r}")
        check_call(model, x, where=where, autograd=self.needs_autograd or create_graph)
        model = logits_model(model, x, output, where=where)  # a dict, tuple or .logits output: its logits
        resolved = check_target(target, x.shape[0], where=where)
        if resolved is not None:
            resolved = resolved.to(x.device)
        if x.is_inference():  # made under inference_mode: a normal tensor with the same values
            x = x.clone()
        exact = second_order(model, where) if create_graph else contextlib.nullcontext()
        with torch.enable_grad(), exact:  # maps are gradients: also under a caller's no_grad()
            try:
                h = self.compute(model, x, resolved, create_graph)
            except RuntimeError as err:  # e.g. a conv net given (N, H, W) instead of (N, C, H, W)
                clear = translate_runtime_error(err, x, where=where)
                if clear is err:
                    raise
                raise clear from err
        return h if create_graph else h.detach()


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) if not isinstance(a, Tensor) and not isinstance(b, Tensor) else a is b
    except (TypeError, ValueError, RuntimeError):
        return a is b


def get_explainer(method: Union[str, Explainer], **options: Any) -> Explainer:
    """The explainer of ``method``: the method registered under that name made with
    ``options``, or an :class:`Explainer` object (Captum's way: ``LRP(composite="epsilon")``
    carries its options), copied with ``options`` on top of its own (the caller's object is
    never changed). Every public function that takes ``method`` takes either."""
    if isinstance(method, Explainer):
        return type(method)(**{**method.config, **options})
    if not isinstance(method, str):
        raise TypeError(f"explain: method must be a method name (str) or an Explainer, got {type(method).__name__}")
    try:
        cls = _REGISTRY.get(method)
    except ValueError as err:
        raise ValueError(f"explain: {err}") from None
    return cls(**options)


def method_name(method: Union[str, Explainer]) -> str:
    """The name of ``method`` (a name, or an :class:`Explainer` object's ``name``), for labels."""
    return method.name if isinstance(method, Explainer) else str(method)


def methods() -> List[str]:
    """Names of all registered explanation methods."""
    return _REGISTRY.names()


def explainer_class(method: str) -> Type["Explainer"]:
    """The explainer class registered as ``method`` (its docstring describes the method);
    ``ValueError`` naming the registered ones otherwise."""
    return _REGISTRY.get(method)


def requires_attention(method: str) -> bool:
    """Whether ``method`` reads a model's self-attention (attention rollout), so that it applies
    to transformers only and refuses other models."""
    return bool(getattr(_REGISTRY.get(method), "requires_attention", False))


def explain(
    model: nn.Module,
    x: Tensor,
    method: Union[str, "Explainer"] = "gradient",
    target: TargetLike = None,
    *,
    create_graph: bool = False,
    output: Optional[Output] = None,
    **options: Any,
) -> Tensor:
    """Explanation map of ``model`` at the batch ``x`` for ``target``, by ``method``.

    Args:
        model: an ``nn.Module`` in eval mode mapping ``x`` to logits ``(N, K)`` (or to an
            output holding them, see ``output``). It is left
            exactly as it was (parameters, modules, hooks, flags), also when an error is raised.
        x: a float batch ``(N, ...)``.
        method: a name from :func:`manipex.explainers.methods`, e.g. ``"gradient"``, ``"lrp"``,
            or an explainer object carrying its options, e.g. ``LRP(composite="epsilon")``
            (``options`` then go on top of its own).
        target: ``None`` (the predicted class), an int, or a tensor of ``N`` class indices.
        create_graph: keep the autograd graph, so that the map can be differentiated exactly
            (to second order) w.r.t. ``x`` and every parameter, as attacks and defenses need.
        output: where the model returns more than a logits tensor, what selects the logits
            (:class:`manipex.models.Logits`): an attribute or key name (``"logits"``), an index
            into a tuple (``0``), or a function of the output. ``None`` (default): a model that
            returns a tensor is used as it is; any other is run as ``Logits(model, "auto")``
            (its ``.logits``, its ``"logits"`` key, or the logits of a tuple), with a
            :class:`~manipex.models.ModelOutputWarning` once per model saying which part is
            used. Which kind a model is, manipex learns once per model object, from one forward
            of the first sample under ``torch.no_grad()``.
        **options: options of the method, e.g. ``steps=30`` for integrated gradients.

    Returns:
        A tensor of ``x``'s shape. Use :func:`manipex.relevance` for the normalised heatmap
        that the papers compare.

    Example:
        >>> h = manipex.explain(model, x, "lrp", composite="epsilon", epsilon=0.1)
        >>> r = manipex.relevance(h)          # (N, H, W), each summing to 1
    """
    return get_explainer(method, **options)(model, x, target, create_graph=create_graph, output=output)


def channel_axis(h: Tensor) -> int:
    """The axis :func:`relevance` sums by default: 1 for images ``(N, C, H, W)`` and volumes,
    the last for token embeddings ``(N, L, D)``."""
    return -1 if h.dim() == 3 else 1


def relevance(h: Tensor, *, eps: float = 1e-12, channel_dim: Optional[int] = None) -> Tensor:
    """The relevance map that the papers compare (Dombrowski et al. 2019, Sec. 3):

    ``r = sum_c |h_c|`` over the channel axis, normalised to sum 1 per sample. For a batch of
    images ``(N, C, H, W)`` (and volumes) the channels are axis 1, giving ``(N, H, W)``; a
    batch of token embeddings ``(N, L, D)`` (a text transformer explained w.r.t. its
    ``inputs_embeds``) is summed over the embedding axis, giving one relevance per token
    ``(N, L)``; a batch of vectors ``(N, D)`` has no channel axis and gives ``(N, D)``.
    ``channel_dim`` names the axis for another layout (``1`` for 1-D signals ``(N, C, L)``).
    Differentiable; an all-zero map stays zero.
    """
    if not isinstance(h, Tensor) or not h.is_floating_point():
        raise TypeError("relevance: h must be a floating torch.Tensor")
    if h.dim() < 2:
        raise ValueError(f"relevance: h must have shape (N, ...), got {tuple(h.shape)}")
    if channel_dim is not None and (not isinstance(channel_dim, int) or isinstance(channel_dim, bool)
                                    or not 1 <= channel_dim % h.dim() < h.dim() or h.dim() < 3):
        raise ValueError(f"relevance: channel_dim must be a non-batch axis of a map with a channel axis, got "
                         f"{channel_dim!r} for shape {tuple(h.shape)}")
    r = h.abs()
    if h.dim() >= 3:
        axis = channel_dim if channel_dim is not None else channel_axis(h)
        r = r.sum(dim=axis)
    total = r.flatten(1).sum(dim=1).reshape(-1, *([1] * (r.dim() - 1)))
    return r / (total + eps)


def explain_many(
    model: nn.Module, x: Tensor, target: Optional[Tensor], create_graph: bool, specs: Any
) -> List[Tensor]:
    """Maps of several ``(method, options)`` specs, for aggregates and reports."""
    maps = []
    for spec in specs:
        name, opts = (spec, {}) if isinstance(spec, str) else spec
        maps.append(get_explainer(name, **opts).compute(model, x, target, create_graph))
    return maps


class OutputCapture:
    """What :func:`capture_output` saw: ``output``, the model's output at exactly ``x`` (the same
    tensor object) as a method computed it on its way to the map, with its graph; None where
    the method ran no forward at ``x`` itself (integrated gradients, SmoothGrad, occlusion)."""

    def __init__(self, x: Tensor) -> None:
        self.x, self.output = x, None


_CAPTURE: "contextvars.ContextVar[Optional[OutputCapture]]" = contextvars.ContextVar("manipex_capture", default=None)


@contextlib.contextmanager
def capture_output(x: Tensor):
    """Within the block, keep the output of the model at ``x`` that a method computes (see
    :func:`report_output`), so that an attack step reuses its forward pass for the output
    term instead of running the model again."""
    capture = OutputCapture(x)
    token = _CAPTURE.set(capture)
    try:
        yield capture
    finally:
        _CAPTURE.reset(token)


def report_output(x: Tensor, output: Tensor) -> None:
    """Called by a method with the model's ``output`` at its input ``x``; kept by an enclosing
    :func:`capture_output` of that very tensor."""
    capture = _CAPTURE.get()
    if capture is not None and capture.output is None and x is capture.x:
        capture.output = output


def requires_grad_input(x: Tensor) -> Tensor:
    """``x`` itself when it is already in a graph, else a leaf copy that requires grad.

    Gradient-based maps need an input that requires grad; the user's tensor is never modified.
    """
    return x if x.requires_grad else x.detach().requires_grad_(True)


__all__ = ["Explainer", "explain", "relevance", "methods", "get_explainer", "explain_many", "requires_grad_input"]
