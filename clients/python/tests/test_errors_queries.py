"""Error answers as typed exceptions naming the field (and writing
nothing), queries through the node, and sagas."""

import unittest
import uuid

from herald_client import (
    ApiError,
    BadRequest,
    Client,
    HeraldError,
    NotFound,
    PayloadTooLarge,
    PUBLISH_EVENTS_MAX,
    TransportError,
    event,
)

from .support import node_client, peer_name, wait_for


def setUpModule() -> None:
    node = node_client()
    wait_for("the node to be ready", node.ready)
    wait_for(
        "every peer to be connected",
        lambda: all(p["connected"] for p in node.peers()) and node.peers(),
    )


class Errors(unittest.TestCase):
    def setUp(self) -> None:
        self.node = node_client()
        self.kind = f"e{uuid.uuid4().hex[:12]}"

    def stored(self) -> int:
        return len(list(self.node.iter_events([f"{self.kind}.*"])))

    def test_a_bad_event_in_a_batch_is_a_400_naming_it_and_nothing_is_written(self) -> None:
        cases = [
            # (the bad event, code, field)
            ({"type": f"{self.kind}.x", "data": 1, "colour": "red"}, "invalid_field", "[1]"),
            ({"type": f"{self.kind}.x", "data": 1, "channel": "finance"}, "unknown_channel", "[1].channel"),
            ({"type": "has space", "data": 1}, "invalid_field", "[1].type"),
            ({"type": f"{self.kind}.x", "data": 1, "meta": {"k": 7}}, "invalid_field", "[1].meta"),
        ]
        for bad, code, field in cases:
            with self.subTest(bad=bad):
                with self.assertRaises(BadRequest) as caught:
                    self.node.publish_batch([event(f"{self.kind}.ok", 1), bad])
                error = caught.exception
                self.assertEqual((error.status, error.code), (400, code), str(error))
                self.assertTrue(
                    (error.field or "").startswith(field),
                    f"{error.field!r} names {field!r}: {error}",
                )
                self.assertTrue(error.message, "a message saying why")
                self.assertEqual(error.body["error"]["code"], code, "the JSON is kept")
        self.assertEqual(self.stored(), 0, "no event of a refused batch was written")

    def test_a_payload_over_one_mebibyte_is_refused_naming_data(self) -> None:
        with self.assertRaises(BadRequest) as caught:
            self.node.publish(f"{self.kind}.big", data_bytes=b"x" * (1024 * 1024 + 1))
        self.assertIn("data", caught.exception.field)
        self.assertEqual(self.stored(), 0)

    def test_too_many_events_is_a_413_naming_the_body(self) -> None:
        batch = [event(f"{self.kind}.n", n) for n in range(PUBLISH_EVENTS_MAX + 1)]
        with self.assertRaises(PayloadTooLarge) as caught:
            self.node.publish_batch(batch)
        error = caught.exception
        self.assertEqual((error.status, error.code, error.field), (413, "too_large", "body"))
        self.assertEqual(self.stored(), 0)

    def test_a_body_over_16_mebibytes_is_a_413(self) -> None:
        big = "x" * (700 * 1024)
        batch = [event(f"{self.kind}.n", big) for _ in range(25)]  # ~17.5 MiB
        with self.assertRaises(PayloadTooLarge) as caught:
            self.node.publish_batch(batch)
        self.assertEqual((caught.exception.code, caught.exception.field), ("too_large", "body"))
        self.assertEqual(self.stored(), 0)

    def test_what_does_not_exist_is_a_404_naming_it(self) -> None:
        with self.assertRaises(NotFound) as caught:
            self.node.event(str(uuid.uuid4()))
        self.assertEqual((caught.exception.code, caught.exception.field), ("not_found", "id"))
        with self.assertRaises(NotFound) as caught:
            self.node.feed_events("no-such-feed")
        self.assertEqual(caught.exception.field, "feed")
        with self.assertRaises(NotFound):
            self.node.consumer(f"nobody-{self.kind}").info()
        with self.assertRaises(NotFound):
            self.node.saga(str(uuid.uuid4()))

    def test_a_bad_parameter_is_a_400_naming_it(self) -> None:
        with self.assertRaises(BadRequest) as caught:
            self.node.events(limit=0)
        self.assertEqual((caught.exception.code, caught.exception.field), ("invalid_parameter", "limit"))
        with self.assertRaises(BadRequest) as caught:
            self.node.event("not-a-uuid")
        self.assertEqual(caught.exception.field, "id")

    def test_errors_are_typed_for_catching_by_family(self) -> None:
        with self.assertRaises(ApiError):
            self.node.event(str(uuid.uuid4()))
        with self.assertRaises(HeraldError):
            self.node.event(str(uuid.uuid4()))

    def test_a_node_that_is_not_there_is_a_transport_error(self) -> None:
        with socket_on_no_port() as port:
            with self.assertRaises(TransportError):
                Client(f"http://127.0.0.1:{port}", timeout=5).feeds()


class socket_on_no_port:
    """A local port nothing listens on (bound, never listened, so a
    connection to it is refused)."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return self._socket.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._socket.close()


PING_SAGA = """
saga_type = "Ping"
deadline_ms = 30000

[[steps]]
name = "ping"
service = "{peer}"
command = "ping.do"
compensation = "ping.undo"
deadline_ms = 20000
"""


class QueriesAndSagas(unittest.TestCase):
    def setUp(self) -> None:
        self.node = node_client()
        self.feed = self.node.status()["service"]

    def test_a_query_to_a_peer_is_answered_and_signed(self) -> None:
        receipt = self.node.publish("query.probe", {})
        answer = wait_for(
            "the peer to hold this node's head",
            lambda: (
                lambda a: a if a["status"] == "success" and a["data"]["seq"] >= receipt.seq else None
            )(
                self.node.query(
                    peer_name(), "herald.head", {"feed": self.feed}, correlation_id="q-1"
                )
            ),
        )
        self.assertEqual(answer["responder"], peer_name())
        self.assertTrue(answer["signed"])
        self.assertEqual(answer["correlation_id"], "q-1")
        self.assertEqual(answer["data"]["feed"], self.feed)

    def test_a_query_nobody_handles_says_so(self) -> None:
        answer = self.node.query(peer_name(), "nobody.handles.this", timeout_ms=5000)
        self.assertEqual(answer["status"], "no_handler")

    def test_a_bad_query_is_a_400_naming_the_field(self) -> None:
        with self.assertRaises(BadRequest) as caught:
            self.node.query(peer_name(), "herald.head", timeout_ms=0)
        self.assertEqual(caught.exception.field, "timeout_ms")

    def test_a_saga_runs_to_completion_and_its_history_reads_back(self) -> None:
        saga_id = self.node.start_saga(PING_SAGA.format(peer=peer_name()), {"n": 7})
        state = wait_for(
            "the saga to complete",
            lambda: (lambda s: s if s["status"] == "completed" else None)(self.node.saga(saga_id)),
        )
        self.assertEqual(state["input"], {"n": 7})
        self.assertIn(saga_id, [s["saga_id"] for s in self.node.sagas(status="completed")])
        history = self.node.saga_history(saga_id)
        types = [h["type"] for h in history]
        self.assertEqual(types[0], "herald.saga.started")
        self.assertIn("herald.saga.reply", types)
        self.assertEqual(list(history[0])[:4], ["time", "feed", "seq", "type"])


if __name__ == "__main__":
    unittest.main()
