"""The padded static inputs a CUDA graph records (csrc/engine/static_step.h), run eagerly on the CPU through the
INFINILM_EAGER_STATIC_STEPS=1 hook: decode, prefill and mixed steps padded to their graph shape (tokens and
requests to powers of two; padded tokens write no cache slot) give the unpadded engine's tokens and logits, and
leave its cache as the unpadded engine leaves it (later steps read it).

The padding is real: the padded engine counts the steps it ran on static inputs, and the plans put a live
request's K/V in block 0, the block padded rows read and the slot a write of a padded token would hit first.
"""
import pytest
import torch

from engine_utils import EnvEngine, Input, PagedDriver, make_engine, make_hf, paged_config
from infinilm_torch.lib import _infinilm

CFG = dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=256, max_pos=1024)
BLOCK, BLOCKS = 8, 160


def _pair(monkeypatch, cache="paged", dtype=torch.float32, batch=4):
    model = make_hf(dtype=dtype, **CFG)
    cc = (paged_config(model, BLOCKS, BLOCK, dtype) if cache == "paged"
          else _infinilm.StaticKVCacheConfig(batch, CFG["max_pos"]))
    padded = EnvEngine(make_engine(model, dtype, cc), monkeypatch, INFINILM_EAGER_STATIC_STEPS="1")
    return model, padded, make_engine(model, dtype, cc)


def _close(a, b, what, dtype):
    """Logits within rounding of the padded products (other GEMM row counts); greedy tokens equal wherever the
    plain engine's top two logits are further apart than that (fresh random weights may give near-ties)."""
    scale = b.logits.abs().max().item()
    tol = {torch.float32: 2e-5, torch.bfloat16: 2e-2}[dtype] * scale
    err = (a.logits - b.logits).abs().max().item()
    assert err <= tol, f"{what}: logits differ by {err} (tolerance {tol})"
    top2 = b.logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert torch.equal(a.output_ids[clear], b.output_ids[clear]), f"{what}: tokens differ"


class _Twin(PagedDriver):
    """One request plan driven over both engines: the padded engine gets the plain engine's inputs."""

    def __init__(self, padded, plain, prompts, num_blocks=BLOCKS, block_size=BLOCK):
        super().__init__(plain, prompts, num_blocks, block_size)
        self.padded = padded

    def step(self, plan, **overrides):
        args = self.inputs(plan, **overrides)
        out_pad = self.padded.forward(Input(**args))
        out = self.engine.forward(Input(**args))
        self.advance(plan, out)
        return out_pad, out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_paged_steps_equal_unpadded(monkeypatch, dtype):
    _, padded, plain = _pair(monkeypatch, dtype=dtype)
    prompts = [torch.randint(0, CFG["vocab"], (n,)).tolist() for n in (37, 5, 70, 12, 1)]
    drv = _Twin(padded, plain, prompts)
    drv.free.remove(0)
    drv.free.insert(len(drv.free), 0)  # block 0 goes to the first request: padded rows read it
    plans = [
        [(0, 37)],                          # a lone prefill: 37 tokens -> 64 (a padding request of 27)
        [(0, 1), (1, 5)],                   # decode beside a short prompt: 6 -> 16 tokens, 2 -> 4 requests
        [(0, 1), (1, 1), (2, 30)],          # a chunk of a long prompt: 32 tokens, no token padding, 3 -> 4
        [(0, 1), (1, 1), (2, 40)],          # the rest of it: 42 -> 64
        [(0, 1), (1, 1), (2, 1), (3, 12), (4, 1)],
        [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)],  # pure decode: the decode shape, no padding
        [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)],
    ]
    for s, plan in enumerate(plans):
        a, b = drv.step(plan)
        _close(a, b, f"step {s} {plan}", dtype)
    assert padded._eager_static_steps == len(plans)
    assert plain._eager_static_steps == 0
    for s in range(6):  # decode on, reading every block both engines wrote
        plan = [(r, 1) for r in range(5)]
        a, b = drv.step(plan)
        _close(a, b, f"decode {s}", dtype)


