"""herald_client: a client for a herald node's HTTP/JSON API, on the Python
standard library alone.

    from herald_client import Client

    node = Client("http://127.0.0.1:8400")
    receipt = node.publish("donation.received", {"donor": "D-1001"})
    for event in node.subscribe(["donation.*"], from_="start"):
        print(event.position, event.type, event.data)

See README.md beside this package, and docs/API.md of herald for the API.
"""

from .client import (
    PUBLISH_EVENTS_MAX,
    RECONNECT_ATTEMPTS_MAX,
    RECONNECT_DELAY_S_MAX,
    RECONNECT_DELAY_S_MIN,
    SSE_LINE_BYTES_MAX,
    STREAM_SILENCE_S_MAX,
    TIMEOUT_S_DEFAULT,
    Client,
    Consumer,
    Event,
    FeedPage,
    Page,
    Receipt,
    Subscription,
    event,
)
from .errors import (
    ApiError,
    BadRequest,
    Conflict,
    HeraldError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    ServerError,
    TooManyRequests,
    TransportError,
    Unavailable,
    UnsupportedMediaType,
)

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "BadRequest",
    "Client",
    "Conflict",
    "Consumer",
    "Event",
    "FeedPage",
    "HeraldError",
    "MethodNotAllowed",
    "NotFound",
    "PUBLISH_EVENTS_MAX",
    "Page",
    "PayloadTooLarge",
    "ProtocolError",
    "RECONNECT_ATTEMPTS_MAX",
    "RECONNECT_DELAY_S_MAX",
    "RECONNECT_DELAY_S_MIN",
    "Receipt",
    "SSE_LINE_BYTES_MAX",
    "STREAM_SILENCE_S_MAX",
    "ServerError",
    "Subscription",
    "TIMEOUT_S_DEFAULT",
    "TooManyRequests",
    "TransportError",
    "Unavailable",
    "UnsupportedMediaType",
    "event",
]
