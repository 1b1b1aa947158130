"""Thread-safe state of a mock cluster: stores, regions, PD members, TSO, GC and keyspaces.

This is what PD knows and what the stores agree on. Regions are routing metadata only (id,
``[start_key, end_key)``, epoch, one peer per store, a leader); data lives once in the shared
engines, as in client-go's mocktikv. Region boundaries live in TiKV's single key space: raw keys
for raw data in API v1, memcomparable-encoded keys for transactional data and for everything in
API v2 (see :mod:`tikv_mockstore._codec`).

Epochs change as TiKV changes them (``components/raftstore/src/store/fsm/apply.rs``): a batch
split with ``n`` split keys adds ``n`` to ``version`` of every resulting region; a merge sets the
surviving region's ``version`` to ``max(source, target) + 1``; adding or removing a peer adds 1 to
``conf_ver``; a leader transfer changes neither. Splits are "right derived", TiKV's default
(``raftstore.right-derive-when-split = true``): the original region id keeps the rightmost piece
and the new ids take the pieces to its left.
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from tikv_proto import keyspacepb_pb2, kvrpcpb_pb2, metapb_pb2, pdpb_pb2

from tikv_mockstore._codec import decode_bytes_lenient, encode_bytes
from tikv_mockstore._sorted import SortedDict
from tikv_mockstore.clock import Clock
from tikv_mockstore.safe_ts import SafeTsTracker

__all__ = [
    "MAX_REGIONS_IN_ERROR",
    "TSO_LOGICAL_BITS",
    "Cluster",
    "ClusterError",
    "Keyspace",
    "PdMember",
    "Peer",
    "Region",
    "ServiceSafePoint",
    "Store",
    "StoreState",
]

#: PD timestamps carry 18 logical bits (``physical << 18 | logical``, PD ``tsoutil``).
TSO_LOGICAL_BITS = 18
_MAX_LOGICAL = 1 << TSO_LOGICAL_BITS

#: TiKV attaches at most this many sibling regions to an EpochNotMatch error
#: (``MAX_REGIONS_IN_ERROR`` in ``components/raftstore/src/store/fsm/peer.rs``).
MAX_REGIONS_IN_ERROR = 10

#: PD's service safepoint id of TiDB's GC worker, whose TTL is infinite.
_GC_WORKER = "gc_worker"
_INT64_MAX = (1 << 63) - 1


class ClusterError(Exception):
    """A control operation on the cluster was refused (unknown id, overlapping ranges, ...)."""


class StoreState(enum.Enum):
    """The life-cycle state of a store as the mock tracks it."""

    #: Serving on its port.
    UP = "up"
    #: Its gRPC server is stopped (the port refuses connections); PD still lists it as Up,
    #: as PD does until the store is marked down.
    STOPPED = "stopped"
    #: Removed from the cluster: no peers, PD lists it as Tombstone / Removed.
    TOMBSTONE = "tombstone"


@dataclass(frozen=True, slots=True)
class Peer:
    """One replica of a region: a peer id on a store, a voter or a learner.

    A learner (``metapb.PeerRole.Learner``) replicates the data but never votes nor leads;
    it serves replica and stale reads like a follower.
    """

    id: int
    store_id: int
    learner: bool = False

    def to_pb(self) -> metapb_pb2.Peer:
        """The ``metapb.Peer`` of this peer."""
        if self.learner:
            return metapb_pb2.Peer(id=self.id, store_id=self.store_id, role=metapb_pb2.Learner)
        return metapb_pb2.Peer(id=self.id, store_id=self.store_id)


@dataclass(frozen=True, slots=True)
class Region:
    """An immutable snapshot of a region's metadata; changes replace the whole object."""

    id: int
    start_key: bytes
    end_key: bytes
    conf_ver: int
    version: int
    peers: tuple[Peer, ...]
    leader_store_id: int
    #: The bounds in the transactional user-key space (``decode_bytes_lenient``): a user key
    #: ``k`` lies in the region iff ``user_start <= k < user_end`` (``None``: unbounded), the
    #: same test as its memcomparable encoding against ``start_key`` / ``end_key``.
    user_start: bytes = field(init=False, repr=False, compare=False)
    user_end: bytes | None = field(init=False, repr=False, compare=False)
    _end_is_key: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        user_end = decode_bytes_lenient(self.end_key) if self.end_key else None
        object.__setattr__(self, "user_start", decode_bytes_lenient(self.start_key))
        object.__setattr__(self, "user_end", user_end)
        # Whether end_key is exactly the encoding of user_end (then that key is "at the end").
        object.__setattr__(
            self, "_end_is_key", user_end is not None and encode_bytes(user_end) == self.end_key
        )

    def contains(self, key: bytes) -> bool:
        """Return whether ``key`` (boundary key space) lies in ``[start_key, end_key)``."""
        return key >= self.start_key and (not self.end_key or key < self.end_key)

    def contains_user(self, key: bytes) -> bool:
        """Whether the transactional user key ``key`` lies in the region.

        Equivalent to ``contains(encode_bytes(key))``, without encoding the key.
        """
        return key >= self.user_start and (self.user_end is None or key < self.user_end)

    def contains_user_inclusive(self, key: bytes) -> bool:
        """``contains_user``, also true when ``key``'s encoding equals ``end_key``.

        The bound check of a reverse scan's exclusive upper key (TiKV
        ``check_key_in_region_inclusive``).
        """
        if key < self.user_start:
            return False
        end = self.user_end
        return end is None or key < end or (key == end and self._end_is_key)

    def peer_on(self, store_id: int) -> Peer | None:
        """Return the region's peer on ``store_id``, if it has one."""
        for peer in self.peers:
            if peer.store_id == store_id:
                return peer
        return None

    @property
    def leader(self) -> Peer | None:
        """The leader peer (``None`` if the leader store no longer holds a peer)."""
        return self.peer_on(self.leader_store_id)

    def to_pb(self) -> metapb_pb2.Region:
        """The ``metapb.Region`` of this region, with its epoch and peers."""
        return metapb_pb2.Region(
            id=self.id,
            start_key=self.start_key,
            end_key=self.end_key,
            region_epoch=metapb_pb2.RegionEpoch(conf_ver=self.conf_ver, version=self.version),
            peers=[p.to_pb() for p in self.peers],
        )


