"""The serving loop's host-side pieces against plain references: step inputs, sampling fields, incremental
detokenization; and bench-throughput with its transformers baselines on a tiny model."""
import random
import types

import pytest
import torch

from infinilm_torch import SamplingParams
from infinilm_torch.serving import sampler, steps
from infinilm_torch.serving.block_manager import BlockManager
from infinilm_torch.serving.outputs import check_stop_strings
from infinilm_torch.serving.scheduler import PagedScheduler
from infinilm_torch.serving.sequence import Sequence


def _seq(prompt, params=None, stream=False, out=()):
    req = types.SimpleNamespace(request_id="r", stream=stream)
    s = Sequence(req, 0, list(prompt), params or SamplingParams(max_tokens=400), 0, 4096, [])
    for t in out:
        s.append(t)
    return s


def test_paged_inputs_equal_per_token_reference():
    rng = random.Random(0)
    bm = BlockManager(400, 4)
    sched = PagedScheduler(bm, max_num_seqs=64, max_step_tokens=300)
    for n in [rng.randint(1, 60) for _ in range(24)]:
        sched.add(_seq([rng.randrange(100) for _ in range(n)]))
    for step in range(12):  # chunked prefills mixed with decodes, then decodes only
        batch = sched.schedule()
        got = steps.step_inputs(sched, batch)
        ids, pos, slots = [], [], []
        for s, st, n in zip(batch.seqs, batch.starts, batch.lengths):
            ids += s.tokens[st:st + n]
            pos += range(st, st + n)
            slots += [bm.slot(s.blocks, q) for q in range(st, st + n)]
        width = max(len(s.blocks) for s in batch.seqs)
        assert got["input_ids"].tolist() == [ids]
        assert got["position_ids"].tolist() == pos and got["slot_mapping"].tolist() == slots
        assert got["cache_lengths"].tolist() == batch.starts and got["input_lengths"].tolist() == batch.lengths
        assert got["block_tables"].tolist() == [s.blocks + [0] * (width - len(s.blocks)) for s in batch.seqs]
        for ok, s in zip(sched.update(batch), batch.seqs):
            if ok:
                s.append(rng.randrange(100))
    assert all(n == 1 for n in batch.lengths) and len(batch.seqs) == 24


def test_engine_fields_send_penalties_only_when_a_row_has_one():
    plain = [_seq([1, 2, 3], SamplingParams(temperature=0.7, seed=1), out=[4]), _seq([5], SamplingParams())]
    f = sampler.engine_fields(plain, None)
    assert not {"prompt_token_ids", "output_token_ids", "repetition_penalties"} & set(f)
    rows = plain + [_seq([9, 8], SamplingParams(presence_penalty=0.5), out=[7, 7, 6])]
    f = sampler.engine_fields(rows, 2)
    assert f["prompt_token_ids"].tolist() == [[1, 2, 3], [5, -1, -1], [9, 8, -1]]
    assert f["output_token_ids"].tolist() == [[4, -1, -1], [-1, -1, -1], [7, 7, 6]]
    assert f["presence_penalties"].tolist() == [0.0, 0.0, 0.5] and f["return_logprobs"] == 2


@pytest.fixture(scope="module")
def smol_tokenizer():
    pytest.importorskip("gguf")
    from infinilm_torch.loaders import default_model
    from infinilm_torch.tokenizer import load_tokenizer

    try:
        path = default_model()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return load_tokenizer(path)


def test_incremental_text_equals_full_decode(smol_tokenizer):
    """Streamed text, token by token through a byte-level BPE (multi-byte characters split across tokens, spaces
    merged into words), is at every step a prefix of the full decode and at the end equal to it."""
    tok = smol_tokenizer
    text = "Héllo wörld — naïve café, 東京タワー and emoji 🙂🚀 ok.\n  indented  spaces;"
    ids = tok.encode(text, add_special_tokens=False)
    g = torch.Generator().manual_seed(0)
    cases = [ids, torch.randint(0, 49152, (80,), generator=g).tolist()]
    decode = lambda t, skip=True: tok.decode(list(t), skip_special_tokens=skip)  # noqa: E731
    for case in cases:
        s, calls = _seq([1], SamplingParams(max_tokens=len(case), stop=["\x00never"]), stream=True), 0
        for t in case:
            s.append(t)
            check_stop_strings(s, decode)
            full = decode(s.out)
            assert full.startswith(s.text) and len(s.text) >= len(full.rstrip("\ufffd")) - 4
        assert s.finished and s.text == decode(case)
    assert s.text != ""


