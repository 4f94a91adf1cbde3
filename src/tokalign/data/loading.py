"""Turn `cfg.dataset` into train/eval `datasets.Dataset`s of the shape a method asks for.

Kinds (what a method declares as its `data`):
  sft         prompt, completion
  preference  prompt, chosen, rejected
  prompt      prompt (+ answer where the task has one)
Toy tasks are generated; hub and local data are renamed through `dataset.columns`
(canonical name -> name in the files) and checked before any training starts.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.config import option
from tokalign.data import mixture, toy_math, toy_pref
from tokalign.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet")
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
    """What the data is: a toy task, hub or local (`dataset.path=...` is local whatever the preset); a mixture's
    is its first component's (they share one toy task, or are all hub and local data)."""
    parts = mixture.components(cfg)
    return mixture.task(parts[0][0]) if parts else "local" if cfg.path else str(option(cfg.source))


def describe(cfg: DictConfig) -> str:
    """How errors name the data: the file itself when it is local, else the dataset's name."""
    return f"dataset.path={Path(str(cfg.path)).expanduser()}" if cfg.get("path") else f"dataset {cfg.name!r}"


def response_checks(cfg: DictConfig) -> dict:
    """Named yes/no checks of a response that evaluation reports as shares (the toy preference task's
    reward-hacking detectors: word salad, and text not made of the task's words)."""
    return {"word_salad": toy_pref.word_salad, "malformed": toy_pref.malformed} if task_of(cfg) == "toy_pref" else {}


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
        return [
            {"prompt": r["prompt"], "chosen": r["completion"], "rejected": w["completion"]} for r, w in zip(rows, wrong)
        ]
    return rows


def read_json_rows(path: Path, *, as_list: bool | None = None) -> list[dict]:
    """The objects of a .jsonl file (one per line) or a .json file (a list); every error names file and line."""
    return [row for _, row in _numbered_rows(path, as_list)]


