"""The region and store cache (client-go ``internal/locate/region_cache.go``), sans IO.

TiKV shards the key space into *regions* ``[start_key, end_key)`` (an empty end key is
+infinity), each replicated on several *peers* on different *stores*, one of them the
leader. A region's *epoch* changes when it splits or merges (``version``) or when its
peers change (``conf_ver``). The client caches what PD told it and corrects the cache from
the region errors TiKV returns:

* **NotLeader** with a hint switches the cached leader without reloading
  (:meth:`RegionCache.on_not_leader`).
* **EpochNotMatch** carries the regions TiKV currently has; they replace the stale entry
  (:meth:`RegionCache.on_epoch_not_match`).
* Other errors invalidate the entry (:meth:`RegionCache.invalidate`) and the next lookup
  reloads it from PD.

Entries also expire after an idle TTL of 600 s plus up to 60 s of random jitter; each hit
slides the deadline forward (client-go ``checkRegionCacheTTL``).

Invariants kept by :meth:`RegionCache.insert`: no two cached regions overlap, and an
older epoch never replaces a newer one (a region whose ``version`` is older than an
overlapping cached region's, or an older ``version``/``conf_ver`` of the same region id,
is rejected, as client-go's ``insertRegionToCache``).

This module does no IO: loading from PD is injected as async callables
(:meth:`RegionCache.get_or_load` and friends), with single-flight so that concurrent
misses for the same key issue one load.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from tikv_pd import observability as _obs
from tikv_pd.errors import PDError, format_key
from tikv_pd.errors import TimeoutError as BackoffTimeoutError

__all__ = [
    "DEFAULT_REGIONS_PER_BATCH",
    "DEFAULT_REGION_CACHE_TTL",
    "DEFAULT_REGION_CACHE_TTL_JITTER",
    "DEFAULT_STORE_RERESOLVE_INTERVAL",
    "EndKeyLoader",
    "InvalidReason",
    "KeyGrouping",
    "KeyLoader",
    "Liveness",
    "Peer",
    "PeerRole",
    "RangeLoader",
    "RangeSplit",
    "Region",
    "RegionCache",
    "RegionEpoch",
    "Store",
    "StoreLoader",
    "StoreState",
]

_T = TypeVar("_T")

logger = logging.getLogger("tikv.region_cache")

#: Idle seconds before a cached region must be reloaded (client-go ``config/client.go``
#: RegionCacheTTL = 600).
DEFAULT_REGION_CACHE_TTL = 600.0
#: Regions per batch load when locating a key range (client-go
#: ``internal/locate/region_cache.go`` defaultRegionsPerBatch = 128).
DEFAULT_REGIONS_PER_BATCH = 128
#: Max random extra TTL in seconds (``internal/locate/region_cache.go``
#: regionCacheTTLJitterSec = 60).
DEFAULT_REGION_CACHE_TTL_JITTER = 60.0
#: Seconds between two re-resolutions of a store whose sends keep failing (client-go
#: ``internal/locate/store_cache.go`` storeReResolveInterval = 30 s). client-go re-resolves
#: from a background health check that starts after the store became unreachable; here the
#: first lookup after a failed send asks PD at once and later ones at most this often.
DEFAULT_STORE_RERESOLVE_INTERVAL = 30.0


class PeerRole(enum.IntEnum):
    """Role of a peer in its region's Raft group (metapb.PeerRole values)."""

    VOTER = 0
    LEARNER = 1
    INCOMING_VOTER = 2
    DEMOTING_VOTER = 3


class StoreState(enum.IntEnum):
    """Lifecycle state of a store (metapb.StoreState values)."""

    UP = 0
    OFFLINE = 1
    TOMBSTONE = 2


class Liveness(enum.Enum):
    """What the client believes about a store's reachability (client-go livenessState)."""

    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


class InvalidReason(enum.Enum):
    """Why a region entry was invalidated (client-go ``InvalidReason``, plus ours)."""

    OTHER = "other"
    NO_LEADER = "no_leader"
    REGION_NOT_FOUND = "region_not_found"
    EPOCH_NOT_MATCH = "epoch_not_match"
    STORE_NOT_FOUND = "store_not_found"
    SEND_FAIL = "send_fail"
    EXPIRED = "expired"


def _check_key(name: str, key: object) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"{name} must be bytes, got {type(key).__name__}")


def _check_range(start: bytes, end: bytes) -> None:
    """Reject a range ``[start, end)`` that is not two bytes keys with ``start < end``."""
    _check_key("start", start)
    _check_key("end", end)
    if end and end <= start:
        raise ValueError(
            f"end {format_key(end)} must be greater than start {format_key(start)} "
            "(or empty for +inf)"
        )


@dataclass(frozen=True, slots=True)
class RegionEpoch:
    """A region's epoch (metapb.RegionEpoch).

    Attributes:
        conf_ver: Incremented when peers are added or removed.
        version: Incremented when the region splits or merges.

    """

    conf_ver: int
    version: int

    def __post_init__(self) -> None:
        if self.conf_ver < 0 or self.version < 0:
            raise ValueError(f"RegionEpoch fields must be >= 0, got {self}")

    def is_stale_against(self, other: RegionEpoch) -> bool:
        """Whether this epoch is older than ``other`` in either component."""
        return self.version < other.version or self.conf_ver < other.conf_ver


