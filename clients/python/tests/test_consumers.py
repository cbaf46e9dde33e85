"""Durable consumers: pull, acknowledge, and resume right after the last
acknowledgement when the client process dies and a new one starts."""

import json
import os
import subprocess
import sys
import textwrap
import unittest
import uuid

from herald_client import Conflict, NotFound, event

from .support import api_url, node_client, wait_for


def setUpModule() -> None:
    wait_for("the node to be ready", node_client().ready)


PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A client that pulls 20 events, handles 15 and acknowledges them, pulls 10
# more with its own fetch position, prints what it saw, and dies without
# any cleanup (os._exit), as a crashed service would.
FIRST_CLIENT = textwrap.dedent(
    """
    import json, os, sys
    from herald_client import Client
    api, name, kind = sys.argv[1:4]
    consumer = Client(api).create_consumer(name, [kind + ".*"])
    first = consumer.fetch(max=20)
    acked = consumer.ack(first[14])
    more = consumer.fetch(max=10)
    print(json.dumps({
        "first": [e.data["n"] for e in first],
        "acked": acked,
        "acked_n": first[14].data["n"],
        "more": [e.data["n"] for e in more],
    }), flush=True)
    os._exit(3)
    """
)


class DurableConsumer(unittest.TestCase):
    def setUp(self) -> None:
        self.node = node_client()
        self.kind = f"c{uuid.uuid4().hex[:12]}"
        self.name = f"billing-{self.kind}"

    def publish_orders(self, numbers):
        events = []
        for n in numbers:
            events.append(event(f"{self.kind}.order", {"n": n}))
            if n % 5 == 0:  # other events between them
                events.append(event(f"{self.kind}x.stock", {"n": n}))
        self.node.publish_batch(events)

    def test_a_restarted_client_resumes_right_after_its_last_ack(self) -> None:
        self.publish_orders(range(50))
        run = subprocess.run(
            [sys.executable, "-c", FIRST_CLIENT, api_url(), self.name, self.kind],
            cwd=PACKAGE_DIR,
            env={**os.environ, "PYTHONPATH": PACKAGE_DIR},
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(run.returncode, 3, run.stderr)
        seen = json.loads(run.stdout)
        self.assertEqual(seen["first"], list(range(20)))
        self.assertEqual(seen["acked_n"], 14)
        self.assertEqual(seen["more"], list(range(20, 30)), "a fetch position of its own")

        # The client starts again: a new process, a new handle, the same name.
        restarted = node_client().create_consumer(self.name, [f"{self.kind}.*"])
        self.assertEqual(restarted.acked, seen["acked"], "the ack survived the client")
        again = restarted.fetch(max=100)
        self.assertEqual(
            [e.data["n"] for e in again],
            list(range(15, 50)),
            "resumes right after the ack: the unacknowledged are delivered again",
        )
        self.assertEqual(restarted.ack(again[-1]), again[-1].position)
        self.assertEqual(node_client().consumer(self.name).info()["acked"], again[-1].position)

        # Caught up: a pull that waits returns nothing, then what arrives.
        after_restart = node_client().consumer(self.name)
        self.assertEqual(after_restart.fetch(max=10, wait_ms=200), [])
        self.publish_orders([50])
        self.assertEqual([e.data["n"] for e in after_restart.fetch(max=10, wait_ms=5000)], [50])
        # An older ack changes nothing.
        self.assertEqual(after_restart.ack(1), again[-1].position)

    def test_a_consumer_streams_from_its_ack(self) -> None:
        self.publish_orders(range(10))
        consumer = self.node.create_consumer(self.name, [f"{self.kind}.*"], from_="start")
        consumer.ack(consumer.fetch(max=4)[-1])
        with consumer.stream() as stream:
            got = [next(stream).data["n"] for _ in range(6)]
        self.assertEqual(got, [4, 5, 6, 7, 8, 9])

    def test_a_consumer_is_listed_can_be_rewound_and_deleted(self) -> None:
        self.publish_orders(range(3))
        consumer = self.node.create_consumer(self.name, [f"{self.kind}.*"])
        self.assertIn(self.name, [c["name"] for c in self.node.consumers()])
        self.assertEqual([e.data["n"] for e in consumer.fetch()], [0, 1, 2])
        self.assertEqual(consumer.fetch(), [])
        consumer.rewind()
        self.assertEqual([e.data["n"] for e in consumer.fetch()], [0, 1, 2])
        consumer.delete()
        with self.assertRaises(NotFound) as caught:
            consumer.info()
        self.assertEqual(caught.exception.code, "not_found")

    def test_changing_a_consumers_types_without_a_new_position_is_a_conflict(self) -> None:
        self.node.create_consumer(self.name, [f"{self.kind}.*"])
        with self.assertRaises(Conflict) as caught:
            self.node.create_consumer(self.name, ["other.*"])
        self.assertEqual(caught.exception.status, 409)
        self.assertEqual(caught.exception.code, "conflict")
        # With a new position, it is redefined.
        redefined = self.node.create_consumer(self.name, ["other.*"], from_="start")
        self.assertEqual(redefined.info()["types"], ["other.*"])


if __name__ == "__main__":
    unittest.main()
