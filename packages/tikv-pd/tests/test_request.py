"""The request pipeline against a fake locator and a fake TiKV-like transport."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from tikv_pd import backoff
from tikv_pd.backoff import Backoffer
from tikv_pd.errors import RegionError, TimeoutError, TokenLimitError, UndeterminedError
from tikv_pd.interceptor import Interceptor, RPCInvoker, RPCRequest
from tikv_pd.region_cache import InvalidReason, Peer, PeerRole, Region, RegionEpoch
from tikv_pd.request import (
    Ambiguity,
    ContextCache,
    KeySharder,
    KeysSharder,
    Plan,
    RangeSharder,
    RequestOptions,
    RequestSender,
    RetryShard,
    build_context,
    select_peer,
)
from tikv_pd.transport import RPCTimeoutError, TransportError
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, metapb_pb2

sys.path.insert(0, str(Path(__file__).parent))
from _request_fakes import STORES, FakeCluster, FakeLocator, FakeTransport, make_region

# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------


class Sleeps:
    """A Backoffer sleep that records instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _bo(budget_ms: int = 20_000) -> tuple[Backoffer, Sleeps]:
    sleeps = Sleeps()
    return Backoffer(budget_ms, operation="test", sleep=sleeps, rng=random.Random(1)), sleeps


def _setup(
    regions: Sequence[Region] | None = None, cached: Sequence[Region] | None = None
) -> tuple[FakeCluster, FakeLocator, FakeTransport, RequestSender]:
    cluster = FakeCluster(regions or [make_region(1, b"", b"")])
    locator = FakeLocator(cluster, cached)
    transport = FakeTransport(cluster)
    return cluster, locator, transport, RequestSender(locator, transport)


def _get(region: Region, key: bytes) -> kvrpcpb_pb2.RawGetRequest:
    return kvrpcpb_pb2.RawGetRequest(key=key)


def _batch_get(region: Region, keys: Sequence[bytes]) -> kvrpcpb_pb2.RawBatchGetRequest:
    return kvrpcpb_pb2.RawBatchGetRequest(keys=list(keys))


def _pairs(region: Region, keys: Any, resp: kvrpcpb_pb2.RawBatchGetResponse) -> dict[bytes, bytes]:
    return {p.key: p.value for p in resp.pairs}


