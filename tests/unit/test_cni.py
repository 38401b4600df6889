"""The CNI plugin without a machine: parsing the environment and the network
configuration, results in each spec version, error objects with the spec's codes, and the
commands driven against the fuzz harness's fake router API and fake host (virtual time:
the wait for a router that is not there never sleeps). Also the API fields the plugin
relies on (``ifname``, ``missing_ok``) and the attachment record keeping its interface
name."""

from __future__ import annotations

import io
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.fuzz_cni import BASE_ENV, MAC, NETNS, REPORT, FakeHost, FakeRouter
from weftnet.router.api import server as api
from weftnet.router.host.attachments import Attachments, Record
from weftnet.router.host.datadir import DataDir
from weftnet.router.programs import cni
from weftnet.router.programs import cnispec as spec
from weftnet.router.programs.cni import Interface, Plugin
from weftnet.router.programs.cnispec import CniError, Invocation

ENV = BASE_ENV
CONF: dict[str, Any] = {"cniVersion": "1.0.0", "name": "weft", "type": "weft-net"}


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def plugin(env: dict[str, str] | None = None, conf: dict[str, Any] | None = None, *,
           router: FakeRouter | None = None, host: FakeHost | None = None) -> Plugin:
    inv = spec.parse_invocation({**ENV, **(env or {})})
    conf = CONF if conf is None else conf
    clock = VirtualClock()
    return Plugin(inv, conf, spec.config_version(conf), router or FakeRouter(), host or FakeHost(),
                  timeout=10.0, clock=clock, sleep=clock.sleep)


def code_of(fn: Callable[[], object]) -> tuple[int, str]:
    with pytest.raises(CniError) as info:
        fn()
    assert "\n" not in info.value.msg
    return info.value.code, info.value.msg


# --- parsing ---------------------------------------------------------------------------------


def test_cni_args_are_key_value_pairs() -> None:
    assert spec.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.32.0.9") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "web", "IP": "10.32.0.9"}
    assert spec.parse_cni_args("") == {} and spec.parse_cni_args("A=;") == {"A": ""}
    assert code_of(lambda: spec.parse_cni_args("IgnoreUnknown=1;junk"))[0] == spec.ERR_INVALID_ENV


