"""What this host's CPU offers the sleeve: which AEADs to prefer.

Theory of operation
-------------------
AES-256-GCM is about 4x cheaper per byte than ChaCha20-Poly1305 on a CPU with AES
instructions (x86 ``aes`` with ``pclmulqdq``, ARMv8 ``aes`` with ``pmull``) and much
slower, and not constant-time, without them. The router offers AES first only when its
own CPU has them; the handshake (proto/handshake.py, "Sleeve cipher negotiation") takes
AES only when both ends offer it. ``WEFT_SLEEVE_CIPHER`` (``aes-256-gcm`` or
``chacha20-poly1305``) overrides the choice of this router's offer, e.g. to compare the
two; unset or ``auto`` means: read /proc/cpuinfo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.handshake import AEAD_AES, AEAD_CHACHA, preferred_aeads

CPUINFO = "/proc/cpuinfo"
ENV = "WEFT_SLEEVE_CIPHER"


def aes_instructions(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text lists AES instructions for the first CPU (x86 "flags",
    ARM "Features": ``aes`` and the carry-less multiply GCM needs)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return "aes" in flags and bool(flags & {"pclmulqdq", "pmull"})
    return False


def choose_offer(setting: str | None, cpuinfo: str) -> tuple[str, ...]:
    """The AEADs to offer, preferred first, for a ``WEFT_SLEEVE_CIPHER`` value."""
    if setting in (None, "", "auto"):
        return preferred_aeads(aes_instructions(cpuinfo))
    if setting == AEAD_CHACHA:
        return (AEAD_CHACHA,)
    if setting == AEAD_AES:
        return (AEAD_AES, AEAD_CHACHA)
    raise LocalProtocolError(
        f"{ENV} must be auto, {AEAD_AES} or {AEAD_CHACHA}, not {setting!r}")


def local_aeads(environ: Mapping[str, str] = os.environ, path: str = CPUINFO) -> tuple[str, ...]:
    """This router's offer: ``WEFT_SLEEVE_CIPHER``, else what this CPU does well."""
    setting = environ.get(ENV)
    cpuinfo = ""
    if setting in (None, "", "auto"):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read(1 << 16)  # the first CPU's block is enough
        except OSError:
            cpuinfo = ""
    return choose_offer(setting, cpuinfo)
