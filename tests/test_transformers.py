"""Transformers (issue 25): small replicas of torchvision's ViT (nn.MultiheadAttention), timm's
ViT (fused qkv, SDPA or the explicit softmax), DeiT (distillation token), a Swin stage and a BERT
encoder (tests/transformer_replicas.py) through every method: exact to second order (float64
finite differences), conserving where the rules conserve, agreeing with LXT's AttnLRP and
CP-LRP rules on the same nets, the model untouched."""
from __future__ import annotations

import pytest
import torch

import manipex
from conftest import assert_same_state, state_of
from test_derivatives import check_second_order
from test_zennit_agreement import ZENNIT  # noqa: F401  (at import: it puts benchmarks/ on sys.path)
from transformer_replicas import KIND, build, example

#: Every replica runs every method; Swin's attention is traced through manipex.explainers.swin.
PROPAGATING = ["vit_tv", "vit_timm", "vit_timm_explicit", "deit", "bert", "bert_sdpa", "swin"]
NAMES = PROPAGATING
TRANSFORMER_COMPOSITES = ["attn_lrp", "cp_lrp", "attn_lrp_gamma", "cp_lrp_gamma"]
WITHOUT_RULES = ["gradient", "grad_x_input", "integrated_gradients", "smoothgrad", "occlusion", "gradcam"]


def replica(name: str, plain: bool = False, dtype=torch.float64):
    return build(name, plain=plain, dtype=dtype), example(name, dtype=dtype)


def methods_for(name: str):
    """The methods that apply: Grad-CAM and occlusion need images; rollout refuses Swin's windows."""
    out = list(manipex.methods())
    if KIND[name] == "text":
        out = [m for m in out if m not in ("gradcam", "occlusion")]
    if name == "swin":  # no rollout: windowed attention is refused
        out = [m for m in out if m != "attention_rollout"]
    return out


_PATTERNS: dict = {}


def options(method: str, name: str, model) -> dict:
    if method == "pattern_attribution":
        if name not in _PATTERNS:
            torch.manual_seed(3)
            _PATTERNS[name] = manipex.fit_patterns(model, torch.cat([example(name, 16, seed=s, dtype=torch.float64)
                                                                     for s in range(2)]))
        return {"patterns": _PATTERNS[name]}
    if method == "attention_rollout" and name == "deit":
        return {"prefix_tokens": 2}  # the class and distillation tokens
    if method == "lrp":  # the transformer composites have their own tests: the table keeps zB-z+
        box = {"low": -4.0, "high": 4.0} if KIND[name] == "text" else {}  # embeddings: |x| < 4
        return {"composite": "zb_zplus", **box}
    return {"integrated_gradients": {"steps": 3}, "smoothgrad": {"samples": 2, "seed": 1, "sigma": 0.1},
            "occlusion": {"window": 4, "stride": 4}}.get(method, {})


TABLE = [(name, method) for name in NAMES for method in methods_for(name)]


def fd_step(method: str, name: str) -> float:
    """1e-7 for the maps that use z+ (``zb_zplus``) or the uniform matmul rule (``attn_lrp``,
    LRP's default on transformers, inside AGG-Mean/Var): on signed transformer activations z+ divides by sums of positive contributions near zero and the
    curvature is large (at 1e-6 the five-point stencil is off by 1e-4; AGG-Var, the square of
    such maps, needs 3e-8: at 1e-7 it is off by 2e-5, at 3e-8 by 4e-9). On Swin, AGG-Mean's
    AttnLRP curves as steeply as in the composite test below (at 1e-7 off by 3e-5): 3e-8."""
    if name == "swin" and method == "agg_mean":
        return 3e-8
    return {"lrp": 1e-7, "agg_mean": 1e-7, "agg_var": 3e-8}.get(method, 1e-6)


@pytest.mark.parametrize("name,method", TABLE)
def test_second_order_matches_finite_differences(name, method):
    model, x = replica(name)
    before = state_of(model)
    check_second_order(model, x, method, options(method, name, model), fd_step(method, name))
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("name", PROPAGATING)
@pytest.mark.parametrize("composite", TRANSFORMER_COMPOSITES)
def test_every_transformer_composite_is_exactly_differentiable(name, composite):
    """Step 1e-7: the uniform rule divides by the entries of ``A @ v``, of both signs and some
    near zero, so the map curves steeply in the value weights (at 1e-5 the stencil is off by 2x,
    at 1e-6 and 1e-7 it agrees with autograd)."""
    model, x = replica(name)
    step = 3e-8 if name == "swin" else 1e-7  # swin: the first qkv projection's ε-rule curves steeply
    check_second_order(model, x, "lrp", {"composite": composite, "epsilon": 1e-3, "gamma": 0.1}, step)


