"""The router process: ``router`` (lifecycle and the API's verbs), the pump and timers, TCP
connection tasks, the IPAM and DNS drivers, the DNS server, and ``config`` (launch options).

May import: the cores, ``api``, ``dataplane`` and ``host``; never ``programs`` or ``tools``.
"""
