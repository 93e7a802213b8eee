"""Input checks shared by every public entry point.

Every check raises ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, bad
value) with a message that names the argument, and never changes its arguments; the one
exception is :func:`check_autograd`, a ``RuntimeError`` (the state of torch, not an argument).
:func:`check_call` groups the checks of every entry point that runs a model on a batch. Values
in messages are quoted by :func:`short` (the config's messages too): the one vocabulary of
checks of the library.

What every metric refuses (:func:`check_batch`, :func:`check_pair`, :func:`model_outputs`), so
that no metric returns a silently wrong number:

- non-tensors, and tensors of a non-floating dtype (integer or bool maps would be rounded,
  wrap around or compare equal: an integer map once gave SSIM 1.0); convert with ``.float()``;
- tensors of the wrong rank, and empty ones (no sample, or no value per sample);
- NaN or Inf values (the message counts them);
- two batches of different shapes, or on different devices: nothing is broadcast, a batch of
  2 is never compared with a batch of 1.

Low-precision maps (float16, bfloat16) are computed in float32 (:func:`as_compute`): float16
cannot hold rank sums beyond 65504 nor integers beyond 2048 exactly, so Spearman and centers of
mass would be wrong. Results then come back as float32.
"""
from __future__ import annotations

import math
import numbers
import reprlib
import weakref
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor, nn

TargetLike = Union[None, int, Tensor]


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6
_REPR.maxlevel = 3


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters (with the full length where it was cut):
    what every message quotes of a user's value, however large or deeply nested the value is
    (the one quoting rule of the library's checks and of the config's)."""
    if isinstance(value, str):
        return cut(repr(value), limit) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} chars)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError, TypeError):  # an int beyond Python's digit limit, a broken __repr__
        text = f"<a {type(value).__name__}>"
    return cut(text, limit)


def check_real(value: Any, *, where: str, name: str, ge: Optional[float] = None, gt: Optional[float] = None,
               le: Optional[float] = None, lt: Optional[float] = None, allow_none: bool = False,
               allow_inf: bool = False) -> Optional[float]:
    """``value`` as a float: a real number (not a bool), finite unless ``allow_inf``, inside the
    bounds; ``None`` passes when ``allow_none``. NaN never passes (``nan > 0`` is False, so a
    check written as ``value <= 0`` would let it through)."""
    if value is None and allow_none:
        return None
    if isinstance(value, Tensor) and value.numel() == 1 and not value.requires_grad:
        value = value.item()
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        kind = "None or a number" if allow_none else "a number"
        raise TypeError(f"{where}: {name} must be {kind}, got {short(value)} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{where}: {name} must be a finite number, got {value!r}")
    bounds = [(ge, ">=", value >= (ge or 0)), (gt, ">", value > (gt or 0)),
              (le, "<=", value <= (le or 0)), (lt, "<", value < (lt or 0))]
    for bound, op, ok in bounds:
        if bound is not None and not ok:
            raise ValueError(f"{where}: {name} must be {op} {bound:g}, got {value!r}")
    return value


def check_int(value: Any, *, where: str, name: str, ge: Optional[int] = None, le: Optional[int] = None,
              allow_none: bool = False) -> Optional[int]:
    """``value`` as an int (not a bool, not a float) inside ``[ge, le]``; ``None`` when ``allow_none``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        kind = "None or an int" if allow_none else "an int"
        raise TypeError(f"{where}: {name} must be {kind}, got {short(value)} ({type(value).__name__})")
    if ge is not None and value < ge:
        raise ValueError(f"{where}: {name} must be >= {ge}, got {value}")
    if le is not None and value > le:
        raise ValueError(f"{where}: {name} must be <= {le}, got {value}")
    return value


def check_bool(value: Any, *, where: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False, got {short(value)}")
    return value


def check_choice(value: Any, choices, *, where: str, name: str) -> Any:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}: {name} must be one of {', '.join(map(repr, choices))}, got {short(value)}")
    return value


