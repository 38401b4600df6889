"""The HTTP API: the server the daemon runs (``server``, ``httpserve``), what it renders
(``render``: ``weft status``; ``metrics``: Prometheus), and the client the programs use.

May import: the cores and the standard library; never the daemon, data plane or host rooms
(the server talks to the router through the ``RouterControl`` protocol).
"""
