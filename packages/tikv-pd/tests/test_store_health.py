"""StoreHealth's TiKV-side slow score and how replica selection uses it (pure).

client-go ``internal/locate/store_cache.go`` (``StoreHealthStatus``) and the ``NotSlow`` bit
of ``ReplicaSelectMixedStrategy`` (``replica_selector.go``).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from tikv_pd.region_cache import Peer, Region, RegionEpoch
from tikv_pd.replica_selector import (
    SLOW_SCORE_ACTIVE_UPDATE_SECONDS,
    SLOW_SCORE_UPDATE_SECONDS,
    TIKV_SLOW_SCORE_THRESHOLD,
    ReplicaSelector,
    StoreHealth,
)
from tikv_proto import kvrpcpb_pb2

LEADER = Peer(11, 1)
F2 = Peer(12, 2)
F3 = Peer(13, 3)
REGION = Region(7, b"a", b"z", RegionEpoch(1, 1), (LEADER, F2, F3), LEADER)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_constants_match_client_go() -> None:
    assert TIKV_SLOW_SCORE_THRESHOLD == 80
    assert SLOW_SCORE_UPDATE_SECONDS == 0.1
    assert SLOW_SCORE_ACTIVE_UPDATE_SECONDS == 15.0


def test_feedback_sets_the_score_and_the_threshold_is_80() -> None:
    clock = Clock()
    health = StoreHealth(clock)
    assert health.slow_score(1) == 0 and not health.is_slow(1) and not health.has_slow()
    health.record_feedback(kvrpcpb_pb2.HealthFeedback(store_id=1, feedback_seq_no=5, slow_score=79))
    assert health.slow_score(1) == 79 and not health.is_slow(1)
    clock.now += 1
    health.record_feedback(kvrpcpb_pb2.HealthFeedback(store_id=1, feedback_seq_no=6, slow_score=80))
    assert health.slow_score(1) == 80 and health.is_slow(1) and health.has_slow()
    assert not health.is_slow(2)
    clock.now += 1
    health.update_slow_score(1, 1)
    assert not health.is_slow(1) and not health.has_slow()


def test_a_change_within_100ms_of_the_last_update_is_ignored() -> None:
    clock = Clock()
    health = StoreHealth(clock)
    health.update_slow_score(3, 1)
    clock.now += SLOW_SCORE_UPDATE_SECONDS / 2
    health.update_slow_score(3, 95)
    assert health.slow_score(3) == 1
    clock.now += SLOW_SCORE_UPDATE_SECONDS
    health.update_slow_score(3, 95)
    assert health.slow_score(3) == 95


def test_a_stale_high_score_decays_linearly_in_15s_steps_down_to_1() -> None:
    clock = Clock()
    health = StoreHealth(clock)
    health.update_slow_score(2, 90)
    clock.now += SLOW_SCORE_ACTIVE_UPDATE_SECONDS - 0.5
    assert health.slow_score(2) == 90  # not stale yet
    clock.now += 0.5
    assert health.slow_score(2) == 85  # 15 s * 20/60 per second
    clock.now += 2 * SLOW_SCORE_ACTIVE_UPDATE_SECONDS
    assert health.slow_score(2) == 75 and not health.is_slow(2)
    clock.now += 3600
    assert health.slow_score(2) == 1


def test_the_same_high_score_reported_again_does_not_decay() -> None:
    clock = Clock()
    health = StoreHealth(clock)
    health.update_slow_score(2, 90)
    for _ in range(4):
        clock.now += SLOW_SCORE_ACTIVE_UPDATE_SECONDS - 1
        health.update_slow_score(2, 90)
    assert health.slow_score(2) == 90


def test_bad_scores_are_rejected() -> None:
    health = StoreHealth()
    with pytest.raises(TypeError, match="score must be an int"):
        health.update_slow_score(1, 9.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store_id must be an int"):
        health.update_slow_score("1", 9)  # type: ignore[arg-type]
    assert health.slow_score(1) == 0


def _first_stores(
    read_type: str, slow: set[int], *, stale: bool = False, n: int = 300
) -> Counter[int]:
    rng = random.Random(5)
    first: Counter[int] = Counter()
    for _ in range(n):
        sel = ReplicaSelector(
            REGION,
            read_type,  # type: ignore[arg-type]
            stale_read=stale,
            rng=rng,
            is_slow=lambda store: store in slow,
        )
        target = sel.next()
        assert target is not None
        first[target.peer.store_id] += 1
    return first


def test_follower_and_mixed_and_stale_reads_avoid_a_slow_store() -> None:
    assert set(_first_stores("follower", set())) == {2, 3}
    assert set(_first_stores("follower", {2})) == {3}
    assert set(_first_stores("mixed", {1, 3})) == {2}
    assert set(_first_stores("mixed", {2}, stale=True)) == {1, 3}
    # Every store slow: slowness no longer tells them apart.
    assert set(_first_stores("follower", {1, 2, 3})) == {2, 3}


def test_a_slow_store_is_still_used_when_it_is_the_last_left() -> None:
    sel = ReplicaSelector(REGION, "follower", rng=random.Random(1), is_slow=lambda s: s == 3)
    order = []
    while (t := sel.next()) is not None:
        order.append(t.peer.store_id)
    # The fast follower, the leader (a normal follower read falls back to it), then the
    # slow follower: slowness outranks every other preference.
    assert order == [2, 1, 3]


def test_leader_reads_ignore_slowness() -> None:
    sel = ReplicaSelector(REGION, "leader", is_slow=lambda s: s == 1)
    target = sel.next()
    assert target is not None and target.peer == LEADER


def test_prefer_leader_skips_slow_followers_and_demotes_a_slow_leader() -> None:
    # A fast leader is preferred; a slow follower is never a candidate.
    sel = ReplicaSelector(REGION, "prefer-leader", is_slow=lambda s: s == 2)
    order = []
    while (t := sel.next()) is not None:
        order.append(t.peer.store_id)
    assert order == [1, 3]
    # A slow leader loses its preference: the fast followers come first.
    first = _first_stores("prefer-leader", {1})
    assert set(first) == {2, 3}


def test_a_fresh_feedback_right_after_a_decay_step_is_taken() -> None:
    # client-go asks the store before decaying; here the decay may run first, and the
    # store's answer arriving right after it must not be held back by the 100 ms rule.
    clock = Clock()
    health = StoreHealth(clock)
    health.update_slow_score(2, 90)
    clock.now += SLOW_SCORE_ACTIVE_UPDATE_SECONDS + 0.01
    assert health.slow_score(2) == 85
    health.update_slow_score(2, 90)
    assert health.slow_score(2) == 90