@pytest.mark.parametrize("env, code, words", [
    ({"CNI_COMMAND": ""}, 4, "CNI_COMMAND is not set"),
    ({"CNI_COMMAND": "FROB"}, 4, "'FROB' is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
    ({"CNI_CONTAINERID": ""}, 4, "ADD needs CNI_CONTAINERID (not set)"),
    ({"CNI_NETNS": "", "CNI_IFNAME": ""}, 4, "ADD needs CNI_IFNAME, CNI_NETNS (not set)"),
    ({"CNI_NETNS": "pod1"}, 4, "'pod1' is not a path"),
    ({"CNI_IFNAME": "much-too-long-name"}, 4, "not an interface name"),
    ({"CNI_IFNAME": "eth/0"}, 4, "not an interface name"),
])
def test_bad_environments_are_code_4(env: dict[str, str], code: int, words: str) -> None:
    def parse() -> None:
        spec.require(spec.parse_invocation({**ENV, **env}), netns=True)
    got, msg = code_of(parse)
    assert got == code and words in msg


def test_del_needs_no_namespace() -> None:
    spec.require(spec.parse_invocation({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}), netns=False)


@pytest.mark.parametrize("raw, code", [(b"", 6), (b"{nope", 6), (b"[1]", 6), (b"\xff", 6)])
def test_undecodable_configs_are_code_6(raw: bytes, code: int) -> None:
    assert code_of(lambda: spec.parse_netconf(raw))[0] == code


@pytest.mark.parametrize("conf, code", [
    ({"name": "weft"}, 7), ({"cniVersion": 1}, 7), ({"cniVersion": "0.3.1"}, 1),
    ({"cniVersion": "2.0.0"}, 1)])
def test_versions_we_do_not_speak_are_refused(conf: dict[str, Any], code: int) -> None:
    assert code_of(lambda: spec.config_version(conf))[0] == code
    assert spec.reply_version(conf) == spec.FALLBACK_VERSION
    for version in spec.SUPPORTED_VERSIONS:
        assert spec.config_version({"cniVersion": version}) == version


def test_address_specs_from_config_args_and_runtime() -> None:
    subnets = [ipaddress.IPv4Network("10.32.0.0/12")]
    assert spec.address_specs(CONF, {}) == []
    assert spec.address_specs({**CONF, "ipam": {"subnet": "10.32.4.0/24"}}, {}) == ["net:10.32.4.0/24"]
    ipam = {"subnet": "10.32.4.0/24", "addresses": ["10.32.4.9", {"address": "10.40.0.1/16"}]}
    assert spec.address_specs({**CONF, "ipam": ipam}, {}) == ["10.32.4.9/24", "10.40.0.1/16"]
    assert spec.address_specs(CONF, {"IP": "10.32.1.2,10.32.1.3"}, subnets) == [
        "10.32.1.2/12", "10.32.1.3/12"]
    # the runtime's capability beats CNI_ARGS, which beats the config
    conf = {**CONF, "runtimeConfig": {"ips": ["10.33.0.1/16"]}, "ipam": {"addresses": ["10.34.0.1/16"]}}
    assert spec.address_specs(conf, {"IP": "10.35.0.1/16"}) == ["10.33.0.1/16"]
    conf = {**CONF, "args": {"cni": {"ips": ["10.36.0.1/16"]}}}
    assert spec.address_specs(conf, {}) == ["10.36.0.1/16"]
    assert spec.address_specs({**CONF, "args": "ignored"}, {}) == []


@pytest.mark.parametrize("ipam, code, words", [
    ({"type": "host-local"}, 2, "ipam.type=host-local"),
    ({"subnet": "10.32.4.1/24"}, 7, "not a subnet"),
    ({"subnet": 5}, 7, "not a subnet"),
    ({"addresses": ["10.9.9.9"]}, 7, "give it with a prefix length"),
    ({"addresses": ["banana/24"]}, 7, "not an IP address with prefix length"),
    ({"addresses": [7]}, 7, "expected IP/LEN strings"),
    ({"addresses": {"a": 1}}, 7, "must be a list"),
])
def test_bad_ipam_configs(ipam: dict[str, Any], code: int, words: str) -> None:
    got, msg = code_of(lambda: spec.address_specs({**CONF, "ipam": ipam}, {}))
    assert got == code and words in msg
    assert code_of(lambda: spec.address_specs({**CONF, "ipam": "x"}, {}))[0] == 7


def test_a_fixed_mac_is_refused_rather_than_ignored() -> None:
    spec.unsupported_args(CONF, {"K8S_POD_NAME": "x"})
    for conf, args in (({**CONF, "runtimeConfig": {"mac": "02:00:00:00:00:01"}}, {}),
                       (CONF, {"MAC": "02:00:00:00:00:01"})):
        got, msg = code_of(lambda c=conf, a=args: spec.unsupported_args(c, a))  # type: ignore[misc]
        assert got == 2 and "a fixed MAC is not supported" in msg


def test_dns_names() -> None:
    assert spec.dns_names(CONF, {"K8S_POD_NAME": "web"}) == ["web"]
    assert spec.dns_names(CONF, {"K8S_POD_NAME": "what ever"}) == []   # cannot be a host name
    assert spec.dns_names(CONF, {}) == []
    conf = {**CONF, "args": {"cni": {"name": "db"}},
            "runtimeConfig": {"aliases": {"weft": ["db", "primary"], "other": ["x"]}}}
    assert spec.dns_names(conf, {"K8S_POD_NAME": "web"}) == ["db", "primary"]
    assert spec.dns_names({**CONF, "args": {"name": "api"}}, {}) == ["api"]
    assert code_of(lambda: spec.dns_names({**CONF, "args": {"name": ""}}, {}))[0] == 7


# --- results -----------------------------------------------------------------------------------


def test_results_in_1_0_0_and_0_4_0_form() -> None:
    dns = spec.dns_of_report(REPORT)
    assert dns == {"nameservers": ["127.0.0.11"], "domain": "weft.local", "search": ["weft.local"]}
    assert spec.dns_of_report({"dns": None}) == {}
    res = spec.build_result("1.0.0", ifname="eth0", mac=MAC, sandbox=NETNS, cidrs=["10.32.0.5/12"],
                           gateways={"10.32.0.5/12": "10.32.0.1"},
                           routes=[("0.0.0.0/0", "10.32.0.1")], dns=dns)
    assert res == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": MAC, "sandbox": NETNS}],
        "ips": [{"address": "10.32.0.5/12", "interface": 0, "gateway": "10.32.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
        "dns": dns,
    }
    old = spec.build_result("0.4.0", ifname="eth0", mac=MAC, sandbox=NETNS, cidrs=["10.32.0.5/12"])
    assert old["ips"] == [{"version": "4", "address": "10.32.0.5/12", "interface": 0}]
    assert "routes" not in old and "dns" not in old


def test_results_chain_after_a_previous_plugin() -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}],
            "ips": [{"address": "192.0.2.1/24", "interface": 0}], "dns": {"nameservers": ["192.0.2.53"]}}
    res = spec.build_result("1.0.0", ifname="eth1", mac=MAC, sandbox=NETNS, cidrs=["10.32.0.5/12"],
                           dns={"nameservers": ["127.0.0.11"]}, prev=prev)
    assert [i["name"] for i in res["interfaces"]] == ["lo0", "eth1"]
    assert res["ips"][1] == {"address": "10.32.0.5/12", "interface": 1}
    assert res["dns"] == {"nameservers": ["192.0.2.53"]}