def check_autograd(where: str) -> None:
    """Maps are gradients: refuse to start under ``torch.inference_mode()``, where autograd is off
    and no tensor made can ever be differentiated (``torch.no_grad()`` is fine: it is lifted)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{where}: explanation maps need autograd, which torch.inference_mode() switches off; "
            "call it outside inference mode (under torch.no_grad() it works: manipex turns gradients "
            "back on where it needs them)"
        )


#: model -> the (tensor, version) pairs last found finite: attacks call a method at every step,
#: and an unchanged model need not be scanned again (every in-place change bumps ``_version``).
_CHECKED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def check_parameters(model: nn.Module, *, where: str) -> None:
    """Every floating parameter and buffer of ``model`` is finite and usable by autograd: one
    NaN weight turns every map into NaN, silently. Names the first bad tensor. A model whose
    tensors have not changed since they were last found finite is not scanned again (a
    change through ``p.data``, which autograd does not count, is not seen then)."""
    tensors = [("parameter", name, t) for name, t in model.named_parameters()]
    tensors += [("buffer", name, t) for name, t in model.named_buffers() if t.is_floating_point()]
    stamp = tuple((id(t), t._version) for _, _, t in tensors)
    if _CHECKED.get(model) == stamp:
        return
    for kind, name, t in tensors:
        if t.is_inference():
            raise RuntimeError(f"{where}: the model's {kind} {name!r} was created under torch.inference_mode() "
                               "and cannot take part in autograd; create or load the model outside inference mode")
    flags = [torch.isfinite(t).all() for _, _, t in tensors if t.is_floating_point() and t.numel()]
    if flags and not bool(torch.stack([f.to(flags[0].device) for f in flags]).all()):
        for kind, name, t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"{where}: the model's {kind} {name!r} holds {bad} NaN or Inf values; "
                                 "every map of this model would be NaN")
    _CHECKED[model] = stamp


def check_dtype_match(model: nn.Module, x: Tensor, *, where: str, name: str = "x") -> None:
    """``x`` has the dtype and device of the model's floating parameters (a float64 model with
    float32 inputs, or float16 inputs with a float32 model, fails deep inside a layer
    otherwise). A model spread over several dtypes or devices is left to itself."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    devices = {p.device for p in params}
    if len(devices) == 1 and x.device not in devices:
        raise ValueError(f"{where}: {name} is on {x.device} but the model's parameters are on "
                         f"{next(iter(devices))}; move one of them (e.g. {name}.to({str(next(iter(devices)))!r}))")
    dtypes = {p.dtype for p in params}
    if len(dtypes) == 1 and x.dtype not in dtypes:
        (dtype,) = dtypes
        raise TypeError(f"{where}: {name} has dtype {x.dtype} but the model's parameters are {dtype}; "
                        f"convert one of them (e.g. {name}.to({dtype}) or model.to({x.dtype}))")


def check_model(model: object, *, where: str) -> nn.Module:
    """Refuse anything that is not an ``nn.Module`` in eval mode, a TorchScript module (its
    layers cannot be traced, replaced or hooked) and a model on the meta device (no weights)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"{where}: the model is a TorchScript module ({type(model).__name__}); manipex traces a "
                        "model's graph, replaces its activations (beta-smoothing) and differentiates its layers, "
                        "which a compiled script hides: pass the nn.Module the script was made from")
    meta = next((name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if meta is not None:
        raise ValueError(f"{where}: the model's {meta!r} is on the meta device (a shape without values); load "
                         "its weights first (e.g. model.to_empty(device='cpu') and load_state_dict)")
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"{where}: the model is in training mode (module {training[0]!r}); explanations "
            "of a model with dropout or batch statistics are random. Call model.eval() first."
        )
    return model


def check_input(x: object, *, where: str, name: str = "x", min_dim: int = 2) -> Tensor:
    """Refuse non-tensors, non-float dtypes, empty batches, low rank and non-finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
    check_storage(x, where=where, name=name)
    if not x.is_floating_point():
        raise TypeError(f"{where}: {name} must have a floating dtype, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{where}: {name} must be a batch of shape (N, ...) with at least {min_dim} "
            f"dimensions, got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{where}: {name} is an empty batch (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{where}: {name} contains {bad} NaN or Inf values")
    return x


