"""vLLM behind `rollout.engine=vllm`: whether it can run, TRL's arguments, and tokalign's own engine.

vLLM is an optional, GPU-only dependency (`pip install 'tokalign[vllm]'`), imported only when a
run asks for it. Three kinds of callers:
- GRPO-family methods hand generation to TRL's vLLM integration (`trl_vllm_args`);
- the PPO loop keeps a colocated engine next to the policy it trains and, before each rollout,
  streams the policy's current weights into it (`VLLMEngine.sync`, `policy_weights`);
- evaluation and on-policy pairs sample from a checkpoint directory with a standalone engine.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

from tokalign.config import option
from tokalign.errors import ConfigError, UserError


class EngineUnavailable(UserError, RuntimeError):
    """rollout.engine=vllm on a machine where vLLM cannot run."""


def uses_vllm(rollout: Any) -> bool:
    """Whether a run's `rollout` group (None for run dirs older than the group) asks for vLLM."""
    return rollout is not None and option(rollout.engine) == "vllm"


def unavailable_reason() -> str | None:
    """Why vLLM cannot run here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'tokalign[vllm]')"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and this machine has none"
    return None


def require_vllm(what: str) -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise EngineUnavailable(f"rollout.engine=vllm for {what}: {reason}; on this machine use rollout.engine=hf")


def trl_vllm_args(rollout: Any) -> dict[str, Any]:
    """TRL 1.16 GRPOConfig arguments for the run's rollout group; empty for the HF engine (TRL's default)."""
    if not uses_vllm(rollout):
        return {}
    return {
        "use_vllm": True,
        "vllm_mode": option(rollout.mode),
        "vllm_gpu_memory_utilization": rollout.gpu_memory_utilization,
        "vllm_tensor_parallel_size": rollout.tensor_parallel_size,
        "vllm_enable_sleep_mode": rollout.enable_sleep_mode,
        "vllm_server_host": rollout.server_host,
        "vllm_server_port": rollout.server_port,
        "vllm_server_timeout": rollout.server_timeout,
    }


@contextlib.contextmanager
def _gathered(params: list):
    """Whole ZeRO-3-partitioned parameters inside the block (a collective); a no-op for plain ones."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            yield
    else:
        yield


def policy_weights(model) -> Iterator[tuple[str, Any]]:
    """The policy's full tensors under the names of its saved checkpoint, which vLLM's loaders take.

    DDP and DeepSpeed wrappers are looked through; ZeRO-3 shards are gathered one module or
    parameter at a time, so every rank must walk the whole iterator; a LoRA model yields its base
    weights with the active adapters added (W + ΔW, the model itself is not modified). Tied
    weights come once, as in the checkpoint. A yielded tensor is valid until the next one.
    """
    import torch

    model = getattr(model, "module", model)
    done: set[int] = set()
    if hasattr(model, "peft_config"):
        from peft.tuners.lora import LoraLayer

        model = model.get_base_model()
        for prefix, module in model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            params = list(module.parameters())
            with _gathered(params), torch.no_grad():
                weight = module.base_layer.weight.detach()
                for adapter in [] if module.merged else module.active_adapters:
                    if adapter in module.lora_A:
                        weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
                yield f"{prefix}.weight", weight
                if getattr(module.base_layer, "bias", None) is not None:
                    yield f"{prefix}.bias", module.base_layer.bias.detach()
            done.update(id(p) for p in params)
    for name, param in model.named_parameters():
        if id(param) not in done:
            with _gathered([param]):
                yield name, param.detach()


