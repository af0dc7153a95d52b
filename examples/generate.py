"""Generate with the C++ engine from a HF checkpoint directory (default: the built-in demo model).

Usage: python examples/generate.py [MODEL_DIR] [--device cuda] [--cache paged]
"""
import argparse

from infinilm_torch import LLM, SamplingParams
from infinilm_torch.demo_model import ensure_demo_model

parser = argparse.ArgumentParser()
parser.add_argument("model", nargs="?", help="HF model directory (config.json, *.safetensors, tokenizer)")
parser.add_argument("--device", default="cpu")
parser.add_argument("--cache", choices=("static", "paged"), default="paged")
args = parser.parse_args()

llm = LLM(args.model or ensure_demo_model(), device=args.device, cache=args.cache)
prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
prompts = prompts if llm.tokenizer is not None else [[1, 15, 9, 26], [1, 7]]  # no tokenizer: token ids

greedy = llm.generate(prompts, SamplingParams(max_tokens=32, temperature=0))
sampled = llm.generate(prompts, SamplingParams(max_tokens=32, temperature=0.8, top_k=50, top_p=0.95, seed=1))
for i, p in enumerate(prompts):
    for name, outs in (("greedy", greedy), ("sampled", sampled)):
        o = outs[i].outputs[0]
        text = o.text if llm.tokenizer is not None else o.token_ids
        print(f"[{name}] {p!r} -> {text!r}")
s = llm.last_stats
print(f"{s.generated_tokens} tokens in {s.total_s:.2f} s = {s.tokens_per_s:.1f} tokens/s "
      f"(decode {s.decode_tokens_per_s:.1f} tokens/s, batch {s.requests})")
