"""What the tiny model can do along its warm start: held-out toy_math accuracy and toy_pref gold reward.

    python scripts/toy/warm_start_curve.py --every 250 model.tiny.warmup_steps=1500
    python scripts/toy/warm_start_curve.py --set WARM_MATH_UNANSWERED=0.6 model.tiny.hidden_size=96

Builds the tiny model in memory as `tokalign.modeling.models.build_tiny` does (nothing is cached) and, every
--every steps, samples it on the d3s_toy eval prompts at the eval temperature (pass@1 over
eval.num_samples samples, and greedy accuracy), on as many held-out problems whose prompt carries the
answer (`hint_accuracy`) or a wrong attempt and its critique (`revision_accuracy`), one sample each, and on toy_pref's held-out prompts (mean gold
reward of one sample each). `--set NAME=VALUE` changes a warm-start constant of
tokalign.modeling.models (WARM_*) for this measurement only. Appends one record to
scripts/results/warm_start_curve.json.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import time
from pathlib import Path

from toylib import append_record, compose

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "scripts" / "results" / "warm_start_curve.json"


def probe(model, tok, cfg, math_rows, pref_prompts) -> dict:
    from tokalign.analysis.evaluate import pass_at_k
    from tokalign.data import toy_math, toy_pref
    from tokalign.data.chat import prompt_text
    from tokalign.data.toy_math import extract_answer
    from tokalign.modeling.generation import generate
    from tokalign.rewards import exact_match, gold_reward

    e = cfg.eval
    prompts, answers = [r["prompt"] for r in math_rows], [r["answer"] for r in math_rows]

    def sample(temperature: float, n: int) -> list[list[str]]:
        return generate(
            model,
            tok,
            prompts,
            max_new_tokens=e.max_new_tokens,
            temperature=temperature,
            num_samples=n,
            batch_size=64,
            seed=cfg.seed + 17,
        )

    def correct(samples: list[list[str]]) -> list[list[float]]:
        return [exact_match([p] * len(s), s, answer=[a] * len(s)) for p, s, a in zip(prompts, samples, answers)]

    raw = sample(e.temperature, e.num_samples)
    sampled = correct(raw)
    answered = statistics.fmean(extract_answer(x) is not None for s in raw for x in s)
    greedy = sample(0.0, 1)
    # the contexts InTRO and RLTF build: does the model use an appended answer, a critique of a wrong attempt?
    in_context = {}
    for kind in ("hint", "revision"):
        rows = toy_math.context_rows(len(prompts), cfg.seed + 1, kind, split="eval")
        out = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=e.max_new_tokens,
                       temperature=e.temperature, batch_size=64, seed=cfg.seed + 17)  # fmt: skip
        in_context[f"{kind}_accuracy"] = statistics.fmean(
            exact_match([r["prompt"]], s, answer=[r["answer"]])[0] for r, s in zip(rows, out)
        )
    notes = generate(
        model, tok, pref_prompts, max_new_tokens=32, temperature=e.temperature, batch_size=64, seed=cfg.seed + 17
    )
    return {
        "pass@1": statistics.fmean(pass_at_k(len(c), int(sum(c)), 1) for c in sampled),
        f"pass@{e.num_samples}": statistics.fmean(pass_at_k(len(c), int(sum(c)), e.num_samples) for c in sampled),
        "answered": answered,
        "accuracy_when_answered": sum(map(sum, sampled)) / max(1e-9, answered * len(raw) * e.num_samples),
        "greedy_accuracy": statistics.fmean(c[0] for c in correct(greedy)),
        **in_context,
        # the completion restates the problem before answering: how often it copies it right
        "greedy_copies_problem": statistics.fmean(
            s[0].startswith(prompt_text(p).removeprefix("What is ").rstrip("?") + " =") for p, s in zip(prompts, greedy)
        ),
        "greedy_examples": [f"{prompt_text(p)} -> {s[0]} ({a})" for p, s, a in list(zip(prompts, greedy, answers))[:6]],
        "pref_gold_reward": statistics.fmean(gold_reward(pref_prompts, [s[0] for s in notes])),
        "pref_malformed": sum(toy_pref.malformed(s[0]) for s in notes),
        "pref_example": notes[0][0],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", type=int, default=250)
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a WARM_* constant of tokalign.modeling.models"
    )
    p.add_argument("--label", default="")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (model.tiny.*, eval.*)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from omegaconf import OmegaConf

    from tokalign.data import toy_math
    from tokalign.data.loading import load_split
    from tokalign.modeling import models

    for item in args.set:
        name, value = item.split("=", 1)
        if not (name.startswith("WARM_") and hasattr(models, name)):
            raise SystemExit(f"--set {name}: not a WARM_* constant of tokalign.modeling.models")
        setattr(models, name, ast.literal_eval(value))
    cfg = compose(["experiment=d3s_toy", *args.overrides])
    spec = OmegaConf.to_container(cfg.model.tiny, resolve=True)
    math_rows = list(load_split(cfg.dataset, "prompt", "eval"))[: cfg.eval.num_prompts]
    pref_prompts = [r["prompt"] for r in load_split(compose(["dataset=toy_pref"]).dataset, "prompt", "eval")][:32]
    record = {
        "label": args.label,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tiny": spec,
        "warm_start": {n: getattr(models, n) for n in dir(models) if n.startswith("WARM_")},
        "toy_math": {n: getattr(toy_math, n) for n in dir(toy_math) if n.isupper() and not n.startswith("_")},
        "eval": {
            "num_prompts": len(math_rows),
            "num_samples": cfg.eval.num_samples,
            "temperature": cfg.eval.temperature,
        },
        "curve": [],
    }
    started = time.time()

    def on_step(step: int, model, tok) -> None:
        if step % args.every == 0 or step == spec["warmup_steps"]:
            train_s = time.time() - started - sum(c["probe_s"] for c in record["curve"])
            t = time.time()
            point = {"step": step, **probe(model, tok, cfg, math_rows, pref_prompts)}
            point.update(train_s=round(train_s, 1), probe_s=round(time.time() - t, 1))
            record["curve"].append(point)
            print(json.dumps(point), flush=True)

    models.make_tiny(spec, on_step=on_step)
    append_record(RESULTS, record)


if __name__ == "__main__":
    main()
