"""Tensor-parallel greedy generation, one rank per process: `torchrun --nproc-per-node 2 examples/tp_generate.py`.

Every rank builds the same engine shard and calls forward with the same inputs; only rank 0 gets tokens.
Without --model, a tiny random Llama (same seed on every rank) stands in for a checkpoint.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from infinilm_torch import distributed as tp  # noqa: E402
from infinilm_torch.lib import _infinilm  # noqa: E402


def tiny_model(seed=0, layers=2, hidden=64, heads=8, kv_heads=4, inter=128, vocab=256):
    """A small random HF Llama; the same seed gives the same weights in every process."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # spread weights so that greedy paths vary
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.3 if "embed" in name else 2.5 / p.shape[1] ** 0.5))
    return model


def engine_config(hf_cfg):
    c = _infinilm.LlamaConfig()
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        setattr(c, f, getattr(hf_cfg, f))
    # transformers 5 keeps rope_theta (and any scaling) in rope_parameters; older versions in rope_theta.
    c.rope_scaling = getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None)
    if getattr(hf_cfg, "rope_theta", None):
        c.rope_theta = hf_cfg.rope_theta
    c.model_type = hf_cfg.model_type
    c.attention_bias = bool(getattr(hf_cfg, "attention_bias", False)) or hf_cfg.model_type == "qwen2"
    c.head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    c.dtype = "float32"
    return c


def generate(engine, prompt, steps):
    """Greedy static-cache decoding; returns the new tokens on rank 0, None elsewhere."""
    Input = _infinilm.InferEngine.Input
    out = engine.forward(Input(input_ids=torch.tensor([prompt]), temperature=0.0))
    if out.output_ids is None:  # not rank 0: keep stepping in lockstep, feeding the token rank 0 will feed
        new = None
    else:
        new = [int(out.output_ids[0, 0])]
    # Every rank must feed the same token; rank 0 alone knows it, so it is broadcast over the same group.
    for i in range(steps - 1):
        tok = torch.tensor([new[-1] if new else 0])
        torch.distributed.broadcast(tok, src=0)
        out = engine.forward(Input(input_ids=tok.view(1, 1), cache_lengths=torch.tensor([len(prompt) + i]),
                                   temperature=0.0))
        if new is not None:
            new.append(int(out.output_ids[0, 0]))
    return new


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="HF checkpoint folder (default: a tiny random Llama)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--comm-timeout", type=float, default=300.0)
    ap.add_argument("--fail-rank", type=int, default=-1, help="for tests: this rank exits before forwarding")
    args = ap.parse_args()

    group = tp.init_from_env("nccl" if args.device == "cuda" else "gloo")
    if args.model:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    else:
        model = tiny_model(args.seed)
    engine = _infinilm.InferEngine(engine_config(model.config), device_type=args.device, process_group=group,
                                   comm_timeout=args.comm_timeout)
    for name, t in model.state_dict().items():
        engine.load_param(name, t)
    if torch.distributed.get_rank() == args.fail_rank:
        os._exit(3)
    prompt = [1, 5, 9, 2, 7, 3]
    try:
        new = generate(engine, prompt, args.steps)
    except RuntimeError as e:
        print(json.dumps({"rank": torch.distributed.get_rank(), "error": str(e).splitlines()[0]}), flush=True)
        sys.exit(1)
    if new is not None:
        print(json.dumps({"rank": 0, "tp_size": engine.tp_size, "prompt": prompt, "tokens": new}), flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