def _numbered_rows(path: Path, as_list: bool | None = None) -> list[tuple[str, dict]]:
    """(where, row) pairs: `file:line` for JSONL, `file: row N` for a JSON list."""
    as_list = path.suffix == ".json" if as_list is None else as_list
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); re-encode the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    numbered = [(1, text)] if as_list else [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = []
    for number, chunk in numbered:
        try:
            value = json.loads(chunk)
        except json.JSONDecodeError as err:
            line = err.lineno if as_list else number
            raise DataError(f"{path}:{line}: broken JSON ({err.msg}, column {err.colno})") from None
        items = value if as_list and isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{path}: row {i + 1}" if as_list else f"{path}:{number}"
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected a JSON object per row, found {type(item).__name__}")
            rows.append((where, item))
    return rows


def _kind_of(value: Any) -> str | None:
    """How a field's value reads, for type messages (None: null, which any type allows)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true/false"
    return {str: "text", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def check_rows(numbered: list[tuple[str, dict]], fields: tuple[str, ...]) -> None:
    """Every field has one type in every row (a table cannot hold both), and the fields a method reads
    (`fields`, names in the files) are text or chat messages ({role, content}); a DataError names the
    file, the line and the field."""
    first: dict[str, tuple[str, str]] = {}
    for where, row in numbered:
        for key, value in row.items():
            kind = _kind_of(value)
            if kind is None:
                continue
            seen = first.setdefault(key, (kind, where))
            if seen[0] != kind:
                raise DataError(
                    f"{where}: field {key!r} is {kind}, but {seen[0]} at {seen[1]}; a field must have one "
                    "type in every row"
                )
            if key in fields:
                _check_text(where, key, value)


def _check_text(where: str, key: str, value: Any) -> None:
    if isinstance(value, str):
        return
    if key == "answer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if not isinstance(value, list):
        raise DataError(
            f"{where}: field {key!r} is {_kind_of(value)} ({str(value)[:40]}); expected text or a list of chat messages"
        )
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(
                f"{where}: field {key!r} message {i} is {_kind_of(message)}; chat messages are "
                "{role, content} objects"
            )
        missing = [k for k in ("role", "content") if k not in message]
        if missing:
            raise DataError(
                f"{where}: field {key!r} message {i} has no {' and no '.join(map(repr, missing))}; chat "
                "messages are {role, content} objects"
            )
        if not isinstance(message["role"], str) or not isinstance(message["content"], (str, list)):
            raise DataError(f"{where}: field {key!r} message {i}: role must be text and content text")


def _read_fields(cfg: DictConfig, kind: str | None) -> tuple[str, ...]:
    """The names in the files of the columns `kind` reads."""
    if kind is None:
        return ()
    mapping = OmegaConf.to_container(cfg.columns) if cfg.columns else {}
    return tuple(mapping.get(c, c) for c in REQUIRED[kind] + OPTIONAL[kind] + ("prompt",))


def _load_files(cfg: DictConfig, split: str, kind: str | None = None):
    """A file, or a directory whose files are named by split (train.jsonl, test.jsonl) or not at all."""
    import datasets

    path = Path(str(cfg.path)).expanduser()
    if not path.exists():
        raise DataError(f"dataset.path={path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES) if path.is_dir() else [path]
    if not files or files[0].suffix not in SUFFIXES:
        raise DataError(f"dataset.path={path}: no {'/'.join(SUFFIXES)} file found")
    named = [f for f in files if f.stem == split]
    if named:
        files = named
    elif split != cfg.split:
        raise DataError(f"dataset.path={path}: no file named {split}.jsonl/.parquet for split {split!r}")
    if files[0].suffix != ".parquet":
        numbered = [pair for f in files for pair in _numbered_rows(f)]
        check_rows(numbered, _read_fields(cfg, kind))
        return datasets.Dataset.from_list([row for _, row in numbered])
    try:
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read it as Parquet ({err})") from None
    fields = [c for c in _read_fields(cfg, kind) if c in ds.column_names]
    check_rows([(f"{path}: row {i + 1}", row) for i, row in enumerate(ds.select_columns(fields))], tuple(fields))
    return ds


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
    """Preference data whose prompt is the shared start of chosen and rejected: HH-RLHF style (no
    prompt column), or whole conversations beside a plain-text prompt (UltraFeedback-binarized),
    where the conversations' own turns are the prompt in the format the responses need."""
    found = ds.column_names
    pair = [mapping.get(c, c) for c in ("chosen", "rejected")]
    prompt = mapping.get("prompt", "prompt")
    if not set(pair) <= set(found) or not len(ds):
        return ds
    conversations = isinstance(ds[0][pair[0]], list)
    if prompt in found and not (conversations and isinstance(ds[0][prompt], str)):
        return ds
    from trl.data_utils import maybe_extract_prompt

    if prompt in found:
        ds = ds.remove_columns(prompt)
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
            f"{describe(cfg)} cannot feed method={method}: missing column(s) "
            f"{', '.join(repr(mapping.get(c, c)) for c in missing)}.\n  expected: {expected}\n"
            f"  found:    {', '.join(found)}\n  map them with dataset.columns.<expected>=<found column>"
        )
    renames = {mapping.get(c, c): c for c in wanted if mapping.get(c, c) in found and mapping.get(c, c) != c}
    return ds.rename_columns(renames) if renames else ds


def held_out(cfg: DictConfig, total: int) -> int:
    """Rows held out of a split of `total` rows for evaluation (no `eval_split`): a share, capped, never all."""
    if total < 2:
        raise DataError(
            f"{describe(cfg)} has {total} row(s): too few to train and evaluate; add rows or give dataset.eval_split"
        )
    return min(cfg.num_eval, max(1, math.floor(cfg.eval_fraction * total)), total - 1)


def load_split(cfg: DictConfig, kind: str, split: str = "train", *, method: str = "this method") -> Any:
    """One split ("train" or "eval") as a `datasets.Dataset` with canonical columns; `method` names the reader in errors.

    Without `dataset.eval_split`, the last `held_out` rows of the training split are the evaluation rows.
    """
    return _split(cfg, kind, split, method)[0]


