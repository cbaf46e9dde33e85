"""Subscriptions (Server-Sent Events): live delivery, resumption across
connections dropped by a real TCP proxy, and resumption in a later
subscription from a kept position."""

import threading
import unittest
import uuid

from herald_client import BadRequest, Client, event

from .support import CuttingProxy, node_client, wait_for


def setUpModule() -> None:
    wait_for("the node to be ready", node_client().ready)


def numbers(events):
    return [e.data["n"] for e in events]


class Subscribe(unittest.TestCase):
    def setUp(self) -> None:
        self.node = node_client()
        self.kind = f"s{uuid.uuid4().hex[:12]}"

    def publish(self, numbers_, kind=None):
        kind = kind or f"{self.kind}.n"
        return self.node.publish_batch(event(kind, {"n": n}) for n in numbers_)

    def test_a_stream_delivers_past_and_live_events_of_its_types_only(self) -> None:
        self.publish(range(0, 5))
        self.node.publish(f"{self.kind}x.other", {"n": -1})  # another type
        with self.node.subscribe([f"{self.kind}.*"], from_="start") as sub:
            got = [next(sub) for _ in range(5)]
            self.assertEqual(numbers(got), [0, 1, 2, 3, 4])
            # Published after the stream caught up: delivered live.
            publisher = threading.Thread(target=self.publish, args=(range(5, 8),))
            publisher.start()
            got += [next(sub) for _ in range(3)]
            publisher.join()
            self.assertEqual(numbers(got), list(range(8)))
            self.assertEqual(sub.last_event_id, got[-1].position)
            self.assertEqual(sub.reconnects, 0)

    def test_a_stream_resumes_after_dropped_connections_with_nothing_lost_or_repeated(
        self,
    ) -> None:
        total = 5000
        cuts_min = 5
        self.publish(range(0, total // 2))
        proxy = CuttingProxy(self.node.base_url)
        self.addCleanup(proxy.close)
        through_proxy = Client(proxy.url, timeout=30)
        sub = through_proxy.subscribe([f"{self.kind}.*"], from_="start")
        self.addCleanup(sub.close)
        got = []
        cuts = 0
        for ev in sub:
            got.append(ev)
            if len(got) == total // 4:
                # The rest is published while the subscriber reads.
                threading.Thread(
                    target=self.publish, args=(range(total // 2, total),)
                ).start()
            if len(got) % 250 == 125:
                # Drops the stream's connection (if the client already
                # reopened it: what it has buffered may carry it past a
                # cut or two before it notices).
                cuts += proxy.cut()
            if len(got) == total:
                break
        self.assertEqual(numbers(got), list(range(total)), "nothing lost, nothing repeated")
        self.assertGreaterEqual(cuts, cuts_min)
        # Each dropped connection was reopened once, but the last one may
        # not have been noticed yet: the events it read before the cut were
        # enough.
        self.assertIn(sub.reconnects, (cuts - 1, cuts))
        self.assertEqual(proxy.accepted, sub.reconnects + 1)
        positions = [e.position for e in got]
        self.assertEqual(positions, sorted(set(positions)))

    def test_a_later_subscription_resumes_right_after_a_kept_position(self) -> None:
        self.publish(range(10))
        first = self.node.subscribe([f"{self.kind}.*"], from_="start")
        seen = [next(first) for _ in range(4)]
        kept = first.last_event_id
        first.close()
        self.publish(range(10, 15))
        with self.node.subscribe([f"{self.kind}.*"], last_event_id=kept) as second:
            rest = [next(second) for _ in range(11)]
        self.assertEqual(numbers(seen + rest), list(range(15)))
        # `after=` a position is the same start.
        with self.node.subscribe([f"{self.kind}.*"], after=seen[-1].position) as third:
            self.assertEqual(next(third).data["n"], 4)

    def test_a_stream_from_now_sees_only_what_comes_next(self) -> None:
        self.publish(range(3))
        with self.node.subscribe([f"{self.kind}.*"], from_="now") as sub:
            self.publish([100])
            self.assertEqual(next(sub).data["n"], 100)

    def test_a_bad_pattern_is_refused_when_subscribing_naming_the_parameter(self) -> None:
        with self.assertRaises(BadRequest) as caught:
            self.node.subscribe(["has space"])
        self.assertEqual(caught.exception.code, "invalid_parameter")
        self.assertEqual(caught.exception.field, "type")


if __name__ == "__main__":
    unittest.main()
