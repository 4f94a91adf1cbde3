"""PPO's token view: one rollout of the trained policy, its macro actions and their advantages.

A method built on the loop reuses it with its own frozen models, token rewards and extra
per-token values (RTO: the DPO model's dense reward).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tokalign import rewards
from tokalign.bases.contract import DataKind
from tokalign.bases.ppo.advantages import advantages_and_returns, segments
from tokalign.bases.ppo.config import Config, reward_spec, settings
from tokalign.bases.ppo.models import load_critic
from tokalign.bases.ppo.rollout import sample
from tokalign.bases.ppo.scoring import Scored, TokenRewards, kl_score_rewards, score
from tokalign.bases.views import TokenSeq, View, ViewContext, pieces
from tokalign.data.chat import prompt_text
from tokalign.modeling.lora import is_model_dir

# extra_values(scored, mask, m) -> {name: (B, R) tensor} shown beside advantage, reward and value
ExtraValues = Callable[[Scored, torch.Tensor, object], dict[str, torch.Tensor]]


def macro_view(
    ctx: ViewContext,
    *,
    schema: type = Config,
    frozen: dict | None = None,
    token_rewards: TokenRewards = kl_score_rewards,
    extra_values: ExtraValues | None = None,
    color: str = "advantage",
    legend: str = "",
) -> View:
    cfg = ctx.cfg
    m = settings(cfg.method, schema)
    data = ctx.eval_rows(DataKind.prompt)
    batch = {k: list(data[k]) for k in data.column_names}
    policy, ref = ctx.policy(), ctx.reference()
    if is_model_dir(ctx.run_dir / "critic"):
        critic = load_critic(
            str(ctx.run_dir / "critic"), "float32", ctx.tokenizer.pad_token_id, cfg.model.trust_remote_code
        ).eval()
        critic_note = "saved critic"
    else:

        def critic(ids, attn, pos, num_response):
            return torch.zeros(len(ids), num_response)

        critic_note = "no saved critic: values 0"
    reward_fn = rewards.reward_function(reward_spec(cfg.method), cfg.dataset, "method.reward")
    torch.manual_seed(cfg.seed)
    input_ids, attention_mask, responses, mask = sample(
        policy, ctx.tokenizer, batch["prompt"], m, max_prompt_len=cfg.trainer.max_length, device=torch.device("cpu")
    )
    s = score(
        policy,
        {"ref": ref, **(frozen or {})},
        critic,
        reward_fn,
        ctx.tokenizer,
        batch,
        input_ids,
        attention_mask,
        responses,
        mask,
        m,
        forward_batch=8,
    )
    token_rewards, _ = token_rewards(s, mask, m)
    segment_ids = segments(m, mask, s.logps["ref"], responses, ctx.tokenizer, cfg.seed)
    advantages, _ = advantages_and_returns(m, token_rewards, s.values, mask, segment_ids)
    extra = extra_values(s, mask, m) if extra_values is not None else {}
    legend = legend or (
        f"Colour: advantage Â of each token's macro action (termination={m.termination}, n={m.n}); a "
        "bar marks where a macro action starts; reward r_t (KL terms + the score on the last token)."
    )
    view = View(f"{cfg.method.name} · {cfg.run_name}", f"{legend} Value V_t: {critic_note}.")
    for i in range(len(responses)):
        valid = mask[i].bool()
        seg = segment_ids[i][valid].tolist()
        view.seqs.append(
            TokenSeq(
                f"example {i + 1}",
                pieces(ctx.tokenizer, responses[i][valid].tolist()),
                {
                    "advantage": advantages[i][valid].tolist(),
                    "reward": token_rewards[i][valid].tolist(),
                    "value": s.values[i][valid].tolist(),
                    "segment": [float(x) for x in seg],
                    **{name: values[i][valid].tolist() for name, values in extra.items()},
                },
                color,
                starts=[j == 0 or seg[j] != seg[j - 1] for j in range(len(seg))],
                note=f"score {s.scores[i].item():.4g} · {max(seg) + 1 if seg else 0} macro actions for {len(seg)} tokens",
                prompt=prompt_text(batch["prompt"][i]),
            )
        )
    return view
