"""Sleeve cipher negotiation (issue 20): AES-256-GCM when both ends offer it, ChaCha20 else.

The handshake part runs the real machines back to back (proto/handshake.py); the man in
the middle edits the hellos in flight and must make the handshake fail, never settle on
a weaker cipher. The sleeve part checks both AEADs seal, open and ratchet.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import pytest

from tests.pairs import ALPHA, BETA, PEER_SEED, established_pair, sleeve_pair
from weftnet.proto import sleeve
from weftnet.proto.connection import RekeyCompleted
from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.framing import pack
from weftnet.proto.handshake import (
    AEAD_AES,
    AEAD_CHACHA,
    DEFAULT_AEADS,
    NO_COMMON_AEAD,
    WRONG_PASSWORD,
    Handshake,
    HandshakeStep,
    SessionKeys,
    choose_aead,
    decode_hello,
    preferred_aeads,
    sleeve_labels,
)
from weftnet.proto.mesh import MeshConfig, MeshNode
from weftnet.proto.sleeve import Kind, SleeveDrop, SleeveSession
from weftnet.proto.sleeve_rotation import SessionRotation
from weftnet.router.api.render import render_status
from weftnet.router.host.cpu import aes_instructions, choose_offer, local_aeads

AES_BOTH = preferred_aeads(True)
CHACHA_ONLY = preferred_aeads(False)
Tamper = Callable[[int, bytes], bytes]  # (sender index, frame body) -> what arrives


def _pair(aeads_a: Sequence[str], aeads_b: Sequence[str], *, seed: int = 1,
          passwords: tuple[bytes, ...] = (b"pw",)) -> tuple[Handshake, Handshake]:
    return (Handshake(outbound=True, local=ALPHA, passwords=passwords, aeads=aeads_a,
                      random_bytes=random.Random(seed).randbytes),
            Handshake(outbound=False, local=BETA, passwords=passwords, aeads=aeads_b,
                      random_bytes=random.Random(seed + PEER_SEED).randbytes))


def _run(a: Handshake, b: Handshake, tamper: Tamper | None = None
         ) -> tuple[str | None, str | None]:
    """Exchange every frame (through ``tamper``); each side's failure reason or None."""
    errors: list[str | None] = [None, None]
    queues = [[a.hello_body], [b.hello_body]]
    sides = [a, b]
    while queues[0] or queues[1]:
        for me in (0, 1):
            other = 1 - me
            while queues[me]:
                body = queues[me].pop(0)
                if tamper is not None:
                    body = tamper(me, body)
                if errors[other] is not None or sides[other].step is HandshakeStep.NOTHING:
                    continue
                try:
                    queues[other].extend(sides[other].receive_frame(body))
                except RemoteProtocolError as exc:
                    errors[other] = exc.reason
    return errors[0], errors[1]


def _agreed(a: Handshake, b: Handshake) -> str:
    assert a.result and b.result and a.result.keys and b.result.keys
    ka, kb = a.result.keys.sleeve, b.result.keys.sleeve
    assert ka.aead == kb.aead
    assert ka.sleeve_send == kb.sleeve_recv and ka.sleeve_recv == kb.sleeve_send
    return ka.aead


# ------------------------------------------------------------------ negotiation

@pytest.mark.parametrize(("ours", "theirs", "expected"), [
    (AES_BOTH, AES_BOTH, AEAD_AES),
    (AES_BOTH, CHACHA_ONLY, AEAD_CHACHA),
    (CHACHA_ONLY, AES_BOTH, AEAD_CHACHA),
    (CHACHA_ONLY, CHACHA_ONLY, AEAD_CHACHA),
])
def test_both_ends_agree_on_aes_only_when_both_offer_it(
        ours: tuple[str, ...], theirs: tuple[str, ...], expected: str) -> None:
    a, b = _pair(ours, theirs)
    assert _run(a, b) == (None, None)
    assert _agreed(a, b) == expected


def test_aes_with_several_passwords() -> None:
    a, b = _pair(AES_BOTH, AES_BOTH, passwords=(b"new", b"old"))
    assert _run(a, b) == (None, None)
    assert _agreed(a, b) == AEAD_AES


def test_the_initiators_preference_wins() -> None:
    assert choose_aead([AEAD_AES, AEAD_CHACHA], [AEAD_CHACHA, AEAD_AES]) == AEAD_AES
    assert choose_aead([AEAD_CHACHA, AEAD_AES], [AEAD_AES, AEAD_CHACHA]) == AEAD_CHACHA
    # names we do not know are skipped, whoever offers them
    assert choose_aead(["future-aead", AEAD_CHACHA], ["future-aead", AEAD_CHACHA]) == AEAD_CHACHA
    with pytest.raises(RemoteProtocolError, match=NO_COMMON_AEAD):
        choose_aead([AEAD_AES], [AEAD_CHACHA])


