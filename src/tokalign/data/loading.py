"""Turn `cfg.dataset` into train/eval `datasets.Dataset`s of the shape a method asks for.

Kinds (what a method declares as its `data`):
  sft         prompt, completion
  preference  prompt, chosen, rejected
  prompt      prompt (+ answer where the task has one)
Toy tasks are generated; hub and local data are renamed through `dataset.columns`
(canonical name -> name in the files) and checked before any training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.config import option
from tokalign.data import toy_math, toy_pref
from tokalign.errors import DataError

REQUIRED = {"sft": ("prompt", "completion"), "preference": ("chosen", "rejected"), "prompt": ("prompt",)}
OPTIONAL = {"sft": (), "preference": ("prompt",), "prompt": ("answer",)}
DEFAULT_TRAIN = 2000


def _chat(rows: list[dict]) -> list[dict]:
    """Toy rows as conversational records (what TRL trainers expect for chat models)."""
    out = []
    for r in rows:
        rec = dict(r)
        rec["prompt"] = [{"role": "user", "content": r["prompt"]}]
        for key in ("completion", "chosen", "rejected"):
            if key in r:
                rec[key] = [{"role": "assistant", "content": r[key]}]
        out.append(rec)
    return out


def task_of(cfg: DictConfig) -> str:
    """What the data is: a toy task, hub or local (`dataset.path=...` is local whatever the preset)."""
    return "local" if cfg.path else str(option(cfg.source))


def toy_rows(cfg: DictConfig, kind: str, split: str) -> list[dict]:
    """Generated rows; eval prompts use held-out topics / problems and a different seed."""
    n = cfg.num_eval if split == "eval" else (cfg.num_train or DEFAULT_TRAIN)
    seed = cfg.seed + (1_000_003 if split == "eval" else 0)
    if cfg.source == "toy_pref":
        topics = toy_pref.EVAL_TOPICS if split == "eval" else toy_pref.TRAIN_TOPICS
        make = {"sft": toy_pref.sft_rows, "preference": toy_pref.preference_rows, "prompt": toy_pref.prompt_rows}
        return make[kind](n, seed, topics=topics)
    rows = toy_math.rows(n, seed, split=split)
    if kind == "prompt":
        return [{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]
    if kind == "preference":
        wrong = toy_math.rows(n, seed, split=split, noise=1.0)
        return [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": w["completion"]} for r, w in zip(rows, wrong)]
    return rows


def _load_files(cfg: DictConfig, split: str):
    """A file, or a directory whose files are named by split (train.jsonl, test.jsonl) or not at all."""
    import datasets

    path = Path(str(cfg.path)).expanduser()
    files = sorted(p for p in path.iterdir() if p.suffix in {".jsonl", ".json", ".parquet"}) if path.is_dir() else [path]
    if not files or not all(f.exists() for f in files):
        raise DataError(f"dataset.path={path}: no .jsonl/.json/.parquet file found")
    named = [f for f in files if f.stem == split]
    if named:
        files = named
    elif split != cfg.split:
        raise DataError(f"dataset.path={path}: no file named {split}.jsonl/.parquet for split {split!r}")
    fmt = "parquet" if files[0].suffix == ".parquet" else "json"
    return datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train")


def _load_hub(cfg: DictConfig, split: str):
    import datasets

    try:
        return datasets.load_dataset(str(cfg.hub_id), cfg.hub_config, split=split)
    except Exception as err:  # the hub client raises many types; all mean the same here
        raise DataError(
            f"cannot load dataset {cfg.hub_id!r} (split {split!r}) from the Hugging Face Hub: {err}\n"
            "Hub datasets need network access; or download it and pass dataset.path=/local/file.jsonl"
        ) from err


def _with_implicit_prompt(ds, mapping: dict) -> Any:
    """Preference data whose prompt is the shared start of chosen and rejected (HH-RLHF style)."""
    found = ds.column_names
    if mapping.get("prompt", "prompt") in found or not {mapping.get(c, c) for c in ("chosen", "rejected")} <= set(found):
        return ds
    from trl.data_utils import maybe_extract_prompt

    renames = {mapping[c]: c for c in ("chosen", "rejected") if mapping.get(c, c) != c}
    return (ds.rename_columns(renames) if renames else ds).map(maybe_extract_prompt)


def check_columns(ds, cfg: DictConfig, kind: str, method: str):
    """Rename mapped columns to canonical names; fail naming found and expected columns."""
    mapping = OmegaConf.to_container(cfg.columns) if cfg.columns else {}
    if kind in ("preference", "prompt"):
        ds = _with_implicit_prompt(ds, mapping)
        mapping = {k: v for k, v in mapping.items() if v in ds.column_names}
    found = list(ds.column_names)
    wanted = REQUIRED[kind] + OPTIONAL[kind]
    missing = [c for c in REQUIRED[kind] if mapping.get(c, c) not in found]
    if missing:
        expected = ", ".join(f"{c} (looked for {mapping.get(c, c)!r})" for c in REQUIRED[kind])
        raise DataError(
            f"dataset {cfg.name!r} cannot feed method={method}: missing column(s) "
            f"{', '.join(repr(mapping.get(c, c)) for c in missing)}.\n  expected: {expected}\n"
            f"  found:    {', '.join(found)}\n  map them with dataset.columns.<expected>=<found column>"
        )
    renames = {mapping.get(c, c): c for c in wanted if mapping.get(c, c) in found and mapping.get(c, c) != c}
    return ds.rename_columns(renames) if renames else ds


def load_split(cfg: DictConfig, kind: str, split: str = "train", *, method: str = "this method") -> Any:
    """One split ("train" or "eval") as a `datasets.Dataset` with canonical columns; `method` names the reader in errors.

    Without `dataset.eval_split`, the last `num_eval` rows of the train split are held out.
    """
    import datasets

    kind = option(kind)
    source = task_of(cfg)
    if source in ("toy_pref", "toy_math"):
        return datasets.Dataset.from_list(_chat(toy_rows(cfg, kind, split)))
    if source == "local" and not cfg.path:
        raise DataError("dataset.source=local needs dataset.path=/file.jsonl (or .parquet, or a directory)")
    load = _load_files if source == "local" else _load_hub
    if cfg.eval_split:
        ds = check_columns(load(cfg, cfg.split if split == "train" else cfg.eval_split), cfg, kind, method)
    else:
        full = check_columns(load(cfg, cfg.split), cfg, kind, method)
        cut = max(0, len(full) - cfg.num_eval)
        ds = full.select(range(cut) if split == "train" else range(cut, len(full)))
    if split == "train" and cfg.num_train:
        ds = ds.select(range(min(cfg.num_train, len(ds))))
    return ds
