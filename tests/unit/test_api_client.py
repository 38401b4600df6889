"""The API's client side (``router/api/client.py``, ``address.py``, ``text.py``): each way a
call can fail becomes its own one-line error, against small HTTP servers on loopback that
misbehave on purpose; the address words parse and print back the same."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.address import (
    DEFAULT_HTTP_ADDR,
    format_http_addr,
    parse_http_addr,
    parse_peer_address,
)
from weftnet.router.api.client import ApiClient, Interrupted, NotRunning
from weftnet.router.api.text import ifname_ok, one_line

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@contextmanager
def http_server(handle: Handler) -> Iterator[tuple[str, int]]:
    """Serve every request with ``handle`` on 127.0.0.1 (a free port) in a thread."""

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handle(self)

        def do_POST(self) -> None:
            handle(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), H)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def reply(req: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
          content_type: str = "application/json") -> None:
    req.send_response(status)
    req.send_header("Content-Type", content_type)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    req.wfile.write(body)


def answer(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    """A handler that reads the request's body and answers ``body``."""
    def handle(req: http.server.BaseHTTPRequestHandler) -> None:
        req.rfile.read(int(req.headers.get("Content-Length") or 0))
        reply(req, status, body, content_type)
    return handle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_call_sends_json_and_returns_the_decoded_answer() -> None:
    seen: list[tuple[str, str, str, object]] = []

    def echo(req: http.server.BaseHTTPRequestHandler) -> None:
        raw = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        seen.append((req.command, req.path, req.headers.get("Content-Type", ""),
                     json.loads(raw) if raw else None))
        reply(req, 200, b'{"ok": [1, 2]}')

    with http_server(echo) as addr:
        client = ApiClient(addr)
        assert client.where == f"127.0.0.1:{addr[1]}"
        assert client.call("POST", "/connect", {"peers": ["h2"]}) == {"ok": [1, 2]}
        assert client.call("GET", "/report") == {"ok": [1, 2]}
        assert client.answers()
    assert seen == [("POST", "/connect", "application/json", {"peers": ["h2"]}),
                    ("GET", "/report", "", None), ("GET", "/version", "", None)]


def test_an_answer_that_is_not_json_comes_back_raw() -> None:
    with http_server(answer(200, b"weft_peers 1\n", "text/plain; version=0.0.4")) as addr:
        assert ApiClient(addr).call("GET", "/metrics") == b"weft_peers 1\n"


@pytest.mark.parametrize(("status", "body", "reason"), [
    (400, b'{"error": "IPAM is disabled"}', "IPAM is disabled"),
    (404, b'{"error": ""}', "the router API answered HTTP 404"),
    (500, b"<html>oops</html>", "the router API answered HTTP 500"),
])
def test_an_http_error_is_the_apis_own_reason(status: int, body: bytes, reason: str) -> None:
    with http_server(answer(status, body)) as addr:
        client = ApiClient(addr)
        with pytest.raises(LocalProtocolError) as info:
            client.call("POST", "/attach", {})
        assert info.value.reason == reason
        assert client.answers()  # something answers, even with an error


def test_malformed_json_is_a_local_error_naming_the_path() -> None:
    with http_server(answer(200, b'{"cut": ')) as addr, pytest.raises(LocalProtocolError) as info:
        ApiClient(addr).call("GET", "/report")
    assert info.value.reason == f"the router API on 127.0.0.1:{addr[1]} sent malformed JSON for /report"


def test_nothing_listening_is_not_running() -> None:
    addr = ("127.0.0.1", free_port())
    client = ApiClient(addr)
    with pytest.raises(NotRunning) as info:
        client.call("GET", "/report")
    assert info.value.reason == f"no router is running (nothing answers on 127.0.0.1:{addr[1]})"
    assert not client.answers()


def test_a_connection_dropped_mid_answer_is_interrupted() -> None:
    def cut(req: http.server.BaseHTTPRequestHandler) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", "100")
        req.end_headers()
        req.wfile.write(b'{"partial": ')
        req.close_connection = True

    with http_server(cut) as addr, pytest.raises(Interrupted) as info:
        ApiClient(addr).call("POST", "/stop", {})
    assert info.value.reason.startswith(f"the router API on 127.0.0.1:{addr[1]} closed the connection "
                                        "mid-answer (")


def test_proxies_in_the_environment_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with http_server(answer(200, b'"0.1.0"')) as addr:
        assert ApiClient(addr).call("GET", "/version") == "0.1.0"


@pytest.mark.parametrize(("text", "addr", "shown"), [
    ("127.0.0.1:6784", ("127.0.0.1", 6784), "127.0.0.1:6784"),
    (" [::1]:80 ", ("::1", 80), "[::1]:80"),
    ("[FE80:0::1]:7", ("fe80::1", 7), "[fe80::1]:7"),
    ("LocalHost:1", ("localhost", 1), "localhost:1"),
])
def test_http_addr_parses_and_prints_back(text: str, addr: tuple[str, int], shown: str) -> None:
    assert parse_http_addr(text) == addr
    assert format_http_addr(addr) == shown
    assert parse_http_addr(shown) == addr
    assert ApiClient(addr).where == shown


@pytest.mark.parametrize("text", ["", "127.0.0.1", "::1", "[::1]", "h:0", "h:70000", "1234:80",
                                  "a b:1"])
def test_http_addr_needs_an_address_and_a_port(text: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_http_addr(text)
    assert info.value.reason.startswith("invalid HTTP address") and "\n" not in info.value.reason


def test_the_defaults_are_the_contracts() -> None:
    assert DEFAULT_HTTP_ADDR == ("127.0.0.1", 6784)
    assert parse_peer_address("h2") == "h2:6783"
    assert parse_peer_address("h2", 7000) == "h2:7000"


@pytest.mark.parametrize(("name", "ok"), [
    ("eth0", True), ("ethwe", True), ("a" * 15, True), ("veth-1.2_x", True),
    ("", False), ("a" * 16, False), (".", False), ("..", False), ("a/b", False),
    ("a:1", False), ("a b", False), ("a\tb", False), ("a\nb", False),
])
def test_ifname_ok_is_the_kernels_rule(name: str, ok: bool) -> None:
    assert ifname_ok(name) is ok


def test_one_line_collapses_whitespace_and_cuts_long_words() -> None:
    assert one_line("  a\n\tb   c ") == "a b c"
    assert one_line("") == ""
    word = "y" * 121
    assert one_line(f"bad {word}") == f"bad {'y' * 60}...(121 characters)"
    assert one_line("z" * 120) == "z" * 120