def _merge(parts: list[dict[bytes, bytes]]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for p in parts:
        out.update(p)
    return out


BATCH_GET = Plan("RawBatchGet", KeysSharder[bytes](), _batch_get, _pairs, _merge)


# ---------------------------------------------------------------------------------------
# Context
# ---------------------------------------------------------------------------------------


def test_build_context_fills_every_option() -> None:
    region = make_region(7, b"a", b"z", version=4)
    opts = RequestOptions(
        api_version=2,
        keyspace_id=9,
        keyspace_name="ks",
        request_source="external_raw",
        resource_group_name="rg",
        resource_group_tag=b"tag",
        priority="high",
        isolation="RC",
        not_fill_cache=True,
        disk_full_opt="AllowedOnAlmostFull",
        txn_source=3,
        max_execution_duration_ms=20_000,
        busy_threshold_ms=50,
        sync_log=True,
    )
    assert region.leader is not None
    ctx = build_context(region, region.leader, opts, stale_read=True)
    assert ctx.region_id == 7
    assert (ctx.region_epoch.conf_ver, ctx.region_epoch.version) == (1, 4)
    assert (ctx.peer.id, ctx.peer.store_id) == (71, 1)
    assert ctx.api_version == kvrpcpb_pb2.V2
    assert ctx.keyspace_id == 9
    assert ctx.keyspace_name == "ks"
    assert ctx.request_source == "external_raw"
    assert ctx.resource_control_context.resource_group_name == "rg"
    assert ctx.resource_group_tag == b"tag"
    assert ctx.priority == kvrpcpb_pb2.High
    assert ctx.isolation_level == kvrpcpb_pb2.RC
    assert ctx.not_fill_cache
    assert ctx.disk_full_opt == kvrpcpb_pb2.AllowedOnAlmostFull
    assert ctx.txn_source == 3
    assert ctx.max_execution_duration_ms == 20_000
    assert ctx.busy_threshold_ms == 50
    assert ctx.sync_log
    assert ctx.stale_read
    assert not ctx.replica_read
    assert not ctx.HasField("keyspace_identity")


def test_request_options_validation() -> None:
    with pytest.raises(ValueError, match="api_version"):
        RequestOptions(api_version=5)
    with pytest.raises(ValueError, match="priority"):
        RequestOptions(priority="urgent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replica_read"):
        RequestOptions(replica_read="any")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        RequestOptions(timeout=0)
    with pytest.raises(ValueError, match="concurrency"):
        RequestOptions(concurrency=0)


def test_context_cache_reuses_and_refreshes() -> None:
    cache = ContextCache()
    region = make_region(1, b"", b"")
    opts = RequestOptions()
    assert region.leader is not None
    a = cache.get(region, region.leader, opts, 0)
    assert cache.get(region, region.leader, opts, 0) is a
    # A new Region object (new epoch or leader) never sees the old context.
    newer = make_region(1, b"", b"", version=2)
    assert newer.leader is not None
    b = cache.get(newer, newer.leader, opts, 0)
    assert b is not a
    assert b.region_epoch.version == 2
    assert cache.get(region, region.leader, RequestOptions(priority="low"), 0) is not a
    # Equal options built separately share the entry.
    c = cache.get(newer, newer.leader, RequestOptions(), 0)
    assert c is b
    assert hash(RequestOptions(txn_source=1)) == hash(RequestOptions(txn_source=1))
    assert RequestOptions(txn_source=1) != RequestOptions(txn_source=2)
    small = ContextCache(max_entries=2)
    for i in range(5):
        small.get(region, region.leader, RequestOptions(txn_source=i), 0)
    assert len(small) <= 2


# ---------------------------------------------------------------------------------------
# Peer selection
# ---------------------------------------------------------------------------------------


def _region_with_learner() -> Region:
    peers = (Peer(11, 1), Peer(12, 2), Peer(13, 3), Peer(14, 4, PeerRole.LEARNER))
    return Region(1, b"", b"", RegionEpoch(1, 1), peers, peers[0])


def test_select_peer_policies() -> None:
    region = _region_with_learner()
    leader = RequestOptions()
    assert select_peer(region, leader, 3, False) == (region.peers[0], 0)
    follower = RequestOptions(replica_read="follower")
    picked = {select_peer(region, follower, i, False)[0].id for i in range(4)}  # type: ignore[union-attr]
    assert picked == {12, 13}
    assert select_peer(region, follower, 0, False)[1] == 1
    learner = RequestOptions(replica_read="learner")
    assert select_peer(region, learner, 0, False) == (region.peers[3], 1)
    mixed = RequestOptions(replica_read="mixed")
    assert {select_peer(region, mixed, i, False)[0].id for i in range(4)} == {11, 12, 13, 14}  # type: ignore[union-attr]
    prefer = RequestOptions(replica_read="prefer-leader")
    assert select_peer(region, prefer, 0, False) == (region.peers[0], 0)
    assert select_peer(region, prefer, 1, False)[0] != region.peers[0]
    stale = RequestOptions(stale_read=True)
    assert select_peer(region, stale, 1, False)[1] == 2
    # DataIsNotReady forces a leader read.
    assert select_peer(region, stale, 1, True) == (region.peers[0], 0)
    no_leader = Region(1, b"", b"", RegionEpoch(1, 1), region.peers, None)
    assert select_peer(no_leader, leader, 0, False) == (region.peers[0], 0)
    empty = Region(1, b"", b"", RegionEpoch(1, 1), (), None)
    assert select_peer(empty, leader, 0, False) == (None, 0)


# ---------------------------------------------------------------------------------------
# Sharders
# ---------------------------------------------------------------------------------------


async def test_keys_sharder_groups_and_cuts_batches() -> None:
    cluster = FakeCluster([make_region(1, b"", b"m"), make_region(2, b"m", b"")])
    locator = FakeLocator(cluster)
    keys = [b"z", b"a", b"b", b"c", b"n", b"o"]
    parts = await KeysSharder[bytes](max_count=2).shard(locator, keys)
    assert [(r.id, list(ks)) for r, ks in parts] == [
        (1, [b"a", b"b"]),
        (1, [b"c"]),
        (2, [b"n", b"o"]),
        (2, [b"z"]),
    ]
    sized = KeysSharder[tuple[bytes, bytes]](
        lambda kv: kv[0], size_of=lambda kv: len(kv[0]) + len(kv[1]), max_bytes=10
    )
    pairs = [(b"a", b"x" * 4), (b"b", b"x" * 4), (b"c", b"x" * 20), (b"d", b"")]
    cut = await sized.shard(locator, pairs)
    assert [[k for k, _ in ps] for _, ps in cut] == [[b"a", b"b"], [b"c"], [b"d"]]
    first = await KeysSharder[bytes](first=b"n").shard(locator, keys)
    assert [r.id for r, _ in first] == [2, 1]


async def test_range_sharder_clips_to_regions() -> None:
    cluster = FakeCluster(
        [make_region(1, b"", b"f"), make_region(2, b"f", b"p"), make_region(3, b"p", b"")]
    )
    locator = FakeLocator(cluster)
    parts = await RangeSharder().shard(locator, (b"c", b"q"))
    assert [(r.id, rng) for r, rng in parts] == [
        (1, (b"c", b"f")),
        (2, (b"f", b"p")),
        (3, (b"p", b"q")),
    ]
    unbounded = await RangeSharder().shard(locator, (b"g", b""))
    assert [(r.id, rng) for r, rng in unbounded] == [(2, (b"g", b"p")), (3, (b"p", b""))]
    inside = await RangeSharder().shard(locator, (b"g", b"h"))
    assert [(r.id, rng) for r, rng in inside] == [(2, (b"g", b"h"))]


# ---------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------


async def test_single_key_fills_context_and_returns_response() -> None:
    cluster, _, transport, sender = _setup()
    cluster.data[b"k"] = b"v"
    opts = RequestOptions(api_version=1, request_source="t")
    resp = await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), options=opts)
    assert resp.value == b"v"
    (sent,) = transport.sent
    assert sent.address == STORES[1]
    ctx = sent.request.context
    assert (ctx.region_id, ctx.peer.store_id, ctx.api_version, ctx.request_source) == (1, 1, 1, "t")
    assert not ctx.is_retry_request
    # The second request reuses the cached context.
    await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), options=opts)
    assert len(sender.contexts) == 1


