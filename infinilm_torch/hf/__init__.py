"""Drop-in patching of HuggingFace transformers Llama/Qwen2/Qwen3/Mistral models onto torch.ops.infinilm."""
from infinilm_torch.hf.attention import infinilm_attention_forward, infinilm_mask, register as register_attention
from infinilm_torch.hf.patching import (
    apply_infinilm_to_llama,
    apply_infinilm_to_mistral,
    apply_infinilm_to_qwen2,
    apply_infinilm_to_qwen3,
    patch,
    revert_infinilm_to_llama,
    revert_infinilm_to_mistral,
    revert_infinilm_to_qwen2,
    revert_infinilm_to_qwen3,
    unpatch,
)

__all__ = [
    "patch",
    "unpatch",
    "apply_infinilm_to_llama",
    "apply_infinilm_to_qwen2",
    "apply_infinilm_to_mistral",
    "apply_infinilm_to_qwen3",
    "revert_infinilm_to_llama",
    "revert_infinilm_to_qwen2",
    "revert_infinilm_to_mistral",
    "revert_infinilm_to_qwen3",
    "register_attention",
    "infinilm_attention_forward",
    "infinilm_mask",
]
