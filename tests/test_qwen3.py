"""Qwen3 (per-head q/k RMSNorm before RoPE, free head_dim) on the engine vs transformers' Qwen3ForCausalLM:
static and paged caches, tensor parallelism, bf16, AutoConfig, safetensors loading, LLM and the CLI."""
import ast
import os
import subprocess
import sys

import pytest
import torch
import transformers

from engine_utils import PagedDriver, check_sequence, hf_logits, make_engine, paged_config, run_static, spread_weights
from infinilm_torch.lib import _infinilm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 32
DistConfig = _infinilm.DistConfig

# head_dim never equals hidden / heads here: the engine must take it from the config, not derive it.
KINDS = {
    "gqa_untied": dict(hidden=72, heads=6, kv_heads=2, head_dim=40, inter=100, vocab=203),
    "gqa_tied": dict(hidden=48, heads=4, kv_heads=1, head_dim=24, inter=88, vocab=157, tied=True),
    "mha_bias": dict(hidden=40, heads=4, kv_heads=4, head_dim=16, inter=72, vocab=131, bias=True),
}


def make_qwen3(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32, inter=128, vocab=256, tied=False, bias=False,
               max_pos=256, eps=1e-5, dtype=torch.float32):
    """A tiny random Qwen3ForCausalLM with wide weights (so greedy paths vary) and non-trivial q/k norms."""
    cfg = transformers.Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   head_dim=head_dim, max_position_embeddings=max_pos, rms_norm_eps=eps,
                                   tie_word_embeddings=tied, attention_bias=bias, rope_theta=10000.0,
                                   use_sliding_window=False)
    cfg._attn_implementation = "eager"
    return spread_weights(transformers.Qwen3ForCausalLM(cfg).eval(), qk_norm_mean=1.8).to(dtype)


def _prompts(vocab, lengths=(9, 4)):
    return [torch.randint(0, vocab, (n,)).tolist() for n in lengths]


def _paged(engine, prompts, num_blocks, block_size, chunk=None):
    """Prefill (optionally in chunks of `chunk` tokens mixed with the other request's decode), then decode."""
    d = PagedDriver(engine, prompts, num_blocks, block_size)
    if chunk is None:
        d.step([(i, len(p)) for i, p in enumerate(prompts)])
    else:
        d.step([(0, chunk), (1, len(prompts[1]))])
        d.step([(1, 1), (0, len(prompts[0]) - chunk)])
    for _ in range(STEPS):
        d.step([(i, 1) for i in range(len(prompts))])
    return d


@pytest.mark.parametrize("kind", list(KINDS))
def test_static_matches_hf(kind):
    model = make_qwen3(**KINDS[kind])
    prompts = _prompts(model.config.vocab_size)
    engine = make_engine(model, cache_config=_infinilm.StaticKVCacheConfig(2, 64))
    seqs, logits = run_static(engine, prompts, STEPS)
    for p, s, lg in zip(prompts, seqs, logits):
        assert len(s) == len(p) + STEPS + 1
        check_sequence(model, len(p), s, lg)


@pytest.mark.parametrize("kind", list(KINDS))
def test_paged_mixed_steps_match_hf(kind):
    model = make_qwen3(**KINDS[kind])
    prompts = _prompts(model.config.vocab_size, (11, 5))
    torch.manual_seed(7)
    d = _paged(make_engine(model, cache_config=paged_config(model, 40, 4)), prompts, 40, 4, chunk=6)
    for q in d.reqs:  # one request's greedy path may settle into a short loop; together they must vary
        check_sequence(model, q["prompt"], q["tokens"], q["logits"], min_distinct=1)
    assert len({t for q in d.reqs for t in q["tokens"][q["prompt"]:]}) >= 4, "greedy paths are degenerate"


def test_q_k_norm_is_used():
    """Zeroing the q/k norm weights must change the engine's logits (the norms are not silently skipped)."""
    model = make_qwen3(**KINDS["gqa_untied"])
    prompt = _prompts(model.config.vocab_size, (7,))
    engine = make_engine(model)
    _, a = run_static(engine, prompt, 0)
    for i in range(model.config.num_hidden_layers):
        engine.load_param(f"model.layers.{i}.self_attn.q_norm.weight", torch.full((40,), 0.1))
    engine.reset_cache()
    _, b = run_static(engine, prompt, 0)
    assert (a[0][0] - b[0][0]).abs().max() > 1e-2


def _tp_model():
    # 8 query heads over 4 kv heads: TP 2 and 4 both split the kv heads and keep GQA within a rank.
    return make_qwen3(hidden=56, heads=8, kv_heads=4, head_dim=20, inter=96, vocab=211)


def _close(got, want):
    g, w = torch.stack(got), torch.stack(want)
    err, scale = (g - w).abs().max().item(), w.abs().max().item()
    assert err <= 1e-4 * scale + 1e-5, f"TP logits differ from TP=1 by {err} (scale {scale})"


