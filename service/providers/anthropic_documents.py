"""Anthropic `document` content blocks (reference §4.2): a PDF as base64 or by URL,
with its title. Pure."""

from __future__ import annotations

from typing import Any

from llmgateway.v1 import content_pb2

from service.providers import documents


def document_block(document: content_pb2.Document, path: str) -> dict[str, Any]:
    given = documents.inline(document, path, documents.MAX_DOCUMENT_BYTES, "Anthropic")
    if given is None:
        source: dict[str, Any] = {"type": "url", "url": document.url}
    else:
        media_type, data = given
        source = {"type": "base64", "media_type": media_type, "data": data}
    block: dict[str, Any] = {"type": "document", "source": source}
    if document.title:
        block["title"] = document.title
    return block