def test_incremental_stop_string_cut(smol_tokenizer):
    tok = smol_tokenizer
    decode = lambda t, skip=True: tok.decode(list(t), skip_special_tokens=skip)  # noqa: E731
    ids = tok.encode("alpha beta gamma STOP delta", add_special_tokens=False)
    s = _seq([1], SamplingParams(max_tokens=100, stop=["a STO", "zzz"]), stream=True)
    for t in ids:
        s.append(t)
        check_stop_strings(s, decode)
        if s.finished:
            break
    assert s.finish_reason == "stop" and s.stop_reason == "a STO" and s.text == "alpha beta gamm"


def test_incremental_text_sentencepiece_style():
    """A Llama-style decoder (▁ for spaces, byte fallback, the first space stripped): decoding only the new tokens
    would drop the spaces between words and split characters; the window keeps both."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models

    words = ["▁hello", "▁world", "▁the", "s", "ing", "▁", ",", "é"]
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    bytes_ = {f"<0x{b:02X}>": len(vocab) + i for i, b in enumerate("東🙂".encode())}
    vocab.update(bytes_)
    t = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    decode = lambda ids, skip=True: t.decode(list(ids), skip_special_tokens=skip)  # noqa: E731
    east, smile = list(bytes_.values())[:3], list(bytes_.values())[3:]
    ids = [1, 2, 4, 5, *east, 2, 6, 7, *smile, 8, 3, 1]
    s = _seq([1], SamplingParams(max_tokens=len(ids) + 1, stop=["\x00never"]), stream=True)
    for tok in ids:
        s.append(tok)
        check_stop_strings(s, decode)
        assert decode(s.out).startswith(s.text)
    assert s.text == decode(ids) == "hello worldsing東 world ,🙂é the hello"


def test_bench_throughput_with_transformers_baselines(tmp_path, capsys):
    """The engine, transformers' continuous batching and padded generate each produce every requested token of
    the same workload in one run (a baseline that stopped early or overshot would miscount)."""
    pytest.importorskip("transformers")
    from infinilm_torch.__main__ import main
    from test_serving import BLOCK_BYTES, tiny_model

    path = tiny_model(str(tmp_path / "tiny"))
    rc = main(["bench-throughput", "--model", path, "--num-seqs", "12", "--min-len", "4", "--max-input-len", "40",
               "--max-output-len", "12", "--max-kv-memory-bytes", str(256 * BLOCK_BYTES), "--block-size", "4",
               "--baseline", "hf", "--hf-batch-size", "5", "--hf-cb-blocks", "16", "--hf-attn", "sdpa"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = {line.split("  ")[0]: line for line in out.splitlines() if " req " in line}
    assert [k.split(" (")[0] for k in rows] == ["infinilm_torch LLM", "HF generate_batch", "HF generate"], out
    counts = {int(line.split(" req ")[1].split(" tok ")[0]) for line in rows.values()}
    assert len(counts) == 1 and counts.pop() >= 12 * 4, out
    assert "errors" not in rows[[k for k in rows if "generate_batch" in k][0]], out


def test_bench_throughput_times_both_schedulings(tmp_path, capsys):
    """--scheduling both: interleaved sync and async rounds of the same workload, each producing every token,
    and a line with their medians."""
    pytest.importorskip("transformers")
    from infinilm_torch.__main__ import main
    from test_serving import tiny_model

    path = tiny_model(str(tmp_path / "tiny"))
    rc = main(["bench-throughput", "--model", path, "--num-seqs", "6", "--min-len", "3", "--max-input-len", "20",
               "--max-output-len", "8", "--block-size", "4", "--scheduling", "both", "--rounds", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line for line in out.splitlines() if " req " in line]
    assert [r.split("  ")[0] for r in rows] == ["infinilm_torch LLM (sync)", "infinilm_torch LLM (async)",
                                                "infinilm_torch LLM (async)", "infinilm_torch LLM (sync)"], out
    assert len({r.split(" req ")[1].split(" tok ")[0] for r in rows}) == 1, out
    assert "median tok/s" in out and "async/sync" in out, out


def test_overlapped_steps_feed_every_token_its_true_id():
    """The host side of async scheduling, with a simulated engine: each step draws random ids that the host
    reads one step later. Every token a step feeds (from input_ids, or from the previous step's ids through
    prev_token_index) must be the sequence's true token at that position, across chunked prefill, preemption
    (few blocks), stop ids and max_tokens; only blocks of true tokens are hashed, and every block comes back."""
    rng = random.Random(1)
    bm = BlockManager(40, 4)
    sched = PagedScheduler(bm, max_num_seqs=64, max_step_tokens=48)
    seqs = []
    for i in range(24):
        req = types.SimpleNamespace(request_id=str(i), stream=False)
        p = SamplingParams(max_tokens=rng.randint(1, 24))
        seqs.append(Sequence(req, 0, [rng.randrange(20) for _ in range(rng.randint(1, 50))], p, 0, 4096, [7]))
        sched.add(seqs[-1])
    truth = {s.seq_id: list(s.prompt) for s in seqs}
    prev, n_fed, n_steps = None, 0, 0

    def read(rec):  # what steps.finish does with the ids
        for s, ok, row in zip(rec.batch.seqs, rec.sampled, rec.where):
            if ok and not s.finished:
                s.resolve(rec.drawn[row])
                sched.finish(s) if s.finished else sched.commit(s)

    while sched.has_work() or prev is not None:
        batch = sched.schedule()
        if not batch.seqs:
            read(prev)
            prev = None
            continue
        n_steps += 1
        inp = steps.step_inputs(sched, batch, prev)
        ids = inp["input_ids"].view(-1).tolist()
        index = inp["prev_token_index"].tolist() if "prev_token_index" in inp else [-1] * len(ids)
        assert ("prev_output" in inp) == any(i >= 0 for i in index)
        fed = [prev.drawn[i] if i >= 0 else t for t, i in zip(ids, index)]
        n_fed += sum(i >= 0 for i in index)
        at = 0
        width = max(len(s.blocks) for s in batch.seqs)
        # the persistent block-table rows equal each sequence's current blocks after preemptions and finishes
        assert inp["block_tables"].tolist() == [s.blocks + [0] * (width - len(s.blocks)) for s in batch.seqs]
        slots = []
        for s, st, n in zip(batch.seqs, batch.starts, batch.lengths):
            assert fed[at:at + n] == truth[s.seq_id][st:st + n], (s.seq_id, st, n)
            slots += [bm.slot(s.blocks, q) for q in range(st, st + n)]
            at += n
        assert inp["slot_mapping"].tolist() == slots
        rec = types.SimpleNamespace(batch=batch, sampled=sched.update(batch), where=list(range(len(batch.seqs))),
                                    drawn=[rng.randrange(20) for _ in batch.seqs], step=n_steps, out=None,
                                    last=[])
        for s, ok, row in zip(batch.seqs, rec.sampled, rec.where):
            if ok:
                if not s.expect(rec.step, row):
                    rec.last.append(s)
                truth[s.seq_id].append(rec.drawn[row])
        if prev is not None:
            read(prev)
        for s in rec.last:  # as steps.release: its last token is drawn, its blocks go back before the next plan
            if not s.finished:
                sched.finish(s)
        prev = rec
        for s in sched.running:  # hashed blocks hold true tokens only
            h = None
            for b in range(s.hashed_blocks):
                h = bm.chain_hash(h, truth[s.seq_id][b * 4:(b + 1) * 4])
                assert bm.hash_of[s.blocks[b]] == h
    assert all(s.finished for s in seqs) and bm.num_free == 40 and sum(bm.ref) == 0
    assert sched.num_preemptions > 0 and n_fed > 50
    assert {s.finish_reason for s in seqs} == {"stop", "length"}
    for s in seqs:  # the outputs are the true ids up to the finish
        assert s.out == truth[s.seq_id][len(s.prompt):len(s.prompt) + len(s.out)]
        assert len(s.out) == s.max_tokens or s.out[-1] == 7


def test_step_seeds_equal_step_seed():
    """The tensor form of a draw's seed (engine_fields) equals the per-sequence one, for any int seed."""
    from infinilm_torch.serving.sequence import _MASK, step_seed, step_seeds

    rng = random.Random(5)
    seeds = [rng.randrange(-(1 << 80), 1 << 80) for _ in range(3000)] + [0, -1, (1 << 63) - 1, 1 << 63, -(1 << 63)]
    at = [rng.randrange(1 << 24) for _ in seeds]
    got = step_seeds(torch.tensor([x & _MASK for x in seeds]), torch.tensor(at)).tolist()
    assert got == [step_seed(x, s) for x, s in zip(seeds, at)]
