"""Tokenizers for the front end: a model directory's or a GGUF file's tokenizer, chat templates, the demo's char one.

A model directory's tokenizer is loaded with transformers' AutoTokenizer when transformers is installed,
else straight from ``tokenizer.json`` with the ``tokenizers`` library; a ``.gguf`` file's is built from its
metadata (loaders.gguf_tokenizer). Either way the front end sees ``encode(text) -> ids`` (special tokens
such as BOS added as the tokenizer specifies), ``decode(ids)`` (special tokens dropped), ``eos_token_id``,
``bos_token_id``, ``chat_template`` and ``apply_chat_template(messages)``.
"""
from __future__ import annotations

import json
import os
import string
from typing import Any, Dict, List, Optional, Sequence

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3: pad, bos, eos, unk
# The demo vocabulary: the specials, then every printable ASCII character, so any id decodes to visible text.
DEMO_CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]


class TokenizerError(ValueError):
    """A tokenizer file that can't be read, or a chat that can't be rendered."""


class Tokenizer:
    """Uniform face over a transformers tokenizer or a raw ``tokenizers.Tokenizer``."""

    def __init__(self, backend, eos_token_id: Optional[int], bos_token_id: Optional[int] = None, hf: bool = False,
                 chat_template: Optional[str] = None, special_tokens: Optional[Dict[str, Any]] = None):
        self.backend, self.eos_token_id, self.bos_token_id, self._hf = backend, eos_token_id, bos_token_id, hf
        if chat_template is None and hf:
            chat_template = getattr(backend, "chat_template", None)
        self.chat_template: Optional[str] = chat_template if isinstance(chat_template, str) else None
        if special_tokens is None and hf:
            special_tokens = {k: getattr(backend, k, None) for k in ("bos_token", "eos_token", "unk_token",
                                                                     "pad_token")}
            special_tokens["additional_special_tokens"] = list(getattr(backend, "all_special_tokens", []))
        self.special_tokens: Dict[str, Any] = dict(special_tokens or {})

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        if self._hf:
            return list(self.backend(text, add_special_tokens=add_special_tokens)["input_ids"])
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: List[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.backend) if self._hf else self.backend.get_vocab_size()

    def apply_chat_template(self, messages: Sequence[Dict[str, str]], add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """The prompt text of a chat (``[{"role": ..., "content": ...}, ...]``) rendered with the model's chat
        template (jinja2, sandboxed, as transformers renders it). Encode it with ``encode(text,
        add_special_tokens=False)``: the template writes the special tokens itself."""
        from infinilm_torch.loaders.chat_template import render

        if self.chat_template is None:
            raise TokenizerError("this tokenizer has no chat template (none in tokenizer_config.json or the GGUF)")
        return render(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                      special_tokens=self.special_tokens, **extra)


def _config_token_id(tok_config: dict, raw, key: str) -> Optional[int]:
    token = tok_config.get(key)
    if isinstance(token, dict):
        token = token.get("content")
    return raw.token_to_id(token) if token else None


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from e


def load_gguf_tokenizer(path) -> Tokenizer:
    """The tokenizer a .gguf file's metadata describes, built with the ``tokenizers`` library."""
    from infinilm_torch.loaders import gguf, gguf_tokenizer

    raw, info = gguf_tokenizer.build(gguf.tokenizer_metadata(path), src=os.path.abspath(os.fspath(path)))
    specials = {k: info[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    specials["additional_special_tokens"] = info["special_tokens"]
    return Tokenizer(raw, info["eos_token_id"], info["bos_token_id"], chat_template=info["chat_template"],
                     special_tokens=specials)


def _check_json_files(model_dir: str) -> None:
    """A broken tokenizer.json / tokenizer_config.json fails with its path (transformers' own error has none)."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and not isinstance(_read_json(path), dict):
            raise TokenizerError(f"{path}: expected a JSON object")


def load_tokenizer(model_path) -> Optional[Tokenizer]:
    """The tokenizer of a model directory or a .gguf file, or None when a directory has none."""
    if model_path is None:
        return None
    model_dir = os.fspath(model_path)
    if model_dir.lower().endswith(".gguf") and not os.path.isdir(model_dir):
        return load_gguf_tokenizer(model_dir)
    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
    if not os.path.isdir(model_dir) or not any(os.path.isfile(os.path.join(model_dir, n)) for n in names):
        return None
    _check_json_files(model_dir)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        AutoTokenizer = None
    if AutoTokenizer is not None:
        tok = AutoTokenizer.from_pretrained(model_dir)
        return Tokenizer(tok, tok.eos_token_id, tok.bos_token_id, hf=True)
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise RuntimeError(f"{model_dir} has no tokenizer.json; install transformers to load its tokenizer")
    from tokenizers import Tokenizer as RawTokenizer

    try:
        raw = RawTokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from e
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    cfg = _read_json(cfg_path) if os.path.isfile(cfg_path) else {}
    template = cfg.get("chat_template")
    specials = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in cfg.items()
                if k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    return Tokenizer(raw, _config_token_id(cfg, raw, "eos_token"), _config_token_id(cfg, raw, "bos_token"),
                     chat_template=template if isinstance(template, str) else None, special_tokens=specials)


def save_char_tokenizer(model_dir) -> int:
    """Write a character-level tokenizer (specials + printable ASCII, BOS prepended) to ``model_dir``.

    Built with the ``tokenizers`` library and saved as tokenizer.json + tokenizer_config.json, so
    transformers' AutoTokenizer loads it too. Returns the vocabulary size.
    """
    from tokenizers import Regex, Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + DEMO_CHARS)}
    raw = RawTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    raw.add_special_tokens(SPECIAL_TOKENS)
    os.makedirs(model_dir, exist_ok=True)
    raw.save(os.path.join(model_dir, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    return len(vocab)