@dataclass(slots=True)
class Store:
    """A TiKV store: id, the address clients dial, and its state."""

    id: int
    address: str
    state: StoreState = StoreState.UP
    labels: dict[str, str] = field(default_factory=dict)
    start_timestamp: int = 0

    def to_pb(self) -> metapb_pb2.Store:
        """The ``metapb.Store`` PD reports for this store."""
        tombstone = self.state is StoreState.TOMBSTONE
        return metapb_pb2.Store(
            id=self.id,
            address=self.address,
            state=metapb_pb2.Tombstone if tombstone else metapb_pb2.Up,
            node_state=metapb_pb2.Removed if tombstone else metapb_pb2.Serving,
            labels=[metapb_pb2.StoreLabel(key=k, value=v) for k, v in sorted(self.labels.items())],
            version="8.5.0",
            peer_address=self.address,
            status_address=self.address,
            start_timestamp=self.start_timestamp,
        )


@dataclass(slots=True)
class PdMember:
    """One PD member: its name, id and the URL clients use."""

    name: str
    member_id: int
    client_url: str

    def to_pb(self) -> pdpb_pb2.Member:
        """The ``pdpb.Member`` of this member."""
        return pdpb_pb2.Member(
            name=self.name,
            member_id=self.member_id,
            client_urls=[self.client_url],
            peer_urls=[self.client_url],
        )


@dataclass(frozen=True, slots=True)
class Keyspace:
    """A keyspace as PD's keyspace manager keeps it."""

    id: int
    name: str
    state: int
    created_at: int
    state_changed_at: int
    config: tuple[tuple[str, str], ...] = ()

    def to_pb(self) -> keyspacepb_pb2.KeyspaceMeta:
        """The ``keyspacepb.KeyspaceMeta`` of this keyspace."""
        return keyspacepb_pb2.KeyspaceMeta(
            id=self.id,
            name=self.name,
            state=keyspacepb_pb2.KeyspaceState.ValueType(self.state),
            created_at=self.created_at,
            state_changed_at=self.state_changed_at,
            config=dict(self.config),
        )


@dataclass(frozen=True, slots=True)
class ServiceSafePoint:
    """A service GC safepoint: GC may not pass ``safe_point`` until ``expired_at`` (Unix s)."""

    service_id: str
    safe_point: int
    expired_at: int


@dataclass(slots=True)
class _GcState:
    """The GC safepoint and service safepoints of one keyspace (or of the whole cluster)."""

    safe_point: int = 0
    services: dict[str, ServiceSafePoint] = field(default_factory=dict)


def _api_version_value(api_version: int | str) -> int:
    names = {"V1": kvrpcpb_pb2.V1, "V1TTL": kvrpcpb_pb2.V1TTL, "V2": kvrpcpb_pb2.V2}
    if isinstance(api_version, str):
        try:
            return names[api_version.upper()]
        except KeyError:
            raise ValueError(
                f"api_version must be one of V1, V1TTL, V2 (or 1, 2), got {api_version!r}"
            ) from None
    if isinstance(api_version, bool) or not isinstance(api_version, int):
        raise TypeError(f"api_version must be an int or str, not {type(api_version).__name__}")
    if api_version == 1:
        return kvrpcpb_pb2.V1
    if api_version == 2:
        return kvrpcpb_pb2.V2
    raise ValueError(f"api_version must be 1 or 2 (or 'V1', 'V1TTL', 'V2'), got {api_version}")


