"""The serving scheduler through LLM.generate: batching, preemption, chunked prefill, prefix cache, sampling, threads.

Every check compares a request's tokens with the same request run alone (or with a plain PyTorch reference
over the engine's own logits), on a tiny random Llama with wide weights (greedy paths vary) and the demo's
character tokenizer (so text, stop strings and chat work).
"""
import json
import os
import threading

import pytest
import torch

from infinilm_torch import LLM, SamplingParams

transformers = pytest.importorskip("transformers")

from infinilm_torch.tokenizer import save_char_tokenizer  # noqa: E402

BLOCK_BYTES = 2 * 16 * 2 * 4 * 2 * 4  # k+v, head_dim 16, 2 kv heads, block 4, 2 layers, fp32


def tiny_model(path, eos=None):
    """A 2-layer random Llama with std-0.5 weights and a char tokenizer, saved to ``path``."""
    vocab = save_char_tokenizer(path)
    cfg_file = os.path.join(path, "tokenizer_config.json")
    with open(cfg_file) as f:
        tok_cfg = json.load(f)
    tok_cfg["chat_template"] = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                                "{% if add_generation_prompt %}[assistant] {% endif %}")
    with open(cfg_file, "w") as f:
        json.dump(tok_cfg, f)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   eos_token_id=eos, bos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.5 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(str(tmp_path_factory.mktemp("serving") / "tiny"))


def rand_prompts(lengths, vocab=100):
    return [torch.randint(4, vocab, (n,)).tolist() for n in lengths]


def greedy(n, **kw):
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)


def ids_of(outs):
    return [o.outputs[0].token_ids for o in outs]


def alone(llm, prompts, params):
    ps = params if isinstance(params, list) else [params] * len(prompts)
    return [llm.generate([p], sp, use_tqdm=False)[0].outputs[0].token_ids for p, sp in zip(prompts, ps)]


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_batch_equals_alone(model_dir, cache):
    llm = LLM(model_dir, cache=cache, block_size=4, max_batch_size=3, max_cache_len=64, progress=False)
    prompts = rand_prompts([5, 17, 2, 9, 12])
    params = [greedy(n) for n in (12, 5, 9, 14, 7)]  # different lengths: rows join and leave mid-run
    outs = llm.generate(prompts, params)
    assert [o.prompt_token_ids for o in outs] == prompts
    assert [len(t) for t in ids_of(outs)] == [12, 5, 9, 14, 7]
    assert ids_of(outs) == alone(LLM(model_dir, cache=cache, progress=False), prompts, params)
    assert len(set(ids_of(outs)[0])) > 3


def test_preemption_by_recompute(model_dir):
    """12 blocks of 4 tokens for 6 requests of up to 26 tokens: blocks run out, the youngest are recomputed."""
    llm = LLM(model_dir, cache="paged", block_size=4, max_kv_memory_bytes=12 * BLOCK_BYTES, progress=False,
              enable_prefix_caching=False)
    assert llm.num_blocks == 12
    prompts = rand_prompts([10, 6, 13, 8, 3, 11])
    outs = llm.generate(prompts, greedy(14))
    assert llm._core.scheduler.num_preemptions > 0
    assert llm._core.scheduler.bm.num_free == 12  # every block came back
    assert ids_of(outs) == alone(LLM(model_dir, cache="static", progress=False), prompts, greedy(14))


def test_chunked_prefill_mixed_with_decodes(model_dir):
    llm = LLM(model_dir, cache="paged", block_size=4, max_step_tokens=8, progress=False)
    sched = llm._core.scheduler
    plans = []
    orig = sched.schedule

    def spy():
        b = orig()
        plans.append(list(b.lengths))
        return b

    sched.schedule = spy
    prompts = rand_prompts([30, 3, 21])
    outs = llm.generate(prompts, greedy(10))
    assert max(sum(p) for p in plans) <= 8
    assert any(1 in p and max(p) > 1 for p in plans), f"no step mixed a prefill chunk with a decode: {plans}"
    assert ids_of(outs) == alone(LLM(model_dir, cache="static", progress=False), prompts, greedy(10))


