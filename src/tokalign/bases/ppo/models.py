"""The models of the PPO loop and the per-token quantities read from them.

The critic wraps a `*ForSequenceClassification` model and applies its scalar head at every
position, so it stays a standard HF checkpoint that starts from a reward model (backbone and
head) or from the policy (a new head) alike. With LoRA it is its own model with its own
adapters and a whole trained head, not adapters on the policy's base: it may start from a
reward model (other weights than the policy's), and the two keep separate optimizers,
DeepSpeed engines and checkpoints as without LoRA.
"""

from __future__ import annotations

import torch
from torch import nn


class Critic(nn.Module):
    """Per-token values V_t, read at the position before response token t (the state x, y_<t)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, num_response: int) -> torch.Tensor:
        # A PEFT model's adapters live inside its base model's layers: the same calls reach them.
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        backbone = getattr(model, model.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return model.score(hidden[:, -num_response - 1 : -1]).squeeze(-1).float()


def load_critic(path: str, dtype: str, pad_token_id: int, trust_remote_code: bool = False) -> Critic:
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from tokalign.artifacts.tracking import verbose
    from tokalign.modeling.lora import is_adapter_dir, load_pretrained

    # From a policy the value head is new by design: transformers' load report ("score.weight MISSING")
    # says nothing then. From a reward model a missing head would be a real problem: reported. An adapter
    # (a LoRA reward model or critic) brings its head.
    adapter = is_adapter_dir(path)
    config = None if adapter else AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    new_head = config is not None and not any(
        a.endswith("ForSequenceClassification") for a in config.architectures or []
    )
    level = hf_logging.get_verbosity()
    if new_head and not verbose():
        hf_logging.set_verbosity_error()
    try:
        model = load_pretrained(
            AutoModelForSequenceClassification,
            path,
            num_labels=1,
            dtype=getattr(torch, dtype) if dtype != "auto" else "auto",
            trust_remote_code=trust_remote_code,
        )
    finally:
        hf_logging.set_verbosity(level)
    model.config.pad_token_id = pad_token_id
    return Critic(model)


def response_logits(model, input_ids, attention_mask, position_ids, num_response: int) -> torch.Tensor:
    """(B, R, V) logits predicting the R response tokens (the last R columns of input_ids)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=num_response + 1,
        use_cache=False,
    )
    return out.logits[:, :-1].float()


def token_logps(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π(y_t) of the distribution softmax(logits / temperature), (B, R)."""
    logits = logits / temperature
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Full-vocabulary entropy of softmax(logits / temperature) at each position."""
    logp = torch.log_softmax(logits / temperature, -1)
    return -(logp.exp() * logp).sum(-1)
