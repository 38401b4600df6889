"""Network policy in the kernel: our ``inet weft-policy`` table and the bridge's netfilter
switch (the pure ``weftnet.policy.compile`` decides what the table holds).

Theory of operation
-------------------
Why ``inet`` hooks and addresses, not the ``bridge`` family and ports: the container's
host judges every packet that crosses the ``weft`` bridge, whether it came from the TAP
(sleeve), the VXLAN device (fast path), another veth (same host) or the host itself
(exposed addresses). The bridge family sees all of that, but it can only follow
connections with ``nf_conntrack_bridge``, which many kernels lack (and "replies of
allowed connections pass" needs conntrack). The ``inet`` family has conntrack always and
covers IPv6 in the same table; bridged frames reach its hooks when the bridge's *own*
``nf_call_iptables`` / ``nf_call_ip6tables`` options are on (IFLA_BR_NF_CALL_*: this
bridge only, not the host-wide ``net.bridge.bridge-nf-call-*`` sysctls). Within those hooks
the in/out device is the bridge, so containers are recognised by their addresses (per
container maps keyed by IP, built from what the mesh knows of who holds which address).

The switch is turned on while the table holds at least one chain (a policy selects a
container of this host) and off again when none does and we turned it on, so a host
without policies keeps the plain bridge behaviour (no conntrack of bridged traffic, no
exposure to the host firewall's FORWARD rules). Turning it on while a connection runs is
harmless: conntrack picks connections up mid-stream.

Updates are atomic: ``nft -f`` of ``table; delete table; table {...}`` is one transaction,
so a packet sees the old table or the new one, never half of either; a refused batch
leaves the old table in place. Counters of drops live in the table; ``counters()`` reads
them before each replacement, and the driver keeps the running totals.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from weftnet.policy.compile import BRIDGE, FAMILY, TABLE, render_delete
from weftnet.router.host.nftrun import run_nft


class EnforcementError(Exception):
    """The kernel refused or nothing can install the table; ``str()`` is one line."""

    @property
    def reason(self) -> str:
        return str(self)


class PolicyHost:
    """The namespace this process runs in (``nft`` and rtnetlink)."""

    def __init__(self, *, nft: str = "nft", bridge: str = BRIDGE, table: str = TABLE) -> None:
        self.nft_command = nft
        self.bridge = bridge
        self.table = table

    def _nft(self, args: list[str], data: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_nft(self.nft_command, args, data, fail=EnforcementError,
                       needed_for="policies are enforced")

    @staticmethod
    def _first_error(proc: subprocess.CompletedProcess[str]) -> str:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if "Error" in ln]
        lines = lines or [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        return lines[0] if lines else f"nft exited with {proc.returncode}"

    def install(self, text: str) -> None:
        proc = self._nft(["-f", "-"], text)
        if proc.returncode != 0:
            raise EnforcementError(f"nft refused the policy table: {self._first_error(proc)}")

    def check(self, text: str) -> None:
        proc = self._nft(["-c", "-f", "-"], text)
        if proc.returncode != 0:
            raise EnforcementError(f"nft -c refused the policy table: {self._first_error(proc)}")

    def remove(self) -> None:
        if shutil.which(self.nft_command) is None:
            return
        proc = self._nft(["-f", "-"], render_delete(self.table))
        if proc.returncode != 0:
            raise EnforcementError(f"cannot remove the policy table: {self._first_error(proc)}")

    def exists(self) -> bool:
        """Whether our table is there (read only; False without ``nft``)."""
        if shutil.which(self.nft_command) is None:
            return False
        proc = self._nft(["list", "table", FAMILY, self.table])
        return proc.returncode == 0

    def counters(self) -> dict[str, int]:
        """Packets dropped per counter of our table (empty when there is no table)."""
        if shutil.which(self.nft_command) is None:
            return {}
        proc = self._nft(["-j", "list", "counters", "table", FAMILY, self.table])
        if proc.returncode != 0:
            return {}
        try:
            items = json.loads(proc.stdout).get("nftables", [])
        except (ValueError, AttributeError):
            return {}
        out: dict[str, int] = {}
        for item in items:
            counter = item.get("counter") if isinstance(item, dict) else None
            if isinstance(counter, dict) and isinstance(counter.get("name"), str):
                out[counter["name"]] = int(counter.get("packets", 0))
        return out

    def bridge_netfilter(self, on: bool) -> bool:
        """Turn the bridge's own nf_call_iptables/ip6tables on or off; returns what it was."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        value = 1 if on else 0
        try:
            with IPRoute(groups=0) as ipr:
                found = ipr.link_lookup(ifname=self.bridge)
                if not found:
                    raise EnforcementError(f"bridge {self.bridge} does not exist")
                before = self._nf_call(ipr.get_links(found[0])[0])
                ipr.link("set", index=found[0], kind="bridge", br_nf_call_iptables=value,
                         br_nf_call_ip6tables=value)
                after = self._nf_call(ipr.get_links(found[0])[0])
        except NetlinkError as exc:
            raise EnforcementError(f"cannot switch netfilter on bridge {self.bridge}: "
                                   f"{exc}") from None
        except OSError as exc:
            raise EnforcementError(f"cannot switch netfilter on bridge {self.bridge}: "
                                   f"{exc.strerror or exc}") from None
        if after != on:
            raise EnforcementError(f"bridge {self.bridge} did not take nf_call_iptables={value} "
                                   "(a kernel without CONFIG_BRIDGE_NETFILTER?)")
        return before

    @staticmethod
    def _nf_call(link: Any) -> bool:
        info = link.get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        if data is None:
            return False
        return bool(data.get_attr("IFLA_BR_NF_CALL_IPTABLES"))