def test_no_common_cipher_fails_both_ends_alike() -> None:
    a, b = _pair((AEAD_AES,), (AEAD_CHACHA,))
    assert _run(a, b) == (NO_COMMON_AEAD, NO_COMMON_AEAD)
    assert a.result is None and b.result is None


def test_an_older_peer_without_the_key_gets_chacha_and_the_old_key_schedule() -> None:
    old_a, old_b = _pair(DEFAULT_AEADS, DEFAULT_AEADS)
    assert "aead" not in msgpack.unpackb(old_a.hello_body)  # what older versions send
    assert _run(old_a, old_b) == (None, None)
    new_a, new_b = _pair(AES_BOTH, DEFAULT_AEADS)
    assert _run(new_a, new_b) == (None, None)
    assert _agreed(new_a, new_b) == AEAD_CHACHA
    # ChaCha20's sleeve keys come from the labels older versions use
    assert sleeve_labels(AEAD_CHACHA) == (b"weft v1 sleeve i>r", b"weft v1 sleeve r>i")
    assert sleeve_labels(AEAD_AES)[0] != sleeve_labels(AEAD_CHACHA)[0]


def _strip_aes(hello_body: bytes) -> bytes:
    doc = msgpack.unpackb(hello_body)
    doc.pop("aead", None)  # looks like an older peer: ChaCha20 only
    return pack(doc)


@pytest.mark.parametrize("victims", [(0,), (1,), (0, 1)])
def test_a_man_in_the_middle_cannot_downgrade_to_chacha(victims: tuple[int, ...]) -> None:
    def tamper(sender: int, body: bytes) -> bytes:
        if sender in victims and "nonce" in msgpack.unpackb(body):  # a hello
            return _strip_aes(body)
        return body

    a, b = _pair(AES_BOTH, AES_BOTH)
    assert _run(a, b, tamper) == (WRONG_PASSWORD, WRONG_PASSWORD)
    assert a.result is None and b.result is None


def test_a_man_in_the_middle_cannot_upgrade_either() -> None:
    def tamper(sender: int, body: bytes) -> bytes:
        doc = msgpack.unpackb(body)
        if sender == 1 and "nonce" in doc:
            doc["aead"] = list(AES_BOTH)
            return pack(doc)
        return body

    a, b = _pair(AES_BOTH, CHACHA_ONLY)
    assert _run(a, b, tamper) == (WRONG_PASSWORD, WRONG_PASSWORD)


@pytest.mark.parametrize("aead", [
    "aes", [], [1], [b"aes-256-gcm"], ["x" * 33], [""], ["a"] * 9, None,
])
def test_malformed_aead_lists(aead: Any) -> None:
    a, _ = _pair(AES_BOTH, AES_BOTH)
    doc = msgpack.unpackb(a.hello_body)
    doc["aead"] = aead
    if aead is None:  # the key without a password
        doc = {k: v for k, v in doc.items() if k not in ("spake", "x25519")}
        doc["pw"], doc["aead"] = False, [AEAD_AES]
    with pytest.raises(RemoteProtocolError, match="^malformed handshake: "):
        decode_hello(pack(doc))


def test_unknown_names_in_a_hello_are_carried() -> None:
    a, _ = _pair(AES_BOTH, AES_BOTH)
    doc = msgpack.unpackb(a.hello_body)
    doc["aead"] = ["future-aead", AEAD_CHACHA]
    assert decode_hello(pack(doc)).aeads == ("future-aead", AEAD_CHACHA)


@pytest.mark.parametrize("aeads", [(), ("future-aead",), (AEAD_AES, AEAD_AES), ["x"] * 9])
def test_local_offer_is_checked(aeads: Sequence[str]) -> None:
    with pytest.raises(LocalProtocolError):
        _pair(aeads, AES_BOTH)


def test_without_a_password_nothing_is_offered() -> None:
    a = Handshake(outbound=True, local=ALPHA, aeads=AES_BOTH, random_bytes=random.Random(1).randbytes)
    assert "aead" not in msgpack.unpackb(a.hello_body)


def test_connections_keep_the_cipher_across_a_rekey() -> None:
    pair = established_pair(b"pw", aeads=AES_BOTH)
    pair.a.rekey((b"pw2", b"pw"), 1.0)
    pair.pump(1.0)
    ea, eb = pair.events()
    done = [e for e in ea + eb if isinstance(e, RekeyCompleted)]
    assert len(done) == 2 and all(e.sleeve_keys.aead == AEAD_AES for e in done)


def test_the_mesh_offers_its_configured_ciphers() -> None:
    node = MeshNode(MeshConfig(name=ALPHA.name, nickname="a", uid=1, password=b"pw",
                               aeads=AES_BOTH),
                    now=0.0, random_bytes=random.Random(1).randbytes, rng=random.Random(1))
    node.connection_made(1, outbound=True, remote_address="10.0.0.2:6783", target=None, now=0.0)
    assert AEAD_AES in msgpack.unpackb(node.data_to_send(1, 0.0)[4:]).get("aead", [])


