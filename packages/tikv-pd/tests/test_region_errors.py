"""Decision table of region errors (pure, no network)."""

from __future__ import annotations

import pytest
from tikv_pd import backoff
from tikv_pd.errors import DataIsNotReadyError, RegionError, ServerBusyError
from tikv_pd.region_errors import (
    KIND_PRIORITY,
    Action,
    decide,
    region_error_kind,
    to_exception,
)
from tikv_proto import errorpb_pb2, metapb_pb2


def _err(**fields: object) -> errorpb_pb2.Error:
    return errorpb_pb2.Error(**fields)  # type: ignore[arg-type]


# (error, expected action, expected backoff kind, invalidate_region)
_TABLE = [
    (
        _err(disk_full=errorpb_pb2.DiskFull(store_id=[1])),
        Action.RETRY,
        backoff.TIKV_DISK_FULL,
        False,
    ),
    (
        _err(RecoveryInProgress=errorpb_pb2.RecoveryInProgress(region_id=2)),
        Action.RESHARD,
        backoff.REGION_RECOVERY_IN_PROGRESS,
        True,
    ),
    (_err(is_witness=errorpb_pb2.IsWitness(region_id=2)), Action.RESHARD, backoff.IS_WITNESS, True),
    (_err(FlashbackInProgress=errorpb_pb2.FlashbackInProgress()), Action.FAIL, None, False),
    (_err(FlashbackNotPrepared=errorpb_pb2.FlashbackNotPrepared()), Action.FAIL, None, False),
    (
        _err(region_not_found=errorpb_pb2.RegionNotFound(region_id=2)),
        Action.RESHARD,
        backoff.REGION_MISS,
        True,
    ),
    (
        _err(key_not_in_region=errorpb_pb2.KeyNotInRegion(key=b"k")),
        Action.RESHARD,
        backoff.REGION_MISS,
        True,
    ),
    (
        _err(bucket_version_not_match=errorpb_pb2.BucketVersionNotMatch(version=3)),
        Action.RESHARD,
        backoff.REGION_MISS,
        False,
    ),
    (
        _err(server_is_busy=errorpb_pb2.ServerIsBusy(reason="scheduler busy")),
        Action.RETRY,
        backoff.TIKV_SERVER_BUSY,
        False,
    ),
    (_err(stale_command=errorpb_pb2.StaleCommand()), Action.RETRY, backoff.STALE_CMD, False),
    (
        _err(store_not_match=errorpb_pb2.StoreNotMatch(request_store_id=1, actual_store_id=2)),
        Action.RESHARD,
        backoff.REGION_MISS,
        True,
    ),
    (_err(raft_entry_too_large=errorpb_pb2.RaftEntryTooLarge()), Action.FAIL, None, False),
    (
        _err(max_timestamp_not_synced=errorpb_pb2.MaxTimestampNotSynced()),
        Action.RETRY,
        backoff.MAX_TS_NOT_SYNCED,
        False,
    ),
    (
        _err(region_not_initialized=errorpb_pb2.RegionNotInitialized()),
        Action.RETRY,
        backoff.REGION_NOT_INITIALIZED,
        False,
    ),
    (
        _err(read_index_not_ready=errorpb_pb2.ReadIndexNotReady()),
        Action.RETRY,
        backoff.REGION_SCHEDULING,
        False,
    ),
    (
        _err(proposal_in_merging_mode=errorpb_pb2.ProposalInMergingMode()),
        Action.RETRY,
        backoff.REGION_SCHEDULING,
        False,
    ),
    (_err(data_is_not_ready=errorpb_pb2.DataIsNotReady()), Action.RETRY, None, False),
    (
        _err(mismatch_peer_id=errorpb_pb2.MismatchPeerId(request_peer_id=1, store_peer_id=2)),
        Action.RESHARD,
        backoff.REGION_MISS,
        True,
    ),
    (_err(undetermined_result=errorpb_pb2.UndeterminedResult()), Action.UNDETERMINED, None, False),
    (_err(message="Deadline is exceeded"), Action.RESHARD, backoff.REGION_MISS, True),
    (_err(message="invalid max_ts update: too large"), Action.FAIL, None, False),
    (_err(message="something new"), Action.RESHARD, backoff.REGION_MISS, True),
]


@pytest.mark.parametrize(("error", "action", "kind", "invalidate"), _TABLE)
def test_decision_table(
    error: errorpb_pb2.Error,
    action: Action,
    kind: backoff.BackoffKind | None,
    invalidate: bool,
) -> None:
    d = decide(error, region_id=2, conf_ver=1, version=1, peer_id=5)
    assert d.action is action
    assert d.backoff == kind
    assert d.invalidate_region is invalidate
    assert d.kind == region_error_kind(error)


def test_not_leader_with_hint_switches_without_backoff() -> None:
    err = _err(
        not_leader=errorpb_pb2.NotLeader(region_id=2, leader=metapb_pb2.Peer(id=7, store_id=3))
    )
    d = decide(err, region_id=2, peer_id=5)
    assert d.action is Action.RETRY
    assert d.switch_leader
    assert d.backoff is None
    assert not d.invalidate_region


