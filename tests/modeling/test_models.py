"""Model sources: the tiny builder is deterministic and cached; tokenizer checks catch mismatches."""

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tokalign.config import ModelConfig
from tokalign.modeling.models import (
    ModelError,
    _toy_corpus,
    build_tiny,
    check_tokenizers_match,
    load_tokenizer,
    make_tiny,
    resolve_model,
)

SPEC = dict(
    arch="qwen2",
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    vocab_size=320,
    max_position_embeddings=128,
    seed=5,
    warmup_steps=3,
)


def test_tiny_build_is_deterministic_and_cached(tmp_path):
    a = build_tiny(SPEC, tmp_path / "a")
    b = build_tiny(SPEC, tmp_path / "b")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert build_tiny(SPEC, tmp_path / "a") == a  # second call reuses the cache


def test_warm_start_reports_every_step():
    seen = []
    make_tiny({**SPEC, "warmup_steps": 2}, on_step=lambda step, model, tok: seen.append((step, model.training)))
    assert seen == [(1, True), (2, True)]


def test_warm_start_prompt_tokens_are_a_prefix_of_the_conversation(tiny_model):
    """The warm start masks the loss of the first len(prompt tokens) tokens of each conversation."""
    tok = load_tokenizer(tiny_model)
    for prompt, response in _toy_corpus(0)[:200]:
        user = [{"role": "user", "content": prompt}]
        head = tok(tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True))["input_ids"]
        full = tok(tok.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False))[
            "input_ids"
        ]
        assert full[: len(head)] == head and len(full) > len(head)


def test_tiny_tokenizer_has_one_token_per_digit(tiny_model):
    tokens = load_tokenizer(tiny_model).tokenize("What is 37 + 25? 37 + 25 = 62")
    digits = [t for t in tokens if any(c.isdigit() for c in t)]
    assert len(digits) == 10 and all(len(t) == 1 for t in digits)


def test_tiny_tokenizer_has_chat_template_and_specials(tiny_model):
    tok = load_tokenizer(tiny_model)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>" and tok.pad_token


def test_tokenizer_mismatch_is_a_clear_error(tmp_path, tiny_model):
    other = load_tokenizer(str(build_tiny({**SPEC, "vocab_size": 300}, tmp_path)))
    with pytest.raises(ModelError, match="vocabularies differ"):
        check_tokenizers_match(load_tokenizer(tiny_model), other)
    check_tokenizers_match(load_tokenizer(tiny_model), load_tokenizer(tiny_model))


def test_model_path_must_be_a_checkpoint(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"path": str(tmp_path)})
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(cfg, tmp_path)


def test_hub_preset_resolves_to_its_id_without_downloading(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"source": "hub", "hub_id": "google/gemma-2-2b-it"})
    assert resolve_model(cfg, tmp_path) == "google/gemma-2-2b-it"


def test_feedback_rows_teach_the_contexts_intro_and_rltf_build_by_default():
    """tiny_feedback reads hints and critiques only because its warm start shows the methods' own templates;
    the default tiny model's corpus has none of them (so the toy tables built on it do not move)."""
    from tokalign.data import toy_math
    from tokalign.methods.intro import Config as IntroConfig
    from tokalign.methods.rltf import Config as RltfConfig

    assert IntroConfig().posterior_template == toy_math.HINT_TEMPLATE
    assert RltfConfig().revision_template == toy_math.REVISION_TEMPLATE
    plain, taught = _toy_corpus(0), _toy_corpus(0, feedback_rows=50)
    for pairs, n in ((plain, 0), (taught, 50)):
        prompts = [p for p, _ in pairs]
        assert sum(" The answer is " in p for p in prompts) == n
        assert sum(" previous: " in p and " critique: " in p for p in prompts) == n
    assert len(taught) == len(plain) + 100 and set(plain) <= set(taught)


def test_tiny_feedback_preset_composes_onto_the_tiny_schema():
    from tests.conftest import compose_config

    model = compose_config("model=tiny_feedback").model
    assert model.source == "tiny" and model.tiny.feedback_rows == 3000 and model.tiny.warmup_steps == 1600
    assert compose_config().model.tiny.feedback_rows == 0
    for toy in ("intro_toy", "rltf_toy"):
        assert compose_config(f"experiment={toy}").model.name == "tiny_feedback"