def check_storage(t: Tensor, *, where: str, name: str) -> None:
    """Refuse a sparse (or other non-strided) tensor and one on the meta device, naming it."""
    if t.layout != torch.strided:
        raise TypeError(f"{where}: {name} must be a dense tensor, got layout {t.layout}; convert it with "
                        f"{name}.to_dense()")
    if t.is_meta:
        raise ValueError(f"{where}: {name} is on the meta device (a shape without values); give its values")


def check_target(target: TargetLike, n: int, *, where: str) -> Optional[Tensor]:
    """Turn ``target`` into ``None`` (predicted class) or a LongTensor of ``n`` class indices.

    The range is checked against the model's output by :func:`check_target_range`.
    """
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError(f"{where}: target must be None, an int or a tensor of class indices, got bool")
    if isinstance(target, numbers.Integral):  # an int, or a NumPy integer such as y[i] of an array
        if not -2**63 <= int(target) < 2**63:
            raise ValueError(f"{where}: target {short(int(target))} is not a class index (beyond int64)")
        return torch.full((n,), int(target), dtype=torch.long)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{where}: target must hold integer class indices, got dtype {target.dtype}")
        if target.dim() == 0:
            return target.reshape(1).expand(n).long()
        if target.dim() != 1 or target.shape[0] != n:
            raise ValueError(
                f"{where}: target must have shape ({n},) to match the batch, got {tuple(target.shape)}"
            )
        return target.long()
    raise TypeError(
        f"{where}: target must be None, an int or a tensor of class indices, got {type(target).__name__}"
    )


def check_call(model: object, x: object, *, where: str, autograd: bool = True, name: str = "x") -> Tensor:
    """The checks of every entry point that runs ``model`` on a batch ``x``, before any work:
    the model (eval mode, finite parameters), the batch (float, non-empty, finite), matching
    dtypes, and autograd available when the work needs gradients."""
    check_model(model, where=where)
    check_input(x, where=where, name=name)
    if autograd:
        check_autograd(where)
    check_parameters(model, where=where)
    check_dtype_match(model, x, where=where, name=name)
    return x


def check_labelled_data(data: Any, *, where: str) -> "tuple[Tensor, Tensor]":
    """``data`` as ``(x, y)``: a float batch and ``N`` integer labels as a LongTensor (their
    range is checked against the model's outputs with :func:`check_target_range`)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{where}: data must be a pair (x, y) of tensors, got {type(data).__name__}")
    x, y = data
    check_input(x, where=where)
    if not isinstance(y, Tensor):
        raise TypeError(f"{where}: labels y must be a tensor of N class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{where}: labels y must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{where}: labels y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    return x, y.long()


def describe(value: Any) -> str:
    """What a model returned, in words: ``a tensor of shape (4, 10)``, ``a tuple of 2 tensors``."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        kinds = {type(v).__name__ for v in value}
        what = "tensors" if kinds == {"Tensor"} else "items"
        return f"a {type(value).__name__} of {len(value)} {what}"
    if isinstance(value, dict):
        return f"a dict with keys {short(sorted(map(str, value)), 60)}"
    return f"a {type(value).__name__}"


