"""Front-end pieces that need no engine: the infinicore adapter, config parsing, checkpoint name checks, blocks."""
import json
import os

import pytest
import torch

from infinilm_torch import infinicore
from infinilm_torch.auto_config import ConfigError, parse_config
from infinilm_torch.runner import num_paged_blocks
from infinilm_torch.weights import (WeightsError, check_names, checkpoint_files, expected_param_names,
                                    get_model_state_dict, load_weights)


def test_device_types():
    T = infinicore.Device.Type
    assert len(T) == 9 and {t.name for t in T} >= {"CPU", "NVIDIA", "CAMBRICON", "ASCEND", "METAX", "MOORE",
                                                    "ILUVATAR", "KUNLUN", "HYGON"}
    d = infinicore.device("nvidia", 1)
    assert d.getType() is T.NVIDIA and d.getIndex() == 1 and d.type == "cuda"
    assert d._underlying == torch.device("cuda", 1) and d._underlying.type == "cuda"
    assert infinicore.device("cuda:2") == infinicore.device("nvidia", 2)
    assert infinicore.device("cpu")._underlying == torch.device("cpu")
    assert infinicore.device(T.ILUVATAR).getType() is T.ILUVATAR and T.ILUVATAR != T.NVIDIA
    assert T.NVIDIA == "cuda" and str(T.CPU) == "cpu"  # usable wherever a torch device-type string is
    assert infinicore.context.getDevice().getType() is T.CPU
    with pytest.raises(ValueError, match="unknown device type 'tpu'"):
        infinicore.device("tpu")


def test_tensors():
    t = infinicore.from_list([[1, 2, 3], [4, 5, 6]], dtype=infinicore.int64)
    assert isinstance(t._underlying, torch.Tensor) and t.shape == [2, 3] and t.dtype is torch.int64
    assert t.device.getType() is infinicore.Device.Type.CPU and t.tolist() == [[1, 2, 3], [4, 5, 6]]
    f = t.to(infinicore.bfloat16)
    assert f.dtype is torch.bfloat16 and f.to(device="cpu", dtype="float32").dtype is torch.float32
    x = torch.randn(3, 4)
    w = infinicore.from_torch(x)
    assert w._underlying is x and w[1].shape == [4] and w.narrow(1, 1, 2).shape == [3, 2]
    assert infinicore.zeros([2, 2], dtype=infinicore.float16)._underlying.dtype is torch.float16


def _hf_dict(model_type="llama", **kw):
    d = dict(model_type=model_type, vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5)
    d.update(kw)
    return d


def test_parse_config_fields():
    f = parse_config(_hf_dict(eos_token_id=[2, 7], bos_token_id=1, torch_dtype="bfloat16"))
    assert f["head_dim"] == 16 and f["eos_token_id"] == [2, 7] and f["bos_token_id"] == [1]
    assert f["dtype"] == "bfloat16" and f["rope_type"] == "default" and f["rope_theta"] == 10000.0
    f = parse_config(_hf_dict(num_key_value_heads=None, head_dim=32, dtype="float16", rope_theta=5e5))
    assert f["num_key_value_heads"] == 4 and f["head_dim"] == 32 and f["dtype"] == "float16"
    assert f["rope_theta"] == 5e5
    assert parse_config(_hf_dict("qwen2"))["attention_bias"] is True
    assert parse_config(_hf_dict("llama", attention_bias=True))["attention_bias"] is True
    assert parse_config(_hf_dict("mistral", sliding_window=None))["attention_bias"] is False


def test_parse_rope_scaling():
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64, "rope_theta": 5e5}
    f = parse_config(_hf_dict(rope_parameters=llama3))  # transformers 5 layout
    assert (f["rope_type"], f["rope_factor"], f["rope_original_max_position_embeddings"]) == ("llama3", 8.0, 64)
    assert f["rope_theta"] == 5e5
    f = parse_config(_hf_dict(rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=1e4))  # transformers 4
    assert (f["rope_type"], f["rope_factor"]) == ("linear", 2.0)
    with pytest.raises(ConfigError, match="'yarn' is not supported"):
        parse_config(_hf_dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(ConfigError, match="needs 'low_freq_factor'"):
        parse_config(_hf_dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}))


