"""The PD gRPC service (``pdpb.PD`` and ``keyspacepb.Keyspace``) of one mock PD member.

Behaviour follows PD's ``server/grpc_service.go``, ``server/gc_service.go``,
``server/keyspace_service.go`` and ``pkg/utils/grpcutil``:

- every response carries ``header.cluster_id``; ``header.error`` is set only for an error;
- ``GetMembers`` and ``GetClusterInfo`` answer on any member without checking the cluster id
  (a client learns the id from them);
- every other request to a member that is not the leader fails with gRPC UNAVAILABLE
  "not leader" (``errs.ErrNotLeader``), and a wrong ``header.cluster_id`` with
  FAILED_PRECONDITION "mismatch cluster id, need X but got Y" (``errs.ErrMismatchClusterID``);
- ``Tso`` checks the cluster id per request and ends the stream with that status; a follower
  ends it with UNKNOWN "generate timestamp failed, requested pd is not leader of cluster";
- an unknown region is an empty OK response on the leader (no ``region``), as PD answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from tikv_proto import keyspacepb_pb2, metapb_pb2, pdpb_pb2

from tikv_mockstore.cluster import Cluster, ClusterError, Region
from tikv_mockstore.faults import Counters, FaultInjector
from tikv_mockstore.tikv_service import GRPC_SERVER_OPTIONS

__all__ = ["PdServer"]

_ERR_GENERATE_TS = "[PD:tso:ErrGenerateTimestamp]generate timestamp failed, {}"


class _AbortError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _snake(name: str) -> str:
    """``GetRegionByID`` → ``get_region_by_id``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _region_pb(region: Region) -> pdpb_pb2.Region:
    leader = region.leader
    return pdpb_pb2.Region(
        region=region.to_pb(), leader=leader.to_pb() if leader else metapb_pb2.Peer()
    )


