"""The data plane: the engine that moves Ethernet frames between the TAP port and sealed
UDP datagrams (``engine``; the link protocol itself is proto/link.py), the fast path's shell
over the kernel VXLAN (``fastpath``), the ports themselves (``ports`` says what the engine
needs of them; ``tap``, ``udpsock``, ``vxlan``) and their in-memory test doubles (``doubles``).

May import: the cores and ``host.netdev``; never the daemon, API, programs or tools.
"""
