"""Kubernetes ``networking.k8s.io/v1`` ``NetworkPolicy`` documents: parsed, validated,
normalised.

Accepted (everything else is refused with a one-line error naming the document and field,
``NetworkPolicy NAME: spec.ingress[0].ports[1].port: ...``)::

    apiVersion: networking.k8s.io/v1          kind: NetworkPolicy
    metadata: {name, namespace (ignored: one namespace), labels, annotations, ...}
    spec:
      podSelector: SELECTOR                    (required; {} selects every container)
      policyTypes: [Ingress, Egress]           (default: Ingress, plus Egress when the
                                                policy has egress rules)
      ingress: [ {from: [PEER...], ports: [PORT...]} ... ]
      egress:  [ {to:   [PEER...], ports: [PORT...]} ... ]
    PEER := {podSelector: SELECTOR} | {ipBlock: {cidr: CIDR, except: [CIDR...]}}
    PORT := {protocol: TCP|UDP|SCTP (default TCP), port: 1-65535, endPort: port-65535}

Refused on purpose: ``namespaceSelector`` (weftnet has one namespace), named ports
(``port: http``: containers declare no ports here), selectors that can never match,
``except`` blocks outside their ``cidr``. A missing or empty ``from``/``to`` means every
peer, missing or empty ``ports`` every port; ``ingress: []`` with type Ingress denies all.

Input text is JSON or YAML (PyYAML's ``safe_load_all``): one document, several (``---``),
a JSON array, or a ``kind: List`` with ``items``. ``NetworkPolicy.as_json`` is the
normalised document (what is gossiped and persisted; ``parse_policy`` reads it back).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from .labels import PolicyError, Selector, parse_selector

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
PROTOCOLS = ("TCP", "UDP", "SCTP")
TYPES = ("Ingress", "Egress")
MAX_NAME = 253
MAX_RULES = 256          # per direction and per list in a policy: bounds the ruleset
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_METADATA = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion",
             "generation", "creationTimestamp", "managedFields")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class IpBlock:
    cidr: Network
    excepts: tuple[Network, ...] = ()

    def contains(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return ip in self.cidr and not any(ip in e for e in self.excepts)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cidr": str(self.cidr)}
        if self.excepts:
            out["except"] = [str(e) for e in self.excepts]
        return out


@dataclass(frozen=True, slots=True)
class Peer:
    """Exactly one of ``selector`` (containers) and ``block`` (addresses)."""

    selector: Selector | None = None
    block: IpBlock | None = None

    def as_json(self) -> dict[str, Any]:
        if self.selector is not None:
            return {"podSelector": self.selector.as_json()}
        assert self.block is not None
        return {"ipBlock": self.block.as_json()}

    def describe(self) -> str:
        if self.selector is not None:
            return self.selector.describe()
        assert self.block is not None
        text = str(self.block.cidr)
        return text + "".join(f" except {e}" for e in self.block.excepts)


@dataclass(frozen=True, slots=True)
class Port:
    protocol: str = "TCP"
    port: int | None = None          # None: every port of the protocol
    end_port: int | None = None      # a range port..end_port

    def matches(self, protocol: str, port: int) -> bool:
        if protocol != self.protocol:
            return False
        if self.port is None:
            return True
        return self.port <= port <= (self.end_port or self.port)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol}
        if self.port is not None:
            out["port"] = self.port
        if self.end_port is not None:
            out["endPort"] = self.end_port
        return out

    def describe(self) -> str:
        if self.port is None:
            return self.protocol.lower()
        if self.end_port is not None and self.end_port != self.port:
            return f"{self.protocol.lower()}/{self.port}-{self.end_port}"
        return f"{self.protocol.lower()}/{self.port}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One ingress (or egress) rule: ``peers`` None means every peer, ``ports`` empty
    every port."""

    peers: tuple[Peer, ...] | None = None
    ports: tuple[Port, ...] = ()

    def as_json(self, peer_key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.peers is not None:
            out[peer_key] = [p.as_json() for p in self.peers]
        if self.ports:
            out["ports"] = [p.as_json() for p in self.ports]
        return out

    def describe(self, direction: str) -> str:
        who = "any" if self.peers is None else " | ".join(p.describe() for p in self.peers)
        ports = "all ports" if not self.ports else ",".join(p.describe() for p in self.ports)
        return f"{'from' if direction == 'Ingress' else 'to'} {who} on {ports}"


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    name: str
    selector: Selector
    types: tuple[str, ...]               # sorted subset of TYPES
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    def as_json(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"podSelector": self.selector.as_json(),
                                "policyTypes": list(self.types)}
        if self.ingress or "Ingress" in self.types:
            spec["ingress"] = [r.as_json("from") for r in self.ingress]
        if self.egress or "Egress" in self.types:
            spec["egress"] = [r.as_json("to") for r in self.egress]
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": self.name},
                "spec": spec}

    def canonical(self) -> str:
        """The normalised document as compact JSON with sorted keys (stored, gossiped)."""
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))

    def rules_line(self) -> str:
        """The rules in one line, for ``weft policy list``."""
        parts = []
        for direction, rules in (("Ingress", self.ingress), ("Egress", self.egress)):
            if direction not in self.types:
                continue
            if not rules:
                parts.append(f"{direction.lower()}: deny all")
            else:
                parts.append(f"{direction.lower()}: " + "; ".join(r.describe(direction) for r in rules))
        return "  ".join(parts)


