"""weftnet.router: the trio shell that drives the pure cores over sockets, devices and HTTP.

Rooms, each a package whose ``__init__`` says what lives there and what it may import::

    programs/   weft (CLI) and weft-net (CNI plugin): thin clients of the API
    api/        the HTTP API: server, client, status rendering, Prometheus metrics
    daemon/     the router process: lifecycle, pump and timers, TCP connection tasks,
                IPAM and DNS drivers, the DNS server, launch configuration
    dataplane/  the engine that moves frames, and its ports: TAP, UDP, kernel VXLAN
    host/       host plumbing: netlink, bridge, veths, attachments, expose (nftables), data dir
    tools/      demo, bench and the testbed of namespace hosts they build

The arrows: programs -> api (client), and the daemon only when the CLI runs it in the
foreground; daemon -> api, dataplane, host and the cores; dataplane -> host (netdev);
nothing in a core (proto, ipam, dns) imports the shell. The single source of these rules
is the table ``ARROWS`` in tests/unit/test_layering.py, which checks them (and that the
cores stay pure and no import cycle exists anywhere): change a room's arrows there.
"""
