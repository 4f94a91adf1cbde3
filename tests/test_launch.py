"""Launcher configs: DeepSpeed JSON from the trainer's numbers, spawn commands, multi-node settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config as _compose
from tokalign.config import ConfigError
from tokalign.launch import check, deepspeed_config, first_host, rendezvous, worker_command


def _cfg(*overrides: str):
    cfg = _compose(*overrides)
    OmegaConf.resolve(cfg)
    return cfg


def test_deepspeed_json_takes_every_number_from_the_config():
    cfg = _cfg("launcher=deepspeed", "launcher.zero_stage=3", "launcher.num_gpus=8", "trainer.per_device_batch_size=4",
               "trainer.gradient_accumulation_steps=8", "trainer.max_grad_norm=0.5", "trainer.precision=bf16",
               "launcher.offload_optimizer=cpu", "launcher.offload_param=cpu", "trainer.learning_rate=1e-6",
               "+launcher.config={zero_optimization: {overlap_comm: true}}")
    ds = deepspeed_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 8
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] and zero["overlap_comm"] is True
    assert ds["optimizer"]["params"]["lr"] == 1e-6  # offloaded: DeepSpeed's AdamW at the trainer's rate
    assert "train_batch_size" not in ds


def test_zero2_without_offload_keeps_the_torch_optimizer():
    ds = deepspeed_config(_cfg("launcher=deepspeed", "trainer.precision=fp16"))
    assert ds["zero_optimization"]["stage"] == 2 and "optimizer" not in ds and ds["fp16"]["enabled"]
    assert "offload_param" not in ds["zero_optimization"]


@pytest.mark.parametrize("overrides,message", [
    (["launcher=deepspeed", "launcher.offload_param=cpu"], "zero_stage=3"),
    (["launcher=deepspeed", "launcher.zero_stage=4"], "0, 1, 2 or 3"),
    (["launcher=deepspeed", "launcher.zero_stage=0", "launcher.offload_optimizer=cpu"], "zero_stage >= 1"),
    (["launcher=ddp", "launcher.runner=deepspeed"], "launcher=deepspeed"),
    (["launcher=ddp", "launcher.num_nodes=2"], "multi-node"),
    (["launcher=deepspeed", "launcher.hostfile=/h"], "runner=deepspeed"),
    (["launcher=ddp", "launcher.num_gpus=0"], "num_gpus >= 1"),
])
def test_impossible_launcher_settings_fail_before_spawning(monkeypatch, overrides, message):
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("SLURM_NODEID", raising=False)
    with pytest.raises(ConfigError, match=message):
        check(_cfg(*overrides))


def test_single_node_commands_per_runner():
    path = Path("/runs/r1/resolved.yaml")
    ddp = worker_command(_cfg("launcher=ddp", "launcher.num_gpus=2"), path, "127.0.0.1", 1234)
    assert "--multi_gpu" in ddp and "--num_processes=2" in ddp and "--cpu" not in ddp
    assert ddp[-3:] == ["-m", "tokalign.worker", str(path)]
    ds = worker_command(_cfg("launcher=deepspeed", "launcher.num_gpus=8", "trainer.precision=bf16"), path, "h", 1)
    assert "--use_deepspeed" in ds and "--deepspeed_config_file=/runs/r1/deepspeed.json" in ds
    assert "--mixed_precision=bf16" in ds and "--num_processes=8" in ds
    native = worker_command(_cfg("launcher=deepspeed", "launcher.runner=deepspeed", "launcher.num_gpus=4"), path, "h", 1)
    assert Path(native[0]).name == "deepspeed" and "--no_local_rank" in native and "--num_gpus=4" in native
    assert native[-3:] == ["--module", "tokalign.worker", str(path)]
    tr = worker_command(_cfg("launcher=ddp", "launcher.runner=torchrun", "launcher.num_gpus=2"), path, "h", 7)
    assert tr[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in tr and "--master_port=7" in tr


def test_slurm_environment_sets_node_rank_and_master(monkeypatch):
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[03-04]")
    cfg = _cfg("launcher=deepspeed", "launcher.num_nodes=2", "launcher.num_gpus=8")
    check(cfg)
    addr, port = rendezvous(cfg.launcher)
    assert (cfg.launcher.node_rank, addr, port) == (1, "gpu03", 29500)
    cmd = worker_command(cfg, Path("/r/resolved.yaml"), addr, port)
    assert {"--num_processes=16", "--num_machines=2", "--machine_rank=1", "--main_process_ip=gpu03",
            "--deepspeed_multinode_launcher=standard"} <= set(cmd)
    native = worker_command(_cfg("launcher=deepspeed", "launcher.runner=deepspeed", "launcher.num_nodes=2"),
                            Path("/r/resolved.yaml"), addr, port)
    assert {"--no_ssh", "--node_rank=1", "--num_nodes=2", "--master_addr=gpu03"} <= set(native)


def test_hostfile_runs_every_node_from_one():
    cmd = worker_command(_cfg("launcher=deepspeed", "launcher.runner=deepspeed", "launcher.num_nodes=2",
                              "launcher.hostfile=/etc/hosts.ds", "launcher.master_addr=n1"), Path("/r/c.yaml"), "n1", 29500)
    assert "--hostfile=/etc/hosts.ds" in cmd and "--no_ssh" not in cmd


@pytest.mark.parametrize("nodelist,host", [("gpu[03-05,9],cpu1", "gpu03"), ("node7", "node7"), ("a[1,2]", "a1"), ("n1,n2", "n1")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_single_node_picks_a_free_port():
    addr, port = rendezvous(_cfg("launcher=ddp", "launcher.num_gpus=2").launcher)
    assert addr == "127.0.0.1" and port > 0
