"""The SLURM launcher derives its request from the run's launcher and the partition and renders the
expected sbatch script; a sweep runs end to end through submitit's local executor. The papers'
sweeps (experiment files): tests/app/test_experiments.py. The real scheduler: tests/slurm."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from tests.conftest import run_cli


def _render(tmp_path, monkeypatch, sinfo: str, *overrides: str) -> list[dict]:
    """The sbatch scripts `tokalign train -m hydra/launcher=slurm ...` would submit, one per array.

    The node is described by a stand-in `sinfo` (tests/slurm runs the real scheduler)."""
    from types import SimpleNamespace

    import submitit

    from tokalign.runtime.slurm import TokalignSlurmLauncher

    rendered = []

    def capture(executor, fn, *args):  # nothing is submitted
        rendered.append(
            {
                "sbatch": executor._executor._make_submission_file_text("python -m submitit.core._submit", "uuid"),
                "jobs": len(args[0]),
            }
        )
        return [SimpleNamespace(job_id=f"{len(rendered)}_{i}") for i in range(len(args[0]))]

    def stop(*args):
        raise SystemExit(0)

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    monkeypatch.setattr(TokalignSlurmLauncher, "_wait", stop)
    bin_dir = tmp_path / "bin"  # submitit looks for srun before it renders anything
    bin_dir.mkdir(parents=True)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sinfo").write_text(f"#!/bin/sh\necho '{sinfo}'\n")
    for tool in ("srun", "sinfo"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(SystemExit):
        run_cli("train", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides)
    return rendered


def test_slurm_launcher_renders_one_task_per_node_with_gpus_where_the_partition_has_them(tmp_path, monkeypatch):
    (arr,) = _render(
        tmp_path,
        monkeypatch,
        "gpu|64|512000|gpu:h100:8(S:0-1)|4",
        "method=dpo",
        "method.beta=0.05,0.1,0.5",
        "seed=0,1,2",
        "launcher=deepspeed",
        "launcher.zero_stage=3",
        "launcher.num_gpus=8",
        "launcher.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=proj42",
        "hydra.launcher.timeout_min=90",
    )
    text = arr["sbatch"]
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        "#SBATCH --time=90",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",  # 8 workers x (1 thread, 8 GB)
        "#SBATCH --signal=USR2@120",
        "export OMP_NUM_THREADS=1",
        "srun --unbuffered",
    ):
        assert line in text, line
    assert arr["jobs"] == 9  # beta x seed, one array


def test_slurm_launcher_on_a_cpu_node_asks_no_gpus_and_at_most_the_node(tmp_path, monkeypatch):
    (arr,) = _render(
        tmp_path,
        monkeypatch,
        "debug*|2|20528|(null)|1",
        "launcher=ddp",
        "launcher.num_gpus=4",
        "hydra.launcher.threads_per_worker=2",
        "seed=0,1",
    )
    text = arr["sbatch"]
    assert "--gpus-per-node" not in text and "#SBATCH --cpus-per-task=2" in text  # 4 x 2 threads, capped at 2
    assert "#SBATCH --mem=20GB" in text and "export OMP_NUM_THREADS=1" in text, text  # 4 x 8 GB, capped
    (arr,) = _render(
        tmp_path / "explicit",
        monkeypatch,
        "debug*|2|20528|(null)|1",
        "hydra.launcher.cpus_per_task=16",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.gpus_per_node=1",
    )
    for line in (
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=2GB",
        "#SBATCH --gpus-per-node=1",
        "export OMP_NUM_THREADS=16",
    ):
        assert line in arr["sbatch"], line  # explicit values are never capped


def test_points_needing_different_resources_go_in_separate_arrays(tmp_path, monkeypatch):
    arrays = _render(
        tmp_path, monkeypatch, "debug*|2|20528|(null)|1", "launcher=ddp", "launcher.num_gpus=1,2", "seed=0,1"
    )
    assert [a["jobs"] for a in arrays] == [2, 2]  # one array per request, two seeds each
    assert "#SBATCH --cpus-per-task=1" in arrays[0]["sbatch"] and "#SBATCH --mem=8GB" in arrays[0]["sbatch"]
    assert "#SBATCH --cpus-per-task=2" in arrays[1]["sbatch"] and "#SBATCH --mem=16GB" in arrays[1]["sbatch"]


def test_point_names_identify_a_point_by_its_overrides():
    from tokalign.runtime.slurm import POINT_EXCLUDE, point_name

    a = point_name(["method=dpo", "seed=2", "method.beta=0.1", "resume=auto", "logger=none", "eval.at_end=False"])
    assert a == "method.beta=0.1,method=dpo,seed=2"  # sorted; resume/logger/eval do not make a point
    assert point_name(["seed=2", "method.beta=0.1", "method=dpo"]) == a  # order does not matter
    assert point_name(["+arm=tgdpo/a1", "model.path=/data/m"], POINT_EXCLUDE) == "+arm=tgdpo%a1,model.path=%data%m"
    assert point_name([]) == "default"
    long = point_name([f"method.k{i}={i}" for i in range(40)])
    assert len(long) <= 120 and long != point_name([f"method.k{i}={i}" for i in range(41)])


def test_partition_limits_request_and_never_start_reasons():
    from omegaconf import OmegaConf

    from tokalign.runtime.slurm import never_starts, read_sinfo, request_for

    sinfo = "debug*|2|20528|(null)|1\ngpu|64|512000|gpu:a100:4(S:0)|2\ngpu|128|1024000|gpu:a100:8(S:0-1)|3\n"
    assert read_sinfo(sinfo, None).cpus == 2 and not read_sinfo(sinfo, None).has_gpus
    gpu = read_sinfo(sinfo, "gpu")
    assert (gpu.cpus, gpu.mem_mb, gpu.nodes, gpu.has_gpus) == (128, 1024000, 5, True)
    knobs = {"threads_per_worker": 4, "mem_gb_per_worker": 16}
    local = request_for(OmegaConf.create({"name": "local"}), knobs, gpu)
    assert (local.nodes, local.cpus_per_task, local.gpus_per_node, local.mem_gb, local.threads) == (1, 4, 1, 16, 4)
    ds = request_for(OmegaConf.create({"name": "deepspeed", "num_gpus": 8, "num_nodes": 2}), knobs, gpu)
    assert (ds.nodes, ds.cpus_per_task, ds.gpus_per_node, ds.mem_gb) == (2, 32, 8, 128)
    assert never_starts("PartitionConfig", ["PartitionConfig"]) == "PartitionConfig"
    assert never_starts("ReqNodeNotAvail, UnavailableNodes:gpu03", ["ReqNodeNotAvail"]) == "ReqNodeNotAvail"
    assert never_starts("QOSMaxCpuPerJobLimit", ["QOSMax*PerJob*"]) == "QOSMaxCpuPerJobLimit"
    assert never_starts("Resources", ["PartitionConfig"]) is None and never_starts("BeginTime", ["Partition*"]) is None


@pytest.mark.slow
def test_two_point_sweep_through_submitit_local(tmp_path, cache_dir, tiny_model):
    run_cli(
        "train",
        "-m",
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={tmp_path}",
        "logger=none",
        "method=dpo",
        "method.beta=0.1,0.2",
        "trainer.max_steps=2",
        "trainer.per_device_batch_size=2",
        "eval.at_end=false",
        "hydra.launcher.timeout_min=15",
    )
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("method"))
    assert [d.name for d in dirs] == [
        f"method.beta={b},method=dpo,trainer.max_steps=2,trainer.per_device_batch_size=2" for b in (0.1, 0.2)
    ]
    betas = [OmegaConf.load(d / "resolved.yaml").method.beta for d in dirs]
    assert betas == [0.1, 0.2] and all((d / "summary.json").exists() for d in dirs)
    assert list((tmp_path / ".submitit").iterdir())  # the jobs ran through submitit


def test_a_bad_point_stops_the_sweep_before_anything_is_submitted(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", lambda *a: pytest.fail("a job was submitted"))
    for tool, script in (("srun", "exit 1"), ("sinfo", "echo 'debug*|2|20528|(null)|1'")):
        (tmp_path / tool).write_text(f"#!/bin/sh\n{script}\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SystemExit) as exit_:
        run_cli(
            "train",
            "-m",
            "hydra/launcher=slurm",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "method=dpo",
            "method.beta=0.1,-0.1",
        )
    assert "sweep point method.beta=-0.1,method=dpo: method.beta=-0.1 is out of range" in str(exit_.value)
    assert "nothing was submitted" in str(exit_.value)
