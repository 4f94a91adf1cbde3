"""The token spans of a rendered token view: each token's text, class, style and data attributes
(the printed values beside them, and the colour key, are other spans)."""

from __future__ import annotations

from html.parser import HTMLParser


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
    return [s for s in p.spans if "tok" in (s.get("class") or "").split()]
