"""Host names and addresses as weftDNS stores them.

Theory of operation. DNS compares names without regard to ASCII case, so the store keeps
every hostname in one canonical text form: lowercase, absolute (ending in a dot), labels
of 1..63 characters from ``a-z 0-9 - _``, at most 253 characters before the final dot.
Anything else (empty labels, dots or bytes outside that set inside a label) cannot be a
stored name, so the answering code can test a query name for membership without
escaping rules. Addresses are IPv4 in dotted-quad text (``ipaddress``'s canonical form).

``qualify`` applies the CLI rule "a name without a dot gets the DNS domain appended";
``reverse_name`` / ``address_of_reverse`` convert between an address and its
``in-addr.arpa.`` name.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from weftnet.proto.errors import LocalProtocolError

DEFAULT_DOMAIN = "weft.local."
MAX_NAME = 253           # characters before the final dot (RFC 1035's 255 octets on the wire)
MAX_LABEL = 63
REVERSE_SUFFIX = (b"in-addr", b"arpa")

_LABEL = re.compile(r"[a-z0-9_-]{1,63}\Z")
_LABEL_BYTES = re.compile(rb"[a-z0-9_-]{1,63}\Z")


def hostname_problem(name: object) -> str | None:
    """Why ``name`` is not a canonical hostname (None when it is one)."""
    if not isinstance(name, str) or not name.endswith(".") or len(name) > MAX_NAME + 1:
        return "hostname must be an absolute name of at most 253 characters"
    labels = name[:-1].split(".")
    if name == "." or not all(_LABEL.match(label) for label in labels):
        return f"bad hostname {name[:80]!r}: labels are 1..63 of a-z 0-9 - _"
    return None


def normalize_hostname(text: str) -> str:
    """The canonical form of a user-given name (``C1.Weft.Local`` -> ``c1.weft.local.``)."""
    if not isinstance(text, str):
        raise LocalProtocolError("hostname must be a string")
    name = text.strip().lower()
    if not name.endswith("."):
        name += "."
    reason = hostname_problem(name)
    if reason is not None:
        raise LocalProtocolError(reason)
    return name


def normalize_domain(text: str) -> str:
    return normalize_hostname(text)


def qualify(text: str, domain: str = DEFAULT_DOMAIN) -> str:
    """A name without a dot gets ``domain`` appended; anything else is taken as absolute."""
    text = text.strip()
    if "." not in text:
        text = f"{text}.{normalize_domain(domain)}"
    return normalize_hostname(text)


def normalize_ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise LocalProtocolError(f"not an IPv4 address: {str(text)[:64]!r}") from None


# Conversions of stored addresses are cached: answers, digests and gossip handle the same
# few addresses again and again (the caches are bounded, so hostile input costs only misses).

@functools.lru_cache(maxsize=4096)
def packed_ipv4(address: str) -> bytes:
    """The 4 bytes of a stored (dotted-quad) address; also its sort key."""
    return ipaddress.IPv4Address(address).packed


@functools.lru_cache(maxsize=4096)
def ipv4_of_packed(data: bytes) -> str:
    """The dotted quad of 4 bytes (ValueError for any other length)."""
    return str(ipaddress.IPv4Address(data))


@functools.lru_cache(maxsize=4096)
def is_canonical_ipv4(text: str) -> bool:
    """True when ``text`` is an IPv4 address in canonical dotted-quad form (no leading
    zeros, no spaces), the only form the store keeps."""
    try:
        return str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        return False


def labels_of(name: str) -> tuple[bytes, ...]:
    """``"c1.weft.local."`` -> ``(b"c1", b"weft", b"local")`` (canonical names only)."""
    return tuple(label.encode("ascii") for label in name[:-1].split("."))


def name_of_labels(labels: tuple[bytes, ...]) -> str | None:
    """The canonical text of lowercased wire labels, or None if no stored name can match."""
    if not labels or not all(_LABEL_BYTES.match(label) for label in labels):
        return None
    name = (b".".join(labels)).decode("ascii") + "."
    return name if len(name) <= MAX_NAME + 1 else None


def reverse_name(address: str) -> str:
    """``10.32.0.1`` -> ``1.0.32.10.in-addr.arpa.``"""
    return ".".join(reversed(normalize_ipv4(address).split("."))) + ".in-addr.arpa."


def address_of_reverse(labels: tuple[bytes, ...]) -> str | None:
    """The address named by lowercased labels ``(d, c, b, a, b"in-addr", b"arpa")``, else None.

    Only the canonical spelling counts (no leading zeros), so each address has one name.
    """
    if len(labels) != 6 or labels[4:] != REVERSE_SUFFIX:
        return None
    octets = []
    for label in reversed(labels[:4]):
        if not label.isdigit() or len(label) > 3 or (len(label) > 1 and label[0] == 0x30):
            return None
        value = int(label)
        if value > 255:
            return None
        octets.append(str(value))
    return ".".join(octets)