def test_parse_config_errors():
    with pytest.raises(ConfigError, match="unsupported model_type 'gpt2'"):
        parse_config(_hf_dict("gpt2"))
    d = _hf_dict()
    del d["hidden_size"], d["vocab_size"]
    with pytest.raises(ConfigError, match=r"missing required field\(s\) \['vocab_size', 'hidden_size'\]"):
        parse_config(d)
    with pytest.raises(ConfigError, match="not a multiple of num_key_value_heads 3"):
        parse_config(_hf_dict(num_key_value_heads=3))
    with pytest.raises(ConfigError, match="unsupported dtype 'int8'"):
        parse_config(_hf_dict(dtype="int8"))
    with pytest.raises(ConfigError, match="hidden_act 'gelu'"):
        parse_config(_hf_dict(hidden_act="gelu"))


def test_expected_names():
    f = parse_config(_hf_dict("qwen2", tie_word_embeddings=True, num_hidden_layers=1))
    names = expected_param_names(f)
    assert "model.layers.0.self_attn.q_proj.bias" in names and "model.layers.0.self_attn.o_proj.bias" not in names
    assert "lm_head.weight" not in names and len(names) == 1 + 12 + 1
    f = parse_config(_hf_dict("llama", attention_bias=True, num_hidden_layers=1))
    assert "model.layers.0.self_attn.o_proj.bias" in expected_param_names(f)
    assert "lm_head.weight" in expected_param_names(f)


def _write_checkpoint(path, cfg, names, shards=1):
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    weight_map = {}
    for s in range(shards):
        part = {n: torch.randn(2, 2) for i, n in enumerate(names) if i % shards == s}
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        save_file(part, os.path.join(path, file))
        weight_map.update({n: file for n in part})
    if shards > 1:
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {}, "weight_map": weight_map}, fh)


def test_checkpoint_strictness(tmp_path):
    cfg = _hf_dict(num_hidden_layers=1)
    names = expected_param_names(parse_config(cfg))
    _write_checkpoint(tmp_path / "ok", cfg, names, shards=3)
    assert checkpoint_files(tmp_path / "ok")[1][0].endswith("model-00001-of-00003.safetensors")
    assert sorted(get_model_state_dict(tmp_path / "ok")) == sorted(names)
    _write_checkpoint(tmp_path / "missing", cfg, names[:-2])
    with pytest.raises(WeightsError, match=r"2 missing: \['model.norm.weight', 'lm_head.weight'\]"):
        get_model_state_dict(tmp_path / "missing")
    _write_checkpoint(tmp_path / "extra", cfg, names + ["model.layers.7.mlp.up_proj.weight"])
    with pytest.raises(WeightsError, match=r"1 unexpected: \['model.layers.7.mlp.up_proj.weight'\]"):
        get_model_state_dict(tmp_path / "extra")
    loaded = []

    class Recorder:
        def load_param(self, name, t):
            loaded.append((name, t.dtype))

    with pytest.raises(WeightsError, match="unexpected"):
        load_weights(Recorder(), tmp_path / "extra", parse_config(cfg))
    assert loaded == []  # names are checked before any tensor is loaded
    assert load_weights(Recorder(), tmp_path / "ok", parse_config(cfg), dtype=torch.float16, progress=False) == len(names)
    assert sorted(loaded) == sorted((n, torch.float16) for n in names)
    # Tied embeddings: lm_head.weight may be absent or present (then skipped); old rotary buffers are ignored.
    tied = parse_config(_hf_dict(num_hidden_layers=1, tie_word_embeddings=True))
    assert "lm_head.weight" not in check_names(names + ["model.layers.0.self_attn.rotary_emb.inv_freq"], tied)
    assert check_names([n for n in names if n != "lm_head.weight"], tied)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no weights in"):
        checkpoint_files(tmp_path / "empty")
    # pytorch_model.bin when there is no safetensors file
    os.makedirs(tmp_path / "bin")
    torch.save({n: torch.randn(2) for n in names}, tmp_path / "bin" / "pytorch_model.bin")
    with open(tmp_path / "bin" / "config.json", "w") as fh:
        json.dump(cfg, fh)
    sd = get_model_state_dict(tmp_path / "bin", dtype=torch.bfloat16)
    assert len(sd) == len(names) and sd["model.norm.weight"].dtype is torch.bfloat16


def test_paged_block_count_formula():
    # UPSTREAM.md: bytes / (2 * head_dim * kv_heads * block_size * layers * dtype size)
    assert num_paged_blocks(10 * 2 * 16 * 2 * 4 * 3 * 2, 4, 3, 2, 16, torch.bfloat16) == 10
    assert num_paged_blocks(10 * 2 * 16 * 2 * 4 * 3 * 2 - 1, 4, 3, 2, 16, torch.bfloat16) == 9
