"""``MockCluster``: an embedded PD + TiKV cluster over real gRPC, in-process or in a child process.

In-process (the default) every server runs on threads of this process and the control API acts
on the shared state directly. With ``process=True`` the cluster runs in a child process started
with the ``spawn`` method, so a benchmark's client and the servers do not share a GIL; the
control API is proxied over a pipe. Proxied: the region and store operations (``split``,
``merge``, ``transfer_leader``, ``add_peer``, ``remove_peer``, ``add_store``, ``stop_store``,
``restart_store``, ``remove_store``, ``move_store``, ``swap_store_addresses``), the PD
members (``move_pd_leader``, ``stop_pd``, ``restart_pd``, ``pd_members``), ``create_keyspace``,
lookups (``regions``, ``region``, ``region_by_key``, ``stores``, ``current_ts``, ``gc_safe_point``,
``wait_for_gc``),
the clock (``clock.now_ms / advance / set / freeze / unfreeze``), fault injection
(``faults.add`` returns a handle with ``release`` / ``remove`` / ``hits``; ``faults.clear``)
and the counters (``counters.count / snapshot / reset / last_context / log_messages /
messages``), the health feedback's slow score (``set_slow_score``), a store's disk usage
(``set_disk_usage``). The engines
(``engine``, ``raw``) are only reachable in-process.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import threading
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import grpc
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2

from tikv_mockstore._codec import encode_bytes
from tikv_mockstore.clock import Clock
from tikv_mockstore.cluster import (
    Cluster,
    ClusterError,
    Keyspace,
    PdMember,
    Region,
    Store,
    StoreState,
)
from tikv_mockstore.faults import Counters, Fault, FaultInjector
from tikv_mockstore.gc_worker import GcWorker
from tikv_mockstore.pd_service import PdServer
from tikv_mockstore.raw import RawEngine
from tikv_mockstore.safe_ts import store_safe_ts
from tikv_mockstore.tikv_service import StoreServer, load_command_handlers

__all__ = ["MockCluster"]


def _make_engine() -> Any:
    """The shared MVCC engine (``tikv_mockstore.mvcc.engine.MvccEngine``), if it is present."""
    try:
        module = importlib.import_module("tikv_mockstore.mvcc.engine")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("tikv_mockstore.mvcc"):
            return None
        raise
    return module.MvccEngine()


def even_split_keys(regions: int) -> list[bytes]:
    """Split keys that cut the key space into ``regions`` regions by the first key byte.

    They are memcomparable-encoded one-byte keys, so every boundary is also a valid encoded
    transactional key (clients decode transactional region boundaries) while raw keys are
    partitioned by their first byte too.
    """
    if isinstance(regions, bool) or not isinstance(regions, int):
        raise TypeError(f"regions must be an int, not {type(regions).__name__}")
    if not 1 <= regions <= 256:
        raise ValueError(f"regions must be in [1, 256], got {regions}")
    return [encode_bytes(bytes([256 * i // regions])) for i in range(1, regions)]


class MockCluster:
    """An embedded TiKV-compatible cluster: PD member(s) and ``stores`` TiKV stores.

    ``with MockCluster(stores=3) as cluster: cluster.pd_endpoints`` gives
    ``["127.0.0.1:PORT", ...]`` for any TiKV client.

    Parameters: ``stores`` — number of stores; ``regions`` — pre-split into this many regions
    (by the first key byte, see :func:`even_split_keys`); ``split_raw`` / ``split_txn`` —
    extra split keys as raw keys / as transactional user keys (memcomparable-encoded);
    ``pd_members`` — number of PD members (the first is the leader); ``pd_port`` — the first
    member's port (0: a free one); ``api_version`` — the stores' storage API version: 1 / "V1"
    (default; raw TTLs are refused as by TiKV without ``enable-ttl``), "V1TTL" (raw only,
    with TTL) or 2 / "V2" (keyspaces); ``cluster_id`` — fixed cluster id; ``process`` — run in
    a child process; ``max_workers`` — gRPC threads per server.
    """

    def __init__(
        self,
        stores: int = 3,
        *,
        regions: int | None = None,
        split_raw: Sequence[bytes] = (),
        split_txn: Sequence[bytes] = (),
        pd_members: int = 1,
        pd_port: int = 0,
        api_version: int | str = 1,
        cluster_id: int | None = None,
        host: str = "127.0.0.1",
        process: bool = False,
        max_workers: int = 64,
    ) -> None:
        if isinstance(stores, bool) or not isinstance(stores, int):
            raise TypeError(f"stores must be an int, not {type(stores).__name__}")
        if stores < 1:
            raise ValueError(f"stores must be >= 1, got {stores}")
        if isinstance(pd_members, bool) or not isinstance(pd_members, int) or pd_members < 1:
            raise ValueError(f"pd_members must be an int >= 1, got {pd_members!r}")
        if not 0 <= pd_port < 65536:
            raise ValueError(f"pd_port must be in [0, 65536), got {pd_port}")
        for name, keys in (("split_raw", split_raw), ("split_txn", split_txn)):
            if isinstance(keys, bytes | str):  # type: ignore[unreachable]
                raise TypeError(f"{name} must be a sequence of bytes keys, not a single key")
            for key in keys:
                if not isinstance(key, bytes):
                    raise TypeError(f"{name} keys must be bytes, not {type(key).__name__}")
        if regions is not None:
            even_split_keys(regions)  # validates
        self._options: dict[str, Any] = {
            "stores": stores,
            "regions": regions,
            "split_raw": list(split_raw),
            "split_txn": list(split_txn),
            "pd_members": pd_members,
            "pd_port": pd_port,
            "api_version": api_version,
            "cluster_id": cluster_id,
            "host": host,
            "max_workers": max_workers,
        }
        self._process = process
        self._closed = False
        self._local: _LocalCluster | None = None
        self._remote: _Remote | None = None
        if process:
            self._remote = _Remote(self._options)
            info = self._remote.info
        else:
            self._local = _LocalCluster(**self._options)
            info = self._local.info()
        self.cluster_id: int = info["cluster_id"]
        self.api_version: int = info["api_version"]
        self._pd_addresses: list[str] = info["pd_addresses"]
        self.clock: Any = self._local.clock if self._local else _ClockProxy(self._call)
        self.faults: Any = self._local.faults if self._local else _FaultsProxy(self._call)
        self.counters: Any = self._local.counters if self._local else _CountersProxy(self._call)

    # ------------------------------------------------------------------ plumbing

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise RuntimeError("the mock cluster is closed")
        if self._local is not None:
            return _run_op(self._local, op, args, kwargs)
        assert self._remote is not None
        return self._remote.call(op, args, kwargs)

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every server (and the child process); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._local is not None:
            self._local.close()
        if self._remote is not None:
            self._remote.close()

    @property
    def in_process(self) -> bool:
        """Whether the servers run in this process."""
        return self._local is not None

    # ------------------------------------------------------------------ addresses

    @property
    def pd_endpoints(self) -> list[str]:
        """Every PD member's ``host:port`` (the leader first at start)."""
        return list(self._pd_addresses)

    @property
    def pd_address(self) -> str:
        """The current PD leader's ``host:port``."""
        leader: PdMember | None = self._call("pd_leader")
        if leader is None:
            raise ClusterError("there is no PD leader")
        return leader.client_url.removeprefix("http://")

    @property
    def store_addresses(self) -> dict[int, str]:
        """``{store_id: "host:port"}`` of every store that is not a tombstone."""
        return {s.id: s.address for s in self.stores() if s.state is not StoreState.TOMBSTONE}

    @property
    def engine(self) -> Any:
        """The shared MVCC engine (in-process only)."""
        if self._local is None:
            raise RuntimeError("the engines are not reachable when process=True")
        return self._local.engine

    @property
    def raw(self) -> RawEngine:
        """The shared raw engine (in-process only)."""
        if self._local is None:
            raise RuntimeError("the engines are not reachable when process=True")
        return self._local.raw

    @property
    def state(self) -> Cluster:
        """The cluster state object (in-process only)."""
        if self._local is None:
            raise RuntimeError("the cluster state is not reachable when process=True")
        return self._local.cluster

    # ------------------------------------------------------------------ control API

    def stores(self) -> list[Store]:
        """Every store (id, address, state)."""
        result: list[Store] = self._call("stores")
        return result

    def regions(self) -> list[Region]:
        """Every region in key order."""
        result: list[Region] = self._call("regions")
        return result

    def region(self, region_id: int) -> Region | None:
        """Region ``region_id``."""
        result: Region | None = self._call("region", region_id)
        return result

    def region_by_key(self, key: bytes, *, txn: bool = False) -> Region | None:
        """The region holding ``key``.

        ``key`` is a transactional user key with ``txn=True`` (looked up encoded); under API v2
        every key is looked up encoded.
        """
        result: Region | None = self._call("region_by_key", key, txn)
        return result

    def split(self, keys: Sequence[bytes], *, txn: bool = False) -> list[Region]:
        """Split regions at ``keys``.

        Split at ``keys`` (``txn=True``: transactional user keys, encoded first); returns
        the regions that resulted from splits.
        """
        if isinstance(keys, bytes):  # type: ignore[unreachable]
            raise TypeError("keys must be a sequence of bytes, not a single bytes key")
        result: list[Region] = self._call("split", list(keys), txn)
        return result

    def merge(self, source_id: int, target_id: int) -> Region:
        """Merge region ``source_id`` into the adjacent ``target_id``; returns the target."""
        result: Region = self._call("merge", source_id, target_id)
        return result

    def transfer_leader(self, region_id: int, store_id: int) -> Region:
        """Move region ``region_id``'s leader to its peer on ``store_id``."""
        result: Region = self._call("transfer_leader", region_id, store_id)
        return result

    def set_store_labels(self, store_id: int, labels: dict[str, str]) -> None:
        """Replace a store's labels (e.g. ``{"zone": "z1"}``); PD reports them from now on."""
        self._call("set_store_labels", store_id, dict(labels))

    def set_slow_score(self, store_id: int, score: int) -> None:
        """Set the slow score the store reports in its health feedback (1 healthy … 100).

        TiKV sends its raftstore slow score in ``BatchCommandsResponse.health_feedback``
        (at most once a second per stream, and with every GetHealthFeedback answer);
        client-go treats a store scoring 80 or more as slow.
        """
        if isinstance(score, bool) or not isinstance(score, int):
            raise TypeError(f"score must be an int, got {type(score).__name__}")
        if not 1 <= score <= 100:
            raise ValueError(f"score must be in [1, 100], got {score}")
        self._call("set_slow_score", store_id, score)

    def set_disk_usage(self, store_id: int, usage: str) -> None:
        """Set a store's disk usage: ``"normal"``, ``"almost_full"`` or ``"already_full"``.

        As TiKV's raftstore, a store leading a region then refuses writes (transactional
        and raw) with a ``DiskFull`` region error naming it: an almost-full one unless the
        request's ``Context.disk_full_opt`` allows writing on an almost-full disk, an
        already-full one always. Reads are served.
        """
        if usage not in ("normal", "almost_full", "already_full"):
            raise ValueError(
                f"usage must be 'normal', 'almost_full' or 'already_full', got {usage!r}"
            )
        self._call("set_disk_usage", store_id, usage)

    def add_peer(self, region_id: int, store_id: int, *, learner: bool = False) -> Region:
        """Add a peer of ``region_id`` on ``store_id`` (a learner with ``learner=True``)."""
        result: Region = self._call("add_peer", region_id, store_id, learner=learner)
        return result

    def remove_peer(self, region_id: int, store_id: int) -> Region:
        """Remove ``region_id``'s peer on ``store_id``."""
        result: Region = self._call("remove_peer", region_id, store_id)
        return result

    def add_store(self, *, port: int = 0) -> int:
        """Start a new, empty store (no peers until :meth:`add_peer`); returns its id.

        ``port`` — serve on this port (0: a free one), e.g. the port of a store that was
        removed, so that a new store id takes over an old address (a TiKV node replaced by
        a new one on the same host and port). A port another running store of this cluster
        serves on is refused.
        """
        result: int = self._call("add_store", port)
        return result

    def move_store(self, store_id: int, *, port: int = 0) -> str:
        """Move a running store to another address; returns the new ``host:port``.

        The store stops serving on its old port (which then refuses connections) and serves
        the same store id and data on ``port`` (0: a fresh free port), and PD reports the new
        address from now on, as after a TiKV node restarts with a new address (a pod moved
        by Kubernetes). Clients holding the old address must re-resolve the store from PD.
        A port another running store of this cluster serves on is refused.
        """
        result: str = self._call("move_store", store_id, port)
        return result

    def swap_store_addresses(self, first: int, second: int) -> None:
        """Make two running stores trade addresses.

        Each store stops, then serves the same store id and data on the other's old port,
        and PD reports the swapped addresses. A client that still sends to a store's old
        address reaches the other store, which answers ``StoreNotMatch`` (client-go
        ``rawkv_test`` ``UpdateStoreAddr`` of both stores).
        """
        self._call("swap_store_addresses", first, second)

    def stop_store(self, store_id: int, *, move_leaders: bool = True) -> None:
        """Stop a store's gRPC server (its port then refuses connections).

        With ``move_leaders`` its region leaders move to other up peers, as Raft elects new
        ones.
        """
        self._call("stop_store", store_id, move_leaders)

    def restart_store(self, store_id: int) -> None:
        """Restart a stopped store on the same port."""
        self._call("restart_store", store_id)

    def remove_store(self, store_id: int) -> None:
        """Remove a store: its peers go, it becomes a tombstone and its server stops."""
        self._call("remove_store", store_id)

    def move_pd_leader(self, member_id: int | None = None) -> PdMember:
        """Make another PD member (default: the next one) the leader; returns it."""
        result: PdMember = self._call("move_pd_leader", member_id)
        return result

    def pd_members(self) -> list[PdMember]:
        """The PD members (name, member id, client URL)."""
        result: list[PdMember] = self._call("pd_members")
        return result

    def stop_pd(self, member_id: int | None = None) -> PdMember:
        """Stop a PD member's server (default: the leader); its port refuses connections.

        When it led, another running member becomes the leader, as an election would.
        Returns the stopped member.
        """
        result: PdMember = self._call("stop_pd", member_id)
        return result

    def restart_pd(self, member_id: int) -> None:
        """Restart a stopped PD member on its port (as a follower)."""
        self._call("restart_pd", member_id)

    def create_keyspace(self, name: str) -> Keyspace:
        """Create a keyspace (ids from 1; ``DEFAULT`` is 0) and split at its v2 bounds."""
        result: Keyspace = self._call("create_keyspace", name)
        return result

    def current_ts(self) -> int:
        """A fresh PD timestamp."""
        result: int = self._call("current_ts")
        return result

    @property
    def gc_safe_point(self) -> int:
        """PD's GC safepoint."""
        result: int = self._call("gc_safe_point")
        return result

    def wait_for_gc(
        self, safe_point: int, timeout: float = 10.0, keyspace_id: int | None = None
    ) -> bool:
        """Wait until the GC worker has collected at ``safe_point`` (or later); False on timeout.

        The stores' GC worker collects on its own thread after PD's GC safepoint (of the
        keyspace, or cluster-wide) advances, as TiKV's GC manager does after polling PD.
        """
        result: bool = self._call("wait_for_gc", safe_point, timeout, keyspace_id)
        return result

    # ------------------------------------------------------------------ safe ts (stale reads)

    def safe_ts(self, store_id: int) -> int:
        """The store's safe (resolved) ts now: stale reads at or below it are served there.

        Every region of the store has its own safe ts (the clock minus the store's lag,
        below the region's oldest prewrite lock); this is their minimum, as TiKV's
        ``GetStoreSafeTS`` answers. See :mod:`tikv_mockstore.safe_ts`.
        """
        result: int = self._call("safe_ts.store", store_id)
        return result

    def set_safe_ts_lag(self, store_id: int, lag_ms: int) -> None:
        """Make the store's safe ts trail the cluster clock by ``lag_ms`` ms (0: none)."""
        self._call("safe_ts.set_lag", store_id, lag_ms)

    def hold_safe_ts(self, store_id: int) -> int:
        """Stop the store's safe ts from advancing (a lagging follower); returns the cap.

        Stale reads above the cap get ``DataIsNotReady`` from that store's followers until
        :meth:`release_safe_ts`. Leaders are never refused (TiKV falls back to a leader read).
        """
        result: int = self._call("safe_ts.hold", store_id)
        return result

    def set_safe_ts(self, store_id: int, ts: int) -> None:
        """Hold the store's safe ts at ``ts``.

        What it already published stays: a safe ts never goes back.
        """
        self._call("safe_ts.pin", store_id, ts)

    def release_safe_ts(self, store_id: int) -> None:
        """Let the store's safe ts follow the clock again (minus its lag)."""
        self._call("safe_ts.release", store_id)


