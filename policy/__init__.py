"""weftnet.policy: network policy as a pure core (labels, NetworkPolicy documents, the
label/policy CRDT and the compilation of both into an nftables ruleset).

Like ``weftnet.dns``, nothing here does I/O, reads a clock or draws randomness: the router
(``router/daemon/policy_driver.py`` and ``router/host/policy_nft.py``) drives it.

    labels.py     label keys and values, selectors (matchLabels, matchExpressions)
    documents.py  Kubernetes networking.k8s.io/v1 NetworkPolicy documents: parse, validate
    compile.py    (policies, workloads, local containers) -> Ruleset -> nft text; an evaluator
    store.py      the CRDT of workloads (container labels and addresses) and policies, its codec
    service.py    the gossip channel "policy" and the router's operations on the store
"""
