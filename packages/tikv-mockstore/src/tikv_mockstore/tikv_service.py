"""The TiKV gRPC service of one mock store: region checks, dispatch, BatchCommands.

Every unary ``tikvpb.Tikv`` method is served by looking up ``HANDLERS[command]`` (see
:mod:`tikv_mockstore.handlers`), after counting the request and running the faults injected for
it. ``BatchCommands`` serves each stream message's sub-requests in one pass and answers them
with the same request ids, in one message, or in several once the answers pass
:data:`RESPONSE_FLUSH_BYTES`; a handler that must wait returns a
:class:`concurrent.futures.Future` and its response goes out in a later message when it
completes, so it never holds up the other sub-requests.

:class:`StoreScope` implements the checks TiKV runs before a command touches data, in TiKV's
order (``components/raftstore/src/store/fsm/peer.rs`` ``pre_propose_raft_command`` and
``util.rs``): the request's peer must be on this store (StoreNotMatch), the region must have a
peer here (RegionNotFound), the request must name that peer (MismatchPeerId), this peer must
lead (NotLeader, with the leader), the epoch version must match (EpochNotMatch with the current
region and the regions split off it; ``conf_ver`` is not checked for reads and writes,
``NORMAL_REQ_CHECK_CONF_VER = false``), a stale read served by a follower must be at or below
that peer's safe ts (DataIsNotReady, see :mod:`tikv_mockstore.safe_ts`), and every key must lie
inside the region (KeyNotInRegion).
"""

from __future__ import annotations

import contextvars
import importlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, tikvpb_pb2

from tikv_mockstore._codec import encode_bytes
from tikv_mockstore.cluster import Cluster, Region
from tikv_mockstore.faults import (
    COMMAND_OF_METHOD,
    KEY_ERROR_METHODS,
    Counters,
    FaultInjector,
    FaultOutcome,
    build_key_error,
)
from tikv_mockstore.handlers import HANDLERS
from tikv_mockstore.safe_ts import region_locks

__all__ = [
    "API_VERSION_NAMES",
    "CLUSTER_ID_MISMATCH",
    "GRPC_SERVER_OPTIONS",
    "READ_COMMANDS",
    "StoreScope",
    "StoreServer",
    "build_region_error",
    "load_command_handlers",
]

_log = logging.getLogger(__name__)

#: Server options: no message size limit (large batches), as TiKV's are (tikv-python and
#: client-go send unlimited sizes; grpcio's default receive limit is 4 MiB). Clients send
#: HTTP/2 keepalive pings (client-go every 10 s, also on idle connections); TiKV and PD accept
#: them, while grpc core's default server policy answers pings more frequent than every
#: 5 minutes with GOAWAY "too_many_pings" after two strikes. Accept pings every 5 s or more,
#: with or without calls, and never count strikes.
GRPC_SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
]

#: How TiKV prints an ``ApiVersion`` in errors (Rust ``Debug`` of ``kvrpcpb::ApiVersion``).
API_VERSION_NAMES: dict[int, str] = {
    kvrpcpb_pb2.V1: "V1",
    kvrpcpb_pb2.V1TTL: "V1ttl",
    kvrpcpb_pb2.V2: "V2",
}

_RESPONSE_TYPES: dict[str, type[Any]] = {}
_REQUEST_TYPES: dict[str, type[Any]] = {}


def _message_types() -> None:
    from google.protobuf import symbol_database

    db = symbol_database.Default()
    for m in tikvpb_pb2.DESCRIPTOR.services_by_name["Tikv"].methods:
        _REQUEST_TYPES[m.name] = db.GetSymbol(m.input_type.full_name)
        _RESPONSE_TYPES[m.name] = db.GetSymbol(m.output_type.full_name)


_message_types()

#: Methods whose request carries a ``kvrpcpb.Context`` in its ``context`` field.
_HAS_CONTEXT = frozenset(
    m for m, t in _REQUEST_TYPES.items() if "context" in t.DESCRIPTOR.fields_by_name
)


def load_command_handlers() -> None:
    """Import the modules that register command handlers.

    Import the modules that register command handlers (raw KV, and the transactional handlers in
    :mod:`tikv_mockstore.kv_service` when that module exists).
    """
    importlib.import_module("tikv_mockstore.raw")
    importlib.import_module("tikv_mockstore.store_service")
    try:
        importlib.import_module("tikv_mockstore.kv_service")
    except ModuleNotFoundError as exc:
        if exc.name != "tikv_mockstore.kv_service":
            raise


def _hex(key: bytes) -> str:
    return key.hex().upper()


