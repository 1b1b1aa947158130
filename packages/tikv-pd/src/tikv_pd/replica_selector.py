"""Which replica serves a read, attempt after attempt (client-go's replica selector, pure).

client-go (``internal/locate/replica_selector.go``) chooses the peer of every attempt of a
read with a per-request *replica selector*. This module makes the same choices without any
I/O: :class:`ReplicaSelector` is created for one part of a read request (one region), asked
for the :meth:`~ReplicaSelector.next` target before each attempt, and told what happened
(:meth:`~ReplicaSelector.on_not_leader`, :meth:`~ReplicaSelector.on_data_is_not_ready`,
:meth:`~ReplicaSelector.on_server_is_busy`, :meth:`~ReplicaSelector.on_flashback_in_progress`).
The request pipeline (:mod:`tikv_pd.request`) applies the targets; :class:`StoreHealth`
remembers the stores that just refused connections.

Policies, per ``ReplicaReadType`` (:data:`tikv_pd.config.ReplicaReadType`):

* ``leader`` — the leader while it is a candidate (its store not unreachable, fewer than
  :data:`MAX_REPLICA_ATTEMPTS` attempts, it did not answer NotLeader); otherwise any other
  replica once each (it answers NotLeader with the new leader, client-go
  ``nextForReplicaReadLeader``).
* every other type scores the candidate replicas and picks one of the best at random
  (``ReplicaSelectMixedStrategy``). A candidate is a replica whose store is not unreachable
  and that was not tried yet (a replica that answered ``DataIsNotReady`` may be tried once
  more, as a replica read). The score, high bit first: not slow, *labels match* (the
  replica's store carries every label asked for, e.g. the client's zone; every replica
  matches when none is asked for), *prefer leader* (the leader under ``prefer-leader``, and
  under ``mixed`` when labels are asked for), *normal peer*, not attempted. A normal peer is
  any follower or learner for ``follower`` / ``mixed`` / ``prefer-leader``, only a learner
  for ``learner``, and the leader too for ``mixed`` (and for ``prefer-leader``, where it
  already scores higher).
  So ``follower`` reads a random follower and falls back to the leader only when every
  follower failed; ``mixed`` reads any replica; ``learner`` prefers learners, then any
  replica; ``prefer-leader`` reads the leader, then the followers.
* **stale read** (``stale_read=True``; client-go sets the type to ``mixed``,
  ``EnableStaleWithMixedReplicaRead``): the first attempt goes to a random replica, the
  leader included (a replica matching the labels first: the *local* one), with
  ``Context.stale_read`` set — except that a non-leader whose labels do not match is sent a
  replica read instead (client-go keeps this for compatibility). The second attempt
  goes to the leader as a normal leader read (stale and replica read flags off) unless the
  leader was the first target; later attempts use the mixed strategy as replica reads
  (``replica_read`` on, ``stale_read`` off). ``DataIsNotReady`` is retried at once, without
  a backoff (client-go's ``onDataIsNotReady`` returns ``ErrorRetryImmediately``).

A NotLeader answer naming a leader that is a candidate switches the selector to leader
reads (client-go ``onNotLeader``). ServerIsBusy on a non-leader read moves on to the next
replica without sleeping (``canFastRetry``). When no candidate remains, :meth:`next`
returns ``None``: the caller invalidates the region and backs off ``regionMiss`` (client-go
invalidates the region and the sender answers with a fake region error).

Store slowness comes from TiKV's health feedback (:class:`StoreHealth`, fed by the
transport): a slow store's replicas lose the *not slow* bit, so every non-leader read type
(stale reads included) prefers the other replicas; leader reads ignore it, as in
client-go. TiFlash stores and witness peers never serve these reads (client-go builds the
replicas from the TiKV stores only; a witness holds no data).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from tikv_proto import kvrpcpb_pb2

from tikv_pd.config import REPLICA_READ_TYPES, ReplicaReadType
from tikv_pd.region_cache import Liveness, Peer, PeerRole, Region

__all__ = [
    "HEALTH_RECHECK_SECONDS",
    "MAX_REPLICA_ATTEMPTS",
    "SLOW_SCORE_ACTIVE_UPDATE_SECONDS",
    "SLOW_SCORE_DECAY_PER_SECOND",
    "SLOW_SCORE_UPDATE_SECONDS",
    "TIKV_SLOW_SCORE_THRESHOLD",
    "ReplicaSelector",
    "ReplicaTarget",
    "StoreHealth",
]

_log = logging.getLogger("tikv.request")

#: Attempts on the leader before giving up on it (client-go ``maxReplicaAttempt``).
MAX_REPLICA_ATTEMPTS = 10

#: Seconds a store found unreachable is skipped before it is tried again (client-go
#: ``Store.checkUntilHealth`` re-checks an unreachable store every second).
HEALTH_RECHECK_SECONDS = 1.0

#: A store whose TiKV-side slow score is at least this is slow (client-go
#: ``tikvSlowScoreSlowThreshold``, ``internal/locate/store_cache.go``). TiKV's raftstore
#: slow score runs from 1 (healthy) to 100.
TIKV_SLOW_SCORE_THRESHOLD = 80

#: A changed slow score arriving within this many seconds of the last update is ignored
#: (client-go ``tikvSlowScoreUpdateInterval``, 100 ms, ``store_cache.go``).
SLOW_SCORE_UPDATE_SECONDS = 0.1

#: A slow score above 1 not refreshed for this long starts to decay (client-go
#: ``tikvSlowScoreActiveUpdateInterval``, 15 s, ``store_cache.go``).
SLOW_SCORE_ACTIVE_UPDATE_SECONDS = 15.0

#: Linear decay of a stale slow score, points per second (client-go
#: ``tikvSlowScoreDecayRate`` = 20/60, ``store_cache.go``).
SLOW_SCORE_DECAY_PER_SECOND = 20.0 / 60.0

# Score bits, lowest first (client-go storeSelectionScore).
_NOT_ATTEMPTED = 1
_NORMAL_PEER = 2
_PREFER_LEADER = 4
_LABELS_MATCH = 8
_NOT_SLOW = 16


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    """Where the next attempt goes and how its context is flagged.

    Attributes:
        peer: The peer to send to.
        replica_read: Set ``Context.replica_read`` (a read index read on a non-leader).
        stale_read: Set ``Context.stale_read`` (served at the read ts by any replica whose
            safe ts allows it).

    """

    peer: Peer
    replica_read: bool
    stale_read: bool

    @property
    def mode(self) -> int:
        """The pipeline's context mode: 0 leader read, 1 replica read, 2 stale read."""
        return 2 if self.stale_read else 1 if self.replica_read else 0


