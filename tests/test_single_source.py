"""One source each: rope parameters (the module's parser, checked against transformers' own rope init), kernel
limits (the constants the ops' checks use, read by Python from the module) and sampling defaults (one module)."""
import ast
import dataclasses
import glob
import os

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from infinilm_torch import ops
from infinilm_torch.auto_config import SUPPORTED_ROPE_TYPES, ConfigError, parse_config
from infinilm_torch.hf import attention, layers
from infinilm_torch.lib import _infinilm
from infinilm_torch.serving import defaults, frontend, protocol
from infinilm_torch.serving.params import SamplingParams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY_FILES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "infinilm_torch", "**", "*.py"),
                                                               recursive=True))
LIMITS = _infinilm.kernel_limits()
BASE = dict(vocab_size=64, hidden_size=96, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
# Small original contexts so that llama3's three frequency bands (kept, interpolated, scaled) all occur at D=24.
ROPES = {
    "default": dict(rope_theta=10000.0),
    "default_theta_5e5": dict(rope_theta=500000.0),
    "linear": dict(rope_theta=10000.0, rope_scaling={"rope_type": "linear", "factor": 2.5}),
    "linear_legacy_type_key": dict(rope_theta=20000.0, rope_scaling={"type": "linear", "factor": 4.0}),
    "llama3": dict(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "llama3_v5_parameters": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                                                  "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                                                  "original_max_position_embeddings": 128}),
}


def hf_config(rope):
    return HFLlamaConfig(**BASE, head_dim=24, **rope)


@pytest.mark.parametrize("name", list(ROPES))
def test_rope_table_equals_transformers_rope_init(name):
    """The table the engine and the HF patch build from the module's parse equals transformers' cos/sin."""
    cfg = hf_config(ROPES[name])
    rotary = LlamaRotaryEmbedding(cfg)
    pos = torch.arange(cfg.max_position_embeddings)[None]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), pos)
    table = ops.rope_cache_from_hf_config(cfg)
    half = table.shape[1] // 2
    assert table.shape == (cfg.max_position_embeddings, 24)
    torch.testing.assert_close(table[:, :half], cos[0, :, :half], atol=2e-5, rtol=0)
    torch.testing.assert_close(table[:, half:], sin[0, :, :half], atol=2e-5, rtol=0)
    # The frequencies themselves: position 1's angles are inv_freq.
    got = torch.atan2(table[1, half:], table[1, :half])
    torch.testing.assert_close(got, rotary.inv_freq.float(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", list(ROPES))
def test_rope_fields_agree_on_every_path(name):
    """AutoConfig's dict path, the transformers-object path and the LlamaConfig setter give the same fields."""
    cfg = hf_config(ROPES[name])
    from_object = ops.hf_rope_params(cfg)
    fields = parse_config({**ROPES[name], **BASE, "model_type": "llama", "head_dim": 24})
    assert {k: fields[k] for k in from_object} == from_object
    assert parse_config({**cfg.to_dict(), "model_type": "llama"})["rope_type"] == from_object["rope_type"]
    c = _infinilm.LlamaConfig(rope_theta=from_object["rope_theta"])
    c.rope_scaling = ROPES[name].get("rope_scaling") or ROPES[name].get("rope_parameters")
    assert {k: getattr(c, k) for k in from_object} == from_object


UNSUPPORTED = [("dynamic", {"factor": 2.0}), ("yarn", {"factor": 4.0, "original_max_position_embeddings": 128}),
               ("longrope", {"short_factor": [1.0] * 12, "long_factor": [2.0] * 12})]


@pytest.mark.parametrize("rope_type,extra", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_rope_types_name_field_and_value(rope_type, extra):
    d = {**BASE, "model_type": "llama", "rope_scaling": {"rope_type": rope_type, **extra}}
    want = rf"m/config\.json: 'rope_scaling\.rope_type' = '{rope_type}' is not supported"
    with pytest.raises(ConfigError, match=want) as e:
        parse_config(d, src="m/config.json")
    assert "'default', 'linear', 'llama3'" in str(e.value)
    if rope_type == "dynamic":
        assert "sequence length" in str(e.value)
    with pytest.raises(ValueError, match=rf"'rope_parameters\.rope_type' = '{rope_type}'"):
        parse_config({**BASE, "model_type": "llama", "rope_parameters": {"rope_type": rope_type, **extra}})
    with pytest.raises(ValueError, match=rf"LlamaConfig\.rope_scaling: 'rope_scaling\.type' = '{rope_type}'"):
        _infinilm.LlamaConfig().rope_scaling = {"type": rope_type, **extra}
    # The HF patch leaves such a model's rotary embedding to transformers.
    assert not layers.rope_supported(hf_config({"rope_scaling": {"rope_type": rope_type, **extra}}))


@pytest.mark.parametrize("rope,match", [
    ({"rope_scaling": {"rope_type": "linear"}}, r"rope_type 'linear' needs 'factor'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"rope_type 'llama3' needs 'low_freq_factor'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "2"}}, r"'rope_scaling\.factor' must be a finite positive"),
    ({"rope_scaling": {"rope_type": 3}}, r"'rope_scaling\.rope_type' must be a string, got 3"),
    ({"rope_scaling": [1, 2]}, r"'rope_scaling' must be an object"),
    ({"rope_parameters": {"rope_theta": -1.0}}, r"'rope_parameters\.rope_theta' must be a finite positive number"),
    ({"rope_theta": True}, r"'rope_theta' must be a finite positive number, got True"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                       "original_max_position_embeddings": 64}}, r"high_freq_factor > low_freq_factor"),
])
def test_bad_rope_values_are_named(rope, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({**BASE, "model_type": "llama", **rope}, src="m/config.json")


def test_rope_precedence_is_transformers():
    """Top-level rope_theta wins over rope_parameters'; rope_scaling's keys win over rope_parameters'."""
    r = _infinilm.parse_rope({"rope_theta": 1e6, "rope_type": "linear", "factor": 2.0},
                             {"rope_type": "linear", "factor": 3.0}, 5e5)
    assert r["rope_theta"] == 5e5 and r["rope_factor"] == 3.0
    assert _infinilm.parse_rope({"rope_theta": 1e6})["rope_theta"] == 1e6
    assert _infinilm.parse_rope()["rope_type"] == "default" and _infinilm.parse_rope()["rope_theta"] == 10000.0


# ---- kernel limits --------------------------------------------------------------------------------------------


def test_python_reads_the_kernel_limits_from_the_module():
    assert set(LIMITS) == {"max_paged_block_size", "cuda_head_sizes", "max_logprobs", "rope_types"}
    assert attention.MAX_BLOCK == LIMITS["max_paged_block_size"]
    assert attention.HEAD_DIMS["cuda"] == tuple(LIMITS["cuda_head_sizes"])
    assert SUPPORTED_ROPE_TYPES == tuple(LIMITS["rope_types"])
    assert frontend.MAX_LOGPROBS <= LIMITS["max_logprobs"]  # the front end's (vLLM's) policy sits inside the kernel's


def test_rope_types_are_the_table_builders():
    for t in LIMITS["rope_types"]:
        assert ops.rope_cos_sin_cache(8, 16, 1e4, t, 2.0, 1.0, 4.0, 4).shape == (8, 16)
    with pytest.raises(ValueError, match="'rope_type' must be"):
        ops.rope_cos_sin_cache(8, 16, 1e4, "dynamic")


def test_max_logprobs_is_the_ops_check():
    k = LIMITS["max_logprobs"]
    logits, ids = torch.randn(2, k + 7), torch.tensor([0, 5])
    _, top, top_ids = ops.logprobs(logits, ids, k)
    torch.testing.assert_close(top, torch.log_softmax(logits, -1).topk(k).values)
    with pytest.raises(ValueError, match=f"must lie in \\[0, {k}\\]"):
        ops.logprobs(logits, ids, k + 1)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("head_dim", LIMITS["cuda_head_sizes"])
def test_cuda_attention_takes_every_listed_head_size(head_dim):
    from test_attention import check, make_case, run_decode, run_prefill

    case = make_case("cuda", torch.bfloat16, [(1, 37), (1, 5)], 2, 4, head_dim, 16)
    check(run_decode(case), case, torch.bfloat16)
    case = make_case("cuda", torch.bfloat16, [(9, 40), (3, 3)], 2, 2, head_dim, 16)
    check(run_prefill(case, max_query_len=9, max_seq_len=40), case, torch.bfloat16)


@cuda
def test_cuda_attention_refuses_other_head_sizes():
    from test_attention import make_case, run_decode

    d = next(d for d in range(32, 520, 8) if d not in LIMITS["cuda_head_sizes"])
    with pytest.raises(ValueError, match=f"supports head_dim .*, got {d}"):
        run_decode(make_case("cuda", torch.float16, [(1, 20)], 1, 2, d, 16))


@cuda
def test_cuda_attention_block_size_limit():
    from test_attention import check, make_case, run_decode

    top = LIMITS["max_paged_block_size"]
    case = make_case("cuda", torch.float16, [(1, top + 300), (1, 17)], 2, 2, 128, top)
    check(run_decode(case), case, torch.float16)
    case = make_case("cuda", torch.float16, [(1, 2 * top + 300), (1, 17)], 1, 2, 128, 2 * top)
    with pytest.raises(ValueError, match=f"power-of-two block_size <= {top}"):
        run_decode(case)


# ---- sampling defaults ----------------------------------------------------------------------------------------

# vLLM's SamplingParams defaults (vllm/sampling_params.py), the reference the front end promises to keep.
VLLM = {"n": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "max_tokens": 16, "min_tokens": 0,
        "ignore_eos": False, "seed": None, "logprobs": None, "repetition_penalty": 1.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "skip_special_tokens": True}


def test_sampling_params_defaults_are_vllms_and_the_modules():
    got = {f.name: f.default for f in dataclasses.fields(SamplingParams) if f.name in VLLM}
    assert got == VLLM == defaults.SAMPLING
    assert dataclasses.asdict(protocol.sampling_params({}, chat=False)) == dataclasses.asdict(SamplingParams())
    assert protocol.sampling_params({}, chat=True).max_tokens is defaults.CHAT_MAX_TOKENS


def test_engine_input_defaults_come_from_the_module():
    e = defaults.engine_input()
    x = _infinilm.InferEngine.Input(input_ids=torch.tensor([[1]]))
    assert {k: getattr(x, k) for k in e} == e
    assert (e["temperature"], e["top_k"], e["top_p"]) == (1.0, 50, 1.0)  # the spec's; top-k differs from vLLM's


def test_cli_defaults_come_from_the_module():
    from infinilm_torch.__main__ import _parser

    for cmd, temp in (("generate", defaults.CLI["temperature"]), ("chat", defaults.CLI["chat_temperature"])):
        a = _parser().parse_args([cmd])
        assert (a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed) == (
            defaults.CLI["max_tokens"], temp, defaults.CLI["top_k"], defaults.CLI["top_p"], defaults.CLI["seed"])


# ---- no copies on the Python side -----------------------------------------------------------------------------

SAMPLING_NAMES = {"temperature", "top_k", "top_p", "min_p", "max_tokens", "max_new_tokens"}
LIMIT_VALUES = {LIMITS["max_paged_block_size"], LIMITS["max_logprobs"], 256, *LIMITS["cuda_head_sizes"]}


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def _flag_name(call):
    for a in call.args:
        if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("--"):
            return a.value[2:].replace("-", "_")
    return None


@pytest.mark.parametrize("path", [p for p in PY_FILES if not p.endswith("serving/defaults.py")])
def test_python_keeps_no_copies(path):
    """No sampling default written as a number outside serving/defaults.py; no rope-type collection; no
    module-level constant that spells a kernel limit."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    ropes = set(LIMITS["rope_types"])
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.args[len(node.args.args) - len(node.args.defaults):] + node.args.kwonlyargs
            dflt = node.args.defaults + node.args.kw_defaults
            for a, d in zip(args, dflt):
                if a.arg in SAMPLING_NAMES and d is not None and isinstance(_literal(d), (int, float)):
                    pytest.fail(f"{path}:{node.lineno}: default {a.arg}={_literal(d)!r}")
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", getattr(d, "attr", "")) == "dataclass"
                                                  for d in node.decorator_list):
            for st in node.body:
                if (isinstance(st, ast.AnnAssign) and getattr(st.target, "id", None) in SAMPLING_NAMES
                        and isinstance(_literal(st.value), (int, float))):
                    pytest.fail(f"{path}:{st.lineno}: field default {st.target.id}")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            if _flag_name(node) in SAMPLING_NAMES:
                for kw in node.keywords:
                    if kw.arg == "default" and isinstance(_literal(kw.value), (int, float)):
                        pytest.fail(f"{path}:{node.lineno}: CLI default --{_flag_name(node)}")
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            named = {e.value for e in node.elts if isinstance(e, ast.Constant)} & ropes
            assert len(named) < 2, f"{path}:{node.lineno}: a rope-type list {sorted(named)}"
    for st in tree.body:  # module-level NAME = literal, for names about blocks, heads, logprobs
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
            name, value = st.targets[0].id, _literal(st.value)
            if any(w in name for w in ("BLOCK", "HEAD", "LOGPROB")) and name != "MAX_LOGPROBS":
                items = value.values() if isinstance(value, dict) else value
                items = items if isinstance(items, (tuple, list, set, type({}.values()))) else [items]
                values = {v for v in items if isinstance(v, int) and not isinstance(v, bool)}
                assert not values & LIMIT_VALUES, f"{path}:{st.lineno}: {name} = {value!r} spells a kernel limit"
