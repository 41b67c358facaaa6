"""Sans-IO tests of the object store's bookkeeping: no processes, no sockets.

``store._allocator.ArenaAllocator`` (ranges of the shared arena) and
``store._state.StoreState`` (object life: create, seal, pin, free, spill,
restore, client death) are driven directly, with ``validate()`` after every
step.
"""

from __future__ import annotations

import itertools
import random

import pytest

from actorcore.store import (
    ALIGN,
    ArenaAllocator,
    ClientGone,
    Created,
    Free,
    Full,
    Location,
    NeedRestore,
    NeedSpill,
    ObjectState,
    RevokePins,
    StoreState,
    Unknown,
)

KB = 1024
MB = 1024 * KB


def _round(n: int) -> int:
    return (max(n, 1) + ALIGN - 1) // ALIGN * ALIGN


def _oid(i: int) -> bytes:
    return i.to_bytes(16, "big")


# --- ArenaAllocator -------------------------------------------------------------------------


class AllocModel:
    """An independent model of the arena: the live ranges, to check the allocator against."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used: dict[int, int] = {}  # offset -> rounded size

    def holes(self) -> list[tuple[int, int]]:
        out, pos = [], 0
        for off in sorted(self.used):
            if off > pos:
                out.append((pos, off - pos))
            pos = off + self.used[off]
        if pos < self.capacity:
            out.append((pos, self.capacity - pos))
        return out

    def first_fit(self, size: int) -> int | None:
        need = _round(size)
        for off, n in self.holes():
            if n >= need:
                return off
        return None


def _check_against(a: ArenaAllocator, m: AllocModel) -> None:
    a.validate()
    st = a.stats()
    assert st.capacity == m.capacity
    assert st.used == sum(m.used.values())
    assert st.free == m.capacity - st.used
    assert st.blocks == len(m.used)
    assert st.largest_free == max((n for _o, n in m.holes()), default=0)
    spans = sorted(m.used.items())
    for (o1, s1), (o2, _s2) in itertools.pairwise(spans):
        assert o1 + s1 <= o2, f"ranges overlap: [{o1}, {o1 + s1}) and {o2}"


def test_allocator_rejects_bad_capacity_and_rounds_down():
    with pytest.raises(ValueError):
        ArenaAllocator(0)
    with pytest.raises(ValueError):
        ArenaAllocator(-5)
    a = ArenaAllocator(10 * ALIGN + 7)
    assert a.capacity == 10 * ALIGN
    assert a.stats().free == 10 * ALIGN
    a.validate()


def test_allocator_hands_out_aligned_disjoint_ranges():
    a = ArenaAllocator(64 * KB)
    offs = []
    for size in (1, 63, 64, 65, 0, 1000):
        off = a.allocate(size)
        assert off is not None and off % ALIGN == 0
        offs.append((off, _round(size)))
        a.validate()
    offs.sort()
    for (o1, s1), (o2, _s2) in itertools.pairwise(offs):
        assert o1 + s1 <= o2
    assert a.stats().used == sum(s for _o, s in offs)
    assert a.stats().blocks == 6


def test_allocator_full_and_fits_ever():
    a = ArenaAllocator(4 * KB)
    assert a.fits_ever(4 * KB)
    assert not a.fits_ever(4 * KB + 1)
    first = a.allocate(3 * KB)
    assert first == 0
    assert a.allocate(2 * KB) is None, "only 1 KiB is left"
    a.validate()
    assert a.stats().used == 3 * KB
    assert a.allocate(1 * KB) == 3 * KB
    assert a.allocate(1) is None
    a.validate()
    a.free(first)
    assert a.allocate(2 * KB) == 0
    a.validate()


def test_allocator_first_fit_reuses_low_ranges():
    a = ArenaAllocator(1 * MB)
    x = a.allocate(10 * KB)
    y = a.allocate(10 * KB)
    z = a.allocate(10 * KB)
    assert (x, y, z) == (0, 10 * KB, 20 * KB)
    a.free(x)
    a.validate()
    assert a.allocate(4 * KB) == 0, "the lowest hole that fits is used first"
    assert a.allocate(8 * KB) == 30 * KB, "the 6 KiB left at the bottom is too small"
    assert a.allocate(6 * KB) == 4 * KB
    a.validate()


def test_allocator_free_merges_neighbours():
    cap = 8 * KB
    a = ArenaAllocator(cap)
    offs = [a.allocate(KB) for _ in range(8)]
    assert a.allocate(1) is None
    # free in an order that exercises merge-with-next, merge-with-previous and both
    for i in (1, 3, 2, 0, 7, 5, 6, 4):
        a.free(offs[i])
        a.validate()
    st = a.stats()
    assert st.used == 0 and st.blocks == 0
    assert st.largest_free == cap, "freed neighbours must merge into one hole"
    assert a.allocate(cap) == 0
    a.validate()


def test_allocator_double_free_is_refused():
    a = ArenaAllocator(4 * KB)
    off = a.allocate(100)
    a.free(off)
    with pytest.raises((KeyError, ValueError, AssertionError)):
        a.free(off)
    with pytest.raises((KeyError, ValueError, AssertionError)):
        a.free(12345)
    a.validate()
    assert a.stats().used == 0


@pytest.mark.parametrize("seed", range(6))
def test_allocator_randomized_against_a_model(seed):
    rng = random.Random(seed)
    cap = rng.choice([64 * KB, 1 * MB, 3 * MB + 4 * ALIGN])
    a = ArenaAllocator(cap)
    m = AllocModel(a.capacity)
    for _step in range(1500):
        if m.used and rng.random() < 0.45:
            off = rng.choice(list(m.used))
            a.free(off)
            del m.used[off]
        else:
            size = rng.choice(
                [0, 1, rng.randrange(1, 200), rng.randrange(1, cap // 8), rng.randrange(1, cap)]
            )
            expect = m.first_fit(size)
            got = a.allocate(size)
            assert got == expect, f"first fit of {size} bytes: expected {expect}, got {got}"
            if got is not None:
                m.used[got] = _round(size)
        _check_against(a, m)
    for off in list(m.used):
        a.free(off)
        del m.used[off]
        _check_against(a, m)
    assert a.allocate(a.capacity) == 0


# --- StoreState: helpers ------------------------------------------------------------------------

W, R1, R2 = "writer", "reader1", "reader2"
OWNER, OTHER = "owner", "other-owner"


def _sealed(s: StoreState, oid: bytes, size: int, owner=OWNER, creator=W, meta=b"m") -> int:
    r = s.create(oid, size, creator, owner)
    assert isinstance(r, Created), r
    assert s.seal(oid, meta) is True
    s.validate()
    return r.offset


def _spill(s: StoreState, oid: bytes, path: str = "/spill/x") -> None:
    span = s.begin_spill(oid)
    assert span is not None
    assert s.spill_done(oid, path) is None
    s.validate()


def _state(s: StoreState, oid: bytes) -> ObjectState | None:
    e = s.entries.get(oid)
    return e.state if e is not None else None


# --- StoreState: create / seal / open ---------------------------------------------------------


def test_object_is_visible_only_once_sealed():
    s = StoreState(1 * MB)
    a = _oid(1)
    r = s.create(a, 1000, W, OWNER)
    assert isinstance(r, Created)
    s.validate()
    assert _state(s, a) is ObjectState.CREATED
    assert isinstance(s.open(a, R1), Unknown), "an unsealed object must not be readable"
    assert s.stats().used == _round(1000)
    assert s.seal(a, b"meta") is True
    s.validate()
    loc = s.open(a, R1)
    assert loc == Location(r.offset, 1000, b"meta")
    st = s.stats()
    assert (st.objects, st.sealed, st.pinned) == (1, 1, 1)
    s.validate()


def test_create_twice_replaces_only_an_unread_copy_of_the_same_owner():
    """A retried task writes its return value again: the sealed copy a dead worker
    left (never handed to the owner, read by nobody) is replaced; anything else
    is refused."""
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 100)
    with pytest.raises(AssertionError):
        s.seal(a, b"again")
    # same owner, nobody reading: replaced by a fresh, unsealed object
    assert isinstance(s.create(a, 200, W, OWNER), Created)
    assert s.entries[a].state is ObjectState.CREATED and s.entries[a].size == 200
    # still being written: refused
    with pytest.raises(ValueError, match=a.hex()):
        s.create(a, 100, W, OWNER)
    s.seal(a, b"m")
    # pinned by a reader: refused
    s.open(a, R1)
    with pytest.raises(ValueError, match=a.hex()):
        s.create(a, 100, W, OWNER)
    s.release(a, R1)
    # another owner: refused
    with pytest.raises(ValueError, match=a.hex()):
        s.create(a, 100, W, "someone-else")
    s.validate()


def test_open_of_unknown_object():
    s = StoreState(1 * MB)
    assert s.open(_oid(9), R1) == Unknown(_oid(9))
    s.release(_oid(9), R1)  # harmless
    assert s.free(_oid(9)) is None
    s.validate()


def test_abort_frees_an_unsealed_object_only():
    s = StoreState(1 * MB)
    a, b = _oid(1), _oid(2)
    s.create(a, 5000, W, OWNER)
    _sealed(s, b, 5000)
    s.abort(a)
    s.abort(b)  # sealed: no effect
    s.validate()
    assert a not in s.entries and b in s.entries
    assert s.stats().used == _round(5000)
    assert isinstance(s.open(b, R1), Location)


def test_free_of_an_unsealed_object_drops_it_at_seal():
    s = StoreState(1 * MB)
    a = _oid(1)
    s.create(a, 4000, W, OWNER)
    assert s.free(a) is None
    s.validate()
    assert a in s.entries, "the writer still holds the range"
    assert s.seal(a, b"m") is False
    s.validate()
    assert a not in s.entries
    assert s.stats().used == 0


# --- pins ------------------------------------------------------------------------------------


def test_a_pin_delays_free_until_release():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 10_000)
    assert isinstance(s.open(a, R1), Location)
    s.free(a)
    s.validate()
    assert a in s.entries, "a pinned object must not be freed"
    assert s.stats().used == _round(10_000)
    assert isinstance(s.open(a, R2), Unknown), "a freed object cannot be opened again"
    s.release(a, R1)
    s.validate()
    assert a not in s.entries
    assert s.stats().used == 0 and s.stats().objects == 0


def test_freeing_a_pinned_object_asks_each_pinning_client_to_drop_its_cached_pin():
    s = StoreState(1 * MB)
    a, b = _oid(1), _oid(2)
    _sealed(s, a, 10_000)
    _sealed(s, b, 10_000)
    assert isinstance(s.open(a, R1), Location)
    assert isinstance(s.open(a, R2), Location)
    assert isinstance(s.open(b, R1), Location)
    assert s.cached_pins() == {R1: [a, b], R2: [a]}
    out = s.handle(Free((a,), OWNER))
    assert sorted((i.client, i.oids) for i in out if isinstance(i, RevokePins)) == sorted(
        [(R1, (a,)), (R2, (a,))]
    )
    assert s.cached_pins() == {R1: [b]}, "a freed object is no read cache's to keep"
    s.release(a, R1)
    s.release(a, R2)
    s.validate()
    assert a not in s.entries
    # an object nobody pins is dropped at once: nothing to revoke
    c = _oid(3)
    _sealed(s, c, 10_000)
    assert not [i for i in s.handle(Free((c,), OWNER)) if isinstance(i, RevokePins)]
    assert c not in s.entries


def test_pins_count_per_client():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 1000)
    for _ in range(3):
        assert isinstance(s.open(a, R1), Location)
    assert isinstance(s.open(a, R2), Location)
    assert s.listing()[0]["pins"] == 4
    s.free(a)
    s.release(a, R1)
    s.release(a, R1)
    s.validate()
    assert a in s.entries
    s.release(a, R2)
    assert a in s.entries, "R1 still holds one pin"
    s.release(a, R1)
    s.validate()
    assert a not in s.entries


def test_release_with_count():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 1000)
    for _ in range(5):
        s.open(a, R1)
    s.free(a)
    s.release(a, R1, count=4)
    assert a in s.entries
    s.release(a, R1, count=1)
    assert a not in s.entries
    s.validate()


def test_free_is_idempotent():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 1000)
    s.free(a)
    s.free(a)
    s.validate()
    assert s.stats().objects == 0 and s.stats().used == 0


def test_reused_range_after_free_is_not_the_pinned_one():
    """The bytes a reader pins are never handed to another object."""
    s = StoreState(4 * KB)
    a = _oid(1)
    off_a = _sealed(s, a, 2 * KB)
    s.open(a, R1)
    s.free(a)
    b = _oid(2)
    r = s.create(b, 2 * KB, W, OWNER)
    assert isinstance(r, Created)
    assert r.offset != off_a and not (off_a <= r.offset < off_a + 2 * KB)
    assert isinstance(s.create(_oid(3), 1, W, OWNER), Full), "the pinned range is still taken"
    s.release(a, R1)
    r3 = s.create(_oid(3), 2 * KB, W, OWNER)
    assert isinstance(r3, Created) and r3.offset == off_a
    s.validate()


# --- capacity ---------------------------------------------------------------------------------


def test_full_when_larger_than_the_store_names_both_sizes():
    s = StoreState(1 * MB)
    r = s.create(_oid(1), 2 * MB, W, OWNER)
    assert isinstance(r, Full)
    assert str(2 * MB) in r.message and str(1 * MB) in r.message
    assert s.stats().objects == 0
    s.validate()


def test_full_when_everything_is_pinned_names_the_sizes():
    s = StoreState(1 * MB)
    a, b = _oid(1), _oid(2)
    _sealed(s, a, 600 * KB)
    s.open(a, R1)
    s.create(b, 300 * KB, W, OWNER)  # being written: not spillable either
    r = s.create(_oid(3), 200 * KB, W, OWNER)
    assert isinstance(r, Full), r
    assert str(200 * KB) in r.message, r.message
    assert str(1 * MB) in r.message, r.message
    assert str(s.stats().used) in r.message, r.message
    s.validate()


def test_need_spill_lists_least_recently_used_first():
    s = StoreState(1 * MB)
    a, b, c = _oid(1), _oid(2), _oid(3)
    for o in (a, b, c):
        _sealed(s, o, 300 * KB)
    # touch a: b becomes the least recently used
    s.open(a, R1)
    s.release(a, R1)
    r = s.create(_oid(4), 300 * KB, W, OWNER)
    assert isinstance(r, NeedSpill), r
    assert r.oids == [b]
    r = s.create(_oid(4), 500 * KB, W, OWNER)
    assert isinstance(r, NeedSpill)
    assert r.oids == [b, c], "enough LRU victims to cover the request, oldest first"
    s.validate()


def test_spill_candidates_skip_pinned_unsealed_and_freed_objects():
    s = StoreState(1 * MB)
    pinned, writing, freed_pinned, free_ok = _oid(1), _oid(2), _oid(3), _oid(4)
    _sealed(s, pinned, 200 * KB)
    s.open(pinned, R1)
    s.create(writing, 200 * KB, W, OWNER)
    _sealed(s, freed_pinned, 200 * KB)
    s.open(freed_pinned, R2)
    s.free(freed_pinned)
    _sealed(s, free_ok, 200 * KB)
    r = s.create(_oid(5), 400 * KB, W, OWNER)
    assert isinstance(r, NeedSpill)
    assert r.oids == [free_ok]
    assert s.begin_spill(pinned) is None
    assert s.begin_spill(writing) is None
    assert s.begin_spill(freed_pinned) is None
    s.validate()


def test_secondary_copies_are_evicted_before_primaries():
    s = StoreState(1 * MB)
    prim, sec = _oid(1), _oid(2)
    _sealed(s, prim, 400 * KB)
    _sealed(s, sec, 400 * KB)
    s.entries[sec].primary = False  # a copy pulled from another node
    r = s.create(_oid(3), 400 * KB, W, OWNER)
    assert isinstance(r, NeedSpill)
    assert r.oids[0] == sec


# --- spilling and restoring -------------------------------------------------------------------


def test_spill_then_restore_round_trip():
    s = StoreState(1 * MB)
    a = _oid(1)
    off = _sealed(s, a, 300 * KB, meta=b"layout")
    span = s.begin_spill(a)
    assert span == (off, 300 * KB)
    assert _state(s, a) is ObjectState.SPILLING
    s.validate()
    assert s.spill_done(a, "/spill/a") is None
    s.validate()
    st = s.stats()
    assert _state(s, a) is ObjectState.SPILLED
    assert (st.used, st.spilled, st.spilled_bytes, st.spill_count) == (0, 1, 300 * KB, 1)
    assert s.listing()[0]["spilled"] is True
    assert s.open(a, R1) == NeedRestore(a)
    r = s.begin_restore(a)
    assert isinstance(r, Created)
    assert _state(s, a) is ObjectState.RESTORING
    s.validate()
    assert s.open(a, R1) == NeedRestore(a), "not readable until the bytes are back"
    assert s.begin_restore(a) is None, "already restoring"
    assert s.restore_done(a, True) == "/spill/a", "the spill file is deleted once restored"
    s.validate()
    assert _state(s, a) is ObjectState.SEALED
    assert s.stats().restore_count == 1 and s.stats().spilled == 0
    assert s.open(a, R1) == Location(r.offset, 300 * KB, b"layout")
    s.validate()


def test_a_reader_arriving_during_spill_cancels_it():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 100 * KB)
    s.begin_spill(a)
    loc = s.open(a, R1)
    assert isinstance(loc, Location), "bytes are still in memory while spilling"
    assert s.spill_done(a, "/spill/a") == "/spill/a", "the useless spill file must be deleted"
    s.validate()
    assert _state(s, a) is ObjectState.SEALED
    assert s.stats().used == _round(100 * KB)
    assert s.stats().spill_count == 0


def test_failed_spill_keeps_the_object_in_memory():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 100 * KB)
    s.begin_spill(a)
    assert s.spill_done(a, None) is None
    s.validate()
    assert _state(s, a) is ObjectState.SEALED
    assert isinstance(s.open(a, R1), Location)


def test_failed_restore_returns_to_spilled_and_can_retry():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 100 * KB)
    _spill(s, a, "/spill/a")
    assert isinstance(s.begin_restore(a), Created)
    assert s.restore_done(a, False) is None
    s.validate()
    assert _state(s, a) is ObjectState.SPILLED
    assert s.stats().used == 0
    assert isinstance(s.begin_restore(a), Created)
    assert s.restore_done(a, True) == "/spill/a"
    s.validate()


def test_illegal_transitions_are_ignored_or_refused():
    s = StoreState(1 * MB)
    a = _oid(1)
    s.create(a, 100, W, OWNER)
    assert s.begin_spill(a) is None, "an unsealed object cannot spill"
    assert s.begin_restore(a) is None
    s.seal(a, b"m")
    assert s.begin_restore(a) is None, "a sealed object is not spilled"
    assert s.restore_done(a, True) is None
    s.validate()
    assert _state(s, a) is ObjectState.SEALED


def test_restore_needs_room_and_spills_others():
    s = StoreState(1 * MB)
    a, b = _oid(1), _oid(2)
    _sealed(s, a, 600 * KB)
    _spill(s, a, "/spill/a")
    _sealed(s, b, 600 * KB)
    r = s.begin_restore(a)
    assert isinstance(r, NeedSpill) and r.oids == [b]
    s.open(b, R1)
    r = s.begin_restore(a)
    assert isinstance(r, Full), r
    assert str(600 * KB) in r.message
    s.release(b, R1)
    _spill(s, b, "/spill/b")
    assert isinstance(s.begin_restore(a), Created)
    s.validate()


def test_free_of_a_spilled_object_returns_its_file():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 100 * KB)
    _spill(s, a, "/spill/a")
    assert s.free(a) == "/spill/a"
    s.validate()
    assert a not in s.entries and s.stats().spilled_bytes == 0


def test_free_during_spill_drops_it_when_the_spill_ends():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 100 * KB)
    s.begin_spill(a)
    assert s.free(a) is None
    assert a in s.entries
    s.validate()
    assert s.spill_done(a, "/spill/a") == "/spill/a"
    s.validate()
    assert a not in s.entries and s.stats().used == 0


def test_free_during_restore_drops_it_when_the_restore_ends():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 100 * KB)
    _spill(s, a, "/spill/a")
    s.begin_restore(a)
    assert s.free(a) is None
    s.validate()
    assert s.restore_done(a, True) == "/spill/a"
    s.validate()
    assert a not in s.entries and s.stats().used == 0


def test_free_during_a_failed_restore_does_not_leak():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 100 * KB)
    _spill(s, a, "/spill/a")
    s.begin_restore(a)
    s.free(a)
    path = s.restore_done(a, False)
    s.validate()
    assert a not in s.entries, "a freed object whose restore failed must be forgotten"
    assert path == "/spill/a", "and its spill file handed back for deletion"


# --- client death ------------------------------------------------------------------------------


def test_client_gone_drops_pins():
    s = StoreState(1 * MB)
    a, b = _oid(1), _oid(2)
    _sealed(s, a, 1000)
    _sealed(s, b, 1000)
    s.open(a, R1)
    s.open(a, R1)
    s.open(b, R1)
    s.open(b, R2)
    s.free(a)
    s.free(b)
    assert s.client_gone(R1) == []
    s.validate()
    assert a not in s.entries, "R1's pins went with it"
    assert b in s.entries, "R2 still pins b"
    s.client_gone(R2)
    assert b not in s.entries
    s.validate()
    assert s.stats().used == 0


def test_an_owner_gone_asks_the_read_caches_to_let_go_of_its_objects():
    """Objects freed because their owner died are revoked like freed ones: a
    freed object is never revoked later (cached_pins() skips it), so a read
    cache would hold it, unreclaimable, until it evicts it by itself."""
    s = StoreState(1 * MB)
    mine, other, gone_first = _oid(1), _oid(2), _oid(3)
    _sealed(s, mine, 10_000, owner=OWNER)
    _sealed(s, other, 10_000, owner=OTHER)
    _sealed(s, gone_first, 10_000, owner=OWNER)
    s.open(mine, R1)
    s.open(mine, R2)
    s.open(other, R1)
    out = s.handle(ClientGone(OWNER))
    revokes = sorted((i.client, i.oids) for i in out if isinstance(i, RevokePins))
    assert revokes == sorted([(R1, (mine,)), (R2, (mine,))])
    assert gone_first not in s.entries and other in s.entries
    s.release(mine, R1)
    s.release(mine, R2)
    s.validate()
    assert mine not in s.entries


def test_client_gone_drops_its_unsealed_objects():
    s = StoreState(1 * MB)
    a = _oid(1)
    s.create(a, 50 * KB, W, OWNER)  # a worker writing a return value owned by OWNER
    s.client_gone(W)
    s.validate()
    assert a not in s.entries, "a half-written object must never become readable"
    assert s.stats().used == 0
    assert isinstance(s.open(a, R1), Unknown)


def test_client_gone_keeps_sealed_objects_it_created_for_others():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 50 * KB, owner=OWNER, creator=W)
    s.client_gone(W)
    s.validate()
    assert isinstance(s.open(a, R1), Location)


def test_client_gone_frees_what_it_owned():
    s = StoreState(1 * MB)
    mine, spilled, pinned, theirs, unsealed = (_oid(i) for i in range(1, 6))
    _sealed(s, mine, 100 * KB, owner=OWNER)
    _sealed(s, spilled, 100 * KB, owner=OWNER)
    _spill(s, spilled, "/spill/s")
    _sealed(s, pinned, 100 * KB, owner=OWNER)
    s.open(pinned, R1)
    _sealed(s, theirs, 100 * KB, owner=OTHER)
    s.create(unsealed, 100 * KB, W, OWNER)  # written by W for OWNER
    paths = s.client_gone(OWNER)
    s.validate()
    assert paths == ["/spill/s"]
    assert mine not in s.entries and spilled not in s.entries
    assert pinned in s.entries, "still pinned by R1"
    assert isinstance(s.open(pinned, R2), Unknown), "but no longer readable by newcomers"
    assert theirs in s.entries
    assert unsealed in s.entries and s.entries[unsealed].freed
    assert s.seal(unsealed, b"m") is False
    s.release(pinned, R1)
    s.validate()
    assert set(s.entries) == {theirs}
    assert s.stats().used == _round(100 * KB)


# --- stats and listing ------------------------------------------------------------------------


def test_stats_and_listing():
    s = StoreState(1 * MB)
    a, b = _oid(1), _oid(2)
    _sealed(s, a, 1000, owner=OWNER)
    _sealed(s, b, 2000, owner=OTHER)
    _spill(s, b, "/spill/b")
    s.open(a, R1)
    st = s.stats()
    assert st.capacity == 1 * MB
    assert st.used == _round(1000)
    assert (st.objects, st.sealed, st.spilled, st.spilled_bytes, st.pinned) == (2, 1, 1, 2000, 1)
    rows = {r["object_id"]: r for r in s.listing()}
    assert rows[a.hex()] == {
        "object_id": a.hex(),
        "size": 1000,
        "state": "sealed",
        "owner": OWNER,
        "pins": 1,
        "spilled": False,
    }
    assert rows[b.hex()]["spilled"] is True and rows[b.hex()]["owner"] == OTHER


def test_validate_catches_corruption():
    s = StoreState(1 * MB)
    a = _oid(1)
    _sealed(s, a, 1000)
    s.entries[a].offset = None  # a sealed object that lost its range
    with pytest.raises(AssertionError):
        s.validate()


# --- randomized -------------------------------------------------------------------------------


class _Driver:
    """Plays the daemon against StoreState with random events; checks invariants."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.s = StoreState(256 * KB)
        self.next = 1
        self.clients = ["c0", "c1", "c2"]
        self.pins: dict[tuple[bytes, str], int] = {}
        self.spilling: set[bytes] = set()
        self.restoring: set[bytes] = set()
        self.files: set[str] = set()  # spill files on "disk"
        self.deleted: set[str] = set()

    def delete(self, path: str | None) -> None:
        if path is not None:
            assert path in self.files, f"asked to delete an unknown file {path}"
            self.files.discard(path)
            self.deleted.add(path)

    def step(self) -> None:
        s, rng = self.s, self.rng
        oids = list(s.entries)
        op = rng.choices(
            [
                "create",
                "seal",
                "open",
                "release",
                "free",
                "spill",
                "spill_done",
                "restore",
                "restore_done",
                "abort",
                "gone",
            ],
            [3, 4, 2, 2, 1, 2, 2, 2, 2, 0.3, 0.2],
        )[0]
        if op == "create":
            oid = _oid(self.next)
            self.next += 1
            creator, owner = rng.choice(self.clients), rng.choice(self.clients)
            r = s.create(oid, rng.randrange(1, 90 * KB), creator, owner)
            if isinstance(r, NeedSpill):
                for v in r.oids:
                    assert s.entries[v].state is ObjectState.SEALED and not s.entries[v].pins
        elif not oids:
            return
        else:
            oid = rng.choice(oids)
            e = s.entries[oid]
            if op == "seal" and e.state is ObjectState.CREATED:
                s.seal(oid, b"m")
            elif op == "open":
                c = rng.choice(self.clients)
                r = s.open(oid, c)
                if isinstance(r, Location):
                    assert not e.freed and e.state in (ObjectState.SEALED, ObjectState.SPILLING)
                    self.pins[(oid, c)] = self.pins.get((oid, c), 0) + 1
            elif op == "release":
                held = [k for k in self.pins if k[0] == oid]
                if held:
                    k = rng.choice(held)
                    s.release(oid, k[1])
                    self.pins[k] -= 1
                    if not self.pins[k]:
                        del self.pins[k]
            elif op == "free":
                self.delete(s.free(oid))
            elif op == "spill" and s.begin_spill(oid) is not None:
                self.spilling.add(oid)
            elif op == "spill_done" and oid in self.spilling:
                self.spilling.discard(oid)
                path = f"/spill/{oid.hex()}" if rng.random() < 0.9 else None  # None: write failed
                if path is not None:
                    self.files.add(path)
                self.delete(s.spill_done(oid, path))
            elif op == "restore" and isinstance(s.begin_restore(oid), Created):
                self.restoring.add(oid)
            elif op == "restore_done" and oid in self.restoring:
                self.restoring.discard(oid)
                self.delete(s.restore_done(oid, rng.random() < 0.9))
            elif op == "abort":
                s.abort(oid)
            elif op == "gone":
                c = rng.choice(self.clients)
                for p in s.client_gone(c):
                    self.delete(p)
                for k in [k for k in self.pins if k[1] == c]:
                    del self.pins[k]
        self.check()

    def check(self) -> None:
        s = self.s
        s.validate()
        for (oid, _c), n in self.pins.items():
            assert n > 0
            assert oid in s.entries, "a pinned object was dropped"
        in_mem = [e for e in s.entries.values() if e.offset is not None]
        assert s.stats().used == sum(_round(e.size) for e in in_mem)
        for e in s.entries.values():
            if e.freed and not e.pins:
                busy = (ObjectState.CREATED, ObjectState.SPILLING, ObjectState.RESTORING)
                assert e.state in busy, f"freed, unpinned object kept in state {e.state}"
        for oid in self.spilling:
            if oid in s.entries:
                assert s.entries[oid].state is ObjectState.SPILLING
        spilled_paths = {e.spill_path for e in s.entries.values() if e.spill_path}
        assert spilled_paths <= self.files | {None}


@pytest.mark.parametrize("seed", range(8))
def test_store_state_randomized(seed):
    d = _Driver(seed)
    for _ in range(2500):
        d.step()
    # drain: finish in-flight work, release every pin, free everything
    s = d.s
    for oid in list(d.spilling):
        d.delete(s.spill_done(oid, None))
    for oid in list(d.restoring):
        d.delete(s.restore_done(oid, True))
    d.spilling.clear()
    d.restoring.clear()
    for (oid, c), n in list(d.pins.items()):
        s.release(oid, c, n)
    d.pins.clear()
    for oid, e in list(s.entries.items()):
        if e.state is ObjectState.CREATED:
            s.seal(oid, b"m")
        d.delete(s.free(oid))
    s.validate()
    assert s.entries == {}
    assert s.stats().used == 0
    assert d.files == set(), f"spill files never handed back for deletion: {sorted(d.files)}"
