"""The command-line programs: ``weft`` (``cli``) and the CNI plugin ``weft-net`` (``cni``,
with the pure CNI protocol in ``cnispec``). Thin clients of the router's HTTP API.

May import: ``api`` (the client side: ``client``, ``address``, ``text``), the cores, and
lazily (inside the functions that need them, so the programs start fast) ``daemon``
(``config``: the launch options; ``router``: ``weft launch`` runs it), ``host`` (the data
dir, ``weft reset`` without a router, the CNI plugin's namespace checks) and ``tools``.
"""
