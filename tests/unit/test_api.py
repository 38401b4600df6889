"""The HTTP API over a real loopback socket, with a fake RouterControl.

Each test runs ``serve_api`` on an ephemeral port inside ``trio.run`` and talks to it
with ``http.client`` in a worker thread, so requests cross hypercorn's real parser.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio

import weftnet
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api import server as api
from weftnet.router.api.httpserve import HttpConnections
from weftnet.router.api.server import MAX_BODY, ApiApp, Request, Response, json_response, serve_api

SAMPLE_REPORT: dict[str, Any] = {
    "version": weftnet.__version__,
    "router": {
        "name": "02:00:00:00:00:01",
        "nickname": "host1",
        "encryption": False,
        "peers": [],
        "connections": [],
        "targets": [],
    },
    "ipam": None,
    "dns": None,
}


class FakeControl:
    """Records calls; behaviour switches for error paths."""

    def __init__(self, *, with_metrics: bool = False) -> None:
        self.targets: list[str] = []
        self.calls: list[tuple[str, Any]] = []
        self.stopped = trio.Event()
        self.fail_with: Exception | None = None
        self.data_dir: str | None = None
        self.names: dict[str, list[str]] = {}
        if with_metrics:
            self.metrics = lambda: b"weft_connections 0\n"

    def report(self) -> dict[str, Any]:
        self.calls.append(("report", None))
        if self.fail_with is not None:
            raise self.fail_with
        report: dict[str, Any] = json.loads(json.dumps(SAMPLE_REPORT))
        report["router"]["targets"] = list(self.targets)
        if self.data_dir is not None:
            report["router"]["data_dir"] = self.data_dir
        return report

    def connect(self, peers: list[str], replace: bool) -> list[str]:
        self.calls.append(("connect", (peers, replace)))
        if self.fail_with is not None:
            raise self.fail_with
        self.targets = list(peers) if replace else self.targets + list(peers)
        return self.targets

    def forget(self, peers: list[str]) -> list[str]:
        self.calls.append(("forget", peers))
        self.targets = [t for t in self.targets if t not in peers]
        return self.targets

    def request_stop(self) -> None:
        self.calls.append(("stop", None))
        self.stopped.set()

    def reset(self) -> None:
        self.calls.append(("reset", None))
        self.stopped.set()

    async def wait_stopped(self) -> None:
        await self.stopped.wait()

    # DNS: a plain dict of name -> addresses stands for the record store
    async def dns_add(self, addresses: list[str], container: str | None, name: str) -> int:
        self.calls.append(("dns_add", (addresses, container, name)))
        if "." not in name:
            raise LocalProtocolError(f"bad name {name!r}")
        held = self.names.setdefault(name, [])
        new = [a for a in addresses if a not in held]
        held += new
        return len(new)

    async def dns_remove(self, addresses: list[str], container: str | None,
                         name: str | None) -> int:
        self.calls.append(("dns_remove", (addresses, container, name)))
        removed = 0
        for held_name, held in self.names.items():
            if name in (None, held_name):
                gone = [a for a in held if not addresses or a in addresses]
                removed += len(gone)
                held[:] = [a for a in held if a not in gone]
        return removed

    def dns_lookup(self, name: str) -> dict[str, Any]:
        self.calls.append(("dns_lookup", name))
        return {"name": name + ".", "addresses": sorted(self.names.get(name, []))}


Reply = tuple[int, dict[str, str], bytes]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def with_server(
    test: Callable[[int, FakeControl], Awaitable[None]], control: FakeControl | None = None
) -> FakeControl:
    """Run ``test(port, control)`` against a live server, then stop it."""

    async def main() -> None:
        ctl = control if control is not None else FakeControl()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                host, port = await nursery.start(serve_api, ctl, "127.0.0.1", 0)
                assert host == "127.0.0.1" and port > 0
                await test(port, ctl)
                ctl.stopped.set()
        holder.append(ctl)

    holder: list[FakeControl] = []
    trio.run(main)
    return holder[0]


async def call(port: int, method: str, path: str, body: bytes | None = None, **kw: Any) -> Reply:
    reply: Reply = await trio.to_thread.run_sync(lambda: request(port, method, path, body, **kw))
    return reply


def error_of(data: bytes) -> str:
    message = json.loads(data)["error"]
    assert isinstance(message, str) and "\n" not in message
    return message


def test_version_and_report() -> None:
    async def test(port: int, ctl: FakeControl) -> None:
        status, headers, data = await call(port, "GET", "/version")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json.loads(data) == {"version": weftnet.__version__}
        status, _, data = await call(port, "GET", "/report")
        assert status == 200
        assert json.loads(data) == SAMPLE_REPORT

    with_server(test)


def test_connect_and_forget() -> None:
    async def test(port: int, ctl: FakeControl) -> None:
        body = json.dumps({"peers": ["h2", "h3:7000"]}).encode()
        status, _, data = await call(port, "POST", "/connect", body)
        assert (status, json.loads(data)) == (200, {"targets": ["h2", "h3:7000"]})
        body = json.dumps({"peers": ["h4"], "replace": True}).encode()
        status, _, data = await call(port, "POST", "/connect", body)
        assert (status, json.loads(data)) == (200, {"targets": ["h4"]})
        status, _, data = await call(port, "POST", "/forget", b'{"peers": ["h4"]}')
        assert (status, json.loads(data)) == (200, {"targets": []})

    ctl = with_server(test)
    assert ctl.calls == [
        ("connect", (["h2", "h3:7000"], False)),
        ("connect", (["h4"], True)),
        ("forget", ["h4"]),
    ]


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/connect", b"{not json", "malformed JSON body"),
        ("/connect", b"\xff\xfe", "malformed JSON body"),
        ("/connect", b"", "expected a JSON object"),
        ("/connect", b"[1, 2]", "expected a JSON object"),
        ("/connect", b'{"peers": "h2"}', "field 'peers' must be a list of strings"),
        ("/connect", b'{"peers": [1]}', "field 'peers' must be a list of strings"),
        ("/connect", b'{"peers": ["h2"], "replace": "yes"}', "field 'replace' must be true"),
        ("/connect", b'{"peers": []}', "no peers given"),
        ("/forget", b"{}", "missing field 'peers'"),
        ("/forget", b'{"peers": null}', "missing field 'peers'"),
        ("/forget", b'{"peers": [{"a": 1}]}', "field 'peers' must be a list of strings"),
        ("/dns/add", b'{"addresses": ["10.0.0.1"]}', "missing field 'name'"),
        ("/dns/add", b'{"name": "a.b", "container": 7}', "field 'container' must be a non-empty"),
        ("/dns/add", b'{"name": "a.b", "addresses": "10.0.0.1"}', "field 'addresses' must be a list"),
        ("/dns/remove", b'{"name": ""}', "field 'name' must be a non-empty string"),
    ],
)
def test_bad_bodies_are_400(path: str, body: bytes, expected: str) -> None:
    async def test(port: int, ctl: FakeControl) -> None:
        status, headers, data = await call(port, "POST", path, body)
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert expected in error_of(data)

    ctl = with_server(test)
    assert ctl.calls == []


def test_control_errors_map_to_400_and_500() -> None:
    async def test(port: int, ctl: FakeControl) -> None:
        ctl.fail_with = LocalProtocolError("invalid peer address 'x:0': port must be 1..65535")
        status, _, data = await call(port, "POST", "/connect", b'{"peers": ["x:0"]}')
        assert status == 400
        assert error_of(data) == "invalid peer address 'x:0': port must be 1..65535"
        ctl.fail_with = RuntimeError("boom\nsecond line")
        status, _, data = await call(port, "GET", "/report")
        assert status == 500
        assert error_of(data) == "internal error: RuntimeError: boom second line"
        ctl.fail_with = None
        status, _, _ = await call(port, "GET", "/report")  # still serving
        assert status == 200

    with_server(test)


def test_dns_records() -> None:
    async def test(port: int, ctl: FakeControl) -> None:
        body = {"name": "web.weft.local", "addresses": ["10.2.1.1", "10.2.1.2"], "container": None}
        status, _, data = await call(port, "POST", "/dns/add", json.dumps(body).encode())
        assert (status, json.loads(data)) == (200, {"added": 2})
        body = {"name": "web.weft.local", "container": "c1"}
        status, _, data = await call(port, "POST", "/dns/add", json.dumps(body).encode())
        assert (status, json.loads(data)) == (200, {"added": 0})
        status, _, data = await call(port, "GET", "/dns/lookup?name=web.weft.local")
        assert (status, json.loads(data)) == (
            200, {"name": "web.weft.local.", "addresses": ["10.2.1.1", "10.2.1.2"]})
        body = {"addresses": ["10.2.1.1"]}
        status, _, data = await call(port, "POST", "/dns/remove", json.dumps(body).encode())
        assert (status, json.loads(data)) == (200, {"removed": 1})
        status, _, data = await call(port, "POST", "/dns/add", b'{"name": "nodot", "addresses": []}')
        assert status == 400 and error_of(data) == "bad name 'nodot'"
        for query in ("", "?name=", "?name=a&name=b"):
            status, _, data = await call(port, "GET", "/dns/lookup" + query)
            assert status == 400 and "give one name" in error_of(data)

    ctl = with_server(test)
    assert ctl.calls == [
        ("dns_add", (["10.2.1.1", "10.2.1.2"], None, "web.weft.local")),
        ("dns_add", ([], "c1", "web.weft.local")),
        ("dns_lookup", "web.weft.local"),
        ("dns_remove", (["10.2.1.1"], None, None)),
        ("dns_add", ([], None, "nodot")),
    ]


def test_unknown_path_and_method() -> None:
    async def test(port: int, ctl: FakeControl) -> None:
        status, _, data = await call(port, "GET", "/nope")
        assert status == 404
        assert error_of(data) == "no such endpoint: /nope"
        status, headers, data = await call(port, "POST", "/version", b"{}")
        assert status == 405
        assert headers["allow"] == "GET"
        assert "not allowed" in error_of(data)
        status, _, _ = await call(port, "GET", "/stop")
        assert status == 405

    with_server(test)


def test_oversized_bodies_are_413() -> None:
    def declared(port: int) -> Reply:
        # Announce a body over the cap but never send it: answered from the headers.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /connect HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode()
            )
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, data = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), {}, data

    def chunked(port: int) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            blocks = (b"x" * 65536 for _ in range(MAX_BODY // 65536 + 1))
            conn.request("POST", "/connect", body=blocks, encode_chunked=True)
            response = conn.getresponse()
            return response.status, {}, response.read()
        finally:
            conn.close()

    async def test(port: int, ctl: FakeControl) -> None:
        for send in (declared, chunked):
            status, _, data = await trio.to_thread.run_sync(send, port)
            assert status == 413
            assert error_of(data) == f"request body over {MAX_BODY} bytes"
        # At the cap exactly: read in full, then refused as JSON, not as size.
        body = b" " * (MAX_BODY - 2) + b"{}"
        status, _, data = await call(port, "POST", "/connect", body)
        assert status == 400

    ctl = with_server(test)
    assert ctl.calls == []


def test_metrics_when_offered() -> None:
    async def test(port: int, ctl: FakeControl) -> None:
        status, headers, data = await call(port, "GET", "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert data == b"weft_connections 0\n"

    with_server(test, FakeControl(with_metrics=True))


def test_metrics_absent_is_404() -> None:
    async def test(port: int, ctl: FakeControl) -> None:
        status, _, data = await call(port, "GET", "/metrics")
        assert status == 404
        assert error_of(data) == "metrics are not available"

    with_server(test)


@pytest.mark.parametrize(("path", "call_name"), [("/stop", "stop"), ("/reset", "reset")])
def test_stop_and_reset_answer_then_serve_api_returns(path: str, call_name: str) -> None:
    async def main() -> None:
        ctl = FakeControl()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                _, port = await nursery.start(serve_api, ctl, "127.0.0.1", 0)
                status, _, _ = await call(port, "POST", path)
                assert status == 200
            # The nursery exited: serve_api returned once the router stopped.
        assert ctl.calls == [(call_name, None)]

    trio.run(main)


def test_held_connections_are_capped_oldest_first_and_shutdown_still_returns() -> None:
    """Connections that never finish a request (slowloris) cost at most the cap: each new
    connection beyond it closes the oldest, so a real request still gets in and answered."""
    cap = 4
    conns = HttpConnections(max_connections=cap)

    def hold(port: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /version HTTP/1.1\r\nHo")   # and never the rest
        return s

    def closed_by_server(s: socket.socket) -> bool:
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True

    def finish(s: socket.socket) -> int:
        s.sendall(b"st: x\r\nConnection: close\r\n\r\n")
        return int(s.recv(100).split()[1])

    async def main() -> None:
        ctl = FakeControl()
        held: list[socket.socket] = []
        try:
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    _, port = await nursery.start(partial(serve_api, ctl, "127.0.0.1", 0,
                                                          conns=conns))
                    for _ in range(cap + 2):
                        held.append(await trio.to_thread.run_sync(hold, port))
                    while conns.accepted < cap + 2:
                        await trio.sleep(0.01)
                    assert (conns.open, conns.evicted) == (cap, 2)
                    status, _, _ = await call(port, "GET", "/version")
                    assert status == 200 and conns.evicted == 3
                    for s in held[:3]:
                        assert await trio.to_thread.run_sync(closed_by_server, s)
                    assert await trio.to_thread.run_sync(finish, held[3]) == 200
                    ctl.stopped.set()   # two connections still held: shutdown ends them
        finally:
            for s in held:
                s.close()
        assert conns.accepted == cap + 3

    trio.run(main)


def test_bind_failure_raises_before_started() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]

    async def main() -> None:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                with pytest.raises(LocalProtocolError) as info:
                    await nursery.start(serve_api, FakeControl(), "127.0.0.1", port)
        assert info.value.reason == f"cannot listen on 127.0.0.1:{port}: address in use"

    try:
        trio.run(main)
    finally:
        blocker.close()


def test_route_table_is_extensible_and_asgi_direct() -> None:
    """A new endpoint is one table entry; exercised through ASGI without a socket."""

    async def echo(control: Any, req: Request) -> Response:
        return json_response({"got": req.json_object(), "q": req.query}, status=201)

    routes = dict(api.ROUTES)
    routes[("POST", "/echo")] = echo
    app = ApiApp(FakeControl(), routes)

    async def main() -> list[dict[str, Any]]:
        incoming = [
            {"type": "http.request", "body": b'{"a":', "more_body": True},
            {"type": "http.request", "body": b" 1}", "more_body": False},
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> Any:
            return incoming.pop(0)

        async def send(message: Any) -> None:
            sent.append(message)

        scope: Any = {
            "type": "http",
            "method": "POST",
            "path": "/echo",
            "query_string": b"x=1",
            "headers": [(b"content-type", b"application/json")],
        }
        await app(scope, receive, send)
        return sent

    sent = trio.run(main)
    assert sent[0]["status"] == 201
    assert json.loads(sent[1]["body"]) == {"got": {"a": 1}, "q": {"x": ["1"]}}


def test_route_registered_twice_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="registered twice"):
        api.route("GET", "/version")(api.ROUTES[("GET", "/version")])
