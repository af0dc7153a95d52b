"""Chat templates: render a list of {"role", "content"} messages to prompt text with jinja2, as transformers does."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Dict, Optional, Sequence


class ChatTemplateError(ValueError):
    """Messages that aren't a list of {"role": str, "content": str}, or a template that fails to render."""


def _raise(message: str):
    raise ChatTemplateError(f"chat template: {message}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(template: str):
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise ImportError("rendering a chat template needs jinja2: pip install jinja2") from e
    # The same environment transformers uses, so templates render to the same text.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template does not compile: {e}") from e


def check_messages(messages: Any) -> list:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ChatTemplateError(f"messages[{i}] must be a dict with a string 'role' and a 'content', got {m!r:.80}")
    return [dict(m) for m in messages]


def render(template: str, messages: Sequence[Dict[str, Any]], add_generation_prompt: bool = True,
           special_tokens: Optional[Dict[str, Any]] = None, **extra: Any) -> str:
    """The prompt text; ``special_tokens`` (bos_token, eos_token, ...) and ``extra`` are template variables."""
    import jinja2

    compiled = _compile(template)
    variables = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    variables.update(extra)
    try:
        return compiled.render(messages=check_messages(messages), add_generation_prompt=add_generation_prompt,
                               **variables)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed to render: {e}") from e