class _LocalCluster:
    """The servers and state of a cluster running in this process."""

    def __init__(
        self,
        *,
        stores: int,
        regions: int | None,
        split_raw: list[bytes],
        split_txn: list[bytes],
        pd_members: int,
        pd_port: int,
        api_version: int | str,
        cluster_id: int | None,
        host: str,
        max_workers: int,
    ) -> None:
        load_command_handlers()
        self.clock = Clock()
        self.cluster = Cluster(clock=self.clock, cluster_id=cluster_id, api_version=api_version)
        self.faults = FaultInjector()
        self.counters = Counters()
        self.engine = _make_engine()
        self.raw = RawEngine()
        # TiKV's GC worker: collects below PD's GC safe point whenever it advances.
        self.gc_worker: GcWorker | None = None
        if self.engine is not None:
            self.gc_worker = GcWorker(self.engine, self.cluster.gc_ranges)
            self.cluster.add_gc_listener(self.gc_worker.safe_point_advanced)
        self.host = host
        self.max_workers = max_workers
        self.pd_servers: list[PdServer] = []
        self.store_servers: dict[int, StoreServer] = {}
        self._mu = threading.Lock()
        try:
            for i in range(pd_members):
                pd = PdServer(
                    self.cluster,
                    faults=self.faults,
                    counters=self.counters,
                    name=f"pd-{i + 1}",
                    host=host,
                )
                pd.start(pd_port if i == 0 else 0)
                self.pd_servers.append(pd)
            for _ in range(stores):
                self._start_store()
            self.cluster.bootstrap()
            keys: list[bytes] = list(split_raw)
            if regions is not None:
                keys += even_split_keys(regions)
            if keys:
                self.cluster.split(keys)
            if split_txn:
                self.cluster.split(split_txn, txn=True)
        except BaseException:
            self.close()
            raise

    def _start_store(self, port: int = 0) -> int:
        self._check_port_free(port, None)
        store_id = self.cluster.alloc_id()
        server = StoreServer(
            store_id,
            self.cluster,
            engine=self.engine,
            raw=self.raw,
            faults=self.faults,
            counters=self.counters,
            host=self.host,
            max_workers=self.max_workers,
        )
        server.start(port)
        self.cluster.add_store(server.address, store_id=store_id)
        self.store_servers[store_id] = server
        return store_id

    def info(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster.cluster_id,
            "api_version": self.cluster.api_version,
            "pd_addresses": [pd.address for pd in self.pd_servers],
        }

    def close(self) -> None:
        self.faults.clear()
        if self.gc_worker is not None:
            self.gc_worker.close()
        for server in list(self.store_servers.values()):
            server.stop(None)
        for pd in self.pd_servers:
            pd.stop(None)

    # ------------------------------------------------------------------ operations

    def stop_store(self, store_id: int, move_leaders: bool) -> None:
        with self._mu:
            server = self._server(store_id)
            server.stop(None)
            self.cluster.set_store_state(store_id, StoreState.STOPPED)
            if move_leaders:
                self.cluster.move_leaders_off(store_id)

    def restart_store(self, store_id: int) -> None:
        with self._mu:
            server = self._server(store_id)
            store = self.cluster.store(store_id)
            if store is not None and store.state is StoreState.TOMBSTONE:
                raise ClusterError(f"store {store_id} is a tombstone")
            if not server.running:
                server.start(server.port)
            self.cluster.set_store_state(store_id, StoreState.UP)

    def add_store(self, port: int = 0) -> int:
        with self._mu:
            return self._start_store(_checked_port(port))

    def _check_port_free(self, port: int, moving: set[int] | None) -> None:
        """Refuse a port that another running store of this cluster serves on."""
        if port == 0:
            return
        for sid, other in self.store_servers.items():
            if other.running and other.port == port and (moving is None or sid not in moving):
                raise ClusterError(f"port {port} is in use by store {sid}")

    def _running_server(self, store_id: int) -> StoreServer:
        server = self._server(store_id)
        if not server.running:
            raise ClusterError(f"store {store_id} is not running; restart it first")
        return server

    def _rebind(self, server: StoreServer, port: int, avoid: int) -> None:
        """Start a stopped server on ``port`` (0: a free port other than ``avoid``)."""
        server.start(port)
        for _ in range(3):
            if port != 0 or server.port != avoid:
                return
            # The kernel handed the old port back: a move must change the address.
            server.stop(None)
            server.start(0)
        server.stop(None)
        raise ClusterError(f"could not find a free port other than {avoid}")

    def move_store(self, store_id: int, port: int) -> str:
        port = _checked_port(port)
        with self._mu:
            server = self._running_server(store_id)
            self._check_port_free(port, {store_id})
            old = server.port
            if port == old:
                raise ClusterError(f"store {store_id} already serves on port {port}")
            server.stop(None)
            try:
                self._rebind(server, port, old)
            except BaseException:
                if not server.running:
                    server.start(old)  # put it back where it was
                raise
            # The store registers its new address with PD (TiKV's PutStore on start) and
            # comes back up: a restart, so its start timestamp is new too.
            self.cluster.set_store_address(store_id, server.address)
            self.cluster.set_store_state(store_id, StoreState.UP)
            return server.address

    def swap_store_addresses(self, first: int, second: int) -> None:
        with self._mu:
            if first == second:
                raise ClusterError("swap_store_addresses needs two different stores")
            a = self._running_server(first)
            b = self._running_server(second)
            port_a, port_b = a.port, b.port
            # Both stop before either binds: gRPC servers here do not share ports
            # (so_reuseport is off), so the second port must be free first.
            a.stop(None)
            b.stop(None)
            a.start(port_b)
            b.start(port_a)
            for sid, server in ((first, a), (second, b)):
                self.cluster.set_store_address(sid, server.address)
                self.cluster.set_store_state(sid, StoreState.UP)

    def remove_store(self, store_id: int) -> None:
        with self._mu:
            server = self._server(store_id)
            self.cluster.remove_store(store_id)
            server.stop(None)

    def _pd(self, member_id: int | None) -> PdServer:
        if member_id is None:
            leader = self.cluster.pd_leader()
            member_id = leader.member_id if leader is not None else None
        for pd in self.pd_servers:
            if pd.member_id == member_id:
                return pd
        raise ClusterError(f"PD member {member_id} does not exist")

    def stop_pd(self, member_id: int | None) -> PdMember:
        with self._mu:
            pd = self._pd(member_id)
            pd.stop(None)
            if self.cluster.is_pd_leader(pd.member_id):
                running = [p for p in self.pd_servers if p.running]
                if running:
                    self.cluster.move_pd_leader(running[0].member_id)
            return next(m for m in self.cluster.pd_members() if m.member_id == pd.member_id)

    def restart_pd(self, member_id: int) -> None:
        with self._mu:
            pd = self._pd(member_id)
            if not pd.running:
                pd.start(pd.port)
            if not any(
                p.running and self.cluster.is_pd_leader(p.member_id) for p in self.pd_servers
            ):
                self.cluster.move_pd_leader(pd.member_id)

    def _server(self, store_id: int) -> StoreServer:
        server = self.store_servers.get(store_id)
        if server is None:
            raise ClusterError(f"store {store_id} does not exist")
        return server


