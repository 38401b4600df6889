"""``weft expose`` / ``hide`` without a kernel: the nft plans, the ADDR selection for hide,
the record, and ``Exposer`` driving a fake host whose nftables model executes the JSON
commands the way ``nft -j -f -`` does (one batch is all or nothing; deleting a missing
rule or table fails). The same steps against the real kernel: tests/netns/test_expose.py.
"""

from __future__ import annotations

import copy
import json
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.unit.test_api import FakeControl
from tests.unit.test_cli import api_server, run_cli
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.host.datadir import DataDir
from weftnet.router.host.expose import (
    COMMENT_PREFIX,
    STATE_KEY,
    Command,
    ExposeError,
    Exposer,
    Host,
    Record,
    TableView,
    load_record,
    parse_table,
    plan,
    select,
    subnet_rules,
    teardown,
)
from weftnet.router.programs import cli

NET = IPv4Network("10.32.0.0/12")
SUB = IPv4Network("10.40.1.0/24")
A = IPv4Interface("10.32.0.1/12")
B = IPv4Interface("10.32.0.2/12")
C = IPv4Interface("10.40.1.1/24")


# --- a fake host ---------------------------------------------------------------------------


class FakeHost:
    """Bridge addresses, forwarding of both families and an nftables model for
    ``table ip weft`` and ``table ip6 weft``."""

    def __init__(self, *, forwarding: bool = False, forwarding6: bool = False) -> None:
        self.addrs: list[Any] = []
        self.fwd = forwarding
        self.fwd6 = forwarding6
        # "family name" -> {"chains": set, "rules": [...]}
        self.tables: dict[str, dict[str, Any]] = {}
        self.next_handle = 1
        self.batches: list[list[Command]] = []
        self.fail_nft: str | None = None
        self.drop_secondaries = True    # the kernel's default without promote_secondaries

    # addresses
    def add_address(self, iface: Any) -> None:
        if iface not in self.addrs:
            self.addrs.append(iface)

    def remove_address(self, iface: Any) -> None:
        if iface not in self.addrs:
            return
        primary = next(a for a in self.addrs if a.network == iface.network) == iface
        self.addrs.remove(iface)
        if primary and self.drop_secondaries:
            self.addrs = [a for a in self.addrs if a.network != iface.network]

    def addresses(self) -> list[Any]:
        return list(self.addrs)

    # forwarding
    def forwarding(self, version: int = 4) -> bool:
        return self.fwd6 if version == 6 else self.fwd

    def set_forwarding(self, on: bool, version: int = 4) -> None:
        if version == 6:
            self.fwd6 = on
        else:
            self.fwd = on

    # nftables
    def table(self, family: str = "ip") -> TableView | None:
        t = self.tables.get(f"{family} weft")
        if t is None:
            return None
        items: list[dict[str, Any]] = [{"metainfo": {"version": "fake"}},
                                       {"table": {"family": family, "name": "weft", "handle": 1}}]
        items += [{"chain": {"family": family, "table": "weft", "name": c}} for c in sorted(t["chains"])]
        for rule in t["rules"]:
            item = {"family": family, "table": "weft", "chain": rule["chain"],
                    "handle": rule["handle"], "expr": rule["expr"]}
            if rule.get("comment"):
                item["comment"] = rule["comment"]
            items.append({"rule": item})
        return parse_table(json.loads(json.dumps({"nftables": items})))

    def nft(self, commands: list[Command]) -> None:
        if self.fail_nft is not None:
            raise ExposeError(self.fail_nft)
        json.dumps(commands)  # what the real one sends must be JSON
        tables = copy.deepcopy(self.tables)
        handle = self.next_handle
        for command in commands:
            (verb, body), = command.items()
            (kind, obj), = body.items()
            assert obj["family"] in ("ip", "ip6")
            name = obj["family"] + " " + (obj["name"] if kind == "table" else obj["table"])
            if kind == "table" and verb == "add":
                tables.setdefault(name, {"chains": set(), "rules": []})
            elif kind == "table" and verb == "delete":
                if name not in tables:
                    raise ExposeError("delete table: No such file or directory")
                del tables[name]
            elif kind == "chain" and verb == "add":
                assert obj["type"] in ("nat", "filter") and obj["policy"] == "accept"
                tables[name]["chains"].add(obj["name"])
            elif kind == "rule" and verb == "add":
                assert obj["chain"] in tables[name]["chains"], obj
                tables[name]["rules"].append({**obj, "handle": handle})
                handle += 1
            elif kind == "rule" and verb == "delete":
                rules = tables[name]["rules"]
                if not any(r["handle"] == obj["handle"] for r in rules):
                    raise ExposeError("delete rule: No such file or directory")
                tables[name]["rules"] = [r for r in rules if r["handle"] != obj["handle"]]
            else:
                raise AssertionError(f"unexpected command {command}")
        self.tables, self.next_handle = tables, handle
        self.batches.append(commands)

    # what tests look at
    def our_subnets(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rule in [r for t in self.tables.values() for r in t["rules"]]:
            comment = rule.get("comment", "")
            if comment.startswith(COMMENT_PREFIX):
                key = comment.removeprefix(COMMENT_PREFIX)
                counts[key] = counts.get(key, 0) + 1
        return counts


def datadir(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data")
    d.save_state({"name": "02:00:00:00:00:01", "targets": []})
    return d


def run(fn: Any, *args: Any) -> Any:
    async def main() -> Any:
        return await fn(*args)
    return trio.run(main)


# --- plans ---------------------------------------------------------------------------------


def test_a_first_subnet_creates_the_table_its_chains_and_three_rules() -> None:
    commands = plan(None, [NET])
    verbs = [(next(iter(c)), next(iter(next(iter(c.values()))))) for c in commands]
    assert verbs == [("add", "table"), ("add", "chain"), ("add", "chain"),
                     ("add", "rule"), ("add", "rule"), ("add", "rule")]
    chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in commands if "chain" in c["add"]}
    assert chains["postrouting"]["type"] == "nat" and chains["postrouting"]["hook"] == "postrouting"
    assert chains["forward"]["type"] == "filter" and chains["forward"]["hook"] == "forward"
    rules = [c["add"]["rule"] for c in commands if "rule" in c["add"]]
    assert {r["comment"] for r in rules} == {"weft-expose 10.32.0.0/12"}
    masq = rules[0]["expr"]
    assert masq[-1] == {"masquerade": None}
    assert masq[0]["match"]["right"] == {"prefix": {"addr": "10.32.0.0", "len": 12}}
    assert {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "weft"}} in masq


