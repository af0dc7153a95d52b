"""Helpers for the engine tests: random HF models, engine construction, static/paged drivers, HF references."""
import math

import torch
import transformers

from infinilm_torch.lib import _infinilm

Input = _infinilm.InferEngine.Input


def make_hf(model_type="llama", hidden=64, layers=2, heads=4, kv_heads=4, head_dim=None, inter=128, vocab=256,
            tied=False, bias=False, mlp_bias=False, rope_scaling=None, max_pos=256, eps=1e-5, dtype=torch.float32):
    """A tiny random HF causal LM with weights spread wide enough that greedy paths vary. bias: Llama's
    attention_bias (q/k/v/o); mlp_bias: gate/up/down biases; Qwen2 always has q/k/v biases."""
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
              rms_norm_eps=eps, tie_word_embeddings=tied, rope_theta=10000.0)
    if head_dim is not None:
        kw["head_dim"] = head_dim
    if model_type == "qwen2":
        cfg = transformers.Qwen2Config(**kw)
        cls = transformers.Qwen2ForCausalLM
    else:
        cfg = transformers.LlamaConfig(attention_bias=bias, mlp_bias=mlp_bias, rope_scaling=rope_scaling, **kw)
        cls = transformers.LlamaForCausalLM
    cfg._attn_implementation = "eager"
    return spread_weights(cls(cfg).eval()).to(dtype)


def spread_weights(model, qk_norm_mean=None):
    """Fresh random weights wide enough that greedy paths vary: norms near 1, biases and embeddings of moderate
    size, matrices with gain 2.5. qk_norm_mean: centre of per-head q/k norm weights (Qwen3), so that attention over
    unit-RMS queries and keys is not nearly uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if qk_norm_mean is not None and ("q_norm" in name or "k_norm" in name):
                p.copy_(qk_norm_mean + 0.3 * torch.randn_like(p))
            elif p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.5 * torch.randn_like(p))
            elif "embed" in name:
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 2.5 / math.sqrt(p.shape[1]))
    return model


def engine_config(hf_cfg, dtype):
    c = _infinilm.LlamaConfig()
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        setattr(c, f, getattr(hf_cfg, f))
    c.head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    c.model_type = hf_cfg.model_type
    c.attention_bias = True if hf_cfg.model_type == "qwen2" else hf_cfg.attention_bias
    c.mlp_bias = bool(getattr(hf_cfg, "mlp_bias", False))
    c.rope_scaling = getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None)
    c.dtype = dtype
    return c


def make_engine(model, dtype=torch.float32, cache_config=None, **engine_kw):
    """engine_kw: further InferEngine arguments (distributed_config, process_group, comm_timeout)."""
    engine = _infinilm.InferEngine(engine_config(model.config, dtype), device_type="cpu", cache_config=cache_config,
                                   **engine_kw)
    for name, t in model.state_dict().items():
        engine.load_param(name, t)
    return engine


def paged_config(model, num_blocks, block_size, dtype=torch.float32):
    c = model.config
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_block = 2 * d * c.num_key_value_heads * block_size * c.num_hidden_layers * torch.finfo(dtype).bits // 8
    return _infinilm.PagedKVCacheConfig(num_blocks * per_block, block_size)


@torch.no_grad()
def hf_logits(model, tokens):
    """float32 logits [len(tokens), V] of a teacher-forced HF forward."""
    return model(torch.tensor([tokens])).logits[0].float()


def run_static(engine, prompts, steps, **sampling):
    """Greedy (unless sampling says otherwise) static-cache generation; returns (sequences, per-step logits)."""
    B, S = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, S, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    lens = torch.tensor([len(p) for p in prompts])
    sampling = dict(dict(temperature=0.0), **sampling)
    out = engine.forward(Input(input_ids=ids, input_lengths=lens, cache_lengths=torch.zeros(B, dtype=torch.long),
                               return_logits=True, **sampling))
    seqs = [list(p) + [int(out.output_ids[b, 0])] for b, p in enumerate(prompts)]
    logits = [[out.logits[b]] for b in range(B)]
    for _ in range(steps):
        ids = torch.tensor([[s[-1]] for s in seqs], dtype=torch.int32)
        cache = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.int32)
        out = engine.forward(Input(input_ids=ids, cache_lengths=cache, return_logits=True, **sampling))
        assert out.output_ids.shape == (B, 1) and out.output_ids.dtype == torch.long
        for b in range(B):
            seqs[b].append(int(out.output_ids[b, 0]))
            logits[b].append(out.logits[b])
    return seqs, logits


class EnvEngine:
    """An engine whose forward() calls run with environment variables set (the engine reads its switches per
    call), so two engines of one test can differ in them; attributes other than forward are the engine's."""

    def __init__(self, engine, monkeypatch, **env):
        self.engine, self.mp, self.env = engine, monkeypatch, env

    def forward(self, inp):
        with self.mp.context() as m:
            for name, value in self.env.items():
                m.setenv(name, value)
            return self.engine.forward(inp)

    def __getattr__(self, name):
        return getattr(self.engine, name)


