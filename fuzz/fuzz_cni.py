"""Fuzz the CNI plugin's input decoding: the CNI_* environment (CNI_ARGS included), the
network configuration on stdin (ipam, args, runtimeConfig, prevResult, dns, http_addr)
and the plugin's own arguments, all through ``cni.run`` against a fake router that is up
and a fake host where every namespace exists, so decoding goes as deep as ADD, DEL and
CHECK go.

Input layout: ``ENV \\0 STDIN``. ENV is lines laid over a valid environment: ``KEY=VALUE``
sets a variable, a bare ``KEY`` unsets it, a line starting with ``-`` is a word of the
plugin's argv. Without a NUL the whole input is the stdin, tried under every command.

Invariants: ``run`` never raises; it exits 0 with nothing or a JSON object on stdout, or
1 with a CNI error object (cniVersion we speak, a code of the spec or ours, a one-line
message). The pure decoders of ``cnispec`` raise nothing but ``CniError`` with such a
code; an ADD result lists interfaces and ips as the spec says.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Collection
from typing import Any

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.client import NotRunning
from weftnet.router.programs import cni
from weftnet.router.programs import cnispec as spec
from weftnet.router.programs.cnispec import CniError

NETNS = "/var/run/netns/pod1"
MAC = "02:aa:bb:cc:dd:ee"
BASE_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": NETNS,
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web"}
REPORT: dict[str, Any] = {
    "ipam": {"range": "10.32.0.0/12", "default_subnet": "10.32.0.0/12"},
    "dns": {"domain": "weft.local.", "address": "127.0.0.11", "entries": []},
}
CODES = {spec.ERR_INCOMPATIBLE_VERSION, spec.ERR_UNSUPPORTED_FIELD, spec.ERR_UNKNOWN_CONTAINER,
         spec.ERR_INVALID_ENV, spec.ERR_IO, spec.ERR_DECODE, spec.ERR_INVALID_CONFIG,
         spec.ERR_TRY_AGAIN_LATER, spec.ERR_NOT_AVAILABLE, spec.ERR_ROUTER}


class FakeRouter:
    """The router's API as the plugin sees it, agreeing to everything it is asked (attach
    gives the address asked for, or one of the subnet), every call recorded. ``up=False``:
    nothing answers; ``refuse``: attach fails with that reason; ``dual``: no ADDR gives an
    IPv6 address too (--ipalloc-range-v6). tests/unit/test_cni.py drives the plugin
    against it too."""

    def __init__(self, *, up: bool = True, report: dict[str, Any] | None = None,
                 dual: bool = False) -> None:
        self.dual = dual
        self.where = "127.0.0.1:6784"
        self.up = up
        self.report = copy.deepcopy(REPORT if report is None else report)
        self.calls: list[tuple[str, str, Any]] = []
        self.attached: dict[str, dict[str, Any]] = {}
        self.refuse: str | None = None

    def call(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> Any:
        self.calls.append((method, path, body))
        if not self.up:
            raise NotRunning(f"no router is running (nothing answers on {self.where})")
        if self.refuse is not None and path == "/attach":
            raise LocalProtocolError(self.refuse)
        if path == "/version":
            return {"version": "0.1.0"}
        if path == "/report":
            return self.report
        if path == "/attach":
            assert isinstance(body, dict) and isinstance(body["container"], str)
            specs = body["addresses"] or ["net:default"]
            assert all(isinstance(s, str) for s in specs), specs
            cidrs = ["10.32.0.5/12" if s.startswith("net:") else s for s in specs]
            if self.dual and not body["addresses"]:
                cidrs.append("fd32:7765:6674:1::5/64")
            for cidr in cidrs:
                ipaddress.ip_interface(cidr)  # the plugin hands over only IP/LEN or net:
            self.attached[body["container"]] = {"container": body["container"], "mac": MAC,
                                                "cidrs": cidrs,
                                                "ifname": body.get("ifname", "ethwe")}
            return {"cidrs": cidrs}
        if path == "/ps":
            return {"containers": list(self.attached.values())}
        if path == "/detach":
            self.attached.pop(body["container"], None)
            return {"removed": []}
        if path == "/dns/add":
            assert isinstance(body["name"], str)
            return {"added": 1}
        raise AssertionError(f"unexpected call {method} {path}")

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.calls]


class FakeHost:
    """Namespace paths exist (those in ``namespaces``; by default all but those naming
    "gone"); the bridge has ``bridge`` addresses (with one in the subnet, ADD works out
    gateways and routes); the container's interface is ``iface``, up."""

    def __init__(self, *, namespaces: Collection[str] | None = None,
                 bridge: tuple[str, ...] = ()) -> None:
        self.namespaces = namespaces
        self.bridge = [ipaddress.ip_interface(b) for b in bridge]
        self.table: list[cni.Route] = []
        self.iface: cni.Interface | None = cni.Interface(
            "eth0", MAC, True, (ipaddress.IPv4Interface("10.32.0.5/12"),))

    def netns_exists(self, path: str) -> bool:
        return "gone" not in path if self.namespaces is None else path in self.namespaces

    def bridge_addresses(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        return list(self.bridge)

    def interface(self, netns: str, ifname: str) -> cni.Interface | None:
        return self.iface if self.iface is not None and self.iface.name == ifname else None

    def routes(self, netns: str) -> list[cni.Route]:
        return list(self.table)

    def add_route(self, netns: str, ifname: str, dst: cni.Net, gw: cni.Addr | None) -> None:
        assert gw is None or gw.version == dst.version
        self.table.append((dst, gw))


def _split(data: bytes) -> list[tuple[list[str], dict[str, str], bytes]]:
    """(argv, environment, stdin) to run the input as."""
    if b"\0" not in data:
        return [([], {**BASE_ENV, "CNI_COMMAND": command}, data) for command in spec.COMMANDS]
    head, stdin = data.split(b"\0", 1)
    argv: list[str] = []
    env = dict(BASE_ENV)
    # as os.environ decodes what the runtime passes
    for line in head.decode("utf-8", "surrogateescape").split("\n"):
        if line.startswith("-"):
            argv.append(line)
        elif "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
        else:
            env.pop(line, None)
    return [(argv, env, stdin)]


def _check_error(exc: CniError) -> None:
    assert exc.code in CODES, exc.code
    assert exc.msg and "\n" not in exc.msg, exc.msg


def _decoders(env: dict[str, str], stdin: bytes) -> None:
    """The pure decoders one by one, each either accepting or raising CniError."""
    try:
        inv = spec.parse_invocation(env)
    except CniError as exc:
        _check_error(exc)
        inv = spec.Invocation("ADD", "abc123", NETNS, "eth0", {})
    try:
        spec.require(inv, netns=True)
    except CniError as exc:
        _check_error(exc)
    try:
        conf = spec.parse_netconf(stdin)
    except CniError as exc:
        _check_error(exc)
        return
    steps = (
        lambda: spec.config_version(conf),
        lambda: spec.check_ipam(conf),
        lambda: spec.address_specs(conf, inv.args, spec.report_subnets(REPORT)),
        lambda: spec.unsupported_args(conf, inv.args),
        lambda: spec.dns_names(conf, inv.args),
        lambda: spec.prev_sandbox(conf, inv.ifname),
        lambda: spec.expected_of_prev(conf, inv.ifname, inv.netns),
        lambda: spec.ipam_routes(conf),
        lambda: spec.check_prev_result(conf),
        lambda: spec.build_result("1.0.0", ifname="eth0", mac=MAC, sandbox=NETNS,
                                  cidrs=["10.32.0.5/12"], prev=conf.get("prevResult")),
    )
    for step in steps:
        try:
            step()
        except CniError as exc:
            _check_error(exc)
    spec.reply_version(conf)


def _check_run(env: dict[str, str], status: int, out: str) -> None:
    command = env.get("CNI_COMMAND", "").strip()
    if status == 1:
        err = json.loads(out)
        assert isinstance(err, dict) and set(err) <= {"cniVersion", "code", "msg", "details"}
        assert err["cniVersion"] in spec.SUPPORTED_VERSIONS
        assert err["code"] in CODES, err
        assert isinstance(err["msg"], str) and err["msg"] and "\n" not in err["msg"], err
        return
    assert status == 0, status
    if not out:
        assert command in ("DEL", "CHECK", "STATUS", "GC"), command
        return
    result = json.loads(out)
    assert isinstance(result, dict) and result["cniVersion"] in spec.SUPPORTED_VERSIONS
    if command == "ADD":
        # ours is the last interface, every address the router gave is on it; what a
        # previous plugin put in prevResult passes through as it was
        interfaces, ips = result["interfaces"], result["ips"]
        assert isinstance(interfaces, list) and isinstance(ips, list) and interfaces
        ours = len(interfaces) - 1
        assert interfaces[ours]["mac"] == MAC and interfaces[ours]["sandbox"] == env["CNI_NETNS"].strip()
        assert any(isinstance(ip, dict) and ip.get("interface") == ours for ip in ips), ips
    else:
        assert command == "VERSION" and result["supportedVersions"], result


def test_one_input(data: bytes) -> None:
    for argv, env, stdin in _split(data):
        _decoders(env, stdin)
        status, out = cni.run(argv, env, stdin, make_client=lambda _addr: FakeRouter(),
                              host=FakeHost(bridge=("10.32.0.1/12",)))
        _check_run(env, status, out)


def _input(conf: dict[str, Any] | bytes, **env: str | None) -> bytes:
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    lines = [key if value is None else f"{key}={value}" for key, value in env.items()]
    return "\n".join(lines).encode() + b"\0" + stdin


_CONF = {"cniVersion": "1.0.0", "name": "weft", "type": "weft-net"}
_PREV = {"cniVersion": "1.0.0",
         "interfaces": [{"name": "eth0", "mac": MAC, "sandbox": NETNS}],
         "ips": [{"address": "10.32.0.5/12", "interface": 0, "gateway": "10.32.0.1"}],
         "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
         "dns": {"nameservers": ["127.0.0.11"]}}

SEEDS = [
    json.dumps(_CONF).encode(),
    _input(_CONF),
    _input({**_CONF, "cniVersion": "0.4.0", "ipam": {"subnet": "10.32.1.0/24",
                                                      "routes": [{"dst": "10.40.0.0/16"}]}}),
    _input({**_CONF, "ipam": {"addresses": [{"address": "10.32.0.9/12"}]},
            "args": {"cni": {"name": "db", "ips": ["10.32.0.7"]}}}),
    _input({**_CONF, "runtimeConfig": {"ips": ["10.32.2.2/12"], "aliases": {"weft": ["x", "y"]}},
            "dns": {"nameservers": ["10.0.0.1"]}, "prevResult": _PREV},
           CNI_ARGS="IgnoreUnknown=1;IP=10.32.3.3/12;K8S_POD_NAME=pod"),
    _input({**_CONF, "prevResult": _PREV}, CNI_COMMAND="DEL", CNI_NETNS=None),
    _input({**_CONF, "prevResult": _PREV}, CNI_COMMAND="CHECK"),
    _input({"cniVersion": "1.0.0"}, CNI_COMMAND="VERSION", CNI_NETNS="dummy"),
    _input({**_CONF, "cniVersion": "1.1.0", "http_addr": "127.0.0.1:6784"}, CNI_COMMAND="STATUS"),
    b"--http-addr=127.0.0.1:6784\nCNI_COMMAND=GC\0" + json.dumps(_CONF).encode(),
]


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
