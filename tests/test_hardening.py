"""Defects a hostile caller found (issue 13): op value checks on views, engines without weights, cache bookkeeping."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from engine_utils import Input, engine_config, make_engine, make_hf, paged_config
from fuzz_engine import paged_args
from infinilm_torch.lib import _infinilm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_isolated(code: str, timeout: float = 120) -> str:
    """Runs `code` in a fresh interpreter, so that a segfault or an abort fails the test instead of pytest."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    res = subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, env=env, cwd=ROOT)
    assert res.returncode == 0, f"rc {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr[-4000:]}"
    return res.stdout


# ---- 1. value checks read logical values of views ---------------------------------------------------------------


def test_paged_attention_strided_int64_seq_lens():
    """A [::2] int64 view of seq_lens: good values give the reference result, bad ones a clear error."""
    out = run_isolated("""
        import torch, math
        from test_attention import make_case, reference
        from infinilm_torch import ops
        torch.manual_seed(0)
        for n in (2, 3, 17):
            reqs = [(1, int(s)) for s in torch.randint(1, 70, (n,))]
            case = make_case("cpu", torch.float32, reqs, 2, 2, 16, 8)
            view = torch.zeros(2 * n, dtype=torch.long)
            view[::2] = case["seq_lens"]
            view[1::2] = 10**9  # what the raw memory of the view holds between its elements
            case["seq_lens"] = view[::2]
            assert not case["seq_lens"].is_contiguous()
            args = {k: v for k, v in case.items() if k != "query_start_loc"}
            out = ops.paged_attention_decode(**args)
            torch.testing.assert_close(out, reference(**case), atol=2e-5, rtol=0)
            out = ops.paged_attention_prefill(**case)
            torch.testing.assert_close(out, reference(**case), atol=2e-5, rtol=0)
            # a bad value inside the view must be seen, the good raw memory between elements must not hide it
            bad = torch.zeros(2 * n, dtype=torch.long)
            bad[::2] = case["seq_lens"]
            bad[2 * (n - 1)] = 10**6
            for f, a in ((ops.paged_attention_decode, args), (ops.paged_attention_prefill, case)):
                try:
                    f(**dict(a, seq_lens=bad[::2]))
                except ValueError as e:
                    assert "seq_lens" in str(e), e
                else:
                    raise AssertionError("a seq_lens of 10**6 in a view was accepted")
        # a strided block_tables is refused by name (the kernel takes it dense)
        case = make_case("cpu", torch.float32, [(1, 9)], 2, 2, 16, 8)
        wide = torch.zeros(1, 2 * case["block_tables"].shape[1], dtype=torch.long)
        wide[:, ::2] = case["block_tables"]
        try:
            ops.paged_attention_decode(case["query"], case["key_cache"], case["value_cache"], wide[:, ::2],
                                       case["seq_lens"], 0.25)
        except ValueError as e:
            assert "block_tables" in str(e)
        else:
            raise AssertionError("strided block_tables accepted")
        print("ok")
    """)
    assert out.strip().endswith("ok")


# ---- 2. every parameter is loaded before the first forward ----------------------------------------------------


def _blank_engine(model, **kw):
    return _infinilm.InferEngine(engine_config(model.config, torch.float32), device_type="cpu", **kw)