async def test_not_leader_with_hint_switches_without_backoff() -> None:
    region = make_region(1, b"", b"")
    cluster, locator, transport, sender = _setup([region])
    cluster.transfer_leader(1, 2)  # the cache still says store 1
    cluster.data[b"k"] = b"v"
    bo, sleeps = _bo()
    resp = await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    assert resp.value == b"v"
    assert [s.address for s in transport.sent] == [STORES[1], STORES[2]]
    assert transport.sent[1].request.context.is_retry_request
    assert sleeps.calls == []
    assert locator.cache[1].leader_store_id == 2
    assert locator.loads == 0


async def test_not_leader_without_hint_backs_off_and_reloads() -> None:
    cluster, locator, transport, sender = _setup()
    cluster.data[b"k"] = b"v"
    transport.faults["RawGet"] = [errorpb_pb2.Error(not_leader=errorpb_pb2.NotLeader(region_id=1))]
    bo, sleeps = _bo()
    resp = await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    assert resp.value == b"v"
    assert len(sleeps.calls) == 1
    assert bo.backoff_times == {"regionScheduling": 1}
    assert locator.invalidated == [(1, InvalidReason.NO_LEADER)]
    assert locator.loads == 1


async def test_split_reshards_batch_from_epoch_not_match_without_sleeping() -> None:
    region = make_region(1, b"", b"")
    cluster, locator, transport, sender = _setup([region])
    keys = [b"a", b"c", b"m", b"x", b"z"]
    for k in keys:
        cluster.data[k] = k.upper()
    cluster.split(1, b"m")  # the client still caches the unsplit region
    bo, sleeps = _bo()
    got = await BATCH_GET.run(sender, keys, bo=bo)
    assert got == {k: k.upper() for k in keys}
    # One stale request, then one per new region, routed from current_regions.
    assert len(transport.sent) == 3
    assert sorted(list(s.request.keys) for s in transport.sent[1:]) == [
        [b"a", b"c"],
        [b"m", b"x", b"z"],
    ]
    assert sleeps.calls == []
    assert locator.loads == 0
    assert {r.id for r in locator.cache.values()} == set(cluster.regions)
    assert sender.stats.region_errors == {"epoch_not_match": 1}
    assert sender.stats.reshards == 1
    assert sender.stats.attempts == 3
    assert sender.stats.backoffs == 0


async def test_region_not_found_invalidates_and_reshards_into_two() -> None:
    cluster, locator, _transport, sender = _setup()
    keys = [b"a", b"z"]
    cluster.data.update({b"a": b"1", b"z": b"2"})
    cluster.split(1, b"m")
    # Region 1 is gone from the truth (merged away and re-created as 50): RegionNotFound.
    left = cluster.regions.pop(1)
    cluster.regions[50] = make_region(50, left.start_key, left.end_key, version=9)
    bo, _sleeps = _bo()
    got = await BATCH_GET.run(sender, keys, bo=bo)
    assert got == {b"a": b"1", b"z": b"2"}
    assert (1, InvalidReason.REGION_NOT_FOUND) in locator.invalidated
    assert bo.backoff_times == {"regionMiss": 1}
    assert locator.loads == 2


async def test_budget_exhaustion_raises_timeout_with_causes() -> None:
    _, _, transport, sender = _setup()
    transport.faults["RawGet"] = [
        errorpb_pb2.Error(region_not_found=errorpb_pb2.RegionNotFound(region_id=1))
    ] * 1000
    bo, sleeps = _bo(budget_ms=100)
    with pytest.raises(TimeoutError) as info:
        await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    err = info.value
    assert err.causes
    assert all("regionMiss" in c for c in err.causes)
    assert "region_not_found" in str(err)
    assert isinstance(err.last_error, RegionError)
    assert err.total_sleep_ms >= bo.budget_ms
    assert len(transport.sent) == len(sleeps.calls) + 1