class PagedDriver:
    """Requests over a paged engine: scattered blocks from a shuffled free list, steps of (request, n_new)."""

    def __init__(self, engine, prompts, num_blocks, block_size):
        self.engine, self.bs = engine, block_size
        self.free = torch.randperm(num_blocks).tolist()
        self.reqs = [dict(tokens=list(p), prompt=len(p), cached=0, blocks=[], logits=[]) for p in prompts]

    def build(self, plan):
        ids, pos, slots, cl, il, tables = [], [], [], [], [], []
        for r, n in plan:
            q = self.reqs[r]
            while len(q["blocks"]) * self.bs < q["cached"] + n:
                q["blocks"].append(self.free.pop())
            for j in range(n):
                p = q["cached"] + j
                ids.append(q["tokens"][p])
                pos.append(p)
                slots.append(q["blocks"][p // self.bs] * self.bs + p % self.bs)
            cl.append(q["cached"])
            il.append(n)
            tables.append(q["blocks"])
        width = max(len(t) for t in tables) + 1
        bt = torch.full((len(plan), width), -1, dtype=torch.int32)
        for i, t in enumerate(tables):
            bt[i, : len(t)] = torch.tensor(t)
        T = torch.tensor
        return dict(input_ids=T([ids]), position_ids=T(pos), slot_mapping=T(slots), cache_lengths=T(cl),
                    input_lengths=T(il), block_tables=bt)

    def step(self, plan, **overrides):
        out = self.engine.forward(Input(**self.inputs(plan, **overrides)))
        self.advance(plan, out)
        return out

    def inputs(self, plan, **overrides):
        """The Input fields of a step (greedy, logits returned unless overridden); allocates blocks: once a step."""
        args = dict(self.build(plan), temperature=0.0, return_logits=True)
        args.update(overrides)
        return args

    def advance(self, plan, out):
        """Book a step's output: cached counts grow; a request whose last known token ran gets the drawn one."""
        assert out.output_ids.shape == (len(plan), 1)
        for i, (r, n) in enumerate(plan):
            q = self.reqs[r]
            q["cached"] += n
            if q["cached"] == len(q["tokens"]):
                q["tokens"].append(int(out.output_ids[i, 0]))
                if out.logits is not None:
                    q["logits"].append(out.logits[i])


def check_sequence(model, prompt_len, seq, logits, ref_model=None, bound=None, min_distinct=4):
    """Engine logits at each step vs the HF reference on the same (teacher-forced) tokens, within `bound` (the
    allowed max logit error; fp32's 1e-4 of the logit scale by default); greedy tokens must be the reference's
    argmax up to twice that bound (near-ties at low precision)."""
    ref = hf_logits(ref_model or model, seq[:-1])
    eng = torch.stack(logits)
    want = ref[prompt_len - 1 :]
    assert eng.shape == want.shape
    scale = want.abs().max().item()
    err = (eng - want).abs().max().item()
    if bound is None:
        bound = 1e-4 * scale + 1e-4
    assert err <= bound, f"max logit error {err} > {bound} (scale {scale})"
    toks = torch.tensor(seq[prompt_len:])
    chosen = want.gather(1, toks[:, None])[:, 0]
    assert (chosen >= want.max(1).values - 2 * bound).all(), "greedy token differs from HF's argmax"
    assert len(set(seq[prompt_len:])) >= min_distinct, "greedy path is degenerate: the test would prove nothing"
    return err