@pytest.mark.parametrize("tied", [False, True])
def test_forward_needs_every_parameter(tied):
    model = make_hf(layers=2, tied=tied)
    ids = Input(input_ids=torch.tensor([[1, 2, 3]]), temperature=0.0)
    engine = _blank_engine(model)
    with pytest.raises(RuntimeError, match=r"never loaded.*model\.embed_tokens\.weight"):
        engine.forward(ids)
    names = [n for n in model.state_dict() if not (tied and n == "lm_head.weight")]
    skipped = names[len(names) // 2]
    for name, t in model.state_dict().items():  # the spec's loop over load_param, one name skipped
        if name != skipped:
            engine.load_param(name, t)
    with pytest.raises(RuntimeError, match=r"1 of %d parameters were never loaded.*%s" % (len(names), skipped)):
        engine.forward(ids)
    engine.load_param(skipped, model.state_dict()[skipped])
    ref = make_engine(model)
    out, want = engine.forward(Input(**dict(input_ids=torch.tensor([[1, 2, 3]]), temperature=0.0,
                                            return_logits=True))), ref.forward(
        Input(input_ids=torch.tensor([[1, 2, 3]]), temperature=0.0, return_logits=True))
    torch.testing.assert_close(out.logits, want.logits, atol=0, rtol=0)
    engine.reset_cache()  # does not unload
    engine.reset_cache(_infinilm.StaticKVCacheConfig(2, 32))
    engine.forward(ids)


def test_tied_checkpoint_with_only_lm_head_counts_as_embedding():
    model = make_hf(layers=1, tied=True)
    engine = _blank_engine(model)
    for name, t in model.state_dict().items():
        engine.load_param("lm_head.weight" if name == "model.embed_tokens.weight" else name, t)
    engine.forward(Input(input_ids=torch.tensor([[1, 2]]), temperature=0.0))


def test_tensor_parallel_ranks_each_need_every_parameter():
    model = make_hf(layers=1, heads=4, kv_heads=2)
    engine = _blank_engine(model, distributed_config=_infinilm.DistConfig(2))
    sd = model.state_dict()
    for name, t in sd.items():
        if name != "model.layers.0.mlp.down_proj.weight":
            engine.load_param(name, t)
    with pytest.raises(RuntimeError, match=r"never loaded \(rank 0\).*down_proj"):
        engine.forward(Input(input_ids=torch.tensor([[1, 2]]), temperature=0.0))
    engine.load_param("model.layers.0.mlp.down_proj.weight", sd["model.layers.0.mlp.down_proj.weight"])
    engine.forward(Input(input_ids=torch.tensor([[1, 2]]), temperature=0.0))


# ---- 5. what a step may read and write ----------------------------------------------------------------------


def test_static_cache_lengths_within_what_was_written():
    model = make_hf(heads=4, kv_heads=2)
    engine = make_engine(model, cache_config=_infinilm.StaticKVCacheConfig(2, 64))
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (7, 4)]
    ids = torch.zeros(2, 7, dtype=torch.long)
    ids[0], ids[1, :4] = torch.tensor(prompts[0]), torch.tensor(prompts[1])
    out = engine.forward(Input(input_ids=ids, input_lengths=torch.tensor([7, 4]), temperature=0.0))
    seqs = [p + [int(out.output_ids[b, 0])] for b, p in enumerate(prompts)]

    def step(cl, **kw):
        return engine.forward(Input(input_ids=torch.tensor([[s[-1]] for s in seqs]), cache_lengths=torch.tensor(cl),
                                    temperature=0.0, return_logits=True, **kw))

    with pytest.raises(ValueError, match=r"'cache_lengths'\[1\] = 5 but row 1 of the static cache holds 4"):
        step([7, 5])
    with pytest.raises(ValueError, match="cache_lengths.*must have shape"):
        step([[7, 4]])
    with pytest.raises(ValueError, match="cache_lengths.*must have shape"):
        engine.forward(Input(input_ids=torch.tensor([[1]]), cache_lengths=torch.tensor([[7]])))
    with pytest.raises(ValueError, match="input_lengths.*must have shape"):
        step([7, 4], input_lengths=torch.tensor([[1, 1]]))
    logits = []
    for _ in range(4):  # the refusals left both rows as they were: decoding matches HF
        out = step([len(s) - 1 for s in seqs])
        for b, s in enumerate(seqs):
            s.append(int(out.output_ids[b, 0]))
        logits.append(out.logits)
    for b, p in enumerate(prompts):
        ref = torch.nn.functional.log_softmax(model(torch.tensor([seqs[b][:-1]])).logits[0, len(p):], -1)
        got = torch.nn.functional.log_softmax(torch.stack([lg[b] for lg in logits]), -1)
        torch.testing.assert_close(got, ref.detach(), atol=1e-4, rtol=1e-4)
    # a rewind makes what lies past it stale: row 0 back to 3 tokens, one written, so 5 are not there
    engine.forward(Input(input_ids=torch.tensor([[seqs[0][3]]]), cache_lengths=torch.tensor([3]), temperature=0.0))
    with pytest.raises(ValueError, match=r"'cache_lengths'\[0\] = 5 but row 0 of the static cache holds 4"):
        engine.forward(Input(input_ids=torch.tensor([[seqs[0][5]]]), cache_lengths=torch.tensor([5])))
    engine.reset_cache()  # nothing is written any more
    with pytest.raises(ValueError, match="holds 0"):
        engine.forward(Input(input_ids=torch.tensor([[1]]), cache_lengths=torch.tensor([1])))


