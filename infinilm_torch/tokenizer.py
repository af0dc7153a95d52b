"""Tokenizers for the front end: load a model directory's tokenizer, and build the demo's character tokenizer.

A model directory's tokenizer is loaded with transformers' AutoTokenizer when transformers is installed,
else straight from ``tokenizer.json`` with the ``tokenizers`` library. Either way the front end sees
``encode(text) -> ids`` (special tokens such as BOS added as the tokenizer specifies), ``decode(ids)``
(special tokens dropped) and ``eos_token_id``.
"""
from __future__ import annotations

import json
import os
import string
from typing import List, Optional

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3: pad, bos, eos, unk
# The demo vocabulary: the specials, then every printable ASCII character, so any id decodes to visible text.
DEMO_CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]


class Tokenizer:
    """Uniform face over a transformers tokenizer or a raw ``tokenizers.Tokenizer``."""

    def __init__(self, backend, eos_token_id: Optional[int], bos_token_id: Optional[int] = None, hf: bool = False):
        self.backend, self.eos_token_id, self.bos_token_id, self._hf = backend, eos_token_id, bos_token_id, hf

    def encode(self, text: str) -> List[int]:
        if self._hf:
            return list(self.backend(text)["input_ids"])
        return list(self.backend.encode(text).ids)

    def decode(self, ids: List[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self.backend) if self._hf else self.backend.get_vocab_size()


def _config_token_id(tok_config: dict, raw, key: str) -> Optional[int]:
    token = tok_config.get(key)
    if isinstance(token, dict):
        token = token.get("content")
    return raw.token_to_id(token) if token else None


def load_tokenizer(model_dir) -> Optional[Tokenizer]:
    """The tokenizer stored in ``model_dir``, or None when the directory has none."""
    if model_dir is None:
        return None
    model_dir = os.fspath(model_dir)
    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
    if not any(os.path.isfile(os.path.join(model_dir, n)) for n in names):
        return None
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

    raw = RawTokenizer.from_file(path)
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    cfg = json.load(open(cfg_path, encoding="utf-8")) if os.path.isfile(cfg_path) else {}
    return Tokenizer(raw, _config_token_id(cfg, raw, "eos_token"), _config_token_id(cfg, raw, "bos_token"))


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