class _Replica:
    __slots__ = (
        "attempts",
        "data_is_not_ready",
        "deadline_exceeded",
        "not_leader",
        "peer",
        "server_is_busy",
    )

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.attempts = 0
        self.not_leader = False
        self.data_is_not_ready = False
        self.server_is_busy = False
        self.deadline_exceeded = False


class ReplicaSelector:
    """Chooses the replica of each attempt of one read on one region (pure, not thread-safe).

    Args:
        region: The region as cached (peers and leader).
        replica_read: The read type (``"leader"``, ``"follower"``, ``"mixed"``,
            ``"learner"``, ``"prefer-leader"``). Stale reads use ``"mixed"`` whatever this is.
        stale_read: A stale read.
        read_only: The request is a read (replica reads are flagged only for reads).
        liveness: The believed liveness of a store (default: every store reachable).
        is_tiflash: Whether a store is a TiFlash node (its peers are skipped).
        rng: Random source for ties (tests pass a seeded one).
        labels: Store labels to prefer, as ``(key, value)`` pairs (client-go
            ``WithMatchLabels``; e.g. ``[("zone", "z1")]`` for the local zone).
        store_labels: A store's labels (``None`` when unknown: it does not match).
        is_slow: Whether a store is slow (TiKV's health feedback, :meth:`StoreHealth.is_slow`):
            its replicas score lower; under ``prefer-leader`` a slow follower is not a
            candidate and a slow leader loses its preference (client-go
            ``ReplicaSelectMixedStrategy``). Default: no store is slow.

    """

    __slots__ = (
        "_is_slow",
        "_is_tiflash",
        "_labels",
        "_liveness",
        "_replicas",
        "_rng",
        "_stale_on_leader",
        "_store_labels",
        "attempts",
        "read_only",
        "read_type",
        "region",
        "stale_read",
        "target",
    )

    def __init__(
        self,
        region: Region,
        replica_read: ReplicaReadType = "leader",
        *,
        stale_read: bool = False,
        read_only: bool = True,
        liveness: Callable[[int], Liveness] | None = None,
        is_tiflash: Callable[[int], bool] | None = None,
        rng: random.Random | None = None,
        labels: Sequence[tuple[str, str]] = (),
        store_labels: Callable[[int], Sequence[tuple[str, str]] | None] | None = None,
        is_slow: Callable[[int], bool] | None = None,
    ) -> None:
        if replica_read not in REPLICA_READ_TYPES:
            raise ValueError(
                f"replica_read must be one of {list(REPLICA_READ_TYPES)}, got {replica_read!r}"
            )
        self.region = region
        self.read_type: ReplicaReadType = "mixed" if stale_read else replica_read
        self.stale_read = stale_read
        self.read_only = read_only
        self._liveness = liveness
        self._is_tiflash = is_tiflash
        self._rng = rng if rng is not None else _RNG
        self._labels = tuple(labels)
        self._store_labels = store_labels
        self._is_slow = is_slow
        self._replicas = [
            _Replica(p)
            for p in region.peers
            if not p.is_witness and not (is_tiflash is not None and is_tiflash(p.store_id))
        ]
        #: Targets handed out so far.
        self.attempts = 0
        #: The peer of the last target (``None`` before the first or when exhausted).
        self.target: Peer | None = None
        # A leader retry after RegionNotFound keeps the failed attempt's stale flag.
        self._stale_on_leader = False

    # -- the region ----------------------------------------------------------------------

    def same_region(self, region: Region) -> bool:
        """Whether ``region`` is this selector's region at the same epoch."""
        return region.id == self.region.id and region.epoch == self.region.epoch

    def update_region(self, region: Region) -> None:
        """Follow a new cached version of the same region (e.g. another leader).

        What was learned about the peers (attempts, answers) is kept by peer id.
        """
        if region is self.region:
            return
        known = {r.peer.id: r for r in self._replicas}
        replicas = []
        for p in region.peers:
            if p.is_witness or (self._is_tiflash is not None and self._is_tiflash(p.store_id)):
                continue
            replica = known.get(p.id) or _Replica(p)
            replica.peer = p
            replicas.append(replica)
        self._replicas = replicas
        self.region = region

    # -- choosing ------------------------------------------------------------------------

    def _leader(self) -> _Replica | None:
        leader = self.region.leader
        if leader is None:
            return None
        for r in self._replicas:
            if r.peer.id == leader.id:
                return r
        return None

    def _reachable(self, r: _Replica, unreachable: Collection[int]) -> bool:
        if r.peer.store_id in unreachable:
            return False
        return self._liveness is None or self._liveness(r.peer.store_id) is not Liveness.UNREACHABLE

    def _leader_candidate(self, r: _Replica | None, unreachable: Collection[int]) -> bool:
        return (
            r is not None
            and self._reachable(r, unreachable)
            and r.attempts < MAX_REPLICA_ATTEMPTS
            and not r.not_leader
        )

    def next(self, unreachable: Collection[int] = ()) -> ReplicaTarget | None:
        """The target of the next attempt, or ``None`` when every replica was tried.

        Args:
            unreachable: Stores that failed a send for this request; their peers are
                skipped (client-go checks the store's liveness after a send failure).

        """
        self.attempts += 1
        self.target = None
        if self.read_type == "leader":
            chosen = self._next_for_leader(unreachable)
        else:
            chosen = self._next_for_mixed(unreachable)
        if chosen is None:
            return None
        replica, target = chosen
        replica.attempts += 1
        self.target = replica.peer
        return target

    def _next_for_leader(
        self, unreachable: Collection[int]
    ) -> tuple[_Replica, ReplicaTarget] | None:
        leader = self._leader()
        if leader is not None and self._leader_candidate(leader, unreachable):
            return leader, ReplicaTarget(
                leader.peer, replica_read=False, stale_read=self._stale_on_leader
            )
        # The leader cannot be used: try the others once each; one of them answers with
        # the new leader (client-go: the mixed strategy without any preference).
        picked = self._pick(
            unreachable, try_leader=False, prefer_leader=False, learner_only=False, labels=False
        )
        if picked is None:
            return None
        return picked, ReplicaTarget(picked.peer, replica_read=False, stale_read=False)

    def _next_for_mixed(
        self, unreachable: Collection[int]
    ) -> tuple[_Replica, ReplicaTarget] | None:
        leader = self._leader()
        # A stale read that failed once asks the leader with a normal read, unless the
        # leader was its first target.
        if (
            self.stale_read
            and self.attempts == 2
            and leader is not None
            and self._leader_candidate(leader, unreachable)
            and leader.attempts < 1
        ):
            return leader, ReplicaTarget(leader.peer, replica_read=False, stale_read=False)
        kind = self.read_type
        picked = self._pick(
            unreachable,
            try_leader=kind in ("mixed", "prefer-leader"),
            prefer_leader=kind == "prefer-leader",
            learner_only=kind == "learner",
            labels=True,
        )
        if picked is None:
            return None
        if self.stale_read:
            # client-go nextForReplicaReadMixed: a retry, or a first target that is a
            # remote follower, becomes a replica read only when the leader was already
            # tried and did not answer busy (canSendReplicaRead); otherwise the read
            # stays stale (so a first attempt is always stale).
            if (
                self.attempts != 1 or (picked is not leader and not self._matches(picked))
            ) and self._can_send_replica_read(leader):
                return picked, ReplicaTarget(picked.peer, replica_read=True, stale_read=False)
            return picked, ReplicaTarget(picked.peer, replica_read=False, stale_read=True)
        # A replica read only off the leader (client-go: ReplicaRead = read-only request
        # and the target is not the leader).
        return picked, ReplicaTarget(
            picked.peer, replica_read=self.read_only and picked is not leader, stale_read=False
        )

    @staticmethod
    def _can_send_replica_read(leader: _Replica | None) -> bool:
        """client-go ``canSendReplicaRead``: the leader was tried, not busy, not timed out."""
        return (
            leader is not None
            and leader.attempts > 0
            and not leader.server_is_busy
            and not leader.deadline_exceeded
        )

    def _pick(
        self,
        unreachable: Collection[int],
        *,
        try_leader: bool,
        prefer_leader: bool,
        learner_only: bool,
        labels: bool,
    ) -> _Replica | None:
        leader = self._leader()
        with_labels = labels and bool(self._labels)
        is_slow = self._is_slow
        best: list[_Replica] = []
        best_score = -1
        for r in self._replicas:
            if not self._reachable(r, unreachable):
                continue
            is_leader = r is leader
            # A replica that refused a stale read may serve it as a replica read; a leader
            # never answers DataIsNotReady (TiKV falls back to a leader read).
            max_attempts = 2 if r.data_is_not_ready and not is_leader else 1
            if r.attempts >= max_attempts:
                continue
            slow = is_slow is not None and is_slow(r.peer.store_id)
            if slow and prefer_leader and not is_leader:
                # client-go keeps the old selector's rule: under prefer-leader a slow
                # follower is not a candidate at all.
                continue
            score = 0 if slow else _NOT_SLOW
            if not with_labels or self._matches(r):
                score |= _LABELS_MATCH
            if is_leader:
                if prefer_leader:
                    # A slow leader is not preferred, only a normal peer.
                    score |= _NORMAL_PEER if slow else _PREFER_LEADER
                elif try_leader:
                    score |= _PREFER_LEADER if with_labels else _NORMAL_PEER
            elif not learner_only or r.peer.role == PeerRole.LEARNER:
                score |= _NORMAL_PEER
            if r.attempts == 0:
                score |= _NOT_ATTEMPTED
            if score > best_score:
                best_score = score
                best = [r]
            elif score == best_score:
                best.append(r)
        if not best:
            return None
        return best[0] if len(best) == 1 else best[self._rng.randrange(len(best))]

    def _matches(self, r: _Replica) -> bool:
        """Whether the replica's store carries every asked-for label.

        client-go ``IsLabelsMatch``; with no labels asked for, every replica matches.
        """
        if not self._labels:
            return True
        have = self._store_labels(r.peer.store_id) if self._store_labels is not None else None
        if have is None:
            return False
        return all(label in have for label in self._labels)

    # -- feedback ------------------------------------------------------------------------

    def on_not_leader(self, leader: Peer | None) -> None:
        """The target answered NotLeader, naming ``leader`` (or nobody).

        The target is not asked again as a leader; when the named leader can be used,
        the following attempts are leader reads.
        """
        target = self._target()
        if target is not None:
            target.not_leader = True
        if leader is None:
            return
        for r in self._replicas:
            if r.peer.id == leader.id:
                if r.attempts < MAX_REPLICA_ATTEMPTS and not r.not_leader:
                    self.read_type = "leader"
                return

    def on_flashback_in_progress(self, replica_read: bool) -> bool:
        """The target answered FlashbackInProgress; whether to retry on the leader.

        client-go ``onFlashbackInProgress``: when the failed attempt was a replica read on
        a non-leader, the read is retried as a leader read (the flashback blocks the
        followers' read index); otherwise the error stands.
        """
        leader = self.region.leader
        if not replica_read or self.target is None or leader is None:
            return False
        if self.target.id == leader.id:
            return False
        self.read_type = "leader"
        return True

    def on_region_not_found(self, stale_read: bool) -> bool:
        """The target answered RegionNotFound; whether to retry at once on the leader.

        client-go ``onRegionNotFound``: when the leader was not tried yet (the peer that
        answered may just not have been created after a split, or was moved), the same
        request goes to the leader now, as a leader read that keeps the failed attempt's
        stale flag; the caller invalidates the cached region meanwhile. Otherwise the
        error stands (the caller reloads the region).

        Args:
            stale_read: Whether the failed attempt was a stale read.

        """
        leader = self._leader()
        if leader is None or leader.attempts > 0:
            return False
        self.read_type = "leader"
        self._stale_on_leader = stale_read
        return True

    def on_data_is_not_ready(self) -> None:
        """The target refused a stale read: its safe ts is behind the read ts."""
        target = self._target()
        if target is not None:
            target.data_is_not_ready = True

    def on_deadline_exceeded(self) -> None:
        """The target did not answer within a read's own (short) timeout.

        client-go ``onReadReqConfigurableTimeout``: the replica is not asked again for
        this read (the caller skips its store), and a stale retry then stays stale
        (``canSendReplicaRead`` is false after a leader timeout).
        """
        target = self._target()
        if target is not None:
            target.deadline_exceeded = True

    def on_server_is_busy(self) -> None:
        """The target answered ServerIsBusy."""
        target = self._target()
        if target is not None:
            target.server_is_busy = True

    def can_fast_retry(self) -> bool:
        """Whether a busy answer may be retried on another replica without sleeping.

        client-go ``canFastRetry``: yes unless this is a leader read whose leader can
        still be used.
        """
        if self.read_type != "leader":
            return True
        leader = self._leader()
        return not (
            self._leader_candidate(leader, ()) and leader is not None and not leader.server_is_busy
        )

    def _target(self) -> _Replica | None:
        if self.target is None:
            return None
        for r in self._replicas:
            if r.peer.id == self.target.id:
                return r
        return None