@dataclass(frozen=True, slots=True)
class Peer:
    """One replica of a region (metapb.Peer).

    Attributes:
        id: The peer id.
        store_id: The store holding it.
        role: Its Raft role.
        is_witness: A witness holds no data and cannot serve reads.

    """

    id: int
    store_id: int
    role: PeerRole = PeerRole.VOTER
    is_witness: bool = False

    def __post_init__(self) -> None:
        if self.id < 0 or self.store_id < 0:
            raise ValueError(f"Peer ids must be >= 0, got {self}")
        role: object = self.role
        if not isinstance(role, PeerRole):  # accept the metapb int value
            object.__setattr__(self, "role", PeerRole(self.role))


@dataclass(frozen=True, slots=True)
class Region:
    """A region as cached: key range, epoch, peers and the believed leader.

    Attributes:
        id: The region id.
        start_key: First key (inclusive); ``b""`` is -infinity.
        end_key: End key (exclusive); ``b""`` is +infinity.
        epoch: The region epoch.
        peers: Its peers.
        leader: The peer believed to be leader, or ``None`` when unknown.
        down_peers: Peers PD reports as down, left out of ``peers`` so that no request
            goes to them (client-go ``newRegion`` filters them out); a region loaded
            with down peers expires after one TTL, so the peers are used again once PD
            stops reporting them. Not part of the region's equality.

    """

    id: int
    start_key: bytes
    end_key: bytes
    epoch: RegionEpoch
    peers: tuple[Peer, ...] = ()
    leader: Peer | None = None
    down_peers: tuple[Peer, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        _check_key("Region.start_key", self.start_key)
        _check_key("Region.end_key", self.end_key)
        if self.end_key and self.end_key <= self.start_key:
            raise ValueError(
                f"Region {self.id}: end_key {format_key(self.end_key)} must be greater than "
                f"start_key {format_key(self.start_key)} (or empty for +inf)"
            )
        peers: object = self.peers
        if not isinstance(peers, tuple):
            object.__setattr__(self, "peers", tuple(self.peers))
        if self.leader is not None and self.leader not in self.peers:
            raise ValueError(f"Region {self.id}: leader {self.leader} is not one of its peers")

    def __hash__(self) -> int:
        # Equal regions have equal ids and epochs; hashing only those keeps it cheap.
        return hash((self.id, self.epoch.conf_ver, self.epoch.version))

    def contains(self, key: bytes) -> bool:
        """Whether ``start_key <= key < end_key``."""
        return self.start_key <= key and (not self.end_key or key < self.end_key)

    def contains_by_end(self, key: bytes) -> bool:
        """Whether ``key`` used as an exclusive end falls in this region.

        True when ``start_key < key <= end_key``; the empty key (+infinity) belongs only
        to the last region (client-go ``ContainsByEnd``).
        """
        if not key:
            return not self.end_key
        return self.start_key < key and (not self.end_key or key <= self.end_key)

    def reaches(self, end: bytes) -> bool:
        """Whether the region extends to the range end ``end`` or past it.

        ``end=b""`` is +inf, reached only by the last region. A walk over a range stops
        at the first region that reaches its end (client-go's ``isLast``).
        """
        return not self.end_key or (bool(end) and self.end_key >= end)

    def overlaps(self, start: bytes, end: bytes) -> bool:
        """Whether this region intersects ``[start, end)`` (empty end = +inf)."""
        return (not end or self.start_key < end) and (not self.end_key or start < self.end_key)

    @property
    def leader_store_id(self) -> int | None:
        """The store of the believed leader, if known."""
        return self.leader.store_id if self.leader is not None else None

    def peer_on_store(self, store_id: int) -> Peer | None:
        """Return this region's peer on ``store_id``, if any."""
        for peer in self.peers:
            if peer.store_id == store_id:
                return peer
        return None

    def with_leader(self, leader: Peer | None) -> Region:
        """Return a copy with another leader (must be one of the peers)."""
        return replace(self, leader=leader)


@dataclass(frozen=True, slots=True)
class Store:
    """A TiKV (or TiFlash) store (metapb.Store).

    Attributes:
        id: The store id.
        address: Its gRPC address for clients.
        state: Up, Offline or Tombstone.
        labels: Its labels as ``(key, value)`` pairs (zone, engine, ...).
        version: The server version string.
        peer_address: Address used between stores (may be empty).
        status_address: HTTP status address (may be empty).

    """

    id: int
    address: str
    state: StoreState = StoreState.UP
    labels: tuple[tuple[str, str], ...] = ()
    version: str = ""
    peer_address: str = ""
    status_address: str = ""

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ValueError(f"Store id must be > 0, got {self.id}")
        if not isinstance(self.address, str):
            raise TypeError("Store.address must be a str")
        state: object = self.state
        if not isinstance(state, StoreState):  # accept the metapb int value
            object.__setattr__(self, "state", StoreState(self.state))
        labels: object = self.labels
        if isinstance(labels, Mapping):
            object.__setattr__(self, "labels", tuple(sorted(labels.items())))
        elif not isinstance(labels, tuple):
            object.__setattr__(self, "labels", tuple(tuple(x) for x in self.labels))

    def label(self, key: str) -> str | None:
        """Return the value of label ``key``, if present."""
        for k, v in self.labels:
            if k == key:
                return v
        return None

    @property
    def is_tiflash(self) -> bool:
        """Whether the store is a TiFlash node (label ``engine=tiflash``)."""
        return self.label("engine") == "tiflash"


@dataclass(frozen=True, slots=True)
class KeyGrouping:
    """Keys grouped by cached region (see :meth:`RegionCache.group_keys_by_region`).

    Attributes:
        groups: Region → its keys, in order of each region's first key in the input.
        missing: Keys whose region is not cached (or expired), in input order.

    """

    groups: dict[Region, list[bytes]]
    missing: list[bytes]


@dataclass(frozen=True, slots=True)
class RangeSplit:
    """A key range cut at cached region boundaries (see ``split_range_by_region``).

    Attributes:
        parts: ``(region, start, end)`` pieces in key order; each lies inside its
            region and together they cover ``[start, resume_key)`` of the request.
        resume_key: Where the first uncached part begins (load it and continue), or
            ``None`` when the whole range is covered.

    """

    parts: list[tuple[Region, bytes, bytes]]
    resume_key: bytes | None


#: Loads the region containing a key (PD GetRegion).
KeyLoader = Callable[[bytes], Awaitable[Region]]
#: Loads the region containing a key as an exclusive end (PD GetPrevRegion).
EndKeyLoader = Callable[[bytes], Awaitable[Region]]
#: Loads a store by id (PD GetStore).
StoreLoader = Callable[[int], Awaitable[Store]]
#: Loads up to ``limit`` consecutive regions of ``[start, end)`` (PD ScanRegions).
RangeLoader = Callable[[bytes, bytes, int], Awaitable[Sequence[Region]]]


def _start_of(region: Region) -> bytes:
    return region.start_key


@dataclass(slots=True)
class _Entry:
    region: Region
    deadline: float
    # client-go needExpireAfterTTL: the entry is not extended by hits, so a region
    # with down peers or a peer on an unreachable store is reloaded every TTL.
    expire_after_ttl: bool = False


@dataclass(slots=True)
class _StoreEntry:
    store: Store
    liveness: Liveness = Liveness.UNKNOWN
    failures: int = 0
    address_changes: int = 0
    # A send to the store failed since PD was last asked about it: the next lookup asks
    # again (the store may have moved to another address, or become a tombstone).
    recheck: bool = False
    # When a failed send last made a lookup ask PD (clock seconds; -inf: never).
    rechecked_at: float = float("-inf")


class RegionCache:
    """Sorted index of regions with TTL, epoch-aware insertion, and a store cache.

    Args:
        ttl: Idle seconds before an entry expires (default 600).
        ttl_jitter: Max random extra seconds added to each TTL (default 60).
        clock: Monotonic clock in seconds (default :func:`time.monotonic`).
        rng: Random source for the jitter.

    Raises:
        ValueError: ``ttl`` is not positive or ``ttl_jitter`` is negative.

    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_REGION_CACHE_TTL,
        ttl_jitter: float = DEFAULT_REGION_CACHE_TTL_JITTER,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        store_reresolve_interval: float = DEFAULT_STORE_RERESOLVE_INTERVAL,
    ) -> None:
        if not store_reresolve_interval >= 0:
            raise ValueError(
                f"store_reresolve_interval must be >= 0 seconds, got {store_reresolve_interval}"
            )
        self._reresolve_interval = float(store_reresolve_interval)
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if not ttl_jitter >= 0:
            raise ValueError(f"ttl_jitter must be >= 0 seconds, got {ttl_jitter}")
        self._ttl = float(ttl)
        self._jitter = float(ttl_jitter)
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        # Parallel sorted lists: start keys and their entries.
        self._starts: list[bytes] = []
        self._entries: list[_Entry] = []
        self._by_id: dict[int, _Entry] = {}
        # Newest epoch seen per region id, kept across invalidation so that a late,
        # stale answer from PD cannot re-insert an older epoch.
        self._latest: dict[int, RegionEpoch] = {}
        self._invalid_reasons: dict[int, InvalidReason] = {}
        self._stores: dict[int, _StoreEntry] = {}
        #: Called with ``(store_id, old_address)`` when re-asking PD finds that a store
        #: moved: the request layer closes its connection to the old address.
        self.store_moved_listeners: list[Callable[[int, str], None]] = []
        self._inflight: dict[tuple[str, object], asyncio.Future[Any]] = {}
        self._sweep_cursor = b""

    # ----------------------------------------------------------------------------------
    # TTL
    # ----------------------------------------------------------------------------------

    def _next_deadline(self, now: float) -> float:
        jitter = self._rng.uniform(0.0, self._jitter) if self._jitter > 0 else 0.0
        return now + self._ttl + jitter

    def _alive(self, entry: _Entry, now: float) -> bool:
        """Check the TTL and slide it forward on a hit (client-go checkRegionCacheTTL)."""
        if now > entry.deadline:
            return False
        # Only extend when the deadline is within one base TTL of now: entries still in
        # their jitter window keep it, which spreads reloads over time.
        if not entry.expire_after_ttl and entry.deadline <= now + self._ttl:
            entry.deadline = self._next_deadline(now)
        return True

    # ----------------------------------------------------------------------------------
    # Index maintenance
    # ----------------------------------------------------------------------------------

    def _remove_at(self, idx: int) -> _Entry:
        entry = self._entries.pop(idx)
        del self._starts[idx]
        if self._by_id.get(entry.region.id) is entry:
            del self._by_id[entry.region.id]
        return entry

    def _remove_entry(self, entry: _Entry) -> None:
        idx = bisect.bisect_left(self._starts, entry.region.start_key)
        if idx < len(self._entries) and self._entries[idx] is entry:
            self._remove_at(idx)

    def _expire(self, entry: _Entry) -> None:
        self._remove_entry(entry)
        self._invalid_reasons[entry.region.id] = InvalidReason.EXPIRED

    def insert(self, region: Region, *, has_down_peers: bool = False) -> bool:
        """Insert a region, evicting the cached regions it overlaps.

        Rejected (returns ``False``, cache unchanged) when it is stale: the same region
        id was seen with a newer ``version`` or ``conf_ver``, or an overlapping cached
        region has a newer ``version``.

        Args:
            region: The region.
            has_down_peers: PD reported down peers for it (also implied by
                ``region.down_peers``); the entry then expires after one TTL even if it
                is used continuously, so the client notices when the peers come back or
                are replaced (client-go needExpireAfterTTL).

        Returns:
            Whether the region was inserted.

        """
        if not isinstance(region, Region):
            raise TypeError(f"insert expects a Region, got {type(region).__name__}")
        latest = self._latest.get(region.id)
        if latest is not None and region.epoch.is_stale_against(latest):
            return False
        start, end = region.start_key, region.end_key
        # Overlapping entries: the one starting before `start` (if it reaches past it)
        # and every entry starting inside [start, end).
        lo = bisect.bisect_right(self._starts, start) - 1
        if lo < 0 or not self._entries[lo].region.overlaps(start, end):
            lo += 1
        hi = len(self._starts) if not end else bisect.bisect_left(self._starts, end)
        hi = max(hi, lo)
        overlapping = self._entries[lo:hi]
        for entry in overlapping:
            if entry.region.epoch.version > region.epoch.version:
                return False
        for entry in overlapping:
            if self._by_id.get(entry.region.id) is entry:
                del self._by_id[entry.region.id]
            if entry.region.id != region.id:
                # Removed because a newer layout replaced it (client-go
                # removeVersionFromCache): forget its version too.
                self._latest.pop(entry.region.id, None)
        del self._starts[lo:hi]
        del self._entries[lo:hi]
        old = self._by_id.get(region.id)
        if old is not None:  # same id cached elsewhere (its range changed)
            self._remove_entry(old)
        entry = _Entry(
            region, self._next_deadline(self._clock()), has_down_peers or bool(region.down_peers)
        )
        pos = bisect.bisect_left(self._starts, start)
        self._starts.insert(pos, start)
        self._entries.insert(pos, entry)
        self._by_id[region.id] = entry
        self._latest[region.id] = region.epoch
        self._invalid_reasons.pop(region.id, None)
        return True

    def insert_many(self, regions: Iterable[Region]) -> int:
        """Insert several regions; return how many were accepted."""
        return sum(1 for r in regions if self.insert(r))

    def invalidate(self, region_id: int, reason: InvalidReason = InvalidReason.OTHER) -> bool:
        """Drop a region from the cache so that the next lookup reloads it.

        Returns:
            Whether a cached entry was dropped.

        """
        if not isinstance(reason, InvalidReason):
            raise TypeError(f"reason must be an InvalidReason, got {reason!r}")
        entry = self._by_id.get(region_id)
        if entry is None:
            return False
        self._remove_entry(entry)
        self._invalid_reasons[region_id] = reason
        return True

    def invalid_reason(self, region_id: int) -> InvalidReason | None:
        """Why the region was last dropped, if it is not cached now."""
        if region_id in self._by_id:
            return None
        return self._invalid_reasons.get(region_id)

    def clear(self) -> None:
        """Drop every region (stores are kept)."""
        self._starts.clear()
        self._entries.clear()
        self._by_id.clear()
        self._latest.clear()
        self._invalid_reasons.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def regions(self) -> Iterator[Region]:
        """Iterate over cached regions in key order (expired ones included)."""
        return iter([e.region for e in self._entries])

    # ----------------------------------------------------------------------------------
    # Lookups
    # ----------------------------------------------------------------------------------

    def locate_key(self, key: bytes) -> Region | None:
        """Return the cached region containing ``key``, or ``None`` on a miss."""
        idx = bisect.bisect_right(self._starts, key) - 1
        if idx < 0:
            return None
        entry = self._entries[idx]
        region = entry.region
        if region.end_key and key >= region.end_key:
            return None
        if not self._alive(entry, self._clock()):
            self._expire(entry)
            return None
        return region

    def locate_end_key(self, key: bytes) -> Region | None:
        """Return the cached region containing ``key`` as an exclusive end.

        That is the region with ``start_key < key <= end_key``; for ``b""`` (+inf) the
        last region. Used by reverse scans.
        """
        if not key:
            if not self._entries:
                return None
            idx = len(self._entries) - 1
        else:
            idx = bisect.bisect_left(self._starts, key) - 1
            if idx < 0:
                return None
        entry = self._entries[idx]
        if not entry.region.contains_by_end(key):
            return None
        if not self._alive(entry, self._clock()):
            self._expire(entry)
            return None
        return entry.region

    def get_by_id(self, region_id: int) -> Region | None:
        """Return the cached region with this id, or ``None``."""
        entry = self._by_id.get(region_id)
        if entry is None:
            return None
        if not self._alive(entry, self._clock()):
            self._expire(entry)
            return None
        return entry.region

    def group_keys_by_region(self, keys: Iterable[bytes]) -> KeyGrouping:
        """Group keys by the cached region containing each.

        Keys are visited in input order; a run of keys in the same region costs one
        range check rather than a search.
        """
        groups: dict[Region, list[bytes]] = {}
        missing: list[bytes] = []
        current: Region | None = None
        current_keys: list[bytes] = []
        for key in keys:
            if current is not None and current.contains(key):
                current_keys.append(key)
                continue
            region = self.locate_key(key)
            if region is None:
                missing.append(key)
                current = None
                continue
            current = region
            current_keys = groups.setdefault(region, [])
            current_keys.append(key)
        return KeyGrouping(groups, missing)

    def split_range_by_region(self, start: bytes, end: bytes) -> RangeSplit:
        """Cut ``[start, end)`` (empty end = +inf) at cached region boundaries.

        Walks cached regions from ``start`` and stops at the first uncached gap.
        """
        _check_range(start, end)
        parts: list[tuple[Region, bytes, bytes]] = []
        cursor = start
        while True:
            region = self.locate_key(cursor)
            if region is None:
                return RangeSplit(parts, cursor)
            if region.reaches(end):
                parts.append((region, cursor, end))
                return RangeSplit(parts, None)
            parts.append((region, cursor, region.end_key))
            cursor = region.end_key

    # ----------------------------------------------------------------------------------
    # Corrections from region errors
    # ----------------------------------------------------------------------------------

    def on_not_leader(
        self,
        region_id: int,
        new_leader: Peer | int | None,
        *,
        epoch: RegionEpoch | None = None,
    ) -> bool:
        """Switch the cached leader after a NotLeader error, without reloading.

        Args:
            region_id: The region that answered NotLeader.
            new_leader: The hinted leader (a Peer, or its store id), or ``None`` when
                TiKV gave no hint.
            epoch: The epoch the request was sent with; if the cache has moved on to a
                different epoch, the hint is about an old region and is ignored.

        Returns:
            Whether the cached leader now is the hinted peer (retry at once). ``False``
            means the caller should back off: no hint, the region is not cached or
            changed, or the hinted peer is unknown to the cached region — in the last
            case the entry is invalidated (its peer list is outdated; client-go
            ``UpdateLeader`` does the same).

        """
        entry = self._by_id.get(region_id)
        if entry is None or new_leader is None:
            return False
        region = entry.region
        if epoch is not None and epoch != region.epoch:
            return False
        if isinstance(new_leader, Peer):
            peer = region.peer_on_store(new_leader.store_id)
            if peer is None or (new_leader.id and peer.id != new_leader.id):
                peer = None
        else:
            peer = region.peer_on_store(new_leader)
        if peer is None:
            self.invalidate(region_id, InvalidReason.NO_LEADER)
            return False
        if region.leader != peer:
            entry.region = region.with_leader(peer)
        return True

    def on_epoch_not_match(
        self,
        region_id: int,
        epoch: RegionEpoch,
        current_regions: Sequence[Region],
        *,
        store_id: int | None = None,
        needed: tuple[bytes, bytes] | None = None,
    ) -> bool:
        """Apply an EpochNotMatch error (client-go ``OnRegionEpochNotMatch``).

        Args:
            region_id: The region the request was sent to.
            epoch: The epoch the request carried.
            current_regions: ``EpochNotMatch.current_regions`` from TiKV (decoded).
            store_id: The store that answered; its peer becomes each new region's
                initial leader (TiKV only answers EpochNotMatch from a leader).
            needed: The key range ``[start, end)`` the request needs (empty end =
                +inf); defaults to the stale region's range.

        Returns:
            ``True`` when the cache was updated and the current regions cover
            ``needed``: re-split the request and retry at once. ``False`` when the
            caller should back off (regionMiss) and relocate: TiKV sent no regions (a
            "fake" EpochNotMatch; the region is invalidated), TiKV's epoch is behind
            the request's (the store lags; nothing is changed), or the regions do not
            cover what is needed.

        """
        if not current_regions:
            self.invalidate(region_id, InvalidReason.EPOCH_NOT_MATCH)
            return False
        for meta in current_regions:
            # TiKV's copy of the region is older than what the request carried: the
            # store lags behind (client-go "region epoch is ahead of tikv").
            if meta.id == region_id and meta.epoch.is_stale_against(epoch):
                return False
        cached = self._by_id.get(region_id)
        if needed is None and cached is not None:
            needed = (cached.region.start_key, cached.region.end_key)
        still_current = any(m.id == region_id and m.epoch == epoch for m in current_regions)
        if not still_current and cached is not None and cached.region.epoch == epoch:
            self.invalidate(region_id, InvalidReason.EPOCH_NOT_MATCH)
        for meta in current_regions:
            region = meta
            if store_id is not None:
                peer = meta.peer_on_store(store_id)
                if peer is not None:
                    region = meta.with_leader(peer)
            self.insert(region)
        return needed is None or self._covers(current_regions, needed)

    @staticmethod
    def _covers(regions: Sequence[Region], needed: tuple[bytes, bytes]) -> bool:
        start, end = needed
        cursor = start
        for region in sorted(regions, key=lambda r: r.start_key):
            if region.start_key > cursor:
                break
            if not region.contains(cursor):
                continue
            if region.reaches(end):
                return True
            cursor = region.end_key
        return False

    def on_send_fail(self, region_id: int, store_id: int) -> int:
        """Record a transport failure sending ``region_id``'s request to ``store_id``.

        The region is invalidated, and so is every cached region whose leader is on
        that store: they would fail the same way, and reloading them finds the new
        leaders once the store's regions move (client-go bumps the store's epoch, which
        invalidates all regions using it; ``TestSendFailInvalidateRegionsInSameStore``).
        The store's failure count grows; liveness is decided by the transport.

        Returns:
            How many cached regions were invalidated.

        """
        dropped = [
            e.region.id
            for e in self._entries
            if e.region.id == region_id or e.region.leader_store_id == store_id
        ]
        for rid in dropped:
            self.invalidate(rid, InvalidReason.SEND_FAIL)
        if region_id not in dropped and self.invalidate(region_id, InvalidReason.SEND_FAIL):
            dropped.append(region_id)
        entry = self._stores.get(store_id)
        if entry is not None:
            entry.failures += 1
            entry.recheck = True
        return len(dropped)

    # ----------------------------------------------------------------------------------
    # Loading (single-flight)
    # ----------------------------------------------------------------------------------

    async def _single_flight(
        self, key: tuple[str, object], load: Callable[[], Awaitable[_T]]
    ) -> _T:
        future: asyncio.Future[Any] | None = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(load())
            self._inflight[key] = future

            def _done(f: asyncio.Future[Any], k: tuple[str, object] = key) -> None:
                if self._inflight.get(k) is f:
                    del self._inflight[k]
                if not f.cancelled():
                    f.exception()  # mark retrieved: callers may all have gone

            future.add_done_callback(_done)
        # Shield: one caller's cancellation must not cancel the load others wait for.
        return await asyncio.shield(future)

    def lookup(self, key: bytes, *, end: bool = False) -> Region | None:
        """The cached region of ``key`` for a lookup that loads on a miss, or ``None``.

        Like :meth:`locate_key` (``end=True``: :meth:`locate_end_key`), but it checks
        the key's type and counts a hit in the region-cache metrics (client-go counts
        hits in ``findRegionByKey``): the synchronous fast path of :meth:`get_or_load`
        and of :meth:`tikv_pd.locator.RegionLocator.locate_key`.

        Raises:
            TypeError: ``key`` is not bytes.

        """
        if type(key) is not bytes:
            _check_key("key", key)
        region = self.locate_end_key(key) if end else self.locate_key(key)
        if region is not None and _obs.metrics is not None:
            _obs.metrics.region_cache_hit()
        return region

    async def get_or_load(self, key: bytes, loader: KeyLoader) -> Region:
        """Return the region containing ``key``, loading it on a miss.

        Concurrent misses for the same key share one ``loader`` call.

        Raises:
            tikv_pd.errors.PDError: the loader returned a region that does not contain
                ``key``.
            BaseException: whatever ``loader`` raises.

        """
        region = self.lookup(key)
        if region is not None:
            return region

        async def load() -> Region:
            loaded = await loader(key)
            if not loaded.contains(key):
                raise PDError(
                    f"loaded region {loaded.id} [{format_key(loaded.start_key)}, "
                    f"{format_key(loaded.end_key)}) does not contain key {format_key(key)}"
                )
            self.insert(loaded)
            return loaded

        if _obs.metrics is not None or _obs.tracing is not None:
            return await _observed_miss(self._single_flight(("key", key), load))
        return await self._single_flight(("key", key), load)

    async def get_or_load_end(self, key: bytes, loader: EndKeyLoader) -> Region:
        """Return the region containing ``key`` as an exclusive end, loading on a miss.

        Raises:
            tikv_pd.errors.PDError: the loaded region does not contain ``key`` by end.

        """
        region = self.lookup(key, end=True)
        if region is not None:
            return region

        async def load() -> Region:
            loaded = await loader(key)
            if not loaded.contains_by_end(key):
                raise PDError(
                    f"loaded region {loaded.id} does not end-contain key {format_key(key)}"
                )
            self.insert(loaded)
            return loaded

        if _obs.metrics is not None or _obs.tracing is not None:
            return await _observed_miss(self._single_flight(("end", key), load))
        return await self._single_flight(("end", key), load)

    async def load_and_group_keys(
        self, keys: Iterable[bytes], loader: KeyLoader
    ) -> dict[Region, list[bytes]]:
        """Group keys by region, loading missing regions one at a time.

        Loading one missing key's region usually covers its neighbours, so the rest are
        re-grouped against the cache before loading again.
        """
        pending = list(keys)
        groups: dict[Region, list[bytes]] = {}
        while pending:
            grouping = self.group_keys_by_region(pending)
            for region, ks in grouping.groups.items():
                groups.setdefault(region, []).extend(ks)
            if not grouping.missing:
                break
            first = grouping.missing[0]
            region = await self.get_or_load(first, loader)
            groups.setdefault(region, []).append(first)
            # Keys of the freshly loaded region are taken directly (it may have been
            # rejected as stale by insert, yet it is still the region PD named).
            rest = []
            for k in grouping.missing[1:]:
                if region.contains(k):
                    groups[region].append(k)
                else:
                    rest.append(k)
            pending = rest
        return groups

    async def load_window(
        self,
        start: bytes,
        end: bytes,
        loader: KeyLoader,
        *,
        range_loader: RangeLoader | None = None,
        limit: int = DEFAULT_REGIONS_PER_BATCH,
    ) -> list[Region]:
        """The regions of ``[start, end)`` from the one containing ``start``: at most ``limit``.

        Cached regions are used as they are; at the first uncached key ``range_loader``
        (PD ScanRegions) loads up to ``limit`` consecutive regions at once — all of them
        are cached, those past the window serve the next one — as client-go's
        ``BatchLoadRegionsWithKeyRange`` does. Without a range loader, or when its answer
        does not start at that key (a region being split), ``loader`` loads the one
        region (single-flight, like :meth:`get_or_load`).

        Args:
            start: The window's first key.
            end: The range's end (empty = +inf); the window stops at the region that
                reaches it.
            loader: Loads the region of one key (PD GetRegion).
            range_loader: Loads up to ``limit`` consecutive regions of a range.
            limit: The window's size (client-go defaultRegionsPerBatch = 128).

        Raises:
            TypeError / ValueError: Bad keys, ``start >= end`` or ``limit < 1``.

        """
        _check_range(start, end)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        window: list[Region] = []
        key = start
        while len(window) < limit:
            region = self.locate_key(key)
            if region is None and range_loader is not None:
                loaded = sorted(await range_loader(key, end, limit), key=_start_of)
                self.insert_many(loaded)
                before = len(window)
                for found in loaded:
                    # Consecutive from ``key`` only (PD may answer with a gap mid-split).
                    if len(window) == limit or not found.contains(key):
                        break
                    window.append(found)
                    if found.reaches(end):
                        return window
                    key = found.end_key
                if len(window) > before:
                    continue
            if region is None:
                region = await self.get_or_load(key, loader)
            window.append(region)
            if region.reaches(end):
                break
            key = region.end_key
        return window

    async def load_and_split_range(
        self,
        start: bytes,
        end: bytes,
        loader: KeyLoader,
        *,
        range_loader: RangeLoader | None = None,
        batch_limit: int = DEFAULT_REGIONS_PER_BATCH,
    ) -> list[tuple[Region, bytes, bytes]]:
        """Cut ``[start, end)`` at region boundaries, loading uncached regions.

        Walks the range window by window (:meth:`load_window`).

        Args:
            start: Range start.
            end: Range end (empty = +inf).
            loader: Loads the region of one key (PD GetRegion).
            range_loader: Optional batch loader (PD ScanRegions) called as
                ``range_loader(start, end, limit)``; with it a cache miss loads up to
                ``batch_limit`` consecutive regions at once, as client-go's
                ``LocateKeyRange`` does with ``BatchLoadRegionsWithKeyRange``.
            batch_limit: Regions per batch load (client-go defaultRegionsPerBatch = 128).

        """
        if batch_limit < 1:
            raise ValueError(f"batch_limit must be >= 1, got {batch_limit}")
        parts: list[tuple[Region, bytes, bytes]] = []
        key = start
        while True:
            window = await self.load_window(
                key, end, loader, range_loader=range_loader, limit=batch_limit
            )
            for region in window:
                part_end = end if region.reaches(end) else region.end_key
                parts.append((region, key, part_end))
                key = part_end
            if window[-1].reaches(end):
                return parts

    def sweep_expired(self, limit: int = 50) -> int:
        """Drop expired entries among the next ``limit`` cached regions.

        Call it periodically (client-go sweeps 50 regions every second,
        ``cleanRegionNumPerRound`` / ``cleanCacheInterval``) to free memory held by
        regions nobody asks for. The scan resumes where the previous call stopped and
        wraps around. It does not extend TTLs (a sweep is not an access). Live entries
        with a peer on an unreachable store stop being extended by hits, so they are
        reloaded after their TTL.

        Returns:
            How many entries were dropped.

        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if not self._entries:
            self._sweep_cursor = b""
            return 0
        now = self._clock()
        idx = bisect.bisect_left(self._starts, self._sweep_cursor)
        if idx >= len(self._entries):
            idx = 0
        stop = min(idx + limit, len(self._entries))
        expired = []
        for entry in self._entries[idx:stop]:
            if now > entry.deadline:
                expired.append(entry)
            elif not entry.expire_after_ttl and any(
                self.store_liveness(p.store_id) is Liveness.UNREACHABLE for p in entry.region.peers
            ):
                # A peer on an unreachable store: stop extending, reload after the TTL
                # (client-go's GC round sets needExpireAfterTTL the same way).
                entry.expire_after_ttl = True
        self._sweep_cursor = self._starts[stop] if stop < len(self._starts) else b""
        for entry in expired:
            self._expire(entry)
        return len(expired)

    # ----------------------------------------------------------------------------------
    # Stores
    # ----------------------------------------------------------------------------------

    def put_store(self, store: Store) -> bool:
        """Add or update a store.

        Returns:
            Whether the store was known with a different address (the caller should
            drop connections to the old address; client-go re-resolves stores the same
            way).

        """
        if not isinstance(store, Store):
            raise TypeError(f"put_store expects a Store, got {type(store).__name__}")
        entry = self._stores.get(store.id)
        if entry is None:
            self._stores[store.id] = _StoreEntry(store)
            return False
        changed = entry.store.address != store.address
        entry.store = store
        entry.recheck = False
        if changed:
            # A new address is a new process: what we knew about liveness is void.
            entry.liveness = Liveness.UNKNOWN
            entry.failures = 0
            entry.address_changes += 1
        return changed

    def get_store(self, store_id: int) -> Store | None:
        """Return the cached store, or ``None``."""
        entry = self._stores.get(store_id)
        return entry.store if entry is not None else None

    def stores(self) -> list[Store]:
        """All cached stores, by id."""
        return [self._stores[i].store for i in sorted(self._stores)]

    def remove_store(self, store_id: int) -> bool:
        """Forget a store (e.g. it became a tombstone); return whether it was cached."""
        return self._stores.pop(store_id, None) is not None

    def mark_store_reachable(self, store_id: int) -> None:
        """Record that the store answered (resets its failure count)."""
        entry = self._stores.get(store_id)
        if entry is not None:
            entry.liveness = Liveness.REACHABLE
            entry.failures = 0

    def mark_store_unreachable(self, store_id: int) -> None:
        """Record that the store is unreachable (liveness probe failed)."""
        entry = self._stores.get(store_id)
        if entry is not None:
            entry.liveness = Liveness.UNREACHABLE

    def store_liveness(self, store_id: int) -> Liveness:
        """The believed liveness of a store (``UNKNOWN`` when not cached)."""
        entry = self._stores.get(store_id)
        return entry.liveness if entry is not None else Liveness.UNKNOWN

    def store_failures(self, store_id: int) -> int:
        """Send failures recorded since the store last answered."""
        entry = self._stores.get(store_id)
        return entry.failures if entry is not None else 0

    async def get_or_load_store(self, store_id: int, loader: StoreLoader) -> Store:
        """Return a cached store, loading it on a miss (single-flight per id).

        Raises:
            tikv_pd.errors.PDError: the loader returned another store id.

        """
        entry = self._stores.get(store_id)
        if entry is not None:
            if entry.recheck:
                return await self._recheck_store(entry, loader)
            return entry.store

        async def load() -> Store:
            loaded = await loader(store_id)
            if loaded.id != store_id:
                raise PDError(f"asked PD for store {store_id}, got store {loaded.id}")
            self.put_store(loaded)
            return loaded

        return await self._single_flight(("store", store_id), load)

    async def _recheck_store(self, entry: _StoreEntry, loader: StoreLoader) -> Store:
        """Ask PD again about a store whose send failed (client-go ``Store.reResolve``).

        A store that restarted on another address (a moved pod) fails every send to the
        old one, and nothing else would tell the client: PD has the new address. The first
        lookup after a failure asks at once, later ones at most every
        ``store_reresolve_interval`` while sends keep failing, so a store that is simply
        down costs PD one ``GetStore`` per interval. If PD cannot answer, the cached store
        is used as it is (client-go logs and keeps the store).
        """
        now = self._clock()
        if now - entry.rechecked_at < self._reresolve_interval:
            return entry.store
        entry.rechecked_at = now
        store_id = entry.store.id

        old_address = entry.store.address

        async def load() -> Store:
            loaded = await loader(store_id)
            if loaded.id != store_id:
                raise PDError(f"asked PD for store {store_id}, got store {loaded.id}")
            if self.put_store(loaded):
                logger.info("store %d moved from %s to %s", store_id, old_address, loaded.address)
                # Another store may serve there now (addresses swapped): keep it then.
                if not any(e.store.address == old_address for e in self._stores.values()):
                    for listener in self.store_moved_listeners:
                        listener(store_id, old_address)
            return loaded

        try:
            return await self._single_flight(("store", store_id), load)
        except (PDError, BackoffTimeoutError) as exc:
            logger.warning("re-resolving store %d failed, keeping its address: %s", store_id, exc)
            return entry.store

    # ----------------------------------------------------------------------------------
    # Diagnostics
    # ----------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError if the index is inconsistent (for tests)."""
        if self._starts != sorted(self._starts):
            raise AssertionError("start keys are not sorted")
        if len(self._starts) != len(self._entries):
            raise AssertionError("index lists differ in length")
        for s, e in zip(self._starts, self._entries, strict=True):
            if s != e.region.start_key:
                raise AssertionError("start key list out of sync")
        for a, b in zip(self._entries, self._entries[1:], strict=False):
            if not a.region.end_key or a.region.end_key > b.region.start_key:
                raise AssertionError(f"regions {a.region.id} and {b.region.id} overlap")
        ids = {e.region.id: e for e in self._entries}
        if ids.keys() != self._by_id.keys() or any(ids[i] is not self._by_id[i] for i in ids):
            raise AssertionError("id index out of sync")


async def _observed_miss(load: Awaitable[Region]) -> Region:
    """Await a region load for a cache miss, observing it (metrics or tracing are on).

    client-go counts ``region_cache_operations_total{type="get_region_when_miss"}`` with
    ``ok`` / ``err``, times successful loads in ``load_region_cache_seconds``, and traces
    the load as a ``loadRegion`` span (ours: ``tikv.region_cache.load_region``).
    """
    start = time.perf_counter()
    tracing = _obs.tracing
    try:
        if tracing is None:
            region = await load
        else:
            with tracing.span("tikv.region_cache.load_region"):
                region = await load
    except BaseException:
        m = _obs.metrics
        if m is not None:
            m.region_cache_miss(False, time.perf_counter() - start)
        raise
    m = _obs.metrics
    if m is not None:
        m.region_cache_miss(True, time.perf_counter() - start)
    return region
