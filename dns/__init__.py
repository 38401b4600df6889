"""weftnet.dns: weftDNS, every router answers for every container in the mesh.

Every module here is pure: no I/O, no clock, no threads (``tests/unit/test_layering.py``
checks the imports). The shell around it lives in ``weftnet.router``: the DNS server is
``router/daemon/dns_server.py``, the benchmark ``router/tools/dnsbench.py``.

Modules::

    names       canonical hostnames, ``qualify`` (a name without a dot gets the domain),
                reverse names, address conversions (``ipaddress``)
    records     ``RecordStore``: the entry CRDT (merge, tombstone expiry, clock-skew guard,
                origin authority / reconcile), its gossip wire format
    gossip      ``DnsGossiper`` for mesh channel ``CHANNEL = "dns"``; ``news(delta)``
    codec       DNS wire format: query reader (fast path + dnslib), reply writer, TCP framing
    answer      ``answer(query_bytes, ...)``: the reply, or None = forward upstream
    resolvconf  parsing resolv.conf, ``container_resolv_conf`` for attached containers
    service     ``DnsService``: the router's DNS duties (names of containers, dns-add/remove,
                news to gossip, persisted claims, peers gone from the topology)

Router integration (the API the daemon, CLI and HTTP API call)
-----------------------------------------------------------------
``router/daemon/dns_driver.py`` follows this recipe through ``service.DnsService``, which wraps
steps 1-6 (the store, its gossiper, ``news``, claims, ``remove_peer`` after a grace
period); its docstring and the daemon's say how. The steps, as the store sees them:

``now`` arguments of the store are wall-clock seconds (``time.time()``): tombstone
expiry compares them across routers (see ``records``). Gossip arrives with the mesh's
``now`` (the router's monotonic clock); the gossiper adds ``wall_offset`` (wall clock
minus the mesh's clock, taken at launch). Deltas are ``list[Entry]``.

1. Launch (unless ``--no-dns``)::

       store = RecordStore(our_peer_name, time.time())        # tombstone_ttl=1800, max_skew=60
       store.reconcile(claims, time.time())   # (hostname, address, container) of every
                                              # container still attached, BEFORE the mesh
                                              # connects: the restart rule relies on it
       gossiper = DnsGossiper(store, wall_offset=time.time() - trio.current_time())
       mesh.register_channel(CHANNEL, gossiper)
       await nursery.start(functools.partial(serve_dns, lambda: store, address=DNS_ADDR,
                           domain=args.dns_domain, ttl=args.dns_ttl))   # -> DnsServer
                           # (router/daemon/dns_server.py)

2. Local changes (attach --name, dns-add, dns-remove, detach)::

       delta = store.add(qualify(name, domain), ip, container, time.time())
       delta = store.remove(time.time(), hostname=..., address=..., container=...)
       delta = store.remove_container(container, time.time())        # detach
       if (d := news(delta)) is not None: mesh.gossip_news(CHANNEL, d)

   ``add``/``remove`` act on our own entries only (origin = us); a dns-add without a
   container uses a placeholder container id such as ``"weft:extern"``.
3. After feeding the mesh any input: ``if (d := gossiper.take_news()): mesh.gossip_news(
   CHANNEL, d)`` -- corrections of stale entries about us reach the sender at once.
4. Timer: wake at ``store.get_timer()`` (never more than 10 s ahead), then
   ``store.handle_timer(time.time())``.
5. Peers gone from the topology (gc, rmpeer): ``news(store.remove_peer(name, now))``,
   gossiped like 2; ``store.origins()`` lists routers that still have live entries.
6. Queries: ``store.lookup(name) -> tuple[str, ...]`` (addresses, sorted; ``name`` canonical
   via ``qualify``), ``store.reverse(ip) -> list[str]``, ``store.entries()`` for
   ``status dns`` and the report's ``dns.entries`` (``origin`` through
   ``format_peer_name``). ``DnsServer.statistics()`` gives counters for ``/metrics``.
7. attach: write ``container_resolv_conf(DNS_ADDR, domain)`` to
   ``/etc/netns/NAME/resolv.conf`` (named namespaces), unless ``--without-dns``.
8. ``weft bench dns`` (``router/tools/dnsbench.py``): ``bench_dns(names=1000, seconds=10)
   -> {"weftdns": {"qps", ...}, "dnsmasq": {...}, "ratio"}``; raises ``BenchUnavailable``
   with the missing tool.

Dependency: ``dnslib>=0.9`` (the general DNS message reader).
"""
