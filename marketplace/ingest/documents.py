"""Documents to sections: Markdown, plain text, HTML (stdlib parser, scripts and styles dropped) and PDF
(pypdf), each checked by its content, not only by its name.

PDFs are untrusted input that can be made to expand enormously (a few kilobytes of Flate stream can
inflate to gigabytes, a page tree can repeat one page a million times), so reading one is bounded three
ways: pypdf's own decoding limits are lowered for the read, the page count is capped
(`MEMHUB_PDF_MAX_PAGES`), and extraction stops with a 400 once the text passes
`MEMHUB_DOCUMENT_MAX_CHARS` characters or `MEMHUB_PDF_MAX_SECONDS` seconds.
"""

from __future__ import annotations

import io
import re
import time
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings

from core.errors import ApplicationError
from marketplace.ingest.chunking import Section

DOCUMENT_TYPES = ("markdown", "text", "html", "pdf")
EXTENSIONS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
# Formats people upload by mistake, named so the refusal says what the file really is.
OTHER_MAGIC = (
    (b"PK\x03\x04", "a zip archive (or an Office document)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office document"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "an executable"),
)
HTML_SNIFF = re.compile(rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)\b", re.I | re.S)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^(```|~~~)")
SETEXT = re.compile(r"^(=+|-+)[ \t]*$")
MAX_HEADING_CHARS = 200


def max_chars() -> int:
    return int(getattr(settings, "MEMHUB_DOCUMENT_MAX_CHARS", 2_000_000))


def _bad(message: str, **extra: object) -> ApplicationError:
    return ApplicationError(message, {"field": "file", **extra}, code="invalid_document")


def detect_type(data: bytes, filename: str) -> str:
    """The document type by content, reconciled with the file's extension (a mismatch is refused)."""
    ext = PurePosixPath(filename.lower()).suffix
    by_name = EXTENSIONS.get(ext)
    if ext and by_name is None:
        raise _bad(
            f"'{filename}' is not a supported document; upload Markdown (.md), text (.txt), HTML (.html) "
            "or PDF (.pdf)."
        )
    head = data[:1024]
    if head.startswith(b"%PDF-"):
        if by_name not in (None, "pdf"):
            raise _bad(f"'{filename}' is named as {by_name} but its content is a PDF.")
        return "pdf"
    if by_name == "pdf":
        raise _bad(f"'{filename}' is named .pdf but is not a PDF (no %PDF- header).")
    for magic, what in OTHER_MAGIC:
        if head.startswith(magic):
            raise _bad(f"'{filename}' is {what}, not a document.")
    if b"\x00" in data:
        raise _bad(f"'{filename}' holds binary data (NUL bytes), not text.")
    if by_name is None:
        return "html" if HTML_SNIFF.match(head) else "markdown"
    return by_name


