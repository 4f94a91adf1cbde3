"""One run directory for the nodes of one job: who may join node 0, and how a node sees its peers end.

Locks are real `flock`s: two descriptors of this process stand for two launchers (a lock belongs to
an open file, not to a process)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tokalign.artifacts.rundir import claim, update_record
from tokalign.errors import LaunchError, UserError
from tokalign.runtime import nodes

JOB = ["launcher=ddp", "launcher.num_nodes=2", "launcher.master_addr=127.0.0.1", "launcher.master_port=29533"]


def _cfg(run_dir, *overrides):
    cfg = compose_config(*JOB, *overrides)
    cfg.output_dir = str(run_dir)
    OmegaConf.resolve(cfg)
    return cfg


def test_the_nodes_of_a_job_share_its_key_and_config_and_another_run_does_not(tmp_path, monkeypatch):
    node0, node1 = _cfg(tmp_path, "launcher.node_rank=0"), _cfg(tmp_path, "launcher.node_rank=1")
    assert nodes.job_key(node0.launcher) == nodes.job_key(node1.launcher) == "127.0.0.1:29533 x2"
    assert nodes.config_digest(node0) == nodes.config_digest(node1)
    assert nodes.config_digest(_cfg(tmp_path, "trainer.max_steps=7")) != nodes.config_digest(node0)
    assert nodes.job_key(_cfg(tmp_path, "launcher.master_port=29534").launcher) != nodes.job_key(node0.launcher)
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert nodes.job_key(node0.launcher) == "127.0.0.1:29533 x2 slurm job 41"


def test_node_r_joins_node_0_of_its_job_only(tmp_path):
    cfg = _cfg(tmp_path, "launcher.node_rank=1")
    assert nodes.check_joinable(tmp_path, cfg) is None  # nobody holds it yet: wait for node 0
    with claim(tmp_path):  # a one-node run
        with pytest.raises(UserError, match=r"^run dir .* is in use by pid \d+ on .*choose another hydra.run.dir$"):
            nodes.check_joinable(tmp_path, cfg)
    with claim(tmp_path, record=nodes.job_record(_cfg(tmp_path, "launcher.master_port=29600"))):
        with pytest.raises(UserError, match=r"in use by pid .*node 0 of another job \(127.0.0.1:29600 x2"):
            nodes.check_joinable(tmp_path, cfg)
    with claim(tmp_path, record=nodes.job_record(_cfg(tmp_path, "trainer.max_steps=7"))):
        with pytest.raises(UserError, match="same rendezvous with another config"):
            nodes.check_joinable(tmp_path, cfg)
        assert nodes.check_joinable(tmp_path, cfg, same_config=False)  # before the config is resolved: the key
    record = nodes.job_record(_cfg(tmp_path, "launcher.node_rank=0"))
    with claim(tmp_path, record=record) as fd:
        assert nodes.check_joinable(tmp_path, cfg)["attempt"] == record["attempt"]
        update_record(fd, ready=True)
        assert nodes.wait_for_node0(tmp_path, cfg, print, timeout=5)["ready"]


def test_node_r_stops_waiting_for_a_node_0_that_never_comes_or_fails(tmp_path, capsys):
    cfg = _cfg(tmp_path, "launcher.node_rank=1")
    with pytest.raises(LaunchError, match="node 0 of this job .* did not start .* launcher.node_rank=0"):
        nodes.wait_for_node0(tmp_path, cfg, print, timeout=0.2)
    assert "waiting for node 0 of this job (127.0.0.1:29533 x2)" in capsys.readouterr().out


def test_a_node_sees_a_peer_die_but_not_finish(tmp_path):
    cfg0 = _cfg(tmp_path, "launcher.node_rank=0")
    attempt = nodes.job_record(cfg0)["attempt"]
    peers = nodes.Peers.of(cfg0, attempt)
    assert peers.dead() is None  # node 1 has not started
    with claim(tmp_path, lock=nodes.node_lock(1), record={"node": 1, "attempt": "an-earlier-attempt"}):
        pass
    assert peers.dead() is None  # a node 1 of an earlier attempt, ended
    with claim(tmp_path, lock=nodes.node_lock(1), record={"node": 1, "attempt": attempt}) as fd:
        assert peers.dead() is None
        update_record(fd, exit=0)
    assert peers.dead() is None and peers.ranks == []  # finished its share: no longer watched
    peers = nodes.Peers.of(cfg0, attempt)
    with claim(tmp_path, lock=nodes.node_lock(1), record={"node": 1, "attempt": attempt}) as fd:
        assert peers.dead() is None
    assert peers.dead().startswith("node 1 of this job (pid") and peers.dead().endswith("ended (killed)")
    peers = nodes.Peers.of(cfg0, attempt)
    with claim(tmp_path, lock=nodes.node_lock(1), record={"node": 1, "attempt": attempt}) as fd:
        assert peers.dead() is None
        update_record(fd, exit=1, stopped=True)  # cancelled: every node stops at the same step
    assert peers.dead() is None and peers.ranks == []
    # node 1 watches node 0, which was running when it joined
    cfg1 = _cfg(tmp_path, "launcher.node_rank=1")
    with claim(tmp_path, record={"attempt": attempt}) as fd:
        watch = nodes.Peers.of(cfg1, attempt)
        assert watch.dead() is None
        update_record(fd, exit=1)
    assert watch.dead().endswith("ended (exit status 1)")


def test_node_r_stops_waiting_when_the_node_0_it_came_to_join_has_ended(tmp_path):
    cfg0, cfg1 = _cfg(tmp_path, "launcher.node_rank=0"), _cfg(tmp_path, "launcher.node_rank=1")
    with claim(tmp_path, record=nodes.job_record(cfg0)) as fd:
        update_record(fd, ready=True, exit=1, ended=nodes.STARTED + 1)  # failed before node 1 looked
    with pytest.raises(LaunchError, match=r"node 0 of this job \(pid .*\) ended \(exit status 1\) before this node"):
        nodes.wait_for_node0(tmp_path, cfg1, print, timeout=30)
