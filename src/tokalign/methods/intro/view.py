"""InTRO's token view: the trained policy's rationales, each token coloured by its correction factor.

For each of G samples per evaluation prompt, the sampled tokens' w = min(q/p, w_max), with p the
policy after the question and q the same model after the question with the gold answer appended
(x⊕y). Rationales whose reward is below `keep_reward` are faded: InTRO does not train them.
"""

from __future__ import annotations

import torch

from tokalign import rewards
from tokalign.bases.contract import DataKind
from tokalign.bases.views import TokenSeq, View, ViewContext, pieces, response_ids, response_logps
from tokalign.data.chat import prompt_text
from tokalign.methods.intro.trainer import posterior_prompt
from tokalign.modeling.generation import generate


def intro_view(ctx: ViewContext) -> View:
    m = ctx.cfg.method
    data = ctx.eval_rows(DataKind.prompt)
    policy = ctx.policy()
    funcs, weights = rewards.functions(rewards.configured(m, "method.reward"), ctx.cfg.dataset, "method.reward")
    G = m.num_generations
    view = View(
        f"{m.name} · {ctx.cfg.run_name}",
        f"Colour: w = min(q/p, {m.w_max:g}), the sampled token's correction factor (q: the model after "
        f"'{m.posterior_template}'); log_w = log q − log p. Faded samples have a wrong answer and are not trained.",
    )
    samples = generate(policy, ctx.tokenizer, list(data["prompt"]), max_new_tokens=m.max_completion_length,
                       temperature=m.temperature, top_p=m.top_p, num_samples=G, batch_size=8, seed=ctx.cfg.seed)  # fmt: skip
    for p_i, (ex, group) in enumerate(zip(data, samples)):
        columns = {c: [ex[c]] * G for c in data.column_names if c != "prompt"}
        scores = sum(
            w * torch.tensor(f([ex["prompt"]] * G, group, **columns), dtype=torch.float32)
            for f, w in zip(funcs, weights)
        )
        hinted = posterior_prompt(ex["prompt"], str(ex[m.answer_column]), m.posterior_template)
        for j, text in enumerate(group):
            prompt_ids, ids = response_ids(ctx.tokenizer, ex["prompt"], text)
            hinted_ids, _ = response_ids(ctx.tokenizer, hinted, text)
            log_p = response_logps(policy, prompt_ids, ids, m.temperature)[0]
            log_q = response_logps(policy, hinted_ids, ids, m.temperature)[0]
            log_w = log_q - log_p
            view.seqs.append(
                TokenSeq(
                    f"prompt {p_i + 1} · sample {j + 1}",
                    pieces(ctx.tokenizer, ids),
                    {"w": log_w.exp().clamp(max=m.w_max).tolist(), "log_w": log_w.tolist()},
                    "log_w",
                    dropped=bool(scores[j] < m.keep_reward),
                    note=f"reward {scores[j].item():.3g} · mean log q/p {log_w.mean().item():.3g}",
                    prompt=prompt_text(ex["prompt"]),
                )
            )
    return view
