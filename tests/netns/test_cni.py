"""The CNI plugin ``weft-net`` called exactly as a container runtime calls it: CNI_* in the
environment, the network configuration on stdin, the result (or an error object) read from
stdout, inside a host of the testbed whose router it talks to::

    h1 (router) ── h2 (router)      h3: no router
      pod1 eth0      pod2 eth0        (pods: bare namespaces made with `ip netns add`)

Both routers run with ``--ipalloc-init consensus=2``: the first ADD seeds the ring. Waits
are bounded liveness checks only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import established, launch, logs_on_failure, report, wait_for

HOSTS = ("h1", "h2", "h3")
RANGE = ipaddress.IPv4Network("10.32.0.0/12")
INIT = ("--ipalloc-init", "consensus=2")
CONF: dict[str, Any] = {"cniVersion": "1.0.0", "name": "weft", "type": "weft-net"}


@dataclass
class Answer:
    status: int
    out: dict[str, Any] | None
    stderr: str


def cni(tb: Testbed, host: str, command: str, conf: dict[str, Any] | None = None, *,
        netns: str = "", ifname: str = "eth0", args: str = "IgnoreUnknown=1",
        env: dict[str, str] | None = None) -> Answer:
    """Run the plugin in ``host`` as a runtime does; the container id is derived from the
    namespace, as a runtime's is stable per container."""
    environ: dict[str, str | None] = {
        "CNI_COMMAND": command, "CNI_CONTAINERID": f"id-{netns.rsplit('/', 1)[-1] or 'x'}",
        "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": "/opt/cni/bin",
        "WEFT_HTTP_ADDR": None, **(env or {})}
    proc = tb.run(host, [sys.executable, "-m", "weftnet.router.programs.cni"], env=environ,
                  input=json.dumps(CONF if conf is None else conf), check=False, timeout=150)
    assert "Traceback" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    if proc.returncode == 0 and command in ("DEL", "CHECK", "STATUS", "GC"):
        assert out is None, proc.stdout  # success is silent
    if proc.returncode != 0:
        assert isinstance(out, dict) and set(out) >= {"cniVersion", "code", "msg"}, proc.stdout
    return Answer(proc.returncode, out, proc.stderr)


def pod(tb: Testbed, name: str) -> str:
    """A bare namespace (what a runtime makes before ADD); its path under /var/run/netns."""
    return f"/var/run/netns/{tb.add_container(name)}"


def link(tb: Testbed, container: str, ifname: str = "eth0") -> dict[str, Any] | None:
    proc = tb.run(container, ["ip", "-j", "addr", "show", "dev", ifname], check=False)
    data = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []
    return data[0] if data else None


def allocated(tb: Testbed, host: str) -> int:
    return int(report(tb, host)["ipam"]["allocated"])


def dns_names(tb: Testbed, host: str) -> set[tuple[str, str]]:
    return {(e["hostname"], e["address"]) for e in report(tb, host)["dns"]["entries"]}


def getent(tb: Testbed, container: str, name: str) -> list[str]:
    proc = tb.run(container, ["getent", "ahostsv4", name], check=False)
    return sorted({line.split()[0] for line in proc.stdout.splitlines()})


@pytest.fixture(scope="module")
def mesh() -> Iterator[Testbed]:
    with Testbed(hosts=HOSTS) as tb:
        with logs_on_failure(tb, ("h1", "h2")):
            launch(tb, "h1", extra=INIT)
            launch(tb, "h2", tb.address("h1"), extra=INIT)
            wait_for("h1 and h2 connected", lambda: established(report(tb, "h1")) == {"h2"})
        yield tb


def check_result(res: dict[str, Any], netns: str, version: str = "1.0.0") -> ipaddress.IPv4Interface:
    assert res["cniVersion"] == version
    assert res["interfaces"] == [{"name": "eth0", "mac": res["interfaces"][0]["mac"], "sandbox": netns}]
    assert len(res["ips"]) == 1 and res["ips"][0]["interface"] == 0
    assert res["dns"] == {"nameservers": ["127.0.0.11"], "domain": "weft.local",
                          "search": ["weft.local"]}
    return ipaddress.IPv4Interface(res["ips"][0]["address"])


