# ruff: noqa: E501 - the tables of cases read best one per line
"""Bad arguments to every ``weft`` command and bad requests to every HTTP API endpoint,
against one real router (issue 8, "hostile input": CLI and API).

    h1: the router (IPAM on 10.40.0.0/16, DNS on), with state to lose: container c1
        attached with a DNS name, an external DNS record, a connection target, and (with
        nft) an exposed host address; c2: a namespace that is not attached

Every CLI case runs as its own process inside h1 (``CLI_DRIVER``) and must exit
non-zero with exactly one line on stderr (``weft: ...``), nothing on stdout, no
traceback and no "internal error" (the CLI's word for a bug of ours). A few commands are
idempotent by design (forgetting a peer that is not a target, removing DNS records that
do not exist, hiding an address that is not exposed): those must succeed quietly and
change nothing.

Every API case is sent from one Python process inside h1 (``API_CLIENT``) and must get a
4xx whose body is ``{"error": "<one line>"}``; requests malformed at the HTTP level
(answered by the HTTP server before our app sees them) must get a 4xx or be closed,
never a 5xx. Afterwards the router is the same process, answers, and its state is
unchanged: the report without its counters, ``weft ps``, the bridge's addresses; its log
gained no traceback.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from weftnet.router.api.server import MAX_BODY
from weftnet.router.tools.testbed import Testbed

from .weftctl import launch, report, router_pid

RANGE = "10.40.0.0/16"
TARGET = "127.0.0.2:9"       # inside h1: refused at once, stays a target (retrying)
EXPOSED = "10.40.250.1/16"
LONG = "x" * 100_000         # under the kernel's 128 KiB limit for one argument
Case = tuple[tuple[str, ...], dict[str, str]]   # (argv after `weft`, environment over h1's)


def cli_cases(c1: str, c2: str, c1_ip: str, me: str) -> list[Case]:
    """(argv, environment) that must fail with a one-line error. ``c1`` is attached (at
    ``c1_ip``), ``c2`` a namespace that is not, ``me`` the router's peer name."""
    no_env: dict[str, str] = {}
    bad = [
        # no command, unknown command, unknown global option
        (), ("nosuchcommand",), ("--bogus",), ("-x", "report"), ("\x1b[31mred",),
        # launch: every option with a malformed or absurd value (never a valid set: a
        # router runs already, so a launch that validated would still fail, on the lock)
        ("launch",),  # the data dir is held by the running router
        ("launch", "--port", "0"), ("launch", "--port", "65535"), ("launch", "--port", "abc"),
        ("launch", "--port", "-1"), ("launch", "--port", "9" * 40), ("launch", "--port"),
        ("launch", "--mtu", "10"), ("launch", "--mtu", "100000"), ("launch", "--mtu", "1.5e3"),
        ("launch", "--conn-limit", "0"), ("launch", "--conn-limit", "-5"), ("launch", "--conn-limit", "nan"),
        ("launch", "--name", "notamac"), ("launch", "--name", "00:11:22:33:44:55:66"), ("launch", "--name", ""),
        ("launch", "--name", "ff:ff:ff:ff:ff:gg"),
        ("launch", "--nickname", "has space"), ("launch", "--nickname", "n" * 300), ("launch", "--nickname", ""),
        ("launch", "--password-file", "/nonexistent/weft-password"), ("launch", "--password-file", "/proc/self/ns"),
        ("launch", "--trusted-subnets", "10.0.0.0/33"), ("launch", "--trusted-subnets", "garbage,10.0.0.0/8"),
        ("launch", "--host", "999.1.1.1"), ("launch", "--host", "not-an-ip"),
        ("launch", "--ipalloc-range", "10.0.0.0/33"), ("launch", "--ipalloc-range", "10.0.0.1/8"),
        ("launch", "--ipalloc-range", "fd00::/64"), ("launch", "--ipalloc-range", "10.0.0.0/31"),
        ("launch", "--ipalloc-range", RANGE, "--ipalloc-default-subnet", "192.168.0.0/24"),
        ("launch", "--ipalloc-default-subnet", "nonsense"),
        ("launch", "--ipalloc-init", "bogus"), ("launch", "--ipalloc-init", "consensus=0"),
        ("launch", "--ipalloc-init", "consensus=abc"), ("launch", "--ipalloc-init", "seed="),
        ("launch", "--ipalloc-init", "seed=nomac"), ("launch", "--ipalloc-init", "observer=3"),
        ("launch", "--dns-domain", "bad domain"), ("launch", "--dns-domain", ".."), ("launch", "--dns-domain", "d" * 300),
        ("launch", "--dns-ttl", "-1"), ("launch", "--dns-ttl", "9" * 30), ("launch", "--dns-ttl", "one"),
        ("launch", "--http-addr", "nope"), ("launch", "--http-addr", "127.0.0.1:0"),
        ("launch", "--http-addr", "127.0.0.1:70000"), ("launch", "--http-addr", "[::1"),
        ("launch", "--log-level", "LOUD"), ("launch", "--data-dir", ""), ("launch", "--bogus"),
        ("launch", "999.1.1.1:6783"), ("launch", "host:99999"), ("launch", ":"), ("launch", ""),
        ("launch", "a b"), ("launch", LONG),
        # stop / reset: arguments they do not take, a bad API address, an empty data dir
        ("stop", "extra"), ("stop", "--bogus"), ("stop", "--http-addr", "nope"),
        ("stop", "--http-addr", "127.0.0.1:99999"), ("stop", "--data-dir", ""),
        ("reset", "extra"), ("reset", "--bogus"), ("reset", "--http-addr", "::::"),
        ("reset", "--data-dir", ""), ("reset", "--data-dir", " "),
        # connect / forget
        ("connect",), ("connect", "999.1.1.1:6783"), ("connect", "host:0"), ("connect", "host:99999"),
        ("connect", "10.0.0.1:abc"), ("connect", "a b"), ("connect", "[::1"), ("connect", ""),
        ("connect", "--bogus", "10.0.0.1"), ("connect", "h" * 300), ("connect", LONG),
        ("connect", "10.0.0.1", "host:0"),  # one bad peer: none is added
        ("connect", "--replace", "host:0"),
        ("forget",), ("forget", "host:0"), ("forget", "--bogus", TARGET), ("forget", "[::1"),
        # status / report / ps / version
        ("status", "bogus"), ("status", "dns", "extra"), ("status", "--bogus"), ("status", LONG),
        ("report", "extra"), ("report", "--bogus"), ("report", "--http-addr", "nope"),
        ("ps", "extra"), ("ps", "--bogus"), ("ps", "--http-addr", "1.2.3.4"),
        ("version", "extra"), ("version", "--bogus"),
        # attach
        ("attach",), ("attach", "--name", "web2"), ("attach", "nosuchns"), ("attach", "/nonexistent/ns"),
        ("attach", "/etc/passwd"), ("attach", "/proc/self/ns/mnt"), ("attach", "999999999"),
        ("attach", "pid:999999999"), ("attach", "."), ("attach", ".."), ("attach", "../../etc/passwd"),
        ("attach", "bad\nname"), ("attach", "bad name"), ("attach", LONG), ("attach", "--bogus", c2),
        ("attach", "/proc/self/ns/net"),  # the router's own namespace: not a container's
        ("attach", "10.40.0.5/33", c2), ("attach", "300.1.1.1/16", c2), ("attach", "10.40.0.5", c2),
        ("attach", "net:10.40.0.0/33", c2), ("attach", "net:bogus", c2), ("attach", "net:", c2),
        ("attach", "net:10.40.0.1/24", c2), ("attach", "net:default", "net:10.40.0.0/99", c2),
        ("attach", f"{c1_ip}/16", c2),  # c1's address
        ("attach", "net:192.168.0.0/24", c2),  # a subnet outside the range
        ("attach", "0.0.0.0/0", c2), ("attach", "10.40.0.0/16", c2), ("attach", "10.40.255.255/16", c2),
        ("attach", "--name", "bad name!", c2), ("attach", "--name", "n" * 300, c2),
        ("attach", "--name", "..", c2), ("attach", "--name", "", c2), ("attach", "--name", "a..b", c2),
        ("attach", "--name", "-leading.weft.local", c2), ("attach", "--name", LONG, c2),
        ("attach", "--without-dns", "--name", "bad name!", "net:bogus", c2),
        # IPv6 (issue 17): scoped, link-local, no length, host bits, no IPv6 IPAM, wrong family
        ("attach", "fe80::5/64", c2), ("attach", "fd32::5", c2), ("attach", "fd32::/64", c2),
        ("attach", "ff02::1/64", c2), ("attach", "net:fd32::1/64", c2), ("attach", "net:fd32::/64", c2),
        ("expose", "fe80::5/64"), ("expose", "net:fd32::/64"), ("hide", "fd32::5/129"),
        ("launch", "--ipalloc-range-v6", "10.0.0.0/8"), ("launch", "--ipalloc-range-v6", "fe80::/64"),
        ("launch", "--ipalloc-default-subnet-v6", "fd32::/64"),
        # detach
        ("detach",), ("detach", "nosuchns"), ("detach", "bogus", c1), ("detach", "10.40.0.1/33", c1), ("detach", "--bogus", c1), ("detach", LONG),
        # expose / hide
        ("expose", "10.40.0.1/33"), ("expose", "net:bogus"), ("expose", "bogus"), ("expose", "--bogus"),
        ("expose", f"{c1_ip}/16"), ("expose", "--name", "bad name!"), ("expose", "--name", "n" * 300),
        ("expose", "net:192.168.0.0/24"), ("expose", LONG), ("expose", "--name", ""), ("expose", "--name", " "),
        ("hide", "bogus"), ("hide", "10.40.0.1/33"), ("hide", "--bogus"), ("hide", "net:bogus"),
        # DNS
        ("dns-add", "10.40.9.10"), ("dns-add", "--name", "web3"), ("dns-add", "--name", "bad name!", "10.40.9.10"),
        ("dns-add", "--name", "n" * 300, "10.40.9.10"), ("dns-add", "--name", "", "10.40.9.10"),
        ("dns-add", "--name", "web3", "nosuchns"), ("dns-add", "--name", "web3", c2),
        ("dns-add", "--name", "web3", "a", "b"), ("dns-add", "--name", "web3", "--bogus", "10.40.9.10"),
        ("dns-add", "--name", "web3", LONG), ("dns-add", "--name", "web3", "300.1.1.1"),
        ("dns-remove",), ("dns-remove", "a", "b"), ("dns-remove", "--bogus"), ("dns-remove", "--name", ""),
        ("dns-lookup",), ("dns-lookup", "a", "b"), ("dns-lookup", "nobody"), ("dns-lookup", "n" * 300),
        ("dns-lookup", "bad name!"), ("dns-lookup", ".."), ("dns-lookup", LONG), ("dns-lookup", "--bogus", "web"),
        # rmpeer: no one, an unknown peer, ourselves, ambiguous garbage
        ("rmpeer",), ("rmpeer", "nobody"), ("rmpeer", me), ("rmpeer", "h1"),
        ("rmpeer", "a", "b"), ("rmpeer", LONG), ("rmpeer", ""),
        # bench / demo parse their own arguments: refused before building anything
        ("bench", "--bogus"), ("bench", "--duration", "0"), ("bench", "--paths", "nope"),
        ("bench", "nosuchsuite"), ("bench", "--wait", "abc"), ("bench", "dns", "--names", "0"),
        ("bench", "dns", "--seconds", "-1"), ("bench", "dns", "--bogus"),
        ("demo", "--bogus"), ("demo", "--keep", "--cleanup"), ("demo", "extra"),
    ]
    cases: list[Case] = [(args, no_env) for args in bad]
    # a bad API address from the environment, for every command that calls the API
    for command in ("report", "status", "ps", "stop", "reset", "connect", "forget", "attach", "detach",
                    "expose", "hide", "dns-add", "dns-remove", "dns-lookup", "rmpeer"):
        args = {"connect": (command, "10.0.0.1"), "forget": (command, TARGET), "attach": (command, c2),
                "detach": (command, c1), "dns-add": (command, "--name", "x", "10.40.9.10"),
                "dns-remove": (command, "--name", "ext"), "dns-lookup": (command, "web"),
                "rmpeer": (command, "nobody")}.get(command, (command,))
        cases.append((args, {"WEFT_HTTP_ADDR": "garbage"}))
    cases.append((("launch",), {"WEFT_PASSWORD": ""}))   # an empty password is no password
    return cases