async def test_budget_created_lazily_when_none_given() -> None:
    _, _, transport, sender = _setup()
    sender.budget_ms = 1
    transport.faults["RawGet"] = [errorpb_pb2.Error(stale_command=errorpb_pb2.StaleCommand())] * 50
    with pytest.raises(TimeoutError, match="staleCommand"):
        await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"))


async def test_undetermined_write_is_not_resent() -> None:
    cluster, _, transport, sender = _setup()
    transport.faults["RawCompareAndSwap"] = [
        TransportError(STORES[1], ConnectionError("reset"), sent=True)
    ]
    req = kvrpcpb_pb2.RawCASRequest(key=b"k", value=b"1", previous_not_exist=True)
    with pytest.raises(UndeterminedError) as info:
        await sender.call_key("RawCompareAndSwap", b"k", req, ambiguity=Ambiguity.RAISE)
    assert isinstance(info.value.cause, TransportError)
    assert len(transport.sent) == 1
    assert b"k" not in cluster.data


async def test_unsent_failure_of_non_idempotent_write_is_retried() -> None:
    cluster, locator, transport, sender = _setup()
    transport.faults["RawCompareAndSwap"] = [
        TransportError(STORES[1], ConnectionError("refused"), sent=False)
    ]
    req = kvrpcpb_pb2.RawCASRequest(key=b"k", value=b"1", previous_not_exist=True)
    bo, _ = _bo()
    resp = await sender.call_key("RawCompareAndSwap", b"k", req, ambiguity=Ambiguity.RAISE, bo=bo)
    assert resp.succeed
    assert cluster.data[b"k"] == b"1"
    assert bo.backoff_times == {"tikvRPC": 1}
    assert locator.send_fails == [(1, 1)]


async def test_stale_command_is_ambiguous_for_non_idempotent_only() -> None:
    _, _, transport, sender = _setup()
    stale = errorpb_pb2.Error(stale_command=errorpb_pb2.StaleCommand())
    transport.faults["RawCompareAndSwap"] = [stale]
    req = kvrpcpb_pb2.RawCASRequest(key=b"k", value=b"1", previous_not_exist=True)
    with pytest.raises(UndeterminedError):
        await sender.call_key("RawCompareAndSwap", b"k", req, ambiguity=Ambiguity.RAISE)
    transport.faults["RawPut"] = [stale]
    bo, _ = _bo()
    await sender.call_key("RawPut", b"k", kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"v"), bo=bo)
    assert bo.backoff_times == {"staleCommand": 1}


async def test_retry_then_raise_reports_undetermined_only_if_it_finally_fails() -> None:
    _, _, transport, sender = _setup()
    lost = TransportError(STORES[1], ConnectionError("reset"), sent=True)
    put = kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"v")
    transport.faults["RawPut"] = [lost]
    bo, _ = _bo()
    await sender.call_key("RawPut", b"k", put, ambiguity=Ambiguity.RETRY_THEN_RAISE, bo=bo)
    missing = errorpb_pb2.Error(region_not_found=errorpb_pb2.RegionNotFound(region_id=1))
    transport.faults["RawPut"] = [lost, *([missing] * 100)]
    bo, _ = _bo(budget_ms=1)
    with pytest.raises(UndeterminedError) as info:
        await sender.call_key("RawPut", b"k", put, ambiguity=Ambiguity.RETRY_THEN_RAISE, bo=bo)
    assert isinstance(info.value.cause, TimeoutError)


async def test_a_token_refusal_after_a_lost_write_is_undetermined() -> None:
    # Config.store_limit refuses a resend while the store is full; if an earlier attempt
    # of the write was lost after sending, its outcome is still unknown: the caller must
    # get UndeterminedError, not a plain TokenLimitError it could take for a failure.
    # One peer, so the resend goes to the same store as the read holding its token.
    only = Peer(11, 1)
    _, _, transport, sender = _setup([Region(1, b"", b"", RegionEpoch(1, 1), (only,), only)])
    sender.store_limit = 1
    lost = TransportError(STORES[1], ConnectionError("reset"), sent=True)
    transport.faults["RawPut"] = [lost]
    put = kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"v")
    holders: list[asyncio.Future[Any]] = []

    async def sleep(seconds: float) -> None:
        # During the backoff after the lost attempt, a read takes the store's one token.
        transport.region_delay[1] = 3600.0
        holders.append(asyncio.ensure_future(sender.call_key("RawGet", b"k", _get_req(b"k"))))
        for _ in range(10_000):  # a few loop turns: the fake sends without I/O
            if transport.inflight:
                break
            await asyncio.sleep(0)
        assert transport.inflight == 1

    bo = Backoffer(20_000, operation="test", sleep=sleep, rng=random.Random(1))
    try:
        with pytest.raises(UndeterminedError) as info:
            await sender.call_key("RawPut", b"k", put, ambiguity=Ambiguity.RETRY_THEN_RAISE, bo=bo)
        assert isinstance(info.value.cause, TokenLimitError)
        assert [s.command for s in transport.sent] == ["RawPut", "RawGet"]
        # Without a lost attempt the refusal stays a TokenLimitError.
        with pytest.raises(TokenLimitError):
            await sender.call_key(
                "RawPut", b"k", put, ambiguity=Ambiguity.RETRY_THEN_RAISE, bo=_bo()[0]
            )
    finally:
        for holder in holders:
            holder.cancel()
        await asyncio.gather(*holders, return_exceptions=True)