def test_nothing_to_do_when_the_table_holds_exactly_the_wanted_rules() -> None:
    host = FakeHost()
    host.nft(plan(None, [NET, SUB]))
    assert plan(host.table(), [SUB, NET]) == []
    assert host.our_subnets() == {"10.32.0.0/12": 3, "10.40.1.0/24": 3}


def test_a_subnet_no_longer_wanted_loses_exactly_its_rules() -> None:
    host = FakeHost()
    host.nft(plan(None, [NET, SUB]))
    commands = plan(host.table(), [NET])
    assert all("delete" in c and "rule" in c["delete"] for c in commands) and len(commands) == 3
    host.nft(commands)
    assert host.our_subnets() == {"10.32.0.0/12": 3}


def test_nothing_wanted_drops_the_table_unless_someone_elses_rules_are_in_it() -> None:
    host = FakeHost()
    host.nft(plan(None, [NET]))
    assert plan(host.table(), []) == [{"delete": {"table": {"family": "ip", "name": "weft"}}}]
    host.tables["ip weft"]["rules"].append({"chain": "forward", "handle": 99, "expr": [],
                                         "comment": "an admin's"})
    commands = plan(host.table(), [])
    host.nft(commands)
    assert host.our_subnets() == {} and "ip weft" in host.tables
    assert [r["handle"] for r in host.tables["ip weft"]["rules"]] == [99]
    assert plan(None, []) == []


def test_an_incomplete_set_is_replaced_and_a_stray_comment_goes() -> None:
    host = FakeHost()
    host.nft(plan(None, [NET]))
    host.tables["ip weft"]["rules"].pop()          # someone deleted one of ours
    host.tables["ip weft"]["rules"].append({"chain": "forward", "handle": 50, "expr": [],
                                         "comment": COMMENT_PREFIX + "garbage"})
    host.nft(plan(host.table(), [NET]))
    assert host.our_subnets() == {"10.32.0.0/12": 3}
    assert plan(host.table(), [NET]) == []


def test_a_host_route_is_matched_as_an_address() -> None:
    (_, expr), *_ = subnet_rules(IPv4Network("192.0.2.7/32"))
    assert expr[0]["match"]["right"] == "192.0.2.7"


