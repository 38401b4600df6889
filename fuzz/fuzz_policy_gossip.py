"""Fuzz the policy gossip decoder and merge: any bytes decode or raise RemoteProtocolError;
whatever decodes re-encodes to the same items and merges into a small store without
breaking its invariants (our own containers keep their labels, the digest matches the
items, merging the same items again is no news, every live policy compiles)."""

from __future__ import annotations

from weftnet.policy.compile import compile_ruleset, render
from weftnet.policy.documents import parse_documents
from weftnet.policy.service import Items, PolicyService
from weftnet.policy.store import PolicyItem, WorkloadItem, decode_items, digest_of_items, encode_items
from weftnet.proto.errors import RemoteProtocolError

ME, OTHER = 1, 2
NOW = 1_700_000_000.0
DOC = ('{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"db"},'
       '"spec":{"podSelector":{"matchLabels":{"app":"db"}},"ingress":[{"from":[{"podSelector":'
       '{"matchLabels":{"app":"web"}}}],"ports":[{"port":5432}]}]}}')


def _start() -> PolicyService:
    s = PolicyService(ME, NOW)
    s.set_container("web", {"app": "web"}, ["10.32.0.1"], NOW)
    s.set_container("gone", {"app": "x"}, ["10.32.0.2"], NOW)
    s.remove_container("gone", NOW)
    s.apply(parse_documents(DOC), NOW)
    s.store.merge([WorkloadItem(OTHER, "db", (("app", "db"),), ("10.32.0.3",), 2)], NOW)
    return s


SEEDS = [
    encode_items([]),
    encode_items(_start().store.items(tombstones=True)),
    encode_items([WorkloadItem(ME, "web", (("app", "evil"),), ("10.32.0.1",), 9),
                  WorkloadItem(OTHER, "db", (), ("10.32.0.3", "fd00::3"), 5, int(NOW) + 10**9),
                  PolicyItem("db", "", OTHER, 7, int(NOW))]),
]


def test_one_input(data: bytes) -> None:
    try:
        items = decode_items(data)
    except RemoteProtocolError:
        return
    assert decode_items(encode_items(items)) == items
    s = _start()
    s.gossiper.on_gossip(Items(tuple(items)), NOW)
    assert s.labels_of("web") == {"app": "web"}
    assert s.store.merge(items, NOW) == []
    assert s.store.digest() == digest_of_items(s.store.items(tombstones=True))
    ruleset = compile_ruleset(s.policies(), s.workloads(), s.local_keys())
    render(ruleset)
    news = s.take_news()
    assert news is None or all(isinstance(i, PolicyItem) or i.origin == ME for i in news.items)


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