def test_prefix_cache_hits(model_dir):
    llm = LLM(model_dir, cache="paged", block_size=4, progress=False)
    head = rand_prompts([21])[0]
    prompts = [head + t for t in rand_prompts([3, 7, 1])]
    first = llm.generate(prompts[:1], greedy(8))
    outs = llm.generate(prompts, greedy(8))
    bm = llm._core.scheduler.bm
    assert [o.num_cached_tokens for o in outs] == [20, 20, 20]  # 5 full blocks of the shared 21-token head
    assert first[0].num_cached_tokens == 0 and bm.hit_tokens == 60
    ref = LLM(model_dir, cache="paged", block_size=4, enable_prefix_caching=False, progress=False)
    assert ids_of(outs) == alone(ref, prompts, greedy(8))


def test_seeded_sampling_independent_of_batching(model_dir):
    llm = LLM(model_dir, cache="paged", block_size=4, progress=False)
    prompt = rand_prompts([6])[0]
    sp = SamplingParams(temperature=1.0, top_k=0, max_tokens=12, seed=1234, ignore_eos=True)
    solo = ids_of(llm.generate([prompt], sp))[0]
    others = [SamplingParams(temperature=0.7, max_tokens=9, seed=s, ignore_eos=True) for s in range(5)]
    mixed = llm.generate(rand_prompts([4, 9]) + [prompt] + rand_prompts([2, 5, 11, 3]),
                         others[:2] + [sp] + others[2:] + [greedy(6)])
    assert mixed[2].outputs[0].token_ids == solo
    static = LLM(model_dir, cache="static", max_batch_size=4, progress=False)
    assert ids_of(static.generate([prompt, prompt], [greedy(3), sp]))[1] == solo
    many = llm.generate([prompt], SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=99, ignore_eos=True))[0]
    assert [o.index for o in many.outputs] == [0, 1, 2, 3]
    assert len({tuple(o.token_ids) for o in many.outputs}) > 1


def test_stop_strings_cut_exactly(model_dir):
    llm = LLM(model_dir, cache="paged", progress=False)
    full = llm.generate("Hello, world", greedy(30))[0].outputs[0]
    assert len(full.text) >= 20
    stop = full.text[11:13]
    cut = full.text[:full.text.find(stop)]
    out = llm.generate("Hello, world", greedy(30, stop=[stop, "\x00never"]))[0].outputs[0]
    assert out.text == cut and out.finish_reason == "stop" and out.stop_reason == stop
    k = next(k for k in range(31) if stop in llm.decode(full.token_ids[:k]))
    assert out.token_ids == full.token_ids[:k]  # ids keep the tokens that formed it


def _engine_logits(ref, ids):
    """The engine's next-token logits after ``ids`` (a fresh static row)."""
    inp = ref._lib.InferEngine.Input(input_ids=torch.tensor([ids]), return_logits=True, temperature=0.0)
    return ref.engine.forward(inp).logits[0].float()


class _SpyEngine:
    """Wraps an LLM's engine: every step also returns its logits, and the step outputs are kept."""

    def __init__(self, engine):
        self.engine, self.outputs = engine, []

    def forward(self, inp):
        inp.return_logits = True
        out = self.engine.forward(inp)
        self.outputs.append(out)
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_logprobs_are_log_softmax_of_engine_logits(model_dir):
    llm = LLM(model_dir, cache="paged", progress=False)
    spy = llm.engine = _SpyEngine(llm.engine)
    ref = LLM(model_dir, cache="static", max_batch_size=1, progress=False)
    prompt = rand_prompts([7])[0]
    o = llm.generate([prompt], SamplingParams(temperature=0.8, max_tokens=6, logprobs=3, seed=5,
                                              ignore_eos=True))[0].outputs[0]
    assert len(o.logprobs) == 6 and len(spy.outputs) == 6  # one request: one row per step
    total = 0.0
    for t, (tok, step) in enumerate(zip(o.token_ids, spy.outputs)):
        lp = torch.log_softmax(step.logits[0].float(), dim=0)  # the very logits this step sampled from
        top = lp.topk(3)
        entry = o.logprobs[t]
        for r, (v, i) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            assert entry[i].rank == r + 1 and entry[i].logprob == pytest.approx(v, abs=1e-5)
        assert entry[tok].logprob == pytest.approx(lp[tok].item(), abs=1e-5)
        assert entry[tok].rank == int((lp > lp[tok]).sum()) + 1
        total += lp[tok].item()
        # and an independent forward of the same tokens (static cache, one prefill): equal up to fp32 noise,
        # which the wide test weights amplify between the decode and prefill attention paths
        logits = _engine_logits(ref, prompt + o.token_ids[:t])
        ind = torch.log_softmax(logits, dim=0)[tok].item()
        assert entry[tok].logprob == pytest.approx(ind, abs=1e-4 * logits.abs().max().item())
    assert o.cumulative_logprob == pytest.approx(total, abs=1e-4)


