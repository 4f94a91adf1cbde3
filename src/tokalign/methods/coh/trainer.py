"""Chain of Hindsight on TRL's SFTTrainer: chain rows, then `coh_loss` with the pretraining batch and the
forgetful causal mask in place of SFT's loss."""

from __future__ import annotations

import copy
import itertools

import torch
from trl import SFTConfig, SFTTrainer

from tokalign.bases.trl import peft_config, run_trainer, trl_args
from tokalign.data import toy_pref
from tokalign.data.chat import as_messages
from tokalign.data.loading import task_of
from tokalign.losses import coh_loss, forgetful_causal_mask
from tokalign.methods.coh.chains import chain_rows, output_text, text_rows


def _token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T−1) log-probs of each next token and the mask of those with a label (not −100)."""
    targets = labels[:, 1:]
    logps = logits[:, :-1].float().log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps, targets != -100


class CoHTrainer(SFTTrainer):
    """SFT whose loss is `coh_loss`: per-example means over the chain's outputs, λ × a pretraining batch,
    and (in training) a forgetful causal mask drawn per step from a seeded generator."""

    def __init__(self, *args, coh, pretrain: list[dict], seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # the loss is a batch mean: the Trainer divides by accumulation
        self.coh, self.pretrain, self.seed = coh, pretrain, seed
        self._pretrain_batches = None
        self._generator: torch.Generator | None = None

    def _attention(self, attention_mask: torch.Tensor, training: bool) -> torch.Tensor:
        m = self.coh
        if not training or m.fcm_max == 0:
            return attention_mask
        device = attention_mask.device
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        fcm = forgetful_causal_mask(
            *attention_mask.shape, min_ratio=m.fcm_min, max_ratio=m.fcm_max, generator=self._generator, device=device
        )
        return fcm & attention_mask[:, None, None, :].bool()

    def _logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self._attention(inputs["attention_mask"], model.training)
        logits = model(input_ids=inputs["input_ids"], attention_mask=attention, use_cache=False).logits
        return _token_logps(logits, inputs["labels"])

    def _next_pretrain(self, device) -> dict:
        if self._pretrain_batches is None:
            loader = torch.utils.data.DataLoader(
                self.pretrain,
                batch_size=self.args.per_device_train_batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(self.seed),
                collate_fn=self.data_collator,
            )
            self._pretrain_batches = itertools.cycle(loader)
        return {k: v.to(device) for k, v in next(self._pretrain_batches).items()}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, mask = self._logps(model, inputs)
        pretrain = {}
        if self.coh.pretrain_weight > 0 and model.training:
            pre_logps, pre_mask = self._logps(model, self._next_pretrain(logps.device))
            pretrain = dict(pretrain_logps=pre_logps, pretrain_mask=pre_mask)
        loss, metrics = coh_loss(logps, mask, pretrain_weight=self.coh.pretrain_weight, **pretrain)
        mode = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(value.item())
        return (loss, None) if return_outputs else loss


def pretrain_texts(run, m) -> list[str]:
    """The pretraining term's texts: a {text} JSON/JSONL file; else the toy task's notes, or for other data the
    training prompts with their preferred outputs, as chat text (a stand-in for the paper's Pile)."""
    if m.pretrain_weight == 0:
        return []
    if m.pretrain_data:
        from datasets import load_dataset

        return list(load_dataset("json", data_files=str(m.pretrain_data), split="train")["text"][: m.pretrain_rows])
    if task_of(run.cfg.dataset) == "toy_pref":
        rows = toy_pref.sft_rows(m.pretrain_rows, run.cfg.seed + 1)
        pairs = [(as_messages(r["prompt"]), r["completion"]) for r in rows]
    else:
        pairs = [(as_messages(r["prompt"]), output_text(r["chosen"])) for r in list(run.train_data)[: m.pretrain_rows]]
    return [
        run.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
        for messages, reply in pairs
    ]


def marker_tokenizer(tokenizer, marker: str):
    """A copy whose chat template ends the generation prompt with the positive marker (CoH's inference)."""
    saved = copy.deepcopy(tokenizer)
    if marker:
        saved.chat_template = (
            tokenizer.chat_template + "{% if add_generation_prompt %}{{ " + repr(marker) + " }}{% endif %}"
        )
    return saved


def fit(run) -> dict:
    from datasets import Dataset

    m, max_length = run.cfg.method, run.cfg.trainer.max_length
    rows = chain_rows(run.tokenizer, run.train_data, m, run.cfg.seed)
    pretrain = [{"input_ids": r["input_ids"][:max_length]} for r in text_rows(run.tokenizer, pretrain_texts(run, m))]
    trainer = CoHTrainer(
        model=run.load_policy(),
        args=SFTConfig(**trl_args(run, completion_only_loss=True)),
        train_dataset=Dataset.from_list(rows),
        processing_class=marker_tokenizer(run.tokenizer, m.positive_marker),
        peft_config=peft_config(run),
        coh=m,
        pretrain=pretrain,
        seed=run.cfg.seed,
    )
    return run_trainer(run, trainer)
