"""Deliberate bugs for dev/mutate.py: each is a literal edit to one file and the test files expected to catch it.

Fields: name, file (repo-relative), pattern (literal text, or a regex with regex=True), replacement, count (how
many times the pattern must occur: a drifted source fails loudly instead of testing nothing), tests (test files
or node ids run for this mutation), why (what the bug models). Add one for every bug fixed from now on.
"""

MUTATIONS = [
    # ---- the five bugs planted for the test-suite review ---------------------------------------------------
    dict(name="tp_row_bias_every_rank", file="csrc/models/layers/common.h",
         pattern="    comm->all_reduce_sum(y);\n    if (b.defined()) y.add_(b);\n",
         replacement="    if (b.defined()) y.add_(b);\n    comm->all_reduce_sum(y);\n",
         tests=["tests/test_tp.py"],  # the static/paged TP tests with biases vs HF
         why="o_proj/down_proj bias added on every rank before the all-reduce: tp x bias under TP"),
    dict(name="hf_fused_norm_eps_hardcoded", file="infinilm_torch/hf/layers.py",
         pattern="_ops.fused_add_rms_norm(attn, residual, post.weight, _eps(post))",
         replacement="_ops.fused_add_rms_norm(attn, residual, post.weight, 1e-6)",
         tests=["tests/test_hf_patch.py", "tests/test_hf_patch_eps.py"],
         why="the HF-patched decoder layer's fused norm ignores the config's eps"),
    dict(name="cpu_rms_eps_outside_sqrt", file="kernels/cpu/norm_impl.h",
         pattern="1.f / std::sqrt(ss / static_cast<float>(hidden) + eps)",
         replacement="1.f / (std::sqrt(ss / static_cast<float>(hidden)) + eps)", count=2,
         tests=["tests/test_ops.py", "tests/test_engine.py"],
         why="CPU rms_norm and fused_add_rms_norm compute 1/(sqrt(ms)+eps) instead of 1/sqrt(ms+eps)"),
    dict(name="cpu_splitk_drop_last_key", file="kernels/cpu/attention_impl.h",
         pattern="k_end = std::min(len, k_begin + split_len);",
         replacement="k_end = std::min(len, k_begin + split_len) - (splits > 1 && k_begin < len);",
         tests=["tests/test_attention.py", "tests/test_attention_cuda.py", "tests/test_engine.py"],
         why="CPU split-K decode drops the last key of every split (only when the context is split)"),
    # ---- further bugs worth catching -------------------------------------------------------------------------
    dict(name="cpu_prefill_misses_own_key", file="kernels/cpu/attention_impl.h",
         pattern="limit[j] = prefix + qi + 1;", replacement="limit[j] = prefix + qi + (qi == 0);",
         tests=["tests/test_attention.py", "tests/test_engine.py"],
         why="CPU prefill causal mask off by one: every query token after the first misses its own key"),
    dict(name="cpu_rope_neox_sign", file="kernels/cpu/rotary.h",
         pattern="h[i + half] = from_float<T>(b * cos[i] + a * sin[i]);",
         replacement="h[i + half] = from_float<T>(b * cos[i] - a * sin[i]);",
         tests=["tests/test_ops.py", "tests/test_engine.py"],
         why="neox-style rotary: the second half rotated the wrong way"),
    dict(name="qwen2_gets_o_proj_bias", file="csrc/models/llama/config.h",
         pattern='return attention_bias && model_type != "qwen2";', replacement="return attention_bias;",
         tests=["tests/test_engine.py"],
         why="Qwen2 treated like Llama: an o_proj bias that no checkpoint loads (uninitialised memory)"),
    dict(name="top_p_not_forwarded", file="csrc/engine/sampling.cpp",
         pattern="sp.top_k.to(dev), sp.top_p.to(dev)", replacement="sp.top_k.to(dev), at::ones_like(sp.top_p).to(dev)",
         tests=["tests/test_sampling_engine.py", "tests/test_sampling.py", "tests/test_serving.py"],
         why="the engine never passes top_p to the sampler"),
    # Bugs fixed since the harness landed (one mutation each, as issue 20 asks).
    dict(name="paged_values_read_raw_view", file="csrc/ops/validate.h",
         pattern="auto sl = seq_lens.to(at::kLong).contiguous();", replacement="auto sl = seq_lens.to(at::kLong);",
         count=2,
         tests=["tests/test_hardening.py", "tests/test_fuzz.py"],
         why="the paged-attention value check reads raw memory of a strided seq_lens view"),
    dict(name="forward_without_weights", file="csrc/engine/infer_engine.cpp",
         pattern="  check_loaded();\n", replacement="\n",
         tests=["tests/test_hardening.py"],
         why="an engine whose parameters were never loaded runs on zeros"),
]
