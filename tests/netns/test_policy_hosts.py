"""Network policy on real hosts: three routers; ``web`` (app=web) on h1, ``db`` (app=db)
and ``side`` (no labels) on h2, ``other`` on h3. A policy applied on h3 lets ``db`` accept
5432 from ``web`` only; other ports and containers are refused, replies pass, ``db``'s own
connections out work; over the fast path (no password) and the encrypted sleeve both.
Then: the policy survives a restart of db's router, a label change on a running container
takes effect within seconds, deleting the policy lifts it. Printed: the time from ``apply``
to the table being in force on every host, and TCP throughput web -> db with 100 policies
applied beside none (same run; no timing asserts)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import PASSWORD, attach, bulk_tcp, launch, logs_on_failure, meshed, report, wait_for

HOSTS = ("h1", "h2", "h3")

SERVER = """\
import socket, sys, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        c.sendall(b"ok")
        c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

PROBE = """\
import socket, sys
out = []
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        c = socket.create_connection((host, int(port)), timeout=0.7)
        c.settimeout(2)
        out.append("ok" if c.recv(2) == b"ok" else "noreply")
        c.close()
    except socket.timeout:
        out.append("blocked")
    except OSError as exc:
        out.append(type(exc).__name__)
print(" ".join(out))
"""

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-allow
spec:
  podSelector:
    matchLabels: {app: db}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: web}
    ports:
    - {protocol: TCP, port: 5432}
"""


def bench_policies(n: int) -> str:
    """``n`` policies selecting db; the first lets web in on the bench port 5001."""
    docs = []
    for i in range(n):
        port = 5001 if i == 0 else 6000 + i
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": f"bench-{i}"},
                     "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                                    {"ipBlock": {"cidr": f"192.168.{i}.0/24"}}],
                                           "ports": [{"port": port}]}]}})
    return json.dumps(docs)


def probe(tb: Testbed, container: str, *targets: str) -> list[str]:
    return tb.run(container, [sys.executable, "-c", PROBE, *targets]).stdout.split()


def in_force(tb: Testbed, host: str, name: str, present: bool = True) -> bool:
    pol = report(tb, host)["policy"]
    return pol["enforcement"]["ok"] is True and (name in pol["in_force"]) == present


def wait_in_force_everywhere(tb: Testbed, name: str, started: float,
                             present: bool = True) -> dict[str, float]:
    """Seconds from ``started`` (wall clock) until each host had installed its table built
    with (without) ``name``: the router's own ``installed_at``, so the time the CLI takes
    to ask does not count."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 20
    while len(seen) < len(HOSTS) and time.monotonic() < deadline:
        for h in HOSTS:
            if h not in seen:
                pol = report(tb, h)["policy"]
                if pol["enforcement"]["ok"] is True and (name in pol["in_force"]) == present:
                    seen[h] = pol["enforcement"]["installed_at"] - started
        time.sleep(0.05)
    assert len(seen) == len(HOSTS), f"{name} in force only on {sorted(seen)}"
    return seen


