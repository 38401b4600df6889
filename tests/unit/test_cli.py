"""``weft``: argument validation, one-line errors, and the client against a live API.

Commands run in-process through ``main(argv)`` with capsys. Client commands talk to
``serve_api`` with a fake control, served by ``trio.run`` in a background thread. The
background ``launch`` runs for real: its child is a fresh interpreter, in which a
``sitecustomize`` module (on PYTHONPATH) swaps ``weftnet.router.daemon.router`` for a fake
that serves the API, so the spawn/poll/print path is tested without the router.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.unit.test_api import FakeControl
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.address import default_http_addr, parse_peer_address
from weftnet.router.api.server import serve_api
from weftnet.router.api.text import one_line
from weftnet.router.daemon.config import (
    LaunchConfig,
    config_from_args,
    config_to_args,
    current_netns_name,
    default_data_dir,
    parse_ipalloc_init,
)
from weftnet.router.host.datadir import DataDir
from weftnet.router.programs import cli


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WEFT_PASSWORD", "WEFT_HTTP_ADDR", "WEFT_DEBUG", "WEFT_DAEMONIZED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WEFT_DATA_DIR", str(tmp_path / "data"))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str) -> str:
    assert err.startswith("weft: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err[len("weft: ") : -1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_ns(*argv: str) -> argparse.Namespace:
    ns: argparse.Namespace = cli.build_parser().parse_args(["launch", *argv])
    return ns


@contextmanager
def api_server(control: FakeControl | None = None) -> Iterator[tuple[str, FakeControl]]:
    """Serve the API in a thread; yield ``127.0.0.1:PORT``; stop it afterwards."""
    ctl = control if control is not None else FakeControl()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            _, box["port"] = await nursery.start(serve_api, ctl, "127.0.0.1", 0)
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"127.0.0.1:{box['port']}", ctl
    finally:
        if thread.is_alive():
            trio.from_thread.run_sync(ctl.stopped.set, trio_token=box["token"])
        thread.join(10)
        assert not thread.is_alive()


# -- plain commands and usage errors -------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "version") == (0, "weft 0.1.0\n", "")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "no command given"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["status", "everything"], "status: argument view: invalid choice"),
        (["launch", "--bogus"], "unrecognized arguments: --bogus"),
        (["forget"], "forget: the following arguments are required: PEER"),
        (["connect"], "connect: give at least one PEER"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2 and out == ""
    assert expected in assert_one_line_error(err)


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "launch", "--help")
    assert status == 0
    assert "--ipalloc-init" in out and "--password-file" in out


def test_internal_error_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(ns: argparse.Namespace) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_version", boom)
    status, _, err = run_cli(capsys, "version")
    assert status == 2
    assert assert_one_line_error(err) == "internal error: RuntimeError: boom"
    monkeypatch.setenv("WEFT_DEBUG", "1")
    status, _, err = run_cli(capsys, "version")
    assert status == 2 and "Traceback" in err


def test_a_hostile_argument_is_cut_short_in_the_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's errors and the API's (which the CLI prints) quote a 100 KB argument back
    as its first 60 characters and its length."""
    from weftnet.router.api.server import error_response

    long = "x" * 100_000
    status, _, err = run_cli(capsys, "status", long)
    assert status == 2 and "...(100002 characters)" in assert_one_line_error(err)
    assert len(err) < 400
    assert one_line(f"no network namespace {long!r}\n(really)") == (
        f"no network namespace '{'x' * 59}...(100002 characters) (really)")
    body = json.loads(error_response(400, f"bad {long}").body)
    assert body == {"error": f"bad {'x' * 60}...(100000 characters)"}


