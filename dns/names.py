"""Host names and addresses as weftDNS stores them.

Theory of operation. DNS compares names without regard to ASCII case, so the store keeps
every hostname in one canonical text form: lowercase, absolute (ending in a dot), labels
of 1..63 characters from ``a-z 0-9 - _``, at most 253 characters before the final dot.
Anything else (empty labels, dots or bytes outside that set inside a label) cannot be a
stored name, so the answering code can test a query name for membership without
escaping rules. Addresses are IPv4 (dotted quad) or IPv6 (RFC 5952 text), each in
``ipaddress``'s canonical form, so one address has one spelling; on the wire and as a sort
key they are their 4 or 16 packed bytes.

``qualify`` applies the CLI rule "a name without a dot gets the DNS domain appended";
``reverse_name`` / ``address_of_reverse`` convert between an address and its
``in-addr.arpa.`` (IPv4) or ``ip6.arpa.`` (IPv6: 32 nibble labels, least significant
first, RFC 3596) name.
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
REVERSE6_SUFFIX = (b"ip6", b"arpa")
_NIBBLE = frozenset(b"0123456789abcdef")

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


def normalize_address(text: str) -> str:
    """The canonical text of an IPv4 or IPv6 address (a zone, ``%eth0``, is refused: a
    scoped address means nothing on another host)."""
    try:
        return str(ipaddress.ip_address(text if "%" not in str(text) else "?"))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise LocalProtocolError(f"not an IP address: {str(text)[:64]!r}") from None


# Conversions of stored addresses are cached: answers, digests and gossip handle the same
# few addresses again and again (the caches are bounded, so hostile input costs only misses).

@functools.lru_cache(maxsize=4096)
def packed_address(address: str) -> bytes:
    """The 4 (IPv4) or 16 (IPv6) bytes of a stored address."""
    return ipaddress.ip_address(address).packed


def address_key(address: str) -> tuple[int, bytes]:
    """The sort key of stored addresses: IPv4 before IPv6, each in numeric order."""
    packed = packed_address(address)
    return len(packed), packed


@functools.lru_cache(maxsize=4096)
def address_of_packed(data: bytes) -> str:
    """The canonical text of 4 or 16 bytes (ValueError for any other length)."""
    if len(data) not in (4, 16):
        raise ValueError("an address is 4 or 16 bytes")
    return str(ipaddress.ip_address(data))


@functools.lru_cache(maxsize=4096)
def is_canonical_address(text: str) -> bool:
    """True when ``text`` is an IPv4 or IPv6 address in canonical form (dotted quad
    without leading zeros; RFC 5952 lowercase compressed IPv6), the only form the store
    keeps."""
    try:
        return "%" not in text and str(ipaddress.ip_address(text)) == text
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
    """``10.32.0.1`` -> ``1.0.32.10.in-addr.arpa.``; ``fd00::1`` -> ``1.0.0.0. ... .d.f.ip6.arpa.``"""
    return ipaddress.ip_address(normalize_address(address)).reverse_pointer + "."


def address_of_reverse(labels: tuple[bytes, ...]) -> str | None:
    """The address named by lowercased labels ``(d, c, b, a, b"in-addr", b"arpa")`` or
    ``(n32, ..., n1, b"ip6", b"arpa")`` (one hex nibble a label), else None.

    Only the canonical spelling counts (no leading zeros; lowercase nibbles, as labels
    arrive lowercased), so each address has one name.
    """
    if len(labels) == 34 and labels[32:] == REVERSE6_SUFFIX:
        if not all(len(label) == 1 and label[0] in _NIBBLE for label in labels[:32]):
            return None
        packed = bytes.fromhex(b"".join(reversed(labels[:32])).decode("ascii"))
        return str(ipaddress.IPv6Address(packed))
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
