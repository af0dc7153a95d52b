"""Serving: vLLM's API (SamplingParams, RequestOutput), the engine loop and scheduler, the OpenAI-compatible server."""
from infinilm_torch.serving.params import CompletionOutput, Logprob, RequestOutput, SamplingParams  # noqa: F401


def __getattr__(name):
    if name == "LLM":
        from infinilm_torch.llm import LLM

        return LLM
    raise AttributeError(name)
