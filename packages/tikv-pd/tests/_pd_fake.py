"""A small in-process PD cluster over real grpc.aio servers, for the PD client's tests.

Each member is a ``grpc.aio`` server on a loopback port serving ``pdpb.PD`` and
``keyspacepb.Keyspace``. Members share one state: the cluster id, the leader, a TSO
allocator, regions (keys as PD stores them), stores, safepoints and keyspaces. Followers
answer every request except GetMembers with ``UNAVAILABLE: not leader``, as PD does.

Tests steer it: ``move_leader``, ``stop_member``, ``fail[method]`` (a list of status codes
the next calls of ``method`` get), ``tso_hook`` (an async callback run before each TSO
answer: delay, abort), and read counters: ``calls[method]``, ``tso_requests`` and
``tso_counts`` (the count of each TsoRequest).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from tikv_proto import keyspacepb_pb2, keyspacepb_pb2_grpc, metapb_pb2, pdpb_pb2, pdpb_pb2_grpc

LOGICAL_BITS = 18


@dataclass
class FakeRegion:
    id: int
    start: bytes
    end: bytes
    peers: list[tuple[int, int]]  # (peer id, store id)
    leader_store: int
    version: int = 1
    conf_ver: int = 1
    drop_epoch: bool = False
    down_stores: list[int] = field(default_factory=list)  # peers PD reports down

    def to_pb(self) -> metapb_pb2.Region:
        if self.drop_epoch:
            return metapb_pb2.Region(
                id=self.id,
                start_key=self.start,
                end_key=self.end,
                peers=[metapb_pb2.Peer(id=p, store_id=s) for p, s in self.peers],
            )
        return metapb_pb2.Region(
            id=self.id,
            start_key=self.start,
            end_key=self.end,
            region_epoch=metapb_pb2.RegionEpoch(conf_ver=self.conf_ver, version=self.version),
            peers=[metapb_pb2.Peer(id=p, store_id=s) for p, s in self.peers],
        )

    def leader_pb(self) -> metapb_pb2.Peer | None:
        for p, s in self.peers:
            if s == self.leader_store:
                return metapb_pb2.Peer(id=p, store_id=s)
        return None


@dataclass
class FakeState:
    cluster_id: int = 7001
    leader: int = 0
    physical: int = field(default_factory=lambda: int(time.time() * 1000))
    logical: int = 0
    regions: list[FakeRegion] = field(default_factory=list)
    stores: dict[int, metapb_pb2.Store] = field(default_factory=dict)
    gc_safe_point: int = 0
    service_safe_points: dict[bytes, int] = field(default_factory=dict)
    keyspaces: dict[str, keyspacepb_pb2.KeyspaceMeta] = field(default_factory=dict)
    next_id: int = 1000
    calls: Counter[str] = field(default_factory=Counter)
    tso_counts: list[int] = field(default_factory=list)
    fail: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)
    tso_hook: Callable[[int, int], Awaitable[None]] | None = None
    headers_seen: list[int] = field(default_factory=list)
    strip_header: set[str] = field(default_factory=set)
    tso_wrong_count: int = 0  # the next N TSO answers carry count + 1
    region_keys_seen: list[bytes] = field(default_factory=list)
    keyspace_safe_points: dict[int, int] = field(default_factory=dict)
    external_ts: int = 0
    tso_end_stream_after_answer: bool = False  # end the stream (status OK) after each answer

    def alloc_ts(self, count: int) -> tuple[int, int]:
        now = int(time.time() * 1000)
        if now > self.physical:
            self.physical, self.logical = now, 0
        if self.logical + count >= 1 << LOGICAL_BITS:
            self.physical += 1
            self.logical = 0
        self.logical += count
        return self.physical, self.logical - 1  # largest logical handed out

    def region_for(self, key: bytes) -> FakeRegion | None:
        starts = [r.start for r in self.regions]
        i = bisect.bisect_right(starts, key) - 1
        if i < 0:
            return None
        r = self.regions[i]
        if r.end and key >= r.end:
            return None
        return r


def region_response(r: FakeRegion | None) -> pdpb_pb2.GetRegionResponse:
    resp = pdpb_pb2.GetRegionResponse(header=pdpb_pb2.ResponseHeader(cluster_id=7001))
    if r is not None:
        resp.region.CopyFrom(r.to_pb())
        leader = r.leader_pb()
        if leader is not None:
            resp.leader.CopyFrom(leader)
        for p, s in r.peers:
            if s in r.down_stores:
                resp.down_peers.add(peer=metapb_pb2.Peer(id=p, store_id=s), down_seconds=60)
    return resp


class _Member:
    def __init__(self, cluster: FakePDCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.cluster.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"


class _Servicer(pdpb_pb2_grpc.PDServicer):
    def __init__(self, member: _Member) -> None:
        self.m = member

    @property
    def st(self) -> FakeState:
        return self.m.cluster.state

    def _hdr(self) -> pdpb_pb2.ResponseHeader:
        return pdpb_pb2.ResponseHeader(cluster_id=self.st.cluster_id)

    async def _enter(self, method: str, request: object, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
        self.st.calls[method] += 1
        header = getattr(request, "header", None)
        if header is not None:
            self.st.headers_seen.append(header.cluster_id)
        codes = self.st.fail.get(method)
        if codes:
            code = codes.pop(0)
            await context.abort(code, f"injected {code.name}")
        if self.m.index != self.st.leader:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not leader")
        if header is not None and header.cluster_id != self.st.cluster_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"mismatch cluster id, need {self.st.cluster_id} but got {header.cluster_id}",
            )

    async def GetMembers(self, request, context):  # type: ignore[no-untyped-def]
        self.st.calls["GetMembers"] += 1
        codes = self.st.fail.get("GetMembers")
        if codes:
            code = codes.pop(0)
            await context.abort(code, f"injected {code.name}")
        members = [
            pdpb_pb2.Member(name=f"pd{m.index}", member_id=100 + m.index, client_urls=[m.url])
            for m in self.m.cluster.members
        ]
        resp = pdpb_pb2.GetMembersResponse(header=self._hdr(), members=members)
        if self.st.leader >= 0:
            resp.leader.CopyFrom(members[self.st.leader])
        return resp

    async def Tso(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for req in request_iterator:
            await self._enter("Tso", req, context)
            self.st.tso_counts.append(req.count)
            if self.st.tso_hook is not None:
                await self.st.tso_hook(self.m.index, req.count)
            physical, logical = self.st.alloc_ts(req.count)
            count = req.count
            if self.st.tso_wrong_count > 0:
                self.st.tso_wrong_count -= 1
                count += 1
            yield pdpb_pb2.TsoResponse(
                header=self._hdr(),
                count=count,
                timestamp=pdpb_pb2.Timestamp(physical=physical, logical=logical),
            )
            if self.st.tso_end_stream_after_answer:
                return

    async def GetRegion(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetRegion", request, context)
        self.st.region_keys_seen.append(request.region_key)
        return region_response(self.st.region_for(request.region_key))

    async def GetPrevRegion(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetPrevRegion", request, context)
        r = self.st.region_for(request.region_key)
        if r is None or r.start == b"":
            return region_response(None)
        return region_response(self._prev(r))

    def _prev(self, r: FakeRegion) -> FakeRegion | None:
        i = self.st.regions.index(r)
        return self.st.regions[i - 1] if i > 0 else None

    async def GetRegionByID(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetRegionByID", request, context)
        for r in self.st.regions:
            if r.id == request.region_id:
                return region_response(r)
        return region_response(None)

    async def ScanRegions(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("ScanRegions", request, context)
        out = []
        for r in self.st.regions:
            if r.end and r.end <= request.start_key:
                continue
            if request.end_key and r.start >= request.end_key:
                break
            out.append(r)
            if request.limit and len(out) >= request.limit:
                break
        resp = pdpb_pb2.ScanRegionsResponse(header=self._hdr())
        for r in out:
            item = resp.regions.add()
            item.region.CopyFrom(r.to_pb())
            leader = r.leader_pb()
            if leader is not None:
                item.leader.CopyFrom(leader)
        return resp

    async def BatchScanRegions(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("BatchScanRegions", request, context)
        resp = pdpb_pb2.BatchScanRegionsResponse(header=self._hdr())
        seen: set[int] = set()
        for kr in request.ranges:
            for r in self.st.regions:
                if r.end and r.end <= kr.start_key:
                    continue
                if kr.end_key and r.start >= kr.end_key:
                    break
                if r.id in seen:
                    continue
                seen.add(r.id)
                item = resp.regions.add()
                item.region.CopyFrom(r.to_pb())
                leader = r.leader_pb()
                if leader is not None:
                    item.leader.CopyFrom(leader)
                if len(seen) >= request.limit:
                    return resp
        return resp

    async def GetStore(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetStore", request, context)
        store = self.st.stores.get(request.store_id)
        if store is None:
            return pdpb_pb2.GetStoreResponse(
                header=pdpb_pb2.ResponseHeader(
                    cluster_id=self.st.cluster_id,
                    error=pdpb_pb2.Error(
                        type=pdpb_pb2.UNKNOWN,
                        message=f"invalid store ID {request.store_id}, not found",
                    ),
                )
            )
        return pdpb_pb2.GetStoreResponse(header=self._hdr(), store=store)

    async def GetAllStores(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetAllStores", request, context)
        return pdpb_pb2.GetAllStoresResponse(header=self._hdr(), stores=self.st.stores.values())

    async def GetGCSafePoint(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetGCSafePoint", request, context)
        if "GetGCSafePoint" in self.st.strip_header:
            return pdpb_pb2.GetGCSafePointResponse(safe_point=1)
        return pdpb_pb2.GetGCSafePointResponse(header=self._hdr(), safe_point=self.st.gc_safe_point)

    async def UpdateGCSafePoint(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("UpdateGCSafePoint", request, context)
        self.st.gc_safe_point = max(self.st.gc_safe_point, request.safe_point)
        return pdpb_pb2.UpdateGCSafePointResponse(
            header=self._hdr(), new_safe_point=self.st.gc_safe_point
        )

    async def UpdateServiceGCSafePoint(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("UpdateServiceGCSafePoint", request, context)
        if request.TTL <= 0:
            self.st.service_safe_points.pop(request.service_id, None)
        else:
            self.st.service_safe_points[request.service_id] = request.safe_point
        low = min(self.st.service_safe_points.values(), default=request.safe_point)
        return pdpb_pb2.UpdateServiceGCSafePointResponse(
            header=self._hdr(), service_id=request.service_id, TTL=request.TTL, min_safe_point=low
        )

    async def GetGCSafePointV2(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetGCSafePointV2", request, context)
        return pdpb_pb2.GetGCSafePointV2Response(
            header=self._hdr(), safe_point=self.st.keyspace_safe_points.get(request.keyspace_id, 0)
        )

    async def UpdateGCSafePointV2(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("UpdateGCSafePointV2", request, context)
        current = self.st.keyspace_safe_points.get(request.keyspace_id, 0)
        new = max(current, request.safe_point)
        self.st.keyspace_safe_points[request.keyspace_id] = new
        return pdpb_pb2.UpdateGCSafePointV2Response(header=self._hdr(), new_safe_point=new)

    async def UpdateServiceSafePointV2(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("UpdateServiceSafePointV2", request, context)
        return pdpb_pb2.UpdateServiceSafePointV2Response(
            header=self._hdr(),
            service_id=request.service_id,
            ttl=request.ttl,
            min_safe_point=request.safe_point,
        )

    async def GetExternalTimestamp(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetExternalTimestamp", request, context)
        return pdpb_pb2.GetExternalTimestampResponse(
            header=self._hdr(), timestamp=self.st.external_ts
        )

    async def SetExternalTimestamp(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("SetExternalTimestamp", request, context)
        header = self._hdr()
        if request.timestamp < self.st.external_ts:
            header.error.type = pdpb_pb2.UNKNOWN
            header.error.message = "external timestamp is less than the current one"
        else:
            self.st.external_ts = request.timestamp
        return pdpb_pb2.SetExternalTimestampResponse(header=header)

    async def GetMinTS(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetMinTS", request, context)
        physical, logical = self.st.alloc_ts(1)
        return pdpb_pb2.GetMinTSResponse(
            header=self._hdr(), timestamp=pdpb_pb2.Timestamp(physical=physical, logical=logical)
        )

    async def AllocID(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("AllocID", request, context)
        self.st.next_id += 1
        return pdpb_pb2.AllocIDResponse(header=self._hdr(), id=self.st.next_id)

    async def GetClusterInfo(self, request, context):  # type: ignore[no-untyped-def]
        await self._enter("GetClusterInfo", request, context)
        return pdpb_pb2.GetClusterInfoResponse(
            header=self._hdr(), serviceModes=[pdpb_pb2.PD_SVC_MODE]
        )


class _KeyspaceServicer(keyspacepb_pb2_grpc.KeyspaceServicer):
    def __init__(self, member: _Member) -> None:
        self.m = member

    async def LoadKeyspace(self, request, context):  # type: ignore[no-untyped-def]
        st = self.m.cluster.state
        st.calls["LoadKeyspace"] += 1
        if self.m.index != st.leader:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not leader")
        meta = st.keyspaces.get(request.name)
        header = pdpb_pb2.ResponseHeader(cluster_id=st.cluster_id)
        if meta is None:
            header.error.type = pdpb_pb2.ENTRY_NOT_FOUND
            header.error.message = f"keyspace {request.name} not found"
            return keyspacepb_pb2.LoadKeyspaceResponse(header=header)
        return keyspacepb_pb2.LoadKeyspaceResponse(header=header, keyspace=meta)


class FakePDCluster:
    """``async with FakePDCluster(members=3) as pd: pd.endpoints``.

    With ``tls=(key_pem, cert_pem)`` every member serves TLS and reports https URLs.
    """

    def __init__(self, members: int = 1, *, tls: tuple[bytes, bytes] | None = None) -> None:
        self.state = FakeState()
        self.tls = tls
        self.members = [_Member(self, i) for i in range(members)]

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{m.port}" for m in self.members]

    async def start_member(self, index: int) -> None:
        m = self.members[index]
        server = grpc.aio.server()
        pdpb_pb2_grpc.add_PDServicer_to_server(_Servicer(m), server)  # type: ignore[abstract]
        keyspacepb_pb2_grpc.add_KeyspaceServicer_to_server(_KeyspaceServicer(m), server)  # type: ignore[abstract]
        if self.tls is not None:
            creds = grpc.ssl_server_credentials([self.tls])
            port = server.add_secure_port(f"127.0.0.1:{m.port}", creds)
        else:
            port = server.add_insecure_port(f"127.0.0.1:{m.port}")
        assert port != 0
        m.port = port
        await server.start()
        m.server = server

    async def stop_member(self, index: int) -> None:
        m = self.members[index]
        if m.server is not None:
            await m.server.stop(None)
            m.server = None

    def move_leader(self, index: int) -> None:
        self.state.leader = index

    async def __aenter__(self) -> FakePDCluster:
        for i in range(len(self.members)):
            await self.start_member(i)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for i in range(len(self.members)):
            await self.stop_member(i)

    # -- topology helpers -----------------------------------------------------------

    def add_store(self, store_id: int, address: str) -> None:
        self.state.stores[store_id] = metapb_pb2.Store(id=store_id, address=address)

    def set_store_state(self, store_id: int, state: int) -> None:
        self.state.stores[store_id].state = state  # type: ignore[assignment]

    def set_regions(self, boundaries: list[bytes], stores: list[int]) -> None:
        """Regions split at ``boundaries`` (sorted), each with one peer per store."""
        keys = [b"", *boundaries, b""]
        self.state.regions = []
        for i in range(len(keys) - 1):
            rid = 10 + i
            peers = [(rid * 100 + s, s) for s in stores]
            self.state.regions.append(
                FakeRegion(rid, keys[i], keys[i + 1], peers, leader_store=stores[i % len(stores)])
            )