def test_add_on_two_hosts_ping_resolve_check_and_del_twice(mesh: Testbed) -> None:
    tb = mesh
    ns1, ns2 = pod(tb, "pod1"), pod(tb, "pod2")
    a1 = cni(tb, "h1", "ADD", netns=ns1, args="IgnoreUnknown=1;K8S_POD_NAME=pod1")
    a2 = cni(tb, "h2", "ADD", netns=ns2, args="IgnoreUnknown=1;K8S_POD_NAME=pod2")
    assert a1.status == 0 and a2.status == 0, (a1, a2)
    assert a1.out is not None and a2.out is not None
    ip1, ip2 = check_result(a1.out, ns1), check_result(a2.out, ns2)
    assert ip1.network == RANGE and ip2.network == RANGE and ip1.ip != ip2.ip
    # what the result says is what the namespace has
    eth0 = link(tb, "pod1")
    assert eth0 is not None and eth0["address"] == a1.out["interfaces"][0]["mac"]
    assert f"{eth0['addr_info'][0]['local']}/{eth0['addr_info'][0]['prefixlen']}" == str(ip1)
    assert "UP" in eth0["flags"]
    # the pods reach each other over the mesh, and find each other by name
    wait_for("pod1 -> pod2", lambda: tb.ping("pod1", str(ip2.ip), timeout=2))
    assert tb.ping("pod2", str(ip1.ip), timeout=2)
    wait_for("pod2's name on h1", lambda: ("pod2.weft.local.", str(ip2.ip)) in dns_names(tb, "h1"))
    assert getent(tb, "pod1", "pod2") == [str(ip2.ip)]

    # ADD again (a runtime retrying) gives the same address
    again = cni(tb, "h1", "ADD", netns=ns1, args="IgnoreUnknown=1;K8S_POD_NAME=pod1")
    assert again.status == 0 and again.out == a1.out

    # CHECK passes; an address taken away by hand is found missing
    conf = {**CONF, "prevResult": a1.out}
    assert cni(tb, "h1", "CHECK", conf, netns=ns1).status == 0
    tb.run("pod1", ["ip", "addr", "del", str(ip1), "dev", "eth0"])
    bad = cni(tb, "h1", "CHECK", conf, netns=ns1)
    assert bad.status == 1 and bad.out is not None and bad.out["code"] == 999
    assert f"lacks address {ip1}" in bad.out["msg"]
    assert cni(tb, "h1", "ADD", netns=ns1, args="K8S_POD_NAME=pod1").status == 0  # repairs
    assert cni(tb, "h1", "CHECK", conf, netns=ns1).status == 0

    # DEL frees the address and the name; twice is fine
    used = allocated(tb, "h1")
    for _ in range(2):
        d = cni(tb, "h1", "DEL", conf, netns=ns1)
        assert d.status == 0, d
    assert link(tb, "pod1") is None
    assert ns1 not in tb.weft("h1", "ps").stdout
    assert allocated(tb, "h1") == used - 1
    wait_for("pod1's name gone on h2",
             lambda: all(name != "pod1.weft.local." for name, _ in dns_names(tb, "h2")))
    gone = cni(tb, "h1", "CHECK", conf, netns=ns1)
    assert gone.status == 1 and gone.out is not None and "no record" in gone.out["msg"]

    # a namespace that does not exist: ADD is a CNI error, DEL is success
    missing = f"/var/run/netns/{tb.prefix}-nothere"
    err = cni(tb, "h1", "ADD", netns=missing)
    assert err.status == 1 and err.out is not None
    assert err.out["code"] == 3 and missing in err.out["msg"]
    assert cni(tb, "h1", "DEL", netns=missing).status == 0

    assert cni(tb, "h2", "DEL", netns=ns2).status == 0