def _get_req(key: bytes) -> kvrpcpb_pb2.RawGetRequest:
    return kvrpcpb_pb2.RawGetRequest(key=key)


async def test_fatal_region_error_is_raised() -> None:
    _, _, transport, sender = _setup()
    transport.faults["RawPut"] = [
        errorpb_pb2.Error(
            raft_entry_too_large=errorpb_pb2.RaftEntryTooLarge(region_id=1, entry_size=9)
        )
    ]
    with pytest.raises(RegionError) as info:
        await sender.call_key("RawPut", b"k", kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"v"))
    assert info.value.kind == "raft_entry_too_large"
    assert len(transport.sent) == 1


async def test_server_busy_is_excluded_from_budget() -> None:
    cluster, _, transport, sender = _setup()
    cluster.data[b"k"] = b"v"
    transport.faults["RawGet"] = [errorpb_pb2.Error(server_is_busy=errorpb_pb2.ServerIsBusy())] * 3
    bo, _sleeps = _bo(budget_ms=1)
    resp = await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    assert resp.value == b"v"
    assert bo.backoff_times == {"tikvServerBusy": 3}


async def test_data_is_not_ready_retries_stale_read_on_leader() -> None:
    # The stale read's first replica is random (client-go's replica selector); seeds
    # cover a follower first (then the leader, as a leader read) and the leader first
    # (then a follower, as a replica read).
    seen = set()
    for seed in range(12):
        cluster, _, transport, sender = _setup()
        sender.rng = random.Random(seed)
        cluster.data[b"k"] = b"v"
        transport.faults["RawGet"] = [
            errorpb_pb2.Error(data_is_not_ready=errorpb_pb2.DataIsNotReady(safe_ts=1))
        ]
        opts = RequestOptions(stale_read=True)
        resp = await sender.call_key(
            "RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), options=opts
        )
        assert resp.value == b"v"
        first, second = transport.sent
        assert first.request.context.stale_read
        assert not second.request.context.stale_read
        assert bo_free(sender)
        if first.address != STORES[1]:
            assert second.address == STORES[1]
            assert not second.request.context.replica_read
        else:
            assert second.address != STORES[1]
            assert second.request.context.replica_read
        seen.add(first.address == STORES[1])
    assert seen == {True, False}


async def test_flashback_on_a_follower_read_is_retried_on_the_leader() -> None:
    cluster, _, transport, sender = _setup()
    cluster.data[b"k"] = b"v"
    transport.faults["RawGet"] = [
        errorpb_pb2.Error(FlashbackInProgress=errorpb_pb2.FlashbackInProgress(region_id=1))
    ]
    opts = RequestOptions(replica_read="follower")
    resp = await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), options=opts)
    assert resp.value == b"v"
    first, second = transport.sent
    assert first.address != STORES[1] and first.request.context.replica_read
    assert second.address == STORES[1] and not second.request.context.replica_read
    # A leader read in a flashback fails at once.
    transport.faults["RawGet"] = [
        errorpb_pb2.Error(FlashbackInProgress=errorpb_pb2.FlashbackInProgress(region_id=1))
    ]
    with pytest.raises(RegionError):
        await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"))


def bo_free(sender: RequestSender) -> bool:
    """DataIsNotReady is retried at once (client-go ErrorRetryImmediately)."""
    return sender.stats.backoffs == 0


async def test_store_not_match_reresolves_store_and_closes_connection() -> None:
    cluster, locator, transport, sender = _setup()
    transport.faults["RawPut"] = [errorpb_pb2.Error(store_not_match=errorpb_pb2.StoreNotMatch())]
    bo, _ = _bo()
    await sender.call_key("RawPut", b"k", kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"v"), bo=bo)
    assert locator.invalidated_stores == [1]
    assert transport.closed == [STORES[1]]
    assert cluster.data[b"k"] == b"v"


