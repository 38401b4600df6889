"""The data plane: the engine that moves Ethernet frames between the TAP port and sealed
UDP datagrams (``engine``), the fast path's shell over the kernel VXLAN (``fastpath``), and
the ports themselves (``tap``, ``udpsock``, ``vxlan``).

May import: the cores and ``host.netdev``; never the daemon, API, programs or tools.
"""
