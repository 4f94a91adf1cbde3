"""Launchers: spawn commands, multi-node settings, impossible settings, models and datasets out of reach."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config as _compose
from tokalign.errors import ConfigError
from tokalign.runtime.launch import worker_command
from tokalign.runtime.nodes import first_host, rendezvous


def _cfg(*overrides: str):
    cfg = _compose(*overrides)
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["launcher=deepspeed", "launcher.offload_param=cpu"], "zero_stage=3"),
        (["launcher=deepspeed", "launcher.zero_stage=4"], "launcher.zero_stage=4 is out of range"),
        (["launcher=deepspeed", "launcher.zero_stage=0", "launcher.offload_optimizer=cpu"], "zero_stage >= 1"),
        (["launcher=ddp", "launcher.runner=deepspeed"], "launcher=deepspeed"),
        (["launcher=ddp", "launcher.num_nodes=2"], "multi-node"),
        (["launcher=deepspeed", "launcher.hostfile=/h"], "runner=deepspeed"),
        (["launcher=ddp", "launcher.num_gpus=0"], "launcher.num_gpus=0 is out of range: expected >= 1"),
    ],
)
def test_impossible_launcher_settings_fail_before_spawning(monkeypatch, overrides, message):
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("SLURM_NODEID", raising=False)
    with pytest.raises(ConfigError, match=message):
        _cfg(*overrides)


def test_single_node_commands_per_runner():
    path = Path("/runs/r1/resolved.yaml")
    ddp = worker_command(_cfg("launcher=ddp", "launcher.num_gpus=2"), path, "127.0.0.1", 1234)
    assert "--multi_gpu" in ddp and "--num_processes=2" in ddp and "--cpu" not in ddp
    assert ddp[-3:] == ["-m", "tokalign.runtime.worker", str(path)]
    ds = worker_command(_cfg("launcher=deepspeed", "launcher.num_gpus=8", "trainer.precision=bf16"), path, "h", 1)
    assert "--use_deepspeed" in ds and "--deepspeed_config_file=/runs/r1/deepspeed.json" in ds
    assert "--mixed_precision=bf16" in ds and "--num_processes=8" in ds
    native = worker_command(
        _cfg("launcher=deepspeed", "launcher.runner=deepspeed", "launcher.num_gpus=4"), path, "h", 1
    )
    assert (
        native[1:3] == ["-m", "deepspeed.launcher.runner"] and "--no_local_rank" in native and "--num_gpus=4" in native
    )
    assert native[-3:] == ["--module", "tokalign.runtime.worker", str(path)]
    tr = worker_command(_cfg("launcher=ddp", "launcher.runner=torchrun", "launcher.num_gpus=2"), path, "h", 7)
    assert tr[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in tr and "--master_port=7" in tr


def test_slurm_environment_sets_node_rank_and_master(monkeypatch):
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[03-04]")
    cfg = _cfg("launcher=deepspeed", "launcher.num_nodes=2", "launcher.num_gpus=8")
    addr, port = rendezvous(cfg.launcher)
    assert (cfg.launcher.node_rank, addr, port) == (1, "gpu03", 29500)
    cmd = worker_command(cfg, Path("/r/resolved.yaml"), addr, port)
    assert {
        "--num_processes=16",
        "--num_machines=2",
        "--machine_rank=1",
        "--main_process_ip=gpu03",
        "--deepspeed_multinode_launcher=standard",
    } <= set(cmd)
    native = worker_command(
        _cfg("launcher=deepspeed", "launcher.runner=deepspeed", "launcher.num_nodes=2"),
        Path("/r/resolved.yaml"),
        addr,
        port,
    )
    assert {
        "--no_ssh",
        "--node_rank=1",
        "--num_nodes=2",
        "--master_addr=gpu03",
        "--hostfile=/r/deepspeed_hostfile",
    } <= set(native)


def test_hostfile_runs_every_node_from_one():
    cmd = worker_command(
        _cfg(
            "launcher=deepspeed",
            "launcher.runner=deepspeed",
            "launcher.num_nodes=2",
            "launcher.hostfile=/etc/hosts.ds",
            "launcher.master_addr=n1",
        ),
        Path("/r/c.yaml"),
        "n1",
        29500,
    )
    assert "--hostfile=/etc/hosts.ds" in cmd and "--no_ssh" not in cmd


@pytest.mark.parametrize(
    "nodelist,host", [("gpu[03-05,9],cpu1", "gpu03"), ("node7", "node7"), ("a[1,2]", "a1"), ("n1,n2", "n1")]
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_single_node_picks_a_free_port():
    addr, port = rendezvous(_cfg("launcher=ddp", "launcher.num_gpus=2").launcher)
    assert addr == "127.0.0.1" and port > 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["model.path=meta-llama/Llama-3-8B"],
            "model.path=meta-llama/Llama-3-8B is not a Hugging Face checkpoint directory",
        ),
        (
            ["model=llama3_8b_instruct", "launcher.num_gpus=8"],
            "model.hub_id=meta-llama/Meta-Llama-3-8B-Instruct is not in the "
            "local Hugging Face cache and HF_HUB_OFFLINE=1",
        ),
        (["dataset=hh_rlhf"], "dataset.hub_id=Anthropic/hh-rlhf is not in the local Hugging Face cache"),
    ],
)
def test_a_model_or_dataset_out_of_reach_is_one_line_before_any_worker(
    tmp_path, capsys, monkeypatch, overrides, message
):
    """Offline (HF_HUB_OFFLINE=1, as the tests run), a hub id that is not cached fails in the launcher's parent."""
    from huggingface_hub import constants

    from tests.conftest import run_cli

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit) as exit_:
        run_cli("train", "launcher=ddp", "logger=none", f"hydra.run.dir={tmp_path}", *overrides)
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert "launching" not in out and not (tmp_path / "resolved.yaml").exists()  # nothing was spawned