def check_output(out: Any, n: Optional[int], *, where: str) -> Tensor:
    """The model must map a batch of ``n`` inputs to one logits tensor of shape ``(n, K)``."""
    if not isinstance(out, Tensor) or out.dim() != 2 or (n is not None and out.shape[0] != n):
        hint = ""
        if isinstance(out, (tuple, list, dict)):
            hint = ("; wrap the model in a module whose forward returns only the logits, "
                    "e.g. out[0] or out['logits']")
        expected = "(N, classes)" if n is None else f"(N, classes) = ({n}, K)"
        raise ValueError(f"{where}: the model must return one logits tensor of shape {expected}, "
                         f"but it returned {describe(out)}{hint}")
    if not out.is_floating_point():
        raise TypeError(f"{where}: the model must return floating logits, got dtype {out.dtype}")
    return out


def forward(model: nn.Module, x: Tensor, *, where: str) -> Tensor:
    """``model(x)``, checked to be one logits tensor ``(N, K)``; an error the model raises about
    the input's shape or dtype is said to be one (:func:`translate_runtime_error`)."""
    try:
        out = model(x)
    except RuntimeError as err:
        clear = translate_runtime_error(err, x, where=where)
        if clear is err:
            raise
        raise clear from err
    return check_output(out, x.shape[0], where=where)


#: Fragments of RuntimeError messages that are about the shape or dtype of the input.
_SHAPE_OR_DTYPE = ("shape", "size", "dtype", "type", "dimension", "channels", "mat1", "mat2",
                   "expected", "must match", "not implemented for")


def translate_runtime_error(err: RuntimeError, x: Tensor, *, where: str) -> BaseException:
    """The error to raise for ``err``, which the model raised on ``x``: out of memory passes
    with advice, an error recognisably about the input's shape or dtype becomes a ValueError
    that says so, and anything else passes as it is."""
    text = str(err)
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in text.lower():
        err.add_note(f"{where}: a batch of {x.shape[0]} inputs did not fit in memory; explain fewer "
                     "inputs at a time, or lower the method's batch_size option where it has one")
        return err
    if "does not require grad and does not have a grad_fn" in text:
        return ValueError(f"{where}: the model's output does not depend on x through autograd: its forward runs "
                          "under torch.no_grad() or inference_mode, or detaches the input (.detach(), .numpy(), "
                          "a non-differentiable op); gradients and every map made from them need that graph")
    if any(fragment in text.lower() for fragment in _SHAPE_OR_DTYPE):
        return ValueError(f"{where}: the model raised an error on x of shape {tuple(x.shape)} and dtype "
                          f"{x.dtype}; check that x has the shape and dtype the model expects. {text[:500]}")
    return err


def check_target_range(target: Tensor, num_classes: int, *, where: str, what: str = "target") -> None:
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)][0].item()
        raise ValueError(f"{where}: {what} {bad} is out of range for a model with {num_classes} classes")


def select_target(out: Tensor, target: Optional[Tensor], *, where: str) -> Tensor:
    """Class indices for logits ``out``: ``target`` checked against ``out``, or the arg-max."""
    check_output(out, out.shape[0] if isinstance(out, Tensor) else None, where=where)
    if target is None:
        return out.argmax(dim=1)
    target = target.to(out.device)
    check_target_range(target, out.shape[1], where=where)
    return target


def predicted_target(model: nn.Module, x: Tensor, target: Optional[Tensor], *, where: str) -> Tensor:
    """Resolve ``target`` at ``x`` with one forward pass that builds no graph.

    Used by methods that evaluate the model elsewhere than at ``x`` (integrated gradients,
    SmoothGrad, occlusion) but explain the class of ``x``. Class indices carry no gradient,
    so skipping the graph here changes no derivative.
    """
    with torch.no_grad():
        out = forward(model, x, where=where)
    return select_target(out, target, where=where)


# -- batches of maps, images and outputs (the metrics' checks) ----------------------------------------

LOW_PRECISION = (torch.float16, torch.bfloat16)
"""Floating dtypes that metrics compute in float32."""


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a metric computes in: the promoted dtype of ``tensors``, at least float32."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in LOW_PRECISION else dtype


