"""The replica-selection state table: access path x failure -> who serves, how, after what sleep.

client-go ``internal/locate/region_request_state_test.go`` (TestRegionCacheStaleRead)
drives a stale read with the local zone's labels through the region request sender while a
scripted store misbehaves, and checks which zone served it and as what (stale read,
leader read, follower read). The same table is encoded here, from client-go's rules
(``replica_selector.go``: ``nextForReplicaReadMixed``, ``canSendReplicaRead``,
``onNotLeader``, ``onServerIsBusy``/``canFastRetry``, ``onRegionNotFound``,
``onSendFailure``), for every access path our pipeline has (leader, follower, mixed,
prefer-leader, learner and stale reads) and the failures that matter (NotLeader with and
without a hint, ServerIsBusy, DataIsNotReady, send failure, timeout, EpochNotMatch,
RegionNotFound after a peer or leader move), through the real :class:`RequestSender`
and :class:`ReplicaSelector` over a real :class:`RegionCache`.

The cluster (client-go ``BootstrapWithMultiZones(3 zones, 2 stores each)``): stores 1, 2 in
z1, 3, 4 in z2, 5, 6 in z3; the region has peers 11@1 (leader), 13@3, 15@5. The scripted
store answers like TiKV (and client-go's test client): a peer that is not on the store
gets RegionNotFound, a non-leader asked for a normal read answers NotLeader naming the
leader, a different ``version`` gets EpochNotMatch with the current region, else it serves
the read and says how: ``stale`` (stale read), ``leader`` (normal read on the leader) or
``follower`` (replica read off the leader).

Where we differ from client-go, the row says so and asserts what we do:
``leader_down_and_elect`` — a send failure makes us reload the region from PD (client-go
bumps the store's epoch and reloads later), so the new local leader serves the stale read
instead of a remote follower.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from tikv_pd.backoff import Backoffer
from tikv_pd.config import ReplicaReadType
from tikv_pd.errors import TimeoutError as BackoffTimeoutError
from tikv_pd.region_cache import (
    InvalidReason,
    Peer,
    PeerRole,
    Region,
    RegionCache,
    RegionEpoch,
    Store,
)
from tikv_pd.request import RequestOptions, RequestSender
from tikv_pd.transport import RPCTimeoutError, TransportError
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, metapb_pb2

ZONE = {1: "z1", 2: "z1", 3: "z2", 4: "z2", 5: "z3", 6: "z3"}
L, F2, F3 = Peer(11, 1), Peer(13, 3), Peer(15, 5)
LEARNER = Peer(16, 6, PeerRole.LEARNER)


# ---------------------------------------------------------------------------------------
# The scripted cluster
# ---------------------------------------------------------------------------------------

ErrorFn = Callable[[kvrpcpb_pb2.Context, int], errorpb_pb2.Error | None]


@dataclass
class Cluster:
    """What TiKV / PD know, and how each store misbehaves."""

    region: Region
    down: set[int] = field(default_factory=set)
    timeouts: dict[int, int] = field(default_factory=dict)  # store -> timeouts left
    timeout_below: float = 0.0  # requests whose RPC timeout is shorter time out
    leader_error: ErrorFn | None = None
    follower_error: ErrorFn | None = None
    sent: list[tuple[int, bool, bool]] = field(default_factory=list)  # store, replica, stale


def to_meta(region: Region) -> metapb_pb2.Region:
    return metapb_pb2.Region(
        id=region.id,
        start_key=region.start_key,
        end_key=region.end_key,
        region_epoch=metapb_pb2.RegionEpoch(
            conf_ver=region.epoch.conf_ver, version=region.epoch.version
        ),
        peers=[
            metapb_pb2.Peer(id=p.id, store_id=p.store_id, role=int(p.role))  # type: ignore[arg-type]
            for p in region.peers
        ],
    )


class Locator:
    """The pipeline's Locator over a real RegionCache; PD is the scripted truth."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cache = RegionCache(rng=random.Random(0))
        for sid, zone in ZONE.items():
            self.cache.put_store(Store(sid, f"s{sid}", labels=(("zone", zone),)))
        self.loads = 0

    def _load(self) -> Region:
        self.loads += 1
        self.cache.insert(self.cluster.region)
        return self.cluster.region

    async def locate_key(self, key: bytes) -> Region:
        return self.cache.lookup(key) or self._load()

    async def locate_end_key(self, key: bytes) -> Region:
        return self.cache.lookup(key, end=True) or self._load()

    async def store_address(self, store_id: int) -> str:
        return f"s{store_id}"

    async def get_store(self, store_id: int) -> Store | None:
        return self.cache.get_store(store_id)

    def invalidate_region(self, region_id: int, reason: InvalidReason) -> None:
        self.cache.invalidate(region_id, reason)

    def invalidate_store(self, store_id: int) -> None:
        pass

    def on_not_leader(self, region: Region, leader: metapb_pb2.Peer) -> bool:
        hint = Peer(leader.id, leader.store_id) if leader.store_id else None
        return self.cache.on_not_leader(region.id, hint, epoch=region.epoch)

    def on_epoch_not_match(
        self, region: Region, current_regions: Sequence[metapb_pb2.Region], store_id: int
    ) -> bool:
        current = [
            Region(
                m.id,
                m.start_key,
                m.end_key,
                RegionEpoch(m.region_epoch.conf_ver, m.region_epoch.version),
                tuple(Peer(p.id, p.store_id, PeerRole(p.role)) for p in m.peers),
            )
            for m in current_regions
        ]
        return self.cache.on_epoch_not_match(region.id, region.epoch, current, store_id=store_id)

    def on_send_fail(self, region: Region, store_id: int) -> None:
        self.cache.on_send_fail(region.id, store_id)


