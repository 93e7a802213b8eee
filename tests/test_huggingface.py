"""Hugging Face transformers (tiny configs, random weights): ViT, DeiT (with its distillation
token), Swin and BERT (w.r.t. its input embeddings, through
:class:`manipex.models.interfaces.EmbeddingsModel`) through every method that applies, traced
for the propagation rules by :mod:`manipex.explainers.huggingface`: the graph computes the
model's logits, maps of ``create_graph=True`` are differentiable again and exact to second order
(float64 finite differences), an input attack runs, AttnLRP and CP-LRP agree with LXT 2.1's own
rule functions, and the model and the library code swapped while tracing are as they were after
every call and error."""
from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import manipex  # noqa: E402
from conftest import assert_same_state, state_of  # noqa: E402
from manipex.explainers import huggingface  # noqa: E402
from manipex.explainers.graph import model_graph  # noqa: E402
from manipex.models.interfaces import EmbeddingsModel, Logits  # noqa: E402
from test_derivatives import check_second_order  # noqa: E402
from test_transformers import lxt_map  # noqa: E402

IMAGE = {"initializer_range": 0.2, "image_size": 16, "patch_size": 4, "num_channels": 3, "hidden_size": 16, "num_hidden_layers": 2,
         "num_attention_heads": 2, "intermediate_size": 32, "num_labels": 5}
NAMES = ["vit", "deit", "swin", "bert"]
#: BERT's padding mask: the same two padded tokens for every sample (methods that evaluate the
#: model on copies of the batch need a mask shared by all samples).
MASK = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])


def build(name: str, dtype=torch.float64, attn: str = "sdpa", mask=MASK):
    """``(model, x)``: the model returns its logits (``Logits`` of the HF model; BERT as
    :class:`EmbeddingsModel` over its embeddings ``(N, L, D)``), in eval mode."""
    torch.manual_seed(0)
    if name == "vit":
        net = transformers.ViTForImageClassification(transformers.ViTConfig(**IMAGE, attn_implementation=attn))
    elif name == "deit":
        net = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**IMAGE, attn_implementation=attn))
    elif name == "swin":  # a shifted window in the second block of the first stage, patch merging after it
        config = transformers.SwinConfig(image_size=16, patch_size=2, num_channels=3, embed_dim=8, depths=[2, 1],
                                         num_heads=[2, 2], window_size=2, mlp_ratio=2.0, num_labels=5,
                                         attn_implementation=attn)
        net = transformers.SwinForImageClassification(config)
    else:  # bert; bert_decoder: causal self-attention (HF's causal mask, or sdpa's is_causal)
        config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=16, num_labels=3,
                                         initializer_range=0.2, is_decoder=name == "bert_decoder",
                                         attn_implementation=attn)
        net = transformers.BertForSequenceClassification(config)
    net = net.to(dtype).eval()
    torch.manual_seed(1)
    if name == "bert":
        return EmbeddingsModel(net, attention_mask=mask), torch.randn(2, 8, 16, dtype=dtype)
    if name == "bert_decoder":  # no key/value cache: nothing is generated
        return EmbeddingsModel(net, attention_mask=mask, use_cache=False), torch.randn(2, 8, 16, dtype=dtype)
    return Logits(net), torch.rand(2, 3, 16, 16, dtype=dtype)


def methods_for(name: str):
    """Grad-CAM needs images (BERT's input is (N, L, D)); attention rollout has no map over the
    image for Swin's windowed attention (a batch of N * windows: refused)."""
    skip = {"bert": {"gradcam"}, "swin": {"attention_rollout"}}.get(name, set())
    return [m for m in manipex.methods() if m not in skip]


def options(method: str, name: str, model, x) -> dict:
    if method == "pattern_attribution":
        torch.manual_seed(2)
        # batches of x's size: the graph is traced at the input's shape, batch included (see
        # test_a_graph_traced_at_one_batch_size_runs_at_another)
        return {"patterns": manipex.fit_patterns(model, [x + 0.1 * torch.randn_like(x) for _ in range(3)])}
    if method == "attention_rollout" and name == "deit":
        return {"prefix_tokens": 2}  # the class and distillation tokens
    return {"integrated_gradients": {"steps": 3}, "smoothgrad": {"samples": 2, "seed": 0},
            "occlusion": {"window": 4, "stride": 4}}.get(method, {})


