"""Adapter uploads stream to disk and stop at a byte cap.

Django keeps small file parts in memory and large ones in temporary files, with no limit on either
(`DATA_UPLOAD_MAX_MEMORY_SIZE` excludes file parts). The adapter endpoint installs this handler instead:
every file part goes to a temporary file as it arrives, the bytes of all parts are counted, and the part
that crosses `MEMHUB_ADAPTER_MAX_BYTES` ends the request with 413 naming the limit, its temporary file
removed. A request whose declared length is already over the cap is refused before its body is read.
"""

from __future__ import annotations

from typing import Any

from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import HttpRequest

from inference.services.adapters import adapter_upload_too_large

# Room for the form fields and multipart boundaries around the files in a request's declared length.
FORM_ALLOWANCE_BYTES = 64 * 1024


class CappedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    def __init__(self, request: HttpRequest | None = None, *, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.received = 0

    def handle_raw_input(
        self,
        input_data: Any,
        META: Any,
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        if content_length and content_length > self.limit + FORM_ALLOWANCE_BYTES:
            raise adapter_upload_too_large(field="request body", limit=self.limit)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.file.close()  # a temporary upload file is deleted when closed
            raise adapter_upload_too_large(field=self.field_name or "file", limit=self.limit)
        return super().receive_data_chunk(raw_data, start)
