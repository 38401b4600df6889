"""Network policy, unit tier: documents and their one-line errors, selectors, the store's
restart and tie-break rules, the compiled table's shape, the CNI plugin's labels, and what
the router says when enforcement fails (status, /metrics), with a fake nftables host."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from weftnet.policy.compile import Workload, compile_ruleset, evaluate, render
from weftnet.policy.documents import parse_documents
from weftnet.policy.labels import PolicyError, parse_label_args
from weftnet.policy.service import PolicyService
from weftnet.policy.store import PolicyItem
from weftnet.router.api.metrics import RouterCollector, Snapshot
from weftnet.router.api.render import render_ps, render_status
from weftnet.router.api.render_policy import render_policy_list
from weftnet.router.daemon.config import add_launch_arguments, config_from_args
from weftnet.router.daemon.router import Router
from weftnet.router.host.datadir import DataDir
from weftnet.router.host.policy_nft import EnforcementError
from weftnet.router.programs.cnilabels import cni_labels
from weftnet.router.programs.cnispec import CniError

DB = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-allow, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"""


def doc(spec: dict[str, Any], name: str = "p") -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": name}, "spec": spec})


@pytest.mark.parametrize("text, error", [
    (DB.replace("port: 5432", "port: http"),
     "NetworkPolicy db-allow: spec.ingress[0].ports[0].port: named ports ('http') are not supported"),
    (DB.replace("port: 5432", "port: 70000"),
     "NetworkPolicy db-allow: spec.ingress[0].ports[0].port: 70000 is not a port number (1-65535)"),
    (DB.replace("{port: 5432}", "{port: 5432, endPort: 80}"),
     "NetworkPolicy db-allow: spec.ingress[0].ports[0].endPort: 80 is below port 5432"),
    (DB.replace("podSelector: {matchLabels: {app: web}}", "namespaceSelector: {}"),
     "NetworkPolicy db-allow: spec.ingress[0].from[0].namespaceSelector: not supported"),
    (DB.replace("  ingress:", "  ingres:"),
     "NetworkPolicy db-allow: spec.ingres: unknown field"),
    (DB.replace("{matchLabels: {app: db}}",
                "{matchLabels: {app: db}, matchExpressions: [{key: app, operator: NotIn, values: [db]}]}"),
     "NetworkPolicy db-allow: spec.podSelector: can never match: no value of label 'app'"),
    (DB.replace("networking.k8s.io/v1", "v1"), "NetworkPolicy db-allow: apiVersion: must be"),
    (DB.replace("name: db-allow", "name: Db_Allow"), "NetworkPolicy Db_Allow: metadata.name:"),
    (DB + "---\n" + DB, "NetworkPolicy db-allow: appears twice in the input"),
    ("kind: [", "f.yaml: not valid YAML or JSON at line 1"),
    ("", "f.yaml: holds no documents"),
    (doc({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                                "except": ["11.0.0.0/16"]}}]}]}),
     "NetworkPolicy p: spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 is not inside 10.0.0.0/8"),
    (doc({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
     "NetworkPolicy p: spec.podSelector.matchExpressions[0].values: operator In needs at least one value"),
    (doc({"podSelector": {"matchLabels": {"app": "a b"}}}),
     "NetworkPolicy p: spec.podSelector.matchLabels: bad label value 'a b'"),
    ('[{"kind": "NetworkPolicy"}]', "f.yaml document 1: apiVersion: must be networking.k8s.io/v1"),
])
def test_bad_documents_are_one_line_errors_naming_document_and_field(text: str, error: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_documents(text, "f.yaml")
    assert str(info.value).startswith(error), str(info.value)
    assert "\n" not in str(info.value)


def test_documents_in_every_form_and_default_types() -> None:
    both = DB + "---\n" + DB.replace("db-allow", "other")
    assert [p.name for p in parse_documents(both)] == ["db-allow", "other"]
    items = [json.loads(doc({"podSelector": {}}))]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    [p] = parse_documents(listing)
    assert p.types == ("Ingress",) and p.ingress == ()          # deny all ingress
    [q] = parse_documents(doc({"podSelector": {}, "egress": [{}]}))
    assert q.types == ("Egress", "Ingress")                     # egress rules: Egress too
    [r] = parse_documents(doc({"podSelector": {}, "egress": [], "policyTypes": ["Egress"]}))
    assert r.types == ("Egress",) and r.rules_line() == "egress: deny all"
    assert parse_documents(p.canonical())[0] == p               # the canonical form reads back


def test_labels_from_the_command_line() -> None:
    assert parse_label_args(["app=web", "example.com/tier=", "app=db"]) == {"app": "db",
                                                                          "example.com/tier": ""}
    for bad in ("app", "=x", "-a=b", "a=" + "v" * 64, "Ex_ample.com/a=b"):
        with pytest.raises(PolicyError):
            parse_label_args([bad])


def test_restart_restores_policies_and_our_labels_and_origin_authority() -> None:
    me = PolicyService(1, 1000.0)
    me.set_container("db", {"app": "db"}, ["10.0.0.2"], 1000.0)
    me.set_container("gone", {"app": "x"}, ["10.0.0.9"], 1000.0)
    me.apply(parse_documents(DB), 1000.0)
    saved = json.loads(json.dumps(me.saved_state()))
    peer = PolicyService(2, 1000.0)
    peer.gossiper.on_gossip(me.gossiper.gossip(), 1000.0)  # type: ignore[arg-type]
    # restarted: "gone" is no longer attached, "db" has another address now
    again = PolicyService(1, 1010.0)
    again.restore(saved, {"db": ["10.0.0.3"]}, 1010.0)
    assert [p.name for p in again.policies()] == ["db-allow"]
    assert again.labels_of("db") == {"app": "db"} and again.labels_of("gone") == {}
    # the peer's stale copy of our previous incarnation is corrected
    again.gossiper.on_gossip(peer.gossiper.gossip(), 1011.0)  # type: ignore[arg-type]
    news = again.take_news()
    assert news is not None
    peer.gossiper.on_gossip(news, 1012.0)
    assert sorted((w.key, w.ips) for w in peer.workloads()) == [("000000000001/db", ("10.0.0.3",))]
    assert peer.store.digest() == again.store.digest()


def test_concurrent_applies_of_one_name_agree() -> None:
    a, b = PolicyService(1, 0.0), PolicyService(2, 0.0)
    a.apply(parse_documents(DB), 1.0)
    b.apply(parse_documents(DB.replace("5432", "5433")), 1.0)
    for x, y in ((a, b), (b, a)):
        x.gossiper.on_gossip(y.gossiper.gossip(), 2.0)  # type: ignore[arg-type]
    assert a.policies() == b.policies()
    held = a.store.get(("p", "db-allow"))
    assert isinstance(held, PolicyItem) and held.author == 2   # equal versions: the higher author
    a.delete("db-allow", 3.0)
    b.gossiper.on_gossip(a.take_news(), 4.0)  # type: ignore[arg-type]
    assert b.policies() == []
    with pytest.raises(PolicyError, match="no such policy"):
        b.delete("db-allow", 5.0)


def test_compiled_table_shape() -> None:
    policies = parse_documents(DB)
    workloads = [Workload("1/web", {"app": "web"}, ("10.0.0.1",)),
                 Workload("2/db", {"app": "db"}, ("10.0.0.2",)),
                 Workload("2/db2", {"app": "db"}, ("10.0.0.3",))]
    rs = compile_ruleset(policies, workloads, ["2/db", "2/db2"])
    assert len(rs.chains) == 1 and rs.ingress == (("10.0.0.2", 0), ("10.0.0.3", 0)) and rs.egress == ()
    assert rs.selected == {"db-allow": ("2/db", "2/db2")}
    text = render(rs)
    assert 'oifname "weft" ip daddr vmap { 10.0.0.2 : jump c0, 10.0.0.3 : jump c0 }' in text
    assert "ip saddr 10.0.0.1 meta l4proto tcp th dport 5432 return" in text
    assert 'counter name "p0" drop' in text and "ct state established,related accept" in text
    assert evaluate(rs, "10.0.0.1", "10.0.0.2", "TCP", 5432)
    assert not evaluate(rs, "10.0.0.1", "10.0.0.2", "UDP", 5432)
    # no policy selects a container of this host: an empty ruleset, no table at all
    assert compile_ruleset(policies, workloads, ["1/web"]).empty


def test_cni_labels() -> None:
    conf = {"args": {"cni": {"labels": [{"key": "app", "value": "web"}]}, "labels": {"tier": "a"}}}
    assert cni_labels(conf, {"LABELS": "env=prod,tier=b"}) == {"app": "web", "tier": "b", "env": "prod"}
    assert cni_labels({}, {}) == {}
    with pytest.raises(CniError):
        cni_labels({}, {"LABELS": "novalue"})
    with pytest.raises(CniError):
        cni_labels({"args": {"labels": {"a b": "c"}}}, {})


# --- the router, with a fake nftables host ---------------------------------------------------


class FakeHost:
    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.tables: list[str] = []
        self.netfilter = False
        self.present = False

    def install(self, text: str) -> None:
        if self.fail:
            raise EnforcementError(self.fail)
        self.tables.append(text)
        self.present = True

    def exists(self) -> bool:
        return self.present

    def remove(self) -> None:
        self.present = False

    def counters(self) -> dict[str, int]:
        return {"p0": 3} if self.present else {}

    def bridge_netfilter(self, on: bool) -> bool:
        was, self.netfilter = self.netfilter, on
        return was


def router(tmp_path: Path) -> Router:
    parser = argparse.ArgumentParser()
    add_launch_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--data-dir", str(tmp_path), "--no-dns",
                                              "--ipalloc-range", ""]))
    return Router(cfg, DataDir(cfg.data_dir), 0x020000000001, [])


