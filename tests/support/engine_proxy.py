"""A Docker engine that can go away: a relay on a Unix socket of the test's in front of the
machine's dockerd, which the test can cut and restore.

Cut, the relay drops every open connection (a hijacked attach stream among them) and no longer
listens, so a client sees what it sees when dockerd stops: its streams end, new connections are
refused. The machine's dockerd, which other tests and processes use, is never touched. A relay
of bytes rather than an HTTP proxy, because the sandbox's attach streams are upgraded connections.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Iterator

ENGINE_SOCKET = "/var/run/docker.sock"
CHUNK = 65536


class EngineProxy:
    def __init__(self, path: Path, upstream: str = ENGINE_SOCKET):
        self.path, self.upstream = path, upstream
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self.connections = 0  # accepted since the start: evidence that the clients use the relay

    @property
    def docker_host(self) -> str:
        """DOCKER_HOST for the processes that should reach the engine through the relay."""
        return f"unix://{self.path}"

    def restore(self) -> None:
        """Listen (again): the engine is back."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path.unlink(missing_ok=True)
        listener.bind(str(self.path))
        listener.listen(128)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="engine-proxy").start()

    def cut(self) -> None:
        """The engine goes away: stop listening and end every open connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets, self._open = self._open, set()
        if listener is not None:
            listener.close()
        self.path.unlink(missing_ok=True)
        for sock in open_sockets:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut: the listener was closed
            try:
                engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                engine.connect(self.upstream)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _close(client)
                    _close(engine)
                    return
                self._open |= {client, engine}
                self.connections += 1
            directions = [threading.Thread(target=self._pump, args=pair, daemon=True)
                          for pair in ((client, engine), (engine, client))]
            for direction in directions:
                direction.start()
            threading.Thread(target=self._forget, args=(directions, client, engine), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)  # a half-close passes through, as on the real socket
        except OSError:
            _close(source)
            _close(target)

    def _forget(self, directions: list[threading.Thread], client: socket.socket, engine: socket.socket) -> None:
        """Close a connection both sides have finished with."""
        for direction in directions:
            direction.join()
        with self._lock:
            self._open -= {client, engine}
        _close(client)
        _close(engine)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextlib.contextmanager
def engine_proxy(directory: Path) -> Iterator[EngineProxy]:
    proxy = EngineProxy(directory / "docker.sock")
    proxy.restore()
    try:
        yield proxy
    finally:
        proxy.cut()