def test_padded_static_cache_prefill_and_decode(monkeypatch):
    model, padded, plain = _pair(monkeypatch, cache="static", batch=3)
    lens = [9, 23, 4]
    ids = torch.zeros(3, max(lens), dtype=torch.long)
    for b, n in enumerate(lens):
        ids[b, :n] = torch.randint(0, CFG["vocab"], (n,))
    first = dict(input_ids=ids, input_lengths=torch.tensor(lens), cache_lengths=torch.zeros(3, dtype=torch.long),
                 temperature=0.0, return_logits=True)
    a, b = padded.forward(Input(**first)), plain.forward(Input(**first))
    _close(a, b, "prefill", torch.float32)
    seqs = [[int(b.output_ids[r, 0])] for r in range(3)]
    for s in range(8):
        inp = dict(input_ids=torch.tensor([[q[-1]] for q in seqs]), temperature=0.0, return_logits=True,
                   cache_lengths=torch.tensor([n + s for n in lens]))
        a, b = padded.forward(Input(**inp)), plain.forward(Input(**inp))
        _close(a, b, f"decode {s}", torch.float32)
        for r in range(3):
            seqs[r].append(int(b.output_ids[r, 0]))
    assert padded._eager_static_steps == 9
    assert len({t for q in seqs for t in q}) >= 4, "degenerate greedy path: the comparison would prove little"


def test_steps_no_graph_serves_run_unpadded(monkeypatch):
    """More than 512 tokens, or more than 64 requests: no static shape, the padded engine runs them as is."""
    _, padded, plain = _pair(monkeypatch)
    drv = _Twin(padded, plain, [torch.randint(0, CFG["vocab"], (600,)).tolist()])
    a, b = drv.step([(0, 600)])
    _close(a, b, "600-token prefill", torch.float32)
    assert padded._eager_static_steps == 0
    a, b = drv.step([(0, 1)])
    _close(a, b, "decode after it", torch.float32)
    assert padded._eager_static_steps == 1


def test_padded_step_with_seeded_sampling_and_prev_output(monkeypatch):
    """Sampled rows keep their own seeds and parameters beside padded rows; ids fed from the previous step's
    device output (prev_output) land on the right tokens of a padded mixed step (their input_ids are wrong on
    purpose: only the device ids give the plain engine's result)."""
    _, padded, plain = _pair(monkeypatch)
    prompts = [torch.randint(0, CFG["vocab"], (n,)).tolist() for n in (20, 9, 14, 7)]
    drv = _Twin(padded, plain, prompts)
    sampling = dict(temperatures=torch.tensor([0.9, 0.0, 1.3]), top_ks=torch.tensor([20, 0, 0]),
                    top_ps=torch.tensor([1.0, 1.0, 0.8]), min_ps=torch.tensor([0.0, 0.0, 0.05]),
                    seeds=torch.tensor([11, 12, 13]))
    a, b = drv.step([(0, 20), (1, 9), (2, 14)], **sampling)
    _close(a, b, "sampled prefill", torch.float32)
    # Mixed: requests 0-2 decode the ids just drawn, request 3's prompt arrives (7 tokens): 10 -> 16 tokens.
    args = drv.inputs([(0, 1), (1, 1), (2, 1), (3, 7)])
    wrong = args["input_ids"].clone()
    wrong[0, :3] = (wrong[0, :3] + 1) % CFG["vocab"]
    index = torch.tensor([[0, 1, 2] + [-1] * 7])
    a2 = padded.forward(Input(**dict(args, input_ids=wrong, prev_output=a, prev_token_index=index)))
    b2 = plain.forward(Input(**args))
    _close(a2, b2, "mixed step fed from prev_output", torch.float32)
    assert padded._eager_static_steps == 2


def test_no_static_shape_for_blocks_of_other_sizes(monkeypatch):
    """Paged blocks whose size is not a power of two: the CUDA kernels take those only as one-column tables, so no
    graph (and no padded step) serves them; the steps run as they are."""
    model = make_hf(**CFG)
    cc = paged_config(model, 64, 6)
    padded = EnvEngine(make_engine(model, torch.float32, cc), monkeypatch, INFINILM_EAGER_STATIC_STEPS="1")
    plain = make_engine(model, torch.float32, cc)
    drv = _Twin(padded, plain, [torch.randint(0, CFG["vocab"], (n,)).tolist() for n in (9, 4)], 64, 6)
    for plan in ([(0, 9), (1, 4)], [(0, 1), (1, 1)]):
        a, b = drv.step(plan)
        _close(a, b, f"plan {plan}", torch.float32)
    assert padded._eager_static_steps == 0
