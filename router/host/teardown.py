"""``weft reset`` on the host: take away everything a router made here.

Theory of operation. What a router leaves in its namespace when it stops (``weft stop``
keeps all of it, so containers stay attached across a restart): the ``weft`` bridge, the
host ends of the containers' veth pairs (``vethwepl…``; deleting one deletes the
container's ``ethwe`` with it), the addresses ``expose`` put on the bridge, our nftables
tables ``ip weft`` (and the forwarding it turned on) and ``inet weft-policy``, and a resolv.conf under
/etc/netns/NAME per named container. The TAP and VXLAN devices go when the router closes
them; ``remove_all`` deletes them too in case a crash left one. ``reset_host`` removes it
all, in that order (rules and addresses before the devices they name), and is
idempotent. The router runs it as it exits after ``POST /reset``; the CLI runs it again
once no router holds the data dir (after a crash, or with no router at all), which finds
nothing left in the first case. The data dir itself is the CLI's to remove.
"""

from __future__ import annotations

import logging
import os

from pyroute2.netlink.exceptions import NetlinkError

from weftnet.proto.errors import LocalProtocolError
from weftnet.router.host import attachments, expose, netdev
from weftnet.router.host.datadir import DataDir
from weftnet.router.host.policy_nft import EnforcementError, PolicyHost

log = logging.getLogger("weft")


def router_here() -> bool:
    """Whether a router runs in this namespace: its TAP device (not persistent: it lives
    only while the router holds it open) exists."""
    try:
        return netdev.link_exists(netdev.TAP)
    except (NetlinkError, OSError):
        return False


def reset_host(datadir: DataDir) -> list[str]:
    """Remove what the router of ``datadir`` made in this namespace (module docstring);
    returns what was removed. A failure is a one-line LocalProtocolError, raised after
    everything else was tried."""
    removed = expose.teardown(datadir)   # logs its own failures and goes on
    try:   # the network policy table (router/host/policy_nft.py), when there is one
        host = PolicyHost()
        if host.exists():
            host.remove()
            removed.append(f"table {host.table}")
    except EnforcementError as exc:
        log.warning("reset: %s", exc.reason)
    try:
        removed += attachments.forget_all(datadir)
    except LocalProtocolError as exc:    # a damaged state file: the devices still go
        log.warning("reset: %s", exc.reason)
    try:
        removed += netdev.remove_all()
    except netdev.NetdevError as exc:
        raise LocalProtocolError(f"reset: {exc}") from None
    except (NetlinkError, OSError) as exc:   # listing the devices failed
        code = exc.code if isinstance(exc, NetlinkError) else exc.errno
        raise LocalProtocolError("reset: cannot list this host's network devices: "
                                 f"{os.strerror(code) if code else exc}") from None
    return removed
