"""The engine on trained weights (SmolLM2-135M-Instruct, the package's Q4_1 GGUF) versus transformers on the same file.

Both sides load the same GGUF: ours through LLM(path) (our GGUF reader, dequantized to fp32), transformers
through its own GGUF loading. The engine is driven through InferEngine inputs directly. Checked:
teacher-forced logits over an English paragraph (fp32), its perplexity, 64 greedy tokens of chat prompts
with the static and the paged cache, bf16 within the FlashAttention rule, and the model's answer to
"What is the capital of France?".
"""
import copy
import inspect
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from engine_utils import Input, PagedDriver, run_static  # noqa: E402
from infinilm_torch.lib import _infinilm  # noqa: E402
from infinilm_torch.llm import LLM  # noqa: E402
from infinilm_torch.loaders import default_model  # noqa: E402

PARAGRAPH = ("The river rises in the hills to the north of the town and flows slowly through fields of wheat and "
             "barley before it reaches the sea. In the summer, children swim in its shallow pools, and farmers "
             "use its water to keep their crops alive during the long dry weeks. Every spring the melting snow "
             "swells the river, and the old stone bridge in the market square has stood against these floods for "
             "more than three hundred years.")
CHATS = ["What is the capital of France?", "Write a short poem about the sea.",
         "Explain in two sentences why the sky is blue.", "List three fruits that are red."]
PREFIX = 8  # tokens of the paragraph prefilled at once; the rest are fed one decode step each
STEPS = 64


@pytest.fixture(scope="module")
def path():
    return default_model()


