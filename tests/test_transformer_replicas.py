"""The transformer replicas (tests/transformer_replicas.py): every one builds, in eval mode,
deterministic for a seed without touching the caller's RNG, gives finite (N, classes) logits on
its example batch; the plain variants have no bias and no additive tokens or embeddings; the
fused and explicit attention forms (timm's ``fused_attn``, Hugging Face's eager and SDPA BERT)
agree in float64 with the same parameters."""
from __future__ import annotations

import pytest
import torch

from transformer_replicas import KIND, NAMES, NUM_CLASSES, build, example

ADDITIVE = ("class_token", "cls_token", "dist_token", "pos_embedding", "pos_embed", "relative_position_bias_table",
            "position_embeddings", "token_type_embeddings")
PAIRS = [("vit_timm", "vit_timm_explicit"), ("bert", "bert_sdpa")]


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_builds_in_eval_mode_with_finite_logits(name, plain):
    model = build(name, plain=plain)
    assert not any(m.training for m in model.modules())
    x = example(name)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, NUM_CLASSES[name]) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert y.std() > 0.05 and (y[0] - y[1]).abs().max() > 1e-3  # not degenerate


@pytest.mark.parametrize("name", NAMES)
def test_float64_build_is_the_float32_build_cast(name):
    a, b = build(name), build(name, dtype=torch.float64)
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        if pa.is_floating_point():
            assert pb.dtype == torch.float64 and torch.equal(pa.double(), pb)
        else:
            assert torch.equal(pa, pb)


@pytest.mark.parametrize("name", NAMES)
def test_seeded(name):
    a, b, c = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    pa, pb, pc = (list(m.parameters()) for m in (a, b, c))
    assert all(torch.equal(p, q) for p, q in zip(pa, pb))
    assert all(not torch.equal(p, q) for p, q in zip(pa, pc))
    assert torch.equal(example(name, seed=1), example(name, seed=1))
    assert not torch.equal(example(name, seed=1), example(name, seed=2))


def test_build_and_example_leave_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for name in NAMES:
        build(name, seed=7)
        build(name, plain=True)
        example(name, seed=7)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", NAMES)
def test_plain_has_no_bias_and_no_additive_parameters(name):
    names = [n for n, _ in build(name, plain=True).named_parameters()]
    assert names and not [n for n in names if "bias" in n or n.rsplit(".", 1)[-1] in ADDITIVE
                          or any(a in n for a in ADDITIVE)]
    full = [n for n, _ in build(name).named_parameters()]
    assert any("bias" in n for n in full) and any(any(a in n for a in ADDITIVE) for n in full)


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("fused, explicit", PAIRS)
def test_fused_and_explicit_attention_agree(fused, explicit, plain):
    a = build(fused, plain=plain, seed=5, dtype=torch.float64)
    b = build(explicit, plain=plain, seed=5, dtype=torch.float64)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = example(fused, batch=3, seed=5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), rtol=0, atol=1e-6)


def test_example_batches():
    for name in NAMES:
        x = example(name, batch=3, dtype=torch.float64)
        assert x.dtype == torch.float64
        if KIND[name] == "vision":
            assert x.shape == (3, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
        else:
            assert KIND[name] == "text" and x.shape == (3, 8, 16)
    assert set(KIND) == set(NAMES) == set(NUM_CLASSES)


@pytest.mark.parametrize("name", ["bert", "bert_sdpa"])
def test_bert_padding_mask_hides_the_padded_tokens(name):
    """The second sample's last two tokens are padding: the classifier (pooled from token 0)
    does not see them; an unpadded token, and the first sample's last tokens, it does. (The
    perturbation is not constant along the hidden axis: the embedding LayerNorm removes that.)"""
    model = build(name, dtype=torch.float64)
    x = example(name, dtype=torch.float64)
    d = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
        padded, unpadded = x.clone(), x.clone()
        padded[1, -2:] += d
        unpadded[:, 3] += d
        assert torch.equal(model(padded)[1], y[1])
        assert (model(unpadded) - y).abs().min() > 1e-6
        first = x.clone()
        first[0, -2:] += d
        assert (model(first)[0] - y[0]).abs().max() > 1e-6


def test_swin_second_block_is_shifted_with_a_relative_position_bias():
    model = build("swin")
    blocks = list(model.features[1])
    assert [b.attn.shift_size for b in blocks] == [[0, 0], [2, 2]]
    attn = blocks[1].attn
    assert attn.relative_position_bias_table.shape == (49, 2) and attn.relative_position_index.shape == (256,)
    assert int(attn.relative_position_index.max()) == 48
    assert not hasattr(build("swin", plain=True).features[1][0].attn, "relative_position_bias_table")


def test_timm_avg_pool_option():
    model = build("vit_timm", global_pool="avg")
    assert model.global_pool == "avg" and isinstance(model.norm, torch.nn.Identity)
    with torch.no_grad():
        y = model(example("vit_timm"))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
