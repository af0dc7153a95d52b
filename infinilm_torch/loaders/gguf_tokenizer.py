"""A ``tokenizers.Tokenizer`` built from a GGUF file's ``tokenizer.ggml.*`` metadata (no tokenizer.json needed).

Two vocabulary kinds, as llama.cpp names them: ``gpt2`` (byte-level BPE with merges: GPT-2, SmolLM, Llama 3,
Qwen2) and ``llama`` (sentencepiece BPE with byte fallback: Llama 2, Mistral; merges from the file or
rebuilt from the token scores). Tokens marked CONTROL become special tokens, USER_DEFINED ones added tokens.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types
# Pre-tokenizer splits by ``tokenizer.ggml.pre``; others use GPT-2's own regex (ByteLevel's default).
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {"llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3,
                        "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2}


class GGUFTokenizerError(ValueError):
    """GGUF tokenizer metadata that is missing, inconsistent or of a kind we can't build."""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE spells every token with these)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merges(meta: Dict[str, Any], vocab: Dict[str, int], src: str) -> List[Tuple[str, str]]:
    merges = meta.get("ggml.merges")
    if merges is not None:
        out = []
        for m in merges:
            left, sep, right = m.partition(" ")
            if not sep:
                raise GGUFTokenizerError(f"{src}: tokenizer.ggml.merges entry {m!r} is not 'left right'")
            out.append((left, right))
        return out
    scores = meta.get("ggml.scores")
    if scores is None:
        raise GGUFTokenizerError(f"{src}: the vocabulary has neither tokenizer.ggml.merges nor tokenizer.ggml.scores")
    # Sentencepiece BPE: every split of a token into two vocabulary pieces is a merge, ranked by the score of
    # the merged token (best first), ties by the pieces' lengths and ids.
    ranked = []
    for token, score in zip(meta["ggml.tokens"], scores):
        local = [(token[:i], token[i:], score) for i in range(1, len(token))
                 if token[:i] in vocab and token[i:] in vocab]
        ranked.extend(sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]])))
    ranked.sort(key=lambda x: (x[2], len(x[0]), len(x[1])), reverse=True)
    return [(a, b) for a, b, _ in ranked]


def build(meta: Dict[str, Any], src: str):
    """(tokenizers.Tokenizer, info) from the ``tokenizer.*`` metadata (keys without the prefix).

    info: bos/eos/unk/pad token ids and strings, add_bos/add_eos, chat_template, special token strings.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("ggml.model")
    tokens = meta.get("ggml.tokens")
    if tokens is None:
        raise GGUFTokenizerError(f"{src}: no tokenizer.ggml.tokens: the file carries no tokenizer")
    types = list(meta.get("ggml.token_type") or [])
    if types and len(types) != len(tokens):
        raise GGUFTokenizerError(f"{src}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    if kind == "gpt2":
        alphabet = set(bytes_to_unicode().values())
        spell = bytes_to_unicode()
        vocab = {t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")): i
                 for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(meta, vocab, src), fuse_unk=False, byte_fallback=False))
        split = PRE_TOKENIZER_SPLITS.get(meta.get("ggml.pre"))
        if split is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        # A control token spelled outside the byte alphabet is a conversion mislabel: it can't be a real token.
        specials_ok = lambda t: set(t) <= alphabet  # noqa: E731
        add_bos_default = False
    elif kind == "llama":
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(meta, vocab, src), fuse_unk=True, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
        specials_ok = lambda t: True  # noqa: E731
        add_bos_default = True  # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise
    else:
        raise GGUFTokenizerError(f"{src}: tokenizer kind {kind!r} (tokenizer.ggml.model) is not supported; "
                                 f"supported: gpt2, llama")
    special = [t for t, ty in zip(tokens, types) if ty == CONTROL and specials_ok(t)]
    if special:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    user = [t for t, ty in zip(tokens, types) if ty == USER_DEFINED and t in vocab]
    if user:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    def token_id(name: str) -> Optional[int]:
        value = meta.get(f"ggml.{name}_token_id")
        if value is None:
            return None
        if not 0 <= int(value) < len(tokens):
            raise GGUFTokenizerError(f"{src}: tokenizer.ggml.{name}_token_id {value} is out of range [0, {len(tokens)})")
        return int(value)

    info = {"bos_token_id": token_id("bos"), "eos_token_id": token_id("eos"), "unk_token_id": token_id("unknown"),
            "pad_token_id": token_id("padding"), "chat_template": meta.get("chat_template"),
            "add_bos_token": bool(meta.get("ggml.add_bos_token", add_bos_default)),
            "add_eos_token": bool(meta.get("ggml.add_eos_token", False)), "special_tokens": special}
    for key in ("bos", "eos", "unk", "pad"):
        i = info[f"{key}_token_id"]
        info[f"{key}_token"] = tokens[i] if i is not None else None
    single, ids = "$A", []
    if info["add_bos_token"] and info["bos_token_id"] is not None:
        single = f"{info['bos_token']} {single}"
        ids.append((info["bos_token"], info["bos_token_id"]))
    if info["add_eos_token"] and info["eos_token_id"] is not None:
        single = f"{single} {info['eos_token']}"
        ids.append((info["eos_token"], info["eos_token_id"]))
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=list(dict.fromkeys(ids)))
    return tok, info