def test_parse_table_reads_what_nft_lists() -> None:
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "ip", "name": "weft", "handle": 1}},
        {"chain": {"family": "ip", "table": "weft", "name": "postrouting", "handle": 1,
                   "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "weft", "chain": "postrouting", "handle": 3,
                  "comment": "weft-expose 10.32.0.0/12", "expr": [{"masquerade": None}]}},
        {"rule": {"family": "ip", "table": "weft", "chain": "postrouting", "handle": 4,
                  "expr": [{"accept": None}]}},
    ]}
    view = parse_table(listing)
    assert view.chains == frozenset({"postrouting"})
    assert list(view.ours()) == ["10.32.0.0/12"] and [r.handle for r in view.foreign()] == [4]
    with pytest.raises(ExposeError):
        parse_table({"oops": 1})


# --- hide's ADDR arguments -------------------------------------------------------------------


def test_select_names_exposed_addresses() -> None:
    exposed = [A, B, C]
    assert select(exposed, [], NET) == exposed
    assert select(exposed, ["10.32.0.2/12"], NET) == [B]
    assert select(exposed, ["10.40.1.1"], NET) == [C]
    assert select(exposed, ["net:10.40.1.0/24"], NET) == [C]
    assert select(exposed, ["net:default", "10.32.0.1"], NET) == [A, B]
    assert select(exposed, ["10.32.0.2/24", "10.9.9.9", "net:10.99.0.0/16"], NET) == []


@pytest.mark.parametrize("text, words", [
    ("banana", "not an IP address"),
    ("10.1.2.3/40", "not an IP address with prefix length"),
    ("net:10.1.2.3/16", "not a subnet"),
])
def test_select_refuses_bad_words_in_one_line(text: str, words: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        select([A], [text], NET)
    assert words in info.value.reason and "\n" not in info.value.reason


def test_net_default_without_ipam_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="needs IPAM"):
        select([A], ["net:default"], None)


# --- the record ------------------------------------------------------------------------------


def test_record_round_trip_and_damage_tolerance() -> None:
    rec = Record([A, C], "gw.weft.local.", True)
    assert Record.from_json(json.loads(json.dumps(rec.as_json()))) == rec
    bad = Record.from_json({"cidrs": ["10.32.0.1/12", "nonsense", 7, "10.32.0.1/12"],
                            "name": 5, "forward_changed": "yes"})
    assert bad == Record([A], None, False)
    assert Record.from_json(None) == Record() and Record.from_json({"cidrs": "x"}) == Record()


# --- Exposer over the fake host ----------------------------------------------------------------


def test_expose_programs_everything_once_and_hide_takes_exactly_it_away(tmp_path: Path) -> None:
    d = datadir(tmp_path)
    host = FakeHost(forwarding=False)
    ex = Exposer(d, host)
    before = run(ex.expose, [A], "gw.weft.local.")
    assert before == Record()
    assert host.addrs == [A] and host.fwd and host.our_subnets() == {"10.32.0.0/12": 3}
    assert d.load_state()[STATE_KEY] == {"cidrs": [str(A)], "name": "gw.weft.local.",
                                         "forward_changed": True}
    assert d.load_state()["name"] == "02:00:00:00:00:01"   # the rest of the state is kept
    batches = len(host.batches)
    run(ex.expose, [A], None)                               # idempotent: nothing programmed
    assert len(host.batches) == batches and host.addrs == [A]
    assert ex.record().name == "gw.weft.local."             # no --name keeps the name
    run(ex.expose, [B, C], None)
    assert host.addrs == [A, B, C]
    assert host.our_subnets() == {"10.32.0.0/12": 3, "10.40.1.0/24": 3}
    assert ex.idents() == {"weft:expose"}

    # hiding the primary of a subnet keeps the other address of it (the kernel took it)
    gone, after = run(ex.hide, ["10.32.0.1/12"], NET)
    assert gone == [A] and after.cidrs == [B, C]
    assert set(host.addrs) == {B, C} and len(host.addrs) == 2
    assert host.our_subnets() == {"10.32.0.0/12": 3, "10.40.1.0/24": 3} and host.fwd
    gone, _ = run(ex.hide, ["net:10.40.1.0/24"], NET)
    assert gone == [C] and host.our_subnets() == {"10.32.0.0/12": 3}
    assert run(ex.hide, ["net:10.40.1.0/24"], NET) == ([], ex.record())   # again: nothing
    gone, after = run(ex.hide, [], NET)
    assert gone == [B] and after == Record()
    assert host.addrs == [] and "ip weft" not in host.tables and not host.fwd
    assert STATE_KEY not in d.load_state() and ex.idents() == set()
    batches = len(host.batches)
    assert run(ex.hide, [], NET) == ([], Record())          # hide twice: nothing to do
    assert len(host.batches) == batches


