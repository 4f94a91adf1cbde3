"""Token views: sample responses with a value per token, as `tokalign inspect` renders them.

A method's `view(ctx)` returns a `View` (sequences of tokens, each with named per-token values
and the one that colours it); `render_html` turns it into a self-contained page. `ViewContext`
gives a view what it needs from the run directory: the config, the tokenizer, model loading.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig


@dataclass
class TokenSeq:
    """One response: its tokens and per-token values; `color` names the value that colours it."""

    label: str
    tokens: list[str]
    values: dict[str, list[float]]
    color: str
    starts: list[bool] | None = None  # a macro action starts at this token
    kept: list[bool] | None = None  # the token kept its loss weight
    note: str = ""
    dropped: bool = False  # the whole sample was left out of the update
    prompt: str = ""  # what the response answers (shown above it)


@dataclass
class View:
    title: str
    legend: str
    seqs: list[TokenSeq] = field(default_factory=list)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
.seq{margin:1em 0;padding:.5em;border:1px solid #ddd;border-radius:4px}
.label{font-weight:600;font-size:.9em;color:#333}.note{font-size:.85em;color:#555}
.tok{font-family:ui-monospace,monospace;white-space:pre-wrap;padding:1px 0;border-radius:2px}
.start{border-left:2px solid #222;margin-left:1px}.unkept{opacity:.35;text-decoration:line-through}
.dropped{opacity:.45}
.key{display:flex;flex-wrap:wrap;align-items:center;gap:.5em;font-size:.9em;margin:.3em 0}.key span,.key b{white-space:nowrap}
.bar{display:inline-block;width:12em;height:1em;border:1px solid #999;
background:linear-gradient(to right,rgba(210,40,40,.8),rgba(255,255,255,0),rgba(0,150,60,.8))}
.prompt{font-size:.9em;background:#f4f4f8;padding:.3em .5em;margin:.3em 0;white-space:pre-wrap}
.cell{display:inline-flex;flex-direction:column;align-items:center;margin:0 4px 4px 0;vertical-align:top}
.vals{font-family:ui-monospace,monospace;font-size:.62em;color:#444;line-height:1.15;text-align:center}"""


def _shown(token: str) -> str:
    return token.replace("\n", "⏎\n") if token else "∅"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _key(name: str, scale: float) -> str:
    """The colour key of one value: what red, white and green mean, and the value of full colour."""
    e = html.escape(name)
    return (
        f"<div class='key'><b>Colour key</b> ({e}): <span>red: {e} = −{_fmt(scale)}</span><span class='bar'></span>"
        f"<span>green: {e} = +{_fmt(scale)}</span><span class='note'>(white: 0; each token's values are printed "
        "under it)</span></div>"
    )


def render_html(view: View) -> str:
    """A self-contained page: a colour key, each response under its prompt, each token coloured by one
    value (diverging: green > 0, red < 0, scaled per value name) with all its values printed under it."""
    scale: dict[str, float] = {}
    for s in view.seqs:
        vals = [abs(v) for v in s.values.get(s.color, []) if math.isfinite(v)]
        scale[s.color] = max(scale.get(s.color, 0.0), max(vals, default=0.0))
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(view.title)}</title>",
        f"<style>{_CSS}</style></head><body><h2>{html.escape(view.title)}</h2>",
        f"<p class='note'>{html.escape(view.legend)}</p>",
        *(_key(name, v) for name, v in scale.items()),
    ]
    shown_prompt = None
    for s in view.seqs:
        if s.prompt and s.prompt != shown_prompt:
            out.append(f"<div class='prompt'><b>prompt</b>  {html.escape(s.prompt)}</div>")
            shown_prompt = s.prompt
        out.append(f"<div class='seq{' dropped' if s.dropped else ''}'><div class='label'>{html.escape(s.label)}</div>")
        if s.note:
            out.append(f"<div class='note'>{html.escape(s.note)}</div>")
        out.append("<div>")
        for i, tok in enumerate(s.tokens):
            v = s.values[s.color][i]
            a = 0.0 if not scale.get(s.color) or not math.isfinite(v) else min(1.0, abs(v) / scale[s.color]) * 0.8
            rgb = "0,150,60" if v >= 0 else "210,40,40"
            cls = (
                "tok"
                + (" start" if s.starts and s.starts[i] else "")
                + (" unkept" if s.kept is not None and not s.kept[i] else "")
            )
            tip = " ".join(f"{k}={_fmt(vals[i])}" for k, vals in s.values.items())
            data = " ".join(f"data-{html.escape(k)}='{_fmt(vals[i])}'" for k, vals in s.values.items())
            shown = "<br>".join(f"{html.escape(k)} {_fmt(vals[i])}" for k, vals in s.values.items())
            out.append(
                f"<span class='cell'><span class='{cls}' style='background:rgba({rgb},{a:.3f})' "
                f"title='{html.escape(tip)}' {data}>{html.escape(_shown(tok))}</span>"
                f"<span class='vals'>{shown}</span></span>"
            )
        out.append("</div></div>")
    out.append("</body></html>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# What a view reads


@dataclass
class ViewContext:
    """A finished run as a view sees it; `progress` is where in training to show a schedule (0-1)."""

    cfg: DictConfig
    run_dir: Path
    tokenizer: Any
    num_examples: int = 4
    progress: float = 1.0

    def load(self, path: str | Path):
        from tokalign.modeling.models import load_causal_lm

        return load_causal_lm(str(path), dtype="float32", trust_remote_code=self.cfg.model.trust_remote_code).eval()

    def policy(self):
        return self.load(self.run_dir / "model")

    def reference(self):
        from tokalign.modeling.models import resolve_model

        return self.load(resolve_model(self.cfg.model, self.cfg.cache_dir))

    def eval_rows(self, kind: str):
        """The first `num_examples` evaluation rows of the run's dataset."""
        from tokalign.data.loading import load_split

        data = load_split(self.cfg.dataset, kind, "eval")
        return data.select(range(min(self.num_examples, len(data))))


def response_ids(tokenizer, prompt: Any, response: str) -> tuple[list[int], list[int]]:
    from tokalign.data.chat import as_messages

    text = tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, ids


@torch.no_grad()
def response_logps(
    model, prompt_ids: list[int], ids: list[int], temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and full-vocabulary entropies of `ids` after `prompt_ids`, (T,) each."""
    x = torch.tensor([prompt_ids + ids])
    logits = model(input_ids=x).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    logp = logits.log_softmax(-1)
    tokens = torch.tensor(ids)
    return logp.gather(-1, tokens[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


def pieces(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def first_response(x: Any) -> str:
    return x if isinstance(x, str) else x[-1]["content"]