def test_subnet_addresses_and_0_4_0_results(mesh: Testbed) -> None:
    tb = mesh
    ns = pod(tb, "pod3")
    conf = {**CONF, "cniVersion": "0.4.0", "ipam": {"subnet": "10.32.8.0/24"}}
    a = cni(tb, "h2", "ADD", conf, netns=ns)   # no name: no DNS record
    assert a.status == 0 and a.out is not None, a
    ip = check_result(a.out, ns, "0.4.0")
    assert ip.network == ipaddress.IPv4Network("10.32.8.0/24")
    assert a.out["ips"][0]["version"] == "4"
    assert all(e[1] != str(ip.ip) for e in dns_names(tb, "h2"))
    assert cni(tb, "h2", "DEL", conf, netns=ns).status == 0

    # explicit addresses (a bare IP takes the length of ipam.subnet)
    conf = {**CONF, "ipam": {"subnet": "10.32.9.0/24", "addresses": ["10.32.9.7"]}}
    a = cni(tb, "h2", "ADD", conf, netns=ns)
    assert a.status == 0 and a.out is not None, a
    assert a.out["ips"][0]["address"] == "10.32.9.7/24"
    assert cni(tb, "h2", "DEL", conf, netns=ns).status == 0

    # another IPAM plugin is refused with the spec's code for an unsupported field
    a = cni(tb, "h2", "ADD", {**CONF, "ipam": {"type": "host-local"}}, netns=ns)
    assert a.status == 1 and a.out is not None and a.out["code"] == 2
    assert "ipam.type=host-local" in a.out["msg"]


def test_gateway_when_the_host_is_on_the_network(mesh: Testbed) -> None:
    """An address of the bridge inside the pod's subnet (what `weft expose` gives the host)
    becomes the pod's gateway with a default route through it."""
    tb = mesh
    tb.run("h1", ["ip", "addr", "add", "10.99.0.1/24", "dev", "weft"])
    try:
        ns = pod(tb, "pod4")
        conf = {**CONF, "ipam": {"addresses": ["10.99.0.5/24"]}}
        a = cni(tb, "h1", "ADD", conf, netns=ns)
        assert a.status == 0 and a.out is not None, a
        assert a.out["ips"][0] == {"address": "10.99.0.5/24", "interface": 0, "gateway": "10.99.0.1"}
        assert a.out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}]
        routes = json.loads(tb.run("pod4", ["ip", "-j", "route", "show", "default"]).stdout)
        assert [(r["gateway"], r["dev"]) for r in routes] == [("10.99.0.1", "eth0")]
        assert tb.ping("pod4", "10.99.0.1", timeout=2)
        assert cni(tb, "h1", "CHECK", {**conf, "prevResult": a.out}, netns=ns).status == 0
        tb.run("pod4", ["ip", "route", "del", "default"])
        bad = cni(tb, "h1", "CHECK", {**conf, "prevResult": a.out}, netns=ns)
        assert bad.status == 1 and bad.out is not None and "lacks the route" in bad.out["msg"]
        assert cni(tb, "h1", "DEL", conf, netns=ns).status == 0
    finally:
        tb.run("h1", ["ip", "addr", "del", "10.99.0.1/24", "dev", "weft"], check=False)


def test_del_after_the_namespace_vanished_frees_the_address(mesh: Testbed) -> None:
    tb = mesh
    ns = pod(tb, "pod5")
    before = allocated(tb, "h2")
    a = cni(tb, "h2", "ADD", netns=ns, args="K8S_POD_NAME=pod5")
    assert a.status == 0 and a.out is not None, a
    assert allocated(tb, "h2") == before + 1
    tb.remove_container("pod5")
    # the runtime may no longer know the path: DEL finds it in prevResult
    d = cni(tb, "h2", "DEL", {**CONF, "prevResult": a.out}, netns="")
    assert d.status == 0, d
    wait_for("pod5's address freed", lambda: allocated(tb, "h2") == before)
    assert all(name != "pod5.weft.local." for name, _ in dns_names(tb, "h2"))


