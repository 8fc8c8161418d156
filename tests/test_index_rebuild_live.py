"""An index rebuild (server/store/index.py: once removals since the last build reach
max(REBUILD_MIN_REMOVED, REBUILD_AFTER_REMOVED_FRACTION of the index)) runs while searches and
other ingests go on: every search issued meanwhile finds the right document, and nothing
committed during a rebuild is missing from the index after it.

The index holds one point per distinct content, so only a change of content removes a point (a
new metadata alone does not). Each round moves every "mover" document to the other of two text
pools: all its old contents leave the index (removals), the new ones come in. After the first
round both pools' vectors are in the store, so later rounds embed nothing and stay cheap."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import numpy as np

from server.store.index import REBUILD_AFTER_REMOVED_FRACTION, REBUILD_MIN_REMOVED
from tests._collections import ingest, search
from tests.server_harness import ServerProcess

ANCHORS = 200  # never changed: the searches look for these throughout
MOVERS = 600  # change content every round: MOVERS removals per round
ROUNDS = 3

Doc = tuple[str, str, dict[str, Any]]


def _texts(n: int, seed: int) -> list[str]:
    """Short, clearly distinct texts (cheap to embed): each finds itself first."""
    words = (  # noqa: SIM905 (a few lines of words read better than a 49-line list)
        "amber basalt cedar delta ember fjord garnet harbor indigo juniper kelp lagoon meadow "
        "nectar obsidian prairie quartz raven saffron tundra umber violet willow yarrow zephyr "
        "anchor beacon canyon dune estuary falcon glacier heron island jasper kestrel lantern marsh "
        "nimbus orchid pebble quill reef sparrow thistle urchin valley walnut yew"
    ).split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, 6)) + f" {seed} {i}" for i in range(n)]


def _rebuilds(server: ServerProcess, collection: str) -> int:
    """Rebuilds the server logged for ``collection`` (CollectionIndex.catch_up)."""
    return sum(
        f"index '{collection}': " in line and "rebuilding it" in line for line in server.log().splitlines()
    )


def test_searches_and_ingests_stay_right_while_the_index_is_rebuilt(live_server: ServerProcess) -> None:
    address = live_server.address
    collection = f"rebuild-{uuid.uuid4().hex[:8]}"
    anchors: list[Doc] = [(f"anchor-{i}", t, {}) for i, t in enumerate(_texts(ANCHORS, seed=1))]
    pools = _texts(MOVERS, seed=2), _texts(MOVERS, seed=3)
    added: list[Doc] = [(f"added-{i}", t, {}) for i, t in enumerate(_texts(40, seed=4))]
    # Even the smallest index rebuilds after MOVERS removals; ROUNDS * MOVERS removals in
    # commits of at most 256 documents give at least ROUNDS rebuilds (at most 2 * 256 - 1
    # removals each).
    assert max(REBUILD_MIN_REMOVED, REBUILD_AFTER_REMOVED_FRACTION * (ANCHORS + MOVERS + 40)) <= 256
    assert ROUNDS * MOVERS >= ROUNDS * (2 * 256 - 1)
    ingest(address, collection, [*anchors, *[(f"mover-{i}", t, {}) for i, t in enumerate(pools[0])]])
    assert _rebuilds(live_server, collection) == 0  # a fresh index: nothing removed yet
    stop = threading.Event()
    answered: list[int] = []
    failures: list[str] = []

    def keep_searching() -> None:
        count = 0
        while not stop.is_set():
            doc_id, text, _ = anchors[count * 37 % ANCHORS]
            hits = search(address, collection, text, k=5, prompt_name="").hits
            if len(hits) != 5 or hits[0].id != doc_id or hits[0].score < 0.99:
                failures.append(f"{doc_id}: {[(h.id, round(h.score, 3)) for h in hits]}")
            count += 1
        answered.append(count)

    def keep_adding() -> None:
        for start in range(0, len(added), 5):  # small ingests, interleaved with the rebuilds
            ingest(address, collection, added[start : start + 5])

    searcher, adder = threading.Thread(target=keep_searching), threading.Thread(target=keep_adding)
    searcher.start()
    adder.start()
    try:
        for round_ in range(ROUNDS):  # every mover to the other pool: remove + add each
            texts = pools[(round_ + 1) % 2]
            ingest(address, collection, [(f"mover-{i}", t, {"round": round_}) for i, t in enumerate(texts)])
        adder.join(timeout=600)
    finally:
        stop.set()
        searcher.join(timeout=600)
    rebuilds = _rebuilds(live_server, collection)
    assert rebuilds >= ROUNDS, rebuilds
    assert not failures, failures[:5]
    assert answered and answered[0] > 0

    final, gone = pools[ROUNDS % 2], pools[(ROUNDS + 1) % 2]
    for i in range(0, MOVERS, 50):  # each mover is found by its current text only
        hit = search(address, collection, final[i], k=1, prompt_name="").hits[0]
        assert (hit.id, hit.text) == (f"mover-{i}", final[i]), (hit.id, hit.score)
        assert hit.metadata["round"] == ROUNDS - 1
        assert search(address, collection, gone[i], k=1, prompt_name="").hits[0].score < 0.99
    for doc_id, text, _ in [*added, *anchors[::20]]:  # those added during rebuilds are there too
        hit = search(address, collection, text, k=1, prompt_name="").hits[0]
        assert hit.id == doc_id and hit.score > 0.99
    every = search(address, collection, final[0], k=ANCHORS + MOVERS + 40)
    exact = search(address, collection, final[0], k=ANCHORS + MOVERS + 40, exact=True)
    assert len(every.hits) == ANCHORS + MOVERS + 40  # the index holds every document, once
    assert {h.id for h in every.hits} == {h.id for h in exact.hits}
    assert every.sequence == exact.sequence
