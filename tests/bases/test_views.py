"""Token views render every token and its values; boundaries, kept marks and escaping."""

from __future__ import annotations

from tests.html_spans import parse
from tokalign.bases.views import TokenSeq, View, render_html


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
