"""The Python front end on the C++ engine versus HF transformers: AutoConfig, weight loading, generate, CLI, examples.

Small random models of each family are built with transformers, their weights spread wide (std 0.5) so
greedy paths vary, saved with save_pretrained, loaded by the front end, and compared with HF's own
greedy ``generate`` on the same prompts (one prompt at a time on the HF side, so no padding is involved).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import infinilm_torch

transformers = pytest.importorskip("transformers")

from infinilm_torch import LLM, SamplingParams  # noqa: E402
from infinilm_torch.auto_config import AutoConfig  # noqa: E402
from infinilm_torch.weights import WeightsError, expected_param_names  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256, rms_norm_eps=1e-5, eos_token_id=None, bos_token_id=1)  # no eos: fixed lengths
FAMILIES = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, rope_theta=500000.0)),  # GQA, untied
    "llama3-mha-tied": ("LlamaConfig", dict(num_key_value_heads=4, head_dim=32, tie_word_embeddings=True,
                                            attention_bias=True, rope_parameters={
                                                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                                                "rope_theta": 10000.0})),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=1, sliding_window=None)),
}


def make_hf(tmp_path, family="llama", **overrides):
    """A random HF causal LM with wide weights, saved to tmp_path/family; returns (model, directory)."""
    cls_name, kw = FAMILIES[family]
    cfg = getattr(transformers, cls_name)(**{**SMALL, **kw, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.5 * torch.randn_like(p))
    path = os.path.join(tmp_path, family)
    model.save_pretrained(path)
    return model, path


def hf_greedy(model, prompt, n):
    with torch.no_grad():
        ids = torch.tensor([prompt])  # an explicit mask: generate would take a prompt token equal to pad for padding
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def assert_same_greedy(model, prompt, ours, n):
    """Equal to HF's greedy tokens; at a first difference HF's two candidates must be a near-tie (fp32 noise)."""
    ref = hf_greedy(model, prompt, n)
    if ref == ours:
        return
    i = next((j for j, (a, b) in enumerate(zip(ref, ours)) if a != b), min(len(ref), len(ours)))
    assert i < min(len(ref), len(ours)), f"lengths differ: HF {ref} vs ours {ours}"
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ref[:i]])).logits[0, -1]
    gap = (logits[ref[i]] - logits[ours[i]]).abs().item()
    assert gap <= 1e-4 * logits.abs().max().item(), f"step {i}: HF {ref} vs ours {ours} (logit gap {gap:.3g})"


def greedy(n, **kw):
    return SamplingParams(temperature=0, max_tokens=n, **kw)


def ids_of(outs):
    return [o.outputs[0].token_ids for o in outs]


def prompts_of(lengths, vocab=96):
    return [torch.randint(3, vocab, (n,)).tolist() for n in lengths]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_auto_config_matches_hf(tmp_path, family):
    model, path = make_hf(tmp_path, family, eos_token_id=[2, 5])
    c, hf = AutoConfig.from_pretrained(path), model.config
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(c, k) == getattr(hf, k), k
    assert c.head_dim == getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    assert c.model_type == hf.model_type and list(c.eos_token_id) == [2, 5] and list(c.bos_token_id) == [1]
    assert c.rope_theta == hf.rope_parameters["rope_theta"]
    assert c.attention_bias == (family == "qwen2" or bool(getattr(hf, "attention_bias", False)))
    assert c.kv_dim() == c.num_key_value_heads * c.head_dim
    if family.startswith("llama3"):
        assert (c.rope_type, c.rope_factor, c.rope_original_max_position_embeddings) == ("llama3", 8.0, 32)


def test_weights_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    model, path = make_hf(tmp_path, "qwen2")
    llm = LLM(path, progress=False)
    sd = llm.engine.state_dict()[0]
    assert set(sd) == set(expected_param_names(llm.fields)) and "lm_head.weight" not in sd  # tied
    for name, t in model.state_dict().items():
        if name in sd:
            torch.testing.assert_close(sd[name].float(), t.float(), rtol=0, atol=0)
    file = os.path.join(path, "model.safetensors")
    full = load_file(file)
    save_file({k: v for k, v in full.items() if k != "model.layers.1.mlp.up_proj.weight"}, file)
    with pytest.raises(WeightsError, match=r"1 missing: \['model.layers.1.mlp.up_proj.weight'\]"):
        LLM(path, progress=False)
    save_file({**full, "model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}, file)
    with pytest.raises(WeightsError, match=r"1 unexpected: \['model.layers.0.self_attn.o_proj.bias'\]"):
        LLM(path, progress=False)


@pytest.mark.parametrize("cache", ["static", "paged"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_generate_matches_hf_greedy(tmp_path, family, cache):
    model, path = make_hf(tmp_path, family)
    llm = LLM(path, cache=cache, block_size=4, max_batch_size=2, max_cache_len=64, progress=False)
    prompts = prompts_of([11, 4])
    outs = llm.generate(prompts, greedy(24))
    assert [o.prompt_token_ids for o in outs] == prompts and all(o.outputs[0].text == "" for o in outs)
    assert llm.last_stats.generated_tokens == sum(len(t) for t in ids_of(outs)) and llm.last_stats.tokens_per_s > 0
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in outs)
    for p, o in zip(prompts, ids_of(outs)):
        assert_same_greedy(model, p, o, 24)
    assert len(set(ids_of(outs)[0])) > 3, "greedy path repeats one token: the test model proves nothing"


def test_paged_scheduling_matches_hf(tmp_path):
    """More requests than the blocks hold and a per-step token budget: requests wait, steps mix prefill and
    decode, freed blocks are reused (non-contiguous tables); every request still equals HF."""
    model, path = make_hf(tmp_path, "llama")
    lengths = [9, 14, 3, 6, 17]
    n = 10
    bytes_per_block = 2 * 16 * 2 * 4 * 2 * 4  # k+v, head_dim, kv heads, block 4, layers, fp32
    llm = LLM(path, cache="paged", block_size=4, max_kv_memory_bytes=15 * bytes_per_block, progress=False,
              max_step_tokens=16)
    assert llm.num_blocks == 15
    prompts = prompts_of(lengths)
    out = ids_of(llm.generate(prompts, greedy(n)))
    assert [len(t) for t in out] == [n] * len(lengths) and llm.last_stats.steps > n + 2
    for p, o in zip(prompts, out):
        assert_same_greedy(model, p, o, n)


def test_static_chunks_and_cache_growth(tmp_path):
    """More prompts than static rows (run in chunks) and longer than the cache (grown by reset_cache)."""
    model, path = make_hf(tmp_path, "mistral")
    llm = LLM(path, cache="static", max_batch_size=2, max_cache_len=8, progress=False)
    prompts = prompts_of([14, 3, 9])
    out = ids_of(llm.generate(prompts, greedy(10)))
    assert (llm.max_batch_size, llm.max_cache_len) == (2, 23)
    for p, o in zip(prompts, out):
        assert_same_greedy(model, p, o, 10)


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_stop_at_eos(tmp_path, cache):
    model, path = make_hf(tmp_path, "llama")
    prompts = prompts_of([7, 12, 5])
    full = ids_of(LLM(path, cache=cache, max_batch_size=4, progress=False).generate(
        prompts, greedy(16, ignore_eos=True)))
    eos = full[0][5]
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["eos_token_id"] = [95, eos]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    outs = LLM(path, cache=cache, max_batch_size=4, progress=False).generate(prompts, greedy(16))
    for row, o in zip(full, outs):
        got, why = o.outputs[0].token_ids, o.outputs[0].finish_reason
        stop = next((i for i, t in enumerate(row) if t in (95, eos)), None)
        assert got == (row if stop is None else row[: stop + 1])
        assert why == ("length" if stop is None else "stop")
        assert o.outputs[0].stop_reason == (None if stop is None else row[stop])
    assert outs[0].outputs[0].finish_reason == "stop" and len(outs[0].outputs[0].token_ids) <= 6


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_sampling_seed(tmp_path, cache):
    _, path = make_hf(tmp_path, "mistral")
    llm = LLM(path, cache=cache, progress=False)
    prompts = prompts_of([5, 8])
    kw = dict(max_tokens=12, temperature=1.0, top_k=0, top_p=1.0, ignore_eos=True)
    a = ids_of(llm.generate(prompts, SamplingParams(seed=7, **kw)))
    b = ids_of(llm.generate(prompts, SamplingParams(seed=7, **kw)))
    c = ids_of(llm.generate(prompts, SamplingParams(seed=8, **kw)))
    assert a == b and a != c
    want = ids_of(llm.generate(prompts, greedy(12, ignore_eos=True)))
    assert ids_of(llm.generate(prompts, SamplingParams(seed=3, **{**kw, "top_k": 1}))) == want


def test_from_hf_model_and_dtype(tmp_path):
    model, path = make_hf(tmp_path, "qwen2")
    llm = infinilm_torch.from_hf_model(model, cache="paged", block_size=8)
    assert llm.device == torch.device("cpu") and llm.dtype is torch.float32
    prompts = prompts_of([6, 10])
    for p, o in zip(prompts, ids_of(llm.generate(prompts, greedy(16)))):
        assert_same_greedy(model, p, o, 16)
    bf16 = LLM(path, dtype=torch.bfloat16, progress=False)
    assert bf16.engine.state_dict()[0]["model.norm.weight"].dtype is torch.bfloat16
    assert len(ids_of(bf16.generate(prompts, greedy(4)))[1]) >= 1


def test_bad_generate_arguments(tmp_path):
    _, path = make_hf(tmp_path, "llama")
    llm = LLM(path, progress=False)
    with pytest.raises(ValueError, match=r"prompt 0 token ids \[96\] are out of range \[0, 96\)"):
        llm.generate([[1, 96]])
    with pytest.raises(ValueError, match="has no tokenizer"):
        llm.generate("hello")
    with pytest.raises(ValueError, match="empty prompt 0"):
        llm.generate([[]])
    with pytest.raises(ValueError, match=r"\(250 tokens\) \+ max_tokens \(8\) - 1 = 257 positions exceeds the model's max_pos"):
        llm.generate([[1] * 250], greedy(8))
    assert len(ids_of(llm.generate([[1] * 250], greedy(7)))[0]) == 7
    paged = LLM(path, cache="paged", progress=False)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings 256"):
        paged.generate([[1] * 250], greedy(8))


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    env = dict(os.environ, INFINILM_DEMO_DIR=str(tmp_path_factory.mktemp("demo") / "model"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _run(args, env):
    r = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_cli_demo_model(demo_env):
    out = _run(["-m", "infinilm_torch", "--model", "demo"], demo_env)
    assert "wrote the demo checkpoint" in out and "tokens/s" in out and "--- [1]" in out
    out = _run(["-m", "infinilm_torch", "generate", "--model", demo_env["INFINILM_DEMO_DIR"], "--cache", "paged",
                "--prompt", "Hello", "--max-new-tokens", "8", "--temperature", "0", "--ignore-eos"], demo_env)
    assert "wrote the demo" not in out and "(8 tokens, length)" in out and "paged cache" in out


def test_spec_usage_example(demo_env):
    from infinilm_torch.demo_model import ensure_demo_model

    ensure_demo_model(demo_env["INFINILM_DEMO_DIR"], verbose=False)
    out = _run([os.path.join("examples", "spec_usage.py"), demo_env["INFINILM_DEMO_DIR"]], demo_env)
    assert "generated token: [[" in out
