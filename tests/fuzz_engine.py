"""Hypothesis properties of engine Inputs (static and paged caches) over a tiny random model, checked against HF.

Each example drives one engine through a few steps, most valid, some with one named corruption. A valid step must
give HF's logits for every request; a corrupted one must raise a clean error naming an argument and change
nothing: later steps, and a final probe that re-reads every request's cache, must still match HF.
"""
import functools

import torch
from hypothesis import given
from hypothesis import strategies as st

from engine_utils import Input, make_engine, make_hf, paged_config
from fuzz_ops import expect
from infinilm_torch.lib import _infinilm

VOCAB, ROWS, MAX_LEN, BS, BLOCKS = 64, 3, 24, 4, 24
NAMES = ["input_ids", "position_ids", "cache_lengths", "input_lengths", "block_tables", "slot_mapping"]


@functools.lru_cache(None)
def _model():
    torch.manual_seed(1234)
    return make_hf(layers=1, hidden=32, heads=4, kv_heads=2, inter=64, vocab=VOCAB, max_pos=64)


@functools.lru_cache(None)
def _engine(paged):
    cfg = paged_config(_model(), BLOCKS, BS) if paged else _infinilm.StaticKVCacheConfig(ROWS, MAX_LEN)
    return make_engine(_model(), cache_config=cfg)


@functools.lru_cache(4096)
def _ref(seq):
    with torch.no_grad():
        return _model()(torch.tensor([list(seq)])).logits[0, -1]


def _check_logits(out, seqs):
    for i, s in enumerate(seqs):
        torch.testing.assert_close(out.logits[i], _ref(tuple(s)), atol=2e-4, rtol=2e-4)


@given(st.data())
def prop_engine_static(data):
    engine = _engine(False)
    engine.reset_cache()
    rows = [[] for _ in range(ROWS)]  # tokens each row's cache holds
    for _ in range(data.draw(st.integers(1, 4))):
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
        B = data.draw(st.integers(1, ROWS))
        cl = [data.draw(st.integers(0, len(rows[b]))) for b in range(B)]
        il = [data.draw(st.integers(1, 5)) for _ in range(B)]
        S = max(il) + data.draw(st.integers(0, 2))
        ids = torch.randint(0, VOCAB, (B, S), generator=g)
        bad = data.draw(st.sampled_from([None] * 6 + ["past", "vocab", "2d", "batch", "capacity", "il", "pos"]))
        if bad == "past":
            cl[-1] = len(rows[B - 1]) + data.draw(st.integers(1, 3))
        elif bad == "vocab":
            ids[0, 0] = VOCAB
        elif bad == "capacity":
            cl[0] = MAX_LEN
        elif bad == "il":
            il[0] = S + 1
        idt = data.draw(st.sampled_from([torch.int64, torch.int32]))
        args = dict(input_ids=ids.to(idt), cache_lengths=torch.tensor(cl, dtype=idt),
                    input_lengths=torch.tensor(il, dtype=idt), temperature=0.0, return_logits=True)
        if bad == "2d":
            args["cache_lengths"] = args["cache_lengths"].view(1, -1)
        elif bad == "batch":
            args["input_ids"] = torch.zeros(ROWS + 1, S, dtype=idt)
        elif bad == "pos":
            args["position_ids"] = torch.full((B, S), 10**6, dtype=idt)
        elif data.draw(st.booleans()):
            args["position_ids"] = torch.tensor(cl)[:, None] + torch.arange(S)[None]
        over = any(c + n > MAX_LEN for c, n in zip(cl, il))
        out, ran = expect(lambda: engine.forward(Input(**args)), bad is None and not over, NAMES)
        if ran:
            seqs = [rows[b][: cl[b]] + ids[b, : il[b]].tolist() for b in range(B)]
            _check_logits(out, seqs)
            rows[:B] = seqs
    for b in range(ROWS):  # probe: re-feed each row's last token over the rows before it
        if not rows[b]:
            return
        seqs = [rows[i] for i in range(b + 1)]
        out = engine.forward(Input(input_ids=torch.tensor([[s[-1]] for s in seqs]),
                                   cache_lengths=torch.tensor([len(s) - 1 for s in seqs]), temperature=0.0,
                                   return_logits=True))
        _check_logits(out, seqs)