def _checked_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port < 65536:
        raise ValueError(f"port must be in [0, 65536), got {port}")
    return port


def _run_op(local: _LocalCluster, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run one control operation against an in-process cluster (also the child's dispatcher)."""
    c = local.cluster
    if op == "stores":
        return c.stores()
    if op == "regions":
        return c.regions()
    if op == "region":
        return c.region_by_id(*args)
    if op == "region_by_key":
        key, txn = args
        encoded = txn or c.api_version == kvrpcpb_pb2.V2
        return c.region_by_key(encode_bytes(key) if encoded else key)
    if op == "split":
        return c.split(args[0], txn=args[1])
    if op == "merge":
        return c.merge(*args)
    if op == "transfer_leader":
        return c.transfer_leader(*args)
    if op == "set_store_labels":
        return c.set_store_labels(*args)
    if op == "set_slow_score":
        store_id, score = args
        local._server(store_id).scope.slow_score = score
        return None
    if op == "set_disk_usage":
        store_id, usage = args
        local._server(store_id).scope.disk_usage = usage
        return None
    if op == "add_peer":
        return c.add_peer(*args, **kwargs)
    if op == "remove_peer":
        return c.remove_peer(*args)
    if op == "add_store":
        return local.add_store(*args)
    if op == "move_store":
        return local.move_store(*args)
    if op == "swap_store_addresses":
        return local.swap_store_addresses(*args)
    if op == "stop_store":
        return local.stop_store(*args)
    if op == "restart_store":
        return local.restart_store(*args)
    if op == "remove_store":
        return local.remove_store(*args)
    if op == "pd_leader":
        return c.pd_leader()
    if op == "move_pd_leader":
        return c.move_pd_leader(*args)
    if op == "pd_members":
        return c.pd_members()
    if op == "stop_pd":
        return local.stop_pd(*args)
    if op == "restart_pd":
        return local.restart_pd(*args)
    if op == "create_keyspace":
        return c.create_keyspace(*args)
    if op == "current_ts":
        return c.current_ts()
    if op == "gc_safe_point":
        return c.gc_safe_point
    if op == "wait_for_gc":
        return local.gc_worker is not None and local.gc_worker.wait(*args)
    if op == "safe_ts.store":
        (store_id,) = args
        local._server(store_id)  # unknown stores are an error
        return store_safe_ts(c, local.engine, store_id)
    if op in ("safe_ts.set_lag", "safe_ts.hold", "safe_ts.pin", "safe_ts.release"):
        local._server(args[0])
        return getattr(c.safe_ts, op[8:])(*args)
    if op.startswith("clock."):
        return getattr(local.clock, op[6:])(*args, **kwargs)
    if op == "faults.add":
        return local.faults.add(*args, **kwargs).id
    if op == "faults.hits":
        fault: Fault | None = local.faults.get(args[0])
        return fault.hits if fault is not None else None
    if op in ("faults.remove", "faults.release", "faults.clear", "faults.hanging"):
        return getattr(local.faults, op[7:])(*args)
    if op == "faults.wait_hanging":
        return local.faults.wait_hanging(*args)
    if op == "counters.messages":
        return [(sid, m.SerializeToString()) for sid, m in local.counters.messages()]
    if op == "counters.last_context":
        ctx = local.counters.last_context(*args, **kwargs)
        return ctx.SerializeToString() if ctx is not None else None
    if op.startswith("counters."):
        return getattr(local.counters, op[9:])(*args, **kwargs)
    raise ValueError(f"unknown control operation {op!r}")


# ---------------------------------------------------------------------------- process mode


def _child_main(conn: Connection, options: dict[str, Any]) -> None:
    """Entry point of the child process: build the cluster, then serve control calls."""
    try:
        local = _LocalCluster(**options)
    except BaseException as exc:
        conn.send(("err", exc, traceback.format_exc()))
        conn.close()
        return
    conn.send(("ok", local.info(), ""))
    try:
        while True:
            try:
                op, args, kwargs = conn.recv()
            except (EOFError, OSError):
                break
            if op == "close":
                break
            try:
                conn.send(("ok", _run_op(local, op, args, kwargs), ""))
            except BaseException as exc:  # sent back and re-raised in the parent
                try:
                    conn.send(("err", exc, traceback.format_exc()))
                except Exception:
                    conn.send(("err", RuntimeError(repr(exc)), traceback.format_exc()))
    finally:
        local.close()
        with contextlib.suppress(OSError, ValueError):
            conn.send(("ok", None, ""))
        conn.close()


class _Remote:
    """The parent side of a cluster running in a child process."""

    def __init__(self, options: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._conn = parent
        self._mu = threading.Lock()
        self._proc = ctx.Process(
            target=_child_main, args=(child, options), name="tikv-mockstore", daemon=True
        )
        self._proc.start()
        child.close()
        status, payload, tb = self._conn.recv()
        if status != "ok":
            self._proc.join(10)
            raise RuntimeError(f"the mock cluster process failed to start:\n{tb}") from payload
        self.info: dict[str, Any] = payload

    def call(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._mu:
            self._conn.send((op, args, kwargs))
            status, payload, _tb = self._conn.recv()
        if status == "err":
            raise payload
        return payload

    def close(self) -> None:
        with self._mu:
            try:
                self._conn.send(("close", (), {}))
                if self._conn.poll(30):
                    self._conn.recv()
            except (OSError, EOFError):
                pass
            self._conn.close()
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)


class _ClockProxy:
    """The clock of a cluster in a child process."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def now_ms(self) -> int:
        """The cluster's time in milliseconds."""
        result: int = self._call("clock.now_ms")
        return result

    def now_s(self) -> int:
        """The cluster's time in seconds."""
        result: int = self._call("clock.now_s")
        return result

    def advance(self, ms: int) -> int:
        """Move the clock forward by ``ms``."""
        result: int = self._call("clock.advance", ms)
        return result

    def set(self, now_ms: int) -> None:
        """Set the clock."""
        self._call("clock.set", now_ms)

    def freeze(self) -> None:
        """Stop the clock."""
        self._call("clock.freeze")

    def unfreeze(self) -> None:
        """Let the clock run again."""
        self._call("clock.unfreeze")


class RemoteFault:
    """A handle on a fault registered in a child-process cluster."""

    def __init__(self, call: Any, fault_id: int) -> None:
        self._call = call
        self.id = fault_id

    @property
    def hits(self) -> int:
        """How many requests matched the fault (0 once it was removed)."""
        result: int | None = self._call("faults.hits", self.id)
        return result or 0

    def release(self) -> None:
        """Release requests hanging on the fault."""
        self._call("faults.release", self.id)

    def remove(self) -> None:
        """Unregister the fault."""
        self._call("faults.remove", self.id)


class _FaultsProxy:
    """Fault injection of a cluster in a child process."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def add(self, method: str | None = None, **kwargs: Any) -> RemoteFault:
        """See :meth:`tikv_mockstore.faults.FaultInjector.add`."""
        status = kwargs.get("status")
        if isinstance(status, grpc.StatusCode):
            kwargs["status"] = status.name
        return RemoteFault(self._call, self._call("faults.add", method, **kwargs))

    def remove(self, fault: RemoteFault | int) -> None:
        """Unregister a fault."""
        self._call("faults.remove", fault if isinstance(fault, int) else fault.id)

    def release(self, fault: RemoteFault | int) -> None:
        """Release requests hanging on a fault."""
        self._call("faults.release", fault if isinstance(fault, int) else fault.id)

    def clear(self) -> None:
        """Remove every fault."""
        self._call("faults.clear")

    def hanging(self) -> int:
        """Requests hanging on faults now."""
        result: int = self._call("faults.hanging")
        return result

    def wait_hanging(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` requests hang on faults."""
        result: bool = self._call("faults.wait_hanging", count, timeout)
        return result


class _CountersProxy:
    """Request counters of a cluster in a child process."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def count(self, method: str, store: int | None = None) -> int:
        """See :meth:`tikv_mockstore.faults.Counters.count`."""
        result: int = self._call("counters.count", method, store)
        return result

    def snapshot(self) -> dict[tuple[int, str], int]:
        """Every counter."""
        result: dict[tuple[int, str], int] = self._call("counters.snapshot")
        return result

    def reset(self) -> None:
        """Zero the counters."""
        self._call("counters.reset")

    def last_context(self, method: str, store: int | None = None) -> kvrpcpb_pb2.Context | None:
        """The last context seen for ``method``."""
        raw: bytes | None = self._call("counters.last_context", method, store)
        return kvrpcpb_pb2.Context.FromString(raw) if raw is not None else None

    def log_messages(self, on: bool = True) -> None:
        """See :meth:`tikv_mockstore.faults.Counters.log_messages`."""
        self._call("counters.log_messages", on)

    def messages(self) -> list[tuple[int, tikvpb_pb2.BatchCommandsRequest]]:
        """See :meth:`tikv_mockstore.faults.Counters.messages`."""
        raw: list[tuple[int, bytes]] = self._call("counters.messages")
        return [(sid, tikvpb_pb2.BatchCommandsRequest.FromString(m)) for sid, m in raw]