def start_server(tb: Testbed, container: str, *ports: int) -> None:
    proc = tb.popen(container, [sys.executable, "-c", SERVER, *map(str, ports)],
                    stdout=__import__("subprocess").PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


@pytest.fixture
def hosts(testbed_factory: Any) -> Testbed:
    return testbed_factory(hosts=HOSTS)  # type: ignore[no-any-return]


@pytest.mark.parametrize("overlay", ["fastdp", "sleeve"])
def test_policy_across_hosts(hosts: Testbed, overlay: str) -> None:
    tb = hosts
    password = None if overlay == "fastdp" else PASSWORD
    with logs_on_failure(tb, HOSTS):
        launch(tb, "h1", password=password)
        launch(tb, "h2", tb.address("h1"), password=password)
        launch(tb, "h3", tb.address("h1"), tb.address("h2"), password=password)
        wait_for("a full mesh", lambda: meshed(tb, HOSTS))
        web = attach(tb, "h1", "web", "--label", "app=web").ip
        db = attach(tb, "h2", "db", "--label", "app=db").ip
        attach(tb, "h2", "side")
        attach(tb, "h3", "other")
        wait_for(f"every connection on {overlay}", lambda: all(
            c["overlay"] == overlay for h in HOSTS for c in report(tb, h)["router"]["connections"]
            if c["state"] == "established"), timeout=20)
        start_server(tb, "db", 5432, 8080)
        start_server(tb, "web", 80)
        d5432, d8080 = f"{db}:5432", f"{db}:8080"
        wait_for("every container reaches db", lambda: probe(tb, "other", d5432) == ["ok"]
                 and probe(tb, "web", d5432) == ["ok"])
        assert "app=web" in tb.weft("h1", "ps").stdout

        # bad input: one line naming the document and the field, nothing applied
        bad = POLICY.replace("port: 5432", "port: http")
        proc = tb.weft("h3", "policy", "apply", "-", input=bad, check=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert "NetworkPolicy db-allow: spec.ingress[0].ports[0].port: named ports" in proc.stderr
        assert report(tb, "h3")["policy"]["policies"] == []

        started = time.time()
        tb.weft("h3", "policy", "apply", "-", input=POLICY)
        times = wait_in_force_everywhere(tb, "db-allow", started)
        print(f"\n[{overlay}] apply on h3 -> in force: " +
              ", ".join(f"{h} {t * 1000:.0f} ms" for h, t in sorted(times.items())))
        assert report(tb, "h2")["policy"]["enforcement"]["bridge_netfilter"] is True
        assert report(tb, "h1")["policy"]["enforcement"]["bridge_netfilter"] is False  # nothing here
        assert probe(tb, "web", d5432, d8080) == ["ok", "blocked"]
        assert probe(tb, "other", d5432, d8080) == ["blocked", "blocked"]
        assert probe(tb, "side", d5432) == ["blocked"]          # the same host
        assert probe(tb, "db", f"{web}:80") == ["ok"]           # db's own connections out
        # exposed hosts: db's own host (the output hook) and another one (over the overlay)
        exposed = {h: tb.weft(h, "expose").stdout.split()[0].split("/")[0] for h in ("h1", "h2")}
        assert probe(tb, "h2", d5432) == ["blocked"] and probe(tb, "h1", d5432) == ["blocked"]
        hosts_doc = POLICY.replace("db-allow", "db-hosts").replace(
            "podSelector:\n        matchLabels: {app: web}",
            f"ipBlock: {{cidr: {exposed['h1']}/32}}\n    - ipBlock: {{cidr: {exposed['h2']}/32}}")
        tb.weft("h1", "policy", "apply", "-", input=hosts_doc)
        wait_for("exposed hosts let in", lambda: probe(tb, "h2", d5432) == ["ok"]
                 and probe(tb, "h1", d5432) == ["ok"], timeout=10)
        assert probe(tb, "h1", d8080) == ["blocked"] and probe(tb, "other", d5432) == ["blocked"]
        tb.weft("h1", "policy", "delete", "db-hosts")
        tb.weft("h1", "hide")
        tb.weft("h2", "hide")
        listing = tb.weft("h1", "policy", "list").stdout
        assert listing.split()[:2] == ["db-allow", tb.ns("db")], listing
        wait_for("drops counted on db's host",
                 lambda: report(tb, "h2")["policy"]["drops"].get("db-allow", 0) > 0, timeout=10)
        assert "db-allow" in tb.weft("h2", "status", "policy").stdout

        # a label changed on a running container: in force within seconds
        started = time.time()
        tb.weft("h2", "label", tb.ns("side"), "app=web")
        wait_for("side let in after its label changed", lambda: probe(tb, "side", d5432) == ["ok"],
                 timeout=10)
        print(f"[{overlay}] label change -> allowed after {time.time() - started:.2f} s (seen by a probe)")
        tb.weft("h2", "label", tb.ns("side"), "--remove", "app")
        wait_for("side refused again", lambda: probe(tb, "side", d5432) == ["blocked"], timeout=10)

        if overlay == "fastdp":
            # the policy survives a restart of db's router (and its table holds meanwhile)
            tb.weft("h2", "stop")
            assert probe(tb, "other", d5432) == ["blocked"]
            launch(tb, "h2", tb.address("h1"), password=password)
            assert in_force(tb, "h2", "db-allow")
            assert probe(tb, "other", d5432) == ["blocked"] and probe(tb, "web", d5432) == ["ok"]
            wait_for("h2 back in the mesh", lambda: meshed(tb, HOSTS))

        # delete (on another host again) lifts it
        started = time.time()
        tb.weft("h1", "policy", "delete", "db-allow")
        times = wait_in_force_everywhere(tb, "db-allow", started, present=False)
        print(f"[{overlay}] delete on h1 -> lifted: " +
              ", ".join(f"{h} {t * 1000:.0f} ms" for h, t in sorted(times.items())))
        assert probe(tb, "other", d5432, d8080) == ["ok", "ok"]
        assert report(tb, "h2")["policy"]["enforcement"]["bridge_netfilter"] is False
        assert tb.run("h2", ["nft", "list", "table", "inet", "weft-policy"], check=False).returncode != 0

        if overlay == "fastdp":
            size = 64 << 20
            t0 = time.monotonic()
            bulk_tcp(tb, "db", str(db), "web", size, port=5002)
            none = size / (time.monotonic() - t0)
            tb.weft("h1", "policy", "apply", "-", input=bench_policies(1))
            wait_in_force_everywhere(tb, "bench-0", time.time() - 60)
            t0 = time.monotonic()
            bulk_tcp(tb, "db", str(db), "web", size, port=5001)
            one = size / (time.monotonic() - t0)
            started = time.time()
            tb.weft("h1", "policy", "apply", "-", input=bench_policies(100))
            wait_in_force_everywhere(tb, "bench-99", started)
            assert probe(tb, "other", d8080) == ["blocked"]
            chains = report(tb, "h2")["policy"]["enforcement"]["chains"]
            t0 = time.monotonic()
            bulk_tcp(tb, "db", str(db), "web", size, port=5001)
            hundred = size / (time.monotonic() - t0)
            install = report(tb, "h2")["policy"]["enforcement"]["install_seconds"]
            print(f"[{overlay}] TCP web -> db, 64 MiB each: no policy {none * 8 / 1e6:.0f} Mbit/s, "
                  f"1 policy {one * 8 / 1e6:.0f} Mbit/s, 100 policies ({chains} chain on h2) "
                  f"{hundred * 8 / 1e6:.0f} Mbit/s; compile+install of 100 on h2: {install * 1000:.0f} ms")
