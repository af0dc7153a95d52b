"""generate() alone and next to busy processes: the engine's slowdown under CPU contention vs HF transformers'.

    python benchmarks/bench_contention.py                      # built-in demo Llama, 0 and 2 busy processes
    python benchmarks/bench_contention.py --model DIR --busy 0 1 2 4 --new-tokens 32

Each busy process is a Python loop that never sleeps (as another job on a shared CI machine). For every busy
count the engine's and HF's generate (greedy, same prompt, same weights) are timed in turn, --repeats times,
interleaved; the table gives medians, the spread (min-max) and each one's slowdown against its own
uncontended median. The engine's kernels run on their own pool (kernels/cpu/thread_pool.h), whose caller
never waits for a worker that is not running; with OpenMP regions (libgomp's spinning team barrier) the
engine was 25-40x slower next to two busy processes on 2 cores, where HF was 2x slower.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from infinilm_torch.llm import LLM  # noqa: E402

BUSY = "import time\nwhile True:\n    pass\n"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model directory (default: the built-in demo checkpoint)")
    p.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="busy-process counts to run next to")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--skip-hf", action="store_true")
    return p.parse_args()


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    a = parse_args()
    model_dir = a.model
    if model_dir is None:
        from infinilm_torch.demo_model import ensure_demo_model
        model_dir = ensure_demo_model(verbose=False)
    llm = LLM(model_dir, dtype="float32", max_batch_size=1, max_cache_len=a.prompt_len + a.new_tokens,
              progress=False, tokenizer=None)
    vocab = llm.fields["vocab_size"]
    prompt = torch.randint(3, vocab, (a.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    runs = {"engine": lambda: llm.generate(prompt, max_new_tokens=a.new_tokens, temperature=0, stop_at_eos=False)}
    if not a.skip_hf:
        import transformers
        hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        ids = torch.tensor([prompt])

        def hf_generate():
            with torch.no_grad():
                hf.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
        runs["HF"] = hf_generate
    for fn in runs.values():  # warm-up (first-call allocations, lazy init)
        fn()
    print(f"{os.path.basename(os.path.normpath(model_dir))}, fp32, prompt {a.prompt_len}, {a.new_tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, median of {a.repeats} (interleaved)")
    print(f"{'busy':>4} | {'who':>6} | {'median s':>9} | {'min-max s':>15} | {'vs alone':>8}")
    print("-" * 55)
    alone = {}
    for busy in a.busy:
        procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
        try:
            time.sleep(0.5 if busy else 0.0)
            times = {k: [] for k in runs}
            for _ in range(a.repeats):
                for k, fn in runs.items():
                    times[k].append(timed(fn))
        finally:
            for p in procs:
                p.kill()
                p.wait()
        for k, ts in times.items():
            med = statistics.median(ts)
            alone.setdefault(k, med)
            print(f"{busy:>4} | {k:>6} | {med:>9.4f} | {min(ts):>7.4f}-{max(ts):<7.4f} | {med / alone[k]:>7.1f}x",
                  flush=True)


if __name__ == "__main__":
    main()
