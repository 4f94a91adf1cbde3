"""Every reward lookup in one place, with one spelling for PPO, GRPO, evaluation and on-policy pairs.

A reward spec (`method.reward`, `eval.reward`, `dataset.on_policy.reward`) is one of

    task                          the dataset's own reward (toy_pref: gold, toy_math: exact_match)
    gold | exact_match | math_verify   a built-in reward
    model:<path>                  a reward model: a model directory or a method=reward run directory
    <module>:<function>           any importable function with TRL's reward signature
                                  `(prompts, completions, **columns) -> list[float]` (or module.function)

or a mapping `{reward: <one of those>, weight: 0.5, <keyword>: <value>}` (keywords are bound to
the function), or a list of specs, whose weighted sum is the reward (GRPO logs each term).
The spellings of earlier releases (`method.rewards=[{_target_: ...}]`, `method.reward=model` with
`method.reward_model=<path>`, `eval.reward_model=<path>`) still work and say what to write instead.

A `module:function` is the user's code: it is called through `checked`, so an exception, a
wrong signature, or a result that is not one finite number per completion stops the run in one
line naming the function and the row. A run directory's config is data: inside
`run_code(cfg, ...)` the functions it names are imported only when the reader trusts it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
import math
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from tokalign.data import toy_math, toy_pref
from tokalign.data.chat import as_messages, prompt_text
from tokalign.errors import ConfigError, RewardError

_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def gold_reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """The toy preference task's readable gold reward (tokalign.data.toy_pref.gold_reward)."""
    return [toy_pref.gold_reward(prompt_text(p), _text(c)) for p, c in zip(prompts, completions)]


