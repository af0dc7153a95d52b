"""GGUF loading versus transformers' own GGUF loader (the trained SmolLM2 file and synthetic files), and its errors.

Synthetic files are written with the gguf package's GGUFWriter from a random HF Llama (q/k permuted as
llama.cpp's converter does), in every quant type; the K-quants, which gguf can't quantize, get random
blocks. References: transformers' GGUF loading (an independent torch dequantizer) and the original weights.
"""
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from gguf import GGMLQuantizationType as Q  # noqa: E402

from gguf_writer import K_QUANTS, QUANTIZABLE, encode, hf_llama, write_model  # noqa: E402
from infinilm_torch.auto_config import AutoConfig, ConfigError, parse_config, read_config_file  # noqa: E402
from infinilm_torch.loaders import GGUFError, default_model, gguf as gguf_loader, iter_tensors  # noqa: E402
from infinilm_torch.tokenizer import load_tokenizer  # noqa: E402
from infinilm_torch.weights import WeightsError, load_weights  # noqa: E402

TEXTS = ["Hello world!", "The year 2024: 3.14159 isn't e's value.", "  leading spaces\n\nnewlines\ttabs",
         "Ünïcödé — 東京 🙂", "<|im_start|>user\nhi<|im_end|>", "def f(x):\n    return x ** 2"]
CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "2+2?"}]]
FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
          "attention_bias", "mlp_bias", "eos_token_id", "bos_token_id", "rope_theta", "rope_type")


def hf_from_gguf(path, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                             dtype=dtype).eval()


@pytest.fixture(scope="module")
def smol():
    path = default_model()
    return path, hf_from_gguf(path)


def test_default_model_is_the_installed_file():
    path = default_model()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and os.path.getsize(path) > 90e6


def test_smollm2_tensors_equal_transformers(smol):
    path, hf = smol
    ref = hf.state_dict()
    ref.pop("lm_head.weight")  # tied: a view of the embedding
    ours = dict(iter_tensors(path, dtype=torch.float32))
    assert sorted(ours) == sorted(ref)
    for name, t in ours.items():
        assert t.shape == ref[name].shape and t.dtype == ref[name].dtype, name
        assert torch.equal(t, ref[name]), f"{name}: max diff {(t - ref[name]).abs().max()}"


def test_smollm2_config_equals_transformers(smol):
    path, hf = smol
    ours = parse_config(read_config_file(path), src=path)
    d = hf.config.to_dict()
    d["dtype"] = "float32"
    want = parse_config(d)
    assert {k: ours[k] for k in FIELDS} == {k: want[k] for k in FIELDS}
    c = AutoConfig.from_pretrained(path)
    assert (c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.vocab_size) == (30, 3, 64, 49152)


def test_smollm2_tokenizer_equals_transformers(smol):
    path = smol[0]
    ours = load_tokenizer(path)
    assert ours._hf is False  # built from the GGUF metadata, not by transformers
    hf = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == hf(text)["input_ids"], text
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    for chat in CHATS:
        text = ours.apply_chat_template(chat)
        assert text == hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert ours.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]
        assert ours.apply_chat_template(chat, add_generation_prompt=False) == hf.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=False)
    assert (ours.eos_token_id, ours.bos_token_id) == (hf.eos_token_id, hf.bos_token_id) == (2, 1)
    assert ours.chat_template == hf.chat_template
    assert "<|im_end|>" in ours.special_tokens["additional_special_tokens"]


# ---- synthetic files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", QUANTIZABLE + K_QUANTS, ids=lambda q: q.name)
@pytest.mark.parametrize("shape", [(7, 256), (83, 512), (1, 256), (3, 5, 256)])
def test_tensor_roundtrip(tmp_path, qtype, shape):
    """One tensor of an odd shape per type: ours == transformers' dequantizer; near the original values."""
    from transformers.integrations.gguf import dequant

    rng = np.random.default_rng()
    x = rng.standard_normal(shape).astype(np.float32)
    data, raw = encode(x, qtype, rng)
    path = str(tmp_path / "t.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("x.weight", data, raw_dtype=raw)
    w.add_tensor("n.weight", x.reshape(-1)[:83].copy())  # odd 1-D, F32
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    f = gguf_loader.open_gguf(path)
    got = gguf_loader.dequantize(f, f.tensors["x.weight"])
    assert got.shape == shape and got.dtype == torch.float32
    assert torch.equal(gguf_loader.dequantize(f, f.tensors["n.weight"]), torch.from_numpy(x.reshape(-1)[:83]))
    raw_bytes = torch.from_numpy(np.array(f.tensors["x.weight"].data).view(np.uint8).reshape(-1))
    if qtype in (Q.F32, Q.F16, Q.BF16):
        ref = torch.from_numpy(x).to({Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}[qtype])
        torch.testing.assert_close(got, ref.float(), atol=0, rtol=0)
    elif int(qtype) in dequant.GGML_BLOCK:  # transformers has no Q5_0/Q5_1: those are checked by the bound below
        ref = dequant.dequantize(raw_bytes, int(qtype)).reshape(shape)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    if qtype in QUANTIZABLE:  # quantization error within the type's step size
        levels = {Q.F32: 1e7, Q.F16: 1e3, Q.BF16: 1e2, Q.Q8_0: 127, Q.Q4_0: 7, Q.Q4_1: 7, Q.Q5_0: 15, Q.Q5_1: 15}
        err = (got - torch.from_numpy(x)).abs().max().item()
        assert err <= np.abs(x).max() / levels[qtype], err


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K],
                         ids=lambda q: q.name)