class StoreHealth:
    """What replica reads should know of each store: unreachable, or slow.

    **Unreachable.** client-go probes a store after a send failure (``checkLiveness``, a
    health check with ``store_liveness_timeout``) and, while it is unreachable, re-checks
    it every second in the background; replica selectors skip unreachable stores
    meanwhile. Here the failed request is the probe: a connection-level failure (gRPC
    ``UNAVAILABLE``, or a request that never left) marks the store unreachable, and after
    :data:`HEALTH_RECHECK_SECONDS` the next request may try it again — that request is the
    re-check (a success marks it reachable, another failure marks it again). No
    background task is needed.

    **Slow.** TiKV reports its raftstore slow score (1 healthy … 100) in the health
    feedback it attaches to BatchCommands responses; the transport passes each one to
    :meth:`record_feedback` (client-go ``StoreHealthStatus.updateTiKVServerSideSlowScore``).
    A store scoring :data:`TIKV_SLOW_SCORE_THRESHOLD` or more is slow: replica and stale
    reads prefer other replicas (client-go's ``NotSlow`` score bit). client-go's rules:
    a changed score within :data:`SLOW_SCORE_UPDATE_SECONDS` of the last update is
    ignored; a score above 1 not refreshed for :data:`SLOW_SCORE_ACTIVE_UPDATE_SECONDS`
    decays by :data:`SLOW_SCORE_DECAY_PER_SECOND` per second, down to 1. client-go runs
    that decay on a 15 s ticker after first asking the store with a GetHealthFeedback
    request; here the transport does the asking (:class:`tikv_pd.transport.Transport`
    re-asks a store whose last reported score was above 1 after 15 s without news) and
    the decay is applied when the score is read, in whole 15 s steps. client-go's
    *client-side* slow score (from request latencies) is not kept.

    Args:
        clock: Monotonic seconds (tests pass a fake one).
        recheck_seconds: How long an unreachable store is skipped.

    """

    __slots__ = ("_clock", "_down", "_slow", "recheck_seconds")

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        recheck_seconds: float = HEALTH_RECHECK_SECONDS,
    ) -> None:
        self._clock = clock
        self._down: dict[int, float] = {}
        # store id -> [TiKV-side slow score, time of the last feedback that set or
        # confirmed it, time the decay counts from]. The two times differ once a decay
        # step ran: a fresh feedback after it is judged by the feedback time (client-go
        # asks the store before decaying, so its answer is never held back by a decay).
        self._slow: dict[int, list[float]] = {}
        self.recheck_seconds = recheck_seconds

    def mark_unreachable(self, store_id: int) -> None:
        """The store refused a connection just now."""
        self._down[store_id] = self._clock()

    def mark_reachable(self, store_id: int) -> None:
        """The store answered a request."""
        self._down.pop(store_id, None)

    def has_unreachable(self) -> bool:
        """Whether any store is marked (a cheap check for the hot path)."""
        return bool(self._down)

    def liveness(self, store_id: int) -> Liveness:
        """The store's liveness as far as replica reads are concerned.

        ``UNREACHABLE`` within the re-check interval after a failure, else ``UNKNOWN``
        (only failures are remembered).
        """
        since = self._down.get(store_id)
        if since is None or self._clock() - since >= self.recheck_seconds:
            return Liveness.UNKNOWN
        return Liveness.UNREACHABLE

    # -- TiKV-side slow score --------------------------------------------------------

    def record_feedback(self, feedback: kvrpcpb_pb2.HealthFeedback) -> None:
        """Take a store's ``kvrpcpb.HealthFeedback`` (a transport health listener)."""
        self.update_slow_score(feedback.store_id, feedback.slow_score)

    def update_slow_score(self, store_id: int, score: int) -> None:
        """Record the slow score TiKV reported for ``store_id`` (client-go's rules).

        Raises:
            TypeError: ``store_id`` or ``score`` is not an int.

        """
        for name, value in (("store_id", store_id), ("score", score)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        now = self._clock()
        entry = self._decayed(store_id, now)
        if entry is None:
            self._slow[store_id] = [score, now, now]
            if score >= TIKV_SLOW_SCORE_THRESHOLD:
                _log.info("store %d is slow (TiKV slow score %d)", store_id, score)
            return
        last = int(entry[0])
        if score == last:
            # Unchanged: only refresh the time, so a high score does not decay while TiKV
            # keeps reporting it (client-go skips this for 1: nothing decays below it).
            if score > 1:
                entry[1] = entry[2] = now
            return
        if now - entry[1] < SLOW_SCORE_UPDATE_SECONDS:
            return
        entry[0] = score
        entry[1] = entry[2] = now
        was_slow = last >= TIKV_SLOW_SCORE_THRESHOLD
        if was_slow != (score >= TIKV_SLOW_SCORE_THRESHOLD):
            _log.info(
                "store %d is %s (TiKV slow score %d -> %d)",
                store_id,
                "no longer slow" if was_slow else "slow",
                last,
                score,
            )

    def _decayed(self, store_id: int, now: float) -> list[float] | None:
        """The store's ``[score, fed, decay from]`` after any decay due by ``now``."""
        entry = self._slow.get(store_id)
        if entry is None or entry[0] <= 1:
            return entry
        elapsed = now - entry[2]
        if elapsed >= SLOW_SCORE_ACTIVE_UPDATE_SECONDS:
            span = (elapsed // SLOW_SCORE_ACTIVE_UPDATE_SECONDS) * SLOW_SCORE_ACTIVE_UPDATE_SECONDS
            entry[0] = max(round(entry[0] - SLOW_SCORE_DECAY_PER_SECOND * span), 1)
            entry[2] += span
        return entry

    def slow_score(self, store_id: int) -> int:
        """The store's TiKV-side slow score now (0 before any feedback from it)."""
        entry = self._decayed(store_id, self._clock())
        return 0 if entry is None else int(entry[0])

    def is_slow(self, store_id: int) -> bool:
        """Whether replica reads should prefer other stores: slow score >= 80."""
        return self.slow_score(store_id) >= TIKV_SLOW_SCORE_THRESHOLD

    def has_slow(self) -> bool:
        """Whether any store is slow now (a cheap check for the hot path)."""
        return any(
            entry[0] >= TIKV_SLOW_SCORE_THRESHOLD and self.is_slow(sid)
            for sid, entry in self._slow.items()
        )


_RNG = random.Random()