def paged_args(plan, bs):
    """plan: [(tokens, cached, blocks)]: each request writes tokens[cached:]."""
    ids, pos, slots, cl, il = [], [], [], [], []
    for toks, c, blocks in plan:
        for p in range(c, len(toks)):
            ids.append(toks[p])
            pos.append(p)
            slots.append(blocks[p // bs] * bs + p % bs)
        cl.append(c)
        il.append(len(toks) - c)
    width = max(len(b) for _, _, b in plan)
    bt = torch.tensor([b + [-1] * (width - len(b)) for _, _, b in plan])
    return dict(input_ids=torch.tensor([ids]), position_ids=torch.tensor(pos), slot_mapping=torch.tensor(slots),
                cache_lengths=torch.tensor(cl), input_lengths=torch.tensor(il), block_tables=bt)


def _corrupt(bad, args, plan, data):
    """Applies one corruption the engine must refuse; False when it does not apply to this step."""
    if bad == "past":
        args["cache_lengths"][-1] += data.draw(st.integers(1, 3))
    elif bad == "share_write" and len(plan) > 1:  # request 1 lists the block request 0 writes
        args["block_tables"][1, 0] = plan[0][2][plan[0][1] // BS]
    elif bad == "dup_slot" and args["slot_mapping"].numel() > 1:
        args["slot_mapping"][1] = args["slot_mapping"][0]
    elif bad == "oob":
        args["block_tables"][0, 0] = BLOCKS + data.draw(st.integers(0, 5))
    elif bad == "2d":
        args["input_lengths"] = args["input_lengths"].view(1, -1)
    elif bad == "vocab":
        args["input_ids"][0, -1] = VOCAB
    elif bad == "pos":
        args["position_ids"][0] = 10**6
    elif bad == "il_sum":
        args["input_lengths"][0] += 1
    elif bad == "slot":
        args["slot_mapping"][-1] = (args["slot_mapping"][-1] + 1) % (BLOCKS * BS)
    elif bad == "float":
        args["slot_mapping"] = args["slot_mapping"].float()
    else:
        return False
    return True


@given(st.data())
def prop_engine_paged(data):
    engine = _engine(True)
    engine.reset_cache()
    free = list(range(BLOCKS))
    reqs = []  # (tokens cached, blocks)
    for _ in range(data.draw(st.integers(1, 5))):
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
        data.draw(st.randoms(use_true_random=False)).shuffle(free)
        rand = lambda n: torch.randint(0, VOCAB, (n,), generator=g).tolist()  # noqa: E731
        plan, owner = [], []
        for i in data.draw(st.lists(st.integers(0, len(reqs) - 1), unique=True, max_size=3)) if reqs else []:
            toks, blocks = reqs[i]
            plan.append((toks + rand(data.draw(st.integers(1, 3))), len(toks), list(blocks)))
            owner.append(i)
        if not plan or data.draw(st.booleans()):  # a new request, maybe sharing another's full blocks (a prefix)
            prefix, shared = [], []
            if reqs and data.draw(st.booleans()):
                toks, blocks = reqs[data.draw(st.integers(0, len(reqs) - 1))]
                k = data.draw(st.integers(0, len(toks) // BS))
                prefix, shared = toks[: k * BS], blocks[:k]
            plan.append((prefix + rand(data.draw(st.integers(1, 6))), len(prefix), list(shared)))
            owner.append(None)
        taken = []
        for toks, _, blocks in plan:
            while len(blocks) * BS < len(toks):
                if not free:
                    return
                taken.append(free.pop())
                blocks.append(taken[-1])
        args = paged_args(plan, BS)
        bad = data.draw(st.sampled_from([None] * 6 + ["past", "share_write", "dup_slot", "oob", "2d", "vocab",
                                                      "pos", "il_sum", "slot", "float"]))
        if bad is not None and not _corrupt(bad, args, plan, data):
            bad = None
        if data.draw(st.booleans()):
            args = {k: v.to(torch.int32) if v.dtype == torch.int64 else v for k, v in args.items()}
        out, ran = expect(lambda: engine.forward(Input(temperature=0.0, return_logits=True, **args)), bad is None,
                          NAMES)
        if not ran:
            free.extend(taken)
            continue
        _check_logits(out, [toks for toks, _, _ in plan])
        for (toks, _, blocks), i in zip(plan, owner):
            if i is None:
                reqs.append((toks, blocks))
            else:
                reqs[i] = (toks, blocks)
    for toks, blocks in reqs:  # probe each request alone: its whole cache must still be HF's
        out = engine.forward(Input(temperature=0.0, return_logits=True,
                                   **paged_args([(toks, len(toks) - 1, blocks)], BS)))
        _check_logits(out, [toks])


ENGINE_PROPS = {"engine_static": prop_engine_static, "engine_paged": prop_engine_paged}