def decode_text(data: bytes, filename: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _bad(f"'{filename}' is not UTF-8 text (invalid byte at line {line}).", line=line) from None
    if len(text) > max_chars():
        raise _bad(f"'{filename}' holds more than {max_chars()} characters (MEMHUB_DOCUMENT_MAX_CHARS).")
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- Markdown and text ---------------------------------------------------------------------------------


def markdown_sections(text: str) -> list[Section]:
    """ATX (`## Title`) and setext (`Title` over `===`/`---`) headings start sections; fenced code
    blocks are kept whole and their `#` lines are not headings."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = ""

    def flush() -> None:
        if "\n".join(body).strip():
            sections.append(Section(tuple(h for _, h in path), "\n".join(body)))
        body.clear()

    def open_heading(level: int, title: str) -> None:
        flush()
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title.strip()[:MAX_HEADING_CHARS]))

    lines = text.split("\n")
    for line in lines:
        fence = FENCE.match(line.strip())
        if fence:
            if not in_fence:
                in_fence = fence.group(1)
                # Keep a fenced block one paragraph: blank lines inside it would split it.
            elif line.strip().startswith(in_fence):
                in_fence = ""
            body.append(line)
            continue
        if in_fence:
            body.append(line if line.strip() else "")
            continue
        m = HEADING.match(line)
        if m:
            open_heading(len(m.group(1)), m.group(2))
            continue
        # Setext: a one-line paragraph underlined with === or ---; after a blank line, --- is a rule.
        if SETEXT.match(line) and body and body[-1].strip() and (len(body) == 1 or not body[-2].strip()):
            open_heading(1 if line.strip().startswith("=") else 2, body.pop())
            continue
        body.append(line)
    flush()
    return sections


def text_sections(text: str) -> list[Section]:
    return [Section((), text)] if text.strip() else []


# --- HTML ----------------------------------------------------------------------------------------------

SKIPPED = {"script", "style", "noscript", "template", "head", "svg", "iframe", "object"}
BLOCKS = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "table",
    "section",
    "article",
    "aside",
    "header",
    "footer",
    "nav",
    "main",
    "blockquote",
    "pre",
    "figure",
    "figcaption",
    "dl",
    "dt",
    "dd",
    "hr",
    "form",
}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"}


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.body: list[str] = []
        self.heading: list[str] | None = None
        self.heading_level = 0
        self.skip_depth = 0
        self.pre_depth = 0

    def _flush(self) -> None:
        text = "".join(self.body)
        text = "\n\n".join(p for p in (re.sub(r"[ \t]+", " ", p).strip() for p in text.split("\n\n")) if p)
        if text:
            self.sections.append(Section(tuple(h for _, h in self.path), text))
        self.body.clear()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED:
            if tag not in VOID:
                self.skip_depth += 1
            return
        if self.skip_depth:
            return
        if tag in HEADINGS:
            self._flush()
            self.heading, self.heading_level = [], HEADINGS[tag]
        elif tag in BLOCKS:
            self.body.append("\n\n")
            if tag == "pre":
                self.pre_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag in HEADINGS and self.heading is not None:
            title = re.sub(r"\s+", " ", "".join(self.heading)).strip()[:MAX_HEADING_CHARS]
            while self.path and self.path[-1][0] >= self.heading_level:
                self.path.pop()
            if title:
                self.path.append((self.heading_level, title))
            self.heading = None
        elif tag in BLOCKS:
            self.body.append("\n\n")
            if tag == "pre":
                self.pre_depth = max(0, self.pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.heading is not None:
            self.heading.append(data)
        else:
            self.body.append(data if self.pre_depth else re.sub(r"\s+", " ", data))

    def close(self) -> None:
        super().close()
        self._flush()


def html_sections(text: str) -> list[Section]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return parser.sections


# --- PDF -----------------------------------------------------------------------------------------------


def pdf_max_pages() -> int:
    return int(getattr(settings, "MEMHUB_PDF_MAX_PAGES", 500))


def pdf_max_seconds() -> float:
    return float(getattr(settings, "MEMHUB_PDF_MAX_SECONDS", 60.0))


# Per stream: a page's text content is kilobytes; 8 MB decoded is far beyond any real page.
PDF_STREAM_LIMIT = 8 * 1024 * 1024


def pdf_sections(data: bytes, filename: str) -> list[Section]:
    """One section per page (PDFs carry no reliable headings), paragraphs as the text layer gives them."""
    import pypdf
    from pypdf.errors import LimitReachedError, PdfReadError, PyPdfError

    limits: dict[str, Any] = {
        "zlib_maximum_output_length": PDF_STREAM_LIMIT,
        "lzw_maximum_output_length": PDF_STREAM_LIMIT,
        "run_length_maximum_output_length": PDF_STREAM_LIMIT,
        "brotli_maximum_output_length": PDF_STREAM_LIMIT,
        "array_based_stream_maximum_output_length": PDF_STREAM_LIMIT,
        "maximum_declared_stream_length": PDF_STREAM_LIMIT,
        "jbig2_maximum_output_length": PDF_STREAM_LIMIT,
        "image_maximum_buffer_size": PDF_STREAM_LIMIT,
        # Room for a real page tree (inherited attributes are copied per page), not for a million pages.
        "page_tree_maximum_entries": max(10_000, pdf_max_pages() * 50),
        "page_tree_maximum_page_entries": max(100_000, pdf_max_pages() * 200),
        "jbig2dec_binary": None,  # never run an external decoder on an upload
    }
    cap_chars, cap_pages, deadline = max_chars(), pdf_max_pages(), time.monotonic() + pdf_max_seconds()
    sections: list[Section] = []
    total = 0
    try:
        with pypdf.apply_configuration(**limits):
            reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted:
                raise _bad(f"'{filename}' is an encrypted PDF; upload it without a password.")
            count = len(reader.pages)
            if count > cap_pages:
                raise _bad(
                    f"'{filename}' has {count} pages; at most {cap_pages} are accepted "
                    "(MEMHUB_PDF_MAX_PAGES).",
                    pages=count,
                )
            for number, page in enumerate(reader.pages, start=1):
                if time.monotonic() > deadline:
                    raise _bad(f"Reading '{filename}' took too long (stopped at page {number}).")
                # extract_text() swallows a decoding limit and returns "", which would read as an
                # empty page: decoding the content first lets the limit be the refusal it is.
                contents = page.get_contents()
                if contents is not None:
                    contents.get_data()
                text = page.extract_text() or ""
                total += len(text)
                if total > cap_chars:
                    raise _bad(
                        f"'{filename}' holds more than {cap_chars} characters of text "
                        f"(MEMHUB_DOCUMENT_MAX_CHARS), reached at page {number}."
                    )
                text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
                if text.strip():
                    sections.append(Section((), text, page=number))
    except ApplicationError:
        raise
    except LimitReachedError as exc:
        raise _bad(f"'{filename}' exceeds the PDF decoding limits ({exc}).") from None
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise _bad(f"'{filename}' is not a valid PDF: {exc}") from None
    except RecursionError:
        raise _bad(f"'{filename}' is not a valid PDF: its objects nest too deeply.") from None
    return sections


def document_sections(data: bytes, filename: str) -> tuple[str, list[Section]]:
    """The document's type and its sections; a document with no text at all is refused."""
    kind = detect_type(data, filename)
    if kind == "pdf":
        sections = pdf_sections(data, filename)
    else:
        text = decode_text(data, filename)
        sections = {"markdown": markdown_sections, "html": html_sections, "text": text_sections}[kind](text)
    if not sections:
        raise _bad(f"'{filename}' holds no text to make memories of (a scanned PDF needs OCR first).")
    return kind, sections
