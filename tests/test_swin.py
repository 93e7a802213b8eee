"""torchvision's Swin attention through the propagation rules (manipex.explainers.swin).

The ``swin`` replica (tests/transformer_replicas.py) calls an fx-wrapped copy of torchvision's
``shifted_window_attention``; while tracing, manipex swaps in a traceable equivalent
(:func:`manipex.explainers.swin.traceable_shifted_window_attention`) and puts the original back.
Checked here in float64: the traced graph computes the model's function (exactly, at several
input sizes, one graph for all), its steps are the kinds the rules know, every propagation
method runs, the maps are exact to second order (finite differences), CP-LRP conserves on the
plain replica, the model and the module globals are unchanged (also after errors), Swin v2 and
training-mode dropout are refused by name, and torchvision's PatchMerging traces too."""
from __future__ import annotations

import copy
from typing import List, Optional

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import _symbolic_trace

import manipex
import transformer_replicas as tr
from conftest import assert_same_state, state_of
from manipex.explainers import swin
from manipex.explainers.composites import composites
from manipex.explainers.graph import UnsupportedModelError, model_graph
from test_derivatives import check_second_order

F64 = torch.float64


def replica(plain: bool = False):
    return tr.build("swin", plain=plain, dtype=F64), tr.example("swin", dtype=F64)


def images(h: int, w: int, batch: int = 2, seed: int = 1) -> Tensor:
    return torch.rand(batch, tr.CHANNELS, h, w, generator=torch.Generator().manual_seed(seed), dtype=F64)


def table_snapshot():
    return dict(_symbolic_trace._wrapped_fns_to_patch)


# --- the traced graph is the model's function -----------------------------------------------------

#: (image height, width) -> feature map (image / 2) with window 4: 16x16 -> 8x8 (shifted by 2);
#: 12x12 -> 6x6, padded to 8x8 (shifted); 10x14 -> 5x7, padded to 8x8; 8x8 -> 4x4: a window covers
#: the map, the shift is off at run time; 6x6 -> 3x3 padded to 4x4, shift off.
SIZES = [(16, 16), (12, 12), (10, 14), (8, 8), (6, 6)]


@pytest.mark.parametrize("plain", [False, True])
def test_one_graph_computes_the_model_at_every_input_size(plain):
    """Traced symbolically once (``graph.shape`` None: the shape arithmetic and the shift mask
    are constant nodes evaluated at run time), the graph equals the model at every size."""
    model, x = replica(plain)
    graph = model_graph(model, "lrp", x)
    assert graph.shape is None
    for h, w in SIZES:
        xs = images(h, w, batch=3)
        assert model_graph(model, "lrp", xs) is graph
        out, _ = graph.forward(xs)
        assert (out - model(xs)).abs().max() <= 1e-12


def test_the_steps_are_layers_the_rules_know():
    """Per block: pad, (roll), window partition, the qkv and proj F.linear on the model's own
    parameters, q scaled, q @ k^T, + relative position bias, (+ shift mask), softmax, @ v,
    window reverse, (roll back), unpad; no opaque call reads the signal."""
    model, x = replica()
    graph = model_graph(model, "lrp", x)
    _, records = graph.forward(x)
    kinds = [r.layer.kind for r in records]
    assert kinds.count("softmax") == 2 and kinds.count("matmul") == 4
    names = [r.layer.name for r in records]
    assert sum("roll" in n for n in names) == 2  # only the shifted block rolls, forth and back
    assert sum("call pad" in n for n in names) == 2
    functional = [r for r in records if r.layer.kind == "dense" and r.layer.call is not None]
    attns = [model.features[1][i].attn for i in range(2)]
    expected = [p for a in attns for p in (a.qkv.weight, a.proj.weight)]
    assert len(functional) == 4 and all(r.parameters()[0] is p for r, p in zip(functional, expected))  # live, in order
    # the shifted block adds the relative position bias and the mask, the other only the bias
    adds = [r for r in records if r.layer.kind == "add" and len(r.inputs) == 1]
    assert len(adds) == 3
    assert all(n.op != "call_function" or n.target is not tr.shifted_window_attention for n in graph.nodes)
    helpers = {n.target for n in graph.nodes if n.op == "call_function"}
    assert {swin.window_geometry, swin.shift_mask} <= helpers


def test_the_shift_mask_is_torchvisions():
    """The mask helper gives torchvision's -100 mask (the replica's own code, in place on
    ``new_zeros``) for the shifted windows; all zeros where the shift is off."""
    mask = swin.shift_mask(8, 8, [4, 4], 2, 2, F64, "cpu")
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all() and (mask[3] != 0).any()
    assert (swin.shift_mask(4, 4, [4, 4], 0, 0, F64, "cpu") == 0).all()
    geometry = swin.window_geometry(2, 6, 5, 16, [4, 4], [2, 2], 2)
    assert (geometry.pad_H, geometry.pad_W, geometry.shift_h, geometry.shift_w, geometry.windows) == (8, 8, 2, 2, 4)
    assert swin.window_geometry(2, 4, 4, 16, [4, 4], [2, 2], 2)[4:6] == (0, 0)


