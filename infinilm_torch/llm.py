"""LLM: the front end around the C++ InferEngine — load a model directory (or a transformers model), generate.

    llm = LLM("path/to/model", cache="paged")
    out = llm.generate(["Hello", "The capital of France is"], max_new_tokens=32, temperature=0)
    print(out.texts, out.stats.tokens_per_s)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from infinilm_torch import infinicore, runner, weights
from infinilm_torch.auto_config import parse_config, read_config_file, to_llama_config
from infinilm_torch.tokenizer import Tokenizer, load_tokenizer

Prompt = Union[str, Sequence[int]]


@dataclass
class GenerationOutput:
    token_ids: List[List[int]]          # generated ids per prompt (a stopping eos included)
    finish_reasons: List[str]           # "eos" or "length"
    texts: Optional[List[str]]          # decoded generations, when the model has a tokenizer
    prompt_token_ids: List[List[int]]
    stats: runner.RunStats


def _device(device) -> torch.device:
    return infinicore._torch_device(device if device is not None else infinicore.context.getDevice())


class LLM:
    """An InferEngine with its config, weights, cache geometry and (optionally) tokenizer.

    cache: "static" (``max_batch_size`` rows of ``max_cache_len`` tokens; grown on demand) or "paged"
    (``max_kv_memory_bytes`` split into blocks of ``block_size`` tokens, served by a Python block manager).
    """

    def __init__(self, model: Optional[Union[str, os.PathLike]] = None, *, device=None, dtype=None,
                 cache: str = "static", max_batch_size: int = 8, max_cache_len: Optional[int] = None,
                 block_size: int = 16, max_kv_memory_bytes: Optional[int] = None, max_num_seqs: int = 64,
                 max_step_tokens: int = 8192,
                 tp_size: int = 1, progress: bool = True, tokenizer: Any = "auto",
                 _fields: Optional[Dict[str, Any]] = None, _state: Any = None):
        from infinilm_torch.lib import _infinilm

        self._lib = _infinilm
        if cache not in ("static", "paged"):
            raise ValueError(f"cache must be 'static' or 'paged', got {cache!r}")
        if _fields is None:
            if model is None:
                raise ValueError("LLM needs a model directory (or use LLM.from_hf_model)")
            _fields = parse_config(read_config_file(model), src=os.path.join(os.fspath(model), "config.json"))
        self.fields = dict(_fields)
        if dtype is not None:
            self.fields["dtype"] = str(infinicore._torch_dtype(dtype)).removeprefix("torch.")
        self.dtype = infinicore._torch_dtype(self.fields["dtype"])
        self.config = to_llama_config(self.fields)
        self.device = _device(device)
        self.cache_kind, self.block_size = cache, block_size
        self.max_num_seqs, self.max_step_tokens = max_num_seqs, max_step_tokens
        max_pos = self.fields["max_position_embeddings"]
        self.max_batch_size = max_batch_size
        self.max_cache_len = min(max_cache_len or 2048, max_pos)
        self.tp_size = tp_size
        self.engine = self._lib.InferEngine(
            config=self.config, distributed_config=self._dist_config(),
            device_type=self.device.type, cache_config=self._cache_config(max_kv_memory_bytes))
        self._sync_cache_geometry()
        if _state is not None:
            weights.load_state_dict(self.engine, _state, self.fields, dtype=self.dtype, progress=progress,
                                    src="model state_dict")
        else:
            weights.load_weights(self.engine, model, self.fields, dtype=self.dtype, progress=progress)
        if isinstance(tokenizer, str) and tokenizer == "auto":
            tokenizer = load_tokenizer(model)
        elif tokenizer is not None and not isinstance(tokenizer, Tokenizer):  # a transformers tokenizer object
            tokenizer = Tokenizer(tokenizer, tokenizer.eos_token_id, getattr(tokenizer, "bos_token_id", None), hf=True)
        self.tokenizer = tokenizer
        self.eos_token_ids = list(self.fields["eos_token_id"])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            if self.tokenizer.eos_token_id not in self.eos_token_ids:
                self.eos_token_ids.append(self.tokenizer.eos_token_id)

    # ---- construction helpers -------------------------------------------------------------------------
    @classmethod
    def from_hf_model(cls, model, tokenizer: Any = None, **kwargs) -> "LLM":
        """An engine built straight from a loaded transformers causal LM (its config and a copy of its weights).

        device and dtype default to the model's; the HF model is left untouched.
        """
        d = model.config.to_dict()
        d.setdefault("model_type", getattr(model.config, "model_type", None))
        fields = parse_config(d, src=type(model).__name__)
        param = next(model.parameters())
        kwargs.setdefault("device", param.device)
        kwargs.setdefault("dtype", param.dtype)
        kwargs.setdefault("progress", False)
        return cls(None, tokenizer=tokenizer, _fields=fields, _state=model.state_dict(), **kwargs)

    def _dist_config(self):
        if self.device.type == "cpu" or self.tp_size > 1:
            return self._lib.DistConfig(self.tp_size)
        return self._lib.DistConfig([self.device.index or 0])

    def _kv_args(self):
        f = self.fields
        return dict(block_size=self.block_size, num_layers=f["num_hidden_layers"], num_kv_heads=f["num_key_value_heads"],
                    head_dim=f["head_dim"], dtype=self.dtype, tp_size=self.tp_size)

    def _cache_config(self, max_kv_memory_bytes: Optional[int] = None):
        if self.cache_kind == "static":
            return self._lib.StaticKVCacheConfig(max_batch_size=self.max_batch_size, max_cache_len=self.max_cache_len)
        if max_kv_memory_bytes is None:
            max_kv_memory_bytes = runner.kv_bytes_for(self.max_batch_size * self.max_cache_len, **self._kv_args())
        self.max_kv_memory_bytes = max_kv_memory_bytes
        self.num_blocks = runner.num_paged_blocks(max_kv_memory_bytes, **self._kv_args())
        if self.num_blocks < 1:
            raise ValueError(f"max_kv_memory_bytes {max_kv_memory_bytes} holds no block of {self.block_size} tokens")
        return self._lib.PagedKVCacheConfig(max_kv_memory_bytes=max_kv_memory_bytes, block_size=self.block_size)

    def _sync_cache_geometry(self) -> None:
        """Take the block count from the engine itself when it reports one (it is the authority)."""
        if self.cache_kind == "paged" and isinstance(getattr(self.engine, "num_blocks", None), int):
            self.num_blocks = self.engine.num_blocks

    # ---- one engine step -----------------------------------------------------------------------------
    def _forward(self, seed=None, temperature=1.0, top_k=50, top_p=1.0, **tensors) -> torch.Tensor:
        inp = self._lib.InferEngine.Input(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                          **tensors)
        if seed is not None:
            inp.seed = int(seed)
        return self.engine.forward(inp).output_ids

    def _grow_static(self, batch: int, tokens: int) -> None:
        if batch > self.max_batch_size or tokens > self.max_cache_len:
            self.max_batch_size = max(batch, self.max_batch_size)
            self.max_cache_len = max(tokens, self.max_cache_len)
            self.engine.reset_cache(self._cache_config())
            self._sync_cache_geometry()

    # ---- public API ----------------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> List[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token ids instead of text")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in (prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)]
        vocab = self.fields["vocab_size"]
        if not ids:
            raise ValueError("empty prompt: a prompt needs at least one token")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are out of range [0, {vocab})")
        return ids

    def generate(self, prompts: Union[Prompt, Sequence[Prompt]], max_new_tokens: int = 32, temperature: float = 1.0,
                 top_k: int = 50, top_p: float = 1.0, seed: Optional[int] = None, stop_at_eos: bool = True,
                 stop_token_ids: Sequence[int] = ()) -> GenerationOutput:
        """Generate for one prompt or a batch: text (needs a tokenizer) or token ids, any mix of lengths.

        temperature 0 (or top_k 1) is greedy; ``seed`` makes sampling reproducible. A request stops at
        ``max_new_tokens`` or, when ``stop_at_eos``, at an eos token of the config or tokenizer.
        """
        single = isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int)) or (
            isinstance(prompts, torch.Tensor) and prompts.dim() == 1)
        batch = [prompts] if single else list(prompts)
        if not batch:
            raise ValueError("no prompts given")
        ids = [self.encode(p) for p in batch]
        stop = list(stop_token_ids) + (self.eos_token_ids if stop_at_eos else [])
        sp = runner.SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, stop)
        sp.validate()
        # The last new token is never fed back: a request occupies prompt + max_new_tokens - 1 positions.
        longest = max(len(p) for p in ids) + max_new_tokens - 1
        max_pos = self.fields["max_position_embeddings"]
        if longest > max_pos:
            raise ValueError(f"longest prompt ({max(len(p) for p in ids)} tokens) + max_new_tokens ({max_new_tokens}) "
                             f"- 1 = {longest} positions exceeds max_position_embeddings {max_pos}")

        def fwd(**kw):
            return self._forward(temperature=temperature, top_k=top_k, top_p=top_p, **kw)

        reqs, stats = [], runner.RunStats()
        if self.cache_kind == "static":
            for start in range(0, len(ids), self.max_batch_size):
                chunk = ids[start: start + self.max_batch_size]
                self._grow_static(len(chunk), max(len(p) for p in chunk) + max_new_tokens - 1)
                r, s = runner.run_static(fwd, chunk, sp)
                reqs += r
                stats.merge(s)
        else:
            bm = runner.BlockManager(self.num_blocks, self.block_size)
            reqs, stats = runner.run_paged(fwd, ids, sp, bm, self.max_num_seqs, self.max_step_tokens)
        out = [r.out for r in reqs]
        texts = [self.tokenizer.decode(o) for o in out] if self.tokenizer is not None else None
        return GenerationOutput(out, [r.finish for r in reqs], texts, ids, stats)

    def reset_cache(self) -> None:
        self.engine.reset_cache(self._cache_config(getattr(self, "max_kv_memory_bytes", None)))
        self._sync_cache_geometry()
