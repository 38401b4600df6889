"""The testbed's wire-loss XDP program, as bytes (the kernel's verifier and the netns test
in tests/netns/test_testbed.py check it for real)."""

from __future__ import annotations

import struct

import pytest

from weftnet.router.tools import wireloss

JUMPS = {0x05, 0x15, 0x55, 0x2D, 0xA5}


def insns(percent: int) -> list[tuple[int, int, int, int]]:
    code = wireloss.program(percent)
    assert len(code) % 8 == 0
    return [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]


@pytest.mark.parametrize("percent", [0, 1, 30, 100])
def test_every_jump_lands_inside_and_every_path_ends_in_an_exit(percent: int) -> None:
    prog = insns(percent)
    for pc, (code, _regs, off, _imm) in enumerate(prog):
        if code in JUMPS:
            assert 0 <= pc + 1 + off < len(prog), (pc, off)
    assert prog[-1][0] == 0x95 and prog[-3][0] == 0x95  # exit, twice
    verdicts = {imm for code, regs, _o, imm in prog if code == 0xB7 and regs & 0xF == 0}
    assert verdicts == {wireloss.XDP_PASS, wireloss.XDP_DROP}
    assert [imm for code, *_r, imm in prog if code == 0xA5] == [percent]  # r0 % 100 < percent


def test_percent_out_of_range_is_refused() -> None:
    for bad in (-1, 101):
        with pytest.raises(ValueError, match="0..100"):
            wireloss.program(bad)


def test_bad_arguments_are_one_line_and_change_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert wireloss.main(["x", "eth0"]) == 2
    assert wireloss.main(["5"]) == 2
    assert wireloss.main(["101", "eth0"]) == 1  # refused before anything is loaded
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == ["usage: python -m weftnet.router.tools.wireloss PERCENT IFNAME..."] * 2
    assert err[2] == "wireloss: loss must be 0..100 %, not 101"