def test_lrp_defaults_to_attn_lrp_on_transformers_and_to_zb_zplus_elsewhere():
    """``composite="auto"`` (the default) resolves on the traced graph: AttnLRP on every replica
    that attends, the papers' zB-z+ on a ReLU CNN; the error for an unknown name lists ``auto``."""
    for name in PROPAGATING:
        model, x = replica(name, dtype=torch.float32)
        assert torch.equal(manipex.explain(model, x, "lrp", 0), manipex.explain(model, x, "lrp", 0, composite="attn_lrp"))
        assert not torch.allclose(manipex.explain(model, x, "lrp", 0),
                                  manipex.explain(model, x, "lrp", 0, composite="cp_lrp"))
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 26 * 26, 3)).eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(manipex.explain(cnn, x, "lrp", 0), manipex.explain(cnn, x, "lrp", 0, composite="zb_zplus"))
    assert not torch.allclose(manipex.explain(cnn, x, "lrp", 0), manipex.explain(cnn, x, "lrp", 0, composite="epsilon"))
    probabilities = torch.nn.Sequential(*cnn, torch.nn.Softmax(dim=1)).eval()  # a softmax head is not attention
    assert torch.equal(manipex.explain(probabilities, x, "lrp", 0),
                       manipex.explain(probabilities, x, "lrp", 0, composite="zb_zplus"))
    with pytest.raises(ValueError, match="'auto'"):
        manipex.explain(cnn, x, "lrp", 0, composite="atn_lrp")


# --- conservation ------------------------------------------------------------------------------


def total(model, x, composite: str):
    """The map's sum per sample, for the logit of class 0 (start relevance 1)."""
    r = manipex.explain(model, x, "lrp", 0, composite=composite, epsilon=0.0, stabilizer=1e-12)
    return r.flatten(1).sum(1)


@pytest.mark.parametrize("name", PROPAGATING)
def test_cp_lrp_conserves_on_plain_replicas(name):
    """Without biases and additive constants every CP-LRP rule conserves: the ε-rule (ε = 0),
    the linearised LayerNorm (``J x = y``), the residual sums, the matmul with the attention held
    constant, and nothing passes through the softmax."""
    model, x = replica(name, plain=True)
    assert torch.allclose(total(model, x, "cp_lrp"), torch.ones(2, dtype=torch.float64), atol=1e-6)


#: attn_lrp's map sums on the plain replicas (seed 0, float64, class 0): all that is not 1 is
#: what the softmax rule gives its implicit bias (``sum_i x_i s_i sum_j R_j``), measured.
ATTN_LRP_SUMS = {
    "vit_tv": (0.470927, 0.471509), "vit_timm": (0.661455, 0.802711), "vit_timm_explicit": (0.661455, 0.802711),
    "deit": (0.698564, 0.564664), "bert": (0.723132, 1.988684), "bert_sdpa": (0.723132, 1.988684),
    "swin": (0.906912, 0.776886),
}


@pytest.mark.parametrize("name", PROPAGATING)
def test_attn_lrp_loses_only_the_softmax_share_on_plain_replicas(name):
    model, x = replica(name, plain=True)
    sums = total(model, x, "attn_lrp")
    assert sums.tolist() == pytest.approx(ATTN_LRP_SUMS[name], abs=1e-5)
    # every other rule conserves: the sum is 1 plus what the softmax layers add or lose
    from manipex.explainers.composites import Composite, kinds
    from manipex.explainers.rules import Epsilon, LinearizedNorm, Matmul, Softmax

    changes = []

    class Counted(Softmax):
        def __call__(self, record, relevance, create_graph):
            out = super().__call__(record, relevance, create_graph)
            n = len(x)  # Swin's windows are batch-major rows: sum them per sample
            changes.append(out.reshape(n, -1).sum(1) - relevance.reshape(n, -1).sum(1))
            return out

    counted = Composite([(kinds("conv", "dense"), Epsilon(0.0)), (kinds("norm"), LinearizedNorm(1e-12)),
                         (kinds("matmul"), Matmul(False, 1e-12)), (kinds("softmax"), Counted())], "counted", 1e-12)
    again = manipex.explain(model, x, "lrp", 0, composite=counted).flatten(1).sum(1)
    assert torch.allclose(again, sums, atol=1e-9)
    assert len(changes) >= 2 and torch.allclose(sums, 1 + sum(changes), atol=1e-8)
    assert (sum(changes).abs() > 1e-3).all()


