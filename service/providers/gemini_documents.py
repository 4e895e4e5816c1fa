"""Gemini (and Vertex AI) document parts (reference §5.2): a PDF inline as
`inlineData {mimeType, data}` (at most 20 MB) or by URL as `fileData {mimeType, fileUri}`.
Gemini has no title for a part; a document's title is not sent. Pure."""

from __future__ import annotations

from typing import Any

from llmgateway.v1 import content_pb2

from service.providers import documents


def document_part(document: content_pb2.Document, path: str) -> dict[str, Any]:
    given = documents.inline(document, path, documents.GEMINI_MAX_INLINE_BYTES, "Gemini")
    if given is None:
        return {"fileData": {"mimeType": documents.mime_type(document), "fileUri": document.url}}
    media_type, data = given
    return {"inlineData": {"mimeType": media_type, "data": data}}