def test_not_leader_without_hint_reloads_after_scheduling_backoff() -> None:
    d = decide(_err(not_leader=errorpb_pb2.NotLeader(region_id=2)), region_id=2, peer_id=5)
    assert d.action is Action.RESHARD
    assert d.backoff == backoff.REGION_SCHEDULING
    assert d.invalidate_region
    assert not d.switch_leader


def test_not_leader_naming_the_same_peer_is_not_followed() -> None:
    # Following a hint that names the peer we just asked would loop without sleeping.
    err = _err(not_leader=errorpb_pb2.NotLeader(leader=metapb_pb2.Peer(id=5, store_id=1)))
    d = decide(err, region_id=2, peer_id=5)
    assert not d.switch_leader
    assert d.backoff == backoff.REGION_SCHEDULING


def _region(rid: int, conf_ver: int, version: int) -> metapb_pb2.Region:
    return metapb_pb2.Region(
        id=rid, region_epoch=metapb_pb2.RegionEpoch(conf_ver=conf_ver, version=version)
    )


def test_epoch_not_match_with_current_regions_updates_and_reshards_at_once() -> None:
    err = _err(
        epoch_not_match=errorpb_pb2.EpochNotMatch(
            current_regions=[_region(2, 1, 6), _region(9, 1, 6)]
        )
    )
    d = decide(err, region_id=2, conf_ver=1, version=5)
    assert d.action is Action.RESHARD
    assert d.update_regions
    assert d.backoff is None


def test_epoch_not_match_without_regions_invalidates() -> None:
    d = decide(_err(epoch_not_match=errorpb_pb2.EpochNotMatch()), region_id=2, version=5)
    assert d.action is Action.RESHARD
    assert d.invalidate_region
    assert not d.update_regions


@pytest.mark.parametrize(("conf_ver", "version"), [(1, 4), (0, 5)])
def test_epoch_not_match_when_our_epoch_is_ahead_waits(conf_ver: int, version: int) -> None:
    err = _err(
        epoch_not_match=errorpb_pb2.EpochNotMatch(current_regions=[_region(2, conf_ver, version)])
    )
    d = decide(err, region_id=2, conf_ver=1, version=5)
    assert d.action is Action.RETRY
    assert d.backoff == backoff.REGION_MISS
    assert not d.update_regions


def test_ambiguous_kinds() -> None:
    ambiguous = {d.kind for d in (decide(e) for e, *_ in _TABLE) if d.ambiguous}
    assert ambiguous == {"stale_command", "undetermined_result"}


def test_server_busy_sleep_is_excluded_from_budget_and_may_change_replica() -> None:
    d = decide(_err(server_is_busy=errorpb_pb2.ServerIsBusy()))
    assert d.backoff is not None
    assert d.backoff.excluded_limit_ms is not None
    assert d.next_replica


def test_data_is_not_ready_retries_as_leader_read() -> None:
    d = decide(_err(data_is_not_ready=errorpb_pb2.DataIsNotReady(safe_ts=3)))
    assert d.leader_read
    assert d.backoff is None


def test_store_not_match_invalidates_store() -> None:
    d = decide(_err(store_not_match=errorpb_pb2.StoreNotMatch()))
    assert d.invalidate_store


def test_priority_prefers_undetermined_then_not_leader() -> None:
    err = _err(
        stale_command=errorpb_pb2.StaleCommand(),
        not_leader=errorpb_pb2.NotLeader(),
    )
    assert region_error_kind(err) == "not_leader"
    err.undetermined_result.SetInParent()
    assert region_error_kind(err) == "undetermined_result"


def test_every_errorpb_field_is_classified() -> None:
    names = {f.name for f in errorpb_pb2.Error.DESCRIPTOR.fields if f.name != "message"}
    assert names == set(KIND_PRIORITY)


def test_decisions_are_shared_constants() -> None:
    err = _err(region_not_found=errorpb_pb2.RegionNotFound())
    assert decide(err) is decide(err)


def test_to_exception_carries_server_facts() -> None:
    busy = to_exception(
        _err(
            server_is_busy=errorpb_pb2.ServerIsBusy(reason="r", backoff_ms=7, estimated_wait_ms=9)
        ),
        4,
    )
    assert isinstance(busy, ServerBusyError)
    assert (busy.region_id, busy.reason, busy.backoff_ms, busy.estimated_wait_ms) == (4, "r", 7, 9)

    dnr = to_exception(_err(data_is_not_ready=errorpb_pb2.DataIsNotReady(peer_id=3, safe_ts=11)), 4)
    assert isinstance(dnr, DataIsNotReadyError)
    assert (dnr.peer_id, dnr.safe_ts) == (3, 11)

    big = to_exception(_err(raft_entry_too_large=errorpb_pb2.RaftEntryTooLarge(entry_size=99)), 4)
    assert type(big) is RegionError
    assert big.kind == "raft_entry_too_large"
    assert "99" in str(big)
    assert isinstance(big.detail, errorpb_pb2.RaftEntryTooLarge)

    unknown = to_exception(_err(message="boom"), 4)
    assert unknown.kind == "unknown"
    assert unknown.server_message == "boom"
