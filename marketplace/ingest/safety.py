"""What every upload shares: the byte cap, where checked files are stored, safe names.

Django keeps small file parts in memory and large ones in temporary files with no limit on either
(`DATA_UPLOAD_MAX_MEMORY_SIZE` excludes file parts). The pack upload views install
`CappedUploadHandler`: every file part goes to a temporary file as it arrives, the bytes of all parts
are counted, and the part that crosses `MEMHUB_PACK_UPLOAD_MAX_BYTES` ends the request with 413 naming
the limit. The inference app has the same handler for its own cap; the marketplace may not import it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import HttpRequest

from core.errors import ApplicationError

# Room for the form fields and multipart boundaries around the files in a request's declared length.
FORM_ALLOWANCE_BYTES = 64 * 1024
READ_CHUNK_BYTES = 1024 * 1024
MAX_FILENAME_CHARS = 200


def upload_max_bytes() -> int:
    return int(getattr(settings, "MEMHUB_PACK_UPLOAD_MAX_BYTES", 20 * 1024 * 1024))


def upload_too_large(*, field: str, limit: int) -> ApplicationError:
    return ApplicationError(
        f"The upload exceeds the limit of {limit} bytes (MEMHUB_PACK_UPLOAD_MAX_BYTES) at '{field}'.",
        {"field": field, "limit_bytes": limit},
        status=413,
        code="too_large",
    )


class CappedUploadHandler(TemporaryFileUploadHandler):
    """File parts straight to disk, all parts together stopped at the cap (413)."""

    def __init__(self, request: HttpRequest | None = None, *, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.received = 0

    def handle_raw_input(
        self, input_data: Any, META: Any, content_length: int, boundary: Any, encoding: str | None = None
    ) -> None:
        if content_length and content_length > self.limit + FORM_ALLOWANCE_BYTES:
            raise upload_too_large(field="request body", limit=self.limit)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.file.close()  # a temporary upload file is deleted when closed
            raise upload_too_large(field=self.field_name or "file", limit=self.limit)
        return super().receive_data_chunk(raw_data, start)


def read_capped(content: bytes | IO[bytes], *, field: str, limit: int | None = None) -> bytes:
    """The bytes of an upload, never more than the cap (a stream that lied about its size stops there)."""
    limit = upload_max_bytes() if limit is None else limit
    if isinstance(content, bytes):
        if len(content) > limit:
            raise upload_too_large(field=field, limit=limit)
        return content
    if hasattr(content, "seek"):
        content.seek(0)
    parts: list[bytes] = []
    used = 0
    while chunk := content.read(READ_CHUNK_BYTES):
        used += len(chunk)
        if used > limit:
            raise upload_too_large(field=field, limit=limit)
        parts.append(chunk)
    return b"".join(parts)


def safe_filename(name: str) -> str:
    """The last path component of a client-supplied name, printable, bounded; never empty."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in unicodedata.normalize("NFC", base) if unicodedata.category(ch)[0] != "C")
    base = base.strip().lstrip(".")
    return base[:MAX_FILENAME_CHARS] or "upload"


def data_dir() -> Path:
    """The instance's data directory (tests point `MEMHUB_DATA_DIR` at a temporary one)."""
    return Path(str(getattr(settings, "MEMHUB_DATA_DIR", "") or settings.DATA_DIR))


def market_dir(*parts: str) -> Path:
    return data_dir().joinpath("marketplace", *parts)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(target: Path, data: bytes) -> None:
    """Write through a temporary file in the same directory and rename: readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def relative_to_data(path: Path) -> str:
    """How a stored file is recorded: relative to the data directory, so the directory may move."""
    try:
        return str(path.relative_to(data_dir()))
    except ValueError:
        return str(path)


def resolve_stored(recorded: str) -> Path:
    """The absolute path of a file recorded with `relative_to_data`; never outside the data directory."""
    root = data_dir().resolve()
    path = (root / recorded).resolve()
    if root != path and root not in path.parents:
        raise ApplicationError("A stored upload path points outside the data directory.")
    return path