def test_forwarding_already_on_is_left_on(tmp_path: Path) -> None:
    host = FakeHost(forwarding=True)
    ex = Exposer(datadir(tmp_path), host)
    run(ex.expose, [A], None)
    assert not ex.record().forward_changed
    run(ex.hide, [], NET)
    assert host.fwd


def test_a_failing_nft_undoes_the_whole_expose(tmp_path: Path) -> None:
    d = datadir(tmp_path)
    host = FakeHost()
    ex = Exposer(d, host)
    run(ex.expose, [A], None)
    state = d.load_state()
    host.fail_nft = "cannot program table ip weft: Operation not permitted"
    with pytest.raises(ExposeError, match="Operation not permitted"):
        run(ex.expose, [C], "x.weft.local.")
    assert d.load_state() == state and host.addrs == [A] and host.fwd
    host.fail_nft = None
    assert host.our_subnets() == {"10.32.0.0/12": 3}
    fresh = FakeHost()
    ex2 = Exposer(DataDir(tmp_path / "other"), fresh)
    fresh.fail_nft = "nft is missing"
    with pytest.raises(ExposeError):
        run(ex2.expose, [A], None)
    assert fresh.addrs == [] and not fresh.fwd and ex2.record() == Record()


def test_an_address_exposed_with_another_prefix_is_refused(tmp_path: Path) -> None:
    ex = Exposer(datadir(tmp_path), FakeHost())
    run(ex.expose, [A], None)
    with pytest.raises(LocalProtocolError, match="exposed already as 10.32.0.1/12"):
        run(ex.expose, [IPv4Interface("10.32.0.1/24")], None)


def test_restore_puts_back_what_a_reboot_took(tmp_path: Path) -> None:
    d = datadir(tmp_path)
    run(Exposer(d, FakeHost(forwarding=True)).expose, [A, C], None)
    rebooted = FakeHost(forwarding=False)
    ex = Exposer(d, rebooted)
    run(ex.restore)
    assert rebooted.addrs == [A, C] and rebooted.fwd
    assert rebooted.our_subnets() == {"10.32.0.0/12": 3, "10.40.1.0/24": 3}
    assert ex.record().forward_changed          # we turned it on this time: hide undoes it
    run(ex.hide, [], NET)
    assert not rebooted.fwd
    idle = FakeHost()
    run(Exposer(d, idle).restore)               # nothing exposed: nothing touched
    assert idle.batches == [] and idle.addrs == []


def test_teardown_removes_everything_and_is_idempotent(tmp_path: Path) -> None:
    d = datadir(tmp_path)
    host = FakeHost()
    run(Exposer(d, host).expose, [A, C], "gw.weft.local.")
    assert teardown(d, host) == [str(A), str(C)]
    assert host.addrs == [] and host.tables == {} and not host.fwd
    assert load_record(d) == Record() and STATE_KEY not in d.load_state()
    assert teardown(d, host) == []
    # the CLI's variant (table=False) touches nothing when nothing is recorded
    host.nft(plan(None, [NET]))
    assert teardown(d, host, table=False) == [] and "ip weft" in host.tables


def test_host_without_nft_has_no_table_and_refuses_to_program_one(tmp_path: Path) -> None:
    host = Host(ip_forward=tmp_path / "ip_forward", nft="nft-that-is-not-installed")
    assert host.table() is None
    with pytest.raises(ExposeError) as info:
        host.nft(plan(None, [NET]))
    assert "is not installed" in info.value.reason and "\n" not in info.value.reason
    host.nft([])   # nothing to do needs no nft


def test_host_forwarding_reads_and_writes_the_sysctl_file(tmp_path: Path) -> None:
    path = tmp_path / "ip_forward"
    path.write_text("0\n")
    host = Host(ip_forward=path)
    assert not host.forwarding()
    host.set_forwarding(True)
    assert path.read_text() == "1\n" and host.forwarding()
    with pytest.raises(ExposeError, match="cannot read"):
        Host(ip_forward=tmp_path / "missing" / "ip_forward").forwarding()


# --- API and CLI -------------------------------------------------------------------------------


class ExposeControl(FakeControl):
    def __init__(self) -> None:
        super().__init__()
        self.exposed: list[str] = []

    async def expose(self, addresses: list[str], name: str | None) -> list[str]:
        self.calls.append(("expose", (addresses, name)))
        if any(a.startswith("bad") for a in addresses):
            raise LocalProtocolError(f"{addresses[0]}: not an IPv4 address")
        got = addresses or ["10.32.0.1/12"]
        self.exposed += [a for a in got if a not in self.exposed]
        return got

    async def hide(self, addresses: list[str]) -> list[str]:
        self.calls.append(("hide", addresses))
        gone = [a for a in self.exposed if not addresses or a in addresses]
        self.exposed = [a for a in self.exposed if a not in gone]
        return gone