def check_batch(t: object, *, where: str, name: str, min_dim: int = 2, max_dim: Optional[int] = None) -> Tensor:
    """Refuse a non-tensor, a non-floating dtype, a rank outside ``[min_dim, max_dim]``, an empty
    tensor, and NaN or Inf values. Returns ``t`` itself (unchanged)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{where}: {name} must have a floating dtype, got {t.dtype}; convert it with .float()"
        )
    if t.dim() < min_dim or (max_dim is not None and t.dim() > max_dim):
        if max_dim is None:
            want = f"at least {min_dim} dimensions (N, ...)"
        elif max_dim == min_dim:
            want = f"exactly {min_dim} dimensions"
        else:
            want = f"{min_dim} to {max_dim} dimensions"
        raise ValueError(f"{where}: {name} must be a batch with {want}, got shape {tuple(t.shape)}")
    check_storage(t, where=where, name=name)
    if t.numel() == 0:
        raise ValueError(
            f"{where}: {name} is empty (shape {tuple(t.shape)}); it needs at least one sample "
            "with at least one value"
        )
    check_finite(t, where=where, name=name)
    return t


def check_finite(t: Tensor, *, where: str, name: str) -> None:
    """Refuse NaN and Inf values, saying how many of each there are."""
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        nan = int(torch.isnan(t).sum())
        inf = int((~finite).sum()) - nan
        parts = ([f"{nan} NaN"] if nan else []) + ([f"{inf} Inf"] if inf else [])
        raise ValueError(
            f"{where}: {name} contains {' and '.join(parts)} value{'s' if nan + inf > 1 else ''} "
            f"(of {t.numel()}, shape {tuple(t.shape)})"
        )


def check_pair(
    a: object,
    b: object,
    *,
    where: str,
    names: Tuple[str, str] = ("a", "b"),
    min_dim: int = 2,
    max_dim: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Check two batches with :func:`check_batch`, require the same shape and device, and
    return them in :func:`compute_dtype` (the arguments themselves are not changed)."""
    a = check_batch(a, where=where, name=names[0], min_dim=min_dim, max_dim=max_dim)
    b = check_batch(b, where=where, name=names[1], min_dim=min_dim, max_dim=max_dim)
    check_alike(a, b, where=where, names=names)
    dtype = compute_dtype(a, b)
    return a.to(dtype), b.to(dtype)


def check_alike(a: Tensor, b: Tensor, *, where: str, names: Tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{where}: {names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)} (batches are compared sample by sample, never broadcast)"
        )
    if a.device != b.device:
        raise ValueError(f"{where}: {names[0]} is on {a.device} but {names[1]} on {b.device}")


def as_compute(t: Tensor) -> Tensor:
    """``t`` in :func:`compute_dtype` (float32 for float16/bfloat16, else itself)."""
    return t.to(compute_dtype(t))


def model_outputs(model: object, x: object, x_adv: object, *, where: str) -> Tuple[Tensor, Tensor]:
    """Logits of ``model`` at ``x`` and ``x_adv``, without a graph, after checking all three.

    The model must be an ``nn.Module`` in eval mode (:func:`manipex._validation.check_model`;
    it is not changed), ``x`` and ``x_adv`` batches of the same shape, dtype and device as the
    model's parameters, and each output logits ``(N, K)`` without NaN or Inf."""
    model = check_model(model, where=where)
    x = check_batch(x, where=where, name="x")
    x_adv = check_batch(x_adv, where=where, name="x_adv")
    check_alike(x, x_adv, where=where, names=("x", "x_adv"))
    for name, t in (("x", x), ("x_adv", x_adv)):
        check_dtype_match(model, t, where=where, name=name)
    with torch.no_grad():
        out, out_adv = forward(model, x, where=where), forward(model, x_adv, where=where)
    check_finite(out, where=where, name="the model's output at x")
    check_finite(out_adv, where=where, name="the model's output at x_adv")
    return out, out_adv