@pytest.mark.parametrize("name", NAMES)
def test_every_method_runs_and_is_differentiable_again(name):
    """Each map of ``create_graph=True`` has x's shape, is finite and non-zero, and has a
    derivative w.r.t. the input and the parameters (a second-order derivative of the model)."""
    model, x = build(name, torch.float32)
    before = state_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for method in methods_for(name):
        xg = x.clone().requires_grad_(True)
        h = manipex.explain(model, xg, method, create_graph=True, **options(method, name, model, x))
        assert h.shape == x.shape and torch.isfinite(h).all() and h.abs().sum() > 0, method
        grads = torch.autograd.grad((h * torch.linspace(-1, 1, h.numel()).reshape(h.shape)).sum(), [xg] + params,
                                    allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads), method
        assert grads[0] is not None and grads[0].abs().sum() > 0, method
        assert any(g is not None and g.abs().sum() > 0 for g in grads[1:]), method
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", NAMES + ["bert_decoder"])
def test_the_graph_computes_the_models_logits(name, attn):
    """The traced graph (attention written out as matmul, scale, mask, softmax, matmul) gives the
    model's own logits, with either attention implementation (float64; HF's eager softmax runs in
    float32, the traced form in the model's dtype: equal to float32's precision there)."""
    model, x = build(name, attn=attn)
    graph = model_graph(model, "lrp", x)
    with torch.no_grad():
        out, records = graph.forward(x)
        assert torch.allclose(out, model(x), atol=1e-12 if attn == "sdpa" else 1e-6, rtol=0)
    kinds = {r.layer.kind for r in records}
    assert {"dense", "matmul", "softmax", "norm", "activation"} <= kinds
    assert sum(r.layer.kind == "softmax" for r in records) == {"swin": 3}.get(name, 2)  # one per layer


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_decoder_without_padding_stays_causal(attn):
    """Without a padding mask HF's sdpa skips the causal mask and passes ``is_causal``; the
    traced form decides that while tracing, when the mask node's value is not known yet, so the
    node always materialises the causal mask (with the skip, the graph was bidirectional: logits
    off by 1.1)."""
    model, x = build("bert_decoder", attn=attn, mask=None)
    with torch.no_grad():
        out, _ = model_graph(model, "lrp", x).forward(x)
        assert torch.allclose(out, model(x), atol=1e-12 if attn == "sdpa" else 1e-6, rtol=0)


