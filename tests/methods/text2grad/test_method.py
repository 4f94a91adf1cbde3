"""method=text2grad: its stages against PPO's, its checks, its experiments and a toy run end to end."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_config, run_cli, sweep_params
from tokalign.artifacts.tracking import read_metrics
from tokalign.bases.ppo.advantages import advantages_and_returns, segments
from tokalign.bases.ppo.config import settings
from tokalign.bases.ppo.scoring import Scored, kl_score_rewards
from tokalign.data import toy_pref
from tokalign.losses import clause_gae, whiten
from tokalign.methods.text2grad import Config
from tokalign.methods.text2grad.loop import Critiques, advantages

PROMPTS = ["Tell me about the lake.", "Describe the farm in a few words."]
RESPONSES = ["the lake is calm , it is dull .", "the farm is bright and bright ."]


def _no_labels(prompt, response):
    return {"text": "", "good_words": [], "poor_words": []}


@pytest.fixture(scope="module")
def scored(tiny_model):
    from tokalign.modeling.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    rows = [tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id] for r in RESPONSES]
    width = max(map(len, rows)) + 1
    responses = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    gen = torch.Generator().manual_seed(0)
    old, ref = (-torch.rand(2, width, generator=gen, dtype=torch.float64) for _ in range(2))
    values = torch.randn(2, width, generator=gen, dtype=torch.float64)
    s = Scored(old, {"ref": ref}, values, torch.tensor([1.5, -2.0], dtype=torch.float64), PROMPTS, responses)
    return tokenizer, s, mask


def _m(**overrides):
    return settings(OmegaConf.structured(Config(**{"max_new_tokens": 16, **overrides})), Config)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_no_labels_is_ppos_kl_reward_and_ppos_advantages(scored, estimator):  # invariant 1, in the loop
    tokenizer, s, mask = scored
    m = _m(kl_estimator=estimator)
    critiques = Critiques(tokenizer, critic=_no_labels)
    trained = critiques.train_mask(s, mask, m)
    rewards, metrics = critiques.rewards(s, trained, m)
    zero_score = Scored(s.old_logps, s.logps, s.values, torch.zeros_like(s.scores))
    ppo, _ = kl_score_rewards(zero_score, mask, m)
    assert torch.equal(trained, mask) and torch.equal(rewards, ppo)
    assert metrics["text2grad/dropped_rows"].item() == 0
    ids = segments(m, mask, s.logps["ref"], s.responses, tokenizer, 0)
    mine = advantages(m, rewards, s.values, mask, ids, whiten)
    for a, b in zip(mine, advantages_and_returns(m, ppo, s.values, mask, ids, whiten)):
        assert torch.equal(a, b)


def test_oracle_labels_reach_the_reward_and_the_score_is_optional(scored):
    tokenizer, s, mask = scored
    critiques = Critiques(tokenizer)
    plain, metrics = critiques.rewards(s, mask, _m(kl_coef=0.0, length_weighting=False))
    labels, _, _ = critiques.read(s, mask)
    assert torch.equal(plain, labels.to(plain.dtype))
    assert metrics["text2grad/negative_share"] > 0 and metrics["text2grad/positive_share"] > 0
    scored_too, _ = critiques.rewards(s, mask, _m(kl_coef=0.0, score_coef=1.0, length_weighting=False))
    last = mask.sum(-1) - 1
    assert (scored_too - plain)[torch.arange(2), last].tolist() == s.scores.tolist()


def test_punctuation_restart_drops_the_next_token_and_restarts_gae(scored):
    tokenizer, s, mask = scored
    m = _m(gae_restart="punctuation", whiten_advantages=False)
    critiques = Critiques(tokenizer)
    trained = critiques.train_mask(s, mask, m)
    comma = [tokenizer.decode([i]).strip() for i in s.responses[0].tolist()].index(",")
    assert trained[0, comma + 1] == 0 and (trained[0, : comma + 1] == 1).all()
    eos = int(mask[1].sum()) - 1  # the final full stop drops the EOS after it, as their code does
    assert trained[1, eos] == 0 and torch.equal(trained[1, :eos], mask[1, :eos])
    rewards, _ = critiques.rewards(s, trained, m)
    ids = segments(m, trained, s.logps["ref"], s.responses, tokenizer, 0)
    adv, returns = advantages(m, rewards, s.values, trained, ids, whiten)
    expected = clause_gae(rewards, s.values, trained, gamma=m.gamma, lam=m.lam)
    assert torch.equal(adv, expected[0]) and torch.equal(returns, expected[1])


def test_a_row_whose_critique_fails_is_not_trained(scored):  # invariant 6
    tokenizer, s, mask = scored
    answers = iter([None, toy_pref.critique(PROMPTS[1], RESPONSES[1])])
    critiques = Critiques(tokenizer, critic=lambda p, r: next(answers))
    m = _m()
    trained = critiques.train_mask(s, mask, m)
    assert (trained[0] == 0).all() and torch.equal(trained[1], mask[1])
    _, metrics = critiques.rewards(s, trained, m)
    assert metrics["text2grad/dropped_rows"].item() == 1


BAD = [
    (["method.target_length=-1"], "method.target_length=-1 is out of range"),
    (["method.length_alpha=0"], "method.length_alpha=0"),
    (["method.gae_restart=clauses"], "gae_restart"),
    (["dataset=toy_math"], "the oracle critic reads the toy preference task only"),
    (["method.n=5"], "token-level PPO"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_knob_is_one_line_and_exit_2(capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_:
        run_cli("train", "method=text2grad", "logger=none", *overrides)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tokalign: error:")]
    assert exit_.value.code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert message in errors[0]


def test_every_row_of_the_toy_twin_shares_the_ppo_knobs():
    params = sweep_params("text2grad_toy")
    assert params["+arm"] == ["text2grad/ppo", "text2grad/text2grad", "text2grad/score"]
    rows = {}
    for arm in params["+arm"]:
        cfg = compose_config("experiment=text2grad_toy", f"+arm={arm}")
        OmegaConf.resolve(cfg)
        rows[arm] = cfg.method
    own = ("label_coef", "score_coef")
    assert len({tuple((k, v) for k, v in m.items() if k not in own) for m in rows.values()}) == 1
    assert [(m.label_coef, m.score_coef) for m in rows.values()] == [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]


def test_the_paper_setting_needs_a_critic_and_has_their_numbers(tmp_path):
    from tokalign.errors import ConfigError

    with pytest.raises(ConfigError, match="critic_model"):
        compose_config("experiment=text2grad", "+arm=text2grad/text2grad")
    cfg = compose_config("experiment=text2grad", "+arm=text2grad/text2grad", f"method.critic_model={tmp_path}")
    m, t = cfg.method, cfg.trainer
    assert (m.kl_coef, m.num_ppo_epochs, m.max_new_tokens, m.length_weighting, m.target_length) == (
        0.2,
        4,
        90,
        True,
        48,
    )
    assert (t.learning_rate, t.per_device_batch_size * t.gradient_accumulation_steps) == (1e-6, 12)


def test_no_labels_and_the_score_is_ppos_reward(scored):  # the PPO row: label_coef=0, score_coef=1
    tokenizer, s, mask = scored
    m = _m(label_coef=0.0, score_coef=1.0, kl_coef=0.1)
    rewards, _ = Critiques(tokenizer).rewards(s, mask, m)
    assert torch.equal(rewards, kl_score_rewards(s, mask, m)[0])


SMALL = (
    "trainer.per_device_batch_size=4",
    "method.max_new_tokens=12",
    "eval.at_end=false",
    "trainer.logging_steps=1",
    "trainer.max_steps=2",
    "method.kl_coef=0.05",
    "method.num_ppo_epochs=1",
)


def _metrics(run_dir) -> list[dict]:
    timing = ("time", "train/rollout_tokens_per_s", "train/train_tokens_per_s", "train/rollout_s", "train/update_s")
    return [
        {k: v for k, v in r.items() if k not in timing and not k.startswith("train/text2grad/")}
        for r in read_metrics(run_dir)
    ]


@pytest.mark.slow
def test_without_labels_the_run_is_the_ppo_run(train):
    """Invariant 1 end to end: δ ≡ 0 with the score on the last token is PPO's run, bit for bit."""
    ppo = train("method=ppo", *SMALL)
    text2grad = train("method=text2grad", "method.label_coef=0", "method.score_coef=1", *SMALL)
    assert _metrics(text2grad) == _metrics(ppo)


