"""Checks of document parts that hold for every provider (the request's shape); each
provider's own limits are checked by its request transform (service/providers/documents.py).
"""

from __future__ import annotations

from collections.abc import Callable

from llmgateway.v1 import content_pb2

from service.providers.documents import MAX_DOCUMENT_BYTES, MAX_TITLE_CHARS, MIME_TYPES


def check_document(
    document: content_pb2.Document, path: str, add: Callable[[str, str], None]
) -> None:
    """Calls `add(field, description)` for every problem of the document at `path`."""
    source = document.WhichOneof("source")
    if source is None:
        add(path, "set data or url")
    elif source == "data":
        if not document.data:
            add(f"{path}.data", "must not be empty")
        elif len(document.data) > MAX_DOCUMENT_BYTES:
            add(f"{path}.data", f"must be at most {MAX_DOCUMENT_BYTES} bytes")
    elif not document.url.startswith(("https://", "http://", "data:")):
        add(f"{path}.url", "must be an http(s) URL or a base64 data URL")
    elif len(document.url) > MAX_DOCUMENT_BYTES * 4 // 3 + 64:
        add(f"{path}.url", f"must hold at most {MAX_DOCUMENT_BYTES} bytes")
    if document.mime_type and document.mime_type not in MIME_TYPES:
        add(f"{path}.mime_type", f"must be one of {', '.join(sorted(MIME_TYPES))} (or empty)")
    if len(document.title) > MAX_TITLE_CHARS:
        add(f"{path}.title", f"must be at most {MAX_TITLE_CHARS} characters")
