"""What the tests share: the node under test (from the environment) and a
TCP proxy whose connections a test can cut, to drop a stream for real."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse
from typing import Callable, List, Tuple

from herald_client import Client, HeraldError

#: Longest a test waits for the node to reach a state (ready, a peer
#: connected, an event arrived).
WAIT_S = 60.0


def api_url() -> str:
    """The API under test. The Rust test (tests/python_client.rs) sets
    HERALD_API; run by hand: HERALD_API=http://127.0.0.1:8400 python3 -m
    unittest discover -s tests -t ."""
    url = os.environ.get("HERALD_API")
    if not url:
        raise RuntimeError(
            "HERALD_API is not set: point it at a node's API (http://127.0.0.1:PORT)"
        )
    return url


def peer_name() -> str:
    """The peer service queries go to (HERALD_PEER)."""
    name = os.environ.get("HERALD_PEER")
    if not name:
        raise RuntimeError("HERALD_PEER is not set: name a peer of the node under test")
    return name


def wait_for(what: str, probe: Callable[[], object], within: float = WAIT_S) -> object:
    """Polls ``probe`` every 50 ms until it returns something true; fails
    naming ``what`` and the last answer after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except HeraldError as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}; last: {last!r}")
        time.sleep(0.05)


class CuttingProxy:
    """Forwards TCP connections from a local port to the node's API until
    :meth:`cut` closes every open one (as a dropped network would); new
    connections are still accepted afterwards."""

    def __init__(self, base_url: str) -> None:
        url = urllib.parse.urlsplit(base_url)
        self._target = (url.hostname, url.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: List[Tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.append((client, upstream))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> int:
        """Closes every open connection; returns how many there were."""
        with self._lock:
            pairs, self._open = self._open, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()


def node_client() -> Client:
    return Client(api_url(), timeout=30)
