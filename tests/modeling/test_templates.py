"""model.chat_template: read and parsed at validation, rendered on a sample conversation before any row is
formatted, and carried by the saved tokenizer into evaluation."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config, run_cli
from tests.test_bad_input import _probe
from tokalign.errors import ConfigError
from tokalign.modeling import templates

# ChatML with a "role:" header: a template the tiny model's own (plain ChatML) is not
CUSTOM = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ':\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant:\\n' }}{% endif %}"
)


@pytest.fixture
def tokenizer(tiny_model):
    from tokalign.modeling.models import load_tokenizer

    return load_tokenizer(tiny_model)


def test_a_template_file_a_string_and_a_name_are_applied(tokenizer, tmp_path):
    path = tmp_path / "custom.jinja"
    path.write_text(CUSTOM)
    for value in (str(path), CUSTOM):
        templates.check_source(value)
        templates.apply(tokenizer, value)
        assert tokenizer.chat_template == CUSTOM
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        assert text == "<|im_start|>user:\nhi<|im_end|>\n"
    templates.apply(tokenizer, "chatml")
    assert tokenizer.chat_template == templates.named()["chatml"]
    before = tokenizer.chat_template
    templates.apply(tokenizer, None)  # null: the tokenizer's own
    assert tokenizer.chat_template == before


def test_a_missing_or_broken_template_is_refused_at_validation(tmp_path):
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m['content'] }}")
    for value, message in (
        ("no/such/template.jinja", "is neither a Jinja template"),
        (str(broken), "the template does not parse"),
    ):
        with pytest.raises(ConfigError, match=message) as err:
            compose_config(f"model.chat_template={value}")
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "template,message",
    [
        ("{{ raise_exception('System role not supported') }}", "fails to render a sample user/assistant"),
        ("{{ undefined_function() }}", "fails to render a sample user/assistant"),
        ("{% for m in messages if m['role'] == 'user' %}{{ m['content'] }}{% endfor %}", "drops the assistant"),
    ],
)
def test_a_template_that_fails_on_a_sample_conversation_is_one_line(tokenizer, template, message):
    before = tokenizer.chat_template
    with pytest.raises(ConfigError, match=message) as err:
        templates.apply(tokenizer, template)
    assert "\n" not in str(err.value) and tokenizer.chat_template == before


def test_a_run_refuses_a_failing_template_before_loading_data(tmp_path, capsys, cache_dir):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ raise_exception('no chat here') }}")
    line = _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'run'}", "logger=none", f"model.chat_template={bad}")
    assert "model.chat_template fails to render a sample user/assistant conversation: no chat here" in line


@pytest.mark.slow
def test_a_run_trains_and_evaluates_with_the_template(tmp_path, cache_dir):
    path = tmp_path / "custom.jinja"
    path.write_text(CUSTOM)
    run = tmp_path / "run"
    run_cli(
        "train",
        f"hydra.run.dir={run}",
        "logger=none",
        "method=sft",
        "trainer.max_steps=1",
        "dataset.num_train=16",
        "eval.num_prompts=2",
        "eval.kl=false",
        f"model.chat_template={path}",
    )
    assert (run / "model" / "chat_template.jinja").read_text() == CUSTOM  # what evaluation and inspect read
