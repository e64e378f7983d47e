"""Kernel outputs are made safe for the page: hostile HTML, script MIME types, SVG, sizes."""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser

import pytest

from nbagent.core.text import strip_ansi
from nbagent.display.sanitize import (
    HTML_LIMIT,
    IMAGE_LIMIT,
    TEXT_LIMIT,
    safe_output,
    safe_str,
    sanitize_html,
)
from tests.panel_events import HOSTILE_HTML, error_output, png_output, table_output


class _Tags(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def assert_inert(html: str) -> None:
    """No tag or attribute that can run script, load anything, or clobber the DOM."""
    for tag, attrs in _Tags(html).tags:
        assert tag not in {
            "script",
            "style",
            "iframe",
            "object",
            "embed",
            "svg",
            "math",
            "form",
            "input",
            "link",
            "meta",
            "base",
            "frame",
        }, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name not in {"id", "name", "srcdoc", "formaction", "srcset", "xlink:href"}
            value = (value or "").lower()
            assert "javascript:" not in value and "expression(" not in value, (tag, name)
            if name == "src":
                assert value.startswith("data:image/"), value
            if name == "href":
                assert value.startswith(("https:", "http:", "mailto:")), value


HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "<IMG SRC=x OnError=alert(1)>",
    "<script>alert(1)</script>",
    "<scr<script>ipt>alert(1)</script>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href=" jav&#x09;ascript:alert(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<svg onload="alert(1)"><circle r="4"/></svg>',
    "<svg><script>alert(1)</script></svg>",
    '<math><mtext><table><mglyph><style><img src=x onerror="alert(1)">',
    '<div style="width: expression(alert(1)); background: url(javascript:alert(1))">x</div>',
    '<div style="color:red;position:fixed;top:0;left:0;width:100%;height:100%">overlay</div>',
    "<style>@import 'https://evil.example/x.css'; body{display:none}</style>",
    '<iframe src="https://evil.example" srcdoc="<script>alert(1)</script>"></iframe>',
    '<form action="https://evil.example"><input name=password><button>go</button></form>',
    '<object data="x.swf"></object><embed src="x.swf">',
    '<meta http-equiv="refresh" content="0;url=https://evil.example">',
    '<base href="https://evil.example/">',
    '<a id="jupyterapp" name="__pwned">clobber</a>',
    '<img src="https://tracker.example/pixel.gif">',
    '<img srcset="https://evil.example/x.png 1x" src="x">',
    '<details open ontoggle="alert(1)"><summary>s</summary></details>',
    "<!--<img src=x onerror=alert(1)>-->",
    '<p title="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;">t</p>',
    HOSTILE_HTML,
]


@pytest.mark.parametrize("html", HOSTILE)
def test_hostile_html_is_inert(html: str) -> None:
    cleaned = sanitize_html(html)
    assert_inert(cleaned)
    assert "<script" not in cleaned.lower()


def test_harmless_html_keeps_its_shape() -> None:
    out = safe_output(table_output())
    html = out["data"]["text/html"]
    assert_inert(html)
    parsed = _Tags(html).tags
    assert [t for t, _ in parsed].count("td") == 6  # 3 rows × 2 columns
    assert ("table", {"border": "1", "class": "dataframe"}) in parsed
    kept = sanitize_html(
        '<p><b>b</b> <i>i</i> <code>c</code> <a href="https://example.org">link</a></p>'
        '<ul><li>one</li></ul><span style="color: red; font-weight: bold">red</span>'
    )
    assert "<b>b</b>" in kept and "<li>one</li>" in kept
    assert 'href="https://example.org"' in kept and "nofollow" in kept
    assert "color" in kept and "font-weight" in kept


def test_css_keeps_safe_properties_only() -> None:
    html = sanitize_html('<div style="color: red; position: fixed; width: expression(x)">a</div>')
    assert "color" in html
    assert "position" not in html and "expression" not in html


def test_classes_of_the_page_are_not_borrowed() -> None:
    html = sanitize_html('<div class="jp-Dialog lm-Widget nbagent mine">x</div>')
    assert 'class="mine"' in html


def test_data_images_stay_and_broken_ones_go() -> None:
    png = png_output()["data"]["image/png"]
    html = sanitize_html(f'<img src="data:image/png;base64,{png}" alt="plot"><img src="x">')
    assert html.count("<img") == 1 and png in html