# -- launch option validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "0"], "--port: expected 1..65534, got 0"),
        (["--port", "65535"], "--port: expected 1..65534, got 65535"),
        (["--port", "http"], "--port: expected a number, got 'http'"),
        (["--mtu", "575"], "--mtu: expected 576..65535, got 575"),
        (["--mtu", "65536"], "--mtu: expected 576..65535, got 65536"),
        (["--conn-limit", "0"], "--conn-limit: expected 1..1000000, got 0"),
        (["--dns-ttl", "-1"], "--dns-ttl: expected 0..2147483647, got -1"),
        (["--trusted-subnets", "10.0.0.0/33"], "--trusted-subnets: '10.0.0.0/33' is not a valid"),
        (
            ["--trusted-subnets", "10.1.2.3/8"],
            "10.1.2.3/8 has host bits set; did you mean 10.0.0.0/8?",
        ),
        (["--trusted-subnets", "10.0.0.0"], "'10.0.0.0' is not a CIDR"),
        (["--ipalloc-range", "fd00::/64"], "--ipalloc-range: fd00::/64 is not an IPv4 range"),
        (["--ipalloc-range", "10.0.0.0/31"], "10.0.0.0/31 is too small"),
        (["--ipalloc-default-subnet", "10.0.0.0/24"], "10.0.0.0/24 is not inside the range"),
        (["--ipalloc-range", "", "--ipalloc-init", "observer"], "need IPAM"),
        (["--ipalloc-init", "quorum"], "--ipalloc-init: invalid value 'quorum'"),
        (["--ipalloc-init", "consensus=0"], "consensus=N: expected 1..1000000, got 0"),
        (["--ipalloc-init", "seed="], "empty peer name in seed list"),
        (["--ipalloc-init", "seed=host1"], "--ipalloc-init: invalid peer name 'host1'"),
        (["--ipalloc-init", "observer=1"], "invalid value 'observer=1'"),
        (["--name", "zz:zz"], "--name: invalid peer name 'zz:zz'"),
        (["--nickname", "two words"], "--nickname: 'two words' must be"),
        (["--host", "myhost"], "--host: 'myhost' is not an IP address"),
        (["--http-addr", "127.0.0.1"], "--http-addr: invalid HTTP address '127.0.0.1'"),
        (["--http-addr", "127.0.0.1:99999"], "port must be 1..65535"),
        (["--dns-domain", "a..b"], "--dns-domain: 'a..b' is not a valid domain"),
        (["--log-level", "loud"], "--log-level: 'loud' is not one of debug, info"),
        (["--password-file", "/nonexistent/pw"], "--password-file: cannot read /nonexistent/pw"),
        (["host2:0"], "invalid peer address 'host2:0': port must be 1..65535"),
        (["[::1"], "invalid peer address '[::1': missing ']'"),
        (["bad_host!"], "not an IP address or host name"),
        (["--data-dir", ""], "--data-dir: empty path"),
    ],
)
def test_launch_validation_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str, tmp_path: Path
) -> None:
    status, out, err = run_cli(capsys, "launch", *argv)
    assert status == 1 and out == ""
    assert expected in assert_one_line_error(err)
    assert not (tmp_path / "data").exists()  # nothing happened