class StoreScope:
    """What a command handler sees of the store serving it.

    What a command handler sees of the store serving it (implements
    :class:`tikv_mockstore.handlers.StoreScope`).
    """

    def __init__(self, store_id: int, cluster: Cluster, engine: Any, raw: Any) -> None:
        self._store_id = store_id
        self._cluster = cluster
        self._engine = engine
        self._raw = raw
        # TiKV seeds the feedback sequence with the Unix time at start and only increments it.
        self._feedback_seq = itertools.count(int(time.time()))
        self._feedback_mu = threading.Lock()
        # The raftstore slow score TiKV reports in its health feedback: 1 (healthy) to 100;
        # set by MockCluster.set_slow_score.
        self.slow_score = 1
        # The store's disk usage as raftstore sees it: "normal", "almost_full" or
        # "already_full"; set by MockCluster.set_disk_usage.
        self.disk_usage = "normal"
        # Serialized Context -> the region it was routed to while this store led it. A hit
        # is valid while that exact region object is current: regions are immutable and
        # every change (split, merge, leader or peer change) replaces the object.
        self._routes: dict[bytes, Region] = {}

    def health_feedback(self) -> kvrpcpb_pb2.HealthFeedback:
        """A fresh ``HealthFeedback`` of this store (its :attr:`slow_score`; 1 = healthy)."""
        with self._feedback_mu:
            seq = next(self._feedback_seq)
        return kvrpcpb_pb2.HealthFeedback(
            store_id=self._store_id, feedback_seq_no=seq, slow_score=self.slow_score
        )

    @property
    def store_id(self) -> int:
        """The id of the store that received the request."""
        return self._store_id

    @property
    def cluster(self) -> Cluster:
        """The cluster state (regions, clock, TSO)."""
        return self._cluster

    @property
    def engine(self) -> Any:
        """The cluster's shared MVCC engine."""
        return self._engine

    @property
    def raw(self) -> Any:
        """The cluster's shared raw-KV engine (:class:`tikv_mockstore.raw.RawEngine`)."""
        return self._raw

    @property
    def api_version(self) -> int:
        """The storage API version of the store (``kvrpcpb.APIVersion`` value)."""
        return self._cluster.api_version

    def now_ms(self) -> int:
        """The cluster's clock in milliseconds."""
        return self._cluster.clock.now_ms()

    def check_api_version(
        self,
        ctx: kvrpcpb_pb2.Context,
        *,
        cmd: str,
        txn: bool,
        keys: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> str | None:
        """TiKV's ``Storage::check_api_version`` / ``check_api_version_ranges``.

        Returns TiKV's error text, or ``None`` when the request's API version and keys suit
        the storage. ``cmd`` is TiKV's command kind (``"raw_get"``, ``"prewrite"``, ...).
        V1 storage takes V1 requests; V1TTL storage takes only raw V1 requests; V2 storage
        takes V2 raw requests whose keys start with ``r``, V2 txn requests with keys starting
        with ``x``, and V1 txn requests only for TiDB keys (``m`` / ``t``).
        """
        storage = self._cluster.api_version
        req = ctx.api_version
        names = API_VERSION_NAMES
        if storage == kvrpcpb_pb2.V1 and req == kvrpcpb_pb2.V1:
            return None
        if storage == kvrpcpb_pb2.V1TTL and req == kvrpcpb_pb2.V1 and not txn:
            return None
        if storage == kvrpcpb_pb2.V2 and (req == kvrpcpb_pb2.V2 or (req == kvrpcpb_pb2.V1 and txn)):
            if req == kvrpcpb_pb2.V1:
                wanted: tuple[int, ...] = (ord("m"), ord("t"))
            else:
                wanted = (ord("x"),) if txn else (ord("r"),)
            for key in keys:
                if not key or key[0] not in wanted:
                    return (
                        f"Key mode mismatched with the request mode, cmd: {cmd}, "
                        f"storage: {names[storage]}, key: {_hex(key)}"
                    )
            for start, end in ranges:
                # ApiV2::parse_range_mode: both ends in the same mode, or end is the mode's
                # successor prefix (the "whole mode" range).
                ok = (
                    bool(start)
                    and bool(end)
                    and start[0] in wanted
                    and (start[0] == end[0] or end == bytes([start[0] + 1]))
                )
                if not ok:
                    return (
                        f"Key mode mismatched with the request mode, cmd: {cmd}, "
                        f"storage: {names[storage]}, range: ({start!r}, {end!r})"
                    )
            return None
        return (
            "Api version in request does not match with TiKV storage, "
            f"cmd: {cmd}, storage: {names.get(storage, storage)}, "
            f"request: {names.get(req, req)}"
        )

    def check(
        self,
        ctx: kvrpcpb_pb2.Context,
        *,
        keys: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
        txn: bool,
        reverse: bool = False,
    ) -> errorpb_pb2.Error | None:
        """TiKV's region checks for a request; see the module docstring for the order.

        ``txn=True`` compares memcomparable-encoded keys with the boundaries (transactional
        keys, and raw keys under API v2, which TiKV also stores encoded). A range's start must
        lie in the region; its end is not checked (scans are clipped to the region). With
        ``reverse=True`` each range is ``(upper, lower)`` as reverse scans send it, and the
        upper bound may equal the region end (TiKV ``check_key_in_region_inclusive``).
        """
        region, err = self._route(ctx)
        if region is None:
            return err
        if self.disk_usage != "normal" and _CURRENT_COMMAND.get() in WRITE_COMMANDS:
            full = self._check_disk_full(ctx)
            if full is not None:
                return full
        # Transactional keys are compared in the user-key space against the region's decoded
        # bounds (the same order as encoded keys against encoded bounds, without encoding
        # every key); the error reports the encoded key, as TiKV does.
        contains = region.contains_user if txn else region.contains
        for key in keys:
            if not contains(key):
                return _key_not_in_region(encode_bytes(key) if txn else key, region)
        for start, _end in ranges:
            if reverse:
                # The exclusive upper bound may equal the region end.
                inside = (
                    region.contains_user_inclusive(start)
                    if txn
                    else start >= region.start_key
                    and (not region.end_key or start <= region.end_key)
                )
            else:
                inside = contains(start)
            if not inside:
                return _key_not_in_region(encode_bytes(start) if txn else start, region)
        return None

    def _check_disk_full(self, ctx: kvrpcpb_pb2.Context) -> errorpb_pb2.Error | None:
        """TiKV raftstore's ``check_normal_proposal_with_disk_full_opt`` for this leader.

        An almost-full leader proposes only writes whose ``Context.disk_full_opt`` allows
        it; an already-full one proposes none. The answer is a ``DiskFull`` region error
        naming the store. (TiKV also refuses when a majority of the followers is full;
        the mock models the leader's own disk only.)
        """
        opt = ctx.disk_full_opt
        if self.disk_usage == "almost_full" and opt != kvrpcpb_pb2.NotAllowedOnFull:
            return None
        names = {0: "NotAllowedOnFull", 1: "AllowedOnAlmostFull", 2: "AllowedOnAlreadyFull"}
        return errorpb_pb2.Error(
            message=(
                f"propose failed: tikv disk full, cmd diskFullOpt={names.get(opt, opt)}, "
                f"leader diskUsage={self.disk_usage}"
            ),
            disk_full=errorpb_pb2.DiskFull(
                store_id=[self._store_id], reason=f"disk {self.disk_usage.replace('_', ' ')}"
            ),
        )

    def check_region(self, ctx: kvrpcpb_pb2.Context) -> errorpb_pb2.Error | None:
        """The store, region, leader and epoch checks without any key check."""
        region, err = self._route(ctx)
        if (
            region is not None
            and self.disk_usage != "normal"
            and _CURRENT_COMMAND.get() in WRITE_COMMANDS
        ):
            return self._check_disk_full(ctx)
        return err

    def _route(self, ctx: kvrpcpb_pb2.Context) -> tuple[Region | None, errorpb_pb2.Error | None]:
        """``(region, None)`` when the request's routing checks pass, else ``(None, error)``.

        The checks are deterministic for one Context and one region object when this store
        leads the region (no replica / stale read rules apply), so a leader's passed check
        is remembered by the Context's bytes: a BatchCommands message carries the same
        Context for many sub-requests, and this is every request's hot path.
        """
        key = ctx.SerializeToString()
        region = self._routes.get(key)
        if region is not None and self._cluster.region_by_id(region.id) is region:
            return region, None
        region = self._cluster.region_by_id(ctx.region_id)
        err = self._check_routing(ctx, region)
        if err is not None or region is None:
            return None, err
        if region.leader_store_id == self._store_id:
            if len(self._routes) >= _ROUTES_CACHED:
                self._routes.clear()
            self._routes[key] = region
        return region, None

    def _check_routing(
        self, ctx: kvrpcpb_pb2.Context, region: Region | None
    ) -> errorpb_pb2.Error | None:
        # Every request runs this: each protobuf field is read once, and the replica-read
        # fields only when this store does not lead the region.
        store_id = self._store_id
        to_peer = ctx.peer
        if to_peer.store_id != store_id:
            return errorpb_pb2.Error(
                message=f"to store id {to_peer.store_id}, mine {store_id}",
                store_not_match=errorpb_pb2.StoreNotMatch(
                    request_store_id=to_peer.store_id, actual_store_id=store_id
                ),
            )
        peer = region.peer_on(store_id) if region is not None else None
        if region is None or peer is None:
            return _region_not_found(ctx.region_id)
        if to_peer.id != peer.id:
            # raftstore ``check_peer_id``: the request must name this store's peer.
            return errorpb_pb2.Error(
                message=f"mismatch peer id {to_peer.id} != {peer.id}",
                mismatch_peer_id=errorpb_pb2.MismatchPeerId(
                    request_peer_id=to_peer.id, store_peer_id=peer.id
                ),
            )
        leader = region.leader_store_id == store_id
        # Replica and stale reads are served by followers (TiKV read index / safe ts), but
        # only for read commands: raftstore allows a follower when the request is read-only
        # and asks for replica read (``allow_replica_read = read_only && replica_read``).
        if not leader and not (
            (ctx.replica_read or ctx.stale_read) and _CURRENT_COMMAND.get() in READ_COMMANDS
        ):
            return _not_leader(region)
        if not ctx.HasField("region_epoch"):
            return errorpb_pb2.Error(message="missing epoch!")
        epoch = ctx.region_epoch
        if epoch.version != region.version:
            current = [region, *self._cluster.siblings_for_epoch_error(region, epoch.version)]
            return errorpb_pb2.Error(
                message=(
                    f"current epoch of region {region.id} is conf_ver: {region.conf_ver} "
                    f"version: {region.version}, but you sent conf_ver: "
                    f"{epoch.conf_ver} version: {epoch.version}"
                ),
                epoch_not_match=errorpb_pb2.EpochNotMatch(
                    current_regions=[r.to_pb() for r in current]
                ),
            )
        if not leader and ctx.stale_read:
            return self._check_stale_read(region, peer.id)
        return None

    def _check_stale_read(self, region: Region, peer_id: int) -> errorpb_pb2.Error | None:
        """Refuse a follower's stale read above its safe ts (DataIsNotReady).

        TiKV ``ReadDelegate::check_stale_read_safe``; a leader falls back to a normal read
        and is never refused (see :mod:`tikv_mockstore.safe_ts`).
        """
        ts_field = _READ_TS_FIELD.get(_CURRENT_COMMAND.get())
        read_ts = getattr(_CURRENT_REQUEST.get(), ts_field) if ts_field else 0
        if read_ts == 0:  # raw reads carry no ts: TiKV encodes the missing start ts as 0
            return None
        engine = self._engine
        safe = self._cluster.safe_ts.region_safe_ts(
            self._store_id,
            region.id,
            lambda: region_locks(engine, region.start_key, region.end_key, encoded=True),
            engine,
        )
        if read_ts <= safe:
            return None
        return errorpb_pb2.Error(
            message=(
                f"peer {peer_id} of region {region.id} is not ready to serve a stale read "
                f"at {read_ts}: safe ts {safe}"
            ),
            data_is_not_ready=errorpb_pb2.DataIsNotReady(
                region_id=region.id, peer_id=peer_id, safe_ts=safe
            ),
        )

    def region_bounds(self, ctx: kvrpcpb_pb2.Context, *, txn: bool) -> tuple[bytes, bytes]:
        """The ``[start, end)`` user-key bounds of the request's region.

        The ``[start, end)`` user-key bounds of the request's region (``b""`` end:
        unbounded); with ``txn=True`` decoded from the memcomparable boundaries (a boundary
        that is not a valid encoding maps to the smallest key at or above it).
        """
        region = self._cluster.region_by_id(ctx.region_id)
        if region is None:
            return b"", b""
        if not txn:
            return region.start_key, region.end_key
        return region.user_start, region.user_end or b""


#: How many routed Contexts a store remembers (the cache is cleared when it is full).
_ROUTES_CACHED = 4096


def _region_not_found(region_id: int) -> errorpb_pb2.Error:
    return errorpb_pb2.Error(
        message=f"region {region_id} not found",
        region_not_found=errorpb_pb2.RegionNotFound(region_id=region_id),
    )


def _not_leader(region: Region) -> errorpb_pb2.Error:
    leader = region.leader
    err = errorpb_pb2.Error(
        message=f"peer is not leader for region {region.id}, leader may {leader}",
        not_leader=errorpb_pb2.NotLeader(region_id=region.id),
    )
    if leader is not None:
        err.not_leader.leader.CopyFrom(leader.to_pb())
    return err


def _key_not_in_region(key: bytes, region: Region) -> errorpb_pb2.Error:
    return errorpb_pb2.Error(
        message=(
            f"key {_hex(key)} is not in region key range [{_hex(region.start_key)}, "
            f"{_hex(region.end_key)}) for region {region.id}"
        ),
        key_not_in_region=errorpb_pb2.KeyNotInRegion(
            key=key, region_id=region.id, start_key=region.start_key, end_key=region.end_key
        ),
    )


def build_region_error(
    kind: str, cluster: Cluster, store_id: int, ctx: kvrpcpb_pb2.Context, message: str
) -> errorpb_pb2.Error:
    """An ``errorpb.Error`` of ``kind`` for an injected fault.

    An ``errorpb.Error`` of ``kind`` (a field name)

    filled from the cluster's state, as TiKV would fill it for the request's region; used by
    fault injection.

    """
    region = cluster.region_by_id(ctx.region_id)
    rid = ctx.region_id
    err = errorpb_pb2.Error(message=message)
    if kind == "not_leader":
        err.not_leader.region_id = rid
        if region is not None and region.leader is not None:
            err.not_leader.leader.CopyFrom(region.leader.to_pb())
    elif kind == "region_not_found":
        err.region_not_found.region_id = rid
    elif kind == "key_not_in_region":
        err.key_not_in_region.region_id = rid
        if region is not None:
            err.key_not_in_region.start_key = region.start_key
            err.key_not_in_region.end_key = region.end_key
    elif kind == "epoch_not_match":
        err.epoch_not_match.SetInParent()
        if region is not None:
            err.epoch_not_match.current_regions.append(region.to_pb())
    elif kind == "server_is_busy":
        err.server_is_busy.reason = message
    elif kind == "store_not_match":
        err.store_not_match.request_store_id = ctx.peer.store_id
        err.store_not_match.actual_store_id = store_id
    elif kind == "disk_full":
        err.disk_full.store_id.append(store_id)
        err.disk_full.reason = message
    elif kind == "mismatch_peer_id":
        err.mismatch_peer_id.request_peer_id = ctx.peer.id
        peer = region.peer_on(store_id) if region is not None else None
        err.mismatch_peer_id.store_peer_id = peer.id if peer is not None else 0
    elif kind == "undetermined_result":
        err.undetermined_result.message = message
    else:
        sub = getattr(err, kind)
        sub.SetInParent()
        if "region_id" in sub.DESCRIPTOR.fields_by_name:
            sub.region_id = rid
    return err


#: TiKV's status text when a request names another cluster (``kv.rs``).
CLUSTER_ID_MISMATCH = "the cluster id of the request does not match the TiKV cluster"


def _check_cluster_id(ctx: kvrpcpb_pb2.Context, cluster_id: int) -> None:
    """Refuse a request whose context names another cluster, as TiKV does.

    TiKV (``src/server/service/kv.rs``, ``reject_if_cluster_id_mismatch`` and the
    BatchCommands variant) rejects a non-zero ``Context.cluster_id`` that is not its own
    with ``INVALID_ARGUMENT``; 0 (a client that does not send it) is accepted.
    """
    requested = ctx.cluster_id
    if requested and requested != cluster_id:
        raise _AbortError(grpc.StatusCode.INVALID_ARGUMENT, CLUSTER_ID_MISMATCH)


class _AbortError(Exception):
    """Raised inside dispatch to end the call with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _handler_of(method: str, command: str) -> Any:
    """The registered handler of ``command``; UNIMPLEMENTED when there is none."""
    fn = HANDLERS.get(command)
    if fn is None:
        raise _AbortError(
            grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by tikv-mockstore"
        )
    return fn


def _handler_failed(command: str, exc: Exception) -> _AbortError:
    """Log a handler's unexpected exception; the call / stream then ends with INTERNAL."""
    _log.exception("handler for %s failed", command, exc_info=exc)
    return _AbortError(grpc.StatusCode.INTERNAL, f"{command} handler failed: {exc!r}")


class StoreServer:
    """One store's gRPC server (``tikvpb.Tikv``) on a loopback port.

    It can be stopped (the port then refuses connections) and restarted on the same port.
    """

    def __init__(
        self,
        store_id: int,
        cluster: Cluster,
        *,
        engine: Any,
        raw: Any,
        faults: FaultInjector,
        counters: Counters,
        host: str = "127.0.0.1",
        max_workers: int = 64,
    ) -> None:
        self.store_id = store_id
        self.cluster = cluster
        self.scope = StoreScope(store_id, cluster, engine, raw)
        self.faults = faults
        self.counters = counters
        self.host = host
        self.port = 0
        self.max_workers = max_workers
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._streams: set[_BatchStream] = set()
        self._streams_mu = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` of the server."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    def start(self, port: int | None = None) -> int:
        """Start serving on ``port`` (default: the previous port, or a free one); return it."""
        if self._server is not None:
            raise RuntimeError(f"store {self.store_id} is already serving")
        want = self.port if port is None else port
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix=f"mock-tikv-{self.store_id}"
        )
        server = grpc.server(self._executor, options=GRPC_SERVER_OPTIONS)
        server.add_generic_rpc_handlers((self._generic_handler(),))
        bound = server.add_insecure_port(f"{self.host}:{want}")
        if bound == 0:
            self._executor.shutdown(wait=False)
            raise OSError(f"store {self.store_id} could not bind {self.host}:{want}")
        server.start()
        self.port = bound
        self._server = server
        return bound

    def stop(self, grace: float | None = None) -> None:
        """Stop serving: open calls are cancelled and the port refuses connections."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._streams_mu:
            streams = list(self._streams)
        for stream in streams:
            stream.close()
        server.stop(grace).wait()
        if self._executor is not None:
            # Do not wait for handler threads: one may hang on an injected fault until the
            # test releases it; it finishes on its own then.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # ------------------------------------------------------------------ dispatch

    def _generic_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in COMMAND_OF_METHOD:
            req_type = _REQUEST_TYPES[method]
            resp_type = _RESPONSE_TYPES[method]
            if method == "BatchCommands":
                handlers[method] = grpc.stream_stream_rpc_method_handler(
                    self._batch_commands,
                    request_deserializer=req_type.FromString,
                    response_serializer=resp_type.SerializeToString,
                )
            elif method == "CoprocessorStream":
                handlers[method] = grpc.unary_stream_rpc_method_handler(
                    self._unimplemented_stream,
                    request_deserializer=req_type.FromString,
                    response_serializer=resp_type.SerializeToString,
                )
            else:
                handlers[method] = grpc.unary_unary_rpc_method_handler(
                    self._unary(method),
                    request_deserializer=req_type.FromString,
                    response_serializer=resp_type.SerializeToString,
                )
        return grpc.method_handlers_generic_handler("tikvpb.Tikv", handlers)

    def _unimplemented_stream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "CoprocessorStream is not implemented")

    def _unary(self, method: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        command = COMMAND_OF_METHOD[method]

        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                result = self._dispatch(method, command, request)
                if isinstance(result, futures.Future):
                    result = self._wait(result, context)
                return result
            except _AbortError as abort:
                context.abort(abort.code, abort.details)

        return serve

    @staticmethod
    def _wait(fut: futures.Future[Any], context: grpc.ServicerContext) -> Any:
        """Wait for a deferred result, giving up when the call ends.

        The call ends when the client goes away or the server stops; the future is left
        alone, since its handler still owns it.
        """
        done = threading.Event()
        fut.add_done_callback(lambda _f: done.set())
        context.add_callback(done.set)
        done.wait()
        if not fut.done():
            raise _AbortError(grpc.StatusCode.CANCELLED, "the call ended before its result")
        exc = fut.exception()
        if exc is not None:
            raise _AbortError(grpc.StatusCode.INTERNAL, f"deferred result failed: {exc!r}")
        return fut.result()

    def _dispatch(self, method: str, command: str, request: Any) -> Any:
        """Count, apply faults, and run the handler; returns a response or a Future."""
        ctx = request.context if method in _HAS_CONTEXT else None
        if ctx is not None:
            _check_cluster_id(ctx, self.cluster.cluster_id)
        self.counters.record(method, self.store_id, ctx)
        outcome = self.faults.apply(
            method,
            self.store_id,
            ctx.region_id if ctx is not None else None,
            (lambda: self.scope.check_region(ctx) is None) if ctx is not None else None,
        )
        if outcome is not None:
            if outcome.key_error is not None:
                return self._key_error_response(method, command, request, outcome)
            return self._fault_response(method, outcome, ctx)
        return self._run_handler(method, command, request)

    def _run_handler(self, method: str, command: str, request: Any) -> Any:
        fn = _handler_of(method, command)
        token = _CURRENT_COMMAND.set(command)
        request_token = _CURRENT_REQUEST.set(request)
        try:
            return fn(self.scope, request)
        except _AbortError:
            raise
        except Exception as exc:
            raise _handler_failed(command, exc) from exc
        finally:
            _CURRENT_COMMAND.reset(token)
            _CURRENT_REQUEST.reset(request_token)

    def _key_error_response(
        self, method: str, command: str, request: Any, outcome: FaultOutcome
    ) -> Any:
        """The answer of an injected key error, placed where TiKV places key errors."""
        assert outcome.key_error is not None
        fields = KEY_ERROR_METHODS[method]
        fresh_ts = self.cluster.current_ts
        if outcome.per_key:
            resp = self._run_handler(method, command, request)
            if resp.HasField("region_error") or resp.HasField("error"):
                return resp  # the request failed on its own; nothing to replace
            pairs = resp.pairs
            if method == "KvScan":
                key = pairs[0].key if len(pairs) else None
            else:
                key = request.keys[0] if len(request.keys) else None
            if key is not None:
                err = build_key_error(
                    outcome.key_error,
                    outcome.custom_key_error,
                    request,
                    outcome.message,
                    key=key,
                    fresh_ts=fresh_ts,
                )
                # storage/errors.rs entry_result_to_kv_pair: an error pair carries the
                # error only (no key, no value), in the position of the key's answer.
                # The key's answer (the first requested key, or a scan's first pair) is
                # the first pair.
                kept = [kvrpcpb_pb2.KvPair(error=err)] + [p for p in pairs if p.key != key]
                del pairs[:]
                pairs.extend(kept)
                return resp
        resp = _RESPONSE_TYPES[method]()
        err = build_key_error(
            outcome.key_error,
            outcome.custom_key_error,
            request,
            outcome.message,
            fresh_ts=fresh_ts,
        )
        if "errors" in fields:
            resp.errors.append(err)
        else:
            resp.error.CopyFrom(err)
            if "pairs" in resp.DESCRIPTOR.fields_by_name:
                # kv.rs: a failed batch get / scan also carries the error in a first pair,
                # for old clients.
                resp.pairs.add().error.CopyFrom(err)
        return resp

    def _fault_response(
        self, method: str, outcome: FaultOutcome, ctx: kvrpcpb_pb2.Context | None
    ) -> Any:
        if outcome.drop_stream:
            raise _DropStreamError(outcome.message)
        if outcome.status is not None:
            raise _AbortError(outcome.status, outcome.message)
        assert outcome.region_error is not None
        resp = _RESPONSE_TYPES[method]()
        if "region_error" not in resp.DESCRIPTOR.fields_by_name:
            raise _AbortError(grpc.StatusCode.UNAVAILABLE, outcome.message)
        if outcome.custom_error is not None:
            resp.region_error.MergeFromString(outcome.custom_error)
            return resp
        err = build_region_error(
            outcome.region_error,
            self.cluster,
            self.store_id,
            ctx if ctx is not None else kvrpcpb_pb2.Context(),
            outcome.message,
        )
        resp.region_error.CopyFrom(err)
        return resp

    def _batch_commands(
        self,
        request_iterator: Iterator[tikvpb_pb2.BatchCommandsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[tikvpb_pb2.BatchCommandsResponse]:
        stream = _BatchStream(self, request_iterator)
        with self._streams_mu:
            self._streams.add(stream)
        context.add_callback(stream.close)
        # TiKV sends response headers at once; clients may wait for them.
        context.send_initial_metadata(())
        try:
            yield from stream.responses(context)
        finally:
            stream.close()
            with self._streams_mu:
                self._streams.discard(stream)


class _DropStreamError(_AbortError):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, details)


_END = object()

#: A BatchCommands response message is sent once its answers reach this many bytes, and the
#: rest of the request message's sub-requests are answered in further messages. TiKV answers
#: each sub-request as it completes (responses may come back split); answering a message of
#: 128 large sub-requests (say ``RawBatchGet`` of 100 keys each, over 1 MB) in one response
#: would make the client wait for all of them, so client and mock would take turns instead
#: of working at the same time.
RESPONSE_FLUSH_BYTES = 64 * 1024

#: Commands TiKV serves from a snapshot on the read path, so that a follower may serve them
#: for replica / stale reads (``src/server/service/kv.rs`` read-pool commands).
READ_COMMANDS = frozenset(
    {
        "Get",
        "BatchGet",
        "Scan",
        "BufferBatchGet",
        "Coprocessor",
        "RawGet",
        "RawBatchGet",
        "RawScan",
        "RawBatchScan",
        "RawGetKeyTTL",
        "RawChecksum",
    }
)

#: Commands TiKV carries out as Raft proposals: refused by a leader whose disk is (almost)
#: full unless ``Context.disk_full_opt`` allows it (raftstore
#: ``check_normal_proposal_with_disk_full_opt``).
WRITE_COMMANDS = frozenset(
    {
        "Prewrite",
        "Commit",
        "Cleanup",
        "BatchRollback",
        "PessimisticLock",
        "PessimisticRollback",
        "TxnHeartBeat",
        "CheckTxnStatus",
        "CheckSecondaryLocks",
        "ResolveLock",
        "Flush",
        "DeleteRange",
        "RawPut",
        "RawBatchPut",
        "RawDelete",
        "RawBatchDelete",
        "RawDeleteRange",
        "RawCompareAndSwap",
    }
)

#: The command the current thread is serving (set by the dispatcher for the region checks).
_CURRENT_COMMAND: contextvars.ContextVar[str] = contextvars.ContextVar("command", default="")
#: The request the current thread is serving (the stale-read check takes its read ts).
_CURRENT_REQUEST: contextvars.ContextVar[Any] = contextvars.ContextVar("request", default=None)

#: The request field holding a transactional read's timestamp, per command.
_READ_TS_FIELD = {
    "Get": "version",
    "BatchGet": "version",
    "Scan": "version",
    "BufferBatchGet": "version",
    "Coprocessor": "start_ts",
}

#: TiKV's default ``server.health-feedback-interval``.
_FEEDBACK_INTERVAL_S = 1.0


class _BatchStream:
    """One BatchCommands stream.

    One BatchCommands stream: a reader thread serves request messages; the gRPC thread sends
    what it queues (immediate batches, and deferred responses as they complete).
    """

    def __init__(
        self, server: StoreServer, requests: Iterator[tikvpb_pb2.BatchCommandsRequest]
    ) -> None:
        self._server = server
        self._requests = requests
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._mu = threading.Lock()
        self._pending = 0
        self._reading = True
        self._closed = False
        self._side: futures.ThreadPoolExecutor | None = None
        self._last_feedback: float | None = None
        self._reader = threading.Thread(
            target=self._read, name=f"mock-tikv-{server.store_id}-batch", daemon=True
        )

    def close(self) -> None:
        """Stop the stream: the sender returns; deferred responses are dropped."""
        with self._mu:
            if self._closed:
                return
            self._closed = True
        self._out.put(_END)

    def responses(
        self, context: grpc.ServicerContext
    ) -> Iterator[tikvpb_pb2.BatchCommandsResponse]:
        """Yield response messages until the stream is done.

        Yield response messages until the client half-closes and every deferred response is
        sent, or the stream is closed.
        """
        self._reader.start()
        try:
            while True:
                item = self._out.get()
                if item is _END:
                    return
                if isinstance(item, _AbortError):
                    context.abort(item.code, item.details)
                yield item
        finally:
            side = self._side
            if side is not None:
                side.shutdown(wait=False, cancel_futures=True)

    def _finish_if_done(self) -> None:
        with self._mu:
            done = not self._reading and self._pending == 0 and not self._closed
        if done:
            self._out.put(_END)

    def _read(self) -> None:
        try:
            server = self._server
            for message in self._requests:
                if self._closed:
                    break
                if server.counters.logging_messages:
                    server.counters.record_message(server.store_id, message)
                if server.faults.active():
                    # Faults on "BatchCommands" itself act on the whole message: a delay or a
                    # hang stalls the stream (as a stuck store would), an error ends it.
                    outcome = server.faults.apply("BatchCommands", server.store_id, None)
                    if outcome is not None:
                        server._fault_response("BatchCommands", outcome, None)
                self._serve(message)
        except grpc.RpcError:
            pass
        except _AbortError as abort:
            self._out.put(abort)
        except Exception:  # pragma: no cover - defensive: never leave the sender waiting
            _log.exception("BatchCommands reader failed")
            self._out.put(_AbortError(grpc.StatusCode.INTERNAL, "BatchCommands reader failed"))
        finally:
            with self._mu:
                self._reading = False
            self._finish_if_done()

    def _serve(self, message: tikvpb_pb2.BatchCommandsRequest) -> None:
        """Serve one request message; immediate answers leave in RESPONSE_FLUSH_BYTES parts.

        The hot path of every benchmark: the per-request work is the handler itself. The
        sub-requests are counted once per message and command (before any answer leaves),
        handlers are looked up once per run of one command, and when no fault is registered
        nothing is looked up for faults.
        """
        server = self._server
        use_side = server.faults.active()  # faults may sleep or hang: run off-thread
        out = tikvpb_pb2.BatchCommandsResponse()
        add = out.responses.add
        ids = out.request_ids
        scope = server.scope
        cluster_id = server.cluster.cluster_id
        served: dict[str, list[Any]] = {}  # command -> [count, last request]
        current = ""
        fn: Any = None
        asked_feedback = False
        out_bytes = 0  # the encoded size of the answers in ``out``
        try:
            for req, rid in zip(message.requests, message.request_ids, strict=False):
                name = req.WhichOneof("cmd")
                if name is None:
                    continue
                sub = getattr(req, name)
                if name == "Empty":
                    resp = tikvpb_pb2.BatchCommandsEmptyResponse(test_id=sub.test_id)
                    if sub.delay_time:
                        self._defer_timer(rid, sub.delay_time / 1000.0, resp)
                        continue
                    add(Empty=resp)
                    ids.append(rid)
                    continue
                method = _METHOD_OF_BATCH.get(name)
                if method is None:
                    raise _AbortError(
                        grpc.StatusCode.UNIMPLEMENTED, f"unknown batch command {name}"
                    )
                if use_side:
                    self._run_side(rid, method, name, sub)
                    continue
                if method in _HAS_CONTEXT:
                    _check_cluster_id(sub.context, cluster_id)
                tally = served.get(name)
                if tally is None:
                    served[name] = [1, sub]
                    asked_feedback = asked_feedback or name == "GetHealthFeedback"
                else:
                    tally[0] += 1
                    tally[1] = sub
                if name != current:
                    fn = _handler_of(method, name)
                    _CURRENT_COMMAND.set(name)
                    current = name
                _CURRENT_REQUEST.set(sub)
                try:
                    result = fn(scope, sub)
                except _AbortError:
                    raise
                except Exception as exc:
                    raise _handler_failed(name, exc) from exc
                if isinstance(result, futures.Future):
                    self._count(served)  # counted before the deferred answer can leave
                    self._defer(rid, name, result)
                else:
                    getattr(add(), name).CopyFrom(result)
                    ids.append(rid)
                    out_bytes += result.ByteSize()
                    if out_bytes >= RESPONSE_FLUSH_BYTES:
                        # Answer what is served so far (TiKV answers each sub-request as
                        # it completes): the client works on these while the rest are
                        # served, instead of the whole message waiting for its slowest part.
                        self._count(served)
                        self._attach_feedback(out, asked=asked_feedback)
                        self._out.put(out)
                        out = tikvpb_pb2.BatchCommandsResponse()
                        add = out.responses.add
                        ids = out.request_ids
                        out_bytes = 0
                        asked_feedback = False
        finally:
            self._count(served)
            if current:
                _CURRENT_COMMAND.set("")
                _CURRENT_REQUEST.set(None)
        if ids:
            self._attach_feedback(out, asked=asked_feedback)
            self._out.put(out)

    def _count(self, served: dict[str, list[Any]]) -> None:
        """Record the tallied sub-requests in the cluster's counters and clear the tally."""
        if not served:
            return
        counters = self._server.counters
        store_id = self._server.store_id
        for name, (count, last) in served.items():
            method = _METHOD_OF_BATCH[name]
            ctx = last.context if method in _HAS_CONTEXT else None
            counters.record(method, store_id, ctx, count=count)
        served.clear()

    def _attach_feedback(self, out: tikvpb_pb2.BatchCommandsResponse, *, asked: bool) -> None:
        """Attach the store's health feedback as TiKV's ``HealthFeedbackAttacher`` does.

        Always when the message answers a GetHealthFeedback (``asked``), otherwise at most
        once a second.
        """
        now = time.monotonic()
        if asked:
            found = next(r for r in out.responses if r.HasField("GetHealthFeedback"))
            out.health_feedback.CopyFrom(found.GetHealthFeedback.health_feedback)
        elif self._last_feedback is None or now - self._last_feedback >= _FEEDBACK_INTERVAL_S:
            out.health_feedback.CopyFrom(self._server.scope.health_feedback())
        else:
            return
        self._last_feedback = now

    def _send_one(self, rid: int, name: str, resp: Any) -> None:
        msg = tikvpb_pb2.BatchCommandsResponse(request_ids=[rid])
        msg.responses.add(**{name: resp})
        self._out.put(msg)

    def _track(self) -> bool:
        with self._mu:
            if self._closed:
                return False
            self._pending += 1
            return True

    def _untrack(self) -> None:
        with self._mu:
            self._pending -= 1
        self._finish_if_done()

    def _defer(self, rid: int, name: str, fut: futures.Future[Any]) -> None:
        if not self._track():
            return

        def done(f: futures.Future[Any]) -> None:
            try:
                exc = f.exception()
                if exc is None:
                    self._send_one(rid, name, f.result())
                else:
                    self._out.put(_AbortError(grpc.StatusCode.INTERNAL, f"{name} failed: {exc!r}"))
            except futures.CancelledError:
                pass
            finally:
                self._untrack()

        fut.add_done_callback(done)

    def _defer_timer(self, rid: int, delay: float, resp: Any) -> None:
        if not self._track():
            return

        def fire() -> None:
            try:
                self._send_one(rid, "Empty", resp)
            finally:
                self._untrack()

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()

    def _run_side(self, rid: int, method: str, name: str, sub: Any) -> None:
        if self._side is None:
            self._side = futures.ThreadPoolExecutor(
                max_workers=16, thread_name_prefix=f"mock-tikv-{self._server.store_id}-side"
            )
        if not self._track():
            return

        def run() -> None:
            try:
                result = self._server._dispatch(method, name, sub)
                if isinstance(result, futures.Future):
                    result = result.result()
                self._send_one(rid, name, result)
            except _AbortError as abort:
                self._out.put(abort)
            finally:
                self._untrack()

        try:
            self._side.submit(run)
        except RuntimeError:  # the executor was shut down: the stream is closing
            self._untrack()


_METHOD_OF_BATCH = {c: m for m, c in COMMAND_OF_METHOD.items() if m not in ("BatchCommands",)}