def noop_cases(c1: str, c2: str) -> list[tuple[str, ...]]:
    """Idempotent commands given something that is not there succeed and change nothing,
    as Weave Net's do: forget a peer that is not a target, remove DNS records that do not
    exist, hide or detach what is not there, rmpeer a well-formed peer name the ring does
    not know ("0 IPs taken over")."""
    return [("forget", "10.99.99.99"), ("dns-remove", "--name", "nobody"),
            ("dns-remove", "10.40.99.99"), ("hide", "10.40.99.99/16"), ("detach", c2),
            ("detach", "10.40.99.99/16", c1), ("rmpeer", "00:00:00:00:00:01")]


# --- the CLI: one driver inside h1 forks a process per case -------------------------------

# The child runs the CLI module as ``python -m weftnet.router.programs.cli ARGS`` would (runpy, as
# __main__, with that argv and environment; an exception escaping it is printed the way the
# interpreter would) with its stdout and stderr in files: the interpreter starts once, not
# 200 times. A sample of the cases runs through the real ``weft`` process too (see the test).
CLI_DRIVER = textwrap.dedent(r'''
    import json, os, runpy, sys, tempfile, traceback
    # what the CLI module imports, once (not the module itself: runpy runs it afresh)
    import argparse, http.client, urllib.request, weftnet.router.daemon.config, weftnet.router.host.datadir
    cases = json.load(sys.stdin)
    out = []
    for args, env in cases:
        with tempfile.TemporaryFile() as so, tempfile.TemporaryFile() as se:
            sys.stdout.flush(); sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.dup2(so.fileno(), 1); os.dup2(se.fileno(), 2)
                for key, value in env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                sys.argv = ["weft", *args]
                code = 0
                try:
                    runpy.run_module("weftnet.router.programs.cli", run_name="__main__", alter_sys=True)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
                    if isinstance(exc.code, str):
                        print(exc.code, file=sys.stderr)
                except BaseException:
                    traceback.print_exc()
                    code = 1
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            so.seek(0); se.seek(0)
            out.append([os.waitstatus_to_exitcode(status), so.read().decode("utf-8", "replace"),
                        se.read().decode("utf-8", "replace")])
    print(json.dumps(out))
''')