@pytest.mark.parametrize("tp", [2, 4])
def test_static_tp_matches_tp1_and_hf(tp):
    model = _tp_model()
    prompts = _prompts(211, (6, 3))
    cache = _infinilm.StaticKVCacheConfig(2, 64)
    want_seqs, want_logits = run_static(make_engine(model, cache_config=cache), prompts, STEPS)
    engine = make_engine(model, cache_config=cache, distributed_config=DistConfig(tp))
    seqs, logits = run_static(engine, prompts, STEPS)
    assert seqs == want_seqs
    for b, p in enumerate(prompts):
        _close(logits[b], want_logits[b])
        check_sequence(model, len(p), seqs[b], logits[b])
    # q/k norm weights are per head: every rank holds the full [head_dim] copy.
    for sd in engine.state_dict():
        torch.testing.assert_close(sd["model.layers.1.self_attn.k_norm.weight"],
                                   model.model.layers[1].self_attn.k_norm.weight, rtol=0, atol=0)
        assert sd["model.layers.0.self_attn.q_proj.weight"].shape == (8 // tp * 20, 56)


def test_paged_tp2_matches_hf():
    model = _tp_model()
    prompts = _prompts(211, (10, 5))
    torch.manual_seed(3)
    engine = make_engine(model, cache_config=paged_config(model, 48, 4), distributed_config=DistConfig(2))
    d = _paged(engine, prompts, 48, 4, chunk=4)
    for q in d.reqs:
        check_sequence(model, q["prompt"], q["tokens"], q["logits"])


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_bf16_within_twice_hf_bf16_error(cache):
    """bf16 engine vs an fp32 reference on the same bf16-rounded weights: its error is at most about twice
    that of HF transformers running in bf16."""
    kw = dict(hidden=96, heads=4, kv_heads=2, head_dim=48, inter=160, vocab=256)
    model = make_qwen3(dtype=torch.bfloat16, **kw)
    ref32 = make_qwen3(**kw)
    ref32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    prompts = _prompts(256)
    if cache == "static":
        seqs, logits = run_static(make_engine(model, torch.bfloat16, _infinilm.StaticKVCacheConfig(2, 96)), prompts,
                                  STEPS)
    else:
        engine = make_engine(model, torch.bfloat16, paged_config(model, 16, 16, torch.bfloat16))
        d = _paged(engine, prompts, 16, 16)
        seqs, logits = [q["tokens"] for q in d.reqs], [q["logits"] for q in d.reqs]
    for p, s, lg in zip(prompts, seqs, logits):
        ref = hf_logits(ref32, s[:-1])[len(p) - 1 :]
        hf_err = (hf_logits(model, s[:-1])[len(p) - 1 :] - ref).abs().max().item()
        bound = 2 * hf_err + 1e-2 * ref.abs().max().item()
        err = check_sequence(model, len(p), s, lg, ref_model=ref32, bound=bound)
        assert err <= bound, f"bf16 engine error {err} vs HF bf16 error {hf_err}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = make_qwen3(**KINDS["gqa_tied"])
    path = str(tmp_path_factory.mktemp("qwen3") / "model")
    model.save_pretrained(path)
    return model, path


def _hf_greedy(model, prompt, n):
    with torch.no_grad():
        ids = torch.tensor([prompt])  # an explicit mask: generate would take a prompt token equal to pad for padding
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_auto_config_and_weights(saved):
    from infinilm_torch.auto_config import AutoConfig
    from infinilm_torch.weights import checkpoint_names, expected_param_names

    model, path = saved
    c = AutoConfig.from_pretrained(path)
    assert (c.model_type, c.head_dim, c.hidden_size, c.num_attention_heads) == ("qwen3", 24, 48, 4)
    assert c.tie_word_embeddings and not c.attention_bias
    names = expected_param_names(c)
    assert set(names) == {n for n in model.state_dict() if n != "lm_head.weight"}
    assert set(names) <= set(checkpoint_names(path))


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_llm_generate_matches_hf_greedy(saved, cache):
    from infinilm_torch import LLM, SamplingParams

    model, path = saved
    llm = LLM(path, cache=cache, block_size=4, max_batch_size=2, max_cache_len=64, progress=False)
    prompts = _prompts(157, (8, 3))
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True))
    for p, o in zip(prompts, outs):
        assert o.outputs[0].token_ids == _hf_greedy(model, p, STEPS)


def test_cli_generate(saved):
    model, path = saved
    prompt = [5, 77, 12, 140]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "infinilm_torch", "generate", "--model", path, "--prompt-ids",
                        ",".join(map(str, prompt)), "--temperature", "0", "--max-new-tokens", "12", "--ignore-eos",
                        "--cache", "paged"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "(qwen3, 2 layers" in r.stdout
    lines = r.stdout.splitlines()
    got = ast.literal_eval(lines[next(i for i, ln in enumerate(lines) if ln.startswith("--- [0]")) + 1])
    assert got == _hf_greedy(model, prompt, 12)
