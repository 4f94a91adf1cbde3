"""Token-level views of a finished run: where each method put the credit (`tokalign inspect`).

Every token of a few sample responses is coloured by the quantity the method trained on,
recomputed from the run's models with the public `tokalign.losses` functions:

- tgdpo: guidance token reward r̂_t = β_g (log π_g − log π_ref)(y_t) and weight f_t on eval
  pairs (chosen f = 1 + α r̂, rejected f = 1 − α r̂), with the pair's `tgdpo_loss`;
- dpo: the trained policy's token reward β (log π_θ − log π_ref)(y_t) on eval pairs;
- ppo / ma_ppo: a rollout of the trained policy with the saved critic (`<run>/critic`, else
  zero values): macro-action boundaries (`segment_macro_actions`) and advantages (`macro_gae`);
- grpo / d3s_grpo / pods: one group of G samples per prompt: group advantages A, the policy's
  full-vocabulary entropy H, |A|·H, the kept samples (`max_variance_subset`) and kept tokens
  (`d3s_token_mask`) at training progress `progress` of the (N, K) schedule.

The page is self-contained HTML (`<run_dir>/inspect.html`); each token's values are in its
tooltip and `data-*` attributes. A run with a W&B run also gets it logged as `wandb.Html`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


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
.dropped{opacity:.45}"""