# --- the API: one client process inside h1 ------------------------------------------------

API_CLIENT = textwrap.dedent(r'''
    import http.client, json, socket, sys
    cases = json.load(sys.stdin)
    out = []

    def raw(data):
        with socket.create_connection(("127.0.0.1", 6784), timeout=10) as s:
            try:
                s.sendall(data)
            except OSError:
                pass  # answered (and closed) before the body was all in
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            reply = b""
            try:
                while chunk := s.recv(65536):
                    reply += chunk
            except OSError:
                pass
        if not reply:
            return None, ""
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode("latin-1")

    for case in cases:
        body = case.get("body")
        if case.get("fill") is not None:
            body = case["fill"][0] * case["fill"][1]
        body = None if body is None else body.encode("latin-1")
        if case.get("raw") is not None:
            status, text = raw(case["raw"].encode("latin-1"))
        else:
            head = [f"{case['method']} {case['path']} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
                    "Content-Type: application/json"]
            if case.get("chunked"):
                head.append("Transfer-Encoding: chunked")
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                                  for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
                data = chunks
            else:
                head.append(f"Content-Length: {len(body or b'')}")
                data = body or b""
            status, text = raw(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        out.append({"status": status, "body": text[:20000]})
    conn = http.client.HTTPConnection("127.0.0.1", 6784, timeout=10)
    conn.request("GET", "/version")
    out.append({"status": conn.getresponse().status, "body": "after"})
    print(json.dumps(out))
''')

