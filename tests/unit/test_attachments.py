"""ADDR arguments of attach/detach: what is accepted, and the one-line refusals; the
resolv.conf written for attached containers; what the record keeps."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.host import netdev
from weftnet.router.host.attachments import (
    RESOLV_MARKER,
    SAVED_SUFFIX,
    Attachments,
    Record,
    named_netns,
    parse_cidrs,
    remove_resolv_conf,
    sweep_resolv_confs,
    write_resolv_conf,
)
from weftnet.router.host.datadir import DataDir


def test_addresses_with_prefix_lengths_are_taken_as_given() -> None:
    assert parse_cidrs(["10.2.1.1/24", "10.3.0.7/16"]) == [
        ipaddress.IPv4Interface("10.2.1.1/24"), ipaddress.IPv4Interface("10.3.0.7/16")]
    assert parse_cidrs(["192.168.9.0/31"]) == [ipaddress.IPv4Interface("192.168.9.0/31")]
    # IPv6 alike; a /127 has no anycast address to avoid (RFC 6164)
    assert parse_cidrs(["fd32:0:0:1::5/64", "2001:db8::/127", "10.2.1.1/24"]) == [
        ipaddress.IPv6Interface("fd32:0:0:1::5/64"), ipaddress.IPv6Interface("2001:db8::/127"),
        ipaddress.IPv4Interface("10.2.1.1/24")]


@pytest.mark.parametrize("text, words", [
    ("10.2.1.1", "prefix length"),
    ("10.2.1.0/24", "network address"),
    ("10.2.1.255/24", "broadcast address"),
    ("127.0.0.5/8", "not a usable"),
    ("224.0.0.9/24", "not a usable"),
    ("banana/24", "not an IP address"),
    ("10.2.1.1/33", "not an IP address"),
    ("net:10.2.0.0/16", "needs IPAM"),
    ("net:default", "needs IPAM"),
    ("fd32::", "prefix length"),
    ("fd32::/64", "subnet-router anycast"),
    ("fe80::5/64", "link-local"),
    ("::1/128", "not a usable"),
    ("ff02::1/64", "not a usable"),
    ("::ffff:10.2.1.1/120", "IPv4-mapped"),
    ("fd32::g/64", "not an IP address"),
    ("fd32::1/129", "not an IP address"),
    ("net:fd32::/64", "needs IPAM"),
])
def test_bad_addresses_are_refused_in_one_line(text: str, words: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_cidrs(["10.9.9.9/24", text])
    assert words in info.value.reason and "\n" not in info.value.reason
    assert info.value.reason.startswith(text)


# --- resolver config of attached containers ----------------------------------------------


def test_resolv_conf_is_written_then_removed_with_its_directory(tmp_path: Path) -> None:
    path = write_resolv_conf(tmp_path, "c1", "nameserver 127.0.0.11\nsearch weft.local\n")
    assert path == tmp_path / "c1" / "resolv.conf"
    assert path.read_text() == RESOLV_MARKER + "nameserver 127.0.0.11\nsearch weft.local\n"
    inode = path.stat().st_ino
    # rewritten in place: processes with the file bind-mounted see the new text
    write_resolv_conf(tmp_path, "c1", "nameserver 127.0.0.11\nsearch other\n")
    assert path.stat().st_ino == inode and path.read_text().endswith("search other\n")
    remove_resolv_conf(str(path))
    assert not (tmp_path / "c1").exists()


def test_someone_elses_resolv_conf_is_kept_aside_and_put_back(tmp_path: Path) -> None:
    (tmp_path / "c2").mkdir()
    theirs = tmp_path / "c2" / "resolv.conf"
    theirs.write_text("nameserver 192.0.2.53\n")
    (tmp_path / "c2" / "hosts").write_text("127.0.0.1 localhost\n")
    write_resolv_conf(tmp_path, "c2", "nameserver 127.0.0.11\n")
    assert theirs.read_text().startswith(RESOLV_MARKER)
    assert (tmp_path / "c2" / f"resolv.conf{SAVED_SUFFIX}").read_text() == "nameserver 192.0.2.53\n"
    remove_resolv_conf(str(theirs))
    assert theirs.read_text() == "nameserver 192.0.2.53\n"
    assert sorted(p.name for p in (tmp_path / "c2").iterdir()) == ["hosts", "resolv.conf"]


def test_a_file_without_our_marker_is_never_removed(tmp_path: Path) -> None:
    path = write_resolv_conf(tmp_path, "c3", "nameserver 127.0.0.11\n")
    path.write_text("nameserver 192.0.2.53\n")   # replaced by hand since
    remove_resolv_conf(str(path))
    assert path.read_text() == "nameserver 192.0.2.53\n"
    remove_resolv_conf(str(tmp_path / "gone" / "resolv.conf"))   # nothing there: no error


def test_named_namespaces_are_recognised_however_given() -> None:
    run_dir = netdev.NETNS_RUN_DIR
    assert named_netns(netdev.NetnsRef(str(run_dir / "c1"), "c1", (1, 2))) == "c1"
    assert named_netns(netdev.NetnsRef(str(run_dir / "c1"), str(run_dir / "c1"), (1, 2))) == "c1"
    assert named_netns(netdev.NetnsRef("/proc/42/ns/net", "pid:42", (1, 2))) is None
    assert named_netns(netdev.NetnsRef("/tmp/ns", "/tmp/ns", (1, 2))) is None


def test_records_keep_the_resolv_conf_they_wrote(tmp_path: Path) -> None:
    datadir = DataDir(tmp_path / "data")
    datadir.create()
    att = Attachments(datadir, mtu=1376, netns_etc=tmp_path / "etc")
    att._save({"c1": Record("c1", "02:00:00:00:00:01", ["10.2.1.1/24", "10.2.1.11/24"],
                            str(tmp_path / "etc" / "c1" / "resolv.conf")),
               "c2": Record("c2", "02:00:00:00:00:02", ["10.2.1.2/24"])})
    records = att.records()
    assert records["c1"].resolv_conf == str(tmp_path / "etc" / "c1" / "resolv.conf")
    assert records["c1"].ips == ["10.2.1.1", "10.2.1.11"]
    assert records["c2"].resolv_conf is None
    assert "resolv_conf" not in datadir.load_state()["attached"]["c2"]


def test_sweep_removes_only_our_files_of_namespaces_that_are_gone(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    run.mkdir()
    (run / "alive").touch()
    for name in ("alive", "gone1", "gone2"):
        write_resolv_conf(etc, name, "nameserver 127.0.0.11\n")
    (etc / "gone2" / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "theirs").mkdir()
    (etc / "theirs" / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    assert sweep_resolv_confs(etc, run) == ["gone1", "gone2"]
    assert sorted(p.name for p in etc.iterdir()) == ["alive", "gone2", "theirs"]
    assert [p.name for p in (etc / "gone2").iterdir()] == ["hosts"]
    assert sweep_resolv_confs(etc, run) == []
    assert sweep_resolv_confs(tmp_path / "missing", run) == []