def test_penalties_match_plain_reference(model_dir):
    llm = LLM(model_dir, cache="paged", progress=False)
    ref = LLM(model_dir, cache="static", max_batch_size=1, progress=False)
    kw = dict(repetition_penalty=2.5, presence_penalty=1.5, frequency_penalty=2.0)
    prompts = rand_prompts([9, 4, 13])
    got = ids_of(llm.generate(prompts, greedy(12, **kw)))
    changed = 0
    for prompt, toks in zip(prompts, got):
        want = []
        for _ in range(12):
            logits = _engine_logits(ref, prompt + want)
            for tok in set(prompt + want):  # plain per-token loops: the reference
                v = logits[tok].item()
                logits[tok] = v / kw["repetition_penalty"] if v > 0 else v * kw["repetition_penalty"]
            for tok in set(want):
                logits[tok] -= kw["presence_penalty"] + kw["frequency_penalty"] * want.count(tok)
            want.append(int(logits.argmax()))
        assert toks == want
        changed += toks != ids_of(llm.generate([prompt], greedy(12)))[0]
    assert changed, "penalties changed nothing: the test proves nothing"


def test_never_fitting_request_errors_while_others_finish(model_dir):
    llm = LLM(model_dir, cache="paged", block_size=4, max_kv_memory_bytes=8 * BLOCK_BYTES, progress=False)
    prompts = rand_prompts([5, 40, 6])
    with pytest.raises(ValueError, match=r"request \d+: prompt \(40 tokens\).*need 11 blocks of 4; the paged cache has "
                                         r"only 8"):
        llm.generate(prompts, greedy(4))
    results, errors = {}, []

    def ok():
        results["ok"] = ids_of(llm.generate([prompts[0], prompts[2]], greedy(20)))

    def bad():
        try:
            llm.generate([prompts[1]], greedy(4))
        except ValueError as e:
            errors.append(e)

    threads = [threading.Thread(target=ok), threading.Thread(target=bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(errors) == 1 and results["ok"] == alone(llm, [prompts[0], prompts[2]], greedy(20))


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_two_threads_share_one_llm(model_dir, cache):
    llm = LLM(model_dir, cache=cache, block_size=4, max_batch_size=4, progress=False)
    work = {i: rand_prompts([3 + i, 11 - i, 7]) for i in range(2)}
    got = {}

    def run(i):
        got[i] = [ids_of(llm.generate(work[i], greedy(10 + k))) for k in range(3)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    ref = LLM(model_dir, cache="static", progress=False)
    for i in range(2):
        assert got[i] == [alone(ref, work[i], greedy(10 + k)) for k in range(3)]


def test_prompt_forms_and_bad_arguments(model_dir):
    np = pytest.importorskip("numpy")
    llm = LLM(model_dir, cache="paged", block_size=4, progress=False)
    p = rand_prompts([6])[0]
    want = ids_of(llm.generate([p], greedy(5)))
    for form in (p, tuple(p), np.array(p), torch.tensor(p), {"prompt_token_ids": p}, [np.array(p)]):
        assert ids_of(llm.generate(form, greedy(5))) == want, type(form)
    text = llm.generate(["Hi there", {"prompt": "Hi there"}], greedy(4))
    assert text[0].prompt == "Hi there" and ids_of(text)[0] == ids_of(text)[1]
    for bad in ([1.5, 2.7], [[1.5, 2.7]], [[3, "x"]]):
        with pytest.raises(TypeError, match="token ids must be ints, got"):
            llm.generate(bad, greedy(2))
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['max_new_tokens'\].*max_tokens"):
        llm.generate([p], max_new_tokens=4)
    with pytest.raises(TypeError, match="prompts must be"):
        llm.generate(3.5, greedy(2))
    with pytest.raises(ValueError, match=r"2 sampling_params for 3 prompts"):
        llm.generate([p, p, p], [greedy(2), greedy(2)])
    for kw, msg in ((dict(seed="a"), r"seed must be an int or None, got 'a'"),
                    (dict(max_tokens=0), r"max_tokens must be an int >= 1"),
                    (dict(temperature=-1), r"temperature must be a number >= 0"),
                    (dict(top_p=0), r"top_p must be a number in \(0, 1\]"),
                    (dict(n=0), r"n must be an int >= 1"),
                    (dict(stop=[""]), r"stop must be a non-empty string"),
                    (dict(logprobs=-2), r"logprobs must be an int >= 0")):
        with pytest.raises(ValueError, match=msg):
            SamplingParams(**kw)
    for kw, msg in ((dict(cache="paged", block_size=0), r"block_size must be an int >= 1, got 0"),
                    (dict(max_num_seqs=0), r"max_num_seqs must be an int >= 1, got 0"),
                    (dict(max_cache_len=0), r"max_cache_len must be an int >= 1, got 0"),
                    (dict(max_batch_size=-1, cache="paged"), r"max_batch_size must be an int >= 1, got -1"),
                    (dict(max_step_tokens=8, max_num_batched_tokens=16), r"disagree"),
                    (dict(cache="dynamic"), r"cache must be 'static' or 'paged'")):
        with pytest.raises(ValueError, match=msg):
            LLM(model_dir, progress=False, **kw)
    assert LLM(model_dir, cache="paged", max_num_batched_tokens=16, progress=False).max_step_tokens == 16
    tiny = SamplingParams(temperature=1e-30, max_tokens=5, ignore_eos=True)
    assert tiny.temperature == 0.0 and ids_of(llm.generate([p], tiny)) == want


def test_stream_and_reset_cache(model_dir):
    llm = LLM(model_dir, cache="paged", block_size=4, progress=False)
    prompt = rand_prompts([13])[0]
    want = llm.generate([prompt], greedy(9, stop=["\x7f"]))[0].outputs[0]
    snaps = list(llm.stream(prompt, greedy(9, stop=["\x7f"])))
    assert snaps[-1].finished and not any(s.finished for s in snaps[:-1])
    assert snaps[-1].outputs[0].token_ids == want.token_ids and snaps[-1].outputs[0].text == want.text
    assert snaps[-1].num_cached_tokens == 12  # the first run's blocks
    texts = [s.outputs[0].text for s in snaps]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    llm.reset_cache()
    again = llm.generate([prompt], greedy(9))[0]
    assert again.num_cached_tokens == 0 and again.outputs[0].token_ids == want.token_ids


def test_min_tokens_masks_stop_ids(model_dir):
    llm = LLM(model_dir, cache="paged", progress=False)
    prompt = rand_prompts([8])[0]
    full = ids_of(llm.generate([prompt], greedy(12)))[0]
    stop = full[2]
    first = full.index(stop)
    short = llm.generate([prompt], greedy(12, stop_token_ids=[stop]))[0].outputs[0]
    assert short.token_ids == full[:first + 1] and short.finish_reason == "stop" and short.stop_reason == stop
    held = llm.generate([prompt], greedy(12, stop_token_ids=[stop], min_tokens=first + 3))[0].outputs[0]
    assert stop not in held.token_ids[:first + 3] and len(held.token_ids) >= first + 3
    assert held.token_ids[:first] == full[:first]


def test_sampling_filters_reach_the_sampler(model_dir):
    """End to end through LLM.generate: a top_p / min_p / top_k that keeps only the most likely token turns
    temperature-2 sampling into greedy decoding, while the same seeds without the filter leave it."""
    llm = LLM(model_dir, cache="paged", block_size=4, progress=False)
    prompts = rand_prompts([5, 7, 3, 9])
    want = ids_of(llm.generate(prompts, greedy(12)))
    hot = dict(temperature=2.0, max_tokens=12, ignore_eos=True)
    for filt in (dict(top_p=1e-6, top_k=0), dict(min_p=1.0, top_k=0), dict(top_k=1)):
        got = ids_of(llm.generate(prompts, [SamplingParams(seed=s, **filt, **hot) for s in range(4)]))
        assert got == want, f"{filt} did not reach the sampler"
    free = ids_of(llm.generate(prompts, [SamplingParams(seed=s, top_k=0, **hot) for s in range(4)]))
    assert free != want, "unfiltered temperature-2 sampling reproduced greedy decoding: the test proves nothing"