def _paged_step(engine, reqs, bs, **kw):
    """reqs: [(tokens, cached, blocks)] -> one greedy forward writing each request's tokens[cached:]."""
    args = dict(paged_args(reqs, bs), temperature=0.0, return_logits=True)
    args.update(kw)
    return engine.forward(Input(**args))


@torch.no_grad()
def test_paged_reads_writes_and_sharing():
    model = make_hf(heads=4, kv_heads=2)
    bs = 4
    engine = make_engine(model, cache_config=paged_config(model, 16, bs))
    a = torch.randint(0, 256, (8,)).tolist()  # request A: blocks 3, 5 full after its prefill
    out = _paged_step(engine, [(a, 0, [3, 5])], bs)
    a.append(int(out.output_ids[0, 0]))
    # prefix sharing: B reads A's full blocks 3 and 5 in the step where A decodes into block 9
    b = a[:8] + torch.randint(0, 256, (2,)).tolist()
    out = _paged_step(engine, [(a, 8, [3, 5, 9]), (b, 8, [3, 5, 12])], bs)
    for seq, i in ((a, 0), (b, 1)):
        torch.testing.assert_close(out.logits[i], model(torch.tensor([seq])).logits[0, -1], atol=1e-4, rtol=1e-4)
    a.append(int(out.output_ids[0, 0]))  # 10 tokens, 9 cached: block 9 holds 1

    def refused(match, reqs, **kw):
        with pytest.raises((ValueError, IndexError), match=match):
            _paged_step(engine, reqs, bs, **kw)

    # cached tokens never written: block 7 is empty, block 9 holds 1 token (not 2)
    refused(r"'cache_lengths'\[0\] = 2 needs 2 cached tokens in block 7 .* wrote 0", [([1, 2, 3], 2, [7])])
    refused(r"'cache_lengths'\[0\] = 10 needs 2 cached tokens in block 9 .* wrote 1", [(a + [1], 10, [3, 5, 9])])
    # two requests write one block; a request reads a block another writes; a row lists a block twice; one slot twice
    refused("requests 0 and 1 both write block 9", [(a + [1], 9, [3, 5, 9]), ([4], 0, [9])])
    refused(r"request 1 reads block 9 \('block_tables'\[1, 0\]\) that request 0 writes",
            [(a, 9, [3, 5, 9]), ([0, 0, 0, 0, 5], 4, [9, 13])])
    refused(r"'block_tables'\[0\] lists block 3 twice", [(a, 9, [3, 3, 9])])
    refused("writes slot 37 twice", [(a, 9, [3, 5, 9]), (a[:9] + [7], 9, [3, 5, 9])])
    with pytest.raises(ValueError, match="cache_lengths.*must have shape"):
        _paged_step(engine, [(a, 9, [3, 5, 9])], bs, cache_lengths=torch.tensor([[9]]))
    # the refused steps changed nothing: A and B continue exactly as HF
    out = _paged_step(engine, [(a, 9, [3, 5, 9]), (b + [6], 10, [3, 5, 12])], bs)
    for seq, i in ((a, 0), (b + [6], 1)):
        torch.testing.assert_close(out.logits[i], model(torch.tensor([seq])).logits[0, -1], atol=1e-4, rtol=1e-4)
    # a block handed to a new request is overwritten from offset 0: what A left past that is stale
    _paged_step(engine, [([5, 6], 0, [9])], bs)
    refused("needs 3 cached tokens in block 9 .* wrote 2", [([5, 6, 1, 1], 3, [9])])
