"""The router process: ``router`` (lifecycle, the API's verbs, the pump), ``connections``
(TCP tasks), ``timers`` (the one timer task), ``watcher`` (attached namespaces gone), the
``ipam_driver``, ``dns_driver`` and ``expose_driver``, the DNS server (``dns_server``),
and ``config`` (launch options).

May import: the cores, ``api``, ``dataplane`` and ``host``; never ``programs`` or ``tools``.
"""
