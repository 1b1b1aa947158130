"""The replica selector: client-go's choices per ReplicaReadType, stale reads, liveness."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from tikv_pd.region_cache import Liveness, Peer, PeerRole, Region, RegionEpoch
from tikv_pd.replica_selector import (
    MAX_REPLICA_ATTEMPTS,
    ReplicaSelector,
    ReplicaTarget,
    StoreHealth,
)

LEADER = Peer(11, 1)
F2 = Peer(12, 2)
F3 = Peer(13, 3)
LEARNER = Peer(14, 4, PeerRole.LEARNER)
WITNESS = Peer(15, 5, is_witness=True)


def region(*peers: Peer, leader: Peer | None = LEADER) -> Region:
    return Region(7, b"a", b"z", RegionEpoch(1, 1), peers or (LEADER, F2, F3), leader)


def targets(selector: ReplicaSelector, unreachable: tuple[int, ...] = ()) -> list[ReplicaTarget]:
    out = []
    while (t := selector.next(unreachable)) is not None:
        out.append(t)
        assert len(out) < 50
    return out


def stores(ts: list[ReplicaTarget]) -> list[int]:
    return [t.peer.store_id for t in ts]


def test_follower_reads_every_follower_once_then_the_leader() -> None:
    for seed in range(20):
        sel = ReplicaSelector(region(), "follower", rng=random.Random(seed))
        ts = targets(sel)
        assert sorted(stores(ts[:2])) == [2, 3]
        assert stores(ts[2:]) == [1]
        assert not any(t.stale_read for t in ts)
        # Replica reads off the leader only (client-go nextForReplicaReadMixed: the
        # leader, reached last, gets a normal read).
        assert [t.replica_read for t in ts] == [True, True, False]


def test_follower_reads_spread_over_the_followers() -> None:
    rng = random.Random(1)
    first = Counter(
        ReplicaSelector(region(), "follower", rng=rng).next().peer.store_id  # type: ignore[union-attr]
        for _ in range(400)
    )
    assert set(first) == {2, 3}
    assert min(first.values()) > 120


def test_follower_includes_learners() -> None:
    sel = ReplicaSelector(region(LEADER, F2, LEARNER), "follower", rng=random.Random(3))
    assert sorted(stores(targets(sel))[:2]) == [2, 4]


def test_mixed_reads_any_replica_leader_included() -> None:
    rng = random.Random(2)
    first = Counter(
        ReplicaSelector(region(), "mixed", rng=rng).next().peer.store_id  # type: ignore[union-attr]
        for _ in range(600)
    )
    assert set(first) == {1, 2, 3}
    sel = ReplicaSelector(region(), "mixed", rng=rng)
    ts = targets(sel)
    assert sorted(stores(ts)) == [1, 2, 3]
    # client-go flags a replica read only when the target is not the leader.
    assert all(t.replica_read == (t.peer != LEADER) for t in ts)


def test_prefer_leader_reads_the_leader_first_then_followers() -> None:
    sel = ReplicaSelector(region(), "prefer-leader", rng=random.Random(0))
    ts = targets(sel)
    assert stores(ts)[0] == 1
    assert sorted(stores(ts)[1:]) == [2, 3]


def test_prefer_leader_skips_an_unreachable_leader() -> None:
    sel = ReplicaSelector(
        region(),
        "prefer-leader",
        liveness=lambda s: Liveness.UNREACHABLE if s == 1 else Liveness.REACHABLE,
    )
    assert sorted(stores(targets(sel))) == [2, 3]


def test_learner_prefers_learners_then_any_replica() -> None:
    sel = ReplicaSelector(region(LEADER, F2, LEARNER), "learner", rng=random.Random(5))
    ts = targets(sel)
    assert stores(ts)[0] == 4
    assert sorted(stores(ts)[1:]) == [1, 2]
    no_learner = ReplicaSelector(region(), "learner", rng=random.Random(5))
    assert sorted(stores(targets(no_learner))) == [1, 2, 3]


def test_witnesses_and_tiflash_never_serve_reads() -> None:
    sel = ReplicaSelector(
        region(LEADER, F2, F3, WITNESS),
        "follower",
        is_tiflash=lambda s: s == 3,
    )
    assert stores(targets(sel)) == [2, 1]


def test_unreachable_stores_are_skipped() -> None:
    sel = ReplicaSelector(region(), "follower", rng=random.Random(0))
    assert stores(targets(sel, unreachable=(2,))) == [3, 1]
    down = ReplicaSelector(
        region(), "mixed", liveness=lambda s: Liveness.UNREACHABLE if s == 3 else Liveness.UNKNOWN
    )
    assert sorted(stores(targets(down))) == [1, 2]


def test_stale_read_first_any_replica_then_leader_read_then_replica_reads() -> None:
    for seed in range(50):
        sel = ReplicaSelector(region(), "leader", stale_read=True, rng=random.Random(seed))
        first = sel.next()
        assert first is not None and first.stale_read and not first.replica_read
        if first.peer == LEADER:
            continue  # test_stale_read_that_started_on_the_leader_retries_on_followers
        sel.on_data_is_not_ready()
        second = sel.next()
        assert second == ReplicaTarget(LEADER, replica_read=False, stale_read=False)
        rest = targets(sel)
        # Replica reads now; the untried follower first, then the one that refused.
        assert all(t.replica_read and not t.stale_read for t in rest)
        other = ({2, 3} - {first.peer.store_id}).pop()
        assert stores(rest) == [other, first.peer.store_id]
        return
    pytest.fail("no seed chose a follower first")


def test_stale_read_that_started_on_the_leader_retries_on_followers() -> None:
    for seed in range(50):
        sel = ReplicaSelector(region(), "follower", stale_read=True, rng=random.Random(seed))
        first = sel.next()
        assert first is not None
        if first.peer != LEADER:
            continue
        second = sel.next()
        assert second is not None and second.peer != LEADER
        assert second.replica_read and not second.stale_read
        return
    pytest.fail("no seed chose the leader first")


def test_stale_read_spreads_over_every_replica() -> None:
    rng = random.Random(9)
    first = Counter(
        ReplicaSelector(region(), stale_read=True, rng=rng).next().peer.store_id  # type: ignore[union-attr]
        for _ in range(600)
    )
    assert set(first) == {1, 2, 3}


def test_not_leader_with_a_usable_leader_switches_to_leader_reads() -> None:
    sel = ReplicaSelector(region(LEADER, F2, F3, leader=F2), "follower", rng=random.Random(0))
    first = sel.next()
    assert first is not None and first.peer != F2
    sel.update_region(region(LEADER, F2, F3, leader=LEADER))
    sel.on_not_leader(LEADER)
    assert sel.read_type == "leader"
    assert sel.next() == ReplicaTarget(LEADER, replica_read=False, stale_read=False)


def test_leader_reads_give_up_on_a_leader_that_said_not_leader() -> None:
    sel = ReplicaSelector(region(), "leader")
    assert sel.next() == ReplicaTarget(LEADER, replica_read=False, stale_read=False)
    sel.on_not_leader(None)
    rest = targets(sel)
    assert sorted(stores(rest)) == [2, 3]
    assert not any(t.replica_read for t in rest)


def test_leader_attempts_are_bounded() -> None:
    sel = ReplicaSelector(region(LEADER), "leader")
    ts = targets(sel)
    assert len(ts) == MAX_REPLICA_ATTEMPTS
    assert stores(ts) == [1] * MAX_REPLICA_ATTEMPTS


def test_update_region_keeps_what_was_learned() -> None:
    sel = ReplicaSelector(region(), "follower", rng=random.Random(0))
    first = sel.next()
    assert first is not None
    sel.update_region(region(LEADER, F2, F3, leader=F3 if first.peer == F2 else F2))
    # The peer tried first is not tried again; the new leader is the last resort.
    rest = targets(sel)
    assert first.peer not in [t.peer for t in rest]
    assert sel.same_region(region())
    assert not sel.same_region(Region(7, b"a", b"z", RegionEpoch(1, 2), (LEADER,), LEADER))


def test_fast_retry_only_off_the_leader() -> None:
    assert ReplicaSelector(region(), "follower").can_fast_retry()
    leader = ReplicaSelector(region(), "leader")
    leader.next()
    assert not leader.can_fast_retry()
    leader.on_server_is_busy()
    assert leader.can_fast_retry()


def test_no_leader_known() -> None:
    sel = ReplicaSelector(region(leader=None), "prefer-leader", rng=random.Random(0))
    assert sorted(stores(targets(sel))) == [1, 2, 3]


def test_bad_read_type() -> None:
    with pytest.raises(ValueError, match="replica_read"):
        ReplicaSelector(region(), "nearest")  # type: ignore[arg-type]


def test_store_health_skips_a_store_for_the_recheck_interval() -> None:
    now = [100.0]
    health = StoreHealth(lambda: now[0], recheck_seconds=1.0)
    assert not health.has_unreachable()
    health.mark_unreachable(2)
    assert health.has_unreachable()
    sel = ReplicaSelector(region(), "follower", liveness=health.liveness)
    assert stores(targets(sel)) == [3, 1]
    now[0] += 1.0  # the re-check: the next read may try it again
    assert health.liveness(2) is Liveness.UNKNOWN
    sel = ReplicaSelector(region(), "follower", liveness=health.liveness, rng=random.Random(0))
    assert sorted(stores(targets(sel))[:2]) == [2, 3]
    health.mark_unreachable(2)
    health.mark_reachable(2)
    assert health.liveness(2) is Liveness.UNKNOWN and not health.has_unreachable()


ZONES = {1: (("zone", "z1"),), 2: (("zone", "z2"),), 3: (("zone", "z3"), ("disk", "ssd"))}


def test_stale_read_prefers_the_local_replica() -> None:
    for seed in range(10):
        sel = ReplicaSelector(
            region(),
            stale_read=True,
            labels=[("zone", "z3")],
            store_labels=ZONES.get,
            rng=random.Random(seed),
        )
        assert sel.next() == ReplicaTarget(F3, replica_read=False, stale_read=True)


def test_stale_read_with_a_local_leader_reads_the_leader() -> None:
    # client-go: with labels, the leader is preferred among equally matching replicas.
    sel = ReplicaSelector(
        region(), stale_read=True, labels=[("zone", "z1")], store_labels=ZONES.get
    )
    assert sel.next() == ReplicaTarget(LEADER, replica_read=False, stale_read=True)


def test_stale_read_without_a_local_replica_stays_stale_on_a_remote_follower() -> None:
    for seed in range(20):
        sel = ReplicaSelector(
            region(),
            stale_read=True,
            labels=[("zone", "z9")],
            store_labels=ZONES.get,
            rng=random.Random(seed),
        )
        first = sel.next()
        assert first is not None
        # The leader scores higher (prefer leader under label matching) and reads stale.
        assert first == ReplicaTarget(LEADER, replica_read=False, stale_read=True)
    sel = ReplicaSelector(
        region(LEADER, F2, F3, leader=None),
        stale_read=True,
        labels=[("zone", "z9")],
        store_labels=ZONES.get,
        rng=random.Random(0),
    )
    first = sel.next()
    # client-go canSendReplicaRead: a first attempt (no leader tried yet) stays stale even
    # on a remote follower.
    assert first is not None and first.stale_read and not first.replica_read
    # Once the leader was tried and was not busy, a retry is a replica read; after a
    # busy leader it stays stale.
    for busy in (False, True):
        sel = ReplicaSelector(
            region(), stale_read=True, labels=[("zone", "z9")], store_labels=ZONES.get
        )
        assert sel.next() == ReplicaTarget(LEADER, replica_read=False, stale_read=True)
        if busy:
            sel.on_server_is_busy()
        retry = sel.next()
        assert retry is not None and retry.peer != LEADER
        assert (retry.stale_read, retry.replica_read) == (busy, not busy)


def test_follower_reads_prefer_matching_followers_and_need_every_label() -> None:
    sel = ReplicaSelector(
        region(),
        "follower",
        labels=[("zone", "z3"), ("disk", "ssd")],
        store_labels=ZONES.get,
        rng=random.Random(0),
    )
    assert stores(targets(sel)) == [3, 2, 1]
    partial = ReplicaSelector(
        region(),
        "follower",
        labels=[("zone", "z2"), ("disk", "ssd")],  # store 2 lacks the disk label
        store_labels=lambda s: None if s == 3 else ZONES[s],  # store 3 unknown
        rng=random.Random(0),
    )
    assert sorted(stores(targets(partial))[:2]) == [2, 3]


def test_flashback_on_a_follower_read_retries_on_the_leader() -> None:
    sel = ReplicaSelector(region(), "follower", rng=random.Random(0))
    first = sel.next()
    assert first is not None and first.replica_read
    assert sel.on_flashback_in_progress(first.replica_read)
    assert sel.next() == ReplicaTarget(LEADER, replica_read=False, stale_read=False)
    # On the leader (or for a non-replica read) the error stands.
    assert not sel.on_flashback_in_progress(True)
    assert not ReplicaSelector(region(), "follower").on_flashback_in_progress(False)
