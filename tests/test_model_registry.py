"""The compiled model registry as the one source of truth: model types, parameter names and shapes, block math;
the Python side holds no copies of them; Mistral's sliding window is refused, not silently approximated."""
import ast
import os

import pytest
import torch

from engine_utils import engine_config, make_hf
from infinilm_torch import runner
from infinilm_torch.auto_config import SUPPORTED_MODEL_TYPES, ConfigError, parse_config
from infinilm_torch.lib import _infinilm
from infinilm_torch.weights import expected_param_names, expected_param_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The Python files that once repeated the engine's model knowledge.
PY_FILES = ["infinilm_torch/auto_config.py", "infinilm_torch/weights.py", "infinilm_torch/runner.py",
            "infinilm_torch/llm.py"]
PARAM_FRAGMENTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "layernorm",
                   "embed_tokens", "q_norm", "k_norm")


def test_supported_types_come_from_the_module():
    types = _infinilm.supported_model_types()
    assert set(types) >= {"llama", "mistral", "qwen2", "qwen3"} and types == sorted(types)
    assert SUPPORTED_MODEL_TYPES == tuple(types)
    c = _infinilm.LlamaConfig(model_type="gemma")
    with pytest.raises(ValueError, match="'model_type' must be one of 'llama', 'mistral', 'qwen2', 'qwen3'"):
        c.validate()


@pytest.mark.parametrize("path", PY_FILES)
def test_python_has_no_hard_coded_lists(path):
    """No string literal names a parameter, and no list/tuple/set/dict literal names two model types."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    types = set(_infinilm.supported_model_types())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _is_docstring(node, tree):
            bad = [f for f in PARAM_FRAGMENTS if f in node.value]
            assert not bad, f"{path}:{node.lineno}: parameter name fragment {bad} in {node.value!r}"
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            named = {e.value for e in node.elts if isinstance(e, ast.Constant)} & types
            assert len(named) < 2, f"{path}:{node.lineno}: a model-type list {sorted(named)}"


def _is_docstring(node, tree):
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and first.value is node:
                return True
    return False


@pytest.mark.parametrize("kind", [dict(), dict(model_type="qwen2", tied=True), dict(bias=True, mlp_bias=True)])
def test_param_specs_match_hf(kind):
    model = make_hf(hidden=48, heads=4, kv_heads=2, head_dim=20, inter=72, vocab=97, **kind)
    cfg = engine_config(model.config, torch.float32)
    want = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        want.pop("lm_head.weight")
    assert expected_param_shapes(cfg) == want
    assert expected_param_names(cfg) == [n for n in model.state_dict() if n in want]
    shard = {n: d for n, _, d in _infinilm.param_specs(cfg)}
    assert shard["model.layers.0.self_attn.k_proj.weight"] == 0 and shard["model.layers.1.mlp.down_proj.weight"] == 1
    assert shard["model.norm.weight"] == -1


def test_param_specs_from_parse_config_dict():
    d = dict(model_type="qwen3", vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=12)
    names = expected_param_names(parse_config(d))
    assert len(names) == 1 + 3 * 11 + 2
    assert "model.layers.2.self_attn.q_norm.weight" in names and "model.layers.0.self_attn.q_proj.bias" not in names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_math_is_the_engines(dtype):
    model = make_hf(hidden=48, heads=4, kv_heads=2, head_dim=20, inter=72, vocab=97)
    cfg = engine_config(model.config, dtype)
    per_block = 2 * 20 * 2 * 8 * 2 * torch.empty((), dtype=dtype).element_size()
    assert _infinilm.kv_block_bytes(2, 2, 20, dtype, 8) == per_block
    budget = 7 * per_block + per_block // 2
    assert runner.num_paged_blocks(budget, 8, 2, 2, 20, dtype) == 7
    assert runner.kv_bytes_for(50, 8, 2, 2, 20, dtype) == 7 * per_block
    engine = _infinilm.InferEngine(cfg, device_type="cpu", cache_config=_infinilm.PagedKVCacheConfig(budget, 8))
    assert engine.num_blocks == 7
    with pytest.raises(ValueError, match="must be > 0"):
        _infinilm.kv_block_bytes(2, 0, 20, dtype, 8)


def test_short_sliding_window_only_for_mistral():
    """Mistral's window reaches the attention ops; Qwen's per-layer windows are still refused."""
    d = dict(model_type="mistral", vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
             num_attention_heads=4, max_position_embeddings=4096, sliding_window=1024)
    assert parse_config(d)["sliding_window"] == 1024
    assert parse_config({**d, "sliding_window": 4096})["max_position_embeddings"] == 4096
    assert parse_config({**d, "sliding_window": None})["model_type"] == "mistral"
    # Qwen2/Qwen3 configs carry a sliding_window that only counts with use_sliding_window.
    assert parse_config({**d, "model_type": "qwen3", "use_sliding_window": False})["model_type"] == "qwen3"
    with pytest.raises(ConfigError, match="sliding_window 1024"):
        parse_config({**d, "model_type": "qwen2", "use_sliding_window": True})


def test_includes_point_one_way():
    """models -> ops, cache, dist, hooks; engine -> models; nothing below the engine includes engine/, and the
    cache knows no model."""
    below_engine = ("csrc/models", "csrc/cache", "csrc/dist", "csrc/hooks", "csrc/ops")
    for top in below_engine:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)
                for line in open(path, encoding="utf-8"):
                    if not line.startswith("#include \"csrc/"):
                        continue
                    assert "csrc/engine/" not in line, f"{rel} includes the engine: {line.strip()}"
                    if not rel.startswith("csrc/models"):
                        assert "csrc/models/" not in line, f"{rel} includes a model: {line.strip()}"
