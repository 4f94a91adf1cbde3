"""Token views render every token and its values; boundaries, kept marks and escaping; what a browser shows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.html_spans import parse
from tokalign.bases.views import TokenSeq, View, render_html


def test_tokens_values_and_marks_render():
    view = View(
        "tgdpo · demo",
        "legend <b>",
        [
            TokenSeq(
                "example 1 · chosen",
                ["The", " lake", " <is>", "\n"],
                {"r_hat": [0.5, -1.0, 0.0, 2.0], "f": [1.25, 0.5, 1.0, 2.0]},
                "r_hat",
                starts=[True, False, True, False],
                kept=[True, True, False, True],
                note="pair loss 0.6",
            ),
            TokenSeq("example 1 · rejected", ["dull"], {"r_hat": [-0.25], "f": [1.125]}, "r_hat", dropped=True),
        ],
    )
    page = render_html(view)
    spans = parse(page)
    assert [s["text"] for s in spans] == ["The", " lake", " <is>", "⏎\n", "dull"]
    assert [float(s["data-r_hat"]) for s in spans] == [0.5, -1.0, 0.0, 2.0, -0.25]
    assert [float(s["data-f"]) for s in spans] == [1.25, 0.5, 1.0, 2.0, 1.125]
    assert "r_hat=-1 f=0.5" == spans[1]["title"]
    assert [("start" in s["class"], "unkept" in s["class"]) for s in spans[:4]] == [
        (True, False),
        (False, False),
        (True, True),
        (False, False),
    ]
    assert (
        "rgba(0,150,60,0.800)" in spans[3]["style"] and "rgba(210,40,40,0.400)" in spans[1]["style"]
    )  # scaled by max |r̂| = 2
    assert "legend &lt;b&gt;" in page and "pair loss 0.6" in page and "seq dropped" in page


# A real browser shows the page: the colour key, the prompt and every token's values are on the screen,
# not only in tooltips. CI (.ci/run) installs Debian's chromium and sets TOKALIGN_REQUIRE_CHROMIUM=1, so a CI
# machine without it fails rather than skips.
CHROMIUM_REQUIRED = os.environ.get("TOKALIGN_REQUIRE_CHROMIUM") == "1" or bool(os.environ.get("CI"))


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        reason = "no chromium on this machine (Debian: apt-get install -y chromium)"
        if CHROMIUM_REQUIRED:
            pytest.fail(f"TOKALIGN_REQUIRE_CHROMIUM=1 (or CI) but {reason}")
        pytest.skip(reason)
    return found


def _headless(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def test_inspect_page_in_a_browser_shows_key_prompt_and_values(tmp_path):
    browser = _chromium()
    view = View(
        "tgdpo · demo",
        "Colour: delta, the trained policy's token reward.",
        [
            TokenSeq(
                "example 1 · chosen",
                ["the", " garden", " is", " calm"],
                {"delta": [0.8, 0.1, -0.05, 0.4], "f": [1.5, 1.0, 0.9, 1.25]},
                "delta",
                prompt="Write a short note about the garden.",
            ),
            TokenSeq(
                "example 1 · rejected",
                ["bad", " bad"],
                {"delta": [-0.8, -0.6], "f": [0.5, 0.6]},
                "delta",
                prompt="Write a short note about the garden.",
            ),
        ],
    )
    page = tmp_path / "inspect.html"
    page.write_text(render_html(view))
    dom = _headless(browser, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", dom.stdout)  # what is on the page as text, tooltips and attributes left out
    assert "Colour key" in text and "green: delta = +0.8" in text and "red: delta = −0.8" in text
    assert text.count("Write a short note about the garden.") == 1  # the prompt, once above its two responses
    assert "f 1.25" in text and "delta -0.05" in text  # each token's values printed under it
    shot = tmp_path / "inspect.png"
    run = _headless(browser, tmp_path, f"--screenshot={shot}", "--window-size=1000,700", page.as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(str(shot))[..., :3]
    green = (pixels[..., 1] > pixels[..., 0] + 0.2).any()  # the token coloured by a positive delta
    red = (pixels[..., 0] > pixels[..., 1] + 0.2).any()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and green and red