class Transport:
    """Answers as TiKV would (client-go's state-test client), from the scripted truth."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def send(
        self,
        address: str,
        command: str,
        request: Message,
        timeout: float | None = None,  # noqa: ASYNC109 - the Sender protocol
        *,
        forwarded_host: str | None = None,
    ) -> Any:
        c = self.cluster
        store = int(address[1:])
        ctx: kvrpcpb_pb2.Context = request.context  # type: ignore[attr-defined]
        c.sent.append((store, ctx.replica_read, ctx.stale_read))
        if store in c.down:
            raise TransportError(
                address,
                ConnectionRefusedError(address),
                sent=False,
                code=grpc.StatusCode.UNAVAILABLE,
            )
        if c.timeouts.get(store, 0) > 0:
            c.timeouts[store] -= 1
            raise RPCTimeoutError(address, 1.0, sent=True)
        if timeout is not None and timeout < c.timeout_below:
            raise RPCTimeoutError(address, timeout, sent=True)
        truth = c.region
        resp = kvrpcpb_pb2.GetResponse

        def error(**kw: Any) -> Any:
            return resp(region_error=errorpb_pb2.Error(message="scripted", **kw))

        peer = next((p for p in truth.peers if p.id == ctx.peer.id), None)
        if peer is None or peer.store_id != store:
            return error(region_not_found=errorpb_pb2.RegionNotFound(region_id=truth.id))
        if ctx.region_epoch.version != truth.epoch.version:
            # TiKV checks only the version for KV requests (conf_ver for admin ones).
            return error(
                epoch_not_match=errorpb_pb2.EpochNotMatch(current_regions=[to_meta(truth)])
            )
        assert truth.leader is not None
        is_leader = truth.leader.store_id == store
        if is_leader:
            if c.leader_error is not None and (err := c.leader_error(ctx, store)) is not None:
                return resp(region_error=err)
        else:
            if not ctx.replica_read and not ctx.stale_read:
                return error(
                    not_leader=errorpb_pb2.NotLeader(
                        region_id=truth.id,
                        leader=metapb_pb2.Peer(id=truth.leader.id, store_id=truth.leader.store_id),
                    )
                )
            if c.follower_error is not None and (err := c.follower_error(ctx, store)) is not None:
                return resp(region_error=err)
        kind = "stale" if ctx.stale_read else "leader" if is_leader else "follower"
        return resp(value=f"{store}-{kind}".encode())

    async def close_address(self, address: str) -> None:
        pass


# ---------------------------------------------------------------------------------------
# Failures (client-go's do / extra functions, and the other kinds)
# ---------------------------------------------------------------------------------------

Setup = Callable[[Cluster], None]


def moved(region: Region, old: Peer, new: Peer, *, leader: bool = False) -> Region:
    peers = tuple(new if p == old else p for p in region.peers)
    epoch = RegionEpoch(region.epoch.conf_ver + 1, region.epoch.version)
    lead = new if leader else region.leader
    return replace(region, peers=peers, epoch=epoch, leader=lead)


def follower_down(c: Cluster) -> None:
    c.down.add(3)


def follower_move(c: Cluster) -> None:
    # Peer 13 moves from store 3 to store 4 (same zone, same peer id).
    c.region = moved(c.region, F2, Peer(13, 4))


def evict_leader(c: Cluster) -> None:
    c.region = c.region.with_leader(F2)


def leader_move(c: Cluster) -> None:
    # The leader peer 11 moves from store 1 to store 2 (same zone) and stays leader.
    c.region = moved(c.region, L, Peer(11, 2), leader=True)


def leader_down(c: Cluster) -> None:
    c.down.add(1)


def leader_down_and_elect(c: Cluster) -> None:
    leader_move(c)
    c.down.add(1)


def _busy(ctx: kvrpcpb_pb2.Context, store: int) -> errorpb_pb2.Error:
    return errorpb_pb2.Error(server_is_busy=errorpb_pb2.ServerIsBusy(reason="test", backoff_ms=1))


def leader_busy(c: Cluster) -> None:
    c.leader_error = lambda ctx, store: _busy(ctx, store) if store == 1 else None


def follower_busy(c: Cluster) -> None:  # the z2 follower
    c.follower_error = lambda ctx, store: _busy(ctx, store) if store == 3 else None


def followers_busy(c: Cluster) -> None:
    c.follower_error = _busy


def follower_data_not_ready(c: Cluster) -> None:
    def err(ctx: kvrpcpb_pb2.Context, store: int) -> errorpb_pb2.Error | None:
        if not ctx.stale_read or store != 3:
            return None
        return errorpb_pb2.Error(data_is_not_ready=errorpb_pb2.DataIsNotReady(region_id=1))

    c.follower_error = err


def once(fn: ErrorFn) -> ErrorFn:
    fired: list[bool] = []

    def wrapped(ctx: kvrpcpb_pb2.Context, store: int) -> errorpb_pb2.Error | None:
        if fired:
            return None
        err = fn(ctx, store)
        if err is not None:
            fired.append(True)
        return err

    return wrapped


def leader_busy_once(c: Cluster) -> None:
    c.leader_error = once(lambda ctx, store: _busy(ctx, store))


def not_leader_no_hint_once(c: Cluster) -> None:
    c.leader_error = once(
        lambda ctx, store: errorpb_pb2.Error(not_leader=errorpb_pb2.NotLeader(region_id=1))
    )


def leader_timeout_once(c: Cluster) -> None:
    c.timeouts[1] = 1


def follower_timeout_once(c: Cluster) -> None:
    c.timeouts[3] = 1


def version_bump(c: Cluster) -> None:
    # A merge / split elsewhere bumped the version: EpochNotMatch with the current region.
    c.region = replace(c.region, epoch=RegionEpoch(c.region.epoch.conf_ver, 2))


def learner_down(c: Cluster) -> None:
    c.down.add(6)


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------

FAIL = "fail"


@dataclass(frozen=True)
class Row:
    """One access path under one failure, and what client-go's rules make of it.

    ``served``: the (store, how) pairs any of which is correct (client-go draws randomly
    among equally good replicas), or ``FAIL``. ``slept``: the backoff kinds slept (``None``:
    not checked).
    """

    name: str
    read: ReplicaReadType
    stale: bool
    zone: str | None
    setup: tuple[Setup, ...]
    served: frozenset[tuple[int, str]] | str
    slept: frozenset[str] | None = frozenset()
    learner: bool = False
    not_first: bool = False  # the store that served is not the first one asked


_NOTHING: set[str] = set()


def row(
    name: str,
    read: ReplicaReadType,
    setup: Sequence[Setup],
    served: set[tuple[int, str]] | str,
    *,
    stale: bool = False,
    zone: str | None = None,
    slept: set[str] | None = _NOTHING,
    learner: bool = False,
    not_first: bool = False,
) -> Row:
    return Row(
        name,
        read,
        stale,
        zone,
        tuple(setup),
        served if isinstance(served, str) else frozenset(served),
        None if slept is None else frozenset(slept),
        learner,
        not_first,
    )


def stale(
    name: str, zone: str, setup: Sequence[Setup], served: set[tuple[int, str]] | str, **kw: Any
) -> Row:
    return row(f"stale/{zone}/{name}", "mixed", setup, served, stale=True, zone=zone, **kw)


ANY_FOLLOWER = {(3, "follower"), (5, "follower")}

ROWS = [
    # -- stale reads with the local zone's labels: client-go TestRegionCacheStaleRead -----
    stale("healthy", "z1", [], {(1, "stale")}),
    stale("healthy", "z2", [], {(3, "stale")}),
    stale("follower_down", "z1", [follower_down], {(1, "stale")}),
    # The local follower fails; attempt 2 of a stale read is a leader read.
    stale("follower_down", "z2", [follower_down], {(1, "leader")}, slept={"tikvRPC"}),
    stale("follower_move", "z1", [follower_move], {(1, "stale")}),
    # RegionNotFound from the moved peer: the untried leader gets the same (stale) read at
    # once (onRegionNotFound).
    stale("follower_move", "z2", [follower_move], {(1, "stale")}),
    # The old leader still serves stale reads as a follower.
    stale("evict_leader", "z1", [evict_leader], {(1, "stale")}),
    stale("evict_leader", "z2", [evict_leader], {(3, "stale")}),
    # The leader peer moved: RegionNotFound from the tried leader -> regionMiss, reload,
    # the local (new) leader.
    stale("leader_move", "z1", [leader_move], {(2, "stale")}, slept={"regionMiss"}),
    stale("leader_move", "z2", [leader_move], {(3, "stale")}),
    # The leader's store fails: the leader was tried and was not busy -> replica reads.
    stale("leader_down", "z1", [leader_down], ANY_FOLLOWER, slept={"tikvRPC"}),
    stale("leader_down", "z2", [leader_down], {(3, "stale")}),
    # Differs from client-go ((3|5, follower)): our reload after the failure finds the
    # new local leader.
    stale(
        "leader_down_and_elect", "z1", [leader_down_and_elect], {(2, "stale")}, slept={"tikvRPC"}
    ),
    stale("leader_down_and_elect", "z2", [leader_down_and_elect], {(3, "stale")}),
    stale("follower_data_not_ready", "z1", [follower_data_not_ready], {(1, "stale")}),
    # DataIsNotReady: retried at once on the leader as a leader read.
    stale("follower_data_not_ready", "z2", [follower_data_not_ready], {(1, "leader")}),
    # A busy leader: fast retry elsewhere, still stale (the leader answered busy).
    stale("leader_busy", "z1", [leader_busy], {(3, "stale"), (5, "stale")}),
    stale("leader_busy", "z2", [leader_busy], {(3, "stale")}),
    stale("follower_busy", "z1", [follower_busy], {(1, "stale")}),
    stale("follower_busy", "z2", [follower_busy], {(1, "leader")}),
    stale("leader_busy+follower_busy", "z1", [leader_busy, follower_busy], {(5, "stale")}),
    stale("leader_busy+follower_busy", "z2", [leader_busy, follower_busy], {(5, "stale")}),
    stale(
        "leader_busy+follower_data_not_ready",
        "z1",
        [leader_busy, follower_data_not_ready],
        {(3, "stale"), (5, "stale")},
    ),
    stale(
        "leader_busy+follower_data_not_ready",
        "z2",
        [leader_busy, follower_data_not_ready],
        {(3, "stale"), (5, "stale")},
    ),
    stale(
        "leader_busy+follower_down",
        "z1",
        [leader_busy, follower_down],
        {(5, "stale")},
        slept=None,  # tikvRPC only when store 3 is drawn before store 5
    ),
    stale(
        "leader_busy+follower_down",
        "z2",
        [leader_busy, follower_down],
        {(5, "stale")},
        slept={"tikvRPC"},
    ),
    stale(
        "leader_down+follower_data_not_ready",
        "z1",
        [leader_down, follower_data_not_ready],
        ANY_FOLLOWER,
        slept={"tikvRPC"},
    ),
    stale(
        "leader_down+follower_data_not_ready",
        "z2",
        [leader_down, follower_data_not_ready],
        # The z2 follower matches the labels: it outranks the untried z3 one and, having
        # refused only a stale read, serves the replica read.
        {(3, "follower")},
        slept={"tikvRPC"},
    ),
    stale(
        "leader_down+follower_busy",
        "z1",
        [leader_down, follower_busy],
        {(5, "follower")},
        slept={"tikvRPC"},
    ),
    stale(
        "leader_down+follower_busy",
        "z2",
        [leader_down, follower_busy],
        {(5, "follower")},
        slept={"tikvRPC"},
    ),
    stale(
        "leader_down+follower_down",
        "z1",
        [leader_down, follower_down],
        {(5, "follower")},
        slept={"tikvRPC"},
    ),
    stale(
        "leader_down+follower_down",
        "z2",
        [leader_down, follower_down],
        {(5, "follower")},
        slept={"tikvRPC"},
    ),
    # A timeout (not client-go's configurable read timeout): a send failure; the leader was
    # tried -> replica read elsewhere.
    stale("leader_timeout", "z1", [leader_timeout_once], ANY_FOLLOWER, slept={"tikvRPC"}),
    # -- leader reads ----------------------------------------------------------------------
    row("leader/healthy", "leader", [], {(1, "leader")}),
    # NotLeader naming the new leader: switch at once, no sleep.
    row("leader/not_leader_hint", "leader", [evict_leader], {(3, "leader")}),
    # NotLeader without a leader (election): regionScheduling, then the leader again.
    row(
        "leader/not_leader_no_hint",
        "leader",
        [not_leader_no_hint_once],
        {(1, "leader")},
        slept={"regionScheduling"},
    ),
    # A busy leader read: no other replica may serve it -> sleep tikvServerBusy, retry.
    row("leader/busy", "leader", [leader_busy_once], {(1, "leader")}, slept={"tikvServerBusy"}),
    row("leader/timeout", "leader", [leader_timeout_once], {(1, "leader")}, slept={"tikvRPC"}),
    # The leader's store is gone for good and nobody else leads: the budget runs out.
    row("leader/leader_down", "leader", [leader_down], FAIL, slept=None),
    row(
        "leader/leader_down_and_elect",
        "leader",
        [leader_down_and_elect],
        {(2, "leader")},
        slept={"tikvRPC"},
    ),
    # EpochNotMatch carries the current region: update the cache and resend, no sleep.
    row("leader/epoch_not_match", "leader", [version_bump], {(1, "leader")}),
    row("leader/leader_move", "leader", [leader_move], {(2, "leader")}, slept={"regionMiss"}),
    # -- follower reads --------------------------------------------------------------------
    row("follower/healthy", "follower", [], ANY_FOLLOWER),
    row("follower/one_busy", "follower", [follower_busy], {(5, "follower")}),
    # Every follower busy: fast retries, then the leader (a normal read), no sleep.
    row("follower/all_busy", "follower", [followers_busy], {(1, "leader")}),
    row("follower/one_down", "follower", [follower_down], {(5, "follower")}, slept=None),
    row(
        "follower/one_timeout",
        "follower",
        [follower_timeout_once],
        {(5, "follower"), (3, "follower")},
        slept=None,
    ),
    row("follower/leader_down", "follower", [leader_down], ANY_FOLLOWER),
    # The answering store becomes the believed leader of the current region (client-go
    # OnRegionEpochNotMatch), so the resend goes to one of the two others.
    row(
        "follower/epoch_not_match",
        "follower",
        [version_bump],
        {(1, "leader"), *ANY_FOLLOWER},
        not_first=True,
    ),
    # The moved peer answers RegionNotFound: the leader (not tried) serves at once.
    row(
        "follower/follower_move",
        "follower",
        [follower_move],
        {(1, "leader"), (5, "follower")},
    ),
    # -- mixed -------------------------------------------------------------------------------
    row("mixed/healthy", "mixed", [], {(1, "leader"), *ANY_FOLLOWER}),
    row("mixed/leader_down", "mixed", [leader_down], ANY_FOLLOWER, slept=None),
    row("mixed/leader_busy", "mixed", [leader_busy], {(1, "leader"), *ANY_FOLLOWER}, slept=None),
    # -- prefer-leader -----------------------------------------------------------------------
    row("prefer-leader/healthy", "prefer-leader", [], {(1, "leader")}),
    # A busy leader: fast retry on a follower (not a leader read: canFastRetry).
    row("prefer-leader/leader_busy", "prefer-leader", [leader_busy], ANY_FOLLOWER),
    row(
        "prefer-leader/leader_down",
        "prefer-leader",
        [leader_down],
        ANY_FOLLOWER,
        slept={"tikvRPC"},
    ),
    # -- learner (peers 11@1 leader, 13@3, 16@6 learner) ---------------------------------
    row("learner/healthy", "learner", [], {(6, "follower")}, learner=True),
    # The learner is gone: any other replica (client-go learnerOnly only scores learners
    # higher); a replica read off the leader.
    row(
        "learner/learner_down",
        "learner",
        [learner_down],
        {(1, "leader"), (3, "follower")},
        slept={"tikvRPC"},
        learner=True,
    ),
]


class Sleeps:
    async def __call__(self, seconds: float) -> None:
        pass


@pytest.mark.parametrize("case", ROWS, ids=[r.name for r in ROWS])
@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_state_table(case: Row, seed: int) -> None:
    peers = (L, F2, LEARNER) if case.learner else (L, F2, F3)
    cluster = Cluster(Region(1, b"", b"", RegionEpoch(1, 1), peers, L))
    locator = Locator(cluster)
    sender = RequestSender(locator, Transport(cluster))
    sender.rng = random.Random(seed)
    await locator.locate_key(b"k")  # cached before the failure, as client-go's test does
    for setup in case.setup:
        setup(cluster)
    options = RequestOptions(
        replica_read=case.read,
        stale_read=case.stale,
        match_labels=(("zone", case.zone),) if case.zone else (),
    )
    bo = Backoffer(2_000, operation="state-table", sleep=Sleeps(), rng=random.Random(seed))
    request = kvrpcpb_pb2.GetRequest(key=b"k", version=1)
    if case.served == FAIL:
        with pytest.raises(BackoffTimeoutError):
            await sender.call_key("Get", b"k", request, bo=bo, options=options)
        return
    response = await sender.call_key("Get", b"k", request, bo=bo, options=options)
    store, how = response.value.decode().split("-")
    assert (int(store), how) in case.served, (case.name, cluster.sent)
    if case.not_first:
        assert int(store) != cluster.sent[0][0], (case.name, cluster.sent)
    if case.slept is not None:
        assert set(bo.backoff_times) == case.slept, (case.name, cluster.sent, bo.backoff_times)


# ---------------------------------------------------------------------------------------
# Store liveness (client-go region_request3_test TestAccessFollowerAfter1TiKVDown,
# TestDoNotTryUnreachableLeader): a store that refused a connection is skipped by replica
# and stale reads until the re-check interval passes; the next read then probes it.
# ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def harness(seed: int = 0) -> tuple[Cluster, Locator, RequestSender, Clock]:
    from tikv_pd.replica_selector import StoreHealth

    cluster = Cluster(Region(1, b"", b"", RegionEpoch(1, 1), (L, F2, F3), L))
    locator = Locator(cluster)
    sender = RequestSender(locator, Transport(cluster))
    sender.rng = random.Random(seed)
    clock = Clock()
    sender.health = StoreHealth(clock=clock, recheck_seconds=1.0)
    return cluster, locator, sender, clock


async def read(sender: RequestSender, options: RequestOptions) -> tuple[str, Backoffer]:
    bo = Backoffer(2_000, operation="liveness", sleep=Sleeps())
    request = kvrpcpb_pb2.GetRequest(key=b"k", version=1)
    response = await sender.call_key("Get", b"k", request, bo=bo, options=options)
    return response.value.decode(), bo


async def test_unreachable_followers_are_skipped_until_the_recheck() -> None:
    cluster, _, sender, clock = harness()
    cluster.down |= {3, 5}
    mixed = RequestOptions(replica_read="mixed")
    # Reads that draw a follower fail over to another replica; each failed follower is
    # marked unreachable.
    for _ in range(10):
        value, _ = await read(sender, mixed)
        assert value == "1-leader"
        if {s for s, _, _ in cluster.sent} >= {3, 5}:
            break
    assert {s for s, _, _ in cluster.sent} >= {3, 5}
    # Both followers are unreachable now: every read goes straight to the leader, in one
    # attempt and without sleeping (client-go: "the backoff times should be 0").
    for _ in range(50):
        cluster.sent.clear()
        value, bo = await read(sender, mixed)
        assert value == "1-leader"
        assert [s for s, _, _ in cluster.sent] == [1]
        assert bo.total_sleep_ms == 0
    # The followers come back; past the re-check interval a read probes them again and,
    # answered, they serve replica reads.
    cluster.down.clear()
    clock.now += 1.0
    served: set[str] = set()
    for _ in range(30):
        value, _ = await read(sender, mixed)
        served.add(value)
    assert served & {"3-follower", "5-follower"}
    assert not sender.health.has_unreachable()


async def test_a_stale_read_does_not_try_an_unreachable_leader() -> None:
    cluster, _, sender, _ = harness()
    sender.health.mark_unreachable(1)
    # The local zone is the leader's, but its store is unreachable: a follower serves the
    # stale read and the leader is never asked.
    for seed in range(5):
        sender.rng = random.Random(seed)
        cluster.sent.clear()
        value, bo = await read(
            sender,
            RequestOptions(replica_read="mixed", stale_read=True, match_labels=(("zone", "z1"),)),
        )
        assert value in ("3-stale", "5-stale")
        assert 1 not in {s for s, _, _ in cluster.sent}
        assert bo.total_sleep_ms == 0
    # client-go TestDoNotTryUnreachableLeader: the follower's own zone.
    value, _ = await read(
        sender,
        RequestOptions(replica_read="mixed", stale_read=True, match_labels=(("zone", "z2"),)),
    )
    assert value == "3-stale"


# ---------------------------------------------------------------------------------------
# A read's own short timeout (client-go's configurable read timeout: TestSendReqFirstTimeout,
# TestStaleReadTryFollowerAfterTimeout): a timeout moves on to another replica at once.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("read_type", "stale_read"),
    [("leader", False), ("follower", False), ("mixed", False), ("mixed", True)],
)
async def test_short_read_timeouts_try_each_replica_once_without_backoff(
    read_type: ReplicaReadType, stale_read: bool
) -> None:
    cluster, _, sender, _ = harness()
    cluster.timeout_below = 0.01  # every store is slower than 1 ms
    options = RequestOptions(replica_read=read_type, stale_read=stale_read, timeout=0.001)
    bo = Backoffer(300, operation="short-timeout", sleep=Sleeps())
    request = kvrpcpb_pb2.GetRequest(key=b"k", version=1)
    with pytest.raises(BackoffTimeoutError):
        await sender.call_key("Get", b"k", request, bo=bo, options=options)
    # The first round asked each store once, then slept regionMiss (never tikvRPC) and
    # started over; the stores were not blamed and the region stayed cached.
    first_round = [s for s, _, _ in cluster.sent[:3]]
    assert sorted(first_round) == [1, 3, 5]
    assert set(bo.backoff_times) == {"regionMiss"}
    assert sender.stats.send_failures == len(cluster.sent)
    assert not sender.health.has_unreachable()
    # A leader read that timed out goes on as a replica read of a follower.
    if read_type == "leader" and not stale_read:
        assert cluster.sent[0] == (1, False, False)
        assert all(replica for s, replica, _ in cluster.sent[1:3])
    # With the default timeout, one RPC serves it.
    cluster.sent.clear()
    value, bo = await read(sender, replace(options, timeout=None))
    assert len(cluster.sent) == 1 and bo.total_sleep_ms == 0
    assert value.endswith(("leader", "follower", "stale"))


async def test_a_write_timeout_is_a_send_failure() -> None:
    cluster, _, sender, _ = harness()
    cluster.timeouts[1] = 1
    bo = Backoffer(2_000, operation="write", sleep=Sleeps())
    await sender.call_key(
        "Prewrite",
        b"k",
        kvrpcpb_pb2.PrewriteRequest(),
        bo=bo,
        options=RequestOptions(timeout=0.5),
    )
    # Writes get no fast retry: tikvRPC backoff (client-go: "write request timeout won't
    # do fast retry").
    assert bo.backoff_times.get("tikvRPC") == 1


async def test_stale_read_tries_a_follower_after_the_leader_times_out() -> None:
    cluster, _, sender, _ = harness()
    cluster.timeouts[1] = 100  # the leader never answers in time
    options = RequestOptions(
        replica_read="mixed", stale_read=True, match_labels=(("zone", "z1"),), timeout=1.0
    )
    value, bo = await read(sender, options)
    # Two RPCs, no backoff; the leader timed out, so the retry stays a stale read
    # (canSendReplicaRead is false after a leader timeout).
    assert cluster.sent[0][0] == 1
    assert len(cluster.sent) == 2
    assert value in ("3-stale", "5-stale")
    assert bo.total_sleep_ms == 0


async def test_a_stuck_leader_does_not_hold_a_write_once_another_peer_leads() -> None:
    # client-go TestLeaderStuck: the cached leader never answers (its store is stuck);
    # meanwhile a follower became leader. The write gives up on the stuck store after its
    # timeout and reaches the new leader through another peer's NotLeader hint.
    cluster, locator, sender, _ = harness()
    await locator.locate_key(b"k")  # cached with the old leader
    cluster.timeouts[1] = 1_000
    evict_leader(cluster)  # store 3 leads now; the client still caches store 1
    bo = Backoffer(20_000, operation="prewrite", sleep=Sleeps())
    response = await sender.call_key(
        "Prewrite", b"k", kvrpcpb_pb2.PrewriteRequest(), bo=bo, options=RequestOptions()
    )
    assert response.value == b"3-leader"
    assert [s for s, _, _ in cluster.sent][:1] == [1]
    assert bo.backoff_times == {"tikvRPC": 1}


# ---------------------------------------------------------------------------------------
# Per-operation RPC runtime stats (client-go TestRegionRequestStats)
# ---------------------------------------------------------------------------------------


def test_rpc_runtime_stats_format_caps_merge_and_copy() -> None:
    from tikv_pd.request import RPCRuntimeStats

    ms = 1_000_000
    stats = RPCRuntimeStats()
    stats.record_rpc("Get", 1000 * ms)
    stats.record_rpc("Get", 1 * ms)
    stats.record_rpc("Coprocessor", 2000 * ms)
    stats.record_rpc("Coprocessor", 200 * ms)
    stats.record_error("context canceled")
    stats.record_error("context canceled")
    stats.record_error("region_not_found")
    stats.merge(RPCRuntimeStats())
    copied = RPCRuntimeStats()
    copied.merge(stats.copy())
    expected = (
        "Get:{num_rpc:2, total_time:1s},Coprocessor:{num_rpc:2, total_time:2.2s}, "
        "rpc_errors:{context canceled:2, region_not_found:1}"
    )
    assert str(stats) == expected
    assert str(copied) == expected
    assert stats.rpc_count("Get") == 2 and stats.rpc_count("Scan") == 0
    # Only 16 distinct error kinds are kept; the rest are counted together.
    for i in range(50):
        stats.record_error(f"err_{i}")
    assert len(stats.errors.counts) == 16
    assert str(stats.errors).endswith(", other_error:36}")
    assert "err_13:1" in str(stats) and "err_14" not in str(stats)
    # A copy is independent.
    copied.record_rpc("Get", 1000 * ms)
    assert stats.rpc_count("Get") == 2


def test_replica_access_path_keeps_five_then_counts_per_peer() -> None:
    from tikv_pd.request import RPCRuntimeStats

    stats = RPCRuntimeStats()
    stats.record_access(
        peer=1, store=2, stale_read=True, replica_read=False, error="data_not_ready"
    )
    stats.record_access(peer=3, store=4, stale_read=False, replica_read=False, error="not_leader")
    stats.record_access(
        peer=5, store=6, stale_read=False, replica_read=True, error="server_is_Busy"
    )
    assert stats.access_path() == (
        "{stale_read, peer:1, store:2, err:data_not_ready}, "
        "{peer:3, store:4, err:not_leader}, "
        "{replica_read, peer:5, store:6, err:server_is_Busy}"
    )
    for i in range(20):
        stats.record_access(
            peer=5 + i % 2, store=6, stale_read=False, replica_read=False, error="server_is_Busy"
        )
    path = stats.access_path()
    assert path.count("{peer:5, store:6, err:server_is_Busy}") == 1
    assert path.count("{peer:6, store:6, err:server_is_Busy}") == 1
    assert "overflow_count:{" in path
    assert "{peer:5, error_stats:{server_is_Busy:9}}" in path
    assert "{peer:6, error_stats:{server_is_Busy:9}}" in path


async def test_the_pipeline_records_rpcs_errors_and_the_access_path() -> None:
    from tikv_pd.request import collect_rpc_stats

    cluster, _, sender, _ = harness()
    follower_data_not_ready(cluster)
    options = RequestOptions(replica_read="mixed", stale_read=True, match_labels=(("zone", "z2"),))
    with collect_rpc_stats() as stats:
        value, _ = await read(sender, options)
    assert value == "1-leader"
    assert stats.rpc_count("Get") == 2
    assert stats.errors.counts == {"data_is_not_ready": 1}
    assert stats.access_path() == "{stale_read, peer:13, store:3, err:data_is_not_ready}"
    assert str(stats).startswith("Get:{num_rpc:2, total_time:")
    # A send failure is recorded by its kind; outside a block nothing is recorded.
    cluster.down.add(1)
    cluster.follower_error = None
    with collect_rpc_stats() as stats:
        value, _ = await read(sender, RequestOptions(replica_read="prefer-leader"))
    assert value in ("3-follower", "5-follower")
    assert stats.errors.counts == {"unavailable": 1}
    assert stats.access[0].store == 1 and stats.access[0].error == "unavailable"
    cluster.down.clear()
    await read(sender, RequestOptions())
    assert stats.rpc_count("Get") == 2


async def test_request_options_stats_are_filled_alongside_an_open_block() -> None:
    import dataclasses

    from tikv_pd.request import RPCRuntimeStats, collect_rpc_stats

    cluster, _, sender, _ = harness()
    follower_data_not_ready(cluster)
    own = RPCRuntimeStats()
    options = RequestOptions(
        replica_read="mixed", stale_read=True, match_labels=(("zone", "z2"),), rpc_stats=own
    )
    # Options with their own stats: recorded without any block.
    value, _ = await read(sender, options)
    assert value == "1-leader"
    assert own.rpc_count("Get") == 2
    assert own.errors.counts == {"data_is_not_ready": 1}
    assert own.access_path() == "{stale_read, peer:13, store:3, err:data_is_not_ready}"
    # Inside a block both are filled; the block's own object is counted once.
    with collect_rpc_stats() as outer:
        await read(sender, options)
    assert own.rpc_count("Get") == 4 and outer.rpc_count("Get") == 2
    assert outer.errors.counts == {"data_is_not_ready": 1}
    with collect_rpc_stats(own):
        await read(sender, options)
    assert own.rpc_count("Get") == 6
    # The stats are not part of the options' value (contexts stay cached per value).
    assert options == dataclasses.replace(options, rpc_stats=None)
    with pytest.raises(TypeError, match="rpc_stats"):
        RequestOptions(rpc_stats={})  # type: ignore[arg-type]


async def test_a_leader_read_skips_a_leader_whose_store_is_unreachable() -> None:
    # client-go isLeaderCandidate: a leader whose store refused connections within the
    # re-check interval is not asked first; a follower is, and its NotLeader answer names
    # the leader, which is then tried (a live peer's word beats our own stale failure).
    cluster, _, sender, _ = harness()
    sender.health.mark_unreachable(1)
    leader_read = RequestOptions()
    value, bo = await read(sender, leader_read)
    assert value == "1-leader"
    sent = [s for s, _, _ in cluster.sent]
    assert sent[0] in (3, 5) and sent[-1] == 1 and len(sent) == 2
    assert bo.total_sleep_ms == 0
    # The leader answered: reachable again, asked first from now on.
    assert not sender.health.has_unreachable()
    cluster.sent.clear()
    assert (await read(sender, leader_read))[0] == "1-leader"
    assert [s for s, _, _ in cluster.sent] == [1]
    # The leader's store is really down: the follower's hint leads back to it once, the
    # send fails, and the read keeps going until the leader moves (its budget bounds it).
    cluster.down.add(1)
    sender.health.mark_unreachable(1)
    cluster.sent.clear()
    cluster.region = cluster.region.with_leader(F2)
    value, _ = await read(sender, leader_read)
    assert value == "3-leader"
    assert cluster.sent[0][0] != 1


async def test_a_leader_read_without_health_marks_goes_to_the_leader_first() -> None:
    cluster, _, sender, clock = harness()
    for _ in range(5):
        cluster.sent.clear()
        assert (await read(sender, RequestOptions()))[0] == "1-leader"
        assert [s for s, _, _ in cluster.sent] == [1]
    # A mark older than the re-check interval is a re-check: the leader is asked again.
    sender.health.mark_unreachable(1)
    clock.now += 1.0
    cluster.sent.clear()
    assert (await read(sender, RequestOptions()))[0] == "1-leader"
    assert [s for s, _, _ in cluster.sent] == [1]
