"""Tools that build hosts as network namespaces on this machine: the testbed (``testbed``,
the hosts and segments; ``namespaces``, iproute2, processes and the errors; ``ownership``,
who owns a prefix and sweeping what crashed runs left), ``demo`` (``weft demo``), and
``weft bench``: ``bench`` (the data paths), ``benchresults`` (results, parsing, the table),
``dnsbench`` (the DNS suite).

They drive routers through the real CLI in subprocesses; may import the standard library
and each other only.
"""