async def test_unbounded_free_retries_are_forced_to_sleep() -> None:
    # A store that keeps pointing at a leader the cache can switch to but that answers
    # NotLeader again must not spin without sleeping.
    _, _, transport, sender = _setup()
    hint = errorpb_pb2.Error(
        not_leader=errorpb_pb2.NotLeader(leader=metapb_pb2.Peer(id=12, store_id=2))
    )
    hint_back = errorpb_pb2.Error(
        not_leader=errorpb_pb2.NotLeader(leader=metapb_pb2.Peer(id=11, store_id=1))
    )
    transport.faults["RawGet"] = [hint, hint_back] * 15
    bo, _sleeps = _bo()
    await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    assert bo.backoff_times.get("regionMiss", 0) >= 2


async def test_handler_retry_shard_runs_hook_and_resends() -> None:
    cluster, _, transport, sender = _setup([make_region(1, b"", b"m"), make_region(2, b"m", b"")])
    cluster.data.update({b"a": b"1", b"z": b"2"})
    resolved: list[str] = []
    calls = {"n": 0}

    async def resolve() -> None:
        resolved.append("locks")

    def handle(region: Region, keys: Sequence[bytes], resp: Any) -> dict[bytes, bytes]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RetryShard(list(keys), backoff=backoff.TXN_LOCK_FAST, before_retry=resolve)
        return {p.key: p.value for p in resp.pairs}

    bo, _sleeps = _bo()
    parts = await sender.execute(
        "RawBatchGet",
        KeysSharder[bytes](),
        [b"a", b"z"],
        _batch_get,
        handle,
        bo=bo,
        options=RequestOptions(concurrency=1),
    )
    assert _merge(parts) == {b"a": b"1", b"z": b"2"}
    assert resolved == ["locks"]
    assert len(transport.sent) == 3


async def test_concurrency_is_bounded_and_results_keep_key_order() -> None:
    regions = [
        make_region(i + 1, bytes([97 + i]), bytes([98 + i]) if i < 9 else b"") for i in range(10)
    ]
    regions[0] = make_region(1, b"", b"b")
    cluster, _, transport, sender = _setup(regions)
    transport.delay = 0.001
    keys = [bytes([97 + i]) + b"k" for i in range(10)]
    for k in keys:
        cluster.data[k] = k
    got: list[Any] = await sender.execute(
        "RawGet",
        KeySharder(),
        keys[0],
        _get,
    )
    assert got[0].value == keys[0]
    results = await sender.execute(
        "RawBatchGet",
        KeysSharder[bytes](),
        keys,
        _batch_get,
        lambda r, ks, resp: [p.key for p in resp.pairs],
        options=RequestOptions(concurrency=3),
    )
    assert [k for part in results for k in part] == sorted(keys)
    assert transport.max_inflight == 3


async def test_failure_of_one_part_cancels_the_others() -> None:
    regions = [make_region(1, b"", b"m"), make_region(2, b"m", b"")]
    _, _, transport, sender = _setup(regions)
    transport.region_delay[2] = 60.0  # would hang the test if it were not cancelled
    transport.faults["RawBatchGet"] = [
        errorpb_pb2.Error(FlashbackInProgress=errorpb_pb2.FlashbackInProgress(region_id=1))
    ]
    with pytest.raises(RegionError, match="FlashbackInProgress"):
        await BATCH_GET.run(sender, [b"a", b"z"])
    assert transport.inflight == 0
    assert transport.cancelled == 1


async def test_undetermined_result_region_error() -> None:
    cluster, _, transport, sender = _setup()
    undetermined = errorpb_pb2.Error(
        undetermined_result=errorpb_pb2.UndeterminedResult(message="?")
    )
    transport.faults["RawCompareAndSwap"] = [undetermined]
    req = kvrpcpb_pb2.RawCASRequest(key=b"k", value=b"1", previous_not_exist=True)
    with pytest.raises(UndeterminedError) as info:
        await sender.call_key("RawCompareAndSwap", b"k", req, ambiguity=Ambiguity.RAISE)
    assert isinstance(info.value.cause, RegionError)
    # An idempotent request is simply resent after a regionMiss backoff.
    transport.faults["RawPut"] = [undetermined]
    bo, _ = _bo()
    await sender.call_key("RawPut", b"k", kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"v"), bo=bo)
    assert cluster.data[b"k"] == b"v"
    assert bo.backoff_times == {"regionMiss": 1}


async def test_fatal_transport_codes_are_not_retried() -> None:
    _, _, transport, sender = _setup()
    transport.faults["RawGet"] = [
        TransportError(STORES[1], None, sent=False, code=grpc.StatusCode.UNIMPLEMENTED)
    ]
    with pytest.raises(TransportError) as info:
        await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"))
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert len(transport.sent) == 1


async def test_transport_timeout_is_retried_for_reads() -> None:
    cluster, locator, transport, sender = _setup()
    cluster.data[b"k"] = b"v"
    transport.faults["RawGet"] = [RPCTimeoutError(STORES[1], 0.1, sent=True)]
    bo, _ = _bo()
    resp = await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    assert resp.value == b"v"
    assert bo.backoff_times == {"tikvRPC": 1}
    assert locator.send_fails == [(1, 1)]