def test_error_objects() -> None:
    assert spec.error_object("1.0.0", 11, "later") == {"cniVersion": "1.0.0", "code": 11, "msg": "later"}
    assert spec.error_object("0.4.0", 7, "bad", "why")["details"] == "why"
    assert CniError(7, "two\nlines").msg == "two lines"


# --- commands against fakes ------------------------------------------------------------------


def test_add_attaches_as_ifname_with_the_pod_name_and_reports() -> None:
    router = FakeRouter()
    res = plugin(router=router).add()
    assert router.paths() == ["/version", "/report", "/attach", "/ps"]
    assert router.calls[2][2] == {"container": NETNS, "addresses": [], "ifname": "eth0",
                                  "name": "web", "without_dns": False}
    assert res == {"cniVersion": "1.0.0",
                   "interfaces": [{"name": "eth0", "mac": MAC, "sandbox": NETNS}],
                   "ips": [{"address": "10.32.0.5/12", "interface": 0}],
                   "dns": {"nameservers": ["127.0.0.11"], "domain": "weft.local",
                           "search": ["weft.local"]}}


def test_add_without_a_name_or_router_dns_registers_none() -> None:
    router = FakeRouter(report={**REPORT, "dns": None})
    res = plugin(router=router).add()
    assert router.calls[2][2]["name"] is None and router.calls[2][2]["without_dns"] is True
    assert "dns" not in res
    router = FakeRouter()
    plugin({"CNI_ARGS": ""}, router=router).add()
    assert router.calls[2][2]["without_dns"] is True
    conf = {**CONF, "dns": {"nameservers": ["192.0.2.53"]}}
    assert plugin(conf=conf).add()["dns"] == {"nameservers": ["192.0.2.53"]}


def test_add_registers_aliases_too() -> None:
    router = FakeRouter()
    conf = {**CONF, "runtimeConfig": {"aliases": {"weft": ["web", "www"]}}}
    plugin(conf=conf, router=router).add()
    assert ("POST", "/dns/add", {"addresses": [], "container": NETNS, "name": "www"}) in router.calls


