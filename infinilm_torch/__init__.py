"""infinilm_torch: Llama-family inference kernels as torch.ops.infinilm.* and a C++ inference engine."""
from infinilm_torch import ops  # noqa: F401  (loads the extension, registers ops and fakes)

__version__ = "0.1.0"