# --- agreement with LXT ------------------------------------------------------------------------


def lxt_map(model, x, target, cp: bool):
    """LXT 2.1's AttnLRP (``cp=False``) or CP-LRP map over the logit (``benchmarks/_lxt.py``:
    LXT's own rule functions applied to the model's forward); skipped without lxt."""
    import _lxt

    try:
        _lxt.lxt_modules()
    except ImportError as err:
        pytest.skip(str(err))
    return _lxt.lxt_map(model, x, target, cp=cp)


@pytest.mark.parametrize("name", ["vit_timm_explicit", "vit_timm", "deit", "bert", "bert_sdpa"])
@pytest.mark.parametrize("composite", ["attn_lrp", "cp_lrp"])
def test_transformer_composites_match_lxt(name, composite):
    """Agreement with LXT 2.1 within 1e-5 of the map's scale: the same rules (ε-rule with ε = 0
    on linear layers, LXT's plain gradient; identity on GELU/tanh; LayerNorm with the normaliser
    held constant; the softmax rule; the uniform matmul rule; CP's constant attention). LXT's
    identity rule divides by ``x + 1e-10`` and manipex's stabiliser is 1e-12: both far below
    the tolerance."""
    model, x = replica(name)
    ours = manipex.explain(model, x, "lrp", 1, composite=composite, epsilon=0.0, stabilizer=1e-12)
    theirs = lxt_map(model, x, 1, cp=composite == "cp_lrp")
    scale = theirs.abs().max()
    assert scale > 0
    assert (ours - theirs).abs().max() <= 1e-5 * scale


def test_lxt_disagrees_where_the_rules_differ():
    """The check can fail: CP-LRP's map is not AttnLRP's (the softmax passes relevance in one)."""
    model, x = replica("vit_timm_explicit")
    ours = manipex.explain(model, x, "lrp", 1, composite="attn_lrp", epsilon=0.0, stabilizer=1e-12)
    theirs = lxt_map(model, x, 1, cp=True)
    assert (ours - theirs).abs().max() > 1e-2 * theirs.abs().max()


# --- the forms of attention are the same function to the rules ----------------------------------


@pytest.mark.parametrize("pair", [("vit_timm", "vit_timm_explicit"), ("bert", "bert_sdpa")])
@pytest.mark.parametrize("composite", ["attn_lrp", "cp_lrp", "zb_zplus"])
def test_sdpa_is_written_out_as_the_explicit_attention(pair, composite):
    """``F.scaled_dot_product_attention`` is traced as scores, scale, mask, softmax and matmul:
    the same maps as the model that writes those steps itself (same weights)."""
    a, b = (build(n, dtype=torch.float64) for n in pair)
    x = example(pair[0], dtype=torch.float64)
    opts = {"composite": composite, **options("lrp", pair[0], a)} if composite == "zb_zplus" else {"composite": composite}
    assert torch.allclose(manipex.explain(a, x, "lrp", 0, **opts), manipex.explain(b, x, "lrp", 0, **opts),
                          atol=1e-10, rtol=1e-8)


def test_multihead_attention_is_written_out_exactly():
    """torchvision's ViT calls nn.MultiheadAttention; the traced steps compute its output (the
    graph's logits equal the model's) and its map equals the one of the same net with the
    attention written out by hand."""
    from manipex.explainers.graph import model_graph

    model, x = replica("vit_tv")
    graph = model_graph(model, "lrp", x)
    out, records = graph.forward(x)
    assert torch.allclose(out, model(x), atol=1e-12)
    kinds = {r.layer.kind for r in records}
    assert {"matmul", "softmax", "dense"} <= kinds
    # the packed in-projection is a functional dense layer reading the live parameter
    dense = [r for r in records if r.layer.kind == "dense" and r.layer.call is not None]
    assert dense and all(r.parameters()[0] is model.encoder.layers[0].self_attention.in_proj_weight
                         or r.parameters()[0] is model.encoder.layers[1].self_attention.in_proj_weight for r in dense)