@pytest.mark.parametrize("name", ["vit", "bert", "bert_decoder"])
@pytest.mark.parametrize("composite", ["attn_lrp", "cp_lrp"])
def test_sdpa_and_eager_give_the_same_map(name, composite):
    """HF's two attention implementations are one function to the rules (the traced forms
    compute the same steps; eager's float mask and sdpa's boolean one add the same scores)."""
    a, x = build(name, attn="sdpa")
    b, _ = build(name, attn="eager")
    ra = manipex.explain(a, x, "lrp", 0, composite=composite)
    rb = manipex.explain(b, x, "lrp", 0, composite=composite)
    assert torch.allclose(ra, rb, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_attn_lrp_is_exact_to_second_order(name):
    """float64 finite differences (step 1e-7, as for the transformer replicas) of a linear
    functional of the AttnLRP map w.r.t. the input and every parameter."""
    model, x = build(name)
    check_second_order(model, x, "lrp", {"composite": "attn_lrp"}, 1e-7)


# --- agreement with LXT ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit", "bert", "deit", "swin", "bert_decoder"])
@pytest.mark.parametrize("composite", ["attn_lrp", "cp_lrp"])
def test_composites_match_lxt_on_hugging_face_models(name, composite):
    """manipex's AttnLRP / CP-LRP maps of HF's own models equal LXT 2.1's (its rule functions on
    the model's forward, :func:`test_transformers.lxt_map`) within 1e-5 of the map's scale,
    BERT with a per-sample padding mask (the decoder: causal attention as well).

    Where they could differ, and why they do not here: HF's GELU is ``GELUActivation``, a module
    that calls ``F.gelu`` (both: the identity rule; ``gelu_new``/``quick_gelu`` configs compute
    tanh/sigmoid expressions element by element, which manipex would see as products and LXT
    would not catch); the LayerNorm eps (1e-12 in these configs) enters both through the
    module's own ``eps``; HF's eager softmax runs in float32 (manipex's traced form in the model's
    dtype), so the comparison uses sdpa, whose math kernel LXT calls in float64; BERT's pooler
    ``tanh`` is the identity rule in both; the position and token-type embeddings and Swin's
    relative position bias are constants added to the signal (their share absorbed in both).
    LXT's identity rule divides by ``x + 1e-10``, manipex's stabiliser is 1e-12: far below the
    tolerance."""
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]]) if name.startswith("bert") else MASK
    model, x = build(name, mask=mask)
    ours = manipex.explain(model, x, "lrp", 1, composite=composite, epsilon=0.0, stabilizer=1e-12)
    theirs = lxt_map(model, x, 1, cp=composite == "cp_lrp")
    scale = theirs.abs().max()
    assert scale > 0
    assert (ours - theirs).abs().max() <= 1e-5 * scale  # measured: 5e-10 (ViT) to 2e-8 (Swin)
    other = lxt_map(model, x, 1, cp=composite != "cp_lrp")  # the check can fail: the other rule
    assert (ours - other).abs().max() > 1e-3 * scale


# --- attacks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit", "deit", "swin", "bert"])
def test_an_input_attack_runs(name):
    """Three steps of the target-map attack on LRP's AttnLRP map: the map of the other sample is
    the target (for BERT: of its embeddings, a map over (N, L, D); the embeddings are not
    clamped to a range, the budget is 0.5 in L∞)."""
    from manipex.attacks import manipulate_input
    from manipex.objectives import TargetImage

    model, x = build(name, torch.float32)
    before = state_of(model)
    text = {"clamp": None, "eps": 0.5} if name == "bert" else {}
    result = manipulate_input(model, x, TargetImage(x.roll(1, 0)), "lrp", steps=3,
                              method_options={"composite": "attn_lrp"}, progress=False, **text)
    assert result.x_adv.shape == x.shape and torch.isfinite(result.x_adv).all()
    assert_same_state(before, state_of(model))


# --- the wrapper for text models -------------------------------------------------------------------


def test_embeddings_model_is_the_text_model_over_its_embeddings():
    """forward(inputs_embeds) is the model's logits on the embeddings of the token ids."""
    model, _ = build("bert")
    bert = model.model
    ids = torch.randint(0, 50, (2, 8))
    e = model.embed(ids)
    assert e.shape == (2, 8, 16) and not e.requires_grad
    with torch.no_grad():
        assert torch.allclose(model(e), bert(input_ids=ids, attention_mask=MASK.expand(2, -1)).logits, atol=1e-12)
    # not a copy; eval mode is the wrapped model's; the inputs are buffers outside the state_dict
    assert model.model is bert and not model.training
    bert.train()
    assert model.training
    bert.eval()
    assert all(k.startswith("model.") for k in model.state_dict())
    assert model.attention_mask is not None and model.token_type_ids is None
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        model(e[..., :8])
    with pytest.raises(ValueError, match="attention_mask has length"):
        model(e[:, :6])
    per_sample = EmbeddingsModel(bert, attention_mask=torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="rows"):
        per_sample(torch.cat([e, e]))