class PdServer:
    """One PD member's gRPC server.

    All members share the cluster state; only the leader serves requests other than
    ``GetMembers`` / ``GetClusterInfo``.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        faults: FaultInjector,
        counters: Counters,
        name: str = "pd-1",
        host: str = "127.0.0.1",
        max_workers: int = 32,
    ) -> None:
        self.cluster = cluster
        self.faults = faults
        self.counters = counters
        self.name = name
        self.host = host
        self.port = 0
        self.member_id = 0
        self.max_workers = max_workers
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None

    @property
    def address(self) -> str:
        """``host:port`` of this member."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the member is serving."""
        return self._server is not None

    def start(self, port: int = 0) -> int:
        """Bind and serve; registers the member with the cluster the first time."""
        if self._server is not None:
            raise RuntimeError(f"PD member {self.name} is already serving")
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix=f"mock-{self.name}"
        )
        server = grpc.server(self._executor, options=GRPC_SERVER_OPTIONS)
        server.add_generic_rpc_handlers(self._handlers())
        bound = server.add_insecure_port(f"{self.host}:{port or self.port}")
        if bound == 0:
            self._executor.shutdown(wait=False)
            raise OSError(f"PD member {self.name} could not bind {self.host}:{port}")
        server.start()
        self.port = bound
        self._server = server
        if not self.member_id:
            self.member_id = self.cluster.add_pd_member(
                self.name, f"http://{self.address}"
            ).member_id
        return bound

    def stop(self, grace: float | None = None) -> None:
        """Stop serving."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(grace).wait()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # ------------------------------------------------------------------ plumbing

    def _handlers(self) -> tuple[grpc.GenericRpcHandler[Any, Any], ...]:
        from google.protobuf import symbol_database

        db = symbol_database.Default()
        out = []
        for service, table in (
            ("pdpb.PD", pdpb_pb2.DESCRIPTOR.services_by_name["PD"]),
            ("keyspacepb.Keyspace", keyspacepb_pb2.DESCRIPTOR.services_by_name["Keyspace"]),
        ):
            handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
            for m in table.methods:
                req = db.GetSymbol(m.input_type.full_name)
                resp = db.GetSymbol(m.output_type.full_name)
                impl = getattr(self, f"_rpc_{_snake(m.name)}", None)
                if m.client_streaming and m.server_streaming:
                    handlers[m.name] = grpc.stream_stream_rpc_method_handler(
                        self._stream(m.name, impl),
                        request_deserializer=req.FromString,
                        response_serializer=resp.SerializeToString,
                    )
                elif m.server_streaming:
                    handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                        self._unimplemented_stream(m.name),
                        request_deserializer=req.FromString,
                        response_serializer=resp.SerializeToString,
                    )
                else:
                    handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                        self._unary(m.name, impl),
                        request_deserializer=req.FromString,
                        response_serializer=resp.SerializeToString,
                    )
            out.append(grpc.method_handlers_generic_handler(service, handlers))
        return tuple(out)

    def _header(self) -> pdpb_pb2.ResponseHeader:
        return pdpb_pb2.ResponseHeader(cluster_id=self.cluster.cluster_id)

    def _error_header(self, kind: int, message: str) -> pdpb_pb2.ResponseHeader:
        return pdpb_pb2.ResponseHeader(
            cluster_id=self.cluster.cluster_id,
            error=pdpb_pb2.Error(type=pdpb_pb2.ErrorType.ValueType(kind), message=message),
        )

    def _apply_faults(self, method: str) -> None:
        outcome = self.faults.apply(method, None, None)
        if outcome is None:
            return
        if outcome.drop_stream or outcome.status is None:
            raise _AbortError(grpc.StatusCode.UNAVAILABLE, outcome.message)
        raise _AbortError(outcome.status, outcome.message)

    def _validate(self, header: pdpb_pb2.RequestHeader) -> None:
        """PD ``validateRoleInRequest``: leader first, then the cluster id."""
        if not self.cluster.is_pd_leader(self.member_id):
            raise _AbortError(grpc.StatusCode.UNAVAILABLE, "not leader")
        if header.cluster_id != self.cluster.cluster_id:
            raise _AbortError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"mismatch cluster id, need {self.cluster.cluster_id} but got {header.cluster_id}",
            )

    def _unary(
        self, method: str, impl: Callable[[Any], Any] | None
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            self.counters.record(method, 0)
            try:
                self._apply_faults(method)
                if impl is None:
                    raise _AbortError(
                        grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by the mock PD"
                    )
                if method not in ("GetMembers", "GetClusterInfo"):
                    self._validate(request.header)
                return impl(request)
            except _AbortError as abort:
                context.abort(abort.code, abort.details)

        return serve

    def _unimplemented_stream(
        self, method: str
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def serve(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")

        return serve

    def _stream(
        self, method: str, impl: Callable[[Any], Any] | None
    ) -> Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]]:
        def serve(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            if impl is None:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
            # Clients (client-rust) wait for the response headers before sending.
            context.send_initial_metadata(())
            try:
                for request in requests:
                    self.counters.record(method, 0)
                    self._apply_faults(method)
                    assert impl is not None
                    yield impl(request)
            except _AbortError as abort:
                context.abort(abort.code, abort.details)

        return serve

    # ------------------------------------------------------------------ members / cluster

    def _rpc_get_members(self, request: pdpb_pb2.GetMembersRequest) -> pdpb_pb2.GetMembersResponse:
        members = self.cluster.pd_members()
        leader = self.cluster.pd_leader()
        resp = pdpb_pb2.GetMembersResponse(
            header=self._header(), members=[m.to_pb() for m in members]
        )
        if leader is not None:
            resp.leader.CopyFrom(leader.to_pb())
            resp.etcd_leader.CopyFrom(leader.to_pb())
        return resp

    def _rpc_get_cluster_info(
        self, request: pdpb_pb2.GetClusterInfoRequest
    ) -> pdpb_pb2.GetClusterInfoResponse:
        return pdpb_pb2.GetClusterInfoResponse(
            header=self._header(), serviceModes=[pdpb_pb2.PD_SVC_MODE]
        )

    def _rpc_is_bootstrapped(
        self, request: pdpb_pb2.IsBootstrappedRequest
    ) -> pdpb_pb2.IsBootstrappedResponse:
        return pdpb_pb2.IsBootstrappedResponse(
            header=self._header(), bootstrapped=self.cluster.bootstrapped
        )

    def _rpc_bootstrap(self, request: pdpb_pb2.BootstrapRequest) -> pdpb_pb2.BootstrapResponse:
        return pdpb_pb2.BootstrapResponse(
            header=self._error_header(
                pdpb_pb2.ALREADY_BOOTSTRAPPED, "cluster is already bootstrapped"
            )
        )

    def _rpc_is_snapshot_recovering(
        self, request: pdpb_pb2.IsSnapshotRecoveringRequest
    ) -> pdpb_pb2.IsSnapshotRecoveringResponse:
        return pdpb_pb2.IsSnapshotRecoveringResponse(header=self._header(), marked=False)

    def _rpc_get_cluster_config(
        self, request: pdpb_pb2.GetClusterConfigRequest
    ) -> pdpb_pb2.GetClusterConfigResponse:
        return pdpb_pb2.GetClusterConfigResponse(
            header=self._header(),
            cluster=metapb_pb2.Cluster(
                id=self.cluster.cluster_id, max_peer_count=max(len(self.cluster.stores()), 1)
            ),
        )

    def _rpc_alloc_id(self, request: pdpb_pb2.AllocIDRequest) -> pdpb_pb2.AllocIDResponse:
        count = request.count or 1
        # PD returns the end of the allocated range and reports count only when > 1.
        last = self.cluster.alloc_id(count)
        resp = pdpb_pb2.AllocIDResponse(header=self._header(), id=last)
        if count > 1:
            resp.count = count
        return resp

    # ------------------------------------------------------------------ TSO

    def _rpc_tso(self, request: pdpb_pb2.TsoRequest) -> pdpb_pb2.TsoResponse:
        if request.header.cluster_id != self.cluster.cluster_id:
            raise _AbortError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"mismatch cluster id, need {self.cluster.cluster_id} "
                f"but got {request.header.cluster_id}",
            )
        if not self.cluster.is_pd_leader(self.member_id):
            raise _AbortError(
                grpc.StatusCode.UNKNOWN,
                _ERR_GENERATE_TS.format("requested pd is not leader of cluster"),
            )
        try:
            physical, logical = self.cluster.tso(request.count)
        except ValueError as exc:
            raise _AbortError(grpc.StatusCode.UNKNOWN, _ERR_GENERATE_TS.format(exc)) from exc
        return pdpb_pb2.TsoResponse(
            header=self._header(),
            count=request.count,
            timestamp=pdpb_pb2.Timestamp(physical=physical, logical=logical),
        )

    def _rpc_get_min_ts(self, request: pdpb_pb2.GetMinTSRequest) -> pdpb_pb2.GetMinTSResponse:
        physical, logical = self.cluster.tso(1)
        return pdpb_pb2.GetMinTSResponse(
            header=self._header(),
            timestamp=pdpb_pb2.Timestamp(physical=physical, logical=logical),
        )

    # ------------------------------------------------------------------ stores

    def _rpc_get_store(self, request: pdpb_pb2.GetStoreRequest) -> pdpb_pb2.GetStoreResponse:
        store = self.cluster.store(request.store_id)
        if store is None:
            return pdpb_pb2.GetStoreResponse(
                header=self._error_header(
                    pdpb_pb2.UNKNOWN, f"invalid store ID {request.store_id}, not found"
                )
            )
        return pdpb_pb2.GetStoreResponse(
            header=self._header(),
            store=store.to_pb(),
            stats=pdpb_pb2.StoreStats(
                store_id=store.id,
                region_count=sum(
                    1 for r in self.cluster.regions() if r.peer_on(store.id) is not None
                ),
            ),
        )

    def _rpc_get_all_stores(
        self, request: pdpb_pb2.GetAllStoresRequest
    ) -> pdpb_pb2.GetAllStoresResponse:
        stores = [s.to_pb() for s in self.cluster.stores()]
        if request.exclude_tombstone_stores:
            stores = [s for s in stores if s.node_state != metapb_pb2.Removed]
        return pdpb_pb2.GetAllStoresResponse(header=self._header(), stores=stores)

    # ------------------------------------------------------------------ regions

    def _region_response(self, region: Region | None) -> pdpb_pb2.GetRegionResponse:
        if region is None:
            # PD's leader answers an unknown key / id with an empty, successful response.
            return pdpb_pb2.GetRegionResponse(header=self._header())
        leader = region.leader
        resp = pdpb_pb2.GetRegionResponse(header=self._header(), region=region.to_pb())
        if leader is not None:
            resp.leader.CopyFrom(leader.to_pb())
        return resp

    def _rpc_get_region(self, request: pdpb_pb2.GetRegionRequest) -> pdpb_pb2.GetRegionResponse:
        return self._region_response(self.cluster.region_by_key(request.region_key))

    def _rpc_get_prev_region(
        self, request: pdpb_pb2.GetRegionRequest
    ) -> pdpb_pb2.GetRegionResponse:
        return self._region_response(self.cluster.prev_region(request.region_key))

    def _rpc_get_region_by_id(
        self, request: pdpb_pb2.GetRegionByIDRequest
    ) -> pdpb_pb2.GetRegionResponse:
        return self._region_response(self.cluster.region_by_id(request.region_id))

    def _rpc_query_region(
        self, request: pdpb_pb2.QueryRegionRequest
    ) -> pdpb_pb2.QueryRegionResponse:
        """QueryRegion (the router stream): regions by key, by previous key and by id."""
        if request.header.cluster_id != self.cluster.cluster_id:
            raise _AbortError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"mismatch cluster id, need {self.cluster.cluster_id} "
                f"but got {request.header.cluster_id}",
            )
        if not self.cluster.is_pd_leader(self.member_id):
            # A follower without a running region syncer answers "region not found".
            return pdpb_pb2.QueryRegionResponse(
                header=self._error_header(pdpb_pb2.REGION_NOT_FOUND, "region not found")
            )
        resp = pdpb_pb2.QueryRegionResponse(header=self._header())
        found: dict[int, Region] = {}
        for key in request.keys:
            region = self.cluster.region_by_key(key)
            resp.key_id_map.append(region.id if region is not None else 0)
            if region is not None:
                found[region.id] = region
        for key in request.prev_keys:
            region = self.cluster.prev_region(key)
            resp.prev_key_id_map.append(region.id if region is not None else 0)
            if region is not None:
                found[region.id] = region
        for rid in request.ids:
            region = self.cluster.region_by_id(rid)
            if region is not None:
                found[rid] = region
        for rid, region in found.items():
            entry = resp.regions_by_id[rid]
            entry.region.CopyFrom(region.to_pb())
            leader = region.leader
            if leader is not None:
                entry.leader.CopyFrom(leader.to_pb())
        return resp

    def _rpc_scan_regions(
        self, request: pdpb_pb2.ScanRegionsRequest
    ) -> pdpb_pb2.ScanRegionsResponse:
        regions = self.cluster.scan_regions(request.start_key, request.end_key, request.limit)
        resp = pdpb_pb2.ScanRegionsResponse(header=self._header())
        for region in regions:
            # The deprecated parallel lists are still filled (old clients read them).
            resp.region_metas.append(region.to_pb())
            leader = region.leader
            resp.leaders.append(leader.to_pb() if leader else metapb_pb2.Peer())
            resp.regions.append(_region_pb(region))
        return resp

    def _rpc_batch_scan_regions(
        self, request: pdpb_pb2.BatchScanRegionsRequest
    ) -> pdpb_pb2.BatchScanRegionsResponse:
        ranges = list(request.ranges)
        for i, r in enumerate(ranges):
            if i > 0 and r.start_key < ranges[i - 1].end_key:
                return pdpb_pb2.BatchScanRegionsResponse(
                    header=self._error_header(
                        pdpb_pb2.UNKNOWN, "invalid key range, ranges overlapped"
                    )
                )
            if r.end_key and r.start_key > r.end_key:
                return pdpb_pb2.BatchScanRegionsResponse(
                    header=self._error_header(
                        pdpb_pb2.UNKNOWN, "invalid key range, start key > end key"
                    )
                )
        limit = request.limit
        out: list[Region] = []
        for r in ranges:
            found = self.cluster.scan_regions(r.start_key, r.end_key, limit)
            if out and found and out[-1].id == found[0].id:
                found = found[1:]
            out.extend(found)
            if limit > 0 and len(out) >= limit:
                out = out[:limit]
                break
        return pdpb_pb2.BatchScanRegionsResponse(
            header=self._header(), regions=[_region_pb(r) for r in out]
        )

    def _rpc_split_regions(
        self, request: pdpb_pb2.SplitRegionsRequest
    ) -> pdpb_pb2.SplitRegionsResponse:
        regions = self.cluster.split(list(request.split_keys))
        keys = set(request.split_keys)
        return pdpb_pb2.SplitRegionsResponse(
            header=self._header(),
            finished_percentage=100,
            regions_id=[r.id for r in regions if r.start_key in keys],
        )

    def _rpc_scatter_region(
        self, request: pdpb_pb2.ScatterRegionRequest
    ) -> pdpb_pb2.ScatterRegionResponse:
        # PD: a single (deprecated) region_id, or the batch regions_id.
        if request.region_id:
            if self.cluster.region_by_id(request.region_id) is None:
                return pdpb_pb2.ScatterRegionResponse(
                    header=self._error_header(
                        pdpb_pb2.REGION_NOT_FOUND, f"region {request.region_id} not found"
                    )
                )
            self.cluster.scatter_regions([request.region_id])
            return pdpb_pb2.ScatterRegionResponse(header=self._header(), finished_percentage=100)
        ids = list(request.regions_id)
        if not ids:
            return pdpb_pb2.ScatterRegionResponse(
                header=self._error_header(pdpb_pb2.INVALID_VALUE, "regions id is required")
            )
        failed = self.cluster.scatter_regions(ids)
        return pdpb_pb2.ScatterRegionResponse(
            header=self._header(),
            finished_percentage=100 * (len(ids) - len(failed)) // len(ids),
            failed_regions_id=failed,
        )

    def _rpc_get_operator(
        self, request: pdpb_pb2.GetOperatorRequest
    ) -> pdpb_pb2.GetOperatorResponse:
        desc = self.cluster.operator_of(request.region_id)
        if desc is None:
            # PD answers a region without an operator with this header error.
            return pdpb_pb2.GetOperatorResponse(
                header=self._error_header(pdpb_pb2.REGION_NOT_FOUND, "Not Found")
            )
        return pdpb_pb2.GetOperatorResponse(
            header=self._header(),
            region_id=request.region_id,
            desc=desc,
            status=pdpb_pb2.SUCCESS,
        )

    # ------------------------------------------------------------------ GC

    def _rpc_get_gc_safe_point(
        self, request: pdpb_pb2.GetGCSafePointRequest
    ) -> pdpb_pb2.GetGCSafePointResponse:
        return pdpb_pb2.GetGCSafePointResponse(
            header=self._header(), safe_point=self.cluster.gc_safe_point
        )

    def _rpc_update_gc_safe_point(
        self, request: pdpb_pb2.UpdateGCSafePointRequest
    ) -> pdpb_pb2.UpdateGCSafePointResponse:
        new = self.cluster.update_gc_safe_point(request.safe_point)
        return pdpb_pb2.UpdateGCSafePointResponse(header=self._header(), new_safe_point=new)

    def _rpc_update_service_gc_safe_point(
        self, request: pdpb_pb2.UpdateServiceGCSafePointRequest
    ) -> pdpb_pb2.UpdateServiceGCSafePointResponse:
        service_id = request.service_id.decode("utf-8", "replace")
        if not service_id:
            return pdpb_pb2.UpdateServiceGCSafePointResponse(
                header=self._error_header(pdpb_pb2.UNKNOWN, "service id is empty")
            )
        smallest = self.cluster.update_service_safe_point(
            service_id, request.TTL, request.safe_point
        )
        now_s = self.cluster.clock.now_s()
        return pdpb_pb2.UpdateServiceGCSafePointResponse(
            header=self._header(),
            service_id=smallest.service_id.encode(),
            TTL=smallest.expired_at - now_s,
            min_safe_point=smallest.safe_point,
        )

    @staticmethod
    def _keyspace_id(request: Any) -> int:
        """The keyspace id of a V2 GC request (``keyspace_id`` or ``keyspace_identity``)."""
        if request.WhichOneof("keyspace") == "keyspace_identity":
            return int(request.keyspace_identity.keyspace_id)
        return int(request.keyspace_id)

    def _gc_call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ClusterError as exc:  # an unknown keyspace: PD fails the call
            raise _AbortError(grpc.StatusCode.UNKNOWN, str(exc)) from exc

    def _rpc_get_gc_safe_point_v2(
        self, request: pdpb_pb2.GetGCSafePointV2Request
    ) -> pdpb_pb2.GetGCSafePointV2Response:
        kid = self._keyspace_id(request)
        safe_point = self._gc_call(lambda: self.cluster.gc_safe_point_of(kid))
        return pdpb_pb2.GetGCSafePointV2Response(header=self._header(), safe_point=safe_point)

    def _rpc_update_gc_safe_point_v2(
        self, request: pdpb_pb2.UpdateGCSafePointV2Request
    ) -> pdpb_pb2.UpdateGCSafePointV2Response:
        kid = self._keyspace_id(request)
        new = self._gc_call(lambda: self.cluster.update_gc_safe_point(request.safe_point, kid))
        return pdpb_pb2.UpdateGCSafePointV2Response(header=self._header(), new_safe_point=new)

    def _rpc_update_service_safe_point_v2(
        self, request: pdpb_pb2.UpdateServiceSafePointV2Request
    ) -> pdpb_pb2.UpdateServiceSafePointV2Response:
        kid = self._keyspace_id(request)
        service_id = request.service_id.decode("utf-8", "replace")
        if not service_id:
            return pdpb_pb2.UpdateServiceSafePointV2Response(
                header=self._error_header(pdpb_pb2.UNKNOWN, "service id is empty")
            )
        smallest = self._gc_call(
            lambda: self.cluster.update_service_safe_point(
                service_id, request.ttl, request.safe_point, kid
            )
        )
        return pdpb_pb2.UpdateServiceSafePointV2Response(
            header=self._header(),
            service_id=smallest.service_id.encode(),
            ttl=smallest.expired_at - self.cluster.clock.now_s(),
            min_safe_point=smallest.safe_point,
        )

    # ------------------------------------------------------------------ external timestamp

    def _rpc_get_external_timestamp(
        self, request: pdpb_pb2.GetExternalTimestampRequest
    ) -> pdpb_pb2.GetExternalTimestampResponse:
        return pdpb_pb2.GetExternalTimestampResponse(
            header=self._header(), timestamp=self.cluster.external_ts
        )

    def _rpc_set_external_timestamp(
        self, request: pdpb_pb2.SetExternalTimestampRequest
    ) -> pdpb_pb2.SetExternalTimestampResponse:
        try:
            self.cluster.set_external_ts(request.timestamp)
        except ValueError as exc:
            return pdpb_pb2.SetExternalTimestampResponse(
                header=self._error_header(pdpb_pb2.INVALID_VALUE, str(exc))
            )
        return pdpb_pb2.SetExternalTimestampResponse(header=self._header())

    # ------------------------------------------------------------------ keyspaces

    def _rpc_load_keyspace(
        self, request: keyspacepb_pb2.LoadKeyspaceRequest
    ) -> keyspacepb_pb2.LoadKeyspaceResponse:
        ks = self.cluster.keyspace(request.name)
        if ks is None:
            return keyspacepb_pb2.LoadKeyspaceResponse(
                header=self._error_header(
                    pdpb_pb2.ENTRY_NOT_FOUND,
                    "[PD:keyspace:ErrKeyspaceNotFound]keyspace does not exist",
                )
            )
        return keyspacepb_pb2.LoadKeyspaceResponse(header=self._header(), keyspace=ks.to_pb())

    def _rpc_load_keyspace_by_id(
        self, request: keyspacepb_pb2.LoadKeyspaceByIDRequest
    ) -> keyspacepb_pb2.LoadKeyspaceResponse:
        ks = self.cluster.keyspace_by_id(request.id)
        if ks is None:
            return keyspacepb_pb2.LoadKeyspaceResponse(
                header=self._error_header(
                    pdpb_pb2.ENTRY_NOT_FOUND,
                    "[PD:keyspace:ErrKeyspaceNotFound]keyspace does not exist",
                )
            )
        return keyspacepb_pb2.LoadKeyspaceResponse(header=self._header(), keyspace=ks.to_pb())

    def _rpc_get_all_keyspaces(
        self, request: keyspacepb_pb2.GetAllKeyspacesRequest
    ) -> keyspacepb_pb2.GetAllKeyspacesResponse:
        found = [k for k in self.cluster.keyspaces() if k.id >= request.start_id]
        if request.limit:
            found = found[: request.limit]
        return keyspacepb_pb2.GetAllKeyspacesResponse(
            header=self._header(), keyspaces=[k.to_pb() for k in found]
        )