def test_the_traced_model_does_as_the_model_where_the_shift_is_off():
    """A 4x4 feature map (8x8 image): torchvision turns the shift off; the graph rolls by 0 and
    adds a zero mask: the forward and the gradient-type maps are exactly those of the model
    with shift 0, LRP's proportional rule at the zero add differs by the stabiliser only."""
    model, _ = replica()
    unshifted = copy.deepcopy(model)
    unshifted.features[1][1].attn.shift_size = [0, 0]
    x = images(8, 8)
    assert torch.equal(model(x), unshifted(x))
    for method in ("guided_backprop", "gradient"):
        assert torch.equal(manipex.explain(model, x, method, 0), manipex.explain(unshifted, x, method, 0))
    for composite in ("attn_lrp", "cp_lrp"):
        a, b = (manipex.explain(m, x, "lrp", 0, composite=composite, stabilizer=1e-12) for m in (model, unshifted))
        assert (a - b).abs().max() <= 1e-9 * b.abs().max()


def test_a_forward_with_shape_checks_is_traced_per_shape_with_the_same_steps():
    """Where the model around Swin reads the input's shape in Python, the graph is traced by the
    meta tracer at the example's shape: the same steps (the helpers then run while tracing)."""

    class Checked(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            if x.shape[1] != 3:
                raise ValueError("three channels expected")
            return self.net(x)

    model, x = replica()
    checked = Checked(model).eval()
    with pytest.warns(UserWarning):  # the meta tracer's warnings on nodes without metadata
        graph = model_graph(checked, "lrp", x)
    assert graph.shape == tuple(x.shape)
    out, _ = graph.forward(x)
    assert (out - model(x)).abs().max() <= 1e-12
    a = manipex.explain(checked, x, "lrp", 0, composite="attn_lrp")
    assert torch.allclose(a, manipex.explain(model, x, "lrp", 0, composite="attn_lrp"), atol=1e-12, rtol=0)


# --- every propagation method ------------------------------------------------------------------

PROPAGATION = ["guided_backprop", "pattern_attribution", "agg_mean", "agg_var"]


def method_options(method: str, model) -> dict:
    if method == "pattern_attribution":
        torch.manual_seed(3)
        return {"patterns": manipex.fit_patterns(model, torch.cat([tr.example("swin", 16, seed=s, dtype=F64)
                                                                   for s in range(2)]))}
    return {}


@pytest.mark.parametrize("method", PROPAGATION + [f"lrp:{c}" for c in composites()])
def test_every_propagation_method_runs(method):
    model, x = replica()
    before = state_of(model)
    method, _, composite = method.partition(":")
    opts = {"composite": composite} if composite else method_options(method, model)
    for xs in (x, images(12, 12)):
        r = manipex.explain(model, xs, method, 0, **opts)
        assert r.shape == xs.shape and torch.isfinite(r).all() and r.abs().sum() > 0
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("method,opts,step", [
    ("guided_backprop", {}, 1e-6),
    ("lrp", {"composite": "attn_lrp", "epsilon": 1e-3}, 3e-8),
    ("lrp", {"composite": "cp_lrp", "epsilon": 1e-3}, 3e-8),
])
def test_second_order_matches_finite_differences(method, opts, step):
    """Step 3e-8 for LRP: the ε-rule divides by pre-activations of the first block's qkv
    projection near zero (and the uniform matmul rule by entries of ``A @ v``), so the map
    curves steeply in those weights. The five-point stencil converges as h^4 (w.r.t. the
    parameters, cp_lrp: 4e-2 at 1e-6, 2e-3 at 3e-7, 1e-5 at 1e-7, 5e-8 at 3e-8; attn_lrp: 7e-3,
    4e-4, 3e-6, 5e-9): the derivative is exact, the step must resolve the curvature."""
    model, x = replica()
    check_second_order(model, x, method, opts, step)


def test_second_order_with_padding():
    """The padded, shifted case (12x12 images: a 6x6 map padded to 8x8); 1e-8 off at step 1e-7."""
    model, _ = replica()
    check_second_order(model, images(12, 12), "lrp", {"composite": "cp_lrp", "epsilon": 1e-3}, 1e-7)


@pytest.mark.parametrize("size", [(16, 16), (12, 12)])
def test_cp_lrp_conserves_on_the_plain_replica(size):
    """No bias, no relative position bias: every CP-LRP rule conserves (the shift mask acts on
    the logits, which CP-LRP sends nothing through; padded tokens are zero and get none)."""
    model, _ = replica(plain=True)
    x = tr.example("swin", dtype=F64) if size == (16, 16) else images(*size)
    r = manipex.explain(model, x, "lrp", 0, composite="cp_lrp", epsilon=0.0, stabilizer=1e-12)
    assert torch.allclose(r.flatten(1).sum(1), torch.ones(2, dtype=F64), atol=1e-6)


# --- the model and torchvision's module are left as they were -------------------------------------


def test_the_model_and_the_module_globals_are_unchanged():
    model, x = replica()
    before, table = state_of(model), table_snapshot()
    original = tr.shifted_window_attention
    manipex.explain(model, x, "lrp", 0, composite="attn_lrp")
    manipex.explain(model, images(12, 12), "guided_backprop", 0)
    assert tr.shifted_window_attention is original
    assert table_snapshot() == table
    assert any(key[1] == "shifted_window_attention" for key in table)  # still fx-wrapped
    assert_same_state(before, state_of(model))
    # fx still records the attention as one call when the model is traced outside manipex
    traced = torch.fx.symbolic_trace(model)
    assert any(n.op == "call_function" and n.target is original for n in traced.graph.nodes)


# A torchvision-style module of the test's own: torchvision's signature (with logit_scale),
# fx-wrapped here, called positionally; Swin v2 passes a logit scale.


def shifted_window_attention(input: Tensor, qkv_weight: Tensor, proj_weight: Tensor,
                             relative_position_bias: Optional[Tensor], window_size: List[int], num_heads: int,
                             shift_size: List[int], attention_dropout: float = 0.0, dropout: float = 0.0,
                             qkv_bias: Optional[Tensor] = None, proj_bias: Optional[Tensor] = None,
                             logit_scale: Optional[Tensor] = None, training: bool = True) -> Tensor:
    if logit_scale is not None:
        raise NotImplementedError("not called in these tests: tracing refuses it first")
    return tr.shifted_window_attention(input, qkv_weight, proj_weight, relative_position_bias, window_size,
                                       num_heads, shift_size, attention_dropout, dropout, qkv_bias, proj_bias,
                                       training)


torch.fx.wrap("shifted_window_attention")


def _get_relative_position_bias(relative_position_bias_table: Tensor, relative_position_index: Tensor,
                                window_size: List[int]) -> Tensor:
    return tr._get_relative_position_bias(relative_position_bias_table, relative_position_index, window_size)


torch.fx.wrap("_get_relative_position_bias")  # as torchvision: one call node on parameters, a constant


class PositionalAttention(tr.ShiftedWindowAttention):
    """Calls torchvision's signature positionally; v1 unless a ``logit_scale`` parameter is set
    (Swin v2's ShiftedWindowAttentionV2 passes one). The bias comes from an fx-wrapped function,
    as in torchvision."""

    def get_relative_position_bias(self) -> Optional[Tensor]:
        return _get_relative_position_bias(self.relative_position_bias_table, self.relative_position_index,
                                           self.window_size)

    def forward(self, x: Tensor) -> Tensor:
        return shifted_window_attention(x, self.qkv.weight, self.proj.weight, self.get_relative_position_bias(),
                                        self.window_size, self.num_heads, self.shift_size, self.attention_dropout,
                                        self.dropout, self.qkv.bias, self.proj.bias, getattr(self, "logit_scale", None),
                                        self.training)


def with_attention(model, cls, **attributes):
    for block in model.features[1]:
        block.attn.__class__ = cls
        for k, v in attributes.items():
            setattr(block.attn, k, v)
    return model


def test_a_positional_call_of_torchvisions_signature_is_bound_to_it():
    model, x = replica()
    reference = manipex.explain(model, x, "lrp", 0, composite="attn_lrp")
    positional = with_attention(copy.deepcopy(model), PositionalAttention)
    graph = model_graph(positional, "lrp", x)
    out, _ = graph.forward(x)
    assert (out - model(x)).abs().max() <= 1e-12
    assert torch.equal(manipex.explain(positional, x, "lrp", 0, composite="attn_lrp"), reference)
    assert sum(n.op == "call_function" and n.target is _get_relative_position_bias for n in graph.nodes) == 2
    # the bias table's gradient flows through the wrapped call
    table = positional.features[1][1].attn.relative_position_bias_table
    (g,) = torch.autograd.grad(manipex.explain(positional, x, "lrp", 0, composite="attn_lrp",
                                               create_graph=True).square().sum(), table)
    assert g.abs().sum() > 0
    assert swin._replacement(shifted_window_attention) is not None
    assert swin._replacement(lambda x, y: x) is None  # another function of that name is left alone


@pytest.mark.parametrize("case", ["v2", "dropout"])
def test_refusals_name_the_cause_and_restore_everything(case):
    model, x = replica()
    if case == "v2":
        model = with_attention(model, PositionalAttention)
        for block in model.features[1]:
            block.attn.logit_scale = nn.Parameter(torch.full((tr.HEADS, 1, 1), 2.0, dtype=F64))
        message = "Swin v2"
    else:
        for block in model.features[1]:
            block.attn.attention_dropout = 0.1
        model.train()
        message = "dropout in training mode"
    before, table = state_of(model), table_snapshot()
    originals = (tr.shifted_window_attention, globals()["shifted_window_attention"])
    with pytest.raises(UnsupportedModelError, match=message):
        model_graph(model, "lrp", x)
    if case == "v2":
        with pytest.raises(UnsupportedModelError, match=message):
            manipex.explain(model, x, "lrp", 0, composite="attn_lrp")
    else:  # explain refuses a model in training mode before it traces
        with pytest.raises(ValueError, match="training mode"):
            manipex.explain(model, x, "lrp", 0, composite="attn_lrp")
    assert (tr.shifted_window_attention, globals()["shifted_window_attention"]) == originals
    assert table_snapshot() == table
    assert_same_state(before, state_of(model))


def test_dropout_probabilities_are_off_in_eval_mode():
    """torchvision passes ``training=self.training``: in eval mode a dropout probability is no
    dropout, and the graph is the model's function."""
    model, x = replica()
    for block in model.features[1]:
        block.attn.attention_dropout, block.attn.dropout = 0.1, 0.2
    out, _ = model_graph(model, "lrp", x).forward(x)
    assert (out - model(x)).abs().max() <= 1e-12


# --- torchvision's PatchMerging ----------------------------------------------------------------


def _patch_merging_pad(x: Tensor) -> Tensor:
    """torchvision swin_transformer._patch_merging_pad (fx-wrapped there and here)."""
    H, W, _ = x.shape[-3:]
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    x0 = x[..., 0::2, 0::2, :]  # ... H/2 W/2 C
    x1 = x[..., 1::2, 0::2, :]  # ... H/2 W/2 C
    x2 = x[..., 0::2, 1::2, :]  # ... H/2 W/2 C
    x3 = x[..., 1::2, 1::2, :]  # ... H/2 W/2 C
    x = torch.cat([x0, x1, x2, x3], -1)  # ... H/2 W/2 4*C
    return x


torch.fx.wrap("_patch_merging_pad")


class PatchMerging(nn.Module):
    """torchvision swin_transformer.PatchMerging."""

    def __init__(self, dim: int, norm_layer=nn.LayerNorm, plain: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim, bias=not plain)

    def forward(self, x: Tensor) -> Tensor:
        x = _patch_merging_pad(x)
        x = self.norm(x)
        x = self.reduction(x)  # ... H/2 W/2 2*C
        return x


class MergingNet(nn.Module):
    """The Swin replica's stage followed by a PatchMerging, as torchvision's next stage starts."""

    def __init__(self, plain: bool = False) -> None:
        super().__init__()
        swin_model = tr.build("swin", plain=plain, dtype=F64)
        self.features = swin_model.features
        self.merge = PatchMerging(tr.DIM, plain=plain)
        self.norm = nn.LayerNorm(2 * tr.DIM, bias=not plain)
        self.head = nn.Linear(2 * tr.DIM, 10, bias=not plain)

    def forward(self, x: Tensor) -> Tensor:
        x = self.merge(self.features(x))
        return self.head(self.norm(x).mean((1, 2)))


def merging_net(plain: bool = False) -> nn.Module:
    torch.manual_seed(5)
    return MergingNet(plain).to(F64).eval()


def test_patch_merging_traces_at_even_and_odd_sizes():
    """An odd feature map (10x14 images: 5x7) is padded to even inside _patch_merging_pad."""
    model = merging_net()
    graph = model_graph(model, "lrp", images(16, 16))
    assert graph.shape is None
    for h, w in [(16, 16), (10, 14), (12, 12)]:
        x = images(h, w)
        out, records = graph.forward(x)
        assert (out - model(x)).abs().max() <= 1e-12
        assert "cat" in {r.layer.kind for r in records}
        r = manipex.explain(model, x, "lrp", 0, composite="attn_lrp")
        assert r.shape == x.shape and torch.isfinite(r).all()
    assert all(n.target is not _patch_merging_pad for n in graph.nodes)


def test_patch_merging_conserves_and_is_exactly_differentiable():
    plain = merging_net(plain=True)
    for h, w in [(16, 16), (10, 14)]:
        r = manipex.explain(plain, images(h, w), "lrp", 0, composite="cp_lrp", epsilon=0.0, stabilizer=1e-12)
        assert torch.allclose(r.flatten(1).sum(1), torch.ones(2, dtype=F64), atol=1e-6)
    check_second_order(merging_net(), images(10, 14), "lrp", {"composite": "cp_lrp", "epsilon": 1e-3}, 1e-7)
