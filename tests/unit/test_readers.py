"""ThreadReaders (router/dataplane/readers.py) on its own: a socket pair stands for a port."""

from __future__ import annotations

import socket
import threading

import pytest
import trio

from weftnet.router.dataplane.readers import ThreadReaders


class Port:
    """One end of a datagram socket pair; the test writes into the other."""

    def __init__(self) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


def drainer(port: Port, got: list[tuple[bytes, int, bool]], lock: threading.RLock):
    def drain() -> bool:
        try:
            got.append((port.sock.recv(100), threading.get_ident(), lock._is_owned()))  # type: ignore[attr-defined]
        except BlockingIOError:
            return False
        return True
    return drain


def test_ready_ports_are_drained_on_the_thread_under_the_lock() -> None:
    lock = threading.RLock()
    readers = ThreadReaders(lock)
    a, b = Port(), Port()
    got: list[tuple[bytes, int, bool]] = []
    readers.add(a, drainer(a, got, lock))
    readers.add(b, drainer(b, got, lock))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(readers.run)
            a.peer.send(b"one")
            b.peer.send(b"two")
            a.peer.send(b"three")
            with trio.fail_after(5):
                while len(got) < 3:
                    await trio.sleep(0.01)
            readers.remove(b)
            b.peer.send(b"unread")  # its port is no longer watched
            a.peer.send(b"four")
            with trio.fail_after(5):
                while len(got) < 4:
                    await trio.sleep(0.01)
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        a.close()
        b.close()
    assert sorted(data for data, _, _ in got) == [b"four", b"one", b"three", b"two"]
    assert {ident for _, ident, _ in got} != {threading.get_ident()}
    assert len({ident for _, ident, _ in got}) == 1 and all(owned for _, _, owned in got)
    assert readers.ident is None  # the thread is gone


def test_an_exception_in_a_drain_ends_run_with_it() -> None:
    readers = ThreadReaders(threading.RLock())
    port = Port()

    def broken() -> bool:
        raise RuntimeError("a bug in the data plane")

    readers.add(port, broken)

    async def main() -> None:
        port.peer.send(b"x")
        with trio.fail_after(5):
            await readers.run()

    try:
        with pytest.raises(RuntimeError, match="a bug in the data plane"):
            trio.run(main)
    finally:
        port.close()
    assert readers.ident is None


def test_cancelled_at_once_its_thread_has_left_when_run_returns() -> None:
    readers = ThreadReaders(threading.RLock())

    async def main() -> None:
        with trio.move_on_after(0):
            await readers.run()

    trio.run(main)
    assert readers.ident is None
    assert not [t for t in threading.enumerate() if t.name == "weft-data"]


def test_a_cancelled_run_waits_for_the_drain_in_progress() -> None:
    """run() returns only once the thread has left: the engine's ports are closed after it,
    never under a drain still reading them."""
    readers = ThreadReaders(threading.RLock())
    port = Port()
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def slow() -> bool:
        started.set()
        release.wait(10)
        finished.append(True)
        port.sock.recv(100)
        return False

    readers.add(port, slow)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(readers.run)
            port.peer.send(b"x")
            await trio.to_thread.run_sync(started.wait, 10)
            threading.Timer(0.2, release.set).start()  # after the cancel below
            nursery.cancel_scope.cancel()
        assert finished == [True]

    try:
        trio.run(main)
    finally:
        release.set()
        port.close()