def test_cli_expose_and_hide_print_cidrs(capsys: pytest.CaptureFixture[str]) -> None:
    ctl = ExposeControl()
    with api_server(ctl) as (addr, _):
        assert run_cli(capsys, "expose", "--http-addr", addr) == (0, "10.32.0.1/12\n", "")
        assert run_cli(capsys, "expose", "10.2.1.1/24", "--name", "gw", "--http-addr", addr,
                       "net:10.40.1.0/24") == (0, "10.2.1.1/24\nnet:10.40.1.0/24\n", "")
        status, out, err = run_cli(capsys, "expose", "--http-addr", addr, "bad")
        assert (status, out) == (1, "") and err == "weft: bad: not an IPv4 address\n"
        assert run_cli(capsys, "hide", "--http-addr", addr, "10.2.1.1/24") == (0, "10.2.1.1/24\n", "")
        assert run_cli(capsys, "hide", "--http-addr", addr) == (
            0, "10.32.0.1/12\nnet:10.40.1.0/24\n", "")
        assert run_cli(capsys, "hide", "--http-addr", addr) == (0, "", "")
    assert ctl.calls[:2] == [("expose", ([], None)),
                             ("expose", (["10.2.1.1/24", "net:10.40.1.0/24"], "gw"))]
    assert ("hide", []) in ctl.calls


def test_cli_expose_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "expose", "--name")
    assert status == 2 and err.count("\n") == 1 and "expected one argument" in err
    status, _, err = run_cli(capsys, "hide", "--bogus")
    assert status == 2 and "unrecognized arguments" in err
    assert cli.build_parser().parse_args(["hide", "a", "b"]).args == ["a", "b"]


# --- IPv6: its own table; ULAs masqueraded, global prefixes routed ---------------------------------

ULA6 = IPv6Interface("fd32:1:2:3::1/64")
GUA6 = IPv6Interface("2001:db8:5::1/64")


def test_ipv6_rules_nat_a_ula_and_route_a_global_prefix() -> None:
    ula = subnet_rules(ULA6.network)
    assert [chain for chain, _ in ula] == ["postrouting", "forward", "forward"]
    assert all(e["match"]["left"]["payload"]["protocol"] == "ip6"
               for _, exprs in ula for e in exprs
               if "match" in e and "payload" in e["match"]["left"])
    gua = subnet_rules(GUA6.network)
    assert [chain for chain, _ in gua] == ["forward", "forward"]   # routed: no masquerade
    assert not any("masquerade" in e for _, exprs in gua for e in exprs)
    cmds = plan(None, [ULA6.network], "ip6")
    assert cmds[0] == {"add": {"table": {"family": "ip6", "name": "weft"}}}
    assert all(next(iter(c.values()))[next(iter(next(iter(c.values()))))]["family"] == "ip6"
               for c in cmds)


def test_exposing_ipv6_uses_its_own_table_and_forwarding(tmp_path: Path) -> None:
    d = datadir(tmp_path)
    host = FakeHost(forwarding=True, forwarding6=False)
    ex = Exposer(d, host)
    run(ex.expose, [A, ULA6], None)
    assert host.addrs == [A, ULA6] and host.fwd6
    assert set(host.tables) == {"ip weft", "ip6 weft"}
    assert host.our_subnets() == {"10.32.0.0/12": 3, "fd32:1:2:3::/64": 3}
    rec = ex.record()
    assert rec.forward6_changed and not rec.forward_changed   # IPv4 forwarding was on already
    assert load_record(d) == rec
    run(ex.expose, [GUA6], None)
    assert host.our_subnets()["2001:db8:5::/64"] == 2
    gone, after = run(ex.hide, ["fd32:1:2:3::1", "2001:db8:5::1/64"], NET)
    assert gone == [ULA6, GUA6] and after.cidrs == [A]
    assert "ip6 weft" not in host.tables and not host.fwd6 and not after.forward6_changed
    assert host.fwd                                            # not ours to turn off
    assert select([A, ULA6], ["net:fd32:1:2:3::/64"], NET) == [ULA6]
    run(ex.expose, [ULA6], None)
    assert teardown(d, host) == [str(A), str(ULA6)]
    assert host.tables == {} and not host.fwd6 and host.fwd
