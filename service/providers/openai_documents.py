"""OpenAI Chat Completions `file` content parts (reference §2.2): a PDF sent inline as
`{"type": "file", "file": {"filename", "file_data": "data:application/pdf;base64,…"}}`.
Chat Completions reads files inline or by uploaded file id, never by URL: an http(s)
document URL is refused before anything is sent. Pure."""

from __future__ import annotations

from typing import Any

from llmgateway.v1 import content_pb2

from service.errors import FieldViolation, invalid_argument
from service.providers import documents

DEFAULT_FILENAME = "document.pdf"


def file_part(document: content_pb2.Document, path: str) -> dict[str, Any]:
    given = documents.inline(document, path, documents.MAX_DOCUMENT_BYTES, "OpenAI")
    if given is None:
        raise invalid_argument(
            [
                FieldViolation(
                    f"{path}.url",
                    "OpenAI models read documents inline only: give data (or a base64 data"
                    " URL), not an http(s) URL",
                )
            ]
        )
    media_type, data = given
    return {
        "type": "file",
        "file": {
            "filename": document.title or DEFAULT_FILENAME,
            "file_data": f"data:{media_type};base64,{data}",
        },
    }
