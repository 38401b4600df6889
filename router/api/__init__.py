"""The HTTP API: the server the daemon runs (``server``, ``httpserve``), what it renders
(``render``: ``weft status``; ``metrics``: Prometheus, from a snapshot of the router), and
what the programs use: the client (``client``), the address words PEER and ADDR:PORT
(``address``, the daemon's launch options too) and the text both ends share (``text``).
The client side imports nothing heavy (no trio, no hypercorn): the CLI runs often.

May import: the cores and the standard library; never the daemon, data plane, host,
programs or tools rooms (the server talks to the router through the ``RouterControl``
protocol).
"""
