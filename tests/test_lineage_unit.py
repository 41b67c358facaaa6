"""The lineage state machine (actorcore._owner._lineage), without sockets (issue 10 item 3)."""

from __future__ import annotations

import pytest

from actorcore._owner._lineage import FailObject, Lineage, ReleaseLineage, Resubmit
from actorcore.errors import ObjectLostError, ObjectReconstructionFailedError

pytestmark = pytest.mark.timeout(10)


def _lineage() -> Lineage:
    lin = Lineage()
    assert lin.finished(b"t1", "f", "spec1", [b"o1", b"o2"], [b"o1", b"o2"], 2, ["dep"])
    lin.validate()
    return lin


def test_a_lost_object_of_a_retryable_task_is_resubmitted_once_for_all_its_returns():
    lin = _lineage()
    out = lin.lost([b"o1", b"o2"], "node died")
    assert [type(i) for i in out] == [Resubmit]
    assert out[0].record.spec == "spec1" and out[0].record.deps == ["dep"]
    assert lin.is_rebuilding(b"t1")
    assert lin.lost([b"o1"], "again") == []  # a rebuild is under way
    lin.validate()
    assert lin.finished(b"t1", "f", "spec1", [b"o1", b"o2"], [b"o1", b"o2"], 0)
    assert not lin.is_rebuilding(b"t1")
    assert lin.by_task[b"t1"].attempts_left == 1  # a rebuild uses a retry; not reset
    lin.validate()


def test_no_lineage_and_no_attempts_fail_with_the_error_naming_why():
    lin = Lineage()
    assert not lin.finished(b"t0", "g", "spec0", [b"x"], [b"x"], 0)  # max_retries=0: none kept
    (fail,) = lin.lost([b"x"], "its node died")
    assert isinstance(fail, FailObject) and type(fail.error) is ObjectLostError
    assert "no lineage" in str(fail.error) and "its node died" in str(fail.error)

    lin.finished(b"t1", "f", "spec1", [b"o1"], [b"o1"], 1)
    assert isinstance(lin.lost([b"o1"], "n")[0], Resubmit)
    lin.finished(b"t1", "f", "spec1", [b"o1"], [b"o1"], 0)
    (fail,) = lin.lost([b"o1"], "n")
    assert isinstance(fail.error, ObjectReconstructionFailedError)
    assert isinstance(fail.error, ObjectLostError)


def test_unlimited_retries_rebuild_every_time():
    lin = Lineage()
    lin.finished(b"t", "f", "s", [b"o"], [b"o"], -1)
    for _ in range(5):
        assert isinstance(lin.lost([b"o"], "n")[0], Resubmit)
        lin.finished(b"t", "f", "s", [b"o"], [b"o"], -1)
    assert lin.by_task[b"t"].rebuilds == 5


def test_lineage_is_freed_with_the_last_ref_that_needs_it():
    lin = _lineage()
    assert lin.freed([b"o1"]) == []
    (rel,) = lin.freed([b"o2"])
    assert isinstance(rel, ReleaseLineage) and rel.record.spec == "spec1"
    assert len(lin) == 0 and not lin.by_object
    assert lin.freed([b"o2"]) == []  # twice: nothing
    lin.validate()


def test_freed_during_a_rebuild_goes_when_the_rebuild_ends():
    lin = _lineage()
    lin.lost([b"o1"], "n")
    assert lin.freed([b"o1", b"o2"]) == []  # kept: the rebuild still runs
    lin.validate()
    assert not lin.finished(b"t1", "f", "spec1", [b"o1", b"o2"], [], 1)  # nothing live: dropped
    assert len(lin) == 0
    lin.validate()


def test_a_failed_rebuild_drops_the_record():
    lin = _lineage()
    assert lin.rebuild_failed(b"t1") is None  # not rebuilding: nothing to say
    lin.lost([b"o2"], "n")
    rec = lin.rebuild_failed(b"t1")
    assert rec is not None and rec.spec == "spec1"
    assert len(lin) == 0
    (fail,) = lin.lost([b"o1"], "n")  # no lineage left
    assert isinstance(fail, FailObject)
    lin.validate()
