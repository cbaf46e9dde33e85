"""The exceptions the client raises.

Every answer of the node that is not a success carries one JSON shape,
``{"error": {"code": ..., "message": ..., "field": ...}}`` (docs/API.md,
"Errors"). The client turns it into an :class:`ApiError` subclass chosen by
the HTTP status, with the JSON's parts as attributes, so a caller can catch
what it can handle (``except NotFound``) and branch on the stable ``code``.
A request that never got an answer raises :class:`TransportError`.
"""

from __future__ import annotations

import json
from typing import Any, Optional


class HeraldError(Exception):
    """Base of every exception this package raises."""


class TransportError(HeraldError):
    """The node could not be reached, or the connection broke before an
    answer (or the rest of a stream) arrived."""


class ProtocolError(HeraldError):
    """The node answered something this client does not understand (not
    JSON where JSON is promised, or a malformed Server-Sent Event)."""


class ApiError(HeraldError):
    """The node answered with an error.

    Attributes:
        status: the HTTP status (400, 404, 409, 413, ...).
        code: the stable error code (``invalid_field``, ``not_found``, ...).
        message: what went wrong, where and why, as the node said it.
        field: what in the request is at fault: a body field by its path
            (``type``, ``[3].meta``), a query parameter, a header, or
            ``body``; ``None`` when nothing in the request is.
        receipts: for a publish that failed part-way, the receipts of the
            events made durable before the failure (else ``None``).
        body: the whole error JSON as a dict (or the raw text when the
            answer was not JSON).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: Optional[str] = None,
        receipts: Optional[list] = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.receipts = receipts
        self.body = body
        where = f" (field {field})" if field else ""
        super().__init__(f"{status} {code}{where}: {message}")


class BadRequest(ApiError):
    """400: malformed JSON, a bad or unknown field or parameter, an unknown
    channel. ``field`` names the culprit."""


class NotFound(ApiError):
    """404: no such event, feed, consumer, saga or route."""


class MethodNotAllowed(ApiError):
    """405: the route exists, the method does not."""


class Conflict(ApiError):
    """409: a consumer exists with other types, was redefined meanwhile, or
    the node keeps the most consumers it allows."""


class PayloadTooLarge(ApiError):
    """413: the body is over the node's limit (16 MiB) or a publish holds
    more than 10,000 events."""


class UnsupportedMediaType(ApiError):
    """415: the body's content type is not one the endpoint reads."""


class TooManyRequests(ApiError):
    """429: the node serves the most streams it allows; retry when one ends."""


class ServerError(ApiError):
    """5xx: the node's own fault (its store failed, or something else)."""


class Unavailable(ServerError):
    """503: the node cannot publish yet (it recovers its own feed from its
    peers) or is shutting down; retry."""


_BY_STATUS = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: TooManyRequests,
    503: Unavailable,
}


def error_from_answer(status: int, body: bytes) -> ApiError:
    """The exception for an error answer of ``status`` with ``body``."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
        error = parsed["error"]
        return cls(
            status,
            str(error.get("code", "unknown")),
            str(error.get("message", "")),
            error.get("field"),
            parsed.get("receipts"),
            parsed,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return cls(status, "unknown", text.strip() or f"HTTP {status}", None, None, text)


def error_from_event(data: str) -> ApiError:
    """The exception for a stream's ``error`` event (the store failed while
    streaming); its data is the error JSON."""
    return error_from_answer(500, data.encode("utf-8"))