@pytest.fixture(scope="module")
def hf(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                              dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def llm(path):
    return LLM(path, progress=False, max_batch_size=len(CHATS), max_cache_len=256)


@pytest.fixture(scope="module")
def paragraph(llm):
    return llm.tokenizer.encode(PARAGRAPH)


@torch.no_grad()
def hf_logits(model, tokens):
    return model(torch.tensor([tokens])).logits[0].float()


def engine_logits(engine, tokens, prefix=PREFIX):
    """Teacher-forced logits [len(tokens) - prefix + 1, V]: a prefill of ``prefix`` tokens, then one token a step."""
    engine.reset_cache()
    out = engine.forward(Input(input_ids=torch.tensor([tokens[:prefix]]), return_logits=True, temperature=0.0))
    rows = [out.logits[0]]
    for i in range(prefix, len(tokens)):
        out = engine.forward(Input(input_ids=torch.tensor([[tokens[i]]]), cache_lengths=torch.tensor([i]),
                                   return_logits=True, temperature=0.0))
        rows.append(out.logits[0])
    return torch.stack(rows)


def nll(logits, targets):
    return torch.nn.functional.cross_entropy(logits.double(), torch.tensor(targets)).item()


@pytest.fixture(scope="module")
def fp32_logits(llm, hf, paragraph):
    return engine_logits(llm.engine, paragraph), hf_logits(hf, paragraph)[PREFIX - 1:]


def test_teacher_forced_logits_fp32(fp32_logits, paragraph):
    ours, ref = fp32_logits
    assert len(paragraph) > 70 and ours.shape == ref.shape
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= 2e-5 * scale, f"max logit error {err:.3g} (scale {scale:.3g})"


def test_perplexity_matches_transformers(fp32_logits, paragraph):
    ours, ref = fp32_logits
    targets = paragraph[PREFIX:]
    ppl_ours, ppl_ref = (torch.tensor(nll(x[:-1], targets)).exp().item() for x in (ours, ref))
    assert ppl_ref < 30, f"perplexity {ppl_ref}: the trained weights are not read right"
    assert abs(ppl_ours - ppl_ref) <= 0.005 * ppl_ref, (ppl_ours, ppl_ref)


def chat_ids(tok, question):
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": question}]), add_special_tokens=False)


@pytest.fixture(scope="module")
def prompts(llm):
    return [chat_ids(llm.tokenizer, q) for q in CHATS]


@pytest.fixture(scope="module")
def hf_greedy(hf, prompts):
    """HF's greedy continuation of each prompt for STEPS tokens (eos not honoured: fixed length), with the
    logits of each step for near-tie checks."""
    out = []
    # transformers 5.2x renamed past_key_values to cache
    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    with torch.no_grad():
        for p in prompts:
            r = hf(torch.tensor([p]), use_cache=True)
            toks, logits = [], []
            for _ in range(STEPS):
                last = r.logits[0, -1].float()
                logits.append(last)
                toks.append(int(last.argmax()))
                r = hf(torch.tensor([[toks[-1]]]), use_cache=True, **{key: getattr(r, key)})
            out.append((toks, torch.stack(logits)))
    return out


def assert_same_greedy(ours, ref, ref_logits, what):
    """Equal tokens; a first difference is allowed only at a near-tie of HF's own logits (fp32 noise)."""
    if ours == ref:
        return
    i = next(j for j, (a, b) in enumerate(zip(ours, ref)) if a != b)
    row = ref_logits[i]
    gap = (row[ref[i]] - row[ours[i]]).item()
    assert gap <= 1e-4 * row.abs().max().item(), f"{what}: step {i}: ours {ours} vs HF {ref} (logit gap {gap:.3g})"


def test_greedy_static(llm, prompts, hf_greedy):
    llm.engine.reset_cache()
    seqs, _ = run_static(llm.engine, prompts, STEPS - 1)
    for p, s, (ref, ref_logits), q in zip(prompts, seqs, hf_greedy, CHATS):
        assert_same_greedy(s[len(p):], ref, ref_logits, f"static {q!r}")
    assert len(set(seqs[1][len(prompts[1]):])) > 10, "degenerate generation proves nothing"


def test_greedy_paged(llm, prompts, hf_greedy):
    block = 16
    try:
        llm.engine.reset_cache(_infinilm.PagedKVCacheConfig(64 * 1024 * 1024, block))
        num_blocks = llm.engine.num_blocks if isinstance(getattr(llm.engine, "num_blocks", None), int) else 64
        drv = PagedDriver(llm.engine, prompts, num_blocks, block)
        drv.step([(0, len(prompts[0])), (1, 5)])  # one whole prompt and a chunk of another in one step
        drv.step([(0, 1), (1, len(prompts[1]) - 5), (2, len(prompts[2])), (3, len(prompts[3]))])
        for _ in range(STEPS):
            plan = [(r, 1) for r, q in enumerate(drv.reqs) if len(q["tokens"]) - q["prompt"] < STEPS]
            if not plan:
                break
            drv.step(plan)
    finally:
        llm.engine.reset_cache(llm._cache_config())
    for q, (ref, ref_logits), text in zip(drv.reqs, hf_greedy, CHATS):
        assert_same_greedy(q["tokens"][q["prompt"]:], ref, ref_logits, f"paged {text!r}")


def test_capital_of_france(llm, prompts, hf_greedy):
    """transformers answers "The capital of France is Paris." (greedy, chat template): so does the engine."""
    tok = llm.tokenizer
    llm.engine.reset_cache()
    seqs, _ = run_static(llm.engine, prompts[:1], 20)
    answer = seqs[0][len(prompts[0]):]
    answer = answer[: answer.index(tok.eos_token_id)] if tok.eos_token_id in answer else answer
    ref = hf_greedy[0][0]
    assert tok.decode(ref[: ref.index(tok.eos_token_id)]) == "The capital of France is Paris."
    assert tok.decode(answer) == "The capital of France is Paris."


def test_bf16_flash_attention_rule(path, hf, paragraph, fp32_logits):
    """Our bf16 error vs the fp32 reference is at most ~2x transformers' own bf16 error (mean and max)."""
    tokens = paragraph[:48]
    ref = fp32_logits[1][: len(tokens) - PREFIX + 1]
    ours = engine_logits(LLM(path, dtype="bfloat16", progress=False, max_batch_size=1, max_cache_len=64).engine,
                         tokens)
    with torch.no_grad():
        hf16 = copy.deepcopy(hf).to(torch.bfloat16)
        theirs = hf_logits(hf16, tokens)[PREFIX - 1:]
    for stat in (torch.mean, torch.amax):
        e_ours, e_hf = stat((ours - ref).abs()).item(), stat((theirs - ref).abs()).item()
        assert e_ours <= 2 * e_hf + 1e-3, f"{stat.__name__}: ours {e_ours:.4g} vs HF bf16 {e_hf:.4g}"
