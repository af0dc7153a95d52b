"""LLM: the front end around the C++ InferEngine, with vLLM's API — load a model, generate, chat.

    from infinilm_torch import LLM, SamplingParams
    llm = LLM("path/to/model", cache="paged")
    outs = llm.generate(["Hello", "The capital of France is"], SamplingParams(temperature=0, max_tokens=32))
    print(outs[0].outputs[0].text)
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import torch

from infinilm_torch import infinicore, runner, weights
from infinilm_torch.auto_config import parse_config, read_config_file, to_llama_config
from infinilm_torch.serving import frontend
from infinilm_torch.tokenizer import Tokenizer, load_tokenizer


def _device(device) -> torch.device:
    return infinicore._torch_device(device if device is not None else infinicore.context.getDevice())


class LLM(frontend.GenerateMixin):
    """An InferEngine with its config, weights, cache geometry, tokenizer and the engine loop that serves it.

    cache: "static" (``max_batch_size`` rows of ``max_cache_len`` tokens; grown on demand) or "paged"
    (``max_kv_memory_bytes`` split into blocks of ``block_size`` tokens; scheduler with preemption,
    chunked prefill under ``max_step_tokens`` (vLLM: ``max_num_batched_tokens``) and prefix caching).

    async_scheduling: keep one engine step in flight (the next step is queued before the host reads this one's
    ids; same outputs). None: the environment's ``INFINILM_ASYNC_SCHEDULING`` (0 / 1), else on wherever the
    engine can feed sampled ids back on the device. ``llm.async_scheduling`` may be switched between calls.
    """

    def __init__(self, model: Optional[Union[str, os.PathLike]] = None, *, device=None, dtype=None,
                 cache: str = "static", max_batch_size: int = 8, max_cache_len: Optional[int] = None,
                 block_size: int = 16, max_kv_memory_bytes: Optional[int] = None, max_num_seqs: int = 64,
                 max_step_tokens: Optional[int] = None, max_num_batched_tokens: Optional[int] = None,
                 enable_prefix_caching: bool = True, async_scheduling: Optional[bool] = None,
                 tp_size: int = 1, progress: bool = True, tokenizer: Any = "auto",
                 _fields: Optional[Dict[str, Any]] = None, _state: Any = None):
        from infinilm_torch.lib import _infinilm

        self._lib = _infinilm
        max_step_tokens = frontend.check_engine_args(
            cache=cache, block_size=block_size, max_batch_size=max_batch_size, max_cache_len=max_cache_len,
            max_kv_memory_bytes=max_kv_memory_bytes, max_num_seqs=max_num_seqs, max_step_tokens=max_step_tokens,
            max_num_batched_tokens=max_num_batched_tokens, tp_size=tp_size)
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
        self.max_cache_len = min(2048 if max_cache_len is None else max_cache_len, max_pos)
        self.max_model_len = max_pos
        self.enable_prefix_caching = enable_prefix_caching
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
        self._core = frontend.make_core(self, frontend.async_scheduling_arg(async_scheduling, self._lib))

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

    def __del__(self):
        core = self.__dict__.get("_core")
        if core is not None:
            core.shutdown()

    def _grow_static(self, batch: int, tokens: int) -> None:
        """Called on the engine loop thread when no request is running."""
        if batch > self.max_batch_size or tokens > self.max_cache_len:
            self.max_batch_size = max(batch, self.max_batch_size)
            self.max_cache_len = max(tokens, self.max_cache_len)
            self.engine.reset_cache(self._cache_config())
            self._sync_cache_geometry()

    @property
    def async_scheduling(self) -> bool:
        return self._core.async_scheduling

    @async_scheduling.setter
    def async_scheduling(self, on: bool) -> None:
        self._core.async_scheduling = frontend.async_scheduling_arg(on, self._lib)

    def reset_cache(self) -> None:
        """Drop every cached block (the prefix cache included); waits for the engine loop to be between steps."""
        def reset():
            self.engine.reset_cache(self._cache_config(getattr(self, "max_kv_memory_bytes", None)))
            self._sync_cache_geometry()
            self._core.scheduler.reset_blocks()
        self._core.call(reset)
