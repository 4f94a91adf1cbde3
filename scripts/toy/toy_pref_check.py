"""Does DPO raise the toy preference task's gold reward honestly? Gold reward, word salad and KL, per seed.

    python scripts/toy/toy_pref_check.py                          # the DPO row of tgdpo_toy, seeds 0 1 2
    python scripts/toy/toy_pref_check.py --arm tgdpo/a1           # another row of the table
    python scripts/toy/toy_pref_check.py --label "lr 1e-3" trainer.learning_rate=1e-3
    python scripts/toy/toy_pref_check.py --runs multirun/tgdpo_toy/<time>   # every finished run of a table

For each seed: trains `tokalign train experiment=tgdpo_toy +arm=<arm> seed=<seed>` and reads its
eval.json (gold reward of policy and reference, win rate); samples policy and reference again on
the same held-out prompts with the run's eval settings (the same samples the evaluation scored)
and counts word-salad responses (`toy_pref.word_salad`), malformed ones (`toy_pref.malformed`)
and distinct ones; and
estimates KL(policy || reference) per response from samples of the policy at temperature 1.
A seed passes when the policy's gold reward is above the reference's, none of its responses
is word salad and it has not collapsed (over 10% of its responses malformed, responses
averaging under MIN_WORDS words, or fewer than a quarter of them distinct). With --runs, the finished runs found there are analysed
instead (no training). Each invocation appends one record to scripts/results/toy_pref_check.json;
extra arguments are Hydra overrides for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from toylib import append_record, compose

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "scripts" / "results" / "toy_pref_check.json"


def response_figures(prompts: list, responses: list[str]) -> dict:
    from tokalign.data import toy_pref
    from tokalign.data.chat import prompt_text

    words = [len(r.split()) for r in responses]
    return {
        "gold_reward": statistics.fmean(toy_pref.gold_reward(prompt_text(p), r) for p, r in zip(prompts, responses)),
        "word_salad": sum(map(toy_pref.word_salad, responses)),
        "malformed": sum(map(toy_pref.malformed, responses)),
        "distinct": len(set(responses)) / len(responses),
        "mean_words": statistics.fmean(words),
        "examples": responses[:3],
    }


def kl_to_reference(policy, reference, tok, prompts: list, num_samples: int, max_new_tokens: int, seed: int) -> float:
    """Monte Carlo KL(policy || reference) in nats per response: mean over policy samples (temperature 1)
    of the summed log-ratio of the response tokens, up to and including the end-of-turn token."""
    import torch

    from tokalign.data.chat import as_messages

    texts = [tok.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    side, tok.padding_side = tok.padding_side, "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = side
    torch.manual_seed(seed)
    with torch.no_grad():
        seqs = policy.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        width = enc["input_ids"].shape[1]
        response = seqs[:, width:]
        is_eos = response == tok.eos_token_id
        in_response = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to the first end-of-turn token
        mask = torch.cat([enc["attention_mask"].repeat_interleave(num_samples, 0), in_response.long()], 1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)

        def logps(model):
            logits = model(input_ids=seqs, attention_mask=mask, position_ids=positions).logits[:, width - 1 : -1]
            return logits.log_softmax(-1).gather(-1, response[..., None])[..., 0]

        ratio = ((logps(policy) - logps(reference)) * in_response).sum(1)
    return float(ratio.mean())


def train(seed: int, arm: str, run_dir: Path, overrides: list[str]) -> dict:
    """One run in its own process (its wall and CPU time are what a table row costs)."""
    started, cpu = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if not (run_dir / "eval.json").exists():
        cmd = [
            sys.executable,
            "-c",
            "from tokalign.cli import main; main()",
            "train",
            "experiment=tgdpo_toy",
            f"+arm={arm}",
            f"seed={seed}",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "process_s": round(time.time() - started, 1),
        "process_cpu_s": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 1),
    }


def analyse(run_dir: Path, kl_samples: int) -> dict:
    """Gold reward, word salad, malformed and distinct responses of policy and reference; KL; eval.json."""
    from omegaconf import OmegaConf

    from tokalign.data.loading import load_split
    from tokalign.modeling.generation import generate
    from tokalign.modeling.models import load_causal_lm, load_tokenizer, resolve_model

    cfg = OmegaConf.load(run_dir / "resolved.yaml")
    metrics = json.loads((run_dir / "eval.json").read_text())
    data = load_split(cfg.dataset, "prompt", "eval", method=cfg.method.name)  # as evaluate_run
    prompts = list(data["prompt"])[: cfg.eval.num_prompts]
    tok = load_tokenizer(str(run_dir / "model"))
    policy = load_causal_lm(str(run_dir / "model"))
    reference = load_causal_lm(resolve_model(cfg.model, cfg.cache_dir))
    e = cfg.eval
    row = {
        "seed": cfg.seed,
        "eval.json": {k.removeprefix("eval/"): v for k, v in metrics.items() if k.startswith("eval/")},
    }
    for name, model in (("policy", policy), ("reference", reference)):
        samples = generate(
            model,
            tok,
            prompts,
            max_new_tokens=e.max_new_tokens,
            temperature=e.temperature,
            top_p=e.top_p,
            num_samples=e.num_samples,
            batch_size=e.batch_size,
            seed=cfg.seed + 17,
        )
        row[name] = response_figures(prompts, [s[0] for s in samples])
    row["kl_to_reference"] = kl_to_reference(
        policy, reference, tok, prompts, kl_samples, e.max_new_tokens, cfg.seed + 29
    )
    row["train_s"] = json.loads((run_dir / "summary.json").read_text()).get("train/wall_s")
    return row


def verdict(row: dict) -> dict:
    from tokalign.data.toy_pref import MIN_WORDS

    p = row["policy"]
    collapsed = (
        p["malformed"] > 0.1 * row["eval.json"]["num_prompts"] or p["mean_words"] < MIN_WORDS or p["distinct"] < 0.25
    )
    return {
        "above_reference": p["gold_reward"] > row["reference"]["gold_reward"],
        "no_word_salad": p["word_salad"] == 0,
        "collapsed": collapsed,
        "passes": p["gold_reward"] > row["reference"]["gold_reward"] and p["word_salad"] == 0 and not collapsed,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arm", default="baseline/dpo")
    p.add_argument("--kl-samples", type=int, default=4, help="policy samples per prompt for the KL estimate")
    p.add_argument("--label", default="", help="what this measurement tries (stored with it)")
    p.add_argument("--out-dir", default=str(ROOT / "outputs" / "toy_pref_check"))
    p.add_argument(
        "--runs",
        nargs="+",
        help="analyse the finished runs under these dirs (e.g. a reproduce_tgdpo.sh --toy sweep) instead of training",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from omegaconf import OmegaConf

    from tokalign.data import toy_pref

    overrides = ["logger=none", *args.overrides]
    cfg0 = compose(["experiment=tgdpo_toy", f"+arm={args.arm}", *overrides])
    record = {
        "label": args.label,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "arm": args.arm,
        "gold_reward": {n: getattr(toy_pref, n) for n in ("SENTIMENT_CAP", "MIN_WORDS", "MAX_WORDS", "LENGTH_PENALTY")},
        "tiny": OmegaConf.to_container(cfg0.model.tiny),
        "overrides": args.overrides,
        "settings": {
            "method": OmegaConf.to_container(cfg0.method),
            "lr": cfg0.trainer.learning_rate,
            "steps": cfg0.trainer.max_steps,
            "batch": cfg0.trainer.per_device_batch_size,
            "dataset": OmegaConf.to_container(cfg0.dataset, resolve=True),
            "eval": {
                "num_prompts": cfg0.eval.num_prompts,
                "temperature": cfg0.eval.temperature,
                "max_new_tokens": cfg0.eval.max_new_tokens,
            },
        },
        "seeds": {},
    }
    tag = time.strftime("%Y%m%d-%H%M%S")
    if args.runs:
        run_dirs = sorted(d.parent for root in args.runs for d in Path(root).rglob("eval.json"))
        record.update(arm=None, settings=None, runs=[str(d) for d in run_dirs])
    else:
        run_dirs = [Path(args.out_dir) / f"{tag}_{args.arm.replace('/', '_')}_s{seed}" for seed in args.seeds]
    for n, run_dir in enumerate(run_dirs):
        cost = {} if args.runs else train(args.seeds[n], args.arm, run_dir, overrides)
        row = {**analyse(run_dir, args.kl_samples), **cost}
        row["verdict"] = verdict(row)
        record["seeds"][run_dir.name if args.runs else str(row["seed"])] = row
        print(run_dir.name, json.dumps(row), flush=True)
    rows = list(record["seeds"].values())
    record["gold_reward_mean"] = statistics.fmean(r["policy"]["gold_reward"] for r in rows)
    record["gold_reward_ref_mean"] = statistics.fmean(r["reference"]["gold_reward"] for r in rows)
    record["seeds_passing"] = sum(r["verdict"]["passes"] for r in rows)
    append_record(RESULTS, record)
    print(json.dumps({k: v for k, v in record.items() if k != "seeds"}, default=str))


if __name__ == "__main__":
    main()
