"""Model answers in the formats external judges read, so users can run those judges themselves.

`tokalign eval run_dir=... eval.export=[alpaca_eval,mt_bench,arena_hard] [eval.export_questions=...]`
writes under `<run_dir>/export/`:

  alpaca_eval/model_outputs.json         AlpacaEval 2 (alpaca_eval 0.6.x): a JSON list of
                                          {instruction, output, generator[, dataset]}
  mt_bench/model_answer/<model>.jsonl    MT-Bench (FastChat 0.2.36 fastchat/llm_judge): one line per
                                          question {question_id, answer_id, model_id,
                                          choices: [{index, turns: [str, ...]}], tstamp}
  arena_hard/model_answer/<model>.jsonl  Arena-Hard (arena-hard-auto): v2.0 questions {uid, category,
                                          prompt} give {uid, ans_id, model, messages, tstamp, metadata};
                                          v0.1 questions {question_id, category, turns: [{content}]} give
                                          {question_id, answer_id, model_id, choices: [{index, turns:
                                          [{content, token_len}]}], tstamp, conv_metadata}

Questions: a benchmark's own file (AlpacaEval's JSON list with `instruction`, MT-Bench's or
Arena-Hard's question.jsonl), one path for every exporter or `{exporter: path}`. Without one,
the run's eval prompts are exported (with the answers already sampled by the evaluation) and a
matching question.jsonl is written next to the answers. MT-Bench answers are generated turn by
turn, each turn seeing the model's previous answers, at FastChat's per-category temperatures.
Token lengths in Arena-Hard's metadata count the policy's own tokens (the judge's style control
only compares lengths between answers).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tokalign.artifacts.files import atomic_text
from tokalign.data.chat import prompt_text
from tokalign.errors import ConfigError, DataError
from tokalign.modeling.generation import generate

EXPORTERS = ("alpaca_eval", "mt_bench", "arena_hard")
# fastchat/llm_judge/common.py temperature_config (MT-Bench categories)
MT_BENCH_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}


def _answer_id() -> str:
    return uuid.uuid4().hex[:22]


def model_id(cfg: DictConfig) -> str:
    """The name judges show for this run: its run_name, made file-safe."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(cfg.run_name))


def load_questions(path: str | Path) -> list[dict]:
    """A JSON list or a JSONL file of question records; a problem names the file and line."""
    from tokalign.data.loading import read_json_rows

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"eval.export_questions={path} does not exist")
    return read_json_rows(path, as_list=path.read_bytes().lstrip().startswith(b"["))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    return atomic_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def markdown_metadata(text: str, tokenizer) -> dict:
    """Arena-Hard's style-control features of one answer: length and Markdown element counts."""
    return {
        "token_len": len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        "header_count": {f"h{i}": len(re.findall(rf"^#{{{i}}}\s", text, re.MULTILINE)) for i in range(1, 7)},
        "list_count": {
            "ordered": len(re.findall(r"^\s*\d+\.\s", text, re.MULTILINE)),
            "unordered": len(re.findall(r"^\s*[-*+]\s", text, re.MULTILINE)),
        },
        "bold_count": {"**": len(re.findall(r"\*\*[^*\n]+\*\*", text)), "__": len(re.findall(r"__[^_\n]+__", text))},
    }


class _Answerer:
    """Loads the run's policy on first use and answers conversations in batches."""

    def __init__(self, cfg: DictConfig, run_dir: Path, tokenizer):
        self.cfg, self.run_dir, self.tokenizer, self.model = cfg, run_dir, tokenizer, None

    def __call__(self, conversations: list[list[dict]], temperature: float, desc: str) -> list[str]:
        if self.model is None:
            from tokalign.modeling.models import load_causal_lm

            self.model = load_causal_lm(
                str(self.run_dir / "model"),
                dtype=str(self.cfg.model.dtype),
                trust_remote_code=self.cfg.model.trust_remote_code,
            )
        e = self.cfg.eval
        out = generate(
            self.model,
            self.tokenizer,
            conversations,
            max_new_tokens=e.max_new_tokens,
            temperature=temperature,
            top_p=e.top_p,
            batch_size=e.batch_size,
            seed=self.cfg.seed + 29,
            desc=desc,
        )
        return [o[0] for o in out]


def _questions_for(cfg: DictConfig, name: str) -> str | None:
    q = cfg.eval.export_questions
    if q is None:
        return None
    if isinstance(q, (dict, DictConfig)):
        return q.get(name)
    return str(q)


def export_alpaca_eval(cfg, out: Path, answer, prompts, answers, questions) -> Path:
    if questions is None:
        records = [{"instruction": prompt_text(p), "dataset": str(cfg.dataset.name)} for p in prompts]
    else:
        records = [
            {"instruction": q["instruction"], **({"dataset": q["dataset"]} if "dataset" in q else {})}
            for q in questions
        ]
        answers = answer(
            [[{"role": "user", "content": r["instruction"]}] for r in records],
            cfg.eval.temperature,
            "export: alpaca_eval",
        )
    rows = [{**r, "output": a, "generator": model_id(cfg)} for r, a in zip(records, answers)]
    return atomic_text(out / "alpaca_eval" / "model_outputs.json", json.dumps(rows, indent=2, ensure_ascii=False))