# ------------------------------------------------------------------ the sleeve

@pytest.mark.parametrize("aead", [AEAD_AES, AEAD_CHACHA])
def test_sleeve_seals_opens_and_ratchets_with_either_aead(aead: str) -> None:
    a, b = sleeve_pair(aead=aead, rekey_after=3)
    assert a.cipher == b.cipher == aead
    for i in range(10):  # crosses three epochs
        body = bytes([i]) * 1000
        assert b.open(a.seal(Kind.DATA, body, float(i)), float(i)) == (Kind.DATA, body)
    assert b.stats.rekeys_recv == 3


def test_the_two_aeads_do_not_open_each_others_datagrams() -> None:
    aes, _ = sleeve_pair(aead=AEAD_AES)
    _, chacha = sleeve_pair(aead=AEAD_CHACHA)
    with pytest.raises(SleeveDrop, match="authentication"):
        chacha.open(aes.seal(Kind.DATA, b"x" * 100, 0.0), 0.0)


def test_a_plain_session_has_no_cipher_and_unknown_ones_are_refused() -> None:
    a, _ = sleeve_pair(False, aead=AEAD_AES)
    assert a.cipher is None
    with pytest.raises(LocalProtocolError):
        SleeveSession(conn_uid=1, send_key=None, recv_key=None, now=0.0, aead="rot13")


def test_a_key_is_rotated_after_rekey_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sleeve, "REKEY_BYTES", 2500)
    a, b = sleeve_pair(aead=AEAD_AES)
    for _ in range(4):
        b.open(a.seal(Kind.DATA, bytes(1000), 0.0), 0.0)
    assert a.epoch_send == 1 and b.epoch_recv == 1  # 3000 bytes sealed, then rotated


def test_rotation_keeps_the_agreed_aead() -> None:
    a, _ = sleeve_pair()
    rotation = SessionRotation(a)
    keys = SessionKeys(bytes(32), bytes(range(32)), aead=AEAD_AES)
    assert rotation.agreed(7, keys, 0.0).cipher == AEAD_AES


# ------------------------------------------------------------------ host and status

CPUINFO_X86 = "processor\t: 0\nflags\t\t: fpu sse2 pclmulqdq ssse3 aes avx\n\nprocessor\t: 1\n"
CPUINFO_ARM = "processor\t: 0\nFeatures\t: fp asimd aes pmull sha1 sha2 crc32\n"
CPUINFO_OLD = "processor\t: 0\nflags\t\t: fpu sse2 ssse3\n"


def test_aes_instructions_from_cpuinfo() -> None:
    assert aes_instructions(CPUINFO_X86) and aes_instructions(CPUINFO_ARM)
    assert not aes_instructions(CPUINFO_OLD) and not aes_instructions("")
    assert not aes_instructions("flags\t: aes sse2\n")  # GCM needs carry-less multiply too


def test_offer_follows_the_cpu_unless_the_environment_says() -> None:
    assert choose_offer(None, CPUINFO_X86) == AES_BOTH
    assert choose_offer("auto", CPUINFO_OLD) == CHACHA_ONLY
    assert choose_offer(AEAD_CHACHA, CPUINFO_X86) == CHACHA_ONLY
    assert choose_offer(AEAD_AES, CPUINFO_OLD) == AES_BOTH
    with pytest.raises(LocalProtocolError):
        choose_offer("aes", CPUINFO_X86)


def test_local_offer_reads_the_file(tmp_path: Any) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO_ARM)
    assert local_aeads({}, str(path)) == AES_BOTH
    assert local_aeads({}, str(tmp_path / "missing")) == CHACHA_ONLY
    assert local_aeads({"WEFT_SLEEVE_CIPHER": AEAD_CHACHA}, str(path)) == CHACHA_ONLY


def test_status_connections_shows_the_cipher_of_encrypted_data() -> None:
    def conn(address: str, **kw: Any) -> dict[str, Any]:
        c: dict[str, Any] = {"address": address, "outbound": True, "state": "established",
                             "info": "", "peer": {"name": "02:00:00:00:00:02", "nickname": "h2"},
                             "encrypted": True, "overlay": "sleeve", "overlay_reason": "",
                             "mtu": 1376}
        c.update(kw)
        return c
    report = {"router": {"connections": [
        conn("10.0.0.2:6783", sleeve={"encrypted_data": True, "cipher": AEAD_AES}),
        conn("10.0.0.3:6783", sleeve={"encrypted_data": False, "cipher": None}),
    ]}}
    lines = render_status(report, "connections").splitlines()
    assert lines[0].endswith("encrypted   cipher=aes-256-gcm mtu=1376")
    assert "cipher" not in lines[1]