def test_password_sources(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(b"s3cret\n")
    assert config_from_args(launch_ns("--password-file", str(pw))).password == b"s3cret"
    monkeypatch.setenv("WEFT_PASSWORD", "from-env")
    assert config_from_args(launch_ns()).password == b"from-env"
    status, _, err = run_cli(capsys, "launch", "--password-file", str(pw))
    assert status == 1 and "both in WEFT_PASSWORD and with --password-file" in err
    monkeypatch.setenv("WEFT_PASSWORD", "")
    status, _, err = run_cli(capsys, "launch")
    assert (status, assert_one_line_error(err)) == (1, "empty password")
    monkeypatch.delenv("WEFT_PASSWORD")
    pw.write_bytes(b"\n")
    status, _, err = run_cli(capsys, "launch", "--password-file", str(pw))
    assert (status, assert_one_line_error(err)) == (1, "empty password")
    assert "s3cret" not in repr(LaunchConfig(password=b"s3cret", data_dir=tmp_path))


def test_launch_defaults(tmp_path: Path) -> None:
    cfg = config_from_args(launch_ns())
    assert cfg.peers == [] and cfg.name is None and cfg.password is None
    assert (cfg.port, cfg.host, cfg.fastdp, cfg.mtu, cfg.conn_limit) == (6783, "", True, None, 200)
    assert (cfg.ipalloc_range, cfg.ipalloc_default_subnet, cfg.ipalloc_init) == (
        "10.32.0.0/12",
        None,
        None,
    )
    assert (cfg.dns, cfg.dns_domain, cfg.dns_ttl, cfg.discovery) == (True, "weft.local.", 1, True)
    assert cfg.data_dir == tmp_path / "data"  # WEFT_DATA_DIR
    assert cfg.http_addr == ("127.0.0.1", 6784)
    assert (cfg.foreground, cfg.log_level) == (False, "info")
    assert cfg.nickname == socket.gethostname()


def test_launch_options_round_trip(tmp_path: Path) -> None:
    cfg = config_from_args(
        launch_ns(
            "--name", "0A:00:00:00:00:09", "--nickname", "h9", "--trusted-subnets",
            "10.0.0.0/8, 192.168.1.0/24", "--port", "7000", "--host", "::1", "--no-fastdp",
            "--mtu", "1400", "--conn-limit", "5", "--no-discovery", "--ipalloc-range",
            "10.40.0.0/16", "--ipalloc-default-subnet", "10.40.1.0/24", "--ipalloc-init",
            "seed=0a:00:00:00:00:09,0a:00:00:00:00:0a", "--no-dns", "--dns-domain", "Mesh.Test",
            "--dns-ttl", "30", "--data-dir", str(tmp_path / "d"), "--http-addr", "[::1]:7001",
            "--log-level", "DEBUG", "peer1", "10.0.0.2:7002", "fd00::1",
        )
    )  # fmt: skip
    assert cfg.name == 0x0A0000000009 and cfg.nickname == "h9"
    assert cfg.trusted_subnets == ["10.0.0.0/8", "192.168.1.0/24"]
    assert (cfg.port, cfg.host, cfg.fastdp, cfg.mtu, cfg.conn_limit) == (
        7000,
        "::1",
        False,
        1400,
        5,
    )
    assert cfg.peers == ["peer1:7000", "10.0.0.2:7002", "[fd00::1]:7000"]
    assert cfg.ipalloc_init == "seed=0a:00:00:00:00:09,0a:00:00:00:00:0a"
    assert (cfg.dns, cfg.dns_domain, cfg.dns_ttl) == (False, "mesh.test.", 30)
    assert cfg.http_addr == ("::1", 7001) and cfg.log_level == "debug"
    again = config_from_args(launch_ns(*config_to_args(cfg)))
    assert again == cfg
    off = config_from_args(launch_ns("--ipalloc-range", ""))
    assert off.ipalloc_range == "" and config_from_args(launch_ns(*config_to_args(off))) == off


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host2", "host2:6783"),
        ("Host2.Example:7", "host2.example:7"),
        (" 10.0.0.2 ", "10.0.0.2:6783"),
        ("10.0.0.2:1", "10.0.0.2:1"),
        ("[fd00::1]:7", "[fd00::1]:7"),
        ("[FD00:0::1]", "[fd00::1]:6783"),
        ("fd00::1", "[fd00::1]:6783"),
        ("[fe80::1%eth0]:7", "[fe80::1%eth0]:7"),
        ("fe80::1%eth0", "[fe80::1%eth0]:6783"),
        ("[::ffff:10.0.0.2]:7", "10.0.0.2:7"),
    ],
)
def test_parse_peer_address(text: str, expected: str) -> None:
    assert parse_peer_address(text) == expected