def _multi_turn(answer, questions: list[dict], turns_of, temperature_of, desc: str) -> list[list[str]]:
    """Answer every question's turns in order; each turn sees the previous answers."""
    convs: list[list[dict]] = [[] for _ in questions]
    replies: list[list[str]] = [[] for _ in questions]
    for t in range(max(len(turns_of(q)) for q in questions)):
        live = [i for i, q in enumerate(questions) if t < len(turns_of(q))]
        for temp in sorted({temperature_of(questions[i]) for i in live}):
            batch = [i for i in live if temperature_of(questions[i]) == temp]
            for i in batch:
                convs[i].append({"role": "user", "content": turns_of(questions[i])[t]})
            outs = answer([convs[i] for i in batch], temp, f"{desc} turn {t + 1}")
            for i, o in zip(batch, outs):
                convs[i].append({"role": "assistant", "content": o})
                replies[i].append(o)
    return replies


def export_mt_bench(cfg, out: Path, answer, prompts, answers, questions) -> Path:
    if questions is None:
        questions = [
            {"question_id": i + 1, "category": "tokalign", "turns": [prompt_text(p)]} for i, p in enumerate(prompts)
        ]
        _write_jsonl(out / "mt_bench" / "question.jsonl", questions)
        replies = [[a] for a in answers]
    else:
        temp = lambda q: MT_BENCH_TEMPERATURE.get(q.get("category"), 0.7)  # noqa: E731  FastChat's fallback
        replies = _multi_turn(answer, questions, lambda q: q["turns"], temp, "export: mt_bench")
    rows = [
        {
            "question_id": q["question_id"],
            "answer_id": _answer_id(),
            "model_id": model_id(cfg),
            "choices": [{"index": 0, "turns": r}],
            "tstamp": time.time(),
        }
        for q, r in zip(questions, replies)
    ]
    return _write_jsonl(out / "mt_bench" / "model_answer" / f"{model_id(cfg)}.jsonl", rows)


def export_arena_hard(cfg, out: Path, answer, prompts, answers, questions, tokenizer) -> Path:
    if questions is None:
        questions = [
            {"uid": f"tokalign-{i:05d}", "category": "tokalign", "prompt": prompt_text(p)}
            for i, p in enumerate(prompts)
        ]
        _write_jsonl(out / "arena_hard" / "question.jsonl", questions)
    elif "uid" in questions[0]:
        answers = answer(
            [[{"role": "user", "content": q["prompt"]}] for q in questions], cfg.eval.temperature, "export: arena_hard"
        )
    else:  # v0.1: question_id + turns [{content}]; answered turn by turn
        replies = _multi_turn(
            answer,
            questions,
            lambda q: [t["content"] for t in q["turns"]],
            lambda q: cfg.eval.temperature,
            "export: arena_hard",
        )
        rows = []
        for q, r in zip(questions, replies):
            row = {
                "question_id": q["question_id"],
                "answer_id": _answer_id(),
                "model_id": model_id(cfg),
                "choices": [
                    {
                        "index": 0,
                        "turns": [{"content": a, "token_len": markdown_metadata(a, tokenizer)["token_len"]} for a in r],
                    }
                ],
                "tstamp": time.time(),
            }
            if len(r) == 1:
                row["conv_metadata"] = markdown_metadata(r[0], tokenizer)
            rows.append(row)
        return _write_jsonl(out / "arena_hard" / "model_answer" / f"{model_id(cfg)}.jsonl", rows)
    rows = [
        {
            "uid": q["uid"],
            "ans_id": _answer_id(),
            "model": model_id(cfg),
            "messages": [{"role": "user", "content": q["prompt"]}, {"role": "assistant", "content": {"answer": a}}],
            "tstamp": time.time(),
            "metadata": markdown_metadata(a, tokenizer),
        }
        for q, a in zip(questions, answers)
    ]
    return _write_jsonl(out / "arena_hard" / "model_answer" / f"{model_id(cfg)}.jsonl", rows)


def export_run(cfg: DictConfig, run_dir: Path, tokenizer, prompts: list[Any], answers: list[str]) -> dict[str, Path]:
    """Write every exporter named in `cfg.eval.export`; returns {exporter: file written}."""
    names = [str(n) for n in cfg.eval.export]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ConfigError(f"eval.export: unknown exporter(s) {unknown}; available: {', '.join(EXPORTERS)}")
    out = Path(run_dir) / "export"
    answer = _Answerer(cfg, Path(run_dir), tokenizer)
    written = {}
    for name in names:
        qpath = _questions_for(cfg, name)
        questions = load_questions(qpath) if qpath else None
        if name == "alpaca_eval":
            written[name] = export_alpaca_eval(cfg, out, answer, prompts, answers, questions)
        elif name == "mt_bench":
            written[name] = export_mt_bench(cfg, out, answer, prompts, answers, questions)
        else:
            written[name] = export_arena_hard(cfg, out, answer, prompts, answers, questions, tokenizer)
        print(f"exported {name}: {written[name]}")
    return written
