"""A plain-PyTorch stand-in for the `_infinilm` module (same classes and Input semantics), for front-end tests.

It follows DESIGN.md's engine semantics (static rows with per-row lengths, paged flattened input with
block tables and slot mapping) in the most direct way, so the front end's batching, block management and
sampling plumbing can be checked against HF transformers independently of the C++ engine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class LlamaConfig:
    vocab_size = hidden_size = intermediate_size = num_hidden_layers = num_attention_heads = 0
    num_key_value_heads = head_dim = max_position_embeddings = 0
    rms_norm_eps = rope_theta = rope_factor = rope_low_freq_factor = rope_high_freq_factor = 0.0
    rope_original_max_position_embeddings = 0
    hidden_act = model_type = dtype = rope_type = ""
    attention_bias = mlp_bias = tie_word_embeddings = use_cache = False
    eos_token_id = bos_token_id = ()

    def validate(self):
        assert self.num_attention_heads % self.num_key_value_heads == 0

    def kv_dim(self):
        return self.num_key_value_heads * self.head_dim


class DistConfig:
    def __init__(self, tp_size=1, tp_device_ids=None):
        ids = tp_device_ids if tp_device_ids is not None else tp_size
        self.tp_device_ids = list(range(ids)) if isinstance(ids, int) else list(ids)


class StaticKVCacheConfig:
    def __init__(self, max_batch_size=1, max_cache_len=2**63 - 1):
        self._b, self._n = max_batch_size, max_cache_len

    def max_batch_size(self):
        return self._b

    def max_cache_len(self):
        return self._n


class PagedKVCacheConfig:
    def __init__(self, max_kv_memory_bytes, block_size=16):
        self._m, self._bs = max_kv_memory_bytes, block_size

    def max_kv_memory_bytes(self):
        return self._m

    def block_size(self):
        return self._bs


class _Input:
    def __init__(self, input_ids=None, position_ids=None, cache_lengths=None, input_lengths=None, block_tables=None,
                 slot_mapping=None, temperature=1.0, top_k=50, top_p=1.0, return_logits=False, seed=None):
        self.__dict__.update(locals())
        del self.__dict__["self"]


class _Output:
    def __init__(self, output_ids, logits):
        self.output_ids, self.logits = output_ids, logits


def _rope(x, pos, theta, hd):  # x [T, H, hd], NeoX halves, as HF Llama
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos.double()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1).float()[:, None], torch.cat([ang.sin()] * 2, -1).float()[:, None]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class InferEngine:
    Input, Output = _Input, _Output

    def __init__(self, config, distributed_config=None, device_type="cpu", cache_config=None):
        self.c, self.w = config, {}
        self.reset_cache(cache_config)

    def load_param(self, name, t):
        self.w[name] = t.detach().float().clone()

    def state_dict(self):
        return [dict(self.w)]

    def reset_cache(self, cache_config=None):
        c = self.c
        cc = cache_config or StaticKVCacheConfig(1, c.max_position_embeddings)
        if isinstance(cc, StaticKVCacheConfig):
            self.static, self.bs = True, min(cc.max_cache_len(), c.max_position_embeddings)
            nb = cc.max_batch_size()
        else:
            self.static, self.bs = False, cc.block_size()
            nb = cc.max_kv_memory_bytes() // (2 * c.head_dim * c.num_key_value_heads * self.bs * c.num_hidden_layers * 4)
        shape = (c.num_hidden_layers, nb, c.num_key_value_heads, self.bs, c.head_dim)
        self.k, self.v = torch.full(shape, float("nan")), torch.full(shape, float("nan"))

    def forward(self, inp):
        c, w = self.c, self.w
        if self.static:
            ids = inp.input_ids
            B, S = ids.shape
            cl = inp.cache_lengths if inp.cache_lengths is not None else torch.zeros(B, dtype=torch.long)
            il = inp.input_lengths if inp.input_lengths is not None else torch.full((B,), S)
            pos = inp.position_ids if inp.position_ids is not None else cl[:, None] + torch.arange(S)
            toks = torch.cat([ids[b, : il[b]] for b in range(B)])
            posf = torch.cat([pos[b, : il[b]] for b in range(B)])
            bt = torch.arange(B)[:, None]
            slots = torch.cat([b * self.bs + cl[b] + torch.arange(il[b]) for b in range(B)])
        else:
            toks, posf, cl, il = inp.input_ids.reshape(-1), inp.position_ids.reshape(-1), inp.cache_lengths, inp.input_lengths
            bt, slots = inp.block_tables, inp.slot_mapping
        hd, hq, hk = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        x = w["model.embed_tokens.weight"][toks]

        def lin(x, n):
            return F.linear(x, w[n + ".weight"], w.get(n + ".bias"))

        def norm(x, n):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps) * w[n]

        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            h = norm(x, p + "input_layernorm.weight")
            q = _rope(lin(h, p + "self_attn.q_proj").view(-1, hq, hd), posf, c.rope_theta, hd)
            k = _rope(lin(h, p + "self_attn.k_proj").view(-1, hk, hd), posf, c.rope_theta, hd)
            v = lin(h, p + "self_attn.v_proj").view(-1, hk, hd)
            self.k[i][slots // self.bs, :, slots % self.bs] = k
            self.v[i][slots // self.bs, :, slots % self.bs] = v
            outs, start = [], 0
            for r in range(len(il)):
                n, ctx = int(il[r]), int(cl[r] + il[r])
                blocks = bt[r, : (ctx + self.bs - 1) // self.bs]
                K = self.k[i][blocks].permute(1, 0, 2, 3).reshape(hk, -1, hd)[:, :ctx].repeat_interleave(hq // hk, 0)
                V = self.v[i][blocks].permute(1, 0, 2, 3).reshape(hk, -1, hd)[:, :ctx].repeat_interleave(hq // hk, 0)
                mask = torch.ones(n, ctx, dtype=torch.bool).tril(ctx - n)
                outs.append(F.scaled_dot_product_attention(q[start: start + n].transpose(0, 1), K, V, attn_mask=mask)
                            .transpose(0, 1).reshape(n, -1))
                start += n
            x = x + lin(torch.cat(outs), p + "self_attn.o_proj")
            h = norm(x, p + "post_attention_layernorm.weight")
            x = x + lin(F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        last = torch.cumsum(il, 0) - 1
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        logits = norm(x[last], "model.norm.weight") @ head.T
        if inp.temperature == 0 or inp.top_k == 1:
            out = logits.argmax(-1)
        else:
            g = torch.Generator().manual_seed(inp.seed) if inp.seed is not None else None
            probs = torch.softmax(logits / inp.temperature, -1)
            if inp.top_k > 0:
                kth = probs.topk(min(inp.top_k, probs.shape[-1]), -1).values[:, -1:]
                probs = torch.where(probs < kth, 0.0, probs)
            out = torch.multinomial(probs, 1, generator=g).view(-1)
        return _Output(out.view(-1, 1), logits if inp.return_logits else None)
