"""Test doubles for the request pipeline: a cluster truth, a stale-able locator, a transport.

``FakeCluster`` is what TiKV knows (regions, leaders, data); ``FakeLocator`` is what the
client cached (it may lag behind the truth); ``FakeTransport`` checks each request's
context against the truth exactly as TiKV does and answers with the same region errors,
or executes raw commands on a dict. Faults can be queued per command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf.message import Message
from tikv_pd.errors import StoreUnavailableError
from tikv_pd.region_cache import InvalidReason, Peer, Region, RegionEpoch
from tikv_pd.transport import TransportError
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, metapb_pb2

STORES = {1: "s1:20160", 2: "s2:20160", 3: "s3:20160"}


def make_region(
    rid: int, start: bytes, end: bytes, *, version: int = 1, leader_store: int = 1
) -> Region:
    peers = tuple(Peer(rid * 10 + s, s) for s in (1, 2, 3))
    leader = next(p for p in peers if p.store_id == leader_store)
    return Region(rid, start, end, RegionEpoch(1, version), peers, leader)


def to_meta(region: Region) -> metapb_pb2.Region:
    return metapb_pb2.Region(
        id=region.id,
        start_key=region.start_key,
        end_key=region.end_key,
        region_epoch=metapb_pb2.RegionEpoch(
            conf_ver=region.epoch.conf_ver, version=region.epoch.version
        ),
        peers=[metapb_pb2.Peer(id=p.id, store_id=p.store_id) for p in region.peers],
    )


def from_meta(meta: metapb_pb2.Region, leader_store: int | None = None) -> Region:
    peers = tuple(Peer(p.id, p.store_id) for p in meta.peers)
    leader = next((p for p in peers if p.store_id == leader_store), None)
    return Region(
        meta.id,
        meta.start_key,
        meta.end_key,
        RegionEpoch(meta.region_epoch.conf_ver, meta.region_epoch.version),
        peers,
        leader,
    )


class FakeCluster:
    """The truth: current regions with their leaders, and the data."""

    def __init__(self, regions: Sequence[Region]) -> None:
        self.regions = {r.id: r for r in regions}
        self.data: dict[bytes, bytes] = {}
        self.next_id = 100

    def find(self, key: bytes) -> Region:
        for r in self.regions.values():
            if r.contains(key):
                return r
        raise AssertionError(f"no region for {key!r}")

    def split(self, rid: int, at: bytes) -> tuple[Region, Region]:
        old = self.regions.pop(rid)
        v = old.epoch.version + 1
        self.next_id += 1
        left = make_region(rid, old.start_key, at, version=v, leader_store=old.leader_store_id or 1)
        right = make_region(
            self.next_id, at, old.end_key, version=v, leader_store=old.leader_store_id or 1
        )
        self.regions[left.id] = left
        self.regions[right.id] = right
        return left, right

    def transfer_leader(self, rid: int, store: int) -> None:
        r = self.regions[rid]
        self.regions[rid] = r.with_leader(r.peer_on_store(store))


class FakeLocator:
    """The client's cache of the cluster, loaded from the truth on a miss."""

    def __init__(self, cluster: FakeCluster, cached: Sequence[Region] | None = None) -> None:
        self.cluster = cluster
        self.cache: dict[int, Region] = {
            r.id: r for r in (cached if cached is not None else cluster.regions.values())
        }
        self.invalidated: list[tuple[int, InvalidReason]] = []
        self.invalidated_stores: list[int] = []
        self.send_fails: list[tuple[int, int]] = []
        self.loads = 0
        # Stores whose next address lookup fails once (a tombstone in PD).
        self.gone_stores: set[int] = set()
        # Region id -> the leader store PD still reports (lagging behind the truth).
        self.pd_leaders: dict[int, int] = {}

    def _load(self, key: bytes) -> Region:
        self.loads += 1
        r = self.cluster.find(key)
        if r.id in self.pd_leaders:  # PD has not learnt the new leader yet
            r = r.with_leader(r.peer_on_store(self.pd_leaders[r.id]))
        for rid in [i for i, c in self.cache.items() if c.overlaps(r.start_key, r.end_key)]:
            del self.cache[rid]
        self.cache[r.id] = r
        return r

    async def locate_key(self, key: bytes) -> Region:
        for r in self.cache.values():
            if r.contains(key):
                return r
        return self._load(key)

    async def locate_end_key(self, key: bytes) -> Region:
        for r in self.cache.values():
            if r.contains_by_end(key):
                return r
        for r in self.cluster.regions.values():
            if r.contains_by_end(key):
                return self._load(r.start_key)
        raise AssertionError("no region")

    async def store_address(self, store_id: int) -> str:
        if store_id in self.gone_stores:
            self.gone_stores.discard(store_id)
            raise StoreUnavailableError(store_id, STORES[store_id])
        return STORES[store_id]

    def invalidate_region(self, region_id: int, reason: InvalidReason) -> None:
        self.invalidated.append((region_id, reason))
        self.cache.pop(region_id, None)

    def invalidate_store(self, store_id: int) -> None:
        self.invalidated_stores.append(store_id)

    def on_not_leader(self, region: Region, leader: metapb_pb2.Peer) -> bool:
        cached = self.cache.get(region.id)
        if cached is None:
            return False
        peer = cached.peer_on_store(leader.store_id)
        if peer is None:
            self.cache.pop(region.id, None)
            return False
        self.cache[region.id] = cached.with_leader(peer)
        return True

    def on_epoch_not_match(
        self, region: Region, current_regions: Sequence[metapb_pb2.Region], store_id: int
    ) -> bool:
        self.cache.pop(region.id, None)
        for meta in current_regions:
            new = from_meta(meta, store_id)
            for rid in [i for i, c in self.cache.items() if c.overlaps(new.start_key, new.end_key)]:
                del self.cache[rid]
            self.cache[new.id] = new
        return True

    def on_send_fail(self, region: Region, store_id: int) -> None:
        self.send_fails.append((region.id, store_id))
        self.cache.pop(region.id, None)


