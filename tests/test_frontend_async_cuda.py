"""CUDA: the LLM front end's async scheduling (one engine step in flight, non-blocking steps fed from the
previous step's device ids) against its synchronous loop, static and paged caches, fp32 and bf16.

Same checks as tests/test_async_frontend.py on the GPU, where steps really overlap: workloads whose steps hold
the same rows in both loops give bit-equal outputs (bf16 included); mixed finishes, preemption and chunked
prefill give equal tokens (fp32). ``INFINILM_ASYNC_TEST_DEVICE=cpu`` runs the file on the CPU (a dry run).
"""
import os

import pytest
import torch

from infinilm_torch import SamplingParams

transformers = pytest.importorskip("transformers")

from infinilm_torch.tokenizer import save_char_tokenizer  # noqa: E402
from test_async_frontend import both, make, mixed_params  # noqa: E402
from test_serving import rand_prompts  # noqa: E402

DEVICE = os.environ.get("INFINILM_ASYNC_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")
BLOCK = 16
BLOCK_BYTES = 2 * 64 * 2 * BLOCK * 2 * 4  # k+v, head_dim 64, 2 kv heads, 16 tokens, 2 layers, fp32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 2-layer random Llama with head_dim 64 (the CUDA attention kernels' size), wide weights, char tokenizer."""
    path = str(tmp_path_factory.mktemp("async_cuda") / "tiny")
    vocab = save_char_tokenizer(path)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   eos_token_id=None, bos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


def gpu_llm(path, dtype=torch.float32, **kw):
    kw.setdefault("block_size", BLOCK)
    return make(path, device=DEVICE, dtype=dtype, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cache", ["static", "paged"])
def test_same_steps_bit_equal(model_dir, cache, dtype):
    llm = gpu_llm(model_dir, dtype, cache=cache, max_batch_size=8, max_num_seqs=8, max_cache_len=96)
    prompts = rand_prompts([5, 17, 2, 9, 12, 7, 3, 11])
    sp = [SamplingParams(max_tokens=4 + 3 * i, ignore_eos=True, logprobs=2, **(
        dict(temperature=0.9, top_k=30, seed=i) if i % 2 else dict(temperature=0.0))) for i in range(8)]
    sync, _ = both(llm, prompts, sp)
    assert [len(o.outputs[0].token_ids) for o in sync] == [4 + 3 * i for i in range(8)]
    log = llm.engine.log
    assert any(fed and nb for fed, nb, _ in log), "no non-blocking step fed from the device"


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_mixed_finishes_equal_tokens(model_dir, cache):
    llm = gpu_llm(model_dir, cache=cache, max_batch_size=4, max_num_seqs=4, max_cache_len=96)
    prompts = rand_prompts([5, 17, 2, 9, 12, 7, 3, 11])
    probe = llm.generate(prompts[2], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    sync, _ = both(llm, prompts, mixed_params(len(prompts), probe[0].outputs[0].token_ids[4]), exact=False)
    assert {c.finish_reason for o in sync for c in o.outputs} == {"stop", "length"}


def test_preemption_and_chunked_prefill_equal_tokens(model_dir):
    llm = gpu_llm(model_dir, cache="paged", max_kv_memory_bytes=8 * BLOCK_BYTES, max_step_tokens=24)
    prompts = rand_prompts([40, 22, 31, 18, 9, 27])
    pre0 = llm._core.scheduler.num_preemptions
    both(llm, prompts, [SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
                        SamplingParams(temperature=0.8, seed=3, max_tokens=30, ignore_eos=True)] * 3, exact=False)
    assert llm._core.scheduler.num_preemptions > pre0


def test_step_queued_before_previous_is_read(model_dir):
    llm = gpu_llm(model_dir, cache="paged")
    llm.engine.log.clear()
    llm.generate([rand_prompts([6])[0]], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    log = llm.engine.log
    assert len(log) == 10
    for i, (fed, nb, read) in enumerate(log[1:], 1):
        assert (fed, nb, list(read.values())) == (True, True, [i - 1]), i
