"""Judge exporters: files parse in the AlpacaEval 2, MT-Bench (FastChat) and Arena-Hard formats."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tokalign.analysis import export


class Tokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


class Answerer:
    """Stands in for the policy: records each conversation and answers with its length."""

    def __init__(self):
        self.calls = []

    def __call__(self, conversations, temperature, desc):
        self.calls.append((temperature, [list(c) for c in conversations]))
        return [f"answer {len(c)} **bold**\n- item" for c in conversations]


@pytest.fixture
def cfg(tmp_path):
    return OmegaConf.create(
        {
            "run_name": "tgdpo a1/s0",
            "seed": 0,
            "dataset": {"name": "toy_pref"},
            "eval": {"temperature": 0.0, "export_questions": None},
        }
    )


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_prompts_export_in_every_format(cfg, tmp_path):
    prompts, answers = (
        ["Tell me about the lake.", [{"role": "user", "content": "Describe the park."}]],
        ["calm", "green"],
    )
    out, answer = tmp_path / "export", Answerer()
    alpaca = json.loads(export.export_alpaca_eval(cfg, out, answer, prompts, answers, None).read_text())
    assert alpaca == [
        {"instruction": "Tell me about the lake.", "dataset": "toy_pref", "output": "calm", "generator": "tgdpo_a1_s0"},
        {"instruction": "Describe the park.", "dataset": "toy_pref", "output": "green", "generator": "tgdpo_a1_s0"},
    ]
    mt = _jsonl(export.export_mt_bench(cfg, out, answer, prompts, answers, None))
    assert [r["question_id"] for r in mt] == [1, 2] and mt[1]["choices"] == [{"index": 0, "turns": ["green"]}]
    assert {"answer_id", "model_id", "tstamp"} <= set(mt[0]) and mt[0]["model_id"] == "tgdpo_a1_s0"
    assert _jsonl(out / "mt_bench" / "question.jsonl")[0] == {
        "question_id": 1,
        "category": "tokalign",
        "turns": ["Tell me about the lake."],
    }
    ah = _jsonl(export.export_arena_hard(cfg, out, answer, prompts, answers, None, Tokenizer()))
    assert ah[0]["messages"] == [
        {"role": "user", "content": "Tell me about the lake."},
        {"role": "assistant", "content": {"answer": "calm"}},
    ]
    assert {"uid", "ans_id", "model", "tstamp"} <= set(ah[0]) and ah[0]["metadata"]["token_len"] == 1
    assert answer.calls == []  # the evaluation's own samples are reused


def test_benchmark_question_files(cfg, tmp_path):
    (tmp_path / "alpaca.json").write_text(
        json.dumps([{"instruction": "Say hi.", "dataset": "helpful_base", "output": "ref"}])
    )
    (tmp_path / "mt.jsonl").write_text(
        json.dumps({"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Now shorter."]})
        + "\n"
        + json.dumps({"question_id": 101, "category": "math", "turns": ["1+1?"]})
        + "\n"
    )
    (tmp_path / "ah2.jsonl").write_text(
        json.dumps({"uid": "abc", "category": "hard_prompt", "prompt": "Prove it."}) + "\n"
    )
    (tmp_path / "ah1.jsonl").write_text(
        json.dumps(
            {"question_id": "q1", "category": "arena-hard-v0.1", "cluster": "c", "turns": [{"content": "Explain."}]}
        )
        + "\n"
    )
    out, answer = tmp_path / "export", Answerer()
    alpaca = json.loads(
        export.export_alpaca_eval(cfg, out, answer, [], [], export.load_questions(tmp_path / "alpaca.json")).read_text()
    )
    assert (
        alpaca[0]["instruction"] == "Say hi."
        and alpaca[0]["dataset"] == "helpful_base"
        and alpaca[0]["output"].startswith("answer 1")
    )

    answer.calls.clear()
    mt = {
        r["question_id"]: r
        for r in _jsonl(export.export_mt_bench(cfg, out, answer, [], [], export.load_questions(tmp_path / "mt.jsonl")))
    }
    assert [len(c["turns"]) for c in mt[81]["choices"]] == [2] and len(mt[101]["choices"][0]["turns"]) == 1
    second_turn = [conv for temp, convs in answer.calls for conv in convs if len(conv) == 3][0]
    assert [m["role"] for m in second_turn] == ["user", "assistant", "user"]  # turn 2 sees turn 1's answer
    assert {temp for temp, _ in answer.calls} == {0.0, 0.7}  # FastChat's per-category temperatures

    v2 = _jsonl(
        export.export_arena_hard(cfg, out, answer, [], [], export.load_questions(tmp_path / "ah2.jsonl"), Tokenizer())
    )
    assert (
        v2[0]["uid"] == "abc"
        and v2[0]["metadata"]["bold_count"]["**"] == 1
        and v2[0]["metadata"]["list_count"]["unordered"] == 1
    )
    v1 = _jsonl(
        export.export_arena_hard(cfg, out, answer, [], [], export.load_questions(tmp_path / "ah1.jsonl"), Tokenizer())
    )
    assert v1[0]["question_id"] == "q1" and set(v1[0]["choices"][0]["turns"][0]) == {"content", "token_len"}
    assert "conv_metadata" in v1[0]


def test_unknown_exporter_is_rejected(cfg, tmp_path):
    cfg.eval.export = ["alpaca_eval", "lmsys"]
    with pytest.raises(ValueError, match="lmsys"):
        export.export_run(cfg, tmp_path, Tokenizer(), [], [])
