"""Tools that build hosts as network namespaces on this machine: ``testbed`` (the hosts),
``demo`` (``weft demo``), ``bench`` and ``dnsbench`` (``weft bench``).

They drive routers through the real CLI in subprocesses; may import the standard library
and each other only.
"""