def test_model_roundtrip(tmp_path, qtype):
    """A whole llama GGUF: ours == transformers' GGUF loading; F32 == the original HF weights (un-permuted)."""
    model, cfg = hf_llama()
    path = write_model(tmp_path / f"m-{qtype.name}.gguf", cfg, model.state_dict(), qtype)
    ours = dict(iter_tensors(path, dtype=torch.float32))
    ref = hf_from_gguf(path).state_dict()
    assert sorted(ours) == sorted(ref)
    for name, t in ours.items():
        torch.testing.assert_close(t, ref[name], atol=1e-6, rtol=1e-6, msg=name)
        if qtype == Q.F32:
            assert torch.equal(t, model.state_dict()[name]), name
    bf16 = dict(iter_tensors(path, dtype=torch.bfloat16))
    assert all(t.dtype == torch.bfloat16 for t in bf16.values())
    fields = parse_config(read_config_file(path), src=path)
    assert {k: fields[k] for k in FIELDS} == {k: v for k, v in parse_config(
        dict(hf_from_gguf(path).config.to_dict(), dtype="float32")).items() if k in FIELDS}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llm_on_gguf_matches_hf(tmp_path, arch):
    """LLM("x.gguf") builds the engine; its last-token logits equal HF's on the same file (fp32). Qwen2: q/k/v
    biases, no Q/K permutation."""
    from engine_utils import Input
    from infinilm_torch.llm import LLM

    model, cfg = hf_llama(tied=True, arch=arch)
    path = write_model(tmp_path / "m.gguf", cfg, model.state_dict(), Q.Q8_0, arch=arch, skip=("lm_head.weight",))
    llm = LLM(path, progress=False)
    assert llm.fields["model_type"] == arch and llm.fields["attention_bias"] == (arch == "qwen2")
    assert llm.tokenizer.encode("hello world") == [1, 2 + 256 + 3, 2 + 256 + 8]  # BOS, "hello", " world"
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    for text in TEXTS:
        assert llm.tokenizer.encode(text) == hf_tok(text)["input_ids"], text
    hf = hf_from_gguf(path)
    tokens = torch.randint(3, cfg["vocab_size"], (19,)).tolist()
    out = llm.engine.forward(Input(input_ids=torch.tensor([tokens]), return_logits=True, temperature=0.0))
    with torch.no_grad():
        want = hf(torch.tensor([tokens])).logits[0, -1]
    torch.testing.assert_close(out.logits[0], want, atol=1e-4 * want.abs().max().item(), rtol=1e-4)


def test_progress_bar_off_when_not_a_tty(tmp_path, capfd):
    model, cfg = hf_llama(layers=1)
    path = write_model(tmp_path / "m.gguf", cfg, model.state_dict(), Q.F16)
    assert len(list(iter_tensors(path, progress=True))) == len(model.state_dict())
    assert capfd.readouterr().err == ""


# ---- errors ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_gguf(tmp_path):
    model, cfg = hf_llama(layers=1)
    return model, cfg, write_model(tmp_path / "ok.gguf", cfg, model.state_dict(), Q.Q8_0)


def test_truncated_and_corrupted(small_gguf, tmp_path):
    data = open(small_gguf[2], "rb").read()
    for name, blob in (("cut.gguf", data[: len(data) - 1000]), ("head.gguf", data[:100]), ("magic.gguf", b"XXXX" + data[4:]),
                       ("empty.gguf", b"")):
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(GGUFError, match=name):
            read_config_file(path)
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_tokenizer(tmp_path / "nope.gguf")


def test_unknown_architecture(small_gguf, tmp_path):
    model, cfg, _ = small_gguf
    path = write_model(tmp_path / "mamba.gguf", cfg, model.state_dict(), Q.Q8_0, arch="mamba")
    with pytest.raises(GGUFError, match=r"mamba\.gguf.*unsupported architecture 'mamba' \(general\.architecture\)"):
        AutoConfig.from_pretrained(path)