# --- the model is untouched ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_model_is_untouched_after_calls_and_errors(name):
    model, x = replica(name, dtype=torch.float32)
    before = state_of(model)
    for composite in TRANSFORMER_COMPOSITES if name in PROPAGATING else []:
        manipex.explain(model, x, "lrp", 0, composite=composite)
    with pytest.raises(ValueError):
        manipex.explain(model, x, "lrp", 99, composite="attn_lrp")  # no class 99
    with pytest.raises(ValueError):
        manipex.explain(model, x * float("nan"), "gradient", 0)
    assert_same_state(before, state_of(model))


# --- text: token relevance and attacks in embedding space ----------------------------------------


def test_relevance_of_token_embeddings_is_one_number_per_token():
    """A text map ``(N, L, D)`` w.r.t. ``inputs_embeds`` reads as ``(N, L)``: ``sum_d |h|`` per token,
    normalised; ``channel_dim=1`` reads ``(N, C, L)`` signals instead."""
    model, x = replica("bert")
    h = manipex.explain(model, x, "lrp", 0, composite="attn_lrp")
    r = manipex.relevance(h)
    assert r.shape == (2, 8)
    assert torch.allclose(r, h.abs().sum(-1) / h.abs().sum((1, 2))[:, None])
    assert manipex.relevance(h, channel_dim=1).shape == (2, 16)
    assert manipex.relevance(torch.ones(2, 3, 4, 4)).shape == (2, 4, 4)  # images as before
    with pytest.raises(ValueError, match="channel_dim"):
        manipex.relevance(h, channel_dim=0)


def test_topk_attack_on_text_embeddings_moves_the_top_tokens_and_keeps_the_class():
    """Embedding space has no pixel box: ``clamp=None``, ε in embedding units (the embeddings are
    normal, ε 0.5). Measured on the BERT replica (8 sequences, 60 steps): the top-2 tokens kept
    0.50 (attn_lrp) and 0.44 (cp_lrp); every class kept."""
    from manipex.attacks import manipulate_input
    from manipex.metrics import topk_intersection
    from manipex.objectives import TopKSuppression

    model = build("bert")
    x = example("bert", 8, seed=3)
    before = state_of(model)
    for composite in ("attn_lrp", "cp_lrp"):
        res = manipulate_input(model, x, TopKSuppression(2), "lrp", steps=60, eps=0.5, lr=2e-2, clamp=None, beta=None,
                               progress=False, method_options={"composite": composite})
        assert res.maps_after.shape == (8, 8)
        assert topk_intersection(res.maps_before, res.maps_after, 2).mean().item() <= 0.7
        assert res.class_kept.all()
    assert_same_state(before, state_of(model))


# --- agreement with Captum -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_gradient_family_matches_captum_on_transformers(name):
    """Captum's Saliency, InputXGradient and IntegratedGradients on the same replica (float64,
    to 1e-6 of the map's scale): the fused attention kernels and the math kernel manipex uses for
    second order compute the same gradient."""
    captum = pytest.importorskip("captum.attr")
    model, x = replica(name)
    t = model(x).argmax(1)

    def close(ours, theirs):
        assert ours.abs().max() > 0
        assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-6

    close(manipex.explain(model, x, "gradient", t), captum.Saliency(model).attribute(x, t, abs=False))
    close(manipex.explain(model, x, "grad_x_input", t), captum.InputXGradient(model).attribute(x, t))
    close(manipex.explain(model, x, "integrated_gradients", t, steps=5, rule="riemann_middle"),
          captum.IntegratedGradients(model).attribute(x, target=t, n_steps=5, method="riemann_middle"))


@pytest.mark.parametrize("regularizer", ["hessian_norm", "curvature", "ssr", "atex"])
def test_robust_training_runs_on_a_vision_transformer(regularizer):
    """The robust-explanation regularizers differentiate the map again (through the math attention
    kernel): they train a ViT; the model passed in is untouched."""
    from manipex.defenses import train_robust

    model = build("vit_timm")
    x = example("vit_timm", 8)
    y = torch.arange(8) % 10
    before = state_of(model)
    result = train_robust(model, (x, y), regularizer, epochs=1, batch_size=4, progress=False)
    assert_same_state(before, state_of(model))
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), result.model.state_dict().values()))
    assert changed and not result.model.training