def test_add_routes_through_the_exposed_host() -> None:
    host = FakeHost(bridge=("10.32.0.1/12",))
    res = plugin(host=host).add()
    assert res["ips"][0]["gateway"] == "10.32.0.1"
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}]
    assert host.table == [(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Address("10.32.0.1"))]
    # another network's default route stays; configured routes are added through the gateway
    host = FakeHost(bridge=("10.32.0.1/12",))
    host.table = [(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Address("192.0.2.1"))]
    conf = {**CONF, "ipam": {"routes": [{"dst": "198.51.100.0/24"}]}}
    res = plugin(conf=conf, host=host).add()
    assert res["routes"] == [{"dst": "198.51.100.0/24", "gw": "10.32.0.1"}]
    # no exposed address in the subnet: no gateway, no routes
    res = plugin(host=FakeHost(bridge=("192.168.0.1/24",))).add()
    assert "gateway" not in res["ips"][0] and "routes" not in res


def test_add_failures() -> None:
    got, msg = code_of(plugin(host=FakeHost(namespaces=())).add)
    assert got == 3 and msg == f"no network namespace {NETNS}"
    router = FakeRouter(up=False)
    got, msg = code_of(plugin(router=router).add)
    assert got == 11 and msg == ("no weft router answers on 127.0.0.1:6784 (waited 10 s): "
                                 "start it with `weft launch`")
    assert router.paths().count("/version") >= 90   # polled through the whole (virtual) wait
    router = FakeRouter()
    router.refuse = "IPAM gave no answer in time: awaiting consensus"
    got, msg = code_of(plugin(router=router).add)
    assert got == 999 and msg == "router: IPAM gave no answer in time: awaiting consensus"


def test_a_failed_add_is_undone() -> None:
    router = FakeRouter()
    conf = {**CONF, "ipam": {"routes": [{"dst": "198.51.100.0/24", "gw": "10.32.0.1"}]}}

    class Failing(FakeHost):
        def add_route(self, *args: Any) -> None:
            raise CniError(999, "netlink: no route to host")

    got, _ = code_of(plugin(conf=conf, router=router, host=Failing()).add)
    assert got == 999 and router.paths()[-1] == "/detach" and not router.attached


def test_del_is_idempotent_and_frees() -> None:
    router = FakeRouter()
    plugin(router=router).add()
    for _ in range(2):
        plugin({"CNI_COMMAND": "DEL"}, router=router).delete()
    assert router.calls[-1] == ("POST", "/detach", {"container": NETNS, "addresses": [],
                                                   "ifname": "eth0", "missing_ok": True})
    assert not router.attached


def test_del_without_a_namespace_path() -> None:
    router = FakeRouter()
    prev = {"interfaces": [{"name": "eth0", "mac": MAC, "sandbox": "/run/netns/x"}], "ips": []}
    plugin({"CNI_COMMAND": "DEL", "CNI_NETNS": ""}, {**CONF, "prevResult": prev}, router=router).delete()
    assert router.calls[-1][2]["container"] == "/run/netns/x"
    router = FakeRouter()
    plugin({"CNI_COMMAND": "DEL", "CNI_NETNS": ""}, router=router).delete()
    assert router.calls == []   # nothing names it: the router frees vanished namespaces itself


def test_del_without_a_router() -> None:
    router = FakeRouter(up=False)
    gone = FakeHost(namespaces=())
    plugin({"CNI_COMMAND": "DEL"}, router=router, host=gone).delete()   # nothing left to free
    got, msg = code_of(plugin({"CNI_COMMAND": "DEL"}, router=FakeRouter(up=False)).delete)
    assert got == 11 and "to detach /var/run/netns/pod1 and free its addresses" in msg


