"""infinilm_torch: Llama-family inference kernels as torch.ops.infinilm.* and a C++ inference engine."""
from infinilm_torch import ops  # noqa: F401  (loads the extension, registers ops and fakes)
from infinilm_torch.serving.params import CompletionOutput, RequestOutput, SamplingParams  # noqa: F401


def __getattr__(name):
    if name == "LLM":  # imported on first use: the front end pulls in the loaders and tokenizers
        from infinilm_torch.llm import LLM

        return LLM
    raise AttributeError(name)


def patch(model, **parts):
    """Make a transformers Llama/Qwen2/Mistral causal LM run on torch.ops.infinilm (see infinilm_torch.hf)."""
    from infinilm_torch.hf import patch as _patch

    return _patch(model, **parts)


def unpatch(model):
    """Undo :func:`patch` on ``model``."""
    from infinilm_torch.hf import unpatch as _unpatch

    return _unpatch(model)


def from_hf_model(model, **kwargs):
    """An :class:`~infinilm_torch.llm.LLM` (C++ InferEngine + generate) built from a loaded transformers causal LM,
    with a copy of its weights; kwargs as ``LLM`` (cache, device, dtype, tokenizer, ...)."""
    from infinilm_torch.llm import LLM

    return LLM.from_hf_model(model, **kwargs)


__version__ = "0.1.0"
