"""`tokalign inspect`: the page is logged to the run's W&B run; no view without a finished model or a method view."""

from __future__ import annotations


def test_page_is_logged_to_the_runs_wandb_run(tmp_path, monkeypatch):
    import sys
    import types

    from omegaconf import OmegaConf

    from tokalign.analysis.inspect import _log_to_wandb

    logged = {}

    class Run:
        def log(self, row):
            logged.update(row)

        def finish(self):
            logged["finished"] = True

    def init(**kwargs):
        logged["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Html=lambda page: ("html", page)))
    cfg = OmegaConf.create({"logger": {"name": "wandb", "project": "p", "entity": None, "mode": "offline"}})
    _log_to_wandb(cfg, tmp_path, "<html/>")
    assert logged == {}  # no W&B run in this directory
    (tmp_path / "wandb_id.txt").write_text("abc123\n")
    _log_to_wandb(cfg, tmp_path, "<html/>")
    assert logged["init"]["id"] == "abc123" and logged["init"]["resume"] == "allow"
    assert logged["inspect/tokens"] == ("html", "<html/>") and logged["finished"]
