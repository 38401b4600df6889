"""Loss on the wire for the testbed: an XDP program on a host's underlay interface that drops
a share of the UDP datagrams arriving there, each on its own, before the kernel's GRO.

Why XDP and not an nftables rule: a real host's NIC merges consecutive datagrams of a flow
(GRO) before the IP stack sees them, and a socket with ``UDP_GRO`` reads a train of them at
once; loss happens on the wire, before that. An nftables ``input`` rule runs after GRO, so
with GRO on it would drop whole trains, and with GRO off the receiver reads every datagram
alone, which no NIC makes it do. The XDP program runs on each datagram as it arrives on the
veth (whose peer then hands it datagrams one by one: the kernel turns off GSO on the peer
of a veth with XDP), and what it passes goes through GRO as on a NIC.

The program is 25 eBPF instructions written out here (no compiler needed): Ethernet,
IPv4 or IPv6 (no extension headers), protocol UDP, then ``bpf_get_prandom_u32() % 100 <
percent``: drop. Everything else passes. Loaded with ``bpf(BPF_PROG_LOAD)`` and attached with
rtnetlink (``IFLA_XDP``) by ``python -m weftnet.router.tools.wireloss PERCENT IFNAME...`` run
inside the host's namespace (the testbed's ``set_loss``); the attachment holds the program,
so the descriptor is closed at once. Standard library only, as all of router/tools/.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import socket
import struct
import sys
from collections.abc import Sequence

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_XDP = 6
HELPER_GET_PRANDOM_U32 = 7
XDP_DROP, XDP_PASS = 1, 2
_SYSCALL_BPF = {"x86_64": 321, "aarch64": 280}
_INSN = struct.Struct("<BBhi")
_ATTR = struct.Struct("<IIQQIIQII16sII")
LOG_SIZE = 65536
SIOCETHTOOL = 0x8946
ETHTOOL_SGRO = 0x2C
RTM_SETLINK = 19
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
IFLA_XDP = 43
IFLA_XDP_FD = 1
NLA_F_NESTED = 0x8000


class WireLossError(RuntimeError):
    """The program could not be loaded or attached (one line: what and why)."""


# opcodes (linux/bpf.h): class | operation | source
_LDX_W, _LDX_H, _LDX_B = 0x61, 0x69, 0x71
_MOV64_X, _MOV64_K, _ADD64_K, _MOD64_K = 0xBF, 0xB7, 0x07, 0x97
_JA, _JEQ_K, _JNE_K, _JGT_X, _JLT_K = 0x05, 0x15, 0x55, 0x2D, 0xA5
_CALL, _EXIT = 0x85, 0x95


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, dst | src << 4, off, imm)


def check_percent(percent: int) -> None:
    if not 0 <= percent <= 100:
        raise ValueError(f"loss must be 0..100 %, not {percent}")


def program(percent: int) -> bytes:
    """The instructions: drop ``percent``% of UDP datagrams (IPv4 or IPv6), pass the rest."""
    check_percent(percent)
    pass_, drop = 21, 23  # instruction indexes of the two exits
    code = [
        _insn(_LDX_W, 2, 1, 0),            # 0  r2 = ctx->data
        _insn(_LDX_W, 3, 1, 4),            # 1  r3 = ctx->data_end
        _insn(_MOV64_X, 4, 2),             # 2  r4 = r2
        _insn(_ADD64_K, 4, imm=14),        # 3  r4 += Ethernet header
        _insn(_JGT_X, 4, 3, pass_ - 5),    # 4  short: pass
        _insn(_LDX_H, 5, 2, 12),           # 5  r5 = EtherType (network order)
        _insn(_JEQ_K, 5, off=13 - 7, imm=0x0008),  # 6  IPv4
        _insn(_JNE_K, 5, off=pass_ - 8, imm=0xDD86),  # 7  not IPv6: pass
        _insn(_MOV64_X, 4, 2),             # 8  IPv6: 40-byte header
        _insn(_ADD64_K, 4, imm=54),        # 9
        _insn(_JGT_X, 4, 3, pass_ - 11),   # 10
        _insn(_LDX_B, 5, 2, 20),           # 11 r5 = next header
        _insn(_JA, off=17 - 13),           # 12
        _insn(_MOV64_X, 4, 2),             # 13 IPv4: 20-byte header at least
        _insn(_ADD64_K, 4, imm=34),        # 14
        _insn(_JGT_X, 4, 3, pass_ - 16),   # 15
        _insn(_LDX_B, 5, 2, 23),           # 16 r5 = protocol
        _insn(_JNE_K, 5, off=pass_ - 18, imm=17),  # 17 not UDP: pass
        _insn(_CALL, imm=HELPER_GET_PRANDOM_U32),  # 18 r0 = random u32
        _insn(_MOD64_K, 0, imm=100),       # 19 r0 %= 100
        _insn(_JLT_K, 0, off=drop - 21, imm=percent),  # 20
        _insn(_MOV64_K, 0, imm=XDP_PASS),  # 21
        _insn(_EXIT),                      # 22
        _insn(_MOV64_K, 0, imm=XDP_DROP),  # 23
        _insn(_EXIT),                      # 24
    ]
    return b"".join(code)


def load(percent: int) -> int:
    """The program loaded into the kernel: its file descriptor (the caller closes it)."""
    nr = _SYSCALL_BPF.get(platform.machine())
    if nr is None:
        raise WireLossError(f"no bpf(2) syscall number known for {platform.machine()}")
    insns = ctypes.create_string_buffer(program(percent))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr = ctypes.create_string_buffer(_ATTR.pack(
        BPF_PROG_TYPE_XDP, len(insns.raw) // _INSN.size, ctypes.addressof(insns),
        ctypes.addressof(license_), 1, LOG_SIZE, ctypes.addressof(log), 0, 0, b"weft_wireloss",
        0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, BPF_PROG_LOAD, attr, len(attr.raw))
    if fd < 0:
        err = ctypes.get_errno()
        detail = log.value.decode(errors="replace").strip().splitlines()
        raise WireLossError(f"cannot load the loss program: {os.strerror(err)}"
                            + (f" ({detail[-1]})" if detail else ""))
    return int(fd)


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + bytes(-size % 4)


def attach_fd(ifname: str, fd: int) -> None:
    """Attach XDP program ``fd`` to ``ifname`` in this namespace (-1: detach)."""
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        raise WireLossError(f"no interface {ifname}") from None
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + _attr(
        IFLA_XDP | NLA_F_NESTED, _attr(IFLA_XDP_FD, struct.pack("=i", fd)))
    message = struct.pack("=IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK,
                          1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.send(message)
        reply = nl.recv(65536)
    _len, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", reply)
    if kind != NLMSG_ERROR:
        raise WireLossError(f"unexpected rtnetlink reply {kind} attaching to {ifname}")
    (error,) = struct.unpack_from("=i", reply, 16)
    if error:
        raise WireLossError(f"cannot attach the loss program to {ifname}: {os.strerror(-error)}")


def set_gro(ifname: str, on: bool) -> None:
    """GRO on or off for ``ifname`` in this namespace (the ethtool ioctl)."""
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_SGRO, int(on)))
    request = struct.pack("=16sQ16x", ifname.encode(), ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
        except OSError as exc:
            raise WireLossError(f"cannot turn GRO {'on' if on else 'off'} on {ifname}: "
                                f"{exc.strerror}") from None


def set_loss(ifnames: Sequence[str], percent: int) -> None:
    """Drop ``percent``% of the UDP datagrams arriving on each of ``ifnames`` (in this
    namespace), each on its own, with GRO on behind the drop as on a NIC; 0 removes the
    program and GRO (a veth's default)."""
    check_percent(percent)
    for ifname in ifnames:
        fd = load(percent) if percent else -1
        try:
            attach_fd(ifname, fd)
        finally:
            if fd >= 0:
                os.close(fd)
        set_gro(ifname, bool(percent))


def main(argv: Sequence[str]) -> int:
    """``PERCENT IFNAME...``: what ``set_loss`` does, in this process's namespace."""
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m weftnet.router.tools.wireloss PERCENT IFNAME...", file=sys.stderr)
        return 2
    try:
        set_loss(argv[1:], int(argv[0]))
    except (ValueError, WireLossError) as exc:
        print(f"wireloss: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