def test_no_router_is_a_clear_cni_error(mesh: Testbed) -> None:
    tb = mesh
    ns = pod(tb, "pod6")
    env = {"WEFT_CNI_TIMEOUT": "1"}
    a = cni(tb, "h3", "ADD", netns=ns, env=env)
    assert a.status == 1 and a.out is not None
    assert a.out["code"] == 11
    assert a.out["msg"] == ("no weft router answers on 127.0.0.1:6784 (waited 1 s): "
                            "start it with `weft launch`")
    assert "nothing answers" in a.out["details"]
    s = cni(tb, "h3", "STATUS", {**CONF, "cniVersion": "1.1.0"}, env=env)
    assert s.status == 1 and s.out is not None and s.out["code"] == 50
    assert s.out["cniVersion"] == "1.1.0"
    # DEL cannot free what may be held: try again later; a vanished namespace is success
    d = cni(tb, "h3", "DEL", netns=ns, env=env)
    assert d.status == 1 and d.out is not None and d.out["code"] == 11
    assert cni(tb, "h3", "DEL", netns=f"/var/run/netns/{tb.prefix}-nothere", env=env).status == 0
    # STATUS with a router up: success, silently
    assert cni(tb, "h1", "STATUS", {**CONF, "cniVersion": "1.1.0"}).status == 0



def test_a_restarted_router_puts_back_the_interface_by_its_name(mesh: Testbed) -> None:
    tb = mesh
    ns = pod(tb, "pod7")
    a = cni(tb, "h1", "ADD", netns=ns)
    assert a.status == 0 and a.out is not None, a
    tb.weft("h1", "stop")
    tb.run("pod7", ["ip", "link", "del", "eth0"])   # lost while the router was away
    launch(tb, "h1", extra=INIT)
    wait_for("h1 and h2 connected again", lambda: established(report(tb, "h1")) == {"h2"})
    eth0 = link(tb, "pod7")
    assert eth0 is not None and eth0["address"] == a.out["interfaces"][0]["mac"]
    assert cni(tb, "h1", "CHECK", {**CONF, "prevResult": a.out}, netns=ns).status == 0
    assert cni(tb, "h1", "DEL", netns=ns).status == 0 and link(tb, "pod7") is None

# --- a real runtime: podman (CNI backend) with runc --------------------------------------------
#
# Everything podman keeps goes to a private directory (storage root, run root, libpod tmp
# dir, containers.conf, the conflist, the plugin dir holding a `weft-net` wrapper); only
# libcni's result cache (/var/lib/cni) and the image blob-info cache (/var/lib/containers)
# live outside: directories that did not exist before are removed afterwards, else only
# the cache entries of our network. Podman runs in a host's network namespace (nsenter
# --net: `ip netns exec` would hide the cgroup mounts runc needs), so the plugin it
# executes talks to that host's router.

PODMAN_WHY = ("podman with runc is not installed (apt-get install podman runc "
              "containernetworking-plugins busybox-static)")
CNI_CACHE = Path("/var/lib/cni")
# what podman makes outside its private dirs (libcni's result cache, the image blob-info cache)
STATE_DIRS = (CNI_CACHE, Path("/var/lib/containers"))


def _podman_missing() -> bool:
    return any(shutil.which(tool) is None for tool in ("podman", "runc", "nsenter")) or \
        _busybox() is None


