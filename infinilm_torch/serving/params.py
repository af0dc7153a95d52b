"""SamplingParams, RequestOutput, CompletionOutput and Logprob: the request and result types of vLLM's API."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

from infinilm_torch.serving.defaults import SAMPLING as _D

_GREEDY_EPS = 1e-5


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    """How one request samples and when it stops (vLLM's fields and defaults: serving/defaults.py, which also
    says how they differ from the engine Input's).

    temperature 0 is greedy; top_k 0 or -1 and top_p 1 and min_p 0 are off. ``stop`` strings end the text
    (the stop string itself is cut off); ``stop_token_ids`` and the model's eos end it too unless
    ``ignore_eos``; a stop comes no earlier than ``min_tokens``. ``seed`` makes this request's draws the
    same however it is batched. ``logprobs`` k returns, per generated token, its log-probability and the
    k most likely tokens'. Penalties follow vLLM: repetition over prompt and output (>1 discourages),
    presence and frequency over the output.
    """
    n: int = _D["n"]
    temperature: float = _D["temperature"]
    top_p: float = _D["top_p"]
    top_k: int = _D["top_k"]
    min_p: float = _D["min_p"]
    max_tokens: Optional[int] = _D["max_tokens"]
    min_tokens: int = _D["min_tokens"]
    stop: Optional[Union[str, List[str]]] = None
    stop_token_ids: Optional[List[int]] = None
    ignore_eos: bool = _D["ignore_eos"]
    seed: Optional[int] = _D["seed"]
    logprobs: Optional[int] = _D["logprobs"]
    repetition_penalty: float = _D["repetition_penalty"]
    presence_penalty: float = _D["presence_penalty"]
    frequency_penalty: float = _D["frequency_penalty"]
    skip_special_tokens: bool = _D["skip_special_tokens"]

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()
        if 0 < self.temperature < _GREEDY_EPS:  # as vLLM: a vanishing temperature is greedy (and keeps logits finite)
            self.temperature = 0.0

    def validate(self) -> None:
        def bad(name, want):
            raise ValueError(f"SamplingParams.{name} must be {want}, got {getattr(self, name)!r}")

        if not _is_int(self.n) or self.n < 1:
            bad("n", "an int >= 1")
        if not _is_num(self.temperature) or not self.temperature >= 0:
            bad("temperature", "a number >= 0")
        if not _is_num(self.top_p) or not 0.0 < self.top_p <= 1.0:
            bad("top_p", "a number in (0, 1]")
        if not _is_int(self.top_k) or self.top_k < -1:
            bad("top_k", "an int >= -1 (0 or -1: off)")
        if not _is_num(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            bad("min_p", "a number in [0, 1]")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            bad("max_tokens", "an int >= 1 (or None: up to the context length)")
        if not _is_int(self.min_tokens) or self.min_tokens < 0 or (
                self.max_tokens is not None and self.min_tokens > self.max_tokens):
            bad("min_tokens", f"an int in [0, max_tokens={self.max_tokens}]")
        if not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "a non-empty string or a list of them")
        if not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "a list of token ids >= 0")
        if self.seed is not None and not _is_int(self.seed):
            bad("seed", "an int or None")
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            bad("logprobs", "an int >= 0 or None")
        if not _is_num(self.repetition_penalty) or not self.repetition_penalty > 0:
            bad("repetition_penalty", "a number > 0")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not _is_num(v) or not -2.0 <= v <= 2.0:
                bad(name, "a number in [-2, 2]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def plain(self) -> bool:
        """No penalties, no min-p: the engine's own sampler covers it."""
        return (self.repetition_penalty == 1.0 and self.presence_penalty == 0.0 and self.frequency_penalty == 0.0
                and self.min_p == 0.0)


@dataclass
class Logprob:
    logprob: float
    rank: Optional[int] = None           # 1 = the most likely token
    decoded_token: Optional[str] = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: List[int]
    cumulative_logprob: Optional[float] = None
    logprobs: Optional[List[Dict[int, Logprob]]] = None
    finish_reason: Optional[str] = None  # "stop", "length", "abort"; None while running
    stop_reason: Union[int, str, None] = None  # the stop token id or stop string that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: List[int]
    outputs: List[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0           # prompt tokens served by the prefix cache
    metrics: Dict[str, float] = field(default_factory=dict)  # arrival, first_token, finished (perf_counter s)


PromptType = Union[str, Sequence[int], Dict[str, object]]