def _distributed_env() -> None:
    """The variables vLLM's external launcher reads; launchers set them, a single process gets its own."""
    import socket

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def llm_kwargs(
    model_path: str,
    rollout: Any,
    *,
    colocated: bool,
    seed: int = 0,
    dtype: str = "auto",
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """vLLM `LLM` arguments for an engine over `model_path`.

    Colocated (the PPO loop): one engine per training process on that process's GPU, started by
    the training launcher (vLLM's external launcher), as TRL's colocate mode does. Standalone
    (evaluation, on-policy pairs): vLLM's own workers, `tensor_parallel_size` GPUs.
    """
    kwargs: dict[str, Any] = dict(
        model=model_path,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        max_model_len=max_model_len,
        trust_remote_code=trust_remote_code,
    )
    if not colocated:
        return kwargs | dict(tensor_parallel_size=rollout.tensor_parallel_size)
    if option(rollout.mode) != "colocate":
        raise ConfigError(
            "rollout.mode=server serves the GRPO family (TRL's vLLM client); "
            "the PPO loop samples from a colocated engine: use rollout.mode=colocate"
        )
    if rollout.tensor_parallel_size != 1:
        raise ConfigError(
            f"rollout.tensor_parallel_size={rollout.tensor_parallel_size}: the PPO loop's colocated "
            "engine runs on its own process's GPU; use 1"
        )
    return kwargs | dict(
        distributed_executor_backend="external_launcher",
        max_num_seqs=max_num_seqs,
        enable_sleep_mode=rollout.enable_sleep_mode,
    )


class VLLMEngine:
    """A vLLM `LLM` sampling token ids for tokalign's own loops, and the weights it holds.

    Colocated (the PPO loop), it is started from the policy's checkpoint directory and follows
    the policy through `sync`, which pushes `policy_weights` whenever the policy has moved on.
    With sleep mode it gives its memory back between rollouts (level 2 drops the weights, so
    every rollout pushes them again). Standalone, it samples from its checkpoint as it is.
    """

    def __init__(self, llm, *, sleeps: bool = False):
        self.llm, self.sleeps = llm, sleeps
        self.version: int | None = 0  # the policy update whose weights the engine holds (0: the checkpoint's)
        if sleeps:
            llm.sleep(level=2)
            self.version = None

    @classmethod
    def start(cls, model_path: str, rollout: Any, *, colocated: bool, **settings: Any) -> "VLLMEngine":
        """An engine over `model_path` (`settings`: those of `llm_kwargs`); EngineUnavailable where vLLM cannot run."""
        kwargs = llm_kwargs(model_path, rollout, colocated=colocated, **settings)
        require_vllm("PPO rollouts" if colocated else "sampling")
        if colocated:
            _distributed_env()
        from vllm import LLM

        return cls(LLM(**kwargs), sleeps=colocated and rollout.enable_sleep_mode)

    def sync(self, model, version: int) -> bool:
        """Give the engine the policy's weights after `version` updates, unless it holds them; True if pushed."""
        if version == self.version:
            return False
        if self.sleeps:
            import torch

            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        for name, tensor in policy_weights(model):
            runner.model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()
        self.version = version
        return True

    def sample(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int = 1,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> list[list[int]]:
        """`n` completions (token ids, EOS included when reached) per prompt, prompt-major; greedy at temperature 0.

        `seed` seeds prompt i's request with seed + i, so that a rerun samples the same tokens.
        Callers decode with their own tokenizer, so vLLM does not detokenize.
        """
        if self.version is None:
            raise RuntimeError("the engine holds no weights: call sync(policy, version) before sample")
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=n,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=None if seed is None else seed + i,
                detokenize=False,
            )
            for i in range(len(prompt_ids))
        ]
        if self.sleeps:
            self.llm.wake_up(tags=["kv_cache"])
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=params, use_tqdm=False
        )
        if self.sleeps:
            self.llm.sleep(level=2)
            self.version = None
        return [list(c.token_ids) for out in outputs for c in out.outputs]

    def close(self) -> None:
        """Stop the engine and give its GPU memory back."""
        import torch

        engine = getattr(self.llm, "llm_engine", None)
        if hasattr(engine, "engine_core") and hasattr(engine.engine_core, "shutdown"):
            engine.engine_core.shutdown()
        del self.llm
        gc.collect()
        torch.cuda.empty_cache()
