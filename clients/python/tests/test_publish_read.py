"""Publishing (one event, a batch, bytes) and reading back by every read."""

import unittest
import uuid

from herald_client import Event, Receipt, event

from .support import node_client, wait_for


def setUpModule() -> None:
    wait_for("the node to be ready", node_client().ready)


class PublishAndRead(unittest.TestCase):
    def setUp(self) -> None:
        self.node = node_client()
        self.feed = self.node.status()["service"]
        # A type of this test's own, so others' events never count here.
        self.kind = f"t{uuid.uuid4().hex[:12]}"

    def test_one_event_is_durable_and_reads_back_the_same_by_every_read(self) -> None:
        data = {"donor": "D-1001", "amount_cents": 2500, "address": {"zip": "1000", "city": "X"}}
        receipt = self.node.publish(
            f"{self.kind}.donation", data, meta={"correlation_id": "c-1"}
        )
        self.assertIsInstance(receipt, Receipt)
        self.assertEqual(receipt.feed, self.feed)
        self.assertEqual(len(receipt.hash), 64)

        (by_id,) = self.node.event(receipt.id)
        self.assertIsInstance(by_id, Event)
        self.assertEqual(
            (by_id.feed, by_id.seq, by_id.id, by_id["hash"]),
            (receipt.feed, receipt.seq, receipt.id, receipt.hash),
        )
        self.assertEqual(by_id.type, f"{self.kind}.donation")
        self.assertEqual(by_id.data, data)
        self.assertEqual(by_id.meta, {"correlation_id": "c-1"})
        self.assertEqual(by_id["payload"], "json")
        self.assertEqual(by_id["signature"]["status"], "verified")

        (by_type,) = self.node.events([f"{self.kind}.*"]).events
        by_seq = self.node.feed_events(self.feed, from_seq=receipt.seq, limit=1).events[0]
        # Every read gives the event the same JSON, keys in the same order,
        # and the payload's keys as published (not re-sorted).
        self.assertEqual(list(by_id.items()), list(by_type.items()))
        self.assertEqual(list(by_id.items()), list(by_seq.items()))
        for read in (by_id, by_type, by_seq):
            self.assertEqual(list(read.data), ["donor", "amount_cents", "address"])
            self.assertEqual(list(read.data["address"]), ["zip", "city"])
            self.assertEqual(list(read)[:4], ["position", "id", "feed", "seq"])

    def test_a_batch_gets_receipts_in_order_and_reads_back_in_arrival_order(self) -> None:
        receipts = self.node.publish_batch(
            event(f"{self.kind}.n", {"n": n}) for n in range(50)
        )
        self.assertEqual(len(receipts), 50)
        seqs = [r.seq for r in receipts]
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + 50)), "one feed, consecutive")
        self.assertEqual(len({r.id for r in receipts}), 50)

        page = self.node.events([f"{self.kind}.*"], limit=20)
        self.assertEqual([e.data["n"] for e in page.events], list(range(20)))
        rest = self.node.events([f"{self.kind}.*"], after=page.next_after, limit=1000)
        self.assertEqual([e.data["n"] for e in rest.events], list(range(20, 50)))
        self.assertEqual([e.id for e in page.events + rest.events], [r.id for r in receipts])

        # Paging through all of them, 7 at a time.
        everything = list(self.node.iter_events([f"{self.kind}.*"], page_size=7))
        self.assertEqual([e.data["n"] for e in everything], list(range(50)))
        positions = [e.position for e in everything]
        self.assertEqual(positions, sorted(positions))

        # By feed and sequence number: a range, and where the next starts.
        part = self.node.feed_events(self.feed, from_seq=seqs[10], to_seq=seqs[14])
        self.assertEqual([e.data["n"] for e in part.events], [10, 11, 12, 13, 14])
        self.assertIsNone(part.next_seq)
        part = self.node.feed_events(self.feed, from_seq=seqs[10], to_seq=seqs[14], limit=2)
        self.assertEqual(part.next_seq, seqs[12])

    def test_bytes_are_published_as_base64_and_read_back_as_bytes(self) -> None:
        blob = b"%PDF-1.4\n\x00\xff\xfe binary"
        receipt = self.node.publish(f"{self.kind}.scan", data_bytes=blob)
        (back,) = self.node.event(receipt.id)
        self.assertEqual(back["payload"], "binary")
        self.assertIsNone(back.data)
        self.assertEqual(back.data_bytes, blob)

    def test_the_feed_list_holds_this_nodes_feed_at_its_head(self) -> None:
        receipt = self.node.publish(f"{self.kind}.head", {})
        heads = {f["feed"]: f for f in self.node.feeds()}
        self.assertGreaterEqual(heads[self.feed]["seq"], receipt.seq)
        self.assertEqual(list(heads[self.feed])[:2], ["feed", "seq"])


if __name__ == "__main__":
    unittest.main()