def exact_match(prompts: list[Any], completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """1 when the completion's final answer equals the reference answer, else 0."""
    return [toy_math.exact_match_reward(_text(c), a) for c, a in zip(completions, answer)]


def math_verify_reward(prompts: list[Any], completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """Symbolic equivalence of the completion's answer and the reference (math-verify), for math RL sets."""
    from math_verify import parse, verify

    return [float(verify(parse(str(a)), parse(_text(c)))) for c, a in zip(completions, answer)]


BUILT_IN = {"gold": gold_reward, "exact_match": exact_match, "math_verify": math_verify_reward}
VERIFIABLE = {"exact_match", "math_verify"}  # rewards in {0, 1}: their mean is an accuracy
TASK_REWARD = {"toy_pref": "gold", "toy_math": "exact_match"}


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a sequence-classification reward model (method=reward)."""

    __name__ = "reward_model"

    def __init__(self, path: str, batch_size: int = 32):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        from tokalign.modeling.lora import load_pretrained

        self.model = load_pretrained(AutoModelForSequenceClassification, path, dtype=torch.float32, num_labels=1).eval()
        if self.model.config.pad_token_id is None:  # an adapter's base: a causal LM's config
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        import torch

        texts = [
            self.tokenizer.apply_chat_template(
                as_messages(p) + [{"role": "assistant", "content": _text(c)}], tokenize=False
            )
            for p, c in zip(prompts, completions)
        ]
        scores: list[float] = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[i : i + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
                )
                scores += self.model(**enc.to(self.model.device)).logits[:, 0].float().tolist()
        return scores


def resolve_reward_model(path: str) -> str:
    """A model directory (a LoRA adapter too), or a method=reward run directory (its `model/`)."""
    from tokalign.modeling.lora import is_model_dir

    p = Path(path).expanduser()
    if is_model_dir(p / "model"):
        return str(p / "model")
    if is_model_dir(p):
        return str(p)
    raise ConfigError(f"reward model {path}: neither a model directory nor a run directory with model/")


@dataclass
class Term:
    """One parsed reward: its spelling, weight and keyword arguments."""

    reward: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How metrics call it: the built-in's name, `reward_model`, or the function's name."""
        if self.reward.startswith("model:"):
            return "reward_model"
        return self.reward if self.reward in BUILT_IN or self.reward == "task" else re.split(r"[:.]", self.reward)[-1]


def parse(spec: Any, where: str) -> list[Term]:
    """The terms of a reward spec, checked for spelling only (nothing is imported or loaded)."""
    if isinstance(spec, (DictConfig, ListConfig)):
        spec = OmegaConf.to_container(spec, resolve=True)
    if spec is None or spec == []:
        spec = "task"
    items = spec if isinstance(spec, list) else [spec]
    terms = []
    for item in items:
        if isinstance(item, dict):
            item = dict(item)
            name, weight = item.pop("reward", None), item.pop("weight", 1.0)
            term = Term(name, weight, item)
        else:
            term = Term(item)
        if (
            not isinstance(term.reward, str)
            or not isinstance(term.weight, (int, float))
            or isinstance(term.weight, bool)
            or not math.isfinite(term.weight)
        ):
            raise ConfigError(
                f"{where}: {item!r} is not a reward; expected a name, model:<path>, module:function, "
                "or {reward: ..., weight: ...}"
            )
        name = term.reward
        if not (
            name == "task" or name in BUILT_IN or (name.startswith("model:") and len(name) > 6) or _FUNCTION.match(name)
        ):
            raise ConfigError(
                f"{where}={name} is not a reward: expected task, {', '.join(BUILT_IN)}, model:<path> or module:function"
            )
        terms.append(term)
    return terms


def _load(term: Term, dataset: DictConfig, where: str) -> Callable:
    from tokalign.data.loading import task_of

    name = term.reward
    if name == "task":
        task = task_of(dataset)
        if task not in TASK_REWARD:
            raise ConfigError(
                f"{where}=task, but dataset {dataset.name!r} has no built-in reward: name one, e.g. "
                f"{where}=math_verify, {where}=model:<reward run dir> or {where}=my_module:my_reward"
            )
        name = TASK_REWARD[task]
    if name in BUILT_IN:
        fn = BUILT_IN[name]
    elif name.startswith("model:"):
        fn = RewardModelScorer(resolve_reward_model(name[len("model:") :]))
    else:
        refused = (_refused.get() or {}).get(name)
        if refused is not None:
            key, source = refused
            raise ConfigError(
                f"{key}={name} is code named by {source}; a run directory is data, so it is not imported: "
                f"pass trust_run_code=true if you trust who wrote it, or give your own reward on the "
                "command line (e.g. eval.reward=gold)"
            )
        module, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"{where}={term.reward}: cannot import it ({err})") from None
        except Exception as err:  # the module's own code failed while importing
            raise ConfigError(f"{where}={term.reward}: importing {module} raised {type(err).__name__}: {err}") from None
        if not callable(fn):
            raise ConfigError(f"{where}={term.reward} is not callable")
        fn = checked(fn, f"{where}={term.reward}", term.kwargs)
    if term.kwargs:
        fn = functools.update_wrapper(functools.partial(fn, **term.kwargs), fn)
    return fn


def functions(spec: Any, dataset: DictConfig, where: str) -> tuple[list[Callable], list[float]]:
    """The reward functions of a spec and their weights (what GRPO takes)."""
    terms = parse(spec, where)
    return [_load(t, dataset, where) for t in terms], [float(t.weight) for t in terms]


def reward_function(spec: Any, dataset: DictConfig, where: str) -> Callable:
    """One callable: the weighted sum of the spec's terms (the function itself for a single unweighted term)."""
    fns, weights = functions(spec, dataset, where)
    if len(fns) == 1 and weights[0] == 1.0:
        return fns[0]

    def weighted(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        totals = [0.0] * len(completions)
        for fn, w in zip(fns, weights):
            totals = [t + w * s for t, s in zip(totals, fn(prompts, completions, **columns))]
        return totals

    weighted.__name__ = "+".join(getattr(f, "__name__", "reward") for f in fns)
    return weighted


def is_verifiable(spec: Any, dataset: DictConfig) -> bool:
    """The spec is one built-in verifiable reward (its mean is an accuracy)."""
    from tokalign.data.loading import task_of

    terms = parse(spec, "reward")
    name = terms[0].reward if len(terms) == 1 else None
    return TASK_REWARD.get(task_of(dataset)) in VERIFIABLE if name == "task" else name in VERIFIABLE


def reward_model_path(spec: Any) -> str | None:
    """The reward model's directory when the spec is exactly one `model:` term."""
    terms = parse(spec, "reward")
    if len(terms) == 1 and terms[0].reward.startswith("model:"):
        return resolve_reward_model(terms[0].reward[len("model:") :])
    return None


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; write {new}", FutureWarning, stacklevel=3
    )


def configured(node: DictConfig, where: str) -> Any:
    """The reward spec of a method or eval config, translating the spellings of earlier releases."""
    spec = node.get("reward")
    old_list = node.get("rewards")
    if old_list:  # GRPO's [{_target_: module.function, weight: w, ...}]
        items = OmegaConf.to_container(old_list, resolve=True)
        spec = [
            {"reward": dict(i).pop("_target_", None), **{k: v for k, v in dict(i).items() if k != "_target_"}}
            for i in items
        ]
        _deprecated(f"{where}s=[{{_target_: ...}}]", f"{where}=[{{reward: module:function, weight: ...}}]")
    old_model = node.get("reward_model")
    if old_model:
        if where == "eval.reward":  # an extra scorer beside the task reward
            return spec
        spec = f"model:{old_model}"
        _deprecated(f"{where}=model {where}_model=<path>", f"{where}=model:<path>")
    return spec


def extra_specs(eval_cfg: DictConfig) -> list[Any]:
    """`eval.extra_rewards`, plus the deprecated `eval.reward_model`."""
    extra = list(OmegaConf.to_container(eval_cfg.extra_rewards, resolve=True)) if eval_cfg.get("extra_rewards") else []
    if eval_cfg.get("reward_model"):
        _deprecated("eval.reward_model=<path>", "eval.extra_rewards=[model:<path>]")
        extra.append(f"model:{eval_cfg.reward_model}")
    return extra


# ---------------------------------------------------------------------------------------------
# The user's code: called through a guard, and never imported from a run directory unasked.

_refused: contextvars.ContextVar[dict[str, tuple[str, str]] | None] = contextvars.ContextVar(
    "refused_rewards", default=None
)


def _accepts(fn: Callable, bound: dict) -> bool:
    """`fn` can be called as a reward: (prompts, completions) by name, and any further column by keyword."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        return True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return any(p.kind is p.VAR_KEYWORD for p in params) and {"prompts", "completions"} <= names | set(bound)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(prompt_text(value) if isinstance(value, list) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checked(fn: Callable, name: str, bound: dict | None = None) -> Callable:
    """`fn` called so that whatever goes wrong in it is a RewardError naming it and the row: an exception
    (the first failing row is found by calling it row by row), a result that is not a sequence of one
    number per completion, or a number that is not finite."""
    if inspect.iscoroutinefunction(fn):
        return fn  # TRL awaits async rewards itself
    if not _accepts(fn, bound or {}):
        raise ConfigError(
            f"{name}: a reward is called as fn(prompts, completions, **columns) (with the dataset's "
            f"other columns by name); {getattr(fn, '__name__', 'it')}{inspect.signature(fn)} does not accept that"
        )

    @functools.wraps(fn)
    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        try:
            out = fn(prompts=prompts, completions=completions, **columns)
        except Exception as err:
            raise RewardError(
                f"{name} raised {type(err).__name__}: {err} {_failing_row(fn, prompts, completions, columns)}"
            ) from None
        try:
            values = list(out.tolist() if hasattr(out, "tolist") else out)
        except TypeError:
            raise RewardError(
                f"{name} returned {type(out).__name__}; a reward returns a list with one number per "
                f"completion ({len(completions)} here)"
            ) from None
        if len(values) != len(completions):
            raise RewardError(
                f"{name} returned {len(values)} value(s) for {len(completions)} completion(s); a reward "
                "returns one number per completion"
            )
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RewardError(
                    f"{name} returned {type(v).__name__} {_short(v)} for row {i} (prompt {_short(prompts[i])}); "
                    "a reward returns a number per completion"
                )
            if not math.isfinite(v):
                raise RewardError(
                    f"{name} returned {v} for row {i} (prompt {_short(prompts[i])}, completion "
                    f"{_short(completions[i])}); rewards must be finite numbers"
                )
        return [float(v) for v in values]

    return reward


def _failing_row(fn: Callable, prompts: list[Any], completions: list[Any], columns: dict) -> str:
    """Where a reward call failed: the first row that fails alone, else the whole batch."""
    for i in range(len(completions)):
        row = {k: v[i : i + 1] if isinstance(v, list) and len(v) == len(completions) else v for k, v in columns.items()}
        try:
            fn(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **row)
        except Exception:
            return f"on row {i} (prompt {_short(prompts[i])}, completion {_short(completions[i])})"
    return f"on a batch of {len(completions)} completions (each row alone passes)"


def code_in(cfg: DictConfig) -> list[tuple[str, str]]:
    """(key, module:function) for every function a run config's reward specs name."""
    found = []
    for node, key in (
        (cfg.get("method"), "method.reward"),
        (cfg.get("eval"), "eval.reward"),
        (OmegaConf.select(cfg, "dataset.on_policy"), "dataset.on_policy.reward"),
    ):
        if not isinstance(node, DictConfig):
            continue
        specs = [configured(node, key)] if key != "eval.reward" else [configured(node, key), *extra_specs(node)]
        for spec in specs:
            try:
                terms = parse(spec, key)
            except ConfigError:
                continue  # not a reward at all: loading it fails with its own message
            found += [(key, t.reward) for t in terms if _FUNCTION.match(t.reward) and t.reward not in BUILT_IN]
    return found


@contextlib.contextmanager
def run_code(cfg: DictConfig, source: str, *, trusted: bool, given: Any = None):
    """Inside, the functions `cfg` (read from `source`) names are imported only if `trusted`; those the
    command line names (`given`, a config node of its own) are the user's and always allowed. Trusted
    code is listed on stderr first."""
    allowed = {name for _, name in code_in(OmegaConf.create(given or {}))} if given is not None else set()
    named = [(key, name) for key, name in code_in(cfg) if name not in allowed]
    if trusted and named:
        print(
            f"tokalign: trust_run_code=true: {source} names code that will be imported: "
            + ", ".join(f"{k}={n}" for k, n in named),
            file=sys.stderr,
        )
    token = _refused.set({} if trusted else {name: (key, source) for key, name in named})
    try:
        yield
    finally:
        _refused.reset(token)
