"""`model.chat_template`: a chat template that replaces the tokenizer's own, for training, sampling and
evaluation alike.

The value is a Jinja template (it holds `{{` or `{%`), a named one (`chatml`), or a path to a
template file (`.jinja`, `.j2`). `check_source` reads and parses it at validation, before
anything is loaded; `apply` sets it on the run's tokenizer before any row is formatted, after
rendering a sample conversation through it, so that a template which fails on the tokenizer's
tokens or drops a message is one line at start rather than silently wrong data. The tokenizer
saved in `model/` carries it, so evaluation and `inspect` format as training did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokalign.errors import ConfigError

KNOB = "model.chat_template"
SAMPLE = [
    {"role": "user", "content": "tokalign sample question"},
    {"role": "assistant", "content": "tokalign sample answer"},
]


def named() -> dict[str, str]:
    from tokalign.modeling.models import CHATML_TEMPLATE

    return {"chatml": CHATML_TEMPLATE}


def source_text(value: str) -> str:
    """The template's text: the value itself, a named template, or the file's contents."""
    if "{{" in value or "{%" in value:
        return value
    if value in named():
        return named()[value]
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{KNOB}={value} is neither a Jinja template (with {{{{ or {{%), a named one "
            f"({', '.join(named())}) nor a template file"
        )
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{KNOB}={value}: cannot read it ({err})") from None


def check_source(value: str | None) -> None:
    """The template reads and parses (no tokenizer needed)."""
    if value is None:
        return
    import jinja2

    try:
        jinja2.Environment().parse(source_text(str(value)))
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(f"{KNOB}: the template does not parse: {err.message} (line {err.lineno})") from None


def apply(tokenizer: Any, value: str | None) -> None:
    """Set the template on `tokenizer` once a sample conversation renders through it with every message."""
    if value is None:
        return
    template = source_text(str(value))
    try:
        full = tokenizer.apply_chat_template(SAMPLE, chat_template=template, tokenize=False)
        prompt = tokenizer.apply_chat_template(
            SAMPLE[:1], chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except Exception as err:  # jinja2 and the template's own raise_exception(): the template's message
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{KNOB} fails to render a sample user/assistant conversation: {first}") from None
    missing = [m["role"] for m in SAMPLE if m["content"] not in full]
    if missing or SAMPLE[0]["content"] not in prompt:
        raise ConfigError(
            f"{KNOB} drops the {' and '.join(missing) or 'user'} message of a sample conversation: "
            "a chat template must write every message's content"
        )
    tokenizer.chat_template = template