def test_check() -> None:
    router = FakeRouter()
    res = plugin(router=router).add()
    conf = {**CONF, "prevResult": res}
    plugin({"CNI_COMMAND": "CHECK"}, conf, router=router).check()
    host = FakeHost()
    host.iface = Interface("eth0", "02:00:00:00:00:99", True, (ipaddress.IPv4Interface("10.32.0.5/12"),))
    got, msg = code_of(plugin({"CNI_COMMAND": "CHECK"}, conf, router=router, host=host).check)
    assert got == 999 and "has MAC 02:00:00:00:00:99, not " + MAC in msg
    host.iface = Interface("eth0", MAC, True, ())
    got, msg = code_of(plugin({"CNI_COMMAND": "CHECK"}, conf, router=router, host=host).check)
    assert "lacks address 10.32.0.5/12" in msg
    host.iface = None
    got, msg = code_of(plugin({"CNI_COMMAND": "CHECK"}, conf, router=router, host=host).check)
    assert msg == f"{NETNS} has no interface eth0"
    got, msg = code_of(plugin({"CNI_COMMAND": "CHECK"}, CONF, router=router).check)
    assert got == 7 and "CHECK needs prevResult" in msg
    routed = {**conf, "prevResult": {**res, "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}]}}
    got, msg = code_of(plugin({"CNI_COMMAND": "CHECK"}, routed, router=router).check)
    assert msg == f"{NETNS} lacks the route to 0.0.0.0/0 via 10.32.0.1"
    router.attached.clear()
    got, msg = code_of(plugin({"CNI_COMMAND": "CHECK"}, conf, router=router).check)
    assert msg == f"the router has no record of eth0 in {NETNS}"


def test_status() -> None:
    plugin({"CNI_COMMAND": "STATUS"}).status()
    got, msg = code_of(plugin({"CNI_COMMAND": "STATUS"}, router=FakeRouter(up=False)).status)
    assert got == 50 and msg == "no weft router answers on 127.0.0.1:6784"


# --- one invocation --------------------------------------------------------------------------


def run(env: dict[str, str], stdin: bytes, argv: tuple[str, ...] = (),
        router: FakeRouter | None = None) -> tuple[int, Any]:
    made: list[tuple[str, int]] = []

    def make_client(addr: tuple[str, int]) -> FakeRouter:
        made.append(addr)
        return router or FakeRouter()

    status, out = cni.run(list(argv), {**ENV, **env}, stdin, make_client, FakeHost())
    return status, (json.loads(out) if out else None)


def test_run_version_gc_and_errors() -> None:
    assert run({"CNI_COMMAND": "VERSION"}, b"") == (0, {
        "cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    assert run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')[1]["cniVersion"] == "0.4.0"
    assert run({"CNI_COMMAND": "GC"}, b'{"cniVersion":"1.1.0","name":"weft"}') == (0, None)
    status, out = run({}, b'{"cniVersion": "0.4.0", "name": "weft", "type": "weft-net"}')
    assert status == 0 and out["cniVersion"] == "0.4.0" and out["ips"][0]["version"] == "4"
    status, out = run({}, b'{"cniVersion": "0.2.0"}')
    assert status == 1 and out == {"cniVersion": "1.0.0", "code": 1,
                                   "msg": "CNI version 0.2.0 is not supported (weft-net speaks "
                                          "0.4.0, 1.0.0, 1.1.0)"}
    status, out = run({"CNI_NETNS": ""}, json.dumps({**CONF, "cniVersion": "0.4.0"}).encode())
    assert status == 1 and out["cniVersion"] == "0.4.0" and out["code"] == 4


def test_router_address_from_flag_config_environment() -> None:
    env = {"WEFT_HTTP_ADDR": "127.0.0.1:7000"}
    conf = {**CONF, "http_addr": "127.0.0.1:7001"}
    assert cni._http_addr(["--http-addr", "127.0.0.1:7002"], conf, env) == ("127.0.0.1", 7002)
    assert cni._http_addr(["--http-addr=127.0.0.1:7003"], conf, env) == ("127.0.0.1", 7003)
    assert cni._http_addr([], conf, env) == ("127.0.0.1", 7001)
    assert cni._http_addr([], CONF, env) == ("127.0.0.1", 7000)
    assert cni._http_addr([], CONF, {}) == ("127.0.0.1", 6784)
    assert code_of(lambda: cni._http_addr([], {**CONF, "http_addr": "nope"}, {}))[0] == 7
    assert code_of(lambda: cni._http_addr([], CONF, {"WEFT_HTTP_ADDR": "x"}))[0] == 4
    assert code_of(lambda: cni._http_addr(["--bogus"], CONF, {}))[0] == 4


def test_router_wait_from_the_environment() -> None:
    assert cni._timeout({}) == cni.ROUTER_TIMEOUT
    assert cni._timeout({"WEFT_CNI_TIMEOUT": "2.5"}) == 2.5
    for bad in ("-1", "soon", "1e9"):
        assert code_of(lambda b=bad: cni._timeout({"WEFT_CNI_TIMEOUT": b}))[0] == 4  # type: ignore[misc]


def test_main_never_shows_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(cni, "run", broken)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"{}")))
    assert cni.main([]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"cniVersion": "1.0.0", "code": 999,
                               "msg": "internal error: RuntimeError: boom"}
    assert err == ""
    assert cni.main(["--help"]) == 0 and "CNI_COMMAND" in capsys.readouterr().out


# --- what the router side keeps -------------------------------------------------------------


class ApiControl:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def attach(self, container: str, addresses: list[str], name: str | None,
                     without_dns: bool, ifname: str = "ethwe") -> list[str]:
        self.calls.append(("attach", container, ifname))
        return ["10.32.0.5/12"]

    async def detach(self, container: str, addresses: list[str], ifname: str | None = None,
                     missing_ok: bool = False) -> list[str]:
        self.calls.append(("detach", container, ifname, missing_ok))
        return []


def call_api(control: ApiControl, path: str, body: dict[str, Any]) -> api.Response:
    request = api.Request("POST", path, {}, {}, json.dumps(body).encode())
    handler = api.ROUTES[("POST", path)]

    async def go() -> api.Response:
        try:
            return await handler(control, request)  # type: ignore[arg-type]
        except api.ApiError as exc:
            return api.error_response(exc.status, exc.message)

    return trio.run(go)


def test_api_passes_the_interface_name_and_missing_ok() -> None:
    control = ApiControl()
    assert call_api(control, "/attach", {"container": NETNS, "ifname": "eth0"}).status == 200
    assert call_api(control, "/attach", {"container": NETNS}).status == 200
    assert call_api(control, "/detach", {"container": NETNS, "ifname": "eth0",
                                         "missing_ok": True}).status == 200
    assert call_api(control, "/detach", {"container": NETNS}).status == 200
    assert control.calls == [("attach", NETNS, "eth0"), ("attach", NETNS, "ethwe"),
                             ("detach", NETNS, "eth0", True), ("detach", NETNS, None, False)]
    bad = call_api(control, "/attach", {"container": NETNS, "ifname": "a/b"})
    assert bad.status == 400 and b"bad interface name" in bad.body
    assert call_api(control, "/detach", {"container": NETNS, "missing_ok": "yes"}).status == 400


def test_records_keep_their_interface_name(tmp_path: Path) -> None:
    datadir = DataDir(tmp_path / "data")
    datadir.create()
    att = Attachments(datadir, mtu=1376, netns_etc=tmp_path / "etc")
    att._save({NETNS: Record(NETNS, MAC, ["10.32.0.5/12"], ifname="eth0"),
               "c2": Record("c2", MAC, ["10.2.1.2/24"])})
    assert att.records()[NETNS].ifname == "eth0" and att.records()["c2"].ifname == "ethwe"
    assert "ifname" not in datadir.load_state()["attached"]["c2"]
    assert [p["ifname"] for p in trio.run(att.ps)] == ["eth0", "ethwe"]


def test_detaching_a_namespace_that_is_gone(tmp_path: Path) -> None:
    datadir = DataDir(tmp_path / "data")
    datadir.create()
    att = Attachments(datadir, mtu=1376, netns_etc=tmp_path / "etc")
    missing = str(tmp_path / "no-such-netns")
    with pytest.raises(Exception, match="does not exist"):
        trio.run(att.detach, missing, [])
    result = trio.run(lambda: att.detach(missing, [], ifname="eth0", missing_ok=True))
    assert result.gone and result.removed == [] and result.container == missing


def test_invocation_defaults() -> None:
    inv = Invocation("VERSION")
    assert inv.args == {} and inv.netns == ""


# --- whatever the runtime passes: an answer, never an exception ---------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12)
    | st.sampled_from(["1.0.0", "0.4.0", "10.32.0.9", "10.32.1.0/24", "net:x", "eth0", "weft"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["cniVersion", "name", "ipam", "subnet", "addresses", "routes", "dst", "gw",
                         "args", "cni", "ips", "mac", "runtimeConfig", "aliases", "prevResult",
                         "interfaces", "sandbox", "dns", "http_addr", "type", "address"]),
        inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(command=st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "", "NOPE"]),
       conf=json_values, raw=st.binary(max_size=40), use_raw=st.booleans(),
       netns=st.sampled_from(["", NETNS, "relative", "/gone"]),
       ifname=st.sampled_from(["", "eth0", "x" * 20]),
       cni_args=st.text(max_size=20), up=st.booleans())