def _shown(token: str) -> str:
    return token.replace("\n", "⏎\n") if token else "∅"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def render_html(view: View) -> str:
    """A self-contained page; colour is diverging (green > 0, red < 0), scaled per value name."""
    scale: dict[str, float] = {}
    for s in view.seqs:
        vals = [abs(v) for v in s.values.get(s.color, []) if math.isfinite(v)]
        scale[s.color] = max(scale.get(s.color, 0.0), max(vals, default=0.0))
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(view.title)}</title>",
           f"<style>{_CSS}</style></head><body><h2>{html.escape(view.title)}</h2>",
           f"<p class='note'>{html.escape(view.legend)}</p>"]
    for s in view.seqs:
        out.append(f"<div class='seq{' dropped' if s.dropped else ''}'><div class='label'>{html.escape(s.label)}</div>")
        if s.note:
            out.append(f"<div class='note'>{html.escape(s.note)}</div>")
        out.append("<div>")
        for i, tok in enumerate(s.tokens):
            v = s.values[s.color][i]
            a = 0.0 if not scale.get(s.color) or not math.isfinite(v) else min(1.0, abs(v) / scale[s.color]) * 0.8
            rgb = "0,150,60" if v >= 0 else "210,40,40"
            cls = "tok" + (" start" if s.starts and s.starts[i] else "") + (" unkept" if s.kept is not None and not s.kept[i] else "")
            tip = " ".join(f"{k}={_fmt(vals[i])}" for k, vals in s.values.items())
            data = " ".join(f"data-{html.escape(k)}='{_fmt(vals[i])}'" for k, vals in s.values.items())
            out.append(f"<span class='{cls}' style='background:rgba({rgb},{a:.3f})' title='{html.escape(tip)}' {data}>"
                       f"{html.escape(_shown(tok))}</span>")
        out.append("</div></div>")
    out.append("</body></html>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Models and per-token quantities


def _response_ids(tokenizer, prompt: Any, response: str) -> tuple[list[int], list[int]]:
    from tokalign.generation import as_messages

    text = tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, ids


@torch.no_grad()
def response_logps(model, prompt_ids: list[int], ids: list[int], temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and full-vocabulary entropies of `ids` after `prompt_ids`, (T,) each."""
    x = torch.tensor([prompt_ids + ids])
    logits = model(input_ids=x).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    logp = logits.log_softmax(-1)
    tokens = torch.tensor(ids)
    return logp.gather(-1, tokens[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def _first_response(x: Any) -> str:
    return x if isinstance(x, str) else x[-1]["content"]


def _guidance_path(cfg: DictConfig) -> str:
    from tokalign.guidance import guidance_run_config

    if cfg.method.guidance_model:
        return str(cfg.method.guidance_model)
    _, key = guidance_run_config(cfg)
    path = Path(cfg.cache_dir).expanduser() / "guidance" / f"dpo-{key}" / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"the run's guidance model is not in the cache ({path}); pass its path as method.guidance_model")
    return str(path)


def preference_view(cfg, run_dir: Path, tokenizer, load, num_examples: int) -> View:
    """DPO / TGDPO on eval pairs: token rewards, and for TGDPO the guidance reward and weights f."""
    from tokalign.data.loading import load_split
    from tokalign.losses import tgdpo_loss
    from tokalign.models import resolve_model

    m = cfg.method
    tg = m.name == "tgdpo"
    data = load_split(cfg.dataset, "preference", m.name, "eval")
    data = data.select(range(min(num_examples, len(data))))
    policy, ref = load(run_dir / "model"), load(resolve_model(cfg.model, cfg.cache_dir))
    guide = load(_guidance_path(cfg)) if tg else None
    beta_g = m.guidance_beta if tg and m.guidance_beta is not None else m.beta
    view = View(
        f"{m.name} · {cfg.run_name}",
        "Colour: guidance token reward r̂ = β_g (log π_g − log π_ref); f = token weight in the loss "
        "(chosen 1 + α r̂, rejected 1 − α r̂); delta = β (log π_θ − log π_ref) of the trained policy."
        if tg else "Colour: delta = β (log π_θ − log π_ref), the trained policy's token reward.",
    )
    for i, ex in enumerate(data):
        sides = {}
        for side in ("chosen", "rejected"):
            prompt_ids, ids = _response_ids(tokenizer, ex["prompt"], _first_response(ex[side]))
            sides[side] = (ids, *(response_logps(mdl, prompt_ids, ids)[0] for mdl in (policy, ref, guide) if mdl is not None))
        note = ""
        if tg:
            (cid, cp, cr, cg), (rid, rp, rr, rg) = sides["chosen"], sides["rejected"]
            pad = lambda t, n: torch.nn.functional.pad(t, (0, n - len(t)))[None]  # noqa: E731
            T = max(len(cid), len(rid))
            cm, rm = pad(torch.ones(len(cid)), T), pad(torch.ones(len(rid)), T)
            loss, metrics = tgdpo_loss(pad(cp, T), pad(rp, T), pad(cr, T), pad(rr, T), pad(cg, T), pad(rg, T), cm, rm,
                                       beta=m.beta, alpha=m.alpha, guidance_beta=m.guidance_beta, f_min=m.f_min)
            note = f"pair loss {loss.item():.4f} · min f {metrics['f/min'].item():.3g} · mean f {metrics['f/mean'].item():.3g}"
        for side, sign in (("chosen", 1.0), ("rejected", -1.0)):
            ids, lp, lr, *lg = sides[side]
            values = {"delta": (m.beta * (lp - lr)).tolist()}
            if tg:
                r_hat = beta_g * (lg[0] - lr)
                f = 1 + sign * m.alpha * r_hat
                values = {"r_hat": r_hat.tolist(), "f": (f if m.f_min is None else f.clamp(min=m.f_min)).tolist(), **values}
            view.seqs.append(TokenSeq(f"example {i + 1} · {side}", _pieces(tokenizer, ids), values,
                                      "r_hat" if tg else "delta", note=note if side == "chosen" else ""))
    return view


def ppo_view(cfg, run_dir: Path, tokenizer, load, num_examples: int) -> View:
    """PPO / MA-PPO: one rollout of the trained policy; macro actions and their advantages."""
    from tokalign.data.loading import load_split
    from tokalign.methods import ppo
    from tokalign.trainers import ppo as ppo_loop
    from tokalign.models import resolve_model

    m = ppo.settings(cfg.method)
    data = load_split(cfg.dataset, "prompt", cfg.method.name, "eval")
    data = data.select(range(min(num_examples, len(data))))
    batch = {k: list(data[k]) for k in data.column_names}
    policy, ref = load(run_dir / "model"), load(resolve_model(cfg.model, cfg.cache_dir))
    if (run_dir / "critic" / "config.json").exists():
        critic, critic_note = ppo_loop.load_critic(str(run_dir / "critic"), "float32", tokenizer.pad_token_id,
                                              cfg.model.trust_remote_code).eval(), "saved critic"
    else:
        critic = lambda ids, attn, pos, num_response: torch.zeros(len(ids), num_response)  # noqa: E731
        critic_note = "no saved critic: values 0"
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        r = ppo_loop.rollout(policy, ref, critic, ppo_loop.reward_function(cfg, m), tokenizer, batch, m, forward_batch=8,
                        seed=cfg.seed, max_prompt_len=cfg.trainer.max_length, device=torch.device("cpu"))
    view = View(f"{cfg.method.name} · {cfg.run_name}",
                f"Colour: advantage Â of each token's macro action (termination={m.termination}, n={m.n}); a bar marks "
                f"where a macro action starts; reward r_t (KL terms + the score on the last token), value V_t ({critic_note}).")
    for i in range(len(r.responses)):
        valid = r.mask[i].bool()
        seg = r.segment_ids[i][valid].tolist()
        view.seqs.append(TokenSeq(
            f"example {i + 1}", _pieces(tokenizer, r.responses[i][valid].tolist()),
            {"advantage": r.advantages[i][valid].tolist(), "reward": r.rewards[i][valid].tolist(),
             "value": r.old_values[i][valid].tolist(), "segment": [float(s) for s in seg]},
            "advantage", starts=[j == 0 or seg[j] != seg[j - 1] for j in range(len(seg))],
            note=f"score {r.scores[i].item():.4g} · {max(seg) + 1 if seg else 0} macro actions for {len(seg)} tokens",
        ))
    return view


def grpo_view(cfg, run_dir: Path, tokenizer, load, num_examples: int, progress: float) -> View:
    """GRPO / D³S / PODS: a group per prompt; A, H, |A|·H and what D³S keeps at `progress`."""
    from tokalign.data.loading import load_split
    from tokalign.generation import generate
    from tokalign.losses import d3s_schedule, d3s_token_mask, max_variance_subset
    from tokalign.methods.grpo import resolve_rewards

    m = cfg.method
    d3s = m.name in ("d3s_grpo", "pods")
    data = load_split(cfg.dataset, "prompt", m.name, "eval")
    data = data.select(range(min(num_examples, len(data))))
    policy = load(run_dir / "model")
    funcs, weights = resolve_rewards(SimpleNamespace(cfg=cfg))
    G = m.num_generations
    if d3s:
        n, k = (d3s_schedule(progress, n_init=m.n_init, n_final=m.n_final, k_init=m.k_init, k_final=m.k_final, group_size=G)
                if m.schedule == "linear" else (min(max(m.n_init, 2), G), m.k_init))
    view = View(f"{m.name} · {cfg.run_name}",
                "Colour: |A|·H (group advantage × policy entropy); " + (
                    f"D³S at progress {progress:g}: N={n} of G={G} samples kept (max Var(A)), top K={k:.3g} of their "
                    "tokens by |A|·H; struck-through tokens and faded samples get no gradient."
                    if d3s else "GRPO trains every token of every sample."))
    samples = generate(policy, tokenizer, list(data["prompt"]), max_new_tokens=m.max_completion_length,
                       temperature=m.temperature, top_p=m.top_p, num_samples=G, batch_size=8, seed=cfg.seed)
    for p_i, (ex, group) in enumerate(zip(data, samples)):
        columns = {c: [ex[c]] * G for c in data.column_names if c != "prompt"}
        rewards = sum(w * torch.tensor(f([ex["prompt"]] * G, group, **columns), dtype=torch.float32) for f, w in zip(funcs, weights))
        adv = rewards - rewards.mean()
        if m.scale_rewards != "none":
            adv = adv / (rewards.std() + 1e-4)
        rows = []
        for text in group:
            prompt_ids, ids = _response_ids(tokenizer, ex["prompt"], text)
            _, ent = response_logps(policy, prompt_ids, ids, m.temperature)
            rows.append((ids, ent))
        T = max(len(ids) for ids, _ in rows)
        mask = torch.zeros(G, T)
        ent = torch.zeros(G, T)
        for j, (ids, e) in enumerate(rows):
            mask[j, : len(ids)], ent[j, : len(ids)] = 1, e
        keep_rows = max_variance_subset(adv, n).tolist() if d3s else list(range(G))
        token_mask = torch.zeros(G, T, dtype=torch.bool)
        sel = torch.tensor(keep_rows)
        token_mask[sel] = d3s_token_mask(adv[sel], ent[sel], mask[sel], k, scope=m.token_scope) if d3s else mask[sel].bool()
        for j, (ids, e) in enumerate(rows):
            L = len(ids)
            view.seqs.append(TokenSeq(
                f"prompt {p_i + 1} · sample {j + 1}", _pieces(tokenizer, ids),
                {"A_H": (adv[j].abs() * e).tolist(), "A": [adv[j].item()] * L, "H": e.tolist()}, "A_H",
                kept=token_mask[j, :L].tolist(), dropped=j not in keep_rows,
                note=f"reward {rewards[j].item():.3g} · A {adv[j].item():.3g}" + ("" if j in keep_rows else " · dropped"),
            ))
    return view


def _log_to_wandb(cfg: DictConfig, run_dir: Path, page: str) -> None:
    id_file = run_dir / "wandb_id.txt"
    if cfg.logger.name != "wandb" or not id_file.exists():
        return
    import wandb

    from tokalign.tracking import wandb_mode

    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, id=id_file.read_text().strip(), resume="allow",
                     dir=str(run_dir), mode=wandb_mode(str(cfg.logger.mode)))
    run.log({"inspect/tokens": wandb.Html(page)})
    run.finish()


def inspect_run(run_dir: str | Path, out: str | Path | None = None, num_examples: int = 4,
                max_new_tokens: int | None = None, progress: float = 1.0) -> Path:
    """Build the view for a finished run, write the HTML page, log it to W&B when the run has one."""
    from tokalign.models import load_causal_lm, load_tokenizer

    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "resolved.yaml")
    if not (run_dir / "model" / "config.json").exists():
        raise FileNotFoundError(f"{run_dir / 'model'} holds no finished model (was the run completed?)")
    if max_new_tokens is not None:
        key = "max_completion_length" if "max_completion_length" in cfg.method else "max_new_tokens"
        if key in cfg.method:
            cfg.method[key] = int(max_new_tokens)
    tokenizer = load_tokenizer(str(run_dir / "model"), cfg.model.trust_remote_code)
    load = lambda path: load_causal_lm(str(path), dtype="float32", trust_remote_code=cfg.model.trust_remote_code).eval()  # noqa: E731
    name = cfg.method.name
    if name in ("dpo", "tgdpo"):
        view = preference_view(cfg, run_dir, tokenizer, load, num_examples)
    elif name in ("ppo", "ma_ppo"):
        view = ppo_view(cfg, run_dir, tokenizer, load, num_examples)
    elif name in ("grpo", "d3s_grpo", "pods"):
        view = grpo_view(cfg, run_dir, tokenizer, load, num_examples, progress)
    else:
        raise ValueError(f"tokalign inspect has no token view for method={name} (dpo, tgdpo, ppo, ma_ppo, grpo, d3s_grpo)")
    page = render_html(view)
    path = Path(out) if out else run_dir / "inspect.html"
    path.write_text(page)
    _log_to_wandb(cfg, run_dir, page)
    return path
