"""Make kernel outputs safe to show in the user's page.

The agent's kernel runs code the model wrote, on data nobody vetted, so its outputs are
untrusted. JupyterLab, however, renders whatever reaches an ``ipywidgets.Output`` as *trusted*
output: ``text/html`` is live HTML (event handlers fire, scripts run), ``application/javascript``
is executed, SVG is inlined into the page. Everything the panel or a static summary shows from
the kernel therefore goes through :func:`safe_output` first.

The policy is an allow-list, not a deny-list, so a MIME type nobody thought of is dropped:

* ``text/plain``, PNG/JPEG/GIF/WebP images (well-formed base64 only) and ``application/json``
  (rendered as a tree of text) are kept;
* ``text/html`` is cleaned by nh3 (ammonia): tables, lists, headings and basic formatting stay;
  scripts, styles, iframes, forms, objects, inline SVG/MathML, event handlers, ``id``/``name``
  (DOM clobbering), remote images, ``javascript:``/``data:`` links and CSS beyond a few
  harmless properties go;
* ``image/svg+xml`` is dropped when a raster image is there; otherwise it is shown through
  ``<img src="data:image/svg+xml;base64,…">``, a context in which SVG cannot run script;
* everything else — ``application/javascript``, ``text/javascript``, ``*+javascript`` and other
  code-carrying types, ``text/markdown`` and ``text/latex`` (their renderers pass raw HTML and
  links through), widget views from another kernel, Bokeh/HoloViews "exec" bundles — is removed,
  falling back to ``text/plain`` (or a short note saying what was removed).

Strings are made JSON-safe (lone surrogates replaced) and sizes are capped so a runaway output
cannot take the browser down; the transcript keeps the full output.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from nbagent.text import safe_text

__all__ = [
    "HTML_LIMIT",
    "IMAGE_LIMIT",
    "TEXT_LIMIT",
    "safe_output",
    "safe_str",
    "sanitize_html",
]

#: Characters of one stream/plain-text output shown (head and tail are kept).
TEXT_LIMIT = 100_000
#: Characters of HTML accepted; beyond this the HTML is dropped in favour of text/plain.
HTML_LIMIT = 2_000_000
#: Base64 characters of one image shown (about 7.5 MB of image).
IMAGE_LIMIT = 10_000_000

_RASTER = ("image/png", "image/jpeg", "image/gif", "image/webp")
_KEPT_AS_IS = ("text/plain", "application/json")

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "col", "colgroup", "dd",
    "del", "details", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp",
    "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "tt", "u", "ul", "var", "wbr",
}  # fmt: skip
#: Tags removed together with their content (text inside them is not meant to be read).
_DROP_WITH_CONTENT = {
    "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "noscript",
    "noembed", "template", "svg", "math", "title", "textarea", "select", "xmp", "plaintext",
}  # fmt: skip
_CELL_ATTRS = {"colspan", "rowspan", "align", "valign", "scope", "width"}
_ATTRIBUTES = {
    "*": {"title", "lang", "dir", "class", "style"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "table": {"border", "cellpadding", "cellspacing", "width"},
    "td": _CELL_ATTRS,
    "th": _CELL_ATTRS,
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "ol": {"start", "type"},
    "li": {"value"},
    "details": {"open"},
}
#: CSS properties a table or a bit of formatting needs, none that can move or overlay content.
_STYLE_PROPERTIES = {
    "color", "background-color", "font-weight", "font-style", "font-size", "font-family",
    "font-variant", "text-align", "text-decoration", "text-transform", "vertical-align",
    "white-space", "line-height", "letter-spacing", "border", "border-collapse",
    "border-color", "border-style", "border-width", "border-spacing", "border-top",
    "border-bottom", "border-left", "border-right", "padding", "padding-top", "padding-bottom",
    "padding-left", "padding-right", "width", "min-width", "max-width", "height",
}  # fmt: skip
_STYLE_VALUE = re.compile(r"[#\w\s.,%+\-()'\"/]*")
_STYLE_BAD = re.compile(r"expression|url|javascript|vbscript|behavior|binding|import|@", re.I)
#: Classes of the page itself; output HTML must not borrow their look (or their layout).
_RESERVED_CLASS = re.compile(r"(jp-|lm-|p-|jupyter-|widget-|nbagent|mod-)", re.I)
_IMG_SRC = re.compile(r"data:image/(?:png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/=\s]*", re.I)
_IMG_TAG = re.compile(r'<img((?:\s+[\w-]+(?:="[^"]*")?)*)\s*/?>')
_HREF = re.compile(r"(?:https?:|mailto:)\S*", re.I)
_NUMBER = re.compile(r"\d{1,5}%?")
_WORD = re.compile(r"[a-zA-Z]{1,12}")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")


def safe_str(value: Any) -> str:
    """``value`` (a str, a list of str as nbformat stores text, anything) as a str that encodes
    to UTF-8 and JSON (lone surrogates → U+FFFD)."""
    if isinstance(value, list):
        value = "".join(str(v) for v in value)
    elif not isinstance(value, str):
        value = str(value)
    return safe_text(value)


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    dropped = len(text) - 2 * half
    return f"{text[:half]}\n… [{dropped:,} characters not shown here] …\n{text[-half:]}"


def _clean_style(value: str) -> str | None:
    kept = []
    for declaration in value.split(";"):
        name, sep, val = declaration.partition(":")
        name, val = name.strip().lower(), val.strip()
        if not sep or name not in _STYLE_PROPERTIES or len(val) > 200:
            continue
        if not _STYLE_VALUE.fullmatch(val) or _STYLE_BAD.search(val):
            continue
        kept.append(f"{name}: {val}")
    return "; ".join(kept) or None


def _filter_attribute(tag: str, attr: str, value: str) -> str | None:
    value = value.strip()
    if attr == "style":
        return _clean_style(value)
    if attr == "class":
        tokens = [t for t in value.split() if not _RESERVED_CLASS.match(t) and len(t) < 60]
        return " ".join(tokens) or None
    if attr == "href":
        return value if _HREF.fullmatch(value) else None
    if attr == "src":
        return value if tag == "img" and _IMG_SRC.fullmatch(value) else None
    if attr in ("width", "height", "colspan", "rowspan", "span", "start", "value", "border"):
        return value if _NUMBER.fullmatch(value) else None
    if attr in ("align", "valign", "scope", "type", "dir"):
        return value if _WORD.fullmatch(value) else None
    if attr in ("cellpadding", "cellspacing"):
        return value if _NUMBER.fullmatch(value) else None
    return value


def sanitize_html(html: str) -> str:
    """Clean untrusted HTML with the conservative allow-list described in the module docstring."""
    import nh3  # here: the CLI's terminal view uses this module's text helpers only

    html = nh3.clean(
        safe_str(html),
        tags=_TAGS,
        clean_content_tags=_DROP_WITH_CONTENT,
        attributes=_ATTRIBUTES,
        attribute_filter=_filter_attribute,
        url_schemes={"http", "https", "mailto", "data"},
        link_rel="noopener noreferrer nofollow",
        filter_style_properties=_STYLE_PROPERTIES,
        strip_comments=True,
    )
    # An image whose source was refused would only show a "broken image" icon.
    return _IMG_TAG.sub(lambda m: m[0] if re.search(r'\ssrc="', m[1]) else "", html)


def _image(value: Any) -> str | None:
    """Return base64 image data if it is a well-formed string within the size cap."""
    if isinstance(value, list):
        value = "".join(str(v) for v in value)
    if not isinstance(value, str) or not _BASE64.fullmatch(value):
        return None
    return value


def _note(text: str) -> dict[str, Any]:
    return {"output_type": "display_data", "data": {"text/plain": text}, "metadata": {}}


def _safe_bundle(
    data: dict[str, Any], metadata: dict[str, Any], max_text: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    out: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    removed: list[str] = []
    for mime, value in data.items():
        if mime in _KEPT_AS_IS:
            out[mime] = _bounded(safe_str(value), max_text) if mime == "text/plain" else value
        elif mime in _RASTER:
            image = _image(value)
            if image is None:
                removed.append(f"malformed {mime}")
            elif len(image) > IMAGE_LIMIT:
                removed.append(f"{mime} of {len(image) * 3 // 4 / 1e6:.1f} MB, too large here")
            else:
                out[mime] = image
                size = metadata.get(mime)
                if isinstance(size, dict):
                    dims = {
                        k: size[k]
                        for k in ("width", "height")
                        if isinstance(size.get(k), int | float) and 0 < size[k] < 100_000
                    }
                    if dims:
                        meta[mime] = dims
        elif mime == "text/html":
            html = safe_str(value)
            if len(html) > HTML_LIMIT:
                removed.append(f"text/html of {len(html):,} characters, too large here")
            else:
                out[mime] = sanitize_html(html)
        elif mime != "image/svg+xml":
            removed.append(mime)
    svg = data.get("image/svg+xml")
    if svg is not None and not any(m in out for m in (*_RASTER, "text/html")):
        svg = safe_str(svg)
        if len(svg) <= IMAGE_LIMIT:
            b64 = base64.b64encode(svg.encode("utf-8")).decode("ascii")
            out["text/html"] = f'<img src="data:image/svg+xml;base64,{b64}" alt="SVG image">'
    if "text/plain" not in out:
        fallback = data.get("text/markdown") or data.get("text/latex")
        if isinstance(fallback, str | list):
            out["text/plain"] = _bounded(safe_str(fallback), max_text)
        elif not out:
            out["text/plain"] = f"[output not shown: {', '.join(removed) or 'empty'}]"
    return out, meta


def safe_output(output: dict[str, Any], *, max_text: int = TEXT_LIMIT) -> dict[str, Any]:
    """Return a copy of an nbformat v4 output dict that is safe to render in the user's page.

    Pure: no IPython, no widgets; the input is not modified.

    Args:
        output: an nbformat v4 output (``stream``, ``display_data``, ``execute_result`` or
            ``error``), as the kernel produced it.
        max_text: characters of text kept per stream or plain-text output (head and tail).

    Returns:
        A new output dict of the same type, with only safe MIME types and cleaned HTML. An
        output of an unknown type becomes a short ``text/plain`` note.
    """
    if not isinstance(output, dict):
        return _note("[output not shown: not an output dict]")
    kind = output.get("output_type")
    if kind == "stream":
        name = output.get("name")
        return {
            "output_type": "stream",
            "name": name if name in ("stdout", "stderr") else "stdout",
            "text": _bounded(safe_str(output.get("text", "")), max_text),
        }
    if kind == "error":
        traceback = output.get("traceback")
        lines = [safe_str(line) for line in traceback] if isinstance(traceback, list) else []
        return {
            "output_type": "error",
            "ename": safe_str(output.get("ename", "Error"))[:200],
            "evalue": _bounded(safe_str(output.get("evalue", "")), max_text),
            "traceback": lines[:200],
        }
    if kind in ("display_data", "execute_result"):
        data = output.get("data")
        metadata = output.get("metadata")
        bundle, meta = _safe_bundle(
            data if isinstance(data, dict) else {},
            metadata if isinstance(metadata, dict) else {},
            max_text,
        )
        result: dict[str, Any] = {"output_type": kind, "data": bundle, "metadata": meta}
        if kind == "execute_result":
            count = output.get("execution_count")
            result["execution_count"] = count if isinstance(count, int) else None
        return result
    return _note(f"[output not shown: unsupported output type {safe_str(kind)[:40]!r}]")
