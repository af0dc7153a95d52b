"""HF patching keeps each norm's own eps: a non-default rms_norm_eps with hidden states small enough that eps matters;
and the bf16 accuracy rule fails for a wrong eps or a wrong rope."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import infinilm_torch  # noqa: E402
from test_hf_patch import (  # noqa: E402,F401
    COMMON, FAMILIES, assert_bf16_rule, calls, make_model, prompt, rule_model)

EPS = 1e-2
HIDDEN = COMMON["hidden_size"]


def small_model(family, layers=2):
    """Residual stream of scale ~0.02 (embeddings and the projections into it scaled down): its mean square
    (~4e-4) is far below eps, so an eps of 1e-6 instead of 1e-2 changes every norm's output several-fold."""
    model = make_model(family, rms_norm_eps=EPS, num_hidden_layers=layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed" in name or "o_proj" in name or "down_proj" in name:
                p.mul_(0.02)
    return model


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_decoder_layer_uses_config_eps(family):
    """One decoder layer, patched vs its transformers forward. Layer 1: layer 0 never fuses the residual add
    (its input may be the caller's inputs_embeds), later layers do."""
    ref = small_model(family)
    model = infinilm_torch.patch(copy.deepcopy(ref))
    layer, ref_layer = model.model.layers[1], ref.model.layers[1]
    assert layer.post_attention_layernorm.variance_epsilon == EPS
    h = torch.randn(2, 9, HIDDEN) * 0.02
    pos = torch.arange(9)[None].expand(2, -1)
    cos_sin = ref.model.rotary_emb(h, pos)
    with torch.no_grad():
        want = ref_layer(h.clone(), position_embeddings=cos_sin, position_ids=pos, attention_mask=None)
        got = layer(h.clone(), position_embeddings=cos_sin, position_ids=pos, attention_mask=None)
    want, got = (x[0] if isinstance(x, tuple) else x for x in (want, got))
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=1e-4)
    # The check can fail: the same layer with eps 1e-6 in its norms is far off.
    for norm in (ref_layer.input_layernorm, ref_layer.post_attention_layernorm):
        norm.variance_epsilon = 1e-6
    with torch.no_grad():
        off = ref_layer(h.clone(), position_embeddings=cos_sin, position_ids=pos, attention_mask=None)
    off = off[0] if isinstance(off, tuple) else off
    assert (off - want).abs().max() > 0.1 * want.abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_with_config_eps(family, calls):
    ref = small_model(family)
    model = infinilm_torch.patch(copy.deepcopy(ref))
    ids = torch.randint(3, 256, (3, 9))
    with torch.no_grad():
        want, got = ref(ids).logits, model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=1e-4)
    assert calls["prefill"] == 2 and calls["sdpa"] == 0
    # Greedy decoding over the patched static and dynamic caches (decode steps through the fused norm too).
    for cache in ("dynamic", "static"):
        kw = dict(do_sample=False, max_new_tokens=12, min_new_tokens=12, pad_token_id=0, cache_implementation=cache)
        if cache == "dynamic":
            kw.pop("cache_implementation")
        with torch.no_grad():
            a = ref.generate(ids, attention_mask=torch.ones_like(ids), **kw)
            b = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        assert torch.equal(a, b), cache


def test_norm_module_eps_unit():
    """The patched RMSNorm module alone, eps 1e-2 on inputs of mean square ~1e-4."""
    ref = small_model("llama", layers=1)
    model = infinilm_torch.patch(copy.deepcopy(ref))
    norm, ref_norm = model.model.norm, ref.model.norm
    x = torch.randn(5, HIDDEN) * 0.01
    with torch.no_grad():
        got, want = norm(x), ref_norm(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(want, _rms(x, ref_norm.weight, EPS), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mutation", ["eps", "rope"])
def test_bf16_rule_catches_wrong_math(mutation, monkeypatch):
    """The rule fails for kernels that are wrong by more than rounding: a norm eps of 1e-2 for 1e-5, rope with the
    GPT-J pairing for NeoX."""
    from infinilm_torch.hf import layers
    if mutation == "eps":
        monkeypatch.setattr(layers, "_eps", lambda norm: 1e-2)
    else:
        def gptj(t, positions, table, other):
            qt, kt = t.transpose(1, 2), other.transpose(1, 2)
            for b in range(qt.shape[0]):
                torch.ops.infinilm.rotary_embedding(positions[b], qt[b], kt[b], table, False)
        monkeypatch.setattr(layers, "_rotate_inplace", gptj)
    with pytest.raises(AssertionError, match="bf16 relative error"):
        assert_bf16_rule(rule_model("llama", hidden_size=256, intermediate_size=384), prompt(8, 32)[0])
