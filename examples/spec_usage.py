"""SEED_API.md section 4's usage example, run at tp 1 on the CPU on the built-in demo checkpoint.

The example's body is the spec's, with only its import lines renamed (infinicore -> infinilm_torch.infinicore,
infinilm.lib -> infinilm_torch.lib, infinilm.auto_config -> infinilm_torch.auto_config). The three values the
spec writes for its own machine (the model path, tp_size=4, device "nvidia") are taken from the lines below.
Usage: python examples/spec_usage.py [MODEL_DIR [DEVICE [TP_SIZE]]]
"""
import sys

from infinilm_torch.demo_model import ensure_demo_model
from infinilm_torch.weights import get_model_state_dict

MODEL_PATH = sys.argv[1] if len(sys.argv) > 1 else ensure_demo_model()
DEVICE = sys.argv[2] if len(sys.argv) > 2 else "cpu"
TP_SIZE = int(sys.argv[3]) if len(sys.argv) > 3 else 1

# ---- the spec's example -------------------------------------------------------------------------------
from infinilm_torch import infinicore  # noqa: E402
from infinilm_torch.lib import _infinilm  # noqa: E402
from infinilm_torch.auto_config import AutoConfig  # noqa: E402

# 1. Load model configuration
config = AutoConfig.from_pretrained(MODEL_PATH)
# This returns a _infinilm.LlamaConfig with all parameters loaded

# 2. Configure distributed inference
dist_config = _infinilm.DistConfig(tp_size=TP_SIZE)  # 4-way tensor parallelism in the spec

# 3. Configure device
device = infinicore.device(DEVICE, 0)

# 4. Configure KV cache (optional)
cache_config = _infinilm.StaticKVCacheConfig(
    max_batch_size=16,
    max_cache_len=4096
)

# 5. Create inference engine
engine = _infinilm.InferEngine(
    config=config,
    distributed_config=dist_config,
    device_type=device._underlying.type,
    cache_config=cache_config
)

# 6. Load model weights
model_path = MODEL_PATH
state_dict = get_model_state_dict(model_path)  # Your weight loading logic
for name, param in state_dict.items():
    engine.load_param(name, param._underlying)

# 7. Prepare input tensors
input_ids = infinicore.from_list([[1, 2, 3, 4]], dtype=infinicore.int64)
position_ids = infinicore.from_list([[0, 1, 2, 3]], dtype=infinicore.int64)
cache_lengths = infinicore.from_list([0], dtype=infinicore.int64)

# 8. Run inference
input_struct = _infinilm.InferEngine.Input(
    input_ids=input_ids._underlying,
    position_ids=position_ids._underlying,
    cache_lengths=cache_lengths._underlying,
    temperature=0.8,
    top_k=50,
    top_p=0.95
)

output = engine.forward(input_struct)
generated_token = output.output_ids  # infinicore.Tensor [batch, 1]

# 9. Reset cache (optional)
engine.reset_cache(cache_config)
# ---- end of the spec's example ------------------------------------------------------------------------

print(f"generated token: {generated_token.tolist()} (shape {list(generated_token.shape)}) from {MODEL_PATH}")