@dataclass
class Sent:
    address: str
    command: str
    request: Any
    forwarded_host: str = ""


@dataclass
class FakeTransport:
    """Answers like TiKV: region checks on the context, then raw commands on a dict."""

    cluster: FakeCluster
    sent: list[Sent] = field(default_factory=list)
    # Per command: exceptions to raise or errorpb.Error to answer, consumed in order.
    faults: dict[str, list[BaseException | errorpb_pb2.Error]] = field(default_factory=dict)
    closed: list[str] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    delay: float = 0.0
    # Extra delay of requests to a region (by id).
    region_delay: dict[int, float] = field(default_factory=dict)
    cancelled: int = 0
    # Addresses that refuse connections.
    down: set[str] = field(default_factory=set)

    async def send(
        self,
        address: str,
        command: str,
        request: Message,
        timeout: float | None = None,  # noqa: ASYNC109 - the Sender protocol
        *,
        forwarded_host: str | None = None,
    ) -> Any:
        req: Any = request
        snapshot = type(request)()
        snapshot.CopyFrom(request)
        self.sent.append(Sent(address, command, snapshot, forwarded_host or ""))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.delay + self.region_delay.get(req.context.region_id, 0.0))
            resp_type = _RESPONSES[command]
            if address in self.down:
                raise TransportError(address, ConnectionRefusedError(address), sent=False)
            queue = self.faults.get(command)
            if queue:
                fault = queue.pop(0)
                if isinstance(fault, BaseException):
                    raise fault
                return resp_type(region_error=fault)
            # A proxy relays a forwarded request to the store it names.
            target = forwarded_host or address
            err = self._check(target, req.context, _keys_of(command, req))
            if err is not None:
                return resp_type(region_error=err)
            return self._execute(command, req)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.inflight -= 1

    async def close_address(self, address: str) -> None:
        self.closed.append(address)

    def _check(
        self, address: str, ctx: kvrpcpb_pb2.Context, keys: list[bytes]
    ) -> errorpb_pb2.Error | None:
        region = self.cluster.regions.get(ctx.region_id)
        if region is None:
            return errorpb_pb2.Error(
                region_not_found=errorpb_pb2.RegionNotFound(region_id=ctx.region_id)
            )
        if (ctx.region_epoch.conf_ver, ctx.region_epoch.version) != (
            region.epoch.conf_ver,
            region.epoch.version,
        ):
            # TiKV reports the region as it is now and the regions split off it; the fake
            # simply reports every region, which covers both.
            current = [to_meta(r) for r in self.cluster.regions.values()]
            return errorpb_pb2.Error(
                epoch_not_match=errorpb_pb2.EpochNotMatch(current_regions=current)
            )
        store = next(s for s, a in STORES.items() if a == address)
        assert ctx.peer.store_id == store
        leader = region.leader
        if (
            not ctx.replica_read
            and not ctx.stale_read
            and (leader is None or leader.store_id != store)
        ):
            hint = metapb_pb2.Peer(id=leader.id, store_id=leader.store_id) if leader else None
            return errorpb_pb2.Error(
                not_leader=errorpb_pb2.NotLeader(region_id=region.id, leader=hint)
            )
        for k in keys:
            if not region.contains(k):
                return errorpb_pb2.Error(
                    key_not_in_region=errorpb_pb2.KeyNotInRegion(key=k, region_id=region.id)
                )
        return None

    def _execute(self, command: str, req: Any) -> Any:
        data = self.cluster.data
        if command == "RawGet":
            v = data.get(req.key)
            return kvrpcpb_pb2.RawGetResponse(value=v or b"", not_found=v is None)
        if command == "RawPut":
            data[req.key] = req.value
            return kvrpcpb_pb2.RawPutResponse()
        if command == "RawBatchGet":
            return kvrpcpb_pb2.RawBatchGetResponse(
                pairs=[kvrpcpb_pb2.KvPair(key=k, value=data[k]) for k in req.keys if k in data]
            )
        if command == "RawBatchPut":
            for p in req.pairs:
                data[p.key] = p.value
            return kvrpcpb_pb2.RawBatchPutResponse()
        if command == "RawScan":
            keys = sorted(
                k for k in data if k >= req.start_key and (not req.end_key or k < req.end_key)
            )
            return kvrpcpb_pb2.RawScanResponse(
                kvs=[kvrpcpb_pb2.KvPair(key=k, value=data[k]) for k in keys[: req.limit]]
            )
        if command == "RawCompareAndSwap":
            prev = data.get(req.key)
            ok = prev is None if req.previous_not_exist else prev == req.previous_value
            if ok:
                data[req.key] = req.value
            return kvrpcpb_pb2.RawCASResponse(
                succeed=ok, previous_not_exist=prev is None, previous_value=prev or b""
            )
        raise AssertionError(command)


_RESPONSES: dict[str, type[Any]] = {
    "RawGet": kvrpcpb_pb2.RawGetResponse,
    "RawPut": kvrpcpb_pb2.RawPutResponse,
    "RawBatchGet": kvrpcpb_pb2.RawBatchGetResponse,
    "RawBatchPut": kvrpcpb_pb2.RawBatchPutResponse,
    "RawScan": kvrpcpb_pb2.RawScanResponse,
    "RawCompareAndSwap": kvrpcpb_pb2.RawCASResponse,
}


def _keys_of(command: str, req: Any) -> list[bytes]:
    if command in ("RawGet", "RawPut", "RawCompareAndSwap"):
        return [req.key]
    if command == "RawBatchGet":
        return list(req.keys)
    if command == "RawBatchPut":
        return [p.key for p in req.pairs]
    if command == "RawScan":
        return [req.start_key]
    return []


def stale(region: Region, **changes: Any) -> Region:
    return replace(region, **changes)
