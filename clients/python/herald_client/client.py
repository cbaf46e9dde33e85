"""A client for a herald node's HTTP/JSON API (docs/API.md), on the Python
standard library alone.

Each call opens its own HTTP connection (cheap on loopback, where the API
listens), so one :class:`Client` may be shared between threads. Streams
(:class:`Subscription`) hold a connection of their own for as long as they
are read.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from .errors import (
    ProtocolError,
    ServerError,
    TooManyRequests,
    TransportError,
    error_from_answer,
    error_from_event,
)

# ---------------------------------------------------------------------------
# Limits. Each is a bound on what the client waits for, keeps or retries.

#: How long a request may wait for the node (connect, send, each read), in
#: seconds, unless the client is built with another ``timeout``. A pull that
#: waits (``wait_ms``) gets that much more.
TIMEOUT_S_DEFAULT = 30.0

#: How long a stream may stay silent before the client takes the connection
#: for dead and reconnects, in seconds. An idle stream sends a keep-alive
#: comment every 15 s (the node's ``STREAM_KEEPALIVE_MS``), so three missed
#: keep-alives mean the connection is gone.
STREAM_SILENCE_S_MAX = 45.0

#: Consecutive failed attempts to reopen a dropped stream before the
#: subscription gives up and raises. A successful reopening starts the count
#: again.
RECONNECT_ATTEMPTS_MAX = 8

#: The pause before the first reopening attempt, in seconds; it doubles after
#: each failed attempt up to :data:`RECONNECT_DELAY_S_MAX`.
RECONNECT_DELAY_S_MIN = 0.05

#: The longest pause between two reopening attempts, in seconds.
RECONNECT_DELAY_S_MAX = 5.0

#: Longest line of a Server-Sent Event stream the client reads (16 MiB): an
#: event's JSON on one line, whose payload is at most 1 MiB but may grow
#: when escaped (up to six bytes for one control character).
SSE_LINE_BYTES_MAX = 16 * 1024 * 1024

#: Most events the node takes in one publish (its ``PUBLISH_EVENTS_MAX``);
#: :meth:`Client.publish_batch` refuses more (413 from the node), and the
#: client does not split a batch on its own, so one call stays one request.
PUBLISH_EVENTS_MAX = 10_000

_JSON = "application/json"


# ---------------------------------------------------------------------------
# What the node answers.


class Event(dict):
    """An event as the node gives it (docs/API.md, "The event"): a ``dict``
    of the event's JSON, keys in the node's order, with attributes for the
    fields most callers use."""

    @property
    def position(self) -> int:
        """Where the event stands in this node's arrival order: the cursor
        of reads, streams and acknowledgements."""
        return self["position"]

    @property
    def id(self) -> str:
        return self["id"]

    @property
    def feed(self) -> str:
        return self["feed"]

    @property
    def seq(self) -> int:
        return self["seq"]

    @property
    def type(self) -> str:
        return self["type"]

    @property
    def time(self) -> str:
        return self["time"]

    @property
    def meta(self) -> Dict[str, str]:
        return self.get("meta", {})

    @property
    def data(self) -> Any:
        """The decrypted payload when it is JSON (``payload == "json"``),
        else ``None``."""
        return self.get("data")

    @property
    def data_bytes(self) -> Optional[bytes]:
        """The decrypted payload as bytes: the JSON as the node stored it,
        or the bytes of a binary payload; ``None`` when this node cannot
        read it (``encrypted``, ``pruned``, ``damaged``)."""
        if "data_base64" in self:
            return base64.b64decode(self["data_base64"])
        if "data" in self:
            return json.dumps(self["data"], separators=(",", ":")).encode("utf-8")
        return None


@dataclass(frozen=True)
class Receipt:
    """What the node answers for each published event once it is durable."""

    feed: str
    seq: int
    id: str
    hash: str


@dataclass(frozen=True)
class Page:
    """A page of events in arrival order; read on with
    ``after=page.next_after`` (it may be past the last event returned: the
    node looked at events it did not want up to there)."""

    events: List[Event]
    next_after: int


@dataclass(frozen=True)
class FeedPage:
    """A range of a feed; ``next_seq`` continues it, ``None`` at the head."""

    events: List[Event]
    next_seq: Optional[int]


def _receipts(answer: Mapping[str, Any]) -> List[Receipt]:
    try:
        return [Receipt(r["feed"], r["seq"], r["id"], r["hash"]) for r in answer["receipts"]]
    except (KeyError, TypeError) as e:
        raise ProtocolError(f"a publish answer without receipts: {answer!r}") from e


def _events(items: Any) -> List[Event]:
    if not isinstance(items, list):
        raise ProtocolError(f"expected a list of events, got {items!r}")
    return [Event(e) for e in items]


# ---------------------------------------------------------------------------
# The client.


def event(
    type: str,
    data: Any = None,
    *,
    data_bytes: Optional[bytes] = None,
    meta: Optional[Mapping[str, str]] = None,
    channel: Optional[str] = None,
    schema_version: Optional[int] = None,
) -> Dict[str, Any]:
    """One event to publish, in the API's form: ``data`` is any JSON value;
    ``data_bytes`` (instead of ``data``) is sent as ``data_base64``."""
    body: Dict[str, Any] = {"type": type}
    if data_bytes is not None:
        body["data_base64"] = base64.b64encode(data_bytes).decode("ascii")
    else:
        body["data"] = data
    if meta is not None:
        body["meta"] = dict(meta)
    if channel is not None:
        body["channel"] = channel
    if schema_version is not None:
        body["schema_version"] = schema_version
    return body


class Client:
    """A herald node's HTTP API.

    ``base_url`` is where the API listens: ``http://127.0.0.1:8400`` (or
    just ``127.0.0.1:8400``). ``timeout`` bounds each request (seconds).
    ``ssl_context`` is used for an ``https://`` address.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = TIMEOUT_S_DEFAULT,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        if "://" not in base_url:
            base_url = "http://" + base_url
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http:// or https:// address: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._scheme = url.scheme
        self._host = url.hostname
        self._port = url.port
        self._prefix = url.path.rstrip("/")
        self.timeout = timeout
        self._ssl = ssl_context

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # -- transport ---------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _target(self, path: str, params: Optional[Sequence[tuple]] = None) -> str:
        target = self._prefix + path
        pairs = [(k, str(v)) for k, v in (params or []) if v is not None]
        if pairs:
            target += "?" + urllib.parse.urlencode(pairs)
        return target

    def _send(
        self,
        method: str,
        path: str,
        params: Optional[Sequence[tuple]] = None,
        body: Optional[bytes] = None,
        content_type: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> tuple:
        """Sends a request; returns ``(connection, response)`` with the
        body unread, or raises :class:`TransportError`."""
        all_headers = {"Accept": _JSON}
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        all_headers.update(headers or {})
        target = self._target(path, params)
        conn = self._connection(self.timeout if timeout is None else timeout)
        try:
            conn.request(method, target, body=body, headers=all_headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise TransportError(f"{method} {self.base_url}{target}: {e}") from e

    def _call(
        self,
        method: str,
        path: str,
        params: Optional[Sequence[tuple]] = None,
        body: Any = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """One JSON request; the answer's JSON (``None`` for 204), or an
        :class:`ApiError` for an error answer."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        conn, response = self._send(
            method, path, params, data, _JSON if data is not None else None, timeout=timeout
        )
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise TransportError(f"{method} {self.base_url}{path}: reading the answer: {e}") from e
        finally:
            conn.close()
        if response.status >= 400:
            raise error_from_answer(response.status, raw)
        if response.status == 204 or not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ProtocolError(f"{method} {path}: the answer is not JSON: {raw[:200]!r}") from e

    # -- publish -----------------------------------------------------------

    def publish(
        self,
        type: str,
        data: Any = None,
        *,
        data_bytes: Optional[bytes] = None,
        meta: Optional[Mapping[str, str]] = None,
        channel: Optional[str] = None,
        schema_version: Optional[int] = None,
    ) -> Receipt:
        """Publishes one event; returns its receipt once it is durable."""
        one = event(
            type,
            data,
            data_bytes=data_bytes,
            meta=meta,
            channel=channel,
            schema_version=schema_version,
        )
        return _receipts(self._call("POST", "/v1/events", body=one))[0]

    def publish_batch(self, events: Iterable[Mapping[str, Any]]) -> List[Receipt]:
        """Publishes events (dicts in the API's form, as :func:`event`
        builds them) in one request; returns their receipts, in order, once
        every one is durable. One bad event refuses the whole batch and
        nothing is written; at most :data:`PUBLISH_EVENTS_MAX` per call."""
        batch = [dict(e) for e in events]
        return _receipts(self._call("POST", "/v1/events", body=batch))

    # -- read --------------------------------------------------------------

    @staticmethod
    def _start(after: Optional[int], from_: Optional[str]) -> List[tuple]:
        if after is not None and from_ is not None:
            raise ValueError("give after or from_, not both")
        return [("after", after), ("from", from_)]

    def events(
        self,
        types: Optional[Sequence[str]] = None,
        *,
        feed: Optional[str] = None,
        after: Optional[int] = None,
        from_: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> Page:
        """A page of events in arrival order matching any of ``types``
        (patterns with ``*`` and ``?``; none: every type), from ``after`` a
        position or ``from_`` (``start``, ``now`` or an RFC 3339 time)."""
        params = [("type", t) for t in types or []]
        params += [("feed", feed), ("limit", limit)] + self._start(after, from_)
        answer = self._call("GET", "/v1/events", params)
        return Page(_events(answer.get("events")), answer["next_after"])

    def iter_events(
        self,
        types: Optional[Sequence[str]] = None,
        *,
        feed: Optional[str] = None,
        after: Optional[int] = None,
        from_: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> Iterator[Event]:
        """Every event the node holds now that matches, page by page, in
        arrival order (it stops at the end; :meth:`subscribe` goes on)."""
        page = self.events(types, feed=feed, after=after, from_=from_, limit=page_size)
        while True:
            yield from page.events
            if not page.events and page.next_after == after:
                return
            after = page.next_after
            page = self.events(types, feed=feed, after=after, limit=page_size)

    def event(self, id: str) -> List[Event]:
        """The events holding this id (usually one; authors choose ids, so
        two feeds may hold one). Raises :class:`NotFound` if none."""
        path = "/v1/events/" + urllib.parse.quote(id, safe="")
        return _events(self._call("GET", path)["events"])

    def feed_events(
        self,
        feed: str,
        *,
        from_seq: Optional[int] = None,
        to_seq: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> FeedPage:
        """A feed's events by sequence number (``to_seq`` inclusive)."""
        path = f"/v1/feeds/{urllib.parse.quote(feed, safe='')}/events"
        params = [("from_seq", from_seq), ("to_seq", to_seq), ("limit", limit)]
        answer = self._call("GET", path, params)
        return FeedPage(_events(answer["events"]), answer["next_seq"])

    def feeds(self) -> List[Dict[str, Any]]:
        """Every feed this node holds and its head."""
        return self._call("GET", "/v1/feeds")["feeds"]

    # -- subscribe ---------------------------------------------------------

    def subscribe(
        self,
        types: Optional[Sequence[str]] = None,
        *,
        after: Optional[int] = None,
        from_: Optional[str] = None,
        last_event_id: Optional[int] = None,
        reconnect: bool = True,
        silence_s_max: float = STREAM_SILENCE_S_MAX,
    ) -> "Subscription":
        """A live stream (Server-Sent Events) of the events matching
        ``types``, from ``after``/``from_`` (default: the first event), or
        right after ``last_event_id`` (a :attr:`Subscription.last_event_id`
        kept from an earlier subscription). The stream is opened before
        this returns, so a bad request raises here. With ``reconnect``, a
        dropped connection is reopened after the last position seen:
        nothing is lost and nothing repeated."""
        params = [("type", t) for t in types or []] + self._start(after, from_)
        return Subscription(self, "/v1/stream", params, last_event_id, reconnect, silence_s_max)

    # -- durable consumers -------------------------------------------------

    def create_consumer(
        self,
        name: str,
        types: Optional[Sequence[str]] = None,
        *,
        after: Optional[int] = None,
        from_: Optional[str] = None,
    ) -> "Consumer":
        """Creates the durable consumer ``name`` (or finds it: an existing
        one keeps its acknowledged position unless ``after`` or ``from_``
        repositions it). Changing the ``types`` of an existing consumer
        without a new position raises :class:`Conflict`."""
        body: Dict[str, Any] = {}
        if types is not None:
            body["types"] = list(types)
        if after is not None and from_ is not None:
            raise ValueError("give after or from_, not both")
        if after is not None:
            body["after"] = after
        if from_ is not None:
            body["from"] = from_
        consumer = Consumer(self, name)
        consumer._info = self._call("PUT", consumer._path, body=body)
        return consumer

    def consumer(self, name: str) -> "Consumer":
        """A handle on the existing consumer ``name`` (nothing is sent)."""
        return Consumer(self, name)

    def consumers(self) -> List[Dict[str, Any]]:
        """The durable consumers this node keeps for API clients."""
        return self._call("GET", "/v1/consumers")["consumers"]

    # -- queries, sagas, status --------------------------------------------

    def query(
        self,
        to: str,
        type: str,
        data: Any = None,
        *,
        correlation_id: Optional[str] = None,
        timeout_ms: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Asks service ``to`` a synchronous question through this node.
        The answer's ``status`` is ``success``, ``not_found``, ``error``,
        ``no_handler``, ``timeout`` or ``unreachable``; ``signed`` says
        whether the responder signed it; ``data`` is its JSON."""
        body: Dict[str, Any] = {"to": to, "type": type}
        if data is not None:
            body["data"] = data
        if correlation_id is not None:
            body["correlation_id"] = correlation_id
        wait = self.timeout
        if timeout_ms is not None:
            body["timeout_ms"] = timeout_ms
            wait += timeout_ms / 1000
        return self._call("POST", "/v1/queries", body=body, timeout=wait)

    def start_saga(self, definition: Union[str, Mapping[str, Any]], input: Any = None) -> str:
        """Starts a saga this node orchestrates (``definition`` as TOML text
        or a dict); returns its id once the start is durable."""
        body: Dict[str, Any] = {"definition": definition}
        if input is not None:
            body["input"] = input
        return self._call("POST", "/v1/sagas", body=body)["saga_id"]

    def saga(self, id: str) -> Dict[str, Any]:
        """A saga's stored state."""
        return self._call("GET", "/v1/sagas/" + urllib.parse.quote(id, safe=""))

    def sagas(self, status: Optional[str] = None, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """The sagas this node orchestrates, newest first."""
        return self._call("GET", "/v1/sagas", [("status", status), ("limit", limit)])["sagas"]

    def saga_history(self, id: str) -> List[Dict[str, Any]]:
        """A saga's signed events, by time."""
        path = f"/v1/sagas/{urllib.parse.quote(id, safe='')}/history"
        return self._call("GET", path)["events"]

    def status(self) -> Dict[str, Any]:
        """The node's status (as ``herald status --json``)."""
        return self._call("GET", "/v1/status")

    def peers(self) -> List[Dict[str, Any]]:
        """The configured peers and their connections."""
        return self._call("GET", "/v1/peers")["peers"]

    def ready(self) -> bool:
        """Whether the node can publish now (``/readyz``)."""
        try:
            self._call("GET", "/readyz")
            return True
        except ServerError:
            return False


# ---------------------------------------------------------------------------
# Durable consumers.


class Consumer:
    """A durable consumer: a named position the node keeps.

    :meth:`fetch` pulls events after this handle's own fetch position (at
    first: the acknowledged position); :meth:`ack` makes a position durable.
    A new handle (after the client restarts) starts again right after the
    last acknowledgement: delivery is at-least-once, so make handling
    idempotent.
    """

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name
        self._path = "/v1/consumers/" + urllib.parse.quote(name, safe="")
        self._after: Optional[int] = None
        self._info: Optional[Dict[str, Any]] = None

    def __repr__(self) -> str:
        return f"Consumer({self.name!r})"

    def info(self) -> Dict[str, Any]:
        """The consumer as the node keeps it: ``name``, ``types``,
        ``acked``, ``updated``. Raises :class:`NotFound` if it is gone."""
        self._info = self.client._call("GET", self._path)
        return self._info

    @property
    def acked(self) -> Optional[int]:
        """The acknowledged position as of the last answer seen."""
        return None if self._info is None else self._info.get("acked")

    def fetch(self, max: Optional[int] = None, wait_ms: Optional[int] = None) -> List[Event]:
        """Up to ``max`` events after this handle's fetch position. With
        ``wait_ms``, waits that long for one if there is none yet."""
        params = [("max", max), ("wait_ms", wait_ms), ("after", self._after)]
        timeout = self.client.timeout + (wait_ms or 0) / 1000
        answer = self.client._call("GET", self._path + "/events", params, timeout=timeout)
        self._after = answer["next_after"]
        if self._info is not None:
            self._info["acked"] = answer["acked"]
        return _events(answer["events"])

    def ack(self, position: Union[int, Event]) -> int:
        """Acknowledges everything up to and including ``position`` (or an
        event's); returns the acknowledged position (an older one changes
        nothing)."""
        if isinstance(position, Event):
            position = position.position
        acked = self.client._call("POST", self._path + "/ack", body={"position": position})["acked"]
        if self._info is not None:
            self._info["acked"] = acked
        return acked

    def rewind(self) -> None:
        """Fetches from the acknowledged position again (redelivers what
        was fetched and not acknowledged)."""
        self._after = None

    def stream(
        self, *, reconnect: bool = True, silence_s_max: float = STREAM_SILENCE_S_MAX
    ) -> "Subscription":
        """The consumer's events as a live stream from its acknowledged
        position; acknowledge with :meth:`ack` as you go."""
        return Subscription(self.client, self._path + "/stream", [], None, reconnect, silence_s_max)

    def delete(self) -> None:
        """Deletes the consumer."""
        self.client._call("DELETE", self._path)


# ---------------------------------------------------------------------------
# Server-Sent Events.


class Subscription:
    """A live stream of events; iterate it.

    :attr:`last_event_id` is the position up to which every event asked for
    has been handed out (the stream's ``id:`` lines, including those without
    an event). When the connection drops, the subscription reopens it with
    ``Last-Event-ID`` set to it, so nothing is lost or repeated; it counts
    reopenings in :attr:`reconnects`. Keep ``last_event_id`` to resume in a
    later subscription (``Client.subscribe(last_event_id=...)``).
    """

    def __init__(
        self,
        client: Client,
        path: str,
        params: List[tuple],
        last_event_id: Optional[int],
        reconnect: bool,
        silence_s_max: float,
    ) -> None:
        self.client = client
        self.last_event_id = last_event_id
        self.reconnects = 0
        self._path = path
        self._params = params
        self._reconnect = reconnect
        self._silence_s_max = silence_s_max
        self._conn: Optional[http.client.HTTPConnection] = None
        self._response: Optional[http.client.HTTPResponse] = None
        self._closed = False
        self._open()

    def __iter__(self) -> "Subscription":
        return self

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the stream; iteration ends."""
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
        if self._conn is not None:
            self._conn.close()
        self._response = None
        self._conn = None

    def _open(self) -> None:
        headers = {"Accept": "text/event-stream"}
        params = self._params
        if self.last_event_id is not None:
            # The header wins over the start parameters; leave them out.
            headers["Last-Event-ID"] = str(self.last_event_id)
            params = [(k, v) for k, v in params if k not in ("after", "from")]
        conn, response = self.client._send(
            "GET", self._path, params, headers=headers, timeout=self._silence_s_max
        )
        if response.status != 200:
            try:
                raw = response.read()
            except (OSError, http.client.HTTPException):
                raw = b""
            conn.close()
            raise error_from_answer(response.status, raw)
        self._conn, self._response = conn, response

    def _reopen(self) -> None:
        """Reopens a dropped stream, retrying with growing pauses."""
        delay = RECONNECT_DELAY_S_MIN
        for attempt in range(1, RECONNECT_ATTEMPTS_MAX + 1):
            time.sleep(delay)
            try:
                self._open()
                self.reconnects += 1
                return
            except (TransportError, TooManyRequests, ServerError) as e:
                if attempt == RECONNECT_ATTEMPTS_MAX:
                    raise TransportError(
                        f"the stream {self._path} dropped and could not be reopened "
                        f"after {attempt} attempts (last event id {self.last_event_id}): {e}"
                    ) from e
                delay = min(delay * 2, RECONNECT_DELAY_S_MAX)

    def _read_block(self) -> Optional[Dict[str, Any]]:
        """The next complete block (``id``, ``event``, ``data``), or
        ``None`` if the connection ended or broke first."""
        block: Dict[str, Any] = {}
        data: List[str] = []
        assert self._response is not None
        while True:
            try:
                line = self._response.readline(SSE_LINE_BYTES_MAX + 1)
            except (OSError, http.client.HTTPException, ValueError, AttributeError):
                # A reset, a silence over the limit (socket.timeout is an
                # OSError), or a response closed under us.
                return None
            if not line.endswith(b"\n"):
                if len(line) > SSE_LINE_BYTES_MAX:
                    raise ProtocolError(
                        f"a line of the stream {self._path} is over {SSE_LINE_BYTES_MAX} bytes"
                    )
                return None  # ended mid-block: what was read is dropped
            text = line.decode("utf-8").rstrip("\r\n")
            if text == "":
                if block or data:
                    if data:
                        block["data"] = "\n".join(data)
                    return block
                continue
            if text.startswith(":"):
                continue  # a comment (keep-alive)
            name, _, value = text.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "id":
                block["id"] = value
            elif name == "event":
                block["event"] = value
            # `retry` and unknown fields are ignored, as the SSE spec says.

    def __next__(self) -> Event:
        while True:
            if self._closed:
                raise StopIteration
            if self._response is None:
                if not self._reconnect:
                    raise StopIteration
                self._reopen()
            block = self._read_block()
            if block is None:
                self._drop()
                if self._closed or not self._reconnect:
                    raise StopIteration
                continue
            if "id" in block:
                try:
                    self.last_event_id = int(block["id"])
                except ValueError as e:
                    raise ProtocolError(f"a stream id that is not a position: {block['id']!r}") from e
            if block.get("event") == "error":
                self.close()
                raise error_from_event(block.get("data", ""))
            if "data" not in block:
                continue  # a position mark: nothing to hand out
            try:
                return Event(json.loads(block["data"]))
            except ValueError as e:
                raise ProtocolError(f"a stream event that is not JSON: {block['data'][:200]!r}") from e


__all__ = [
    "Client",
    "Consumer",
    "Event",
    "FeedPage",
    "Page",
    "Receipt",
    "Subscription",
    "event",
]
