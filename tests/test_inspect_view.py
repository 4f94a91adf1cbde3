"""The token-level HTML view: every token and its values are on the page; boundaries and kept marks."""

from __future__ import annotations

from html.parser import HTMLParser

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