def _keyspace_prefixes(keyspace_id: int) -> list[bytes]:
    """The four API v2 bounds of a keyspace's raw and txn ranges (PD ``keyspace/util.go``)."""
    ids = [keyspace_id.to_bytes(3, "big"), (keyspace_id + 1).to_bytes(4, "big")[1:]]
    bounds = [b"r" + ids[0], b"x" + ids[0]]
    # The end of the last keyspace id (0xFFFFFF) is the next mode prefix with id 0.
    bounds.append(b"r" + ids[1] if keyspace_id < 0xFFFFFF else b"s")
    bounds.append(b"x" + ids[1] if keyspace_id < 0xFFFFFF else b"y")
    return bounds


class Cluster:
    """The shared, lock-protected state of one mock cluster.

    Every public method is atomic. Regions handed out are immutable snapshots.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        cluster_id: int | None = None,
        api_version: int | str = 1,
    ) -> None:
        if cluster_id is not None and (
            isinstance(cluster_id, bool) or not isinstance(cluster_id, int)
        ):
            raise TypeError(f"cluster_id must be an int, not {type(cluster_id).__name__}")
        if cluster_id is not None and not 0 < cluster_id < 1 << 64:
            raise ValueError(f"cluster_id must be in [1, 2**64), got {cluster_id}")
        self._mu = threading.RLock()
        self.clock = clock if clock is not None else Clock()
        #: The cluster id PD puts in every response header and checks in every request.
        self.cluster_id = cluster_id if cluster_id is not None else random.getrandbits(63) | 1
        #: The storage API version of every store (``kvrpcpb.APIVersion`` value).
        self.api_version = _api_version_value(api_version)
        self._next_id = 0
        self._stores: dict[int, Store] = {}
        self._regions: dict[int, Region] = {}
        self._by_start: SortedDict[bytes, int] = SortedDict()
        self._members: list[PdMember] = []
        self._pd_leader: int | None = None
        self._tso_physical = 0
        self._tso_logical = 0
        # GC state per keyspace id; None is PD's null keyspace (the classic, cluster-wide API).
        self._gc_states: dict[int | None, _GcState] = {}
        self._gc_listeners: list[Callable[[int, int | None], None]] = []
        self._external_ts = 0
        # The last operator PD ran on each region (pdpb GetOperator): its description.
        self._operators: dict[int, bytes] = {}
        now_s = self.clock.now_s()
        self._keyspaces: dict[str, Keyspace] = {
            "DEFAULT": Keyspace(0, "DEFAULT", keyspacepb_pb2.ENABLED, now_s, now_s)
        }
        self._next_keyspace_id = 1
        self._bootstrapped = False
        #: Every store's safe (resolved) ts, for stale reads (:mod:`tikv_mockstore.safe_ts`).
        self.safe_ts = SafeTsTracker(self.clock)

    # ------------------------------------------------------------------ ids

    def alloc_id(self, count: int = 1) -> int:
        """Allocate ``count`` consecutive ids; returns the largest (PD ``AllocID`` semantics)."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        with self._mu:
            self._next_id += count
            return self._next_id

    # ------------------------------------------------------------------ stores

    def add_store(self, address: str, *, store_id: int | None = None) -> Store:
        """Register a new (empty) store at ``address`` and return it."""
        with self._mu:
            sid = store_id if store_id is not None else self.alloc_id()
            if sid in self._stores:
                raise ClusterError(f"store {sid} already exists")
            self._next_id = max(self._next_id, sid)
            store = Store(sid, address, start_timestamp=self.clock.now_s())
            self._stores[sid] = store
            return replace(store)

    def store(self, store_id: int) -> Store | None:
        """A copy of store ``store_id``, or ``None``."""
        with self._mu:
            s = self._stores.get(store_id)
            return replace(s, labels=dict(s.labels)) if s is not None else None

    def stores(self) -> list[Store]:
        """Copies of every store, by id."""
        with self._mu:
            return [replace(s, labels=dict(s.labels)) for _, s in sorted(self._stores.items())]

    def set_store_labels(self, store_id: int, labels: dict[str, str]) -> None:
        """Replace a store's labels (``zone``, ``host``, ...), as PD reports them."""
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise TypeError("store labels must map str to str")
        with self._mu:
            self._require_store(store_id).labels = dict(labels)

    def set_store_address(self, store_id: int, address: str) -> None:
        """Record the address a store serves on."""
        with self._mu:
            self._require_store(store_id).address = address

    def set_store_state(self, store_id: int, state: StoreState) -> None:
        """Set a store's state (the server layer stops / starts its gRPC server)."""
        with self._mu:
            store = self._require_store(store_id)
            if store.state is StoreState.TOMBSTONE and state is not StoreState.TOMBSTONE:
                raise ClusterError(f"store {store_id} is a tombstone and cannot come back")
            store.state = state
            if state is StoreState.UP:
                store.start_timestamp = self.clock.now_s()

    def _require_store(self, store_id: int) -> Store:
        store = self._stores.get(store_id)
        if store is None:
            raise ClusterError(f"store {store_id} does not exist")
        return store

    # ------------------------------------------------------------------ bootstrap

    def bootstrap(self, store_ids: Sequence[int] | None = None) -> Region:
        """Create the first region covering every key, with a peer on each store.

        The leader is the first store, as after TiKV's bootstrap.
        """
        with self._mu:
            if self._bootstrapped:
                raise ClusterError("the cluster is already bootstrapped")
            ids = list(store_ids) if store_ids is not None else sorted(self._stores)
            if not ids:
                raise ClusterError("bootstrap needs at least one store")
            for sid in ids:
                self._require_store(sid)
            region_id = self.alloc_id()
            peers = tuple(Peer(self.alloc_id(), sid) for sid in ids)
            region = Region(region_id, b"", b"", 1, 1, peers, ids[0])
            self._put_region(region)
            self._bootstrapped = True
            return region

    @property
    def bootstrapped(self) -> bool:
        """Whether :meth:`bootstrap` has run."""
        with self._mu:
            return self._bootstrapped

    # ------------------------------------------------------------------ region lookups

    def _put_region(self, region: Region) -> None:
        old = self._regions.get(region.id)
        if old is not None and self._by_start.get(old.start_key) == region.id:
            del self._by_start[old.start_key]
        self._regions[region.id] = region
        self._by_start[region.start_key] = region.id

    def region_by_id(self, region_id: int) -> Region | None:
        """Region ``region_id``, or ``None``.

        Without the lock: regions are immutable and replaced whole, and a dict read is atomic,
        so a reader sees the region before or after a change (every request's hot path).
        """
        return self._regions.get(region_id)

    def region_by_key(self, key: bytes) -> Region | None:
        """The region containing ``key`` (boundary key space), or ``None``."""
        with self._mu:
            idx = self._by_start.bisect_right(key) - 1
            if idx < 0:
                return None
            region = self._regions[self._by_start.peekitem(idx)[1]]
            return region if region.contains(key) else None

    def prev_region(self, key: bytes) -> Region | None:
        """The region just before the one containing ``key``, if adjacent.

        The region just before the one containing ``key`` if they are adjacent (PD
        ``regionTree.searchPrev``).
        """
        with self._mu:
            cur = self.region_by_key(key)
            if cur is None:
                return None
            idx = self._by_start.index(cur.start_key)
            if idx == 0:
                return None
            prev = self._regions[self._by_start.peekitem(idx - 1)[1]]
            return prev if prev.end_key == cur.start_key else None

    def scan_regions(self, start_key: bytes, end_key: bytes = b"", limit: int = 0) -> list[Region]:
        """Regions overlapping ``[start_key, end_key)``, at most ``limit``.

        Regions from the one containing ``start_key`` up to (not including)

        the first one starting at or after ``end_key`` (empty: no end); at most ``limit``
        (0: no limit). PD ``RegionsInfo.ScanRegions``.

        """
        with self._mu:
            out: list[Region] = []
            idx = max(self._by_start.bisect_right(start_key) - 1, 0)
            keys = self._by_start.keys()
            for i in range(idx, len(keys)):
                region = self._regions[self._by_start[keys[i]]]
                if region.end_key and region.end_key <= start_key:
                    continue
                if end_key and region.start_key >= end_key:
                    break
                if limit > 0 and len(out) >= limit:
                    break
                out.append(region)
            return out

    def regions(self) -> list[Region]:
        """Every region, in key order."""
        with self._mu:
            return [self._regions[rid] for rid in self._by_start.values()]

    def siblings_for_epoch_error(self, region: Region, requested_version: int) -> list[Region]:
        """The regions TiKV attaches to EpochNotMatch after the region itself.

        With right-derived splits, the pieces split off a region lie to its left; TiKV walks
        leftwards collecting ``current.version - requested.version`` regions, at most
        :data:`MAX_REGIONS_IN_ERROR` (``collect_sibling_region`` in raftstore's
        ``fsm/peer.rs``).
        """
        with self._mu:
            max_version = region.version
            if requested_version >= max_version:
                return []
            collect = max_version - requested_version
            out: list[Region] = []
            idx = (
                self._by_start.index(region.start_key) if region.start_key in self._by_start else 0
            )
            for i in range(idx - 1, max(idx - 1 - MAX_REGIONS_IN_ERROR, -1), -1):
                r = self._regions[self._by_start.peekitem(i)[1]]
                collect -= 1
                if r.version >= max_version:
                    collect += r.version - max_version
                    max_version = r.version
                out.append(r)
                if collect <= 0:
                    break
            return out

    # ------------------------------------------------------------------ region changes

    def split(self, keys: Iterable[bytes], *, txn: bool = False) -> list[Region]:
        """Split regions at ``keys``.

        Split regions at ``keys``; with ``txn=True`` the keys are user keys of transactional
        data and are memcomparable-encoded first (under API v2 every key is, as v2 stores all
        keys encoded). Keys that already are region boundaries are skipped. Returns every
        region that resulted from a split, in key order.
        """
        split_keys = []
        for key in keys:
            if not isinstance(key, bytes):
                raise TypeError(f"split keys must be bytes, not {type(key).__name__}")
            # API v2 stores every key (raw too) memcomparable-encoded.
            split_keys.append(encode_bytes(key) if txn or self.api_version == 2 else key)
        with self._mu:
            by_region: dict[int, list[bytes]] = {}
            for key in sorted(set(split_keys)):
                region = self.region_by_key(key)
                if region is None or key == region.start_key or not key:
                    continue
                by_region.setdefault(region.id, []).append(key)
            out: list[Region] = []
            for region_id, region_keys in by_region.items():
                out.extend(self._split_region(self._regions[region_id], region_keys))
            return sorted(out, key=lambda r: r.start_key)

    def split_region(self, region_id: int, keys: Sequence[bytes]) -> list[Region]:
        """Batch-split region ``region_id`` at ``keys``.

        Batch-split region ``region_id`` at ``keys`` (boundary key space, each inside the
        region and not its start). Returns the resulting regions in key order.
        """
        with self._mu:
            region = self._regions.get(region_id)
            if region is None:
                raise ClusterError(f"region {region_id} does not exist")
            split_keys = sorted(set(keys))
            for key in split_keys:
                if not region.contains(key) or key == region.start_key:
                    raise ClusterError(
                        f"split key {key!r} is not inside region {region_id} "
                        f"[{region.start_key!r}, {region.end_key!r})"
                    )
            if not split_keys:
                return [region]
            return self._split_region(region, split_keys)

    def _split_region(self, region: Region, keys: list[bytes]) -> list[Region]:
        # TiKV ``exec_batch_split``: every resulting region gets version + number of new regions;
        # with right derive the original id keeps the last piece.
        version = region.version + len(keys)
        bounds = [region.start_key, *keys, region.end_key]
        out: list[Region] = []
        for i in range(len(keys)):
            peers = tuple(Peer(self.alloc_id(), p.store_id, p.learner) for p in region.peers)
            piece = Region(
                self.alloc_id(),
                bounds[i],
                bounds[i + 1],
                region.conf_ver,
                version,
                peers,
                region.leader_store_id,
            )
            self._put_region(piece)
            out.append(piece)
        derived = replace(region, start_key=keys[-1], version=version)
        self._put_region(derived)
        out.append(derived)
        return out

    def merge(self, source_id: int, target_id: int) -> Region:
        """Merge region ``source_id`` into the adjacent region ``target_id``.

        Merge region ``source_id`` into the adjacent region ``target_id``; the target
        survives with the combined range and ``version = max(versions) + 1`` (TiKV
        ``exec_commit_merge``).
        """
        with self._mu:
            source = self._regions.get(source_id)
            target = self._regions.get(target_id)
            if source is None or target is None:
                raise ClusterError(f"region {source_id if source is None else target_id} not found")
            if source.end_key and source.end_key == target.start_key:
                start, end = source.start_key, target.end_key
            elif target.end_key and target.end_key == source.start_key:
                start, end = target.start_key, source.end_key
            else:
                raise ClusterError(f"regions {source_id} and {target_id} are not adjacent")
            if {p.store_id for p in source.peers} != {p.store_id for p in target.peers}:
                raise ClusterError("regions to merge must have peers on the same stores")
            merged = replace(
                target,
                start_key=start,
                end_key=end,
                version=max(source.version, target.version) + 1,
            )
            del self._regions[source_id]
            if self._by_start.get(source.start_key) == source_id:
                del self._by_start[source.start_key]
            self._put_region(merged)
            return merged

    def transfer_leader(self, region_id: int, store_id: int) -> Region:
        """Make the peer on ``store_id`` the leader of region ``region_id`` (epoch unchanged)."""
        with self._mu:
            region = self._require_region(region_id)
            peer = region.peer_on(store_id)
            if peer is None:
                raise ClusterError(f"region {region_id} has no peer on store {store_id}")
            if peer.learner:
                raise ClusterError(
                    f"the peer of region {region_id} on store {store_id} is a learner"
                )
            moved = replace(region, leader_store_id=store_id)
            self._put_region(moved)
            return moved

    def scatter_regions(self, region_ids: Sequence[int]) -> list[int]:
        """PD's region scatter: spread the regions' leaders over the stores.

        PD's scatterer moves peers and leaders so that newly split regions do not all
        stay on the stores of the region they came from. Every region here has a peer
        on the same stores, so only leaders move: each region's leader goes to the up
        store, among its voters, that leads the fewest other regions (its current
        leader when tied). The "scatter-region" operator finishes at once; GetOperator
        reports it. Returns the ids of the regions that do not exist (PD's
        ``failed_regions_id``).
        """
        with self._mu:
            failed: list[int] = []
            for region_id in region_ids:
                region = self._regions.get(region_id)
                if region is None:
                    failed.append(region_id)
                    continue
                leads: dict[int, int] = {}
                for other in self._regions.values():
                    if other.id != region_id:
                        leads[other.leader_store_id] = leads.get(other.leader_store_id, 0) + 1
                candidates = [
                    p.store_id
                    for p in region.peers
                    if not p.learner
                    and (store := self._stores.get(p.store_id)) is not None
                    and store.state is StoreState.UP
                ]
                if candidates:
                    target = min(
                        candidates,
                        key=lambda s: (leads.get(s, 0), s != region.leader_store_id, s),
                    )
                    if target != region.leader_store_id:
                        self._put_region(replace(region, leader_store_id=target))
                self._operators[region_id] = b"scatter-region"
            return failed

    def operator_of(self, region_id: int) -> bytes | None:
        """The description of the last operator run on ``region_id`` (finished), if any."""
        with self._mu:
            return self._operators.get(region_id)

    def add_peer(self, region_id: int, store_id: int, *, learner: bool = False) -> Region:
        """Add a peer (a voter, or a learner) of region ``region_id`` on ``store_id``.

        A conf change: ``conf_ver + 1``.
        """
        with self._mu:
            region = self._require_region(region_id)
            self._require_store(store_id)
            if region.peer_on(store_id) is not None:
                raise ClusterError(f"region {region_id} already has a peer on store {store_id}")
            peers = (*region.peers, Peer(self.alloc_id(), store_id, learner))
            changed = replace(region, peers=peers, conf_ver=region.conf_ver + 1)
            self._put_region(changed)
            return changed

    def remove_peer(self, region_id: int, store_id: int) -> Region:
        """Remove region ``region_id``'s peer on ``store_id`` (``conf_ver + 1``).

        A leader peer hands leadership to another peer first, as PD's operator does.
        """
        with self._mu:
            region = self._require_region(region_id)
            if region.peer_on(store_id) is None:
                raise ClusterError(f"region {region_id} has no peer on store {store_id}")
            peers = tuple(p for p in region.peers if p.store_id != store_id)
            if not peers:
                raise ClusterError(f"cannot remove the last peer of region {region_id}")
            leader = region.leader_store_id
            if leader == store_id:
                leader = self._pick_leader(peers, exclude=store_id)
            changed = replace(
                region, peers=peers, conf_ver=region.conf_ver + 1, leader_store_id=leader
            )
            self._put_region(changed)
            return changed

    def _pick_leader(self, peers: Sequence[Peer], *, exclude: int) -> int:
        # Only voters can be elected (a learner never campaigns).
        for p in peers:
            store = self._stores.get(p.store_id)
            if (
                p.store_id != exclude
                and not p.learner
                and store is not None
                and store.state is StoreState.UP
            ):
                return p.store_id
        for p in peers:
            if p.store_id != exclude and not p.learner:
                return p.store_id
        return exclude

    def move_leaders_off(self, store_id: int) -> list[Region]:
        """Move the leaders of the regions led by ``store_id`` to other peers.

        Move the leadership of every region led by ``store_id`` to another peer that is up
        (what a Raft election does after the leader's store goes down).
        """
        with self._mu:
            moved = []
            for region in list(self._regions.values()):
                if region.leader_store_id != store_id:
                    continue
                new_leader = self._pick_leader(region.peers, exclude=store_id)
                if new_leader != store_id:
                    changed = replace(region, leader_store_id=new_leader)
                    self._put_region(changed)
                    moved.append(changed)
            return moved

    def remove_store(self, store_id: int) -> None:
        """Remove every peer on ``store_id`` and make it a tombstone."""
        with self._mu:
            self._require_store(store_id)
            for region in list(self._regions.values()):
                if region.peer_on(store_id) is not None:
                    self.remove_peer(region.id, store_id)
            self._stores[store_id].state = StoreState.TOMBSTONE

    def _require_region(self, region_id: int) -> Region:
        region = self._regions.get(region_id)
        if region is None:
            raise ClusterError(f"region {region_id} does not exist")
        return region

    # ------------------------------------------------------------------ PD members

    def add_pd_member(self, name: str, client_url: str) -> PdMember:
        """Register a PD member; the first one becomes the leader."""
        with self._mu:
            member = PdMember(name, random.getrandbits(63) | 1, client_url)
            self._members.append(member)
            if self._pd_leader is None:
                self._pd_leader = member.member_id
            return replace(member)

    def pd_members(self) -> list[PdMember]:
        """Copies of the PD members."""
        with self._mu:
            return [replace(m) for m in self._members]

    def pd_leader(self) -> PdMember | None:
        """The PD leader member."""
        with self._mu:
            for m in self._members:
                if m.member_id == self._pd_leader:
                    return replace(m)
            return None

    def is_pd_leader(self, member_id: int) -> bool:
        """Whether member ``member_id`` is the PD leader."""
        with self._mu:
            return self._pd_leader == member_id

    def move_pd_leader(self, member_id: int | None = None) -> PdMember:
        """Make ``member_id`` (default: the next member after the leader) the PD leader."""
        with self._mu:
            if not self._members:
                raise ClusterError("the cluster has no PD member")
            if member_id is None:
                ids = [m.member_id for m in self._members]
                cur = ids.index(self._pd_leader) if self._pd_leader in ids else -1
                member_id = ids[(cur + 1) % len(ids)]
            for m in self._members:
                if m.member_id == member_id:
                    self._pd_leader = member_id
                    return replace(m)
            raise ClusterError(f"PD member {member_id} does not exist")

    # ------------------------------------------------------------------ TSO

    def tso(self, count: int) -> tuple[int, int]:
        """Allocate ``count`` consecutive timestamps; return the largest as (physical, logical).

        PD ``timestampOracle.getTS``: physical follows the clock but never goes back; within a
        millisecond the logical part grows by ``count``; when it would overflow 18 bits the
        physical part moves to the next millisecond. Strictly monotonic across all callers.
        """
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"count must be an int, not {type(count).__name__}")
        if count <= 0:
            raise ValueError("tso count should be positive")
        if count >= _MAX_LOGICAL:
            raise ValueError(f"tso count {count} exceeds the logical range {_MAX_LOGICAL - 1}")
        with self._mu:
            now = self.clock.now_ms()
            if now > self._tso_physical:
                self._tso_physical = now
                self._tso_logical = 0
            if self._tso_logical + count >= _MAX_LOGICAL:
                self._tso_physical += 1
                self._tso_logical = 0
            self._tso_logical += count
            return self._tso_physical, self._tso_logical

    def current_ts(self) -> int:
        """A fresh timestamp (``physical << 18 | logical``)."""
        physical, logical = self.tso(1)
        return physical << TSO_LOGICAL_BITS | logical

    # ------------------------------------------------------------------ GC

    def _gc(self, keyspace_id: int | None) -> _GcState:
        if keyspace_id is not None and self.keyspace_by_id(keyspace_id) is None:
            raise ClusterError(f"keyspace {keyspace_id} does not exist")
        state = self._gc_states.get(keyspace_id)
        if state is None:
            state = self._gc_states[keyspace_id] = _GcState()
        return state

    @property
    def gc_safe_point(self) -> int:
        """The GC safepoint (of the whole cluster: PD's null keyspace)."""
        return self.gc_safe_point_of(None)

    def gc_safe_point_of(self, keyspace_id: int | None) -> int:
        """The GC safepoint of a keyspace (``None``: the cluster-wide one)."""
        with self._mu:
            return self._gc(keyspace_id).safe_point

    def _live_service_safe_points(self, state: _GcState, now_s: int) -> list[ServiceSafePoint]:
        services = state.services
        for sid in [s for s, sp in services.items() if sp.expired_at <= now_s]:
            del services[sid]
        return list(services.values())

    def min_service_safe_point(self, keyspace_id: int | None = None) -> ServiceSafePoint | None:
        """The smallest live service safepoint (of a keyspace), if any."""
        with self._mu:
            live = self._live_service_safe_points(self._gc(keyspace_id), self.clock.now_s())
            return min(live, key=lambda sp: sp.safe_point) if live else None

    def update_gc_safe_point(self, safe_point: int, keyspace_id: int | None = None) -> int:
        """Advance the GC safepoint; returns the value in force afterwards.

        As PD's ``UpdateGCSafePoint`` (and ``UpdateGCSafePointV2`` per keyspace) it never moves
        backwards: a smaller value is ignored and the current one returned. It does not pass
        the smallest live service safepoint: those bound how far GC may go (PD's GC barriers
        block the txn safe point the same way). When it advances, the GC listeners (the
        stores' GC worker) are told.
        """
        with self._mu:
            state = self._gc(keyspace_id)
            target = safe_point
            bound = self.min_service_safe_point(keyspace_id)
            if bound is not None and bound.service_id != _GC_WORKER:
                target = min(target, bound.safe_point)
            advanced = target > state.safe_point
            if advanced:
                state.safe_point = target
            new = state.safe_point
            listeners = list(self._gc_listeners) if advanced else []
        for listener in listeners:
            listener(new, keyspace_id)
        return new

    def add_gc_listener(self, listener: Callable[[int, int | None], None]) -> None:
        """Call ``listener(safe_point, keyspace_id)`` whenever a GC safepoint advances.

        ``keyspace_id`` is ``None`` for the cluster-wide safepoint. TiKV's GC manager learns
        the new safepoint by polling PD; the mock tells its GC worker at once.
        """
        with self._mu:
            self._gc_listeners.append(listener)

    def gc_ranges(self, keyspace_id: int | None) -> list[tuple[bytes, bytes]]:
        """The transactional user-key ranges a GC safepoint governs (``b""`` end: unbounded).

        A keyspace's safepoint (keyspace-level GC) governs its transactional range; the
        cluster-wide one governs everything else.
        """
        with self._mu:
            if keyspace_id is not None:
                bounds = _keyspace_prefixes(keyspace_id)
                return [(bounds[1], bounds[3])]
            owned = sorted(
                (b[1], b[3])
                for b in (
                    _keyspace_prefixes(k)
                    for k, state in self._gc_states.items()
                    if k is not None and (state.safe_point or state.services)
                )
            )
        ranges: list[tuple[bytes, bytes]] = []
        start = b""
        for lo, hi in owned:
            if lo > start:
                ranges.append((start, lo))
            start = max(start, hi)
        ranges.append((start, b""))
        return ranges

    def update_service_safe_point(
        self, service_id: str, ttl: int, safe_point: int, keyspace_id: int | None = None
    ) -> ServiceSafePoint:
        """Set (``ttl > 0``) or remove (``ttl <= 0``) a service safepoint; return the smallest.

        PD's classic semantics: a safepoint below the current minimum is not accepted (the
        minimum is returned unchanged); ``gc_worker``'s TTL is infinite; when there is no
        service safepoint the result is ``gc_worker`` at the GC safepoint.
        """
        if not service_id:
            raise ValueError("service_id must not be empty")
        with self._mu:
            state = self._gc(keyspace_id)
            now_s = self.clock.now_s()
            live = self._live_service_safe_points(state, now_s)
            current_min = min(live, key=lambda sp: sp.safe_point) if live else None
            if ttl <= 0:
                state.services.pop(service_id, None)
            elif current_min is None or safe_point >= current_min.safe_point:
                if service_id == _GC_WORKER or ttl >= _INT64_MAX - now_s:
                    expired_at = _INT64_MAX
                else:
                    expired_at = now_s + ttl
                state.services[service_id] = ServiceSafePoint(service_id, safe_point, expired_at)
            live = self._live_service_safe_points(state, now_s)
            if not live:
                return ServiceSafePoint(_GC_WORKER, state.safe_point, _INT64_MAX)
            return min(live, key=lambda sp: sp.safe_point)

    # ------------------------------------------------------------------ external timestamp

    @property
    def external_ts(self) -> int:
        """The external timestamp (0 until set)."""
        with self._mu:
            return self._external_ts

    def set_external_ts(self, ts: int) -> None:
        """Set the external timestamp.

        PD requires it to be at most a fresh global timestamp and larger than the current
        external timestamp (``Server.SetExternalTS``).
        """
        with self._mu:
            if ts > self.current_ts():
                raise ValueError("the external timestamp should not be larger than global ts")
            if ts <= self._external_ts:
                raise ValueError(
                    "the external timestamp should be larger than current external timestamp"
                )
            self._external_ts = ts

    # ------------------------------------------------------------------ keyspaces

    def create_keyspace(self, name: str, *, split: bool = True) -> Keyspace:
        """Create an enabled keyspace ``name`` with the next id.

        Like PD's keyspace manager, it splits regions at the keyspace's API v2 raw and txn
        range bounds (memcomparable-encoded, as v2 boundaries are) unless ``split=False``.
        """
        if not isinstance(name, str):
            raise TypeError(f"keyspace name must be a str, not {type(name).__name__}")
        if not name or len(name) > 64:
            raise ValueError(f"keyspace name must be 1..64 characters, got {name!r}")
        with self._mu:
            if name in self._keyspaces:
                raise ClusterError(f"keyspace {name!r} already exists")
            kid = self._next_keyspace_id
            if kid > 0xFFFFFF:
                raise ClusterError("keyspace ids are exhausted")
            self._next_keyspace_id += 1
            now_s = self.clock.now_s()
            ks = Keyspace(kid, name, keyspacepb_pb2.ENABLED, now_s, now_s)
            self._keyspaces[name] = ks
            if split and self._bootstrapped:
                self.split(_keyspace_prefixes(kid), txn=True)
            return ks

    def keyspace(self, name: str) -> Keyspace | None:
        """Keyspace ``name``, or ``None``."""
        with self._mu:
            return self._keyspaces.get(name)

    def keyspace_by_id(self, keyspace_id: int) -> Keyspace | None:
        """Keyspace ``keyspace_id``, or ``None``."""
        with self._mu:
            for ks in self._keyspaces.values():
                if ks.id == keyspace_id:
                    return ks
            return None

    def keyspaces(self) -> list[Keyspace]:
        """Every keyspace, by id."""
        with self._mu:
            return sorted(self._keyspaces.values(), key=lambda k: k.id)
