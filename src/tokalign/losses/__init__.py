"""Pure loss functions: tokalign's public API (docs/methods.md). Only torch is imported here.

Conventions: (B, T) per-token tensors align with a (B, T) 0/1 response mask and are ignored
(even NaN) where it is 0; losses return ``(loss, metrics)`` with a scalar loss and a dict of
0-dim detached tensors.
"""

from tokalign.losses.aligndistil import aligndistil_loss
from tokalign.losses.coh import coh_loss, forgetful_causal_mask
from tokalign.losses.d3s import (
    d3s_schedule,
    d3s_token_mask,
    max_variance_subset,
    select_samples,
)
from tokalign.losses.dpo import dpo_loss, tgdpo_loss
from tokalign.losses.intro import intro_candidates, intro_expected_loss, intro_loss
from tokalign.losses.macro import (
    macro_gae,
    segment_broadcast,
    segment_macro_actions,
    segment_sum,
    segment_value_weights,
)
from tokalign.losses.masked import masked_mean
from tokalign.losses.ppo import (
    gae,
    kl_penalty_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)
from tokalign.losses.rltf import (
    feedback_modeling_loss,
    linear_coef,
    rltf_first_turn_advantages,
    rltf_sd_loss,
    rltf_turn_advantages,
)
from tokalign.losses.rto import rto_token_rewards
from tokalign.losses.text2grad import (
    clause_gae,
    clause_mask,
    text2grad_length_weights,
    text2grad_token_rewards,
)
from tokalign.losses.treg import contrastive_token_rewards, treg_loss

__all__ = [
    "aligndistil_loss",
    "clause_gae",
    "clause_mask",
    "coh_loss",
    "contrastive_token_rewards",
    "d3s_schedule",
    "d3s_token_mask",
    "dpo_loss",
    "feedback_modeling_loss",
    "forgetful_causal_mask",
    "gae",
    "intro_candidates",
    "intro_expected_loss",
    "intro_loss",
    "kl_penalty_rewards",
    "linear_coef",
    "macro_gae",
    "masked_mean",
    "max_variance_subset",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rltf_first_turn_advantages",
    "rltf_sd_loss",
    "rltf_turn_advantages",
    "rto_token_rewards",
    "segment_broadcast",
    "segment_macro_actions",
    "segment_sum",
    "segment_value_weights",
    "select_samples",
    "text2grad_length_weights",
    "text2grad_token_rewards",
    "tgdpo_loss",
    "treg_loss",
    "whiten",
]
