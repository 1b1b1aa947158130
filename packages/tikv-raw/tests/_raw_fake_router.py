"""An in-memory test double of the request pipeline: a tiny TiKV behind the Router seam.

It executes the raw client's kvrpcpb requests against a dict per column family, routed by
a list of region boundaries that tests can split at any time, with TiKV's semantics: scans
clipped to the region, reverse scans taking ``start_key`` as the exclusive upper bound,
TTLs against a settable clock, CAS, CRC64-XOR checksums of the default column family.
Every request is recorded, so tests can check batching. It exists so the client's own
logic (sharding, region walks, limits, merging) is tested without a network; the same
tests run against ``tikv_mockstore.MockCluster`` over real gRPC.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from tikv_pd.backoff import Backoffer
from tikv_pd.request import Ambiguity
from tikv_proto import kvrpcpb_pb2 as pb
from tikv_raw._router import BuildForKeys, BuildForRange, Span

_POLY = 0xC96C5795D7870F42  # ECMA-182, reflected


def crc64_xz(data: bytes) -> int:
    """CRC-64/XZ, bit by bit (check value of b"123456789": 0x995DC9BBDF1939FA)."""
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


class FakeRouter:
    """A single-process stand-in for the pipeline plus a TiKV cluster."""

    def __init__(self, splits: Sequence[bytes] = (), *, ttl_enabled: bool = True) -> None:
        self.bounds: list[bytes] = sorted(set(splits))
        self.data: dict[str, dict[bytes, tuple[bytes, float | None]]] = {}
        self.now = 1_000_000.0
        self.ttl_enabled = ttl_enabled
        self.requests: list[tuple[str, Any]] = []
        self.ambiguities: list[tuple[str, Ambiguity]] = []
        self.closed = False

    # -- cluster control -------------------------------------------------------------

    def split(self, key: bytes) -> None:
        if key and key not in self.bounds:
            bisect.insort(self.bounds, key)

    def region_of(self, key: bytes) -> Span:
        i = bisect.bisect_right(self.bounds, key)
        start = self.bounds[i - 1] if i > 0 else b""
        end = self.bounds[i] if i < len(self.bounds) else b""
        return Span(start, end)

    def region_before(self, end: bytes) -> Span:
        """The region holding the keys just below ``end`` (b"": the last region)."""
        if not end:
            return self.region_of(self.bounds[-1] if self.bounds else b"")
        i = bisect.bisect_left(self.bounds, end)
        start = self.bounds[i - 1] if i > 0 else b""
        stop = self.bounds[i] if i < len(self.bounds) else b""
        return Span(start, stop)

    def _cf(self, cf: str) -> dict[bytes, tuple[bytes, float | None]]:
        return self.data.setdefault(cf or "default", {})

    def _alive(self, cf: str, key: bytes) -> bytes | None:
        entry = self._cf(cf).get(key)
        if entry is None:
            return None
        value, expire = entry
        if expire is not None and expire <= self.now:
            del self._cf(cf)[key]
            return None
        return value

    def _store(self, cf: str, key: bytes, value: bytes, ttl: int) -> None:
        self._cf(cf)[key] = (value, self.now + ttl if ttl else None)

    def _sorted_alive(self, cf: str) -> list[tuple[bytes, bytes]]:
        out = []
        for key in sorted(self._cf(cf)):
            value = self._alive(cf, key)
            if value is not None:
                out.append((key, value))
        return out

    # -- TiKV command semantics -------------------------------------------------------

    def execute(self, command: str, req: Any, region: Span) -> Any:
        self.requests.append((command, req))

        def inside(key: bytes) -> None:
            assert key >= region.start, (command, key, region)
            assert not region.end or key < region.end, (command, key, region)

        if command == "RawGet":
            inside(req.key)
            value = self._alive(req.cf, req.key)
            if value is None:
                return pb.RawGetResponse(not_found=True)
            return pb.RawGetResponse(value=value)
        if command == "RawBatchGet":
            pairs = []
            for key in req.keys:
                inside(key)
                value = self._alive(req.cf, key)
                if value is not None:
                    pairs.append(pb.KvPair(key=key, value=value))
            return pb.RawBatchGetResponse(pairs=pairs)
        if command == "RawPut":
            inside(req.key)
            if req.ttl and not self.ttl_enabled:
                return pb.RawPutResponse(error="TTL is not enabled")
            self._store(req.cf, req.key, req.value, req.ttl)
            return pb.RawPutResponse()
        if command == "RawBatchPut":
            ttls = list(req.ttls) or [0] * len(req.pairs)
            if len(ttls) == 1:
                ttls = ttls * len(req.pairs)
            if len(ttls) != len(req.pairs):
                return pb.RawBatchPutResponse(error="ttls length does not match pairs")
            if any(ttls) and not self.ttl_enabled:
                return pb.RawBatchPutResponse(error="TTL is not enabled")
            for pair, ttl in zip(req.pairs, ttls, strict=True):
                inside(pair.key)
                self._store(req.cf, pair.key, pair.value, ttl)
            return pb.RawBatchPutResponse()
        if command == "RawDelete":
            inside(req.key)
            self._cf(req.cf).pop(req.key, None)
            return pb.RawDeleteResponse()
        if command == "RawBatchDelete":
            for key in req.keys:
                inside(key)
                self._cf(req.cf).pop(key, None)
            return pb.RawBatchDeleteResponse()
        if command == "RawDeleteRange":
            inside(req.start_key)
            end = req.end_key
            # TiKV's raftstore refuses a delete range that leaves the region.
            assert not region.end or (end and end <= region.end), (req, region)
            assert not end or req.start_key < end
            for key in list(self._cf(req.cf)):
                if key >= req.start_key and (not end or key < end):
                    del self._cf(req.cf)[key]
            return pb.RawDeleteRangeResponse()
        if command == "RawScan":
            return self._scan(req, region)
        if command == "RawGetKeyTTL":
            inside(req.key)
            if self._alive(req.cf, req.key) is None:
                return pb.RawGetKeyTTLResponse(not_found=True)
            expire = self._cf(req.cf)[req.key][1]
            left = 0 if expire is None else max(1, int(expire - self.now + 0.999999))
            return pb.RawGetKeyTTLResponse(ttl=left)
        if command == "RawCompareAndSwap":
            inside(req.key)
            if req.ttl and not self.ttl_enabled:
                return pb.RawCASResponse(error="TTL is not enabled")
            current = self._alive(req.cf, req.key)
            matches = current is None if req.previous_not_exist else current == req.previous_value
            if matches:
                self._store(req.cf, req.key, req.value, req.ttl)
            if current is None:
                return pb.RawCASResponse(succeed=matches, previous_not_exist=True)
            return pb.RawCASResponse(succeed=matches, previous_value=current)
        if command == "RawChecksum":
            checksum = kvs = size = 0
            for r in req.ranges:
                inside(r.start_key)
                for key, value in self._sorted_alive("default"):
                    if key >= r.start_key and (not r.end_key or key < r.end_key):
                        if region.end and key >= region.end:
                            continue
                        checksum ^= crc64_xz(key + value)
                        kvs += 1
                        size += len(key) + len(value)
            return pb.RawChecksumResponse(checksum=checksum, total_kvs=kvs, total_bytes=size)
        raise AssertionError(f"unexpected command {command}")

    def _scan(self, req: pb.RawScanRequest, region: Span) -> pb.RawScanResponse:
        items = self._sorted_alive(req.cf)
        if req.reverse:
            upper, lower = req.start_key, req.end_key
            if region.end and upper > region.end:
                upper = region.end
            lower = max(lower, region.start)
            chosen = [(k, v) for k, v in reversed(items) if k < upper and k >= lower]
        else:
            lower, upper = req.start_key, req.end_key
            assert lower >= region.start
            if region.end and (not upper or upper > region.end):
                upper = region.end
            chosen = [(k, v) for k, v in items if k >= lower and (not upper or k < upper)]
        chosen = chosen[: req.limit]
        return pb.RawScanResponse(
            kvs=[pb.KvPair(key=k, value=b"" if req.key_only else v) for k, v in chosen]
        )

    # -- the Router protocol ----------------------------------------------------------

    async def call_key(
        self, command: str, key: bytes, request: Any, *, ambiguity: Ambiguity, bo: Backoffer
    ) -> Any:
        self.ambiguities.append((command, ambiguity))
        return self.execute(command, request, self.region_of(key))

    async def call_keys(
        self, command: str, keys: Sequence[bytes], build: BuildForKeys, *, bo: Backoffer
    ) -> list[Any]:
        groups: dict[Span, list[bytes]] = {}
        for key in keys:
            groups.setdefault(self.region_of(key), []).append(key)
        out = []
        for span, group in groups.items():
            for _, request in build(group):
                out.append(self.execute(command, request, span))
        return out

    def _overlapping(self, start: bytes, end: bytes) -> list[Span]:
        spans = []
        span = self.region_of(start)
        while True:
            spans.append(span)
            if not span.end or (end and span.end >= end):
                return spans
            span = self.region_of(span.end)

    async def call_range(
        self, command: str, start: bytes, end: bytes, build: BuildForRange, *, bo: Backoffer
    ) -> list[Any]:
        out = []
        for span in self._overlapping(start, end):
            lo = max(start, span.start)
            hi = end if not span.end or (end and end < span.end) else span.end
            out.append(self.execute(command, build(lo, hi), span))
        return out

    async def call_first_region(
        self,
        command: str,
        start: bytes,
        end: bytes,
        build: BuildForRange,
        *,
        reverse: bool,
        bo: Backoffer,
    ) -> tuple[list[Any], tuple[bytes, bytes]]:
        span = self.region_before(end) if reverse else self.region_of(start)
        lo = max(start, span.start)
        hi = end if not span.end or (end and end < span.end) else span.end
        return [self.execute(command, build(lo, hi), span)], (lo, hi)

    def set_request_control(self, context: Any, interceptor: Any) -> None:
        # No wire here: keep what the client asked for, so tests can check it.
        self.request_control = (context, interceptor)

    async def close(self) -> None:
        self.closed = True
