"""The command-line programs: ``weft`` (``cli``) and the CNI plugin ``weft-net`` (``cni``,
with the pure CNI protocol in ``cnispec``). Thin clients of the router's HTTP API.

May import: ``api`` (the client), the cores, and lazily ``daemon`` (``weft launch`` runs it),
``host`` (``weft reset`` without a router, the CNI plugin's namespace checks) and ``tools``.
"""
