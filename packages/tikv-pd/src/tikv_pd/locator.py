"""The region locator: the region cache filled from PD, in the request key space.

:class:`RegionLocator` answers "which region (and which store address) serves this key"
for the request pipeline (:class:`tikv_pd.request.Locator`). It owns the translation
between two key spaces:

* **Request keys** — what TiKV stores and what requests carry: the user key in API v1,
  the keyspace-prefixed key in API v2. Cached regions are expressed in this space.
* **PD keys** — region boundaries as PD stores them. Transactional data in API v1 and
  everything in API v2 is memcomparable-encoded there (TiDB's layout; client-go's
  ``CodecPDClient`` encodes keys before asking PD and decodes the boundaries it returns,
  ``internal/locate/pd_codec.go``); API v1 raw keys are plain.

Loading follows client-go ``internal/locate/region_cache.go``:

* A miss asks PD ``GetRegion``; an unknown region (PD has none yet, or one without
  peers) is retried with ``regionMiss`` backoff within the operation's budget
  (``loadRegion``). Concurrent misses of one key share one request (single-flight).
* A region for an *end* key (``start < key <= end``, used by reverse scans) is found
  with ``GetRegion`` and, when the key is exactly that region's start, ``GetPrevRegion``.
* Range and batch lookups load missing regions 128 at a time (``defaultRegionsPerBatch``)
  with ``ScanRegions`` / ``BatchScanRegions``, falling back to ``ScanRegions`` when PD
  does not implement the batch method.
* Stores are resolved with ``GetStore`` once per id and re-resolved when the pipeline
  invalidates them (``StoreNotMatch``, a send failure): a new address shows up as
  :meth:`RegionLocator.reload_store` returning ``changed=True``.
* Region errors correct the cache in place: NotLeader switches the leader,
  EpochNotMatch inserts TiKV's ``current_regions`` (decoded like PD's answers).
* A background task sweeps expired entries, 50 regions per second
  (``cleanRegionNumPerRound`` / ``cleanCacheInterval``), so idle regions are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace

import grpc
from tikv_proto import metapb_pb2

from tikv_pd.backoff import LOCATE_REGION_MAX_BACKOFF, REGION_MISS, Backoffer
from tikv_pd.codec import API_V2, KeyCodec, decode_bytes, encode_bytes
from tikv_pd.errors import (
    ClientClosedError,
    CodecError,
    PDError,
    RegionError,
    StoreUnavailableError,
    format_key,
)
from tikv_pd.pd_client import PDClient, PDRegion
from tikv_pd.region_cache import (
    DEFAULT_REGIONS_PER_BATCH,
    InvalidReason,
    Peer,
    PeerRole,
    Region,
    RegionCache,
    RegionEpoch,
    Store,
    StoreState,
)

__all__ = [
    "SWEEP_INTERVAL",
    "SWEEP_REGIONS_PER_ROUND",
    "RegionLocator",
]

logger = logging.getLogger("tikv.region_cache")

#: Seconds between background sweeps of expired regions (client-go cleanCacheInterval).
SWEEP_INTERVAL = 1.0
#: Regions examined per sweep (client-go cleanRegionNumPerRound).
SWEEP_REGIONS_PER_ROUND = 50
# Point ranges sent in one BatchScanRegions request.
_MAX_RANGES_PER_BATCH = 128


def _to_peer(peer: metapb_pb2.Peer) -> Peer:
    try:
        role = PeerRole(peer.role)
    except ValueError:
        role = PeerRole.VOTER
    return Peer(peer.id, peer.store_id, role, peer.is_witness)


class RegionLocator:
    """Locates regions and stores for request keys, loading from PD on a miss.

    Args:
        pd: The connected PD client.
        codec: The client's key codec; it decides whether PD boundaries are
            memcomparable-encoded (``mode == "txn"`` or API v2) or plain (API v1 raw).
        cache: The region cache to fill; a new one (with ``pd.config``'s TTL) when
            omitted.
        budget_ms: Backoff budget (ms, before the backoff weight) of one lookup that
            meets a region PD cannot serve yet (client-go ``locateRegionMaxBackoff``,
            20 s).
        sweep_interval: Seconds between background sweeps of expired regions
            (client-go cleanCacheInterval, 1 s).

    Call :meth:`start` (inside the event loop) to run the background sweep and
    :meth:`close` to stop it. The locator does not own the PD client.

    """

    def __init__(
        self,
        pd: PDClient,
        *,
        codec: KeyCodec,
        cache: RegionCache | None = None,
        budget_ms: int = LOCATE_REGION_MAX_BACKOFF,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        if not isinstance(pd, PDClient):
            raise TypeError(f"pd must be a PDClient, got {type(pd).__name__}")
        if not isinstance(codec, KeyCodec):
            raise TypeError(f"codec must implement tikv_pd.codec.KeyCodec, got {codec!r}")
        if cache is not None and not isinstance(cache, RegionCache):
            raise TypeError(f"cache must be a RegionCache, got {type(cache).__name__}")
        if isinstance(budget_ms, bool) or not isinstance(budget_ms, int) or budget_ms < 0:
            raise ValueError(f"budget_ms must be an int >= 0, got {budget_ms!r}")
        config = pd.config
        self._pd = pd
        self._codec = codec
        self._memcomparable = codec.mode == "txn" or codec.api_version == API_V2
        self._cache = (
            cache
            if cache is not None
            else RegionCache(ttl=config.region_cache_ttl, ttl_jitter=config.region_cache_ttl_jitter)
        )
        if not sweep_interval > 0:
            raise ValueError(f"sweep_interval must be > 0 seconds, got {sweep_interval!r}")
        self._budget_ms = budget_ms
        self._sweep_interval = float(sweep_interval)
        self._by_id_inflight: dict[int, asyncio.Future[Region]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self._batch_scan_supported = True
        #: PD region requests issued by this locator, by method (diagnostics/tests).
        self.pd_requests: dict[str, int] = {}

    # -- properties ------------------------------------------------------------------

    @property
    def cache(self) -> RegionCache:
        """The region cache this locator fills."""
        return self._cache

    @property
    def codec(self) -> KeyCodec:
        """The key codec."""
        return self._codec

    @property
    def pd(self) -> PDClient:
        """The PD client."""
        return self._pd

    # -- key translation ---------------------------------------------------------------

    def to_pd_key(self, key: bytes) -> bytes:
        """Map a request key to PD's boundary form (the empty key stays empty)."""
        if self._memcomparable and key:
            return encode_bytes(key)
        return key

    def from_pd_key(self, key: bytes) -> bytes:
        """Map a PD region boundary to a request key.

        Raises:
            PDError: A boundary that must be memcomparable is not.

        """
        if not self._memcomparable or not key:
            return key
        try:
            value, rest = decode_bytes(key)
        except CodecError as exc:
            raise PDError(
                f"region boundary {format_key(key)} is not memcomparable-encoded "
                f"(codec {self._codec!r})",
                cause=exc,
            ) from exc
        if rest:
            # client-go keeps the decoded value and ignores trailing bytes of a boundary
            # (``decodeRegionKeyInPlace`` in ``internal/locate/pd_codec.go``).
            logger.debug("region boundary %s has %d trailing bytes", format_key(key), len(rest))
        return value

    def region_from_meta(
        self, meta: metapb_pb2.Region, leader: metapb_pb2.Peer | None = None
    ) -> Region:
        """Convert a ``metapb.Region`` (from PD or TiKV) to a cached :class:`Region`.

        Raises:
            PDError: The region is malformed (no epoch, bad boundaries).

        """
        if not meta.HasField("region_epoch"):
            raise PDError(f"region {meta.id} has no region_epoch")
        start = self.from_pd_key(meta.start_key)
        end = self.from_pd_key(meta.end_key)
        peers = tuple(_to_peer(p) for p in meta.peers)
        leader_peer = None
        if leader is not None and leader.id:
            leader_peer = next(
                (p for p in peers if p.id == leader.id and p.store_id == leader.store_id), None
            )
        try:
            return Region(
                id=meta.id,
                start_key=start,
                end_key=end,
                epoch=RegionEpoch(meta.region_epoch.conf_ver, meta.region_epoch.version),
                peers=peers,
                leader=leader_peer,
            )
        except ValueError as exc:
            raise PDError(f"malformed region {meta.id}: {exc}", cause=exc) from exc

    def _from_pd(self, region: PDRegion) -> Region:
        converted = self.region_from_meta(region.meta, region.leader)
        if not region.down_peers:
            return converted
        # client-go newRegion: peers PD reports down get no requests (the leader, if PD
        # ever names it down, is kept: it is what the region's writes need).
        down = {(p.id, p.store_id) for p in region.down_peers}
        kept = tuple(
            p for p in converted.peers if (p.id, p.store_id) not in down or p == converted.leader
        )
        gone = tuple(p for p in converted.peers if p not in kept)
        if not gone or not kept:
            return converted
        return replace(converted, peers=kept, down_peers=gone)

    def _count(self, method: str) -> None:
        self.pd_requests[method] = self.pd_requests.get(method, 0) + 1

    def _backoffer(self, operation: str) -> Backoffer:
        return Backoffer(self._budget_ms, operation=operation)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("region locator")

    # -- loading -----------------------------------------------------------------------

    async def _load_region(self, key: bytes, *, end: bool) -> Region:
        """Load the region of ``key`` (as a start key, or as an exclusive end) from PD.

        Retries with regionMiss backoff while PD has no usable region for the key.
        """
        bo = self._backoffer("locate_end_key" if end else "locate_key")
        pd_key = self.to_pd_key(key)
        search_prev = False
        while True:
            self._check_open()
            if search_prev:
                self._count("GetPrevRegion")
                found = await self._pd.get_prev_region(pd_key, backoffer=bo)
            else:
                self._count("GetRegion")
                found = await self._pd.get_region(pd_key, backoffer=bo)
            problem: str | None = None
            if found is None:
                problem = f"PD has no region for key {format_key(key)}"
            elif not found.meta.peers:
                problem = f"region {found.id} has no peers"
            elif end and not search_prev and found.start_key == pd_key and pd_key:
                # The key is this region's start: as an end key it belongs to the
                # region before (client-go loadRegion with isEndKey).
                search_prev = True
                continue
            if problem is None:
                assert found is not None
                region = self._from_pd(found)
                fits = region.contains_by_end(key) if end else region.contains(key)
                if fits:
                    return region
                problem = (
                    f"PD answered region {region.id} [{format_key(region.start_key)}, "
                    f"{format_key(region.end_key)}) for key {format_key(key)}"
                )
            # The region is being created or split right now: wait and ask again.
            search_prev = False
            await bo.backoff(REGION_MISS, RegionError("region_not_found", 0, problem))

    async def _load_start_key(self, key: bytes) -> Region:
        """The cache's loader for the region containing ``key``."""
        return await self._load_region(key, end=False)

    async def _load_end_key(self, key: bytes) -> Region:
        """The cache's loader for the region containing ``key`` as an exclusive end."""
        return await self._load_region(key, end=True)

    async def _load_last_region(self) -> Region:
        """Find the last region (``end_key == b""``) by scanning forward from the cache."""
        cached = list(self._cache.regions())
        cursor = cached[-1].start_key if cached else b""
        bo = self._backoffer("locate_end_key")
        while True:
            self._check_open()
            self._count("ScanRegions")
            found = await self._pd.scan_regions(
                self.to_pd_key(cursor), b"", DEFAULT_REGIONS_PER_BATCH, backoffer=bo
            )
            regions = [self._from_pd(r) for r in found if r.meta.peers]
            self._cache.insert_many(regions)
            if regions and not regions[-1].end_key:
                return regions[-1]
            if regions and regions[-1].end_key > cursor:
                cursor = regions[-1].end_key
                continue
            await bo.backoff(
                REGION_MISS, RegionError("region_not_found", 0, "PD returned no last region")
            )

    async def _scan_load(self, start: bytes, end: bytes, limit: int) -> list[Region]:
        """Range loader for the cache: up to ``limit`` regions of ``[start, end)``."""
        self._check_open()
        self._count("ScanRegions")
        pd_start = self.to_pd_key(start)
        pd_end = self.to_pd_key(end) if end else b""
        found = await self._pd.scan_regions(
            pd_start, pd_end, limit, backoffer=self._backoffer("scan_regions")
        )
        return [self._from_pd(r) for r in found if r.meta.peers]

    async def _batch_load_keys(self, keys: Sequence[bytes]) -> None:
        """Load the regions of sorted, distinct ``keys`` with BatchScanRegions."""
        for i in range(0, len(keys), _MAX_RANGES_PER_BATCH):
            chunk = keys[i : i + _MAX_RANGES_PER_BATCH]
            ranges = [(self.to_pd_key(k), self.to_pd_key(k + b"\x00")) for k in chunk]
            if self._batch_scan_supported:
                self._count("BatchScanRegions")
                try:
                    found = await self._pd.batch_scan_regions(
                        ranges, len(chunk), backoffer=self._backoffer("batch_scan_regions")
                    )
                except PDError as exc:
                    cause = exc.cause
                    if not (
                        isinstance(cause, grpc.aio.AioRpcError)
                        and cause.code() == grpc.StatusCode.UNIMPLEMENTED
                    ):
                        raise
                    # PD before v8 has no BatchScanRegions (client-go falls back too).
                    self._batch_scan_supported = False
                else:
                    self._cache.insert_many(self._from_pd(r) for r in found if r.meta.peers)
                    continue
            # Fallback: consecutive regions from the first key of the chunk.
            loaded = await self._scan_load(chunk[0], b"", DEFAULT_REGIONS_PER_BATCH)
            self._cache.insert_many(loaded)

    # -- lookups -------------------------------------------------------------------------

    async def locate_key(self, key: bytes) -> Region:
        """Return the region containing request key ``key`` (loading it on a miss).

        Raises:
            TypeError: ``key`` is not bytes.
            tikv_pd.errors.TimeoutError: PD had no region for the key within the budget.
            PDError: PD failed.

        """
        if self._closed:
            raise ClientClosedError("region locator")
        # Fast path: a hit costs one bisect, without the loader's closure and the
        # cache's own coroutine (this runs once per request).
        region = self._cache.lookup(key)
        if region is not None:
            return region
        return await self._cache.get_or_load(key, self._load_start_key)

    async def locate_end_key(self, key: bytes) -> Region:
        """Return the region containing ``key`` as an exclusive end (``b""``: the last).

        That is the region with ``start_key < key <= end_key``; reverse scans use it.

        Raises:
            TypeError: ``key`` is not bytes.
            tikv_pd.errors.TimeoutError: PD had no region within the budget.
            PDError: PD failed.

        """
        self._check_open()
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, got {type(key).__name__}")
        if not key:
            cached = self._cache.locate_end_key(b"")
            if cached is not None:
                return cached
            return await self._load_last_region()
        return await self._cache.get_or_load_end(key, self._load_end_key)

    async def locate_region_by_id(self, region_id: int) -> Region:
        """Return region ``region_id`` (from the cache, or PD ``GetRegionByID``).

        Raises:
            TypeError / ValueError: ``region_id`` is not a positive int.
            RegionError: PD does not know the region (kind ``"region_not_found"``).
            PDError: PD failed.

        """
        self._check_open()
        if isinstance(region_id, bool) or not isinstance(region_id, int):
            raise TypeError(f"region_id must be an int, got {type(region_id).__name__}")
        if region_id <= 0:
            raise ValueError(f"region_id must be > 0, got {region_id}")
        cached = self._cache.get_by_id(region_id)
        if cached is not None:
            return cached
        future = self._by_id_inflight.get(region_id)
        if future is None:
            future = asyncio.ensure_future(self._load_by_id(region_id))
            self._by_id_inflight[region_id] = future

            def _done(f: asyncio.Future[Region], rid: int = region_id) -> None:
                if self._by_id_inflight.get(rid) is f:
                    del self._by_id_inflight[rid]
                if not f.cancelled():
                    f.exception()

            future.add_done_callback(_done)
        return await asyncio.shield(future)

    async def _load_by_id(self, region_id: int) -> Region:
        self._count("GetRegionByID")
        found = await self._pd.get_region_by_id(
            region_id, backoffer=self._backoffer("locate_region_by_id")
        )
        if found is None:
            raise RegionError("region_not_found", region_id, "PD does not know this region")
        region = self._from_pd(found)
        self._cache.insert(region)
        return region

    async def group_keys_by_region(self, keys: Iterable[bytes]) -> dict[Region, list[bytes]]:
        """Group request keys by region, loading missing regions in batches.

        Keys keep their input order inside each group; groups are ordered by the first
        key of each region in the input.

        Raises:
            TypeError: A key is not bytes.
            PDError / tikv_pd.errors.TimeoutError: Loading failed.

        """
        self._check_open()
        key_list = list(keys)
        for k in key_list:
            if not isinstance(k, bytes):
                raise TypeError(f"keys must be bytes, got {type(k).__name__}")
        grouping = self._cache.group_keys_by_region(key_list)
        if not grouping.missing:
            return grouping.groups
        await self._batch_load_keys(sorted(set(grouping.missing)))
        # Regroup everything so that groups follow the input order; keys still missing
        # (PD returned nothing for them yet) are loaded one by one with backoff.
        return await self._cache.load_and_group_keys(key_list, self._load_start_key)

    async def locate_regions(
        self, start: bytes, end: bytes = b"", *, limit: int = DEFAULT_REGIONS_PER_BATCH
    ) -> list[Region]:
        """A window of the regions of request range ``[start, end)``, loaded in batches.

        Returns the regions in key order from the one containing ``start``, at most
        ``limit`` of them, stopping at the one that reaches ``end`` (``b""``: unbounded);
        walk a whole range by asking again from the last region's ``end_key``. Cached
        regions come from the cache; at the first gap one ``ScanRegions`` loads up to
        ``limit`` regions (client-go ``BatchLoadRegionsWithKeyRange``, 128 at a time:
        ``defaultRegionsPerBatch``), so a cold walk costs one PD request per window
        instead of one per region. A key PD has no region for yet is loaded alone, with
        the regionMiss backoff of :meth:`locate_key`
        (:meth:`tikv_pd.region_cache.RegionCache.load_window`).

        Raises:
            TypeError / ValueError: Bad keys, ``start >= end`` or ``limit < 1``.
            PDError / tikv_pd.errors.TimeoutError: Loading failed.

        """
        self._check_open()
        return await self._cache.load_window(
            start, end, self._load_start_key, range_loader=self._scan_load, limit=limit
        )

    async def split_range(self, start: bytes, end: bytes) -> list[tuple[Region, bytes, bytes]]:
        """Cut request range ``[start, end)`` (``end=b""``: unbounded) at region bounds.

        Returns:
            ``(region, clipped_start, clipped_end)`` in key order, covering the range.

        Raises:
            TypeError / ValueError: Bad keys or ``start >= end``.
            PDError / tikv_pd.errors.TimeoutError: Loading failed.

        """
        self._check_open()
        return await self._cache.load_and_split_range(
            start,
            end,
            self._load_start_key,
            range_loader=self._scan_load,
        )

    # -- stores --------------------------------------------------------------------------

    async def _load_store(self, store_id: int) -> Store:
        self._count("GetStore")
        return await self._pd.get_store(store_id, backoffer=self._backoffer("get_store"))

    async def get_store(self, store_id: int) -> Store:
        """Return store ``store_id`` (cached; ``GetStore`` once per id).

        Raises:
            PDError: PD failed or does not know the store.

        """
        self._check_open()
        return await self._cache.get_or_load_store(store_id, self._load_store)

    async def store_address(self, store_id: int) -> str:
        """Return the gRPC address of ``store_id``.

        Raises:
            StoreUnavailableError: The store is a tombstone or has no address.
            PDError: PD failed or does not know the store.

        """
        store = await self.get_store(store_id)
        if store.state == StoreState.TOMBSTONE or not store.address:
            self._cache.remove_store(store_id)
            raise StoreUnavailableError(
                store_id, store.address, PDError(f"store {store_id} is {store.state.name}")
            )
        return store.address

    async def reload_store(self, store_id: int) -> tuple[Store, bool]:
        """Ask PD for ``store_id`` again (after StoreNotMatch or a send failure).

        Returns:
            The store and whether its address changed (drop connections to the old one).

        """
        self._check_open()
        store = await self._load_store(store_id)
        changed = self._cache.put_store(store)
        return store, changed

    def invalidate_store(self, store_id: int) -> None:
        """Forget ``store_id``; the next lookup re-resolves it from PD."""
        self._cache.remove_store(store_id)

    # -- corrections from region errors ----------------------------------------------------

    def invalidate(self, region_id: int, reason: InvalidReason = InvalidReason.OTHER) -> None:
        """Drop ``region_id`` from the cache; the next lookup reloads it from PD."""
        self._cache.invalidate(region_id, reason)

    def invalidate_region(self, region_id: int, reason: InvalidReason) -> None:
        """Drop ``region_id`` from the cache (the request pipeline's name for it)."""
        self._cache.invalidate(region_id, reason)

    def on_not_leader(self, region: Region, leader: metapb_pb2.Peer | Peer | None) -> bool:
        """Apply a NotLeader hint: switch the cached leader without reloading.

        Returns:
            Whether the leader was switched (retry at once); False means back off.

        """
        hint: Peer | None
        if leader is None or (isinstance(leader, metapb_pb2.Peer) and not leader.store_id):
            hint = None
        elif isinstance(leader, metapb_pb2.Peer):
            hint = _to_peer(leader)
        else:
            hint = leader
        return self._cache.on_not_leader(region.id, hint, epoch=region.epoch)

    def on_epoch_not_match(
        self,
        region: Region,
        current_regions: Sequence[metapb_pb2.Region],
        store_id: int | None = None,
    ) -> bool:
        """Apply EpochNotMatch: cache TiKV's current regions (decoded like PD's).

        Returns:
            True when the current regions cover ``region``'s range (re-shard and retry
            at once); False means back off and relocate.

        """
        converted: list[Region] = []
        for meta in current_regions:
            try:
                converted.append(self.region_from_meta(meta))
            except PDError as exc:
                logger.warning("ignoring an undecodable region from EpochNotMatch: %s", exc)
        return self._cache.on_epoch_not_match(
            region.id,
            region.epoch,
            converted,
            store_id=store_id,
            needed=(region.start_key, region.end_key),
        )

    def on_send_fail(self, region: Region, store_id: int) -> None:
        """Record a transport failure: the region is reloaded on its next lookup."""
        self._cache.on_send_fail(region.id, store_id)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the background sweep of expired regions (idempotent; in the loop)."""
        self._check_open()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="tikv-pd-region-sweep"
            )

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                self._cache.sweep_expired(SWEEP_REGIONS_PER_ROUND)
            except Exception:  # a bug must not stop the sweeper silently
                logger.exception("region cache sweep failed")

    async def close(self) -> None:
        """Stop the background sweep; later lookups raise ClientClosedError."""
        self._closed = True
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for future in list(self._by_id_inflight.values()):
            future.cancel()