@pytest.mark.slow
def test_toy_run_end_to_end(train):
    common = (
        "experiment=text2grad_toy",
        "trainer.max_steps=2",
        "trainer.logging_steps=1",
        "trainer.per_device_batch_size=4",
        "method.max_new_tokens=12",
        "eval.at_end=false",
    )
    run_dir = train(*common, "+arm=text2grad/text2grad")
    rows = [r for r in read_metrics(run_dir) if "train/reward" in r]
    assert len(rows) == 2 and all(r["train/text2grad/dropped_rows"] == 0 for r in rows)
    assert any(r["train/text2grad/negative_share"] + r["train/text2grad/positive_share"] > 0 for r in rows)
    from tests.html_spans import parse
    from tokalign.analysis.inspect import inspect_run

    spans = parse(inspect_run(run_dir, num_examples=2).read_text())
    assert spans and all({"data-label", "data-advantage", "data-reward"} <= set(span) for span in spans)
    assert {float(span["data-label"]) for span in spans} <= {-1.0, 0.0, 1.0}
    clauses = train(*common, "+arm=text2grad/text2grad", "method.gae_restart=punctuation")
    assert len([r for r in read_metrics(clauses) if "train/reward" in r]) == 2


@pytest.mark.slow
def test_a_generative_critic_whose_answers_do_not_parse_trains_nothing_and_says_so(train, tiny_model):
    """The tiny model as the critic writes no JSON: every row is dropped and counted, the step trains on nothing."""
    run_dir = train(
        "method=text2grad",
        f"method.critic_model={tiny_model}",
        "method.critic_max_new_tokens=8",
        "trainer.per_device_batch_size=2",
        "method.max_new_tokens=8",
        "eval.at_end=false",
        "trainer.max_steps=1",
    )
    (row,) = [r for r in read_metrics(run_dir) if "train/reward" in r]
    assert row["train/text2grad/dropped_rows"] == 2 and row["train/policy_loss"] == 0.0