def test_a_users_own_wrapper_of_bert_is_traced_too():
    """The wrapper of the issue, ``forward(e) = bert(inputs_embeds=e, attention_mask=self.mask)
    .logits`` with the mask a buffer, gives the same maps as :class:`EmbeddingsModel`."""
    model, x = build("bert")

    class Wrapper(torch.nn.Module):
        def __init__(self, bert, mask):
            super().__init__()
            self.bert = bert
            self.register_buffer("mask", mask)

        def forward(self, e):
            return self.bert(inputs_embeds=e, attention_mask=self.mask).logits

    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]])
    wrapper = Wrapper(model.model, mask).eval()
    ours = EmbeddingsModel(model.model, attention_mask=mask)
    for composite in ("attn_lrp", "cp_lrp"):
        assert torch.allclose(manipex.explain(wrapper, x, "lrp", 0, composite=composite),
                              manipex.explain(ours, x, "lrp", 0, composite=composite), atol=1e-12, rtol=0)


# --- the model and the library are untouched ----------------------------------------------------------


def _library_state():
    from torch.fx.experimental import meta_tracer
    from transformers import masking_utils, modeling_utils
    from transformers.models.bert import modeling_bert
    from transformers.models.vit import modeling_vit

    interface = modeling_utils.AttentionInterface
    return (interface.__dict__["get_interface"], "__getitem__" in vars(interface), interface.__getitem__,
            modeling_utils.ALL_ATTENTION_FUNCTIONS["sdpa"], modeling_vit.eager_attention_forward,
            modeling_vit.create_bidirectional_mask, modeling_bert.create_bidirectional_mask,
            modeling_bert.create_causal_mask, masking_utils.create_bidirectional_mask,
            dict(meta_tracer.manual_meta_overrides), torch.fx.Tracer.proxy_buffer_attributes,
            "proxy_buffer_attributes" in vars(torch.fx.Tracer))


@pytest.mark.parametrize("name", NAMES)
def test_the_model_and_the_library_are_untouched_after_calls_and_errors(name):
    model, x = build(name, torch.float32)
    library = _library_state()
    before = state_of(model)
    names = set(vars(model)) | set(vars(model.model))
    for composite in ("attn_lrp", "cp_lrp"):
        manipex.explain(model, x, "lrp", 0, composite=composite)
    manipex.explain(model, x, "guided_backprop", 0)
    with pytest.raises(ValueError):
        manipex.explain(model, x, "lrp", 99, composite="attn_lrp")  # no class 99
    with pytest.raises(ValueError):
        manipex.explain(model, x * float("nan"), "lrp")
    assert_same_state(before, state_of(model))
    assert set(vars(model)) | set(vars(model.model)) == names  # no fx constants left on them
    assert _library_state() == library


def test_everything_is_restored_after_an_error_while_tracing():
    """An unsupported attention implementation is refused by name, from inside the trace; the
    swapped functions are back afterwards, as after any error inside the patch."""
    model, x = build("vit", torch.float32, attn="flex_attention")
    library = _library_state()
    before = state_of(model)
    with pytest.raises(ValueError, match="flex_attention"):
        manipex.explain(model, x, "lrp", 0, composite="attn_lrp")
    assert _library_state() == library
    with pytest.raises(RuntimeError, match="inside"):
        with huggingface.hugging_face_tracing(model):
            assert _library_state() != library
            raise RuntimeError("inside")
    assert _library_state() == library
    assert_same_state(before, state_of(model))


def test_the_patch_is_inert_for_other_models():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    library = _library_state()
    assert not huggingface.is_hugging_face(net)
    with huggingface.hugging_face_tracing(net):
        assert _library_state() == library


def test_a_graph_traced_at_one_batch_size_runs_at_another():
    """fx's meta tracer bakes the batch size into Hugging Face's shape arithmetic
    (``cls_token.expand(N, -1, -1)``, ``view(N, L, -1, d)``): such graphs are cached per full shape."""
    model, x = build("vit", torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = manipex.explain(model, x, "lrp", 0, composite="attn_lrp")
        b = manipex.explain(model, x[:1], "lrp", 0, composite="attn_lrp")
    assert torch.allclose(a[:1], b, atol=1e-6)
