"""Host plumbing: netlink (``netdev``: bridge, veths, namespaces), containers on the bridge
(``attachments``), the host on the network (``expose``: addresses and nftables), the
router's data dir (``datadir``), and what ``weft reset`` takes away (``teardown``).

May import: the cores and the standard library (pyroute2 for netlink); nothing else of the shell.
"""
