"""Network policy, pure tier: the compiled ruleset against an oracle of the Kubernetes
semantics, the CRDT's convergence, and the rendered table against the kernel (``nft -c``).

The oracle reads the raw documents (dicts, as a user writes them) and the containers'
labels directly: a policy selects a container when its podSelector matches its labels;
a policy's types default to Ingress, plus Egress when it has egress rules; a connection
src -> dst passes when (src is selected by no Egress policy, or some egress rule of one
that selects it admits dst and the port) and the same for dst's ingress. The compiled side
goes through parsing, selection, address sets and the chain structure; each container is
placed on one of two hosts, and a packet passes when both hosts' rulesets let it.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from weftnet.policy.compile import Workload, compile_ruleset, evaluate, render
from weftnet.policy.documents import parse_policy
from weftnet.policy.labels import PolicyError
from weftnet.policy.service import Items, PolicyService

KEYS = ["app", "tier", "env"]
VALUES = ["web", "db", "x"]
PROTOS = ["TCP", "UDP"]
EXTERNAL = ["192.168.1.1", "192.168.2.7", "172.16.0.1", "10.0.0.14", "10.0.0.200"]

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)


@st.composite
def selector_st(draw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ml = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2))
    if ml:
        out["matchLabels"] = ml
    exprs = []
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        e: dict[str, Any] = {"key": draw(st.sampled_from(KEYS)), "operator": op}
        if op in ("In", "NotIn"):
            e["values"] = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True))
        exprs.append(e)
    if exprs:
        out["matchExpressions"] = exprs
    return out


@st.composite
def block_st(draw: Any) -> dict[str, Any]:
    cidr = draw(st.sampled_from(["10.0.0.0/24", "10.0.0.0/28", "10.0.0.0/24", "192.168.0.0/16",
                                 "0.0.0.0/0"]))
    net = ipaddress.ip_network(cidr)
    excepts = []
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 2))):
            plen = draw(st.integers(net.prefixlen + 1, 30))
            count = 1 << (plen - net.prefixlen)   # subnets of that size: one near either end
            index = draw(st.sampled_from(sorted({i for i in (0, 1, 2, count - 1) if i < count})))
            size = 1 << (32 - plen)
            sub = ipaddress.ip_network((int(net.network_address) + index * size, plen))
            if str(sub) not in excepts:
                excepts.append(str(sub))
    out: dict[str, Any] = {"cidr": cidr}
    if excepts:
        out["except"] = excepts
    return out


@st.composite
def rule_st(draw: Any, peer_key: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule[peer_key] = [
            {"podSelector": draw(selector_st())} if draw(st.booleans()) else {"ipBlock": draw(block_st())}
            for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        ports = []
        for _ in range(draw(st.integers(0, 2))):
            p: dict[str, Any] = {}
            if draw(st.booleans()):
                p["protocol"] = draw(st.sampled_from([*PROTOS, "SCTP"]))
            if draw(st.booleans()):
                p["port"] = draw(st.integers(1, 8))
                if draw(st.booleans()):
                    p["endPort"] = p["port"] + draw(st.integers(0, 3))
            ports.append(p)
        rule["ports"] = ports
    return rule


@st.composite
def policy_st(draw: Any, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(selector_st())}
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(rule_st("from"), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(rule_st("to"), max_size=2))
    if draw(st.booleans()):
        spec["policyTypes"] = draw(st.lists(st.sampled_from(["Ingress", "Egress"]), min_size=1,
                                            max_size=2, unique=True))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


# --- the oracle: Kubernetes semantics, read straight off the documents ---------------------


def o_selects(sel: dict[str, Any], labels: dict[str, str] | None) -> bool:
    if labels is None:   # not a container: no podSelector matches it
        return False
    for k, v in sel.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions", []):
        op, k = e["operator"], e["key"]
        if op == "In" and not (k in labels and labels[k] in e["values"]):
            return False
        if op == "NotIn" and k in labels and labels[k] in e["values"]:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def o_types(doc: dict[str, Any]) -> list[str]:
    spec = doc["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


def o_peer(peer: dict[str, Any], labels: dict[str, str] | None, ip: str) -> bool:
    if "podSelector" in peer:
        return o_selects(peer["podSelector"], labels)
    block = peer["ipBlock"]
    addr = ipaddress.ip_address(ip)
    return addr in ipaddress.ip_network(block["cidr"]) and not any(
        addr in ipaddress.ip_network(e) for e in block.get("except", []))


def o_port(p: dict[str, Any], proto: str, port: int) -> bool:
    if p.get("protocol", "TCP") != proto:
        return False
    if "port" not in p:
        return True
    return p["port"] <= port <= p.get("endPort", p["port"])


def o_direction(docs: list[dict[str, Any]], kind: str, me: dict[str, str] | None,
                other: dict[str, str] | None, other_ip: str, proto: str, port: int) -> bool:
    if me is None:
        return True   # not a container: no policy applies to it
    selecting = [d for d in docs if kind in o_types(d) and o_selects(d["spec"]["podSelector"], me)]
    if not selecting:
        return True
    rules_key, peer_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    for d in selecting:
        for rule in d["spec"].get(rules_key) or []:
            peers = rule.get(peer_key) or []
            ports = rule.get("ports") or []
            if peers and not any(o_peer(p, other, other_ip) for p in peers):
                continue
            if ports and not any(o_port(p, proto, port) for p in ports):
                continue
            return True
    return False


def oracle(docs: list[dict[str, Any]], src: tuple[dict[str, str] | None, str],
           dst: tuple[dict[str, str] | None, str], proto: str, port: int) -> bool:
    return (o_direction(docs, "Egress", src[0], dst[0], dst[1], proto, port)
            and o_direction(docs, "Ingress", dst[0], src[0], src[1], proto, port))


# --- the tests ------------------------------------------------------------------------------


def _parse_all(docs: list[dict[str, Any]]) -> list[Any]:
    try:
        return [parse_policy(d) for d in docs]
    except PolicyError as exc:
        assume("can never match" not in str(exc))
        raise


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(data=st.data(), n_docs=st.integers(1, 4), containers=st.lists(labels_st, min_size=1, max_size=5))
def test_compiled_rulesets_agree_with_the_oracle(data: Any, n_docs: int,
                                                 containers: list[dict[str, str]]) -> None:
    docs = [data.draw(policy_st(f"p{i}")) for i in range(n_docs)]
    policies = _parse_all(docs)
    ips = [f"10.0.0.{i + 1}" for i in range(len(containers))]
    hosts = [data.draw(st.integers(0, 1)) for _ in containers]
    workloads = [Workload(f"h/{i}", labels, (ips[i],)) for i, labels in enumerate(containers)]
    rulesets = [compile_ruleset(policies, workloads, [w.key for w, h in zip(workloads, hosts, strict=True)
                                                      if h == host]) for host in (0, 1)]
    ends: list[tuple[dict[str, str] | None, str, int | None]] = [
        (labels, ips[i], hosts[i]) for i, labels in enumerate(containers)]
    ends += [(None, ip, None) for ip in EXTERNAL]
    for proto in PROTOS:
        for port in (1, 3, 5, 9):
            for src in ends:
                for dst in ends:
                    if src is dst or (src[2] is None and dst[2] is None):
                        continue
                    want = oracle(docs, (src[0], src[1]), (dst[0], dst[1]), proto, port)
                    got = all(evaluate(rulesets[h], src[1], dst[1], proto, port)
                              for h in {src[2], dst[2]} if h is not None)
                    assert got == want, (docs, src, dst, proto, port)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), seed_ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5),
                                                   st.integers(0, 3)), max_size=25))
def test_stores_converge_whatever_the_order_of_gossip(data: Any,
                                                      seed_ops: list[tuple[int, int, int]]) -> None:
    routers = [PolicyService(name, 1000.0) for name in (1, 2, 3)]
    sent: list[tuple[int, Items]] = []
    now = 1000.0
    for who, op, arg in seed_ops:
        now += 1
        r = routers[who]
        if op == 0:
            r.set_container(f"c{arg}", {"app": VALUES[arg % 3]}, [f"10.0.{who}.{arg + 1}"], now)
        elif op == 1:
            r.remove_container(f"c{arg}", now)
        elif op in (2, 3):
            doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": f"p{arg % 2}"},
                   "spec": {"podSelector": {"matchLabels": {"app": VALUES[arg % 3]}}}}
            r.apply([parse_policy(doc)], now)
        elif r.policies():
            r.delete(r.policies()[0].name, now)
        news = r.take_news()
        if news is not None:
            sent.append((who, news))
        # deliver some of what is in flight, in an order hypothesis picks
        while sent and data.draw(st.booleans()):
            src, msg = sent.pop(data.draw(st.integers(0, len(sent) - 1)))
            for i, other in enumerate(routers):
                if i != src:
                    other.gossiper.on_gossip(other.gossiper.decode(msg.encode()), now)
                    reply = other.take_news()
                    if reply is not None:
                        sent.append((i, reply))
    # then full state exchange until quiet (the mesh's periodic gossip)
    for _ in range(4):
        for i, r in enumerate(routers):
            full = r.gossiper.gossip()
            for j, other in enumerate(routers):
                if full is not None and i != j:
                    other.gossiper.on_gossip(other.gossiper.decode(full.encode()), now)
            for other in routers:
                other.take_news()
    digests = {r.store.digest() for r in routers}
    assert len(digests) == 1
    assert len({tuple(p.name for p in r.policies()) for r in routers}) == 1
    assert len({tuple(sorted(w.key for w in r.workloads())) for r in routers}) == 1


NFT = shutil.which("nft")


@pytest.fixture(scope="module")
def scratch_netns() -> Any:
    if os.geteuid() != 0 or NFT is None or shutil.which("ip") is None:
        pytest.skip("needs root, nft and ip to check rulesets in a namespace of our own")
    name = f"weftpolc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), containers=st.lists(labels_st, min_size=1, max_size=4), log=st.booleans())
def test_rendered_tables_pass_nft_check(scratch_netns: str, data: Any, containers: list[dict[str, str]],
                                        log: bool) -> None:
    docs = [data.draw(policy_st(f"p{i}.x-{i}")) for i in range(data.draw(st.integers(0, 3)))]
    policies = _parse_all(docs)
    workloads = [Workload(f"h/{i}", labels, (f"10.0.0.{i + 1}", f"fd00::{i + 1}"))
                 for i, labels in enumerate(containers)]
    text = render(compile_ruleset(policies, workloads, [w.key for w in workloads]), log_drops=log)
    proc = subprocess.run(["ip", "netns", "exec", scratch_netns, "nft", "-c", "-f", "-"], input=text,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (proc.stderr, text)
