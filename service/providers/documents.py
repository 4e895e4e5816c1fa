"""Document parts (PDF), shared by the request transforms of the providers that read
them: the media type, the bytes as base64 (from `data` or a base64 data URL) and the
size limits. Pure.

Limits: Anthropic and OpenAI take requests of up to 32 MB, Gemini inline data of up to
20 MB (larger files go through its File API, by URL). A document over its provider's
limit is refused before anything is sent, naming the field.
"""

from __future__ import annotations

import base64
import binascii
import re

from llmgateway.v1 import content_pb2

from service.errors import FieldViolation, GatewayError, invalid_argument

PDF = "application/pdf"
MIME_TYPES = frozenset({PDF})
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
GEMINI_MAX_INLINE_BYTES = 20 * 1024 * 1024
MAX_TITLE_CHARS = 500
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.S)


def mime_type(document: content_pb2.Document) -> str:
    """The document's media type; PDF when the caller left it empty."""
    return document.mime_type or PDF


def _too_large(field: str, size: int, limit: int, provider: str) -> GatewayError:
    return invalid_argument(
        [
            FieldViolation(
                field,
                f"the document is {size} bytes; {provider} models take at most {limit} bytes"
                " inline",
            )
        ]
    )


def inline(
    document: content_pb2.Document, path: str, limit: int, provider: str
) -> tuple[str, str] | None:
    """(media type, base64 data) for a document given inline (`data`, or a base64 data
    URL); None for an http(s) URL the provider fetches itself. Raises INVALID_ARGUMENT
    for a malformed data URL or a document over `limit` bytes."""
    if document.WhichOneof("source") == "data":
        if len(document.data) > limit:
            raise _too_large(f"{path}.data", len(document.data), limit, provider)
        return mime_type(document), base64.b64encode(document.data).decode("ascii")
    url = document.url
    if not url.startswith("data:"):
        return None
    match = _DATA_URL.match(url)
    if match is None:
        raise invalid_argument(
            [FieldViolation(f"{path}.url", "must be a base64 data URL with a media type")]
        )
    try:
        size = len(base64.b64decode(match["data"], validate=True))
    except (binascii.Error, ValueError):
        raise invalid_argument(
            [FieldViolation(f"{path}.url", "the data URL holds invalid base64")]
        ) from None
    if size > limit:
        raise _too_large(f"{path}.url", size, limit, provider)
    return match["mime"], match["data"]
