import json

import pytest


@pytest.mark.slow
def test_dpo_then_sft_in_one_process(train, tiny_model):
    a = train("method=dpo", "trainer.max_steps=4")
    b = train("method=sft", "trainer.max_steps=4")
    assert json.loads((a / "eval.json").read_text())["eval/num_prompts"] == 8
    assert (b / "model" / "model.safetensors").exists()