def metrics_of(report: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(RouterCollector(lambda: Snapshot(report)))
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_enforcement_failure_is_shown_at_once_and_success_counts_drops(tmp_path: Path) -> None:
    async def main() -> None:
        r = router(tmp_path)
        host = FakeHost(fail="nft refused the policy table: Error: Could not process rule")
        r.policy.host = host  # type: ignore[assignment]
        r.policy.service.set_container("db", {"app": "db"}, ["10.0.0.2"], r.policy.wall())
        assert r.policy.apply(DB, "db.yaml") == ["db-allow"]
        await r.policy.enforce()
        report = r.report()
        assert report["policy"]["enforcement"]["ok"] is False
        status = render_status(report)
        assert "Enforcement: FAILED: nft refused the policy table" in status
        assert "NOT enforced" in render_status(report, "policy").splitlines()[0]
        assert metrics_of(report)["weft_policy_enforcement_ok", ()] == 0
        host.fail = None
        await r.policy.enforce()
        assert host.netfilter and "jump c0" in host.tables[-1]
        r.policy._live = host.counters()   # what the enforcer task reads every REFRESH
        report = r.report()
        assert report["policy"]["enforcement"]["ok"] is True and report["policy"]["in_force"] == ["db-allow"]
        samples = metrics_of(report)
        assert samples["weft_policy_enforcement_ok", ()] == 1
        assert samples["weft_policy_drops_total", (("policy", "db-allow"),)] == 3
        assert render_policy_list(report["policy"]).split() == [
            "db-allow", "db", "ingress:", "from", "app=web", "on", "tcp/5432"]
        # deleted: the table goes, the bridge switch too, the drops stay counted
        r.policy.delete("db-allow")
        await r.policy.enforce()
        assert not host.present and not host.netfilter
        assert metrics_of(r.report())["weft_policy_drops_total", (("policy", "db-allow"),)] == 3

    trio.run(main)


def test_ps_shows_labels() -> None:
    rows = [{"container": "db", "mac": "aa:bb", "cidrs": ["10.0.0.2/24"], "labels": {"app": "db", "t": "x"}},
            {"container": "other", "mac": "cc:dd", "cidrs": ["10.0.0.3/24"], "labels": {}}]
    assert render_ps(rows) == "db    aa:bb 10.0.0.2/24 app=db,t=x\nother cc:dd 10.0.0.3/24\n"


def test_other_routers_containers_survive_our_restart_until_their_router_is_gone() -> None:
    a, b = PolicyService(1, 0.0, grace=30.0), PolicyService(2, 0.0)
    b.set_container("web", {"app": "web"}, ["10.0.0.1"], 0.0)
    a.gossiper.on_gossip(b.take_news(), 1.0)  # type: ignore[arg-type]
    saved = json.loads(json.dumps(a.saved_state()))
    again = PolicyService(1, 100.0, grace=30.0)
    again.restore(saved, {}, 100.0)
    assert [(w.key, dict(w.labels)) for w in again.workloads()] == [("000000000002/web", {"app": "web"})]
    assert again.handle_timer(101.0, [1, 2]) == []      # b is in the topology: kept
    assert again.handle_timer(102.0, [1]) == []          # b gone: the grace period starts
    assert again.handle_timer(131.0, [1]) == []
    assert again.handle_timer(132.0, [1]) == [2] and again.workloads() == []
