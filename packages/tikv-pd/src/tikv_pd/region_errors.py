"""What to do about each region error TiKV returns: pure decisions, one per kind.

TiKV answers a request it cannot serve on this region / peer with an ``errorpb.Error`` in
the response's ``region_error`` field. client-go decides, per kind, whether to update the
region cache, whether to sleep (and with which named backoff), and whether to resend the
request to the same region or re-locate its keys (``internal/locate/region_request.go``,
``RegionRequestSender.onRegionError``; the callers' ``retry.MayBackoffForRegionError`` in
``config/retry/backoff.go`` adds a ``regionMiss`` backoff when the region must be
re-located). :func:`decide` makes the same decision without touching anything: it returns
a :class:`RegionErrorDecision`, and the request pipeline (``tikv_pd.request``) applies it
to the region cache, the Backoffer and the shard.

The table, as client-go decides (without the replica selector's extra peer rotation):

========================  ==========  ==================  ==================================
kind                      action      backoff             cache effect / notes
========================  ==========  ==================  ==================================
undetermined_result       UNDETERMINED  —                 a write's outcome is unknown
not_leader (leader hint)  RETRY       —                   switch to the hinted leader
not_leader (no hint)      RESHARD     regionScheduling    invalidate (election in progress)
disk_full                 RETRY       tikvDiskFull        —
RecoveryInProgress        RESHARD     regionRecovery...   invalidate
is_witness                RESHARD     isWitness           invalidate
FlashbackInProgress       FAIL        —                   workload must stop during flashback
FlashbackNotPrepared      FAIL        —
region_not_found          RESHARD     regionMiss          invalidate (peer removed)
key_not_in_region         RESHARD     regionMiss          invalidate (stale range)
epoch_not_match           RESHARD     —                   insert ``current_regions``
  (no current regions)    RESHARD     —                   invalidate
  (our epoch is ahead)    RETRY       regionMiss          the store lags; wait for it
bucket_version_not_match  RESHARD     regionMiss          —
server_is_busy            RETRY       tikvServerBusy      sleep excluded from the budget
stale_command             RETRY       staleCommand        ambiguous for non-idempotent writes
store_not_match           RESHARD     regionMiss          invalidate region, re-resolve store
raft_entry_too_large      FAIL        —                   the request is too big to propose
max_timestamp_not_synced  RETRY       maxTsNotSynced      —
region_not_initialized    RETRY       regionNotInitial..  —
read_index_not_ready      RETRY       regionScheduling    split / merge in progress
proposal_in_merging_mode  RETRY       regionScheduling    merge in progress
data_is_not_ready         RETRY       —                   retry as a leader (non-stale) read
deadline exceeded (msg)   RESHARD     regionMiss          invalidate (TiKV's own deadline)
mismatch_peer_id          RESHARD     regionMiss          invalidate
invalid max_ts (msg)      FAIL        —
unknown                   RESHARD     regionMiss          invalidate
========================  ==========  ==================  ==================================

Where client-go sleeps twice for one error (``RecoveryInProgress`` backs off in the
sender and then ``regionMiss`` in the caller) we sleep once, with the more specific kind.

Decisions are module-level constants, so deciding allocates nothing on the hot path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tikv_proto import errorpb_pb2

from tikv_pd.backoff import (
    IS_WITNESS,
    MAX_TS_NOT_SYNCED,
    REGION_MISS,
    REGION_NOT_INITIALIZED,
    REGION_RECOVERY_IN_PROGRESS,
    REGION_SCHEDULING,
    STALE_CMD,
    TIKV_DISK_FULL,
    TIKV_SERVER_BUSY,
    BackoffKind,
)
from tikv_pd.errors import DataIsNotReadyError, FlashbackError, RegionError, ServerBusyError

__all__ = [
    "KIND_PRIORITY",
    "Action",
    "RegionErrorDecision",
    "decide",
    "region_error_kind",
    "to_exception",
]


class Action(enum.Enum):
    """What the pipeline does with the request after applying a decision.

    Attributes:
        RETRY: Resend the same payload to the same region (after the cache update and
            the backoff, if any); the region's range did not change.
        RESHARD: The cached region is stale: re-locate the payload's keys (a request that
            spanned one region may now span two) and send each part.
        FAIL: Stop and raise :class:`tikv_pd.errors.RegionError` to the caller.
        UNDETERMINED: The server could not tell whether the write was applied
            (``UndeterminedResult``): raise :class:`tikv_pd.errors.UndeterminedError`
            for non-idempotent requests; idempotent ones may be resent.

    """

    RETRY = "retry"
    RESHARD = "reshard"
    FAIL = "fail"
    UNDETERMINED = "undetermined"


@dataclass(frozen=True, slots=True)
class RegionErrorDecision:
    """The decision for one region error (what client-go's ``onRegionError`` does).

    Attributes:
        kind: The error's kind: the ``errorpb.Error`` field name, or ``"deadline_exceeded"``
            / ``"invalid_max_ts_update"`` for errors TiKV reports only in ``message``, or
            ``"unknown"``.
        action: What to do with the request next.
        backoff: The named backoff to sleep before the next attempt (``None`` = resend
            at once).
        invalidate_region: Drop the region from the cache so the next locate reloads it
            from PD.
        invalidate_store: The store's identity or address changed (``StoreNotMatch``):
            re-resolve its address from PD and close the connections to the old address.
        switch_leader: Make the peer in ``not_leader.leader`` the region's cached leader.
        update_regions: Insert ``epoch_not_match.current_regions`` into the cache.
        leader_read: Send the next attempt to the leader as a normal (not stale,
            not replica) read (``DataIsNotReady``).
        next_replica: For replica reads, try another peer next time (``ServerIsBusy``).
        ambiguous: The request may have been applied although it failed; a
            non-idempotent write must surface :class:`tikv_pd.errors.UndeterminedError`
            instead of being resent.

    """

    kind: str
    action: Action
    backoff: BackoffKind | None = None
    invalidate_region: bool = False
    invalidate_store: bool = False
    switch_leader: bool = False
    update_regions: bool = False
    leader_read: bool = False
    next_replica: bool = False
    ambiguous: bool = False


#: The order in which client-go tests the fields of ``errorpb.Error`` when more than one
#: is set (``onRegionError``: UndeterminedResult first, then in field order with a few
#: exceptions). Lower wins.
KIND_PRIORITY: dict[str, int] = {
    name: i
    for i, name in enumerate(
        (
            "undetermined_result",
            "not_leader",
            "disk_full",
            "RecoveryInProgress",
            "is_witness",
            "FlashbackInProgress",
            "FlashbackNotPrepared",
            "region_not_found",
            "key_not_in_region",
            "epoch_not_match",
            "bucket_version_not_match",
            "server_is_busy",
            "stale_command",
            "store_not_match",
            "raft_entry_too_large",
            "max_timestamp_not_synced",
            "region_not_initialized",
            "read_index_not_ready",
            "proposal_in_merging_mode",
            "data_is_not_ready",
            "mismatch_peer_id",
        )
    )
}

# TiKV reports these two only through the message text (client-go isDeadlineExceeded and
# isInvalidMaxTsUpdate in region_request.go).
_DEADLINE_EXCEEDED_TEXT = "Deadline is exceeded"
_INVALID_MAX_TS_TEXT = "invalid max_ts update"


def region_error_kind(error: errorpb_pb2.Error) -> str:
    """Return the kind of a region error: the name of its (highest-priority) set field.

    Errors with no known field set are classified by their message as client-go does
    (``"deadline_exceeded"``, ``"invalid_max_ts_update"``), else ``"unknown"``.
    """
    best = ""
    best_rank = len(KIND_PRIORITY)
    for field, _ in error.ListFields():
        rank = KIND_PRIORITY.get(field.name)
        if rank is not None and rank < best_rank:
            best, best_rank = field.name, rank
    if best:
        return best
    if _DEADLINE_EXCEEDED_TEXT in error.message:
        return "deadline_exceeded"
    if _INVALID_MAX_TS_TEXT in error.message:
        return "invalid_max_ts_update"
    return "unknown"


# --- The decisions (constants; see the module table) ----------------------------------

_UNDETERMINED = RegionErrorDecision("undetermined_result", Action.UNDETERMINED, ambiguous=True)
# A leader was named: switch and resend at once. client-go: "don't backoff if a new leader
# is returned" (UpdateLeader).
_NOT_LEADER_SWITCH = RegionErrorDecision("not_leader", Action.RETRY, switch_leader=True)
# No leader known (election, or the peer is isolated / removed): reload from PD after a
# regionScheduling backoff (InvalidateCachedRegionWithReason(NoLeader)).
_NOT_LEADER_RELOAD = RegionErrorDecision(
    "not_leader", Action.RESHARD, REGION_SCHEDULING, invalidate_region=True
)
_DISK_FULL = RegionErrorDecision("disk_full", Action.RETRY, TIKV_DISK_FULL)
_RECOVERY = RegionErrorDecision(
    "RecoveryInProgress", Action.RESHARD, REGION_RECOVERY_IN_PROGRESS, invalidate_region=True
)
_IS_WITNESS = RegionErrorDecision("is_witness", Action.RESHARD, IS_WITNESS, invalidate_region=True)
_FLASHBACK_IN_PROGRESS = RegionErrorDecision("FlashbackInProgress", Action.FAIL)
_FLASHBACK_NOT_PREPARED = RegionErrorDecision("FlashbackNotPrepared", Action.FAIL)
_REGION_NOT_FOUND = RegionErrorDecision(
    "region_not_found", Action.RESHARD, REGION_MISS, invalidate_region=True
)
_KEY_NOT_IN_REGION = RegionErrorDecision(
    "key_not_in_region", Action.RESHARD, REGION_MISS, invalidate_region=True
)
# The real EpochNotMatch is retried without sleeping (MayBackoffForRegionError): the
# error carries the regions that now cover the range.
_EPOCH_UPDATE = RegionErrorDecision("epoch_not_match", Action.RESHARD, update_regions=True)
_EPOCH_RELOAD = RegionErrorDecision("epoch_not_match", Action.RESHARD, invalidate_region=True)
# Our cached epoch is newer than the store's: the store has not applied the split / conf
# change yet. Keep the cache and wait (OnRegionEpochNotMatch, "epoch is ahead of tikv").
_EPOCH_AHEAD = RegionErrorDecision("epoch_not_match", Action.RETRY, REGION_MISS)
_BUCKET_VERSION = RegionErrorDecision("bucket_version_not_match", Action.RESHARD, REGION_MISS)
# ServerIsBusy sleeps on tikvServerBusy, whose sleep does not count against the
# operation's budget (backoff.py isSleepExcluded); replica reads may try another peer.
_SERVER_IS_BUSY = RegionErrorDecision(
    "server_is_busy", Action.RETRY, TIKV_SERVER_BUSY, next_replica=True
)
# StaleCommand: the proposal was made in an old term. client-go retries it but notes the
# result is in fact unknown; a non-idempotent write therefore must not be resent.
_STALE_COMMAND = RegionErrorDecision("stale_command", Action.RETRY, STALE_CMD, ambiguous=True)
# StoreNotMatch: the address now serves another store id (k8s reschedule, DNS change).
# client-go marks the store for re-resolution, invalidates the region and closes the
# connection to the address.
_STORE_NOT_MATCH = RegionErrorDecision(
    "store_not_match",
    Action.RESHARD,
    REGION_MISS,
    invalidate_region=True,
    invalidate_store=True,
)
_RAFT_ENTRY_TOO_LARGE = RegionErrorDecision("raft_entry_too_large", Action.FAIL)
_MAX_TS_NOT_SYNCED = RegionErrorDecision(
    "max_timestamp_not_synced", Action.RETRY, MAX_TS_NOT_SYNCED
)
_REGION_NOT_INITIALIZED = RegionErrorDecision(
    "region_not_initialized", Action.RETRY, REGION_NOT_INITIALIZED
)
_READ_INDEX_NOT_READY = RegionErrorDecision("read_index_not_ready", Action.RETRY, REGION_SCHEDULING)
_PROPOSAL_IN_MERGING = RegionErrorDecision(
    "proposal_in_merging_mode", Action.RETRY, REGION_SCHEDULING
)
# DataIsNotReady only happens to stale reads on a replica whose safe-ts lags; the retry
# goes to the leader as a normal snapshot read, which is always ready: no sleep.
_DATA_IS_NOT_READY = RegionErrorDecision("data_is_not_ready", Action.RETRY, leader_read=True)
_DEADLINE_EXCEEDED = RegionErrorDecision(
    "deadline_exceeded", Action.RESHARD, REGION_MISS, invalidate_region=True
)
_MISMATCH_PEER_ID = RegionErrorDecision(
    "mismatch_peer_id", Action.RESHARD, REGION_MISS, invalidate_region=True
)
_INVALID_MAX_TS = RegionErrorDecision("invalid_max_ts_update", Action.FAIL)
# Anything else: drop the cached region and re-locate (client-go's fallthrough).
_UNKNOWN = RegionErrorDecision("unknown", Action.RESHARD, REGION_MISS, invalidate_region=True)

_CONSTANT_DECISIONS: dict[str, RegionErrorDecision] = {
    d.kind: d
    for d in (
        _UNDETERMINED,
        _DISK_FULL,
        _RECOVERY,
        _IS_WITNESS,
        _FLASHBACK_IN_PROGRESS,
        _FLASHBACK_NOT_PREPARED,
        _REGION_NOT_FOUND,
        _KEY_NOT_IN_REGION,
        _BUCKET_VERSION,
        _SERVER_IS_BUSY,
        _STALE_COMMAND,
        _STORE_NOT_MATCH,
        _RAFT_ENTRY_TOO_LARGE,
        _MAX_TS_NOT_SYNCED,
        _REGION_NOT_INITIALIZED,
        _READ_INDEX_NOT_READY,
        _PROPOSAL_IN_MERGING,
        _DATA_IS_NOT_READY,
        _DEADLINE_EXCEEDED,
        _MISMATCH_PEER_ID,
        _INVALID_MAX_TS,
        _UNKNOWN,
    )
}


def decide(
    error: errorpb_pb2.Error,
    *,
    region_id: int = 0,
    conf_ver: int = 0,
    version: int = 0,
    peer_id: int = 0,
) -> RegionErrorDecision:
    """Decide what to do about a region error, as client-go's ``onRegionError`` does.

    Args:
        error: The ``region_error`` of a response.
        region_id: The region the request was sent to.
        conf_ver: The ``conf_ver`` of the epoch the request carried.
        version: The ``version`` of the epoch the request carried.
        peer_id: The peer the request was sent to. A ``NotLeader`` hint naming this very
            peer cannot be followed (it would loop without sleeping), so it is treated
            like a missing hint.

    Returns:
        The decision; the same object for the same inputs (no allocation).

    """
    kind = region_error_kind(error)
    if kind == "not_leader":
        leader = error.not_leader.leader if error.not_leader.HasField("leader") else None
        if leader is not None and leader.id != 0 and leader.id != peer_id:
            return _NOT_LEADER_SWITCH
        return _NOT_LEADER_RELOAD
    if kind == "epoch_not_match":
        current = error.epoch_not_match.current_regions
        if not current:
            return _EPOCH_RELOAD
        for meta in current:
            if meta.id == region_id and (
                meta.region_epoch.conf_ver < conf_ver or meta.region_epoch.version < version
            ):
                return _EPOCH_AHEAD
        return _EPOCH_UPDATE
    return _CONSTANT_DECISIONS[kind]


def to_exception(error: errorpb_pb2.Error, region_id: int) -> RegionError:
    """Convert a region error into the exception raised when it cannot be handled.

    ``server_is_busy`` becomes :class:`ServerBusyError`, ``data_is_not_ready``
    :class:`DataIsNotReadyError` and the two flashback kinds :class:`FlashbackError`
    (with the server's facts); everything else a :class:`RegionError` whose ``detail``
    is the error's set sub-message.

    Args:
        error: The region error.
        region_id: The region the request was sent to (used when the error names none).

    """
    kind = region_error_kind(error)
    message = error.message
    if kind == "server_is_busy":
        busy = error.server_is_busy
        return ServerBusyError(
            region_id,
            busy.reason,
            backoff_ms=busy.backoff_ms,
            estimated_wait_ms=busy.estimated_wait_ms,
            server_message=message,
            detail=busy,
        )
    if kind == "data_is_not_ready":
        dnr = error.data_is_not_ready
        return DataIsNotReadyError(
            dnr.region_id or region_id,
            peer_id=dnr.peer_id,
            safe_ts=dnr.safe_ts,
            server_message=message,
            detail=dnr,
        )
    if kind == "FlashbackInProgress":
        fip = error.FlashbackInProgress
        return FlashbackError(
            kind,
            fip.region_id or region_id,
            flashback_start_ts=fip.flashback_start_ts,
            server_message=message,
            detail=fip,
        )
    if kind == "FlashbackNotPrepared":
        fnp = error.FlashbackNotPrepared
        return FlashbackError(kind, fnp.region_id or region_id, server_message=message, detail=fnp)
    detail: object = getattr(error, kind) if kind in KIND_PRIORITY else error
    if not message and kind in KIND_PRIORITY:
        message = str(detail).strip().replace("\n", ", ")
    return RegionError(kind, region_id, message, detail)