POSTS = ("/connect", "/forget", "/stop", "/reset", "/attach", "/detach", "/dns/add", "/dns/remove",
         "/rmpeer", "/expose", "/hide")
GETS = ("/version", "/report", "/ps", "/metrics", "/dns/lookup")
# bodies no endpoint takes (none of them is empty or {}: /expose and /hide act on those)
GARBAGE = ["{", "}", "[" * 100_000, "\xff\xfe", "null", "[]", '"text"', "1e999999", "NaN", "-Infinity",
           '{"a":1,}', "{}{}", "{'single': 1}", '{"bogus": 1}', '{"": 1}', '{"' + "k" * 5000 + '": 1}',
           '{"peers": 5, "peer": 5, "container": 5, "addresses": 5, "name": 5}', "\x00" * 64,
           '{"addresses": [' + '"10.40.0.1/16",' * 20_000 + '"x"]}',
           "9" * 5000, '{"a": ' * 50_000 + "1" + "}" * 50_000]


def api_cases(c1: str, c2: str, c1_ip: str) -> list[tuple[dict[str, Any], str]]:
    """(request, kind): kind "app" must be a 4xx from our API with a one-line JSON error;
    "http" is malformed below it: a 4xx or a closed connection, never a 5xx (but 501 for
    a transfer coding HTTP/1.1 does not know, as RFC 9112 section 6.1 says); "noop" is an
    idempotent request for something that is not there: 200, nothing changes."""
    cases: list[tuple[dict[str, Any], str]] = []

    def post(path: str, body: Any, **kw: Any) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        cases.append(({"method": "POST", "path": path, "body": text, **kw}, "app"))

    for path in POSTS:
        for garbage in GARBAGE:
            post(path, garbage)
        post(path, "{" + " " * (MAX_BODY - 2) + "x")                     # at the cap: read, refused
        post(path, "", fill=("x", MAX_BODY + 1))                     # over the cap, declared
        post(path, "", fill=("x", MAX_BODY + 65536), chunked=True)   # over the cap, chunked
        cases.append(({"method": "GET", "path": path}, "app"))           # 405
        cases.append(({"method": "DELETE", "path": path, "body": "{}"}, "app"))
    for path in GETS:
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"):
            case = {"method": method, "path": path, "body": "{}"}
            cases.append((case, "http" if method == "HEAD" else "app"))  # HEAD: no body to read
    # wrong types, unknown fields, absurd values, per endpoint
    body: Any
    for body in ({"peers": "10.0.0.1"}, {"peers": [1]}, {"peers": [None]}, {"peers": ["10.0.0.1"], "replace": "yes"},
                 {"peers": []}, {"peers": ["host:0"]}, {"peers": ["999.1.1.1:6783"]}, {"peers": ["a b"]},
                 {"peers": ["10.0.0.1"], "bogus": True}, {"peers": ["x" * 100_000]}, {"peers": [""]},
                 {"peers": ["10.0.0.1", "host:0"]}, {"replace": 1}):
        post("/connect", body)
    for body in ({}, {"peers": None}, {"peers": TARGET}, {"peers": [{"a": 1}]}, {"peers": ["host:0"]},
                 {"peers": [TARGET], "replace": True}):
        post("/forget", body)
    for path in ("/stop", "/reset"):
        for body in ({"now": True}, {"force": 1}):
            post(path, body)
    for body in ({}, {"container": None}, {"container": ""}, {"container": 5}, {"container": [c2]},
                 {"container": c2, "addresses": "net:default"}, {"container": c2, "addresses": [5]},
                 {"container": c2, "addresses": ["10.40.0.5/33"]}, {"container": c2, "addresses": ["net:bogus"]},
                 {"container": c2, "addresses": [f"{c1_ip}/16"]}, {"container": c2, "addresses": ["net:192.168.0.0/24"]},
                 {"container": c2, "name": 5}, {"container": c2, "name": ""}, {"container": c2, "name": "bad name!"},
                 {"container": c2, "name": "n" * 300}, {"container": c2, "without_dns": "yes"},
                 {"container": c2, "ifname": "i" * 16}, {"container": c2, "ifname": "a/b"}, {"container": c2, "ifname": 7},
                 {"container": c2, "ifname": "a b"}, {"container": c2, "ifname": ".."}, {"container": c2, "bogus": 1},
                 {"container": c2, "without-dns": True}, {"container": "nosuchns"}, {"container": "/etc/passwd"},
                 {"container": "999999999"}, {"container": "/proc/self/ns/net"}, {"container": "x" * 500_000},
                 {"container": "\x00"}, {"container": "bad\nname"}):
        post("/attach", body)
    for body in ({"container": c2}, {"container": c1, "addresses": ["10.40.99.99/16"]},
                 {"container": "nosuchns", "missing_ok": True}):
        cases.append(({"method": "POST", "path": "/detach", "body": json.dumps(body)}, "noop"))
    for body in ({}, {"container": 5}, {"container": "nosuchns"}, {"container": c1, "addresses": ["bogus"]},
                 {"container": c1, "addresses": "all"}, {"container": c1, "missing_ok": "yes"},
                 {"container": c1, "ifname": "i" * 16}, {"container": c1, "bogus": 1}, {"container": "x" * 500_000}):
        post("/detach", body)
    for body in ({"addresses": ["10.40.9.10"]}, {"name": 5, "addresses": ["10.40.9.10"]},
                 {"name": "", "addresses": ["10.40.9.10"]}, {"name": "bad name!", "addresses": ["10.40.9.10"]},
                 {"name": "n" * 300, "addresses": ["10.40.9.10"]}, {"name": "web3"}, {"name": "web3", "addresses": []},
                 {"name": "web3", "addresses": ["300.1.1.1"]}, {"name": "web3", "addresses": "10.40.9.10"},
                 {"name": "web3", "container": "nosuchns"}, {"name": "web3", "container": c2},
                 {"name": "web3", "container": 5}, {"name": "web3", "addresses": ["10.40.9.10"], "bogus": 1}):
        post("/dns/add", body)
    for body in ({"name": ""}, {"name": 5}, {"addresses": "x"}, {"addresses": ["300.1.1.1"]},
                 {"container": 5}, {"name": "ext", "bogus": 1}):
        post("/dns/remove", body)
    cases.append(({"method": "POST", "path": "/rmpeer", "body": '{"peer": "00:00:00:00:00:01"}'}, "noop"))
    for body in ({}, {"peer": None}, {"peer": ""}, {"peer": 5}, {"peer": ["a"]}, {"peer": "nobody"}, {"peer": "h1"}, {"peer": "x" * 100_000}, {"peer": "nobody", "bogus": 1}):
        post("/rmpeer", body)
    for body in ({"addresses": "net:default"}, {"addresses": [5]}, {"addresses": ["10.40.0.1/33"]},
                 {"addresses": ["net:bogus"]}, {"addresses": [f"{c1_ip}/16"]}, {"name": 5}, {"name": "bad name!"},
                 {"bogus": 1}, {"addresses": [], "bogus": 1}, {"address": ["10.40.250.2/16"]}):
        post("/expose", body)
    for body in ({"addresses": "all"}, {"addresses": [5]}, {"addresses": ["bogus"]}, {"addresses": ["10.40.0.1/33"]},
                 {"bogus": 1}, {"address": [EXPOSED]}):
        post("/hide", body)
    for query in ("", "?name=", "?name=a&name=b", "?name=bad%20name!", "?name=" + "n" * 300, "?name=..",
                  "?name=%00", "?name=%ff%fe", "?nom=web", "?name=" + "n" * 10_000):
        cases.append(({"method": "GET", "path": "/dns/lookup" + query}, "app"))
    # bad paths
    for path in ("/nope", "/report/", "//report", "/../etc/passwd", "/%2e%2e/report", "/%00", "/REPORT",
                 "/report%20", "/" + "p" * 10_000, "/attach/extra", "/dns", "/dns/"):
        cases.append(({"method": "GET", "path": path}, "app"))
        cases.append(({"method": "POST", "path": path, "body": "{}"}, "app"))
    # malformed HTTP: answered by the HTTP server itself, or closed
    for raw in ("garbage\r\n\r\n", "GET\r\n\r\n", "GET /report XTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /report HTTP/1.1\r\n\r\n",  # no Host
                "POST /connect HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
                "POST /connect HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
                "POST /connect HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                "POST /connect HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{",
                "POST /connect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                "GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", "GET /report HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                "GET /" + "p" * 20_000 + " HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /report HTTP/1.1\r\nHost: x\r\nX-A: " + "a" * 100_000 + "\r\n\r\n",
                "GET http://elsewhere/report HTTP/1.1\r\nHost: x\r\n\r\n\x00\x00",
                "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + "\x00" * 64):  # a TLS hello
        cases.append(({"raw": raw}, "http"))
    cases.append(({"raw": "POST /connect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}"}, "http-501"))
    return cases


# --- the test ----------------------------------------------------------------------------------


def stable(rep: dict[str, Any]) -> dict[str, Any]:
    """The report without what moves by itself (counters, connection attempts, the API's
    connection counts)."""
    router = {k: v for k, v in rep["router"].items() if k not in ("stats", "dataplane", "connections",
                                                                 "api")}
    dns = {k: v for k, v in rep["dns"].items() if k not in ("statistics", "upstream", "listeners")}
    dns["entries"] = sorted(dns["entries"], key=json.dumps)
    return {"version": rep["version"], "router": router, "ipam": rep["ipam"], "dns": dns}


def state(tb: Testbed) -> dict[str, Any]:
    bridge = tb.run("h1", ["ip", "-4", "-o", "addr", "show", "dev", "weft"]).stdout
    return {"report": stable(report(tb, "h1")), "ps": tb.weft("h1", "ps").stdout,
            "bridge": sorted(line.split()[3] for line in bridge.splitlines())}


def short(args: tuple[str, ...]) -> str:
    return " ".join(a if len(a) < 60 else a[:20] + f"...({len(a)} chars)" for a in args)


def test_bad_arguments_and_requests_change_nothing(testbed_factory: Any) -> None:
    tb: Testbed = testbed_factory(hosts=("h1",))
    me = launch(tb, "h1", password=None, extra=("--ipalloc-range", RANGE))
    c1, c2 = tb.add_container("c1"), tb.add_container("c2")
    c1_cidr = tb.weft("h1", "attach", "--name", "web", c1).stdout.strip()
    c1_ip = c1_cidr.split("/")[0]
    tb.weft("h1", "dns-add", "10.40.9.9", "--name", "ext")
    tb.weft("h1", "connect", TARGET)
    if shutil.which("nft") is not None:
        tb.weft("h1", "expose", EXPOSED)
    pid = router_pid(tb, "h1")
    log = tb.data_dir("h1") / "weft.log"
    log_start = log.stat().st_size
    before = state(tb)
    assert c1_ip in json.dumps(before["report"]) and TARGET in before["report"]["router"]["targets"]

    # the CLI: a process per case, forked by one driver inside h1
    started = time.monotonic()
    problems: list[str] = []
    cases = cli_cases(c1, c2, c1_ip, me)
    noops: list[Case] = [(args, {}) for args in noop_cases(c1, c2)]
    out = tb.run("h1", [sys.executable, "-c", CLI_DRIVER], timeout=300,
                 input=json.dumps(cases + noops)).stdout
    results = json.loads(out)
    assert len(results) == len(cases) + len(noops)
    for (args, env), (code, stdout, err) in zip(cases, results, strict=False):
        what = f"weft {short(args)}" + (f" with {env}" if env else "")
        if (code == 0 or err.count("\n") != 1 or not err.startswith("weft") or len(err) > 600
                or "Traceback" in err + stdout or "internal error" in err or stdout):
            problems.append(f"{what}: exit {code}, stdout {stdout[:200]!r}, stderr {err[-600:]!r}")
    for (args, _), (code, _, err) in zip(noops, results[len(cases):], strict=True):
        if code != 0 or err:
            problems.append(f"weft {short(args)} (a no-op): exit {code}, stderr {err!r}")
    # the driver is faithful: a sample through the real `weft` process gives the same
    sample = list(range(0, len(cases), 25))
    with ThreadPoolExecutor(2) as pool:
        real = list(pool.map(lambda i: tb.weft("h1", *cases[i][0], env=cases[i][1], check=False,
                                               timeout=60), sample))
    for i, proc in zip(sample, real, strict=True):
        if [proc.returncode, proc.stdout, proc.stderr] != results[i]:
            problems.append(f"weft {short(cases[i][0])}: the real process gave "
                            f"{[proc.returncode, proc.stdout, proc.stderr]}, the driver {results[i]}")
    cli_seconds = time.monotonic() - started
    # the API: every case from one process inside h1
    started = time.monotonic()
    requests = api_cases(c1, c2, c1_ip)
    out = tb.run("h1", [sys.executable, "-c", API_CLIENT], timeout=300,
                 input=json.dumps([r for r, _ in requests])).stdout
    answers = json.loads(out)
    api_seconds = time.monotonic() - started
    assert answers[-1] == {"status": 200, "body": "after"}, answers[-1]
    statuses: dict[int | None, int] = {}
    for (request, kind), answer in zip(requests, answers, strict=False):
        status, body = answer["status"], answer["body"]
        statuses[status] = statuses.get(status, 0) + 1
        what = request.get("raw") or f"{request['method']} {request['path']} {str(request.get('body'))}"
        what = what[:120]
        expected = {"noop": range(200, 201), "http-501": range(501, 502)}.get(kind, range(400, 500))
        if "Traceback" in body or (status is not None and status not in expected):
            problems.append(f"{what!r}: HTTP {status} {body[:300]!r}")
        elif kind in ("app", "noop"):
            try:
                data = json.loads(body)
                error = data["error"] if kind == "app" else "not an error"
                ok = (status is not None and isinstance(error, str) and bool(error) and "\n" not in error
                      and len(error) <= 600)
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                problems.append(f"{what!r}: HTTP {status}, not a one-line JSON error: {body[:300]!r}")

    # the router: the same process, serving, its state as it was, no traceback in its log
    assert router_pid(tb, "h1") == pid
    after = state(tb)
    if after != before:
        problems.append(f"state changed:\nbefore {json.dumps(before, sort_keys=True)}\n"
                        f"after  {json.dumps(after, sort_keys=True)}")
    with open(log, "rb") as f:
        f.seek(log_start)
        tail = f.read().decode("utf-8", "replace")
    if "Traceback" in tail:
        problems.append("the router logged a traceback:\n" + tail[-3000:])
    print(f"{len(cases)} bad CLI invocations and {len(noops)} no-ops in {cli_seconds:.1f} s; "
          f"{len(requests)} bad API requests in {api_seconds:.1f} s, statuses "
          f"{dict(sorted(statuses.items(), key=str))}")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