def test_missing_tensor_and_metadata(small_gguf, tmp_path):
    from infinilm_torch.lib import _infinilm

    model, cfg, _ = small_gguf
    path = write_model(tmp_path / "hole.gguf", cfg, model.state_dict(), Q.Q8_0,
                       skip=("model.layers.0.mlp.up_proj.weight",))
    fields = parse_config(read_config_file(path), src=path)
    engine = _infinilm.InferEngine(AutoConfig.from_pretrained(path), device_type="cpu")
    with pytest.raises(WeightsError, match=r"hole\.gguf.*missing.*model\.layers\.0\.mlp\.up_proj\.weight"):
        load_weights(engine, path, fields, progress=False)
    path = write_model(tmp_path / "nolayers.gguf", cfg, model.state_dict(), Q.Q8_0,
                       extra_meta={"llama.block_count": None})
    with pytest.raises(GGUFError, match=r"nolayers\.gguf.*llama\.block_count"):
        read_config_file(path)


def test_unsupported_tensor_type(small_gguf, tmp_path):
    path = str(tmp_path / "f64.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float64))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(GGUFError, match=r"f64\.gguf.*F64.*token_embd\.weight"):
        list(iter_tensors(path))


def test_bad_metadata_values(small_gguf, tmp_path):
    model, cfg, _ = small_gguf
    path = write_model(tmp_path / "zero.gguf", cfg, model.state_dict(), Q.F16,
                       extra_meta={"llama.attention.head_count_kv": 0})
    with pytest.raises(ConfigError, match=r"zero\.gguf.*num_key_value_heads.*0"):
        parse_config(read_config_file(path), src=path)


def test_sentencepiece_tokenizer_equals_transformers(tmp_path):
    """A llama (sentencepiece BPE, byte fallback) vocabulary whose merges come from the scores."""
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "t", "a", ",", "!", "▁h", "▁he", "ll", "llo", "▁hello", "▁w",
              "▁wo", "▁wor", "▁worl", "▁world", "▁t", "▁th", "▁the", "he", "hel", "lo", "or", "▁a"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    path = str(tmp_path / "sp.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    w.add_bos_token_id(1), w.add_eos_token_id(2), w.add_unk_token_id(0)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    ours = load_tokenizer(path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    for text in TEXTS + ["hello, the world!", " hello", "the</s>a<s>"]:
        ids = ours.encode(text)
        assert ids == hf(text)["input_ids"], text
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
    assert ours.encode("hello world") == [1, 259 + 16, 259 + 21]  # BOS, "▁hello", "▁world"


def test_rope_scaling_from_metadata(tmp_path):
    """llama3 scaling stored as llama.cpp does (rope_freqs.weight factors), and linear scaling from metadata."""
    import math

    model, cfg = hf_llama(layers=1)
    factor, old_ctx, dim = 8.0, 64, cfg["head_dim"]
    rope = []
    for i in range(0, dim, 2):  # llama.cpp's convert_hf_to_gguf loop for llama3 rope factors
        wavelen = 2 * math.pi * cfg["rope_theta"] ** (i / dim)
        if wavelen < old_ctx / 4.0:
            rope.append(1.0)
        elif wavelen > old_ctx / 1.0:
            rope.append(factor)
        else:
            smooth = (old_ctx / wavelen - 1.0) / (4.0 - 1.0)
            rope.append(1 / ((1 - smooth) / factor + smooth))
    state = dict(model.state_dict(), **{"rope_freqs.weight": torch.tensor(rope)})
    path = write_model(tmp_path / "l3.gguf", cfg, state, Q.F32,
                       extra_meta={"llama.rope.scaling.original_context_length": old_ctx})
    state["rope_freqs.weight"] = torch.tensor(rope) * 1.1
    bad = write_model(tmp_path / "odd.gguf", cfg, state, Q.F32)
    f = parse_config(read_config_file(path), src=path)
    assert (f["rope_type"], f["rope_factor"], f["rope_original_max_position_embeddings"]) == ("llama3", factor, old_ctx)
    assert "rope_freqs.weight" not in dict(iter_tensors(path))
    with pytest.raises(GGUFError, match=r"odd\.gguf.*rope_freqs\.weight"):
        read_config_file(bad)
    lin = write_model(tmp_path / "lin.gguf", cfg, model.state_dict(), Q.F32,
                      extra_meta={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    f = parse_config(read_config_file(lin), src=lin)
    assert (f["rope_type"], f["rope_factor"]) == ("linear", 4.0)
    yarn = write_model(tmp_path / "yarn.gguf", cfg, model.state_dict(), Q.F32,
                       extra_meta={"llama.rope.scaling.type": "yarn"})
    with pytest.raises(GGUFError, match=r"yarn\.gguf.*'yarn'.*rope\.scaling\.type"):
        read_config_file(yarn)
