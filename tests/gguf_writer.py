"""Test helper: write small GGUF files with the gguf package's GGUFWriter (llama.cpp's layout and Q/K permutation)."""
import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import quants

# ggml types the gguf package can quantize; the K-quants it can only dequantize get random valid blocks.
QUANTIZABLE = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)
K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
# Byte offsets of each K-quant block's fp16 scales: random bytes there could be inf/NaN.
_K_HALF_OFFSETS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
_GGUF_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def random_k_blocks(qtype, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes of ``rows`` x ``cols`` values of a K-quant, with finite small fp16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert cols % block == 0
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for off in _K_HALF_OFFSETS[qtype]:
        scale = rng.uniform(0.002, 0.05, size=(rows, cols // block)).astype(np.float16)
        data[:, :, off:off + 2] = scale.view(np.uint8).reshape(rows, cols // block, 2)
    return data.reshape(rows, -1)


def encode(x: np.ndarray, qtype, rng=None):
    """(data, raw_dtype) for GGUFWriter.add_tensor: ``x`` quantized to ``qtype`` (K-quants: random blocks)."""
    if qtype == Q.F32:
        return x.astype(np.float32), None
    if qtype == Q.F16:
        return x.astype(np.float16), None
    if qtype in K_QUANTS:
        return random_k_blocks(qtype, int(np.prod(x.shape[:-1])), x.shape[-1], rng).reshape(*x.shape[:-1], -1), qtype
    return quants.quantize(x.astype(np.float32), qtype), qtype


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (for its interleaved rotary layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name of a HF tensor; names that aren't HF ones (e.g. rope_freqs.weight) pass through."""
    if hf_name.startswith("model.layers."):
        _, _, i, rest = hf_name.split(".", 3)
        stem, suffix = rest.rsplit(".", 1)
        return f"blk.{i}.{_GGUF_NAMES[stem]}.{suffix}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}.get(hf_name, hf_name)


def gpt2_vocab():
    """A tiny byte-level BPE vocabulary: the 256 byte symbols, a few merges, and two control tokens."""
    from infinilm_torch.loaders.gguf_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
    tokens = ["<|end|>", "<|start|>"] + symbols + [m.replace(" ", "") for m in merges]
    types = [3, 3] + [1] * (len(tokens) - 2)
    return tokens, types, merges


def write_model(path, cfg: dict, state: dict, qtype, arch: str = "llama", rng=None, skip=(), extra_meta=None,
                tokenizer: bool = True):
    """A GGUF of a llama/qwen2 state dict (HF names, float tensors): 2-D weights in ``qtype``, 1-D ones F32."""
    rng = rng or np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    p = arch + "."
    meta = {p + "block_count": cfg["num_hidden_layers"], p + "context_length": cfg["max_position_embeddings"],
            p + "embedding_length": cfg["hidden_size"], p + "feed_forward_length": cfg["intermediate_size"],
            p + "attention.head_count": cfg["num_attention_heads"],
            p + "attention.head_count_kv": cfg["num_key_value_heads"], p + "rope.dimension_count": cfg["head_dim"],
            p + "rope.freq_base": float(cfg["rope_theta"]),
            p + "attention.layer_norm_rms_epsilon": float(cfg["rms_norm_eps"]), p + "vocab_size": cfg["vocab_size"]}
    meta.update(extra_meta or {})  # a value of None drops the key
    for key, value in meta.items():
        if value is not None:
            {str: w.add_string, float: w.add_float32, int: w.add_uint32}[type(value)](key, value)
    if tokenizer:
        tokens, types, merges = gpt2_vocab()
        tokens = tokens + [f"<extra_{i}>" for i in range(cfg["vocab_size"] - len(tokens))]
        types = types + [4] * (cfg["vocab_size"] - len(types))
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(0)
        w.add_add_bos_token(True)
    for name, t in state.items():
        if name in skip:
            continue
        x = t.detach().float().numpy()
        if arch == "llama" and ".q_proj." in name:
            x = permute(x, cfg["num_attention_heads"])
        elif arch == "llama" and ".k_proj." in name:
            x = permute(x, cfg["num_key_value_heads"])
        data, raw = encode(x, qtype if x.ndim == 2 else Q.F32, rng)
        w.add_tensor(gguf_name(name), data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def hf_llama(vocab=301, hidden=256, inter=512, layers=2, heads=4, kv_heads=2, tied=False, arch="llama"):
    """A random transformers Llama (or Qwen2) with weights wide enough that greedy paths vary, and its config dict."""
    import transformers

    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    cfg = config_cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
                                   tie_word_embeddings=tied, bos_token_id=1, eos_token_id=0)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 2 / p.shape[-1] ** 0.5))
    d = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
             num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
             max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0)
    return model, d
