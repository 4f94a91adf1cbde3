"""The token-level HTML view: every token and its values are on the page; boundaries and kept marks."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tokalign.inspect_view import TokenSeq, View, render_html


class Spans(HTMLParser):
    def __init__(self):
        super().__init__()
        self.spans, self._open = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "span":
            self._open = dict(attrs) | {"text": ""}

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None


def parse(page: str) -> list[dict]:
    p = Spans()
    p.feed(page)
    return p.spans


def test_tokens_values_and_marks_render():
    view = View("tgdpo · demo", "legend <b>", [
        TokenSeq("example 1 · chosen", ["The", " lake", " <is>", "\n"], {"r_hat": [0.5, -1.0, 0.0, 2.0], "f": [1.25, 0.5, 1.0, 2.0]},
                 "r_hat", starts=[True, False, True, False], kept=[True, True, False, True], note="pair loss 0.6"),
        TokenSeq("example 1 · rejected", ["dull"], {"r_hat": [-0.25], "f": [1.125]}, "r_hat", dropped=True),
    ])
    page = render_html(view)
    spans = parse(page)
    assert [s["text"] for s in spans] == ["The", " lake", " <is>", "⏎\n", "dull"]
    assert [float(s["data-r_hat"]) for s in spans] == [0.5, -1.0, 0.0, 2.0, -0.25]
    assert [float(s["data-f"]) for s in spans] == [1.25, 0.5, 1.0, 2.0, 1.125]
    assert "r_hat=-1 f=0.5" == spans[1]["title"]
    assert [("start" in s["class"], "unkept" in s["class"]) for s in spans[:4]] == [(True, False), (False, False), (True, True), (False, False)]
    assert "rgba(0,150,60,0.800)" in spans[3]["style"] and "rgba(210,40,40,0.400)" in spans[1]["style"]  # scaled by max |r̂| = 2
    assert "legend &lt;b&gt;" in page and "pair loss 0.6" in page and "seq dropped" in page


@pytest.mark.slow
def test_tgdpo_view_with_the_reference_as_guidance_has_zero_rewards(train, tiny_model):
    run_dir = train("method=tgdpo", f"method.guidance_model={tiny_model}", "method.alpha=1.0", "trainer.max_steps=2",
                    "dataset.num_train=32", "trainer.per_device_batch_size=8", "eval.at_end=false")
    from tokalign.inspect_view import inspect_run

    spans = parse(inspect_run(run_dir, num_examples=1).read_text())
    assert len(spans) > 2
    assert all(float(s["data-r_hat"]) == 0.0 and float(s["data-f"]) == 1.0 for s in spans)  # π_g = π_ref: r̂ = 0, f = 1
    assert any(float(s["data-delta"]) != 0.0 for s in spans)  # the trained policy moved


@pytest.mark.slow
def test_ma_ppo_view_marks_macro_actions(train):
    run_dir = train("method=ma_ppo", "method.n=3", "trainer.max_steps=1", "trainer.per_device_batch_size=4",
                    "method.max_new_tokens=10", "eval.at_end=false")
    from tokalign.inspect_view import inspect_run

    spans = parse(inspect_run(run_dir, num_examples=2).read_text())
    segments = [int(float(s["data-segment"])) for s in spans]
    starts = ["start" in s["class"] for s in spans]
    assert starts[0]
    for i in range(1, len(spans)):  # a bar where the macro action changes; one advantage per macro action
        if segments[i] != segments[i - 1]:
            assert starts[i]
        if not starts[i]:
            assert segments[i] == segments[i - 1] and spans[i]["data-advantage"] == spans[i - 1]["data-advantage"]
    assert max(segments) >= 1


def test_page_is_logged_to_the_runs_wandb_run(tmp_path, monkeypatch):
    import sys
    import types

    from omegaconf import OmegaConf

    from tokalign.inspect_view import _log_to_wandb

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