# --- parsing ------------------------------------------------------------------------------


def _mapping(obj: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise PolicyError(where, "must be a mapping")
    for key in obj:
        if key not in allowed:
            raise PolicyError(f"{where}.{key}" if where else str(key),
                              f"unknown field (expected one of {', '.join(allowed)})")
    return obj


def _list(obj: Any, where: str) -> list[Any]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise PolicyError(where, "must be a list")
    if len(obj) > MAX_RULES:
        raise PolicyError(where, f"more than {MAX_RULES} items")
    return obj


def _network(text: Any, where: str) -> Network:
    if not isinstance(text, str):
        raise PolicyError(where, "must be a CIDR string such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise PolicyError(where, f"{text[:60]!r} is not a CIDR ({exc})") from None


def _ip_block(obj: Any, where: str) -> IpBlock:
    body = _mapping(obj, where, ("cidr", "except"))
    if "cidr" not in body:
        raise PolicyError(f"{where}.cidr", "is required")
    cidr = _network(body["cidr"], f"{where}.cidr")
    excepts = []
    for i, text in enumerate(_list(body.get("except"), f"{where}.except")):
        net = _network(text, f"{where}.except[{i}]")
        if net.version != cidr.version or not net.subnet_of(cidr):   # type: ignore[arg-type]
            raise PolicyError(f"{where}.except[{i}]", f"{net} is not inside {cidr}")
        excepts.append(net)
    ordered = sorted(set(excepts), key=lambda n: (int(n.network_address), n.prefixlen))
    return IpBlock(cidr, tuple(ordered))


def _peer(obj: Any, where: str) -> Peer:
    body = _mapping(obj, where, ("podSelector", "namespaceSelector", "ipBlock"))
    if "namespaceSelector" in body:
        raise PolicyError(f"{where}.namespaceSelector",
                          "not supported: weftnet has one namespace (use podSelector)")
    if ("podSelector" in body) == ("ipBlock" in body):
        raise PolicyError(where, "give exactly one of podSelector and ipBlock")
    if "podSelector" in body:
        return Peer(selector=parse_selector(body["podSelector"], f"{where}.podSelector"))
    return Peer(block=_ip_block(body["ipBlock"], f"{where}.ipBlock"))


def _port_number(value: Any, where: str) -> int:
    if isinstance(value, str):
        raise PolicyError(where, f"named ports ({value[:40]!r}) are not supported: give a number")
    if type(value) is not int or not 1 <= value <= 65535:
        raise PolicyError(where, f"{str(value)[:40]} is not a port number (1-65535)")
    return value


def _port(obj: Any, where: str) -> Port:
    body = _mapping(obj, where, ("protocol", "port", "endPort"))
    protocol = body.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise PolicyError(f"{where}.protocol", f"{str(protocol)[:40]!r} is not one of {', '.join(PROTOCOLS)}")
    port = None if body.get("port") is None else _port_number(body["port"], f"{where}.port")
    end = None
    if body.get("endPort") is not None:
        end = _port_number(body["endPort"], f"{where}.endPort")
        if port is None:
            raise PolicyError(f"{where}.endPort", "needs a port")
        if end < port:
            raise PolicyError(f"{where}.endPort", f"{end} is below port {port}")
    return Port(str(protocol), port, end)


def _rules(obj: Any, where: str, peer_key: str) -> tuple[Rule, ...]:
    rules = []
    for i, item in enumerate(_list(obj, where)):
        at = f"{where}[{i}]"
        body = _mapping(item, at, (peer_key, "ports"))
        peers_obj = body.get(peer_key)
        peers = None
        if peers_obj:   # missing or empty: every peer
            peers = tuple(_peer(p, f"{at}.{peer_key}[{j}]")
                          for j, p in enumerate(_list(peers_obj, f"{at}.{peer_key}")))
        ports = tuple(_port(p, f"{at}.ports[{j}]")
                      for j, p in enumerate(_list(body.get("ports"), f"{at}.ports")))
        rules.append(Rule(peers, ports))
    return tuple(rules)


def _doc_label(obj: Any, index: int, source: str) -> str:
    name = None
    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
        name = obj["metadata"].get("name")
    if isinstance(name, str) and name:
        return f"NetworkPolicy {name[:80]}"
    return f"{source} document {index + 1}"


def parse_policy(obj: Any, index: int = 0, source: str = "input") -> NetworkPolicy:
    """One document (a mapping); raises PolicyError naming the document and field."""
    doc = _doc_label(obj, index, source)
    try:
        return _parse_policy(obj)
    except PolicyError as exc:
        raise PolicyError(f"{doc}: {exc.where}" if exc.where else doc, exc.message) from None


def _parse_policy(obj: Any) -> NetworkPolicy:
    if not isinstance(obj, dict):
        raise PolicyError("", "a document must be a mapping")
    body = _mapping(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    if body.get("apiVersion") != API_VERSION:
        raise PolicyError("apiVersion", f"must be {API_VERSION} (got {str(body.get('apiVersion'))[:40]!r})")
    if body.get("kind") != KIND:
        raise PolicyError("kind", f"must be {KIND} (got {str(body.get('kind'))[:40]!r})")
    meta = _mapping(body.get("metadata"), "metadata", _METADATA)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError("metadata.name", "is required")
    if len(name) > MAX_NAME or not _DNS1123.match(name):
        raise PolicyError("metadata.name", f"{name[:80]!r} is not a DNS subdomain name "
                          "(lowercase letters, digits, '-' and '.')")
    if "spec" not in body:
        raise PolicyError("spec", "is required")
    spec = _mapping(body["spec"], "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    if "podSelector" not in spec:
        raise PolicyError("spec.podSelector", "is required ({} selects every container)")
    selector = parse_selector(spec["podSelector"], "spec.podSelector")
    ingress = _rules(spec.get("ingress"), "spec.ingress", "from")
    egress = _rules(spec.get("egress"), "spec.egress", "to")
    types_obj = spec.get("policyTypes")
    if types_obj is None:
        types = ["Ingress"] + (["Egress"] if egress else [])
    else:
        types = []
        for i, t in enumerate(_list(types_obj, "spec.policyTypes")):
            if t not in TYPES:
                raise PolicyError(f"spec.policyTypes[{i}]", f"{str(t)[:40]!r} is not Ingress or Egress")
            types.append(t)
        if not types:
            raise PolicyError("spec.policyTypes", "is empty")
    return NetworkPolicy(name, selector, tuple(sorted(set(types))), ingress, egress)


def load_text(text: str, source: str = "input") -> list[Any]:
    """The documents of JSON or YAML text (a list, a ``kind: List``, or a stream)."""
    stripped = text.strip()
    if not stripped:
        raise PolicyError(source, "holds no documents")
    docs: list[Any]
    try:
        one = json.loads(stripped)
        docs = one if isinstance(one, list) else [one]
    except ValueError:
        import yaml  # a pure parser; JSON is tried first, so JSON input never needs it

        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise PolicyError(source, f"not valid YAML or JSON{at}: {problem}") from None
    out: list[Any] = []
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            out.extend(d["items"])
        else:
            out.append(d)
    if not out:
        raise PolicyError(source, "holds no documents")
    return out


def parse_documents(text: str, source: str = "input") -> list[NetworkPolicy]:
    """Every policy in ``text``, all valid or PolicyError (so nothing is applied)."""
    policies = [parse_policy(d, i, source) for i, d in enumerate(load_text(text, source))]
    seen: set[str] = set()
    for p in policies:
        if p.name in seen:
            raise PolicyError(f"NetworkPolicy {p.name}", "appears twice in the input")
        seen.add(p.name)
    return policies


def from_canonical(text: str) -> NetworkPolicy:
    """A policy from its ``canonical()`` text; raises PolicyError."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise PolicyError("policy", "not JSON") from None
    return parse_policy(obj)
