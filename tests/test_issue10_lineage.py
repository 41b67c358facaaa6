"""Issue 10 item 3 probed as a new user would (review, rev10): lineage.

Three-deep lineage the driver holds only the tip of, a rebuild that cannot
succeed, actor results on a dead node, an owner that died while its object
survives elsewhere, a wait on an object of a just-killed node. Real etcd, real
node daemons; waits are for states with deadlines.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest
from cluster_helpers import here
from issue10_helpers import MB, make

import actorcore as ac
from actorcore.errors import ObjectLostError, ObjectReconstructionFailedError, OwnerDiedError
from actorcore.testing import wait_for
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(150)]


@ac.remote(max_retries=2, num_returns=2)
def plus(a: np.ndarray, k: int):
    return a + np.uint8(k), here()


@ac.remote(max_retries=1, num_returns=2)
def make_then_crash(n: int, marker: str):
    if os.path.exists(marker):
        os._exit(1)  # every run after the first: the rebuild cannot succeed
    open(marker, "w").close()
    return np.ones(n, dtype=np.uint8), here()


@ac.remote
def produce(n: int) -> np.ndarray:
    return np.full(n, 3, dtype=np.uint8)


@ac.remote
class Maker:
    def big(self, n: int) -> np.ndarray:
        return np.full(n, 5, dtype=np.uint8)

    def small(self) -> int:
        return 42

    def owned_elsewhere(self, n: int, node: str) -> list:
        ref = produce.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote(n)
        ac.wait([ref], timeout=60, fetch_local=False)
        self.keep = ref
        return [ref]


def test_p3_three_deep_lineage_held_only_by_its_tip_is_rebuilt_then_freed(abc):
    """a -> b -> c all made on B; the driver keeps only c. Kill B: c is rebuilt
    (b and a first). Dropping c frees the lineage and the objects."""
    b_node = abc.nodes[1].node_id
    on_b = NodeAffinitySchedulingStrategy(b_node, soft=True)
    a, wa = make.options(scheduling_strategy=on_b, num_cpus=0).remote(MB, 1)
    b, wb = plus.options(scheduling_strategy=on_b, num_cpus=0).remote(a, 1)
    c, wc = plus.options(scheduling_strategy=on_b, num_cpus=0).remote(b, 1)
    assert ac.get([wa, wb, wc], timeout=60) == [b_node] * 3
    del a, b, wa, wb
    gc.collect()
    abc.stop_node(abc.nodes[1], kill=True)
    got = ac.get(c, timeout=60)
    assert got.shape == (MB,) and int(got[0]) == 3
    lineage = ac._global.runtime.recovery.core
    assert len(lineage) >= 1
    del got, c, wc
    gc.collect()
    wait_for(lambda: len(lineage) == 0, 30, what="lineage freed with the last ref")


def test_p3_rebuild_that_cannot_succeed_raises_reconstruction_failed(abc, tmp_path):
    b_node = abc.nodes[1].node_id
    obj, where = make_then_crash.options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(b_node, soft=True)
    ).remote(MB, str(tmp_path / "ran"))
    assert ac.get(where, timeout=60) == b_node
    abc.stop_node(abc.nodes[1], kill=True)
    with pytest.raises(ObjectLostError) as e:
        ac.get(obj, timeout=60)
    assert isinstance(e.value, ObjectReconstructionFailedError), repr(e.value)


def test_p3_actor_results_on_a_dead_node_big_lost_small_kept(abc):
    """A 1 MiB actor-call result in B's store has no lineage: ObjectLostError, at once
    (no hang); a small (inline) result already returned stays readable."""
    m = Maker.options(
        resources={"w": 1},
        scheduling_strategy=NodeAffinitySchedulingStrategy(abc.nodes[1].node_id, soft=False),
    ).remote()
    big = m.big.remote(MB)
    small = m.small.remote()
    ac.wait([big, small], num_returns=2, timeout=60, fetch_local=False)
    abc.stop_node(abc.nodes[1], kill=True)
    with pytest.raises(ObjectLostError) as e:
        ac.get(big, timeout=60)
    print("big actor result on the dead node:", type(e.value).__name__, e.value)
    assert ac.get(small, timeout=10) == 42


def test_p3_owner_died_while_its_object_survives_elsewhere_raises_owner_died(abc):
    """An actor on B owns an object stored on C and hands the ref to the driver; B
    dies (the owner with it): reading the ref raises OwnerDiedError, no hang."""
    b, c = abc.nodes[1], abc.nodes[2]
    m = Maker.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(b.node_id, soft=False)
    ).remote()
    inner = ac.get(m.owned_elsewhere.remote(MB, c.node_id), timeout=60)[0]
    abc.stop_node(b, kill=True)
    with pytest.raises(OwnerDiedError):
        ac.get(inner, timeout=60)


def test_p3_wait_on_an_object_of_a_just_killed_node_waits_its_timeout_or_returns_it(abc):
    m = Maker.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(abc.nodes[1].node_id, soft=False)
    ).remote()
    big = m.big.remote(MB)
    ac.wait([big], timeout=60, fetch_local=False)
    abc.stop_node(abc.nodes[1], kill=True)
    t0 = time.monotonic()
    ready, _ = ac.wait([big], timeout=1.5)  # well within the TTL: its death is not known yet
    assert ready or time.monotonic() - t0 >= 1.4, "wait returned early with nothing ready"