def load_training_rows(cfg: DictConfig, kind: str, *, method: str = "this method") -> tuple[Any, str]:
    """The training split, and a sentence saying how many of its rows were held out for evaluation."""
    return _split(cfg, kind, "train", method)


def _split(cfg: DictConfig, kind: str, split: str, method: str) -> tuple[Any, str]:
    import datasets

    kind = option(kind)
    parts = mixture.components(cfg)
    if parts:
        return _mixed(cfg, parts, kind, split, method)
    source = task_of(cfg)
    if source in ("toy_pref", "toy_math"):
        return datasets.Dataset.from_list(_chat(toy_rows(cfg, kind, split))), ""
    if source == "local" and not cfg.path:
        raise DataError("dataset.source=local needs dataset.path=/file.jsonl (or .parquet, or a directory)")
    load = functools.partial(_load_files, kind=kind) if source == "local" else _load_hub
    note = ""
    if cfg.eval_split:
        ds = check_columns(load(cfg, cfg.split if split == "train" else cfg.eval_split), cfg, kind, method)
    else:
        full = check_columns(load(cfg, cfg.split), cfg, kind, method)
        held = held_out(cfg, len(full))
        ds = full.select(range(len(full) - held) if split == "train" else range(len(full) - held, len(full)))
        note = (
            f"{held} of the {len(full)} rows of split {cfg.split!r} held out for evaluation "
            f"(dataset.eval_fraction={cfg.eval_fraction}, at most dataset.num_eval={cfg.num_eval})"
        )
    if split == "train" and cfg.num_train:
        ds = ds.select(range(min(cfg.num_train, len(ds))))
    return ds, note


def _mixed(cfg: DictConfig, parts: list, kind: str, split: str, method: str) -> tuple[Any, str]:
    """A weighted mixture's split (tokalign.data.mixture), and a sentence giving its composition."""
    loaded = [_split(component, kind, split, method)[0] for component, _ in parts]
    weights = [w for _, w in parts]
    whole = min(math.floor(len(d) * sum(weights) / w) for d, w in zip(loaded, weights))
    total = (cfg.num_train or None) if split == "train" else min(cfg.num_eval, whole)
    data, counts = mixture.mix(loaded, weights, total, cfg.seed)
    said = ", ".join(
        f"{n} from {describe(c)} (weight {w:g}, {len(d)} rows{', repeated' if n > len(d) else ''})"
        for (c, w), d, n in zip(parts, loaded, counts)
    )
    return data, f"{split} mixture of {len(data)} rows: {said}"


def _empty(value: Any) -> bool:
    if isinstance(value, list):
        return not value or all(_empty(m.get("content") if isinstance(m, dict) else m) for m in value)
    return value is None or (isinstance(value, str) and not value.strip())


def _prompt_tokens(tokenizer, messages: list[dict]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def screen(ds, kind: str, tokenizer, max_length: int) -> tuple[Any, dict[str, int]]:
    """Drop the rows a method cannot train on, counting why: an empty field, chosen == rejected, or a
    prompt that leaves no room for a response within `max_length` tokens."""
    from tokalign.data.chat import as_messages

    kind = option(kind)
    counts = {"empty field": 0, "chosen == rejected": 0, f"prompt >= trainer.max_length={max_length} tokens": 0}
    keep = []
    for i, row in enumerate(ds):
        fields = [c for c in REQUIRED[kind] + ("prompt",) if c in row]
        if any(_empty(row[c]) for c in fields):
            counts["empty field"] += 1
        elif kind == "preference" and row["chosen"] == row["rejected"]:
            counts["chosen == rejected"] += 1
        elif "prompt" in row and _prompt_tokens(tokenizer, as_messages(row["prompt"])) >= max_length:
            counts[f"prompt >= trainer.max_length={max_length} tokens"] += 1
        else:
            keep.append(i)
    if not keep:
        reasons = ", ".join(f"{n} ({why})" for why, n in counts.items() if n)
        raise DataError(f"no usable training row is left: dropped {reasons}")
    return (ds if len(keep) == len(ds) else ds.select(keep)), counts
