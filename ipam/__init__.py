"""weftnet.ipam: address allocation without a key-value store (pure, sans-IO core).

Modules (each opens with its theory of operation)::

    ring.py        the ring CRDT: entries [token, end) -> owner, version, free hint; merge,
                   grant, give_all (rmpeer / handoff), rival rings (ring_id)
    space.py       addresses in use on this peer and the searches over them
    consensus.py   single-decree Paxos over gossiped claims (--ipalloc-init consensus=N),
                   and when to propose (Proposer)
    mode.py        InitMode = ConsensusInit(count) | SeedInit(names) | ObserverInit();
                   parse_init_mode(text, initial_peers)
    codec.py       wire formats: IpamGossip (gossip payload), RequestSpace / Donation /
                   Refused / RequestClaim / Released (unicasts); decoders raise only
                   RemoteProtocolError
    allocator.py   Allocator: the facade the router drives
    state.py       IpamState: what the allocator knows, owned by it and handed to the
                   helpers below (they import it, never the allocator)
    serve.py       serving other peers: donations and claims
    merge.py       two independently seeded rings that meet: holds, duplicates, records
    release.py     vanished containers' addresses, freed after a grace period (30 s)
    gossip.py      IpamGossiper: the Allocator as mesh channel "ipam" (CHANNEL)
    persist.py     the persisted state: encode_state / decode_state (StateError)
    status.py      status() and the reasons operations wait or fail; format_status(dict)
                   renders ``weft status ipam`` (Weave's layout plus problems/warnings)

The router's part (nothing here does I/O, reads a clock or draws its own randomness)::

    alloc = Allocator(name, nickname, universe: IPv4Network | IPv6Network,
                      default_subnet: same family | None,
                      init: InitMode, now, rng: random.Random, timeout=30.0,
                      grace=RELEASE_GRACE (30 s; the router reads WEFT_IPAM_GRACE),
                      wall_offset=wall clock - now (persists release deadlines))
    alloc.load_state(decode_state(bytes_from_data_dir))   # if the file exists; returns warnings;
                                                          # StateError: refuse to start, say why
    mesh.register_channel(CHANNEL, IpamGossiper(alloc))

    inputs (API):  alloc.allocate(op_id, ident, subnet | None, now)         -> Result later
                   alloc.claim(op_id, ident, IPv4Interface | IPv6Interface, now) -> Result later
                   alloc.free(ident, IPv4Address | IPv6Address | None, now) -> int (freed count;
                                  weft detach: at once, pending release or not)
                   alloc.container_died(ident, now) -> int   (its namespace is gone: freed
                                  after the grace period unless ident asks again first)
                   alloc.lookup(ident) -> list[IPv4Interface | IPv6Interface]
                   alloc.rmpeer(name_or_nickname, now) -> int               (addresses taken;
                                  LocalProtocolError if the peer is reachable or unknown)
                   alloc.handoff(now) -> (peer, addresses) | None          (weft reset)
                   alloc.stats -> dict[str, int]  (counters for /metrics)
                   alloc.status(now) -> dict   ("ipam" of the report: range, default_subnet,
                                  status, peers[{name, nickname, addresses, share, free,
                                  reachable}], problems[str], warnings[str], init, ring,
                                  allocated, pending, releasing[{container, addresses,
                                  in}], merges[{ring, winner, ours_lost, owners, in_use,
                                  since, hold, text}])
    inputs (mesh): alloc.peers_changed({name: nickname} of reachable peers, now)
                   (unicasts and gossip arrive through IpamGossiper)
    timers:        alloc.get_timer() -> float | None;  alloc.handle_timer(now)
    outputs, after every input above and after every mesh input (data_received, handle_timer
    and connection events may call into the gossiper), in this order:
        if alloc.dirty: write encode_state(alloc.to_state()) atomically (tmp, fsync, rename)
        if (news := alloc.take_news()) is not None: mesh.gossip_news(CHANNEL, news)
        for dst, payload in alloc.messages_to_send(): mesh.gossip_unicast(CHANNEL, dst, payload, now)
        while (r := alloc.next_result()) is not None: answer op r.op_id with
              r.address (an interface of the universe's family) or r.error (one line, says
              why and what to do)

IPv6 (``--ipalloc-range-v6``) is a second Allocator over a 128-bit universe, on channel
``CHANNEL_V6`` ("ipam6"): the ring's integers are Python ints of any size; the codec
carries values past 64 bits as byte strings (``codec``) and the decoders of that channel
take ``limit=LIMIT_V6`` (``alloc.limit``); IPv4 rings' bytes and digests are unchanged.

Every allocate/claim ends with a Result by ``now + timeout`` at the latest. ``ident`` is the
container id (1..256 chars); allocation is idempotent per (ident, subnet).
"""