async def test_call_keys_lets_the_caller_cut_batches() -> None:
    cluster, _, transport, sender = _setup([make_region(1, b"", b"m"), make_region(2, b"m", b"")])
    keys = [b"a", b"b", b"c", b"n"]
    cluster.data.update({k: k for k in keys})

    def build(ks: Sequence[bytes]) -> list[tuple[Sequence[bytes], Any]]:
        return [
            (ks[i : i + 2], kvrpcpb_pb2.RawBatchGetRequest(keys=ks[i : i + 2]))
            for i in range(0, len(ks), 2)
        ]

    responses = await sender.call_keys("RawBatchGet", keys, build)
    assert [[p.key for p in r.pairs] for r in responses] == [[b"a", b"b"], [b"c"], [b"n"]]
    # After a split the failed batch is grouped and built again.
    cluster.split(1, b"b")
    transport.sent.clear()
    responses = await sender.call_keys("RawBatchGet", keys, build)
    assert sorted(p.key for r in responses for p in r.pairs) == keys


async def test_call_range_and_first_region() -> None:
    cluster, _, _, sender = _setup([make_region(1, b"", b"f"), make_region(2, b"f", b"")])
    cluster.data.update({b"a": b"1", b"g": b"2", b"h": b"3"})

    def scan(start: bytes, end: bytes) -> kvrpcpb_pb2.RawScanRequest:
        return kvrpcpb_pb2.RawScanRequest(start_key=start, end_key=end, limit=10)

    parts = await sender.call_range("RawScan", b"", b"", scan)
    assert [[kv.key for kv in p.kvs] for p in parts] == [[b"a"], [b"g", b"h"]]
    first, span = await sender.call_first_region("RawScan", b"b", b"z", scan, reverse=False)
    assert span == (b"b", b"f")
    assert [kv.key for kv in first[0].kvs] == []
    last, span = await sender.call_first_region("RawScan", b"b", b"", scan, reverse=True)
    assert span == (b"f", b"")
    assert [kv.key for kv in last[0].kvs] == [b"g", b"h"]


async def test_retry_then_raise_answer_after_loss_is_authoritative() -> None:
    # The lost first attempt is resolved by the answer of the second: a key error in
    # that answer is the outcome, not an undetermined result.
    _, _, transport, sender = _setup()
    transport.faults["RawPut"] = [TransportError(STORES[1], None, sent=True)]

    class RejectedError(Exception):
        pass

    def reject(region: Region, key: bytes, resp: Any) -> None:
        raise RejectedError("the server said no")

    bo, _ = _bo()
    with pytest.raises(RejectedError):
        await sender.execute(
            "RawPut",
            KeySharder(),
            b"k",
            lambda r, k: kvrpcpb_pb2.RawPutRequest(key=k, value=b"v"),
            reject,
            bo=bo,
            ambiguity=Ambiguity.RETRY_THEN_RAISE,
        )


async def test_replica_read_applies_to_reads_only() -> None:
    cluster, _, transport, sender = _setup()
    cluster.data[b"k"] = b"v"
    follower = RequestOptions(replica_read="follower")
    await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), options=follower)
    assert transport.sent[-1].address != STORES[1]
    assert transport.sent[-1].request.context.replica_read
    await sender.call_key(
        "RawPut", b"k", kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"w"), options=follower
    )
    assert transport.sent[-1].address == STORES[1]
    assert not transport.sent[-1].request.context.replica_read


async def test_store_without_address_relocates_the_region() -> None:
    cluster, locator, transport, sender = _setup()
    cluster.data[b"k"] = b"v"
    locator.gone_stores.add(1)
    bo, _ = _bo()
    resp = await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    assert resp.value == b"v"
    assert locator.invalidated == [(1, InvalidReason.STORE_NOT_FOUND)]
    assert bo.backoff_times == {"regionMiss": 1}
    assert len(transport.sent) == 1


async def test_busy_leader_with_threshold_reads_from_a_follower_at_once() -> None:
    cluster, _, transport, sender = _setup()
    cluster.data[b"k"] = b"v"
    busy = errorpb_pb2.Error(server_is_busy=errorpb_pb2.ServerIsBusy(estimated_wait_ms=80))
    transport.faults["RawGet"] = [busy]
    bo, sleeps = _bo()
    opts = RequestOptions(busy_threshold_ms=20)
    resp = await sender.call_key(
        "RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo, options=opts
    )
    assert resp.value == b"v"
    first, second = transport.sent
    assert first.address == STORES[1]
    assert first.request.context.busy_threshold_ms == 20
    assert second.address != STORES[1]
    assert second.request.context.replica_read
    assert second.request.context.busy_threshold_ms == 0
    assert sleeps.calls == []
    # Without a threshold the leader is asked again after a serverBusy backoff.
    transport.faults["RawGet"] = [busy]
    bo, sleeps = _bo()
    await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    assert transport.sent[-1].address == STORES[1]
    assert bo.backoff_times == {"tikvServerBusy": 1}


