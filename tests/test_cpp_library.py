"""The C++ library over LibTorch (CMakeLists.txt): its example's greedy tokens equal the Python engine's, and its
config.json reader agrees with the Python AutoConfig. Builds build-cpp/ with CMake when it is not built yet."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infinilm_torch import weights
from infinilm_torch.auto_config import parse_config, read_config_file, to_llama_config
from infinilm_torch.demo_model import ensure_demo_model
from infinilm_torch.lib import _infinilm

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("INFINILM_CPP_BUILD", ROOT / "build-cpp"))


@pytest.fixture(scope="module")
def binaries():
    gen, dump = BUILD / "infinilm_generate", BUILD / "infinilm_dump_config"
    if not (gen.exists() and dump.exists()):  # `make cpp` builds these; build them here otherwise
        if shutil.which("cmake") is None:
            pytest.fail("cmake is needed to build the C++ library (apt-get install cmake)")
        import torch.utils

        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
                        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"], check=True)
        subprocess.run(["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 2)], check=True)
    return gen, dump


def _python_greedy(model_dir, prompt, n, cache):
    fields = parse_config(read_config_file(model_dir))
    cfg = to_llama_config(fields)
    length = len(prompt) + n
    blocks = -(-length // 16)
    if cache == "static":
        cc = _infinilm.StaticKVCacheConfig(1, length)
    else:
        cc = _infinilm.PagedKVCacheConfig(blocks * 2 * cfg.head_dim * cfg.num_key_value_heads * 16 *
                                          cfg.num_hidden_layers * 4, 16)
    engine = _infinilm.InferEngine(cfg, device_type="cpu", cache_config=cc)
    weights.load_weights(engine, model_dir, fields, progress=False)
    Input = _infinilm.InferEngine.Input
    out, feed, cached = [], list(prompt), 0
    for _ in range(n):
        k = len(feed)
        ids = torch.tensor(feed)
        if cache == "static":
            inp = Input(input_ids=ids[None], cache_lengths=torch.tensor([cached]), temperature=0.0)
        else:
            pos = torch.arange(cached, cached + k)
            inp = Input(input_ids=ids, position_ids=pos, cache_lengths=torch.tensor([cached]),
                        input_lengths=torch.tensor([k]), block_tables=torch.arange(blocks)[None],
                        slot_mapping=pos, temperature=0.0)
        tok = int(engine.forward(inp).output_ids.item())
        out.append(tok)
        cached += k
        feed = [tok]
    return out


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_cpp_example_tokens_equal_python_engine(binaries, cache):
    gen, _ = binaries
    model_dir = ensure_demo_model()
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(3, 60, (11,), generator=g).tolist()
    n = 12
    res = subprocess.run([str(gen), model_dir, ",".join(map(str, prompt)), "--max-new-tokens", str(n),
                          "--cache", cache], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    cpp = [int(t) for t in res.stdout.strip().split(",")]
    assert cpp == _python_greedy(model_dir, prompt, n, cache)
    assert "tok/s" in res.stderr


def test_cpp_example_usage_and_load_errors(binaries, tmp_path):
    gen, _ = binaries
    res = subprocess.run([str(gen)], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr
    res = subprocess.run([str(gen), str(tmp_path / "absent"), "1,2"], capture_output=True, text=True)
    assert res.returncode == 1 and "absent" in res.stderr
    # A checkpoint that lacks a parameter: the error names it, before anything runs.
    model_dir = Path(ensure_demo_model())
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(model_dir / "config.json", bad / "config.json")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(model_dir / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(bad / "model.safetensors"))
    res = subprocess.run([str(gen), str(bad), "1,2"], capture_output=True, text=True)
    assert res.returncode == 1 and "model.layers.1.mlp.up_proj.weight" in res.stderr


CONFIG_CASES = {
    "demo": None,
    "qwen2_tied": {"model_type": "qwen2", "tie_word_embeddings": True, "max_position_embeddings": None,
                   "eos_token_id": [5, 7], "torch_dtype": "bfloat16", "dtype": None},
    "mistral_rope_linear": {"model_type": "mistral", "rope_scaling": {"type": "linear", "factor": 2.5},
                            "head_dim": None, "num_key_value_heads": None},
    "llama3_rope_params": {"rope_theta": None, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, "rms_norm_eps": 1e-5},
    "llama_biases": {"attention_bias": True, "mlp_bias": True, "dtype": "float16"},
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_cpp_config_reader_matches_python(binaries, tmp_path, case):
    _, dump = binaries
    d = json.loads((Path(ensure_demo_model()) / "config.json").read_text())
    for k, v in (CONFIG_CASES[case] or {}).items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    res = subprocess.run([str(dump), str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    cpp = dict(line.split("=", 1) for line in res.stdout.strip().splitlines())
    py = parse_config(d)
    for key, value in py.items():
        if key in ("hidden_act", "use_cache"):
            continue
        if isinstance(value, bool):
            assert cpp[key] == str(int(value)), key
        elif isinstance(value, float):
            assert float(cpp[key]) == pytest.approx(value, rel=1e-12), key
        elif isinstance(value, list):
            assert cpp[key] == ",".join(map(str, value)), key
        else:
            assert cpp[key] == str(value), key


@pytest.mark.parametrize("patch, needle", [
    ({"model_type": "gemma"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_hidden_layers": None}, "num_hidden_layers"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "yarn"),
    ({"rope_scaling": {"type": "linear"}}, "factor"),
    ({"num_hidden_layers": 2.5}, "num_hidden_layers"),
])
def test_cpp_config_reader_errors_name_the_field(binaries, tmp_path, patch, needle):
    _, dump = binaries
    d = json.loads((Path(ensure_demo_model()) / "config.json").read_text())
    for k, v in patch.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    (tmp_path / "config.json").write_text(json.dumps(d))
    res = subprocess.run([str(dump), str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1 and needle in res.stderr, res.stderr


def test_cpp_core_has_no_python_calls():
    """The engine core (everything but the pybind11 module, csrc/bindings*) includes no pybind11/Python header."""
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cpp", ".cu")]
    offenders = [str(p.relative_to(ROOT)) for p in sources if not p.name.startswith("bindings") and any(
        s in p.read_text() for s in ("pybind11", "torch/extension.h", "Python.h", "py::"))]
    assert sources and not offenders, offenders


def test_sources_list_covers_every_source():
    """csrc/SOURCES.txt (read by setup.py and CMake) places every .cpp/.cu in exactly one group."""
    import glob

    groups = {}
    for line in (ROOT / "csrc" / "SOURCES.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            group, pattern = line.split(maxsplit=1)
            for f in glob.glob(str(ROOT / pattern)):
                groups.setdefault(os.path.relpath(f, ROOT), []).append(group)
    every = {os.path.relpath(str(p), ROOT) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".cu")}
    assert every == set(groups), sorted(every ^ set(groups))
    assert all(len(g) == 1 for g in groups.values()), {f: g for f, g in groups.items() if len(g) > 1}


def test_installed_package_builds_the_docs_example(binaries, tmp_path):
    """`cmake --install` then a consumer project with find_package(infinilm) builds and runs docs/cpp.md's example."""
    import torch.utils

    prefix, app = tmp_path / "prefix", tmp_path / "app"
    subprocess.run(["cmake", "--install", str(BUILD), "--prefix", str(prefix)], check=True, capture_output=True)
    app.mkdir()
    doc = (ROOT / "docs" / "cpp.md").read_text()
    (app / "CMakeLists.txt").write_text(doc.split("```cmake\n")[1].split("```")[0].replace(
        "find_package(Torch REQUIRED)", "cmake_minimum_required(VERSION 3.18)\nproject(app CXX)\n"
        "set(CMAKE_CXX_STANDARD 17)\nfind_package(Torch REQUIRED)"))
    (app / "app.cpp").write_text(doc.split("```cpp\n")[1].split("```")[0])
    subprocess.run(["cmake", "-S", str(app), "-B", str(app / "b"),
                    f"-DCMAKE_PREFIX_PATH={prefix};{torch.utils.cmake_prefix_path}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(app / "b"), "-j", "2"], check=True, capture_output=True)
    res = subprocess.run([str(app / "b" / "app"), ensure_demo_model()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    vocab = json.loads((Path(ensure_demo_model()) / "config.json").read_text())["vocab_size"]
    assert len(res.stdout.split()) == 32 and all(0 <= int(t) < vocab for t in res.stdout.split())


def test_tensor_parallel_without_communicators_is_a_clear_error():
    """A C++-only program (no Python-built process groups) asking for tp_size > 1 gets a clear error."""
    cfg = to_llama_config(parse_config(read_config_file(ensure_demo_model())))
    engine = _infinilm.InferEngine.__new__(_infinilm.InferEngine)
    # The compiled constructor, as a C++ program calls it: no communicators.
    with pytest.raises(ValueError, match="tp_size 2 needs one communicator per rank"):
        _infinilm.InferEngine._raw_init(engine, cfg, _infinilm.DistConfig(2), "cpu", None, None, True, 300.0)