@pytest.mark.parametrize(
    "mime",
    [
        "application/javascript",
        "text/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "text/vnd.custom+javascript",
        "application/vnd.bokehjs_exec.v0+json",
        "application/vnd.holoviews_exec.v0+json",
        "application/vnd.jupyter.widget-view+json",
        "text/markdown",
        "text/latex",
        "application/pdf",
        "text/x-unknown",
    ],
)
def test_script_capable_and_unknown_mime_types_are_dropped(mime: str) -> None:
    bundle = {mime: "window.__pwned = 1", "text/plain": "<fallback>"}
    output = {"output_type": "display_data", "data": bundle, "metadata": {}}
    assert safe_output(output)["data"] == {"text/plain": "<fallback>"}
    del bundle["text/plain"]
    data = safe_output(output)["data"]
    assert list(data) == ["text/plain"]
    if mime not in ("text/markdown", "text/latex"):
        assert mime in data["text/plain"] and data["text/plain"].startswith("[output not shown")


def test_markdown_with_html_shows_as_source_text() -> None:
    md = "# Title\n<img src=x onerror=alert(1)> [x](javascript:alert(1))"
    out = safe_output({"output_type": "display_data", "data": {"text/markdown": md}})
    assert out["data"] == {"text/plain": md}  # text/plain is never rendered as HTML


def test_svg_is_dropped_for_png_or_shown_as_an_image() -> None:
    svg = '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>x</script></svg>'
    png = png_output()["data"]["image/png"]
    both = safe_output(
        {"output_type": "display_data", "data": {"image/svg+xml": svg, "image/png": png}}
    )
    assert set(both["data"]) == {"image/png", "text/plain"} or set(both["data"]) == {"image/png"}
    alone = safe_output({"output_type": "display_data", "data": {"image/svg+xml": svg}})
    html = alone["data"]["text/html"]
    assert "image/svg+xml" not in alone["data"]
    assert_inert(html)
    src = _Tags(html).tags[0][1]["src"] or ""
    assert src.startswith("data:image/svg+xml;base64,")
    assert base64.b64decode(src.split(",", 1)[1]).decode() == svg  # shown only as an <img>


def test_streams_errors_and_plain_text_keep_their_content() -> None:
    stream = {"output_type": "stream", "name": "stderr", "text": ["a\n", "b\n"]}
    assert safe_output(stream) == {"output_type": "stream", "name": "stderr", "text": "a\nb\n"}
    err = error_output()
    assert safe_output(err) == err  # ANSI stays: the front end renders it as text
    result = {
        "output_type": "execute_result",
        "execution_count": 3,
        "data": {"text/plain": "42"},
        "metadata": {},
    }
    assert safe_output(result) == result


def test_pure_input_untouched() -> None:
    output = {
        "output_type": "display_data",
        "data": {"text/html": HOSTILE_HTML, "application/javascript": "x"},
        "metadata": {"isolated": True},
    }
    before = copy.deepcopy(output)
    safe = safe_output(output)
    assert output == before
    assert safe["metadata"] == {}


def test_image_metadata_kept_only_as_numbers() -> None:
    png = png_output()["data"]["image/png"]
    out = safe_output(
        {
            "output_type": "display_data",
            "data": {"image/png": png},
            "metadata": {"image/png": {"width": 200, "height": 'x" onload'}},
        }
    )
    assert out["metadata"] == {"image/png": {"width": 200}}


def test_bad_and_huge_inputs() -> None:
    bad_png = {"output_type": "display_data", "data": {"image/png": 'AAAA" onerror="x'}}
    assert "malformed image/png" in safe_output(bad_png)["data"]["text/plain"]
    huge_png = {"output_type": "display_data", "data": {"image/png": "A" * (IMAGE_LIMIT + 4)}}
    assert "too large" in safe_output(huge_png)["data"]["text/plain"]
    huge_html = {
        "output_type": "display_data",
        "data": {"text/html": "<p>x</p>" * (HTML_LIMIT // 8 + 1), "text/plain": "t"},
    }
    assert safe_output(huge_html)["data"] == {"text/plain": "t"}
    long = safe_output({"output_type": "stream", "name": "stdout", "text": "x" * 10**6})
    assert len(long["text"]) < TEXT_LIMIT + 100 and "characters not shown" in long["text"]
    assert safe_output({"output_type": "weird"})["data"]["text/plain"].startswith("[output")
    assert safe_output("nope")["output_type"] == "display_data"  # type: ignore[arg-type]


def test_strings_become_json_safe() -> None:
    out = safe_output({"output_type": "stream", "name": "stdout", "text": "a\ud800b\x00c"})
    json.dumps(out, ensure_ascii=False).encode("utf-8")  # would raise on a lone surrogate
    assert out["text"] == "a\ufffdb\x00c"
    assert safe_str(["x", 1]) == "x1"
    assert strip_ansi("\x1b[31mred\x1b[0m\x1b]0;title\x07 ok\x07") == "red ok"