def test_any_input_gets_an_answer(command: str, conf: Any, raw: bytes, use_raw: bool, netns: str,
                                  ifname: str, cni_args: str, up: bool) -> None:
    env = {**ENV, "CNI_COMMAND": command, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_ARGS": cni_args, "WEFT_CNI_TIMEOUT": "0"}
    stdin = raw if use_raw else json.dumps(conf).encode()
    status, out = cni.run([], env, stdin, lambda addr: FakeRouter(up=up), FakeHost())
    if status == 0:
        assert out == "" or isinstance(json.loads(out), dict)
    else:
        obj = json.loads(out)
        assert set(obj) <= {"cniVersion", "code", "msg", "details"} and isinstance(obj["code"], int)
        assert obj["cniVersion"] in spec.SUPPORTED_VERSIONS and "\n" not in obj["msg"]


def test_add_returns_both_families_when_the_router_gives_both() -> None:
    host = FakeHost(bridge=("10.32.0.1/12", "fd32:7765:6674:1::1/64"))
    res = plugin(router=FakeRouter(dual=True), host=host).add()
    assert res["ips"] == [
        {"address": "10.32.0.5/12", "interface": 0, "gateway": "10.32.0.1"},
        {"address": "fd32:7765:6674:1::5/64", "interface": 0, "gateway": "fd32:7765:6674:1::1"}]
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"},
                             {"dst": "::/0", "gw": "fd32:7765:6674:1::1"}]
    assert (ipaddress.IPv6Network("::/0"), ipaddress.IPv6Address("fd32:7765:6674:1::1")) in host.table
    old = plugin(conf={**CONF, "cniVersion": "0.4.0"}, router=FakeRouter(dual=True)).add()
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    # an IPv6 subnet or address in the network config, and IPv6 routes
    conf = {**CONF, "ipam": {"subnet": "fd32:7765:6674:9::/64",
                             "routes": [{"dst": "2001:db8::/32", "gw": "fd32:7765:6674:9::1"}]}}
    assert spec.address_specs(conf, {}) == ["net:fd32:7765:6674:9::/64"]
    assert spec.ipam_routes(conf) == [(ipaddress.IPv6Network("2001:db8::/32"),
                                       ipaddress.IPv6Address("fd32:7765:6674:9::1"))]
    assert spec.address_specs({**CONF, "ipam": {"addresses": ["fd32::7"]}}, {},
                              [ipaddress.IPv6Network("fd32::/64")]) == ["fd32::7/64"]
    bad = {**CONF, "ipam": {"routes": [{"dst": "2001:db8::/32", "gw": "10.0.0.1"}]}}
    assert code_of(lambda: spec.ipam_routes(bad))[0] == spec.ERR_INVALID_CONFIG
    report = {"ipam": {"range": "10.32.0.0/12", "default_subnet": "10.32.0.0/12",
                       "ipv6": {"range": "fd32::/48", "default_subnet": "fd32:0:0:1::/64"}}}
    assert [str(n) for n in spec.report_subnets(report)] == [
        "10.32.0.0/12", "10.32.0.0/12", "fd32:0:0:1::/64", "fd32::/48"]
