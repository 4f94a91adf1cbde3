"""dpo_loss against TRL 1.16's own sigmoid DPO loss (DPOTrainer._compute_loss).

The loss is only reachable as a trainer method that runs the models, so it is called unbound
on a stand-in ``self`` carrying the attributes that method reads, with stand-in models whose
fused-LM-head output is the given per-token log-probs (0 where the next label is -100, as
TRL's fused head does). Importing TRL takes several seconds: this file is the slow part of
the losses suite.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl.trainer.dpo_trainer import DPOTrainer

from tokalign.losses import dpo_loss

from .helpers import logps, make_mask


class _LogProbModel(torch.nn.Module):
    """Returns fixed per-token log-probs in the shape of TRL's fused-LM-head output."""

    def __init__(self, per_token_logps: torch.Tensor):
        super().__init__()
        self.per_token_logps = per_token_logps
        self.is_gradient_checkpointing = False

    def forward(self, input_ids, labels, **kwargs):
        shifted = labels[:, 1:]
        zeros = torch.zeros_like(shifted, dtype=self.per_token_logps.dtype)
        return SimpleNamespace(
            log_probs=torch.where(shifted != -100, self.per_token_logps, 0),
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros_like(shifted, dtype=torch.bool),
        )


def _trl_sigmoid_loss(policy, ref, completion_mask, beta):
    policy_model = _LogProbModel(policy).train()
    trainer = SimpleNamespace(
        model=policy_model,
        ref_model=_LogProbModel(ref),
        accelerator=SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False,
        precompute_ref_logps=False,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
    }
    loss = DPOTrainer._compute_loss(trainer, policy_model, inputs, return_outputs=False)
    return loss, {key: values[0] for key, values in trainer._metrics["train"].items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_dpo_loss_matches_trl_sigmoid(seed):
    batch, width, beta = 3, 7, 0.1
    # TRL batches are [chosen; rejected]; column 0 stands for the prompt (labels are shifted by one)
    completion_mask = torch.cat([make_mask([5, 6, 2], width), make_mask([6, 3, 4], width)])
    completion_mask = torch.cat([torch.zeros(2 * batch, 1, dtype=torch.long), completion_mask], dim=1)
    policy = logps(2 * batch, width, seed=seed).requires_grad_()
    ref = logps(2 * batch, width, seed=seed + 10)

    trl_loss, trl_metrics = _trl_sigmoid_loss(policy, ref, completion_mask, beta)
    (trl_grad,) = torch.autograd.grad(trl_loss, policy)

    mask = completion_mask[:, 1:]
    loss, metrics = dpo_loss(
        policy[:batch], policy[batch:], ref[:batch], ref[batch:], mask[:batch], mask[batch:], beta=beta
    )
    (grad,) = torch.autograd.grad(loss, policy)

    torch.testing.assert_close(loss, trl_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, trl_grad, rtol=0, atol=1e-12)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert metrics[key].item() == pytest.approx(trl_metrics[key], abs=1e-12)
    # TRL averages the accuracies in float32
    assert metrics["rewards/accuracies"].item() == pytest.approx(trl_metrics["rewards/accuracies"], abs=1e-7)