async def test_send_failure_to_the_leader_probes_another_peer() -> None:
    # The leader's store died and the leader moved, but PD still reports the old one:
    # the next attempt asks another voter instead of waiting for PD.
    cluster, locator, transport, sender = _setup()
    cluster.data[b"k"] = b"v"
    cluster.transfer_leader(1, 2)
    locator.pd_leaders[1] = 1
    transport.down.add(STORES[1])
    bo, _ = _bo()
    resp = await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    assert resp.value == b"v"
    assert [s.address for s in transport.sent] == [STORES[1], STORES[2]]
    assert bo.backoff_times == {"tikvRPC": 1}


def test_select_peer_avoids_unreachable_stores() -> None:
    region = _region_with_learner()
    leader = RequestOptions()
    assert select_peer(region, leader, 0, False, {1}) == (region.peers[1], 0)
    assert select_peer(region, leader, 1, False, {1, 2}) == (region.peers[2], 0)
    # Everything failed: back to the leader.
    assert select_peer(region, leader, 0, False, {1, 2, 3}) == (region.peers[0], 0)
    follower = RequestOptions(replica_read="follower")
    assert select_peer(region, follower, 0, False, {2}) == (region.peers[2], 1)


async def test_forwarding_reaches_an_unreachable_leader_through_a_follower() -> None:
    # The client cannot reach store 1, but the leader there is alive: with forwarding,
    # store 2 relays the request to it; the context still names the leader.
    cluster, locator, transport, _ = _setup()
    sender = RequestSender(locator, transport, forwarding=True)
    transport.down.add(STORES[1])
    bo, _sleeps = _bo()
    await sender.call_key("RawPut", b"k", kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"v"), bo=bo)
    assert cluster.data[b"k"] == b"v"
    first, second = transport.sent
    assert (first.address, first.forwarded_host) == (STORES[1], "")
    assert (second.address, second.forwarded_host) == (STORES[2], STORES[1])
    assert second.request.context.peer.store_id == 1


async def test_forwarded_attempts_go_through_the_requests_one_interceptor_chain() -> None:
    # The chain is wrapped once per request; the relayed attempt passes through it with
    # its forwarded host (no per-attempt rebuild), and interceptors may read it.
    seen: list[tuple[str, str, int, int]] = []
    wraps = [0]

    class Watch(Interceptor):
        def wrap(self, next: RPCInvoker) -> RPCInvoker:
            wraps[0] += 1
            return super().wrap(next)

        async def before_send(self, rpc: RPCRequest) -> None:
            seen.append((rpc.target, rpc.forwarded_host, rpc.store_id, rpc.attempt))

    cluster, locator, transport, _ = _setup()
    sender = RequestSender(locator, transport, forwarding=True)
    transport.down.add(STORES[1])
    bo, _sleeps = _bo()
    options = RequestOptions(interceptor=Watch())
    request = kvrpcpb_pb2.RawPutRequest(key=b"k", value=b"v")
    await sender.call_key("RawPut", b"k", request, bo=bo, options=options)
    assert cluster.data[b"k"] == b"v"
    assert wraps == [1]
    assert seen == [(STORES[1], "", 1, 0), (STORES[2], STORES[1], 1, 1)]
    assert [(s.address, s.forwarded_host) for s in transport.sent] == [
        (STORES[1], ""),
        (STORES[2], STORES[1]),
    ]


async def test_without_forwarding_an_unreachable_leader_exhausts_the_budget() -> None:
    _, locator, transport, _ = _setup()
    sender = RequestSender(locator, transport)
    assert not sender.forwarding
    transport.down.add(STORES[1])
    bo, _sleeps = _bo(budget_ms=500)
    with pytest.raises(TimeoutError):
        await sender.call_key("RawGet", b"k", kvrpcpb_pb2.RawGetRequest(key=b"k"), bo=bo)
    # Followers were probed (they name store 1 again), never used as proxies.
    assert {s.address for s in transport.sent} >= {STORES[1], STORES[2]}
    assert all(not s.forwarded_host for s in transport.sent)


def test_forwarding_defaults_to_the_transport_config() -> None:
    from tikv_pd.config import Config
    from tikv_pd.transport import Transport

    cluster = FakeCluster([make_region(1, b"", b"")])
    locator = FakeLocator(cluster)
    on = RequestSender(locator, Transport(Config(enable_forwarding=True)))
    off = RequestSender(locator, Transport(Config()))
    assert on.forwarding
    assert not off.forwarding