@pytest.mark.parametrize(
    "text", ["", "h:0", "h:65536", "h:x", "h:", ":6783", "[::1", "[1.2.3.4]:5", "a b", "fe80::zz",
             "fe80::1", "[fe80::1]:7", "[fe80::1%a/b]:7", "[::ffff:1.2.3.4%eth0]:7"]
)
def test_parse_peer_address_rejects(text: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_peer_address(text)
    assert info.value.reason.startswith("invalid peer address") and "\n" not in info.value.reason


def test_parse_ipalloc_init() -> None:
    assert str(parse_ipalloc_init("consensus")) == "consensus"
    assert parse_ipalloc_init("consensus=3").quorum == 3
    assert parse_ipalloc_init("seed=02:00:00:00:00:01").seeds == (0x020000000001,)
    assert parse_ipalloc_init("observer").mode == "observer"
    with pytest.raises(LocalProtocolError, match="duplicate"):
        parse_ipalloc_init("seed=02:00:00:00:00:01,02:00:00:00:00:01")


def test_default_data_dir_and_http_addr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_data_dir() == tmp_path / "data"
    monkeypatch.delenv("WEFT_DATA_DIR")
    run_dir = tmp_path / "netns"
    run_dir.mkdir()
    (run_dir / "other").write_text("")
    monkeypatch.setattr("weftnet.router.daemon.config.NETNS_RUN_DIR", run_dir)
    assert current_netns_name() is None
    assert default_data_dir() == Path("/var/lib/weft")
    # A file that is our namespace (as `ip netns add` bind-mounts it) names it.
    (run_dir / "blue").symlink_to("/proc/self/ns/net")
    assert current_netns_name() == "blue"
    assert default_data_dir() == Path("/var/lib/weft-netns/blue")

    assert default_http_addr() == ("127.0.0.1", 6784)
    monkeypatch.setenv("WEFT_HTTP_ADDR", "127.0.0.2:7784")
    assert default_http_addr() == ("127.0.0.2", 7784)
    monkeypatch.setenv("WEFT_HTTP_ADDR", "nonsense")
    with pytest.raises(LocalProtocolError, match="^WEFT_HTTP_ADDR: invalid HTTP address"):
        default_http_addr()


# -- launch preconditions and delegation ---------------------------------------------------


def test_launch_refuses_a_locked_data_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with DataDir(tmp_path / "data"):
        status, _, err = run_cli(capsys, "launch", "--http-addr", f"127.0.0.1:{free_port()}")
    assert status == 1
    assert assert_one_line_error(err) == (
        f"another router is already running with data dir {tmp_path / 'data'} (pid {os.getpid()})"
    )


def test_launch_refuses_when_the_api_address_answers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with api_server() as (addr, _):
        status, _, err = run_cli(capsys, "launch", "--http-addr", addr)
    assert status == 1
    assert assert_one_line_error(err) == f"a router is already running (API on {addr})"
    assert not (tmp_path / "data").exists()


def test_foreground_delegates_to_daemon_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[LaunchConfig] = []

    def run(config: LaunchConfig) -> int:
        seen.append(config)
        return 7

    fake = types.ModuleType("weftnet.router.daemon.router")
    setattr(fake, "run", run)  # noqa: B010
    monkeypatch.setitem(sys.modules, "weftnet.router.daemon.router", fake)
    monkeypatch.setenv("WEFT_PASSWORD", "pw")
    status, _, _ = run_cli(capsys, "launch", "--foreground", "--port", "7100", "h2")
    assert status == 7
    assert seen[0].foreground and seen[0].port == 7100 and seen[0].peers == ["h2:7100"]
    assert seen[0].password == b"pw"
    assert "WEFT_PASSWORD" not in os.environ  # not inherited by helpers


def test_demo_delegates(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def run_demo(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    fake = types.ModuleType("weftnet.router.tools.demo")
    setattr(fake, "run_demo", run_demo)  # noqa: B010
    monkeypatch.setitem(sys.modules, "weftnet.router.tools.demo", fake)
    assert run_cli(capsys, "demo", "--hosts", "3")[0] == 0
    assert seen == [["--hosts", "3"]]


# -- client commands against a live API ----------------------------------------------------


def test_client_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with api_server() as (addr, ctl):
        assert run_cli(capsys, "connect", "--http-addr", addr, "h2", "10.0.0.3:7000") == (0, "", "")
        assert run_cli(capsys, "forget", "--http-addr", addr, "h2") == (0, "", "")
        status, out, _ = run_cli(capsys, "status", "targets", "--http-addr", addr)
        assert (status, out) == (0, "10.0.0.3:7000\n")
        status, out, _ = run_cli(capsys, "status", "--http-addr", addr)
        assert status == 0 and "           Name: 02:00:00:00:00:01(host1)\n" in out
        status, out, _ = run_cli(capsys, "report", "--http-addr", addr)
        assert status == 0 and json.loads(out)["router"]["targets"] == ["10.0.0.3:7000"]
        assert out.startswith('{\n  "version"')
        status, _, err = run_cli(capsys, "status", "ipam", "--http-addr", addr)
        assert (status, assert_one_line_error(err)) == (1, "IPAM is disabled")
        # A bad peer is refused before any call.
        status, _, err = run_cli(capsys, "connect", "--http-addr", addr, "h:0")
        assert status == 1 and "port must be 1..65535" in err
        # API errors come back as the router's one-line reason.
        ctl.fail_with = LocalProtocolError("too many targets")
        status, _, err = run_cli(capsys, "connect", "--http-addr", addr, "h5")
        assert (status, assert_one_line_error(err)) == (1, "too many targets")
    assert ctl.calls[:2] == [("connect", (["h2", "10.0.0.3:7000"], False)), ("forget", ["h2"])]


def test_dns_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with api_server() as (addr, ctl):
        assert run_cli(capsys, "dns-add", "--http-addr", addr, "10.2.1.7", "10.2.1.8/24", "c1",
                       "--name", "web.weft.local") == (0, "", "")
        # positionals after the option are more of the same list
        assert run_cli(capsys, "dns-add", "10.2.1.9", "--name", "web.weft.local", "--http-addr",
                       addr, "c2") == (0, "", "")
        status, out, _ = run_cli(capsys, "dns-lookup", "--http-addr", addr, "web.weft.local")
        assert (status, out) == (0, "10.2.1.7\n10.2.1.8\n10.2.1.9\n")
        assert run_cli(capsys, "dns-remove", "--http-addr", addr, "10.2.1.8") == (0, "", "")
        status, _, err = run_cli(capsys, "dns-lookup", "--http-addr", addr, "nothing.here")
        assert (status, assert_one_line_error(err)) == (1, "no addresses for nothing.here.")
        status, _, err = run_cli(capsys, "dns-add", "--http-addr", addr, "10.2.1.7", "--name", "x")
        assert (status, assert_one_line_error(err)) == (1, "bad name 'x'")
    assert ctl.calls == [
        ("dns_add", (["10.2.1.7", "10.2.1.8"], "c1", "web.weft.local")),
        ("dns_add", (["10.2.1.9"], "c2", "web.weft.local")),
        ("dns_lookup", "web.weft.local"),
        ("dns_remove", (["10.2.1.8"], None, None)),
        ("dns_lookup", "nothing.here"),
        ("dns_add", (["10.2.1.7"], None, "x")),
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dns-add", "10.0.0.1"], "the following arguments are required: --name"),
        (["dns-add", "--name", "a.b"], "dns-add: give IP addresses, a CONTAINER, or both"),
        (["dns-add", "c1", "c2", "--name", "a.b"], "give at most one CONTAINER"),
        (["dns-remove"], "dns-remove: give IP addresses, a CONTAINER or --name"),
        (["dns-lookup"], "the following arguments are required: NAME"),
        (["attach", "10.2.1.1/24", "--name", "c1", "ns", "--bogus"], "unrecognized arguments"),
    ],
)
def test_dns_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2 and out == ""
    assert expected in assert_one_line_error(err)


def test_client_env_http_addr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with api_server() as (addr, _):
        monkeypatch.setenv("WEFT_HTTP_ADDR", addr)
        assert run_cli(capsys, "connect", "--replace", "h9")[0] == 0
        assert run_cli(capsys, "status", "targets")[1] == "h9\n"


def test_no_router_running(capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"127.0.0.1:{free_port()}"
    for command in ("status", "report", "connect"):
        argv = [command, "--http-addr", addr] + (["h2"] if command == "connect" else [])
        status, _, err = run_cli(capsys, *argv)
        assert status == 1
        assert assert_one_line_error(err) == f"no router is running (nothing answers on {addr})"
    assert run_cli(capsys, "stop", "--http-addr", addr) == (0, "", "weft router is not running\n")


def test_stop_waits_until_the_api_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    with api_server() as (addr, ctl):
        assert run_cli(capsys, "stop", "--http-addr", addr) == (0, "", "")
        assert ("stop", None) in ctl.calls
        status, _, err = run_cli(capsys, "status", "--http-addr", addr)
        assert status == 1 and "no router is running" in err


def test_stop_tolerates_an_answer_cut_short(capsys: pytest.CaptureFixture[str]) -> None:
    """A router that goes down while answering POST /stop has still stopped."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    addr = f"127.0.0.1:{listener.getsockname()[1]}"

    def serve_once() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            conn.sendall(b"Content-Length: 23\r\n\r\n")  # ...and no body
        listener.close()

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    assert run_cli(capsys, "stop", "--http-addr", addr, "--data-dir", "/nonexistent") == (
        0,
        "",
        "",
    )
    thread.join(10)
    with pytest.raises(OSError):  # and nothing listens any more
        socket.create_connection(("127.0.0.1", int(addr.rsplit(":", 1)[1])), timeout=1)


@pytest.fixture
def host_teardown(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The host side of ``reset`` faked (these tests run in the machine's own namespace,
    which they must not touch): the data dirs it was run for. tests/netns has the real one."""
    from weftnet.router.host import teardown

    done: list[Path] = []
    monkeypatch.setattr(teardown, "router_here", lambda: False)
    monkeypatch.setattr(teardown, "reset_host", lambda datadir: done.append(datadir.path) or [])
    return done


def test_reset_stops_then_removes_the_data_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host_teardown: list[Path]
) -> None:
    data = tmp_path / "router-data"
    DataDir(data).save_state({"name": "02:00:00:00:00:01"})
    DataDir(data).log_path.write_text("log\n")
    ctl = FakeControl()
    ctl.data_dir = str(data)  # the report tells the CLI where the router's state is
    with api_server(ctl) as (addr, _):
        assert run_cli(capsys, "reset", "--http-addr", addr) == (0, "", "")
    assert ("reset", None) in ctl.calls
    assert not data.exists()
    assert host_teardown == [data]   # once the router is gone, whatever it left goes


def test_reset_without_a_router_removes_the_default_data_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host_teardown: list[Path]
) -> None:
    DataDir(tmp_path / "data").save_state({})
    (tmp_path / "data" / "mine.txt").write_text("keep")
    assert run_cli(capsys, "reset", "--http-addr", f"127.0.0.1:{free_port()}") == (0, "", "")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mine.txt"]
    assert host_teardown == [(tmp_path / "data").absolute()]


def test_reset_refuses_while_a_router_it_cannot_reach_runs_here(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host_teardown: list[Path],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from weftnet.router.host import teardown

    monkeypatch.setattr(teardown, "router_here", lambda: True)
    DataDir(tmp_path / "data").save_state({})
    status, out, err = run_cli(capsys, "reset", "--http-addr", f"127.0.0.1:{free_port()}")
    assert (status, out) == (1, "")
    assert "a router runs in this network namespace" in assert_one_line_error(err)
    assert host_teardown == [] and (tmp_path / "data").exists()


# -- background launch, for real -----------------------------------------------------------

FAKE_DAEMON = textwrap.dedent(
    '''
    """Test double for weftnet.router.daemon.router, installed by sitecustomize."""
    import os
    import sys
    import types


    def run(config):
        import trio

        from weftnet.proto.peername import format_peer_name
        from weftnet.router.api.server import serve_api
        from weftnet.router.host.datadir import DataDir

        if config.nickname == "fail-early":
            print("starting", flush=True)
            print("weft: cannot listen on port 6783: address in use", file=sys.stderr)
            return 1
        datadir = DataDir(config.data_dir)
        datadir.lock()

        class Control:
            def __init__(self):
                self.stopped = trio.Event()

            def report(self):
                return {
                    "version": "0.1.0",
                    "router": {
                        "name": format_peer_name(config.name),
                        "nickname": config.nickname,
                        "encryption": config.password is not None,
                        "peers": [], "connections": [], "targets": config.peers,
                        "data_dir": str(config.data_dir),
                        "argv": sys.argv,
                        "password": (config.password or b"").decode(),
                        "env_password": os.environ.get("WEFT_PASSWORD"),
                        "daemonized": os.environ.get("WEFT_DAEMONIZED"),
                    },
                    "ipam": None, "dns": None,
                }

            def request_stop(self):
                self.stopped.set()

            async def wait_stopped(self):
                await self.stopped.wait()

        host, port = config.http_addr
        try:
            trio.run(serve_api, Control(), host, port)
        finally:
            datadir.release()
        return 0


    module = types.ModuleType("weftnet.router.daemon.router")
    module.run = run
    sys.modules["weftnet.router.daemon.router"] = module
    '''
)


@pytest.fixture
def fake_daemon_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_DAEMON)
    monkeypatch.setenv("PYTHONPATH", str(site))


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("fake_daemon_env")
def test_background_launch_then_stop(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "bg"
    addr = f"127.0.0.1:{free_port()}"
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    common = ["--data-dir", str(data), "--http-addr", addr]
    status, out, err = run_cli(
        capsys, "launch", *common, "--name", "02:00:00:00:00:07", "--password-file", str(pw), "h2"
    )
    assert (status, out, err) == (0, "02:00:00:00:00:07\n", "")
    try:
        report = json.loads(run_cli(capsys, "report", "--http-addr", addr)[1])["router"]
        assert report["password"] == "hunter2"  # read from the file, passed by its path...
        assert not any("hunter2" in a for a in report["argv"])  # ...never on argv
        assert str(pw) in report["argv"]
        assert report["env_password"] is None and report["daemonized"] == "1"
        assert report["targets"] == ["h2:6783"] and report["data_dir"] == str(data)
        assert DataDir(data).is_locked()
        # A second launch on the same data dir fails fast.
        status, _, err = run_cli(capsys, "launch", *common)
        assert status == 1 and "already running with data dir" in err
    finally:
        assert run_cli(capsys, "stop", "--http-addr", addr) == (0, "", "")
    assert not DataDir(data).is_locked()  # stop waited for the lock to go


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("fake_daemon_env")
def test_background_launch_reports_the_childs_last_words(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = tmp_path / "bg"
    DataDir(data).create()
    DataDir(data).log_path.write_text("weft: an old error from an earlier run\n")
    argv = ["--data-dir", str(data), "--http-addr", f"127.0.0.1:{free_port()}"]
    status, out, err = run_cli(capsys, "launch", *argv, "--nickname", "fail-early")
    assert status == 1 and out == ""
    assert assert_one_line_error(err) == "cannot listen on port 6783: address in use"


def test_dns_arguments_take_ipv6_addresses_too() -> None:
    assert cli.split_dns_args(["fd32::5", "10.2.1.1/24", "c1", "fd32:0:0:1::7/64"], "dns-add") == (
        ["fd32::5", "10.2.1.1", "fd32:0:0:1::7"], "c1")