def _busybox() -> str | None:
    """A static busybox (the image has no libc): its head names no program interpreter."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        try:
            head = Path(path).read_bytes()[:4096]
        except OSError:
            continue
        if head.startswith(b"\x7fELF") and b"ld-linux" not in head:
            return path
    return None


@dataclass
class Podman:
    tb: Testbed
    root: Path
    network: str

    def __call__(self, host: str, *args: str, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = ["nsenter", f"--net=/var/run/netns/{self.tb.ns(host)}", "podman",
                "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                "--storage-driver", "vfs", *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf")}
        env.pop("WEFT_HTTP_ADDR", None)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} on {host} failed "
                                 f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def podman(mesh: Testbed) -> Iterator[Podman]:
    if _podman_missing():
        pytest.skip(PODMAN_WHY)
    root = Path(tempfile.mkdtemp(prefix="wpm-", dir="/tmp"))  # podman: a run root ≤ 50 chars
    plugins, nets = root / "plugins", root / "net.d"
    for d in (plugins, nets, root / "tmp", root / "image" / "bin"):
        d.mkdir(parents=True)
    pythonpath = os.environ.get("PYTHONPATH")
    wrapper = plugins / "weft-net"
    wrapper.write_text("#!/bin/sh\n"
                       + (f"export PYTHONPATH={shlex.quote(pythonpath)}\n" if pythonpath else "")
                       + f"exec {shlex.quote(sys.executable)} -m weftnet.router.programs.cni \"$@\"\n")
    wrapper.chmod(0o755)
    network = f"weft{mesh.prefix}"
    (nets / f"{network}.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": network, "plugins": [{"type": "weft-net"}]}))
    (root / "containers.conf").write_text(
        "[containers]\ndefault_ulimits = []\n"
        "[engine]\n"
        f'runtime = "runc"\ntmp_dir = "{root / "tmp"}"\nevents_logger = "none"\n'
        "[network]\n"
        f'network_backend = "cni"\ncni_plugin_dirs = ["{plugins}", "/usr/lib/cni"]\n'
        f'network_config_dir = "{nets}"\n')
    image = root / "image"
    shutil.copy(str(_busybox()), image / "bin" / "busybox")
    for tool in ("sh", "ip", "ping", "sleep", "cat", "nslookup"):
        (image / "bin" / tool).symlink_to("busybox")
    subprocess.run(["tar", "-C", str(image), "-cf", str(root / "image.tar"), "."], check=True)
    cache_existed = CNI_CACHE.exists()
    fresh = [d for d in STATE_DIRS if not d.exists()]   # ours to remove afterwards
    pm = Podman(mesh, root, network)
    try:
        pm("h1", "import", str(root / "image.tar"), "localhost/weftbox:latest")
        yield pm
    finally:
        for host in ("h1", "h2"):
            pm(host, "rm", "-a", "-f", "-t0", check=False)
        pm("h1", "rmi", "-a", "-f", check=False)
        for d in fresh:
            shutil.rmtree(d, ignore_errors=True)
        if cache_existed:
            for entry in CNI_CACHE.glob(f"**/*{network}*"):
                if entry.is_file():
                    entry.unlink()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(_podman_missing(), reason=PODMAN_WHY)
def test_podman_containers_on_two_hosts(mesh: Testbed, podman: Podman) -> None:
    tb, pm = mesh, podman
    before = {h: allocated(tb, h) for h in ("h1", "h2")}
    ips = {}
    for host, name in (("h1", "web"), ("h2", "db")):
        start = time.monotonic()
        pm(host, "run", "-d", "--name", name, "--network", pm.network, "localhost/weftbox",
           "sleep", "300")
        print(f"podman run {name} on {host}: {time.monotonic() - start:.2f} s")
        info = json.loads(pm(host, "inspect", name).stdout)[0]
        net = info["NetworkSettings"]["Networks"][pm.network]
        ips[name] = ipaddress.IPv4Address(net["IPAddress"])
        assert ips[name] in RANGE and net["IPPrefixLen"] == RANGE.prefixlen
        # what podman was told is what the container has, as eth0
        shown = pm(host, "exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        assert f"inet {ips[name]}/{RANGE.prefixlen}" in shown
    assert {h: allocated(tb, h) for h in ("h1", "h2")} == {h: n + 1 for h, n in before.items()}
    wait_for("web -> db over the mesh", lambda: pm("h1", "exec", "web", "ping", "-c1", "-W2",
                                                    str(ips["db"]), check=False).returncode == 0)
    assert pm("h2", "exec", "db", "ping", "-c1", "-W2", str(ips["web"])).returncode == 0
    # the container's name (K8S_POD_NAME) resolves through weftDNS inside the container
    wait_for("db's name on h1", lambda: ("db.weft.local.", str(ips["db"])) in dns_names(tb, "h1"))
    looked = pm("h1", "exec", "web", "nslookup", "db.weft.local", "127.0.0.11").stdout
    print("web's resolv.conf:", pm("h1", "exec", "web", "cat", "/etc/resolv.conf").stdout)
    assert str(ips["db"]) in looked
    # podman rm runs DEL: the addresses are free again, the names gone
    for host, name in (("h1", "web"), ("h2", "db")):
        pm(host, "rm", "-f", "-t0", name)
    assert {h: allocated(tb, h) for h in ("h1", "h2")} == before
    assert "eth0" not in tb.weft("h1", "ps").stdout + tb.weft("h2", "ps").stdout
    wait_for("the names gone", lambda: not any(n in ("web.weft.local.", "db.weft.local.")
                                               for n, _ in dns_names(tb, "h1")))
