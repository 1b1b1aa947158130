"""Raw KV: the raw engine shared by every store, and the ``Raw*`` command handlers.

The engine keeps one sorted map per column family (``default``, ``lock``, ``write``; an empty
cf name means ``default``, TiKV ``Storage::rawkv_cf``) of ``key -> (value, expire_ts)``, where
``expire_ts`` is a Unix time in seconds or ``None``. As in TiKV (``engine_traits/raw_ttl.rs``),
an entry whose ``expire_ts <= now`` is invisible; the clock is the cluster's settable clock.

The handlers follow ``src/server/service/kv.rs`` and ``src/storage/mod.rs``: first the API
version check (``check_api_version``), then the column family, then TTL rules (a TTL needs
V1TTL or V2 storage: "ttl is not enabled"), then the region checks; storage errors go into the
response's ``error`` text, region errors into ``region_error``. Under API v2 raw keys are
stored memcomparable-encoded, so region checks compare encoded keys, as TiKV does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tikv_proto import kvrpcpb_pb2

from tikv_mockstore._codec import decode_bytes_lenient, encode_bytes
from tikv_mockstore._sorted import SortedDict
from tikv_mockstore.handlers import StoreScope, handler, refused

__all__ = ["CFS", "RawEngine", "crc64_xz"]

#: The column families raw requests may name (API v1 / v1ttl).
CFS = ("default", "lock", "write")

_Entry = tuple[bytes, int | None]


def _make_crc64_table() -> list[int]:
    poly = 0xC96C5795D7870F42  # ECMA-182, reflected
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64_TABLE = _make_crc64_table()


def crc64_xz(*parts: bytes) -> int:
    """CRC-64/XZ of the concatenated ``parts``.

    CRC-64/XZ (ECMA-182 polynomial, reflected, init and final XOR all ones)

    of the concatenated ``parts`` — the digest of the ``crc64fast`` crate TiKV uses for
    checksums.

    """
    crc = 0xFFFFFFFFFFFFFFFF
    table = _CRC64_TABLE
    for data in parts:
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


class RawEngine:
    """A thread-safe raw key-value store with column families and TTLs."""

    def __init__(self) -> None:
        self._mu = threading.RLock()
        self._cfs: dict[str, SortedDict[bytes, _Entry]] = {cf: SortedDict() for cf in CFS}

    @staticmethod
    def _alive(entry: _Entry | None, now_s: int) -> bool:
        return entry is not None and (entry[1] is None or entry[1] > now_s)

    def _cf(self, cf: str) -> SortedDict[bytes, _Entry]:
        try:
            return self._cfs[cf or "default"]
        except KeyError:
            raise ValueError(f"invalid cf name: {cf}") from None

    def get_entry(self, cf: str, key: bytes, now_s: int) -> _Entry | None:
        """``(value, expire_ts)`` of a live key, or ``None``.

        A point read takes no lock: it is one atomic dict lookup, and writes replace entries
        whole, so it sees a key before or after any write (as a snapshot read would).
        """
        entry = self._cf(cf).get(key)
        return entry if entry is not None and (entry[1] is None or entry[1] > now_s) else None

    def get(self, cf: str, key: bytes, now_s: int) -> bytes | None:
        """The value of a live key, or ``None``."""
        entry = self.get_entry(cf, key, now_s)
        return entry[0] if entry is not None else None

    def batch_get(self, cf: str, keys: Iterable[bytes], now_s: int) -> list[tuple[bytes, bytes]]:
        """The ``(key, value)`` pairs of the live ``keys``, read under one lock (one snapshot)."""
        with self._mu:
            data = self._cf(cf)
            out = []
            for key in keys:
                entry = data.get(key)
                if entry is not None and (entry[1] is None or entry[1] > now_s):
                    out.append((key, entry[0]))
            return out

    def put(self, cf: str, key: bytes, value: bytes, expire_ts: int | None = None) -> None:
        """Store ``key = value`` (expiring at ``expire_ts`` seconds, if given)."""
        with self._mu:
            self._cf(cf)[key] = (value, expire_ts)

    def batch_put(
        self, cf: str, pairs: Sequence[tuple[bytes, bytes]], expire_ts: Sequence[int | None]
    ) -> None:
        """Store every pair atomically, with one expire time per pair."""
        with self._mu:
            data = self._cf(cf)
            for (k, v), exp in zip(pairs, expire_ts, strict=True):
                data[k] = (v, exp)

    def delete(self, cf: str, keys: Iterable[bytes]) -> None:
        """Delete ``keys`` (missing keys are fine)."""
        with self._mu:
            data = self._cf(cf)
            for k in keys:
                data.pop(k, None)

    def scan(
        self,
        cf: str,
        lower: bytes,
        upper: bytes | None,
        limit: int,
        now_s: int,
        *,
        reverse: bool = False,
        key_only: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Live pairs in ``[lower, upper)``.

        Live pairs with ``lower <= key < upper`` (``upper=None``: unbounded), at most
        ``limit``, ascending or (``reverse``) descending.
        """
        out: list[tuple[bytes, bytes]] = []
        if limit <= 0:
            return out
        with self._mu:
            data = self._cf(cf)
            keys = data.irange(lower, upper, inclusive=(True, False), reverse=reverse)
            for k in keys:
                entry = data[k]
                if not self._alive(entry, now_s):
                    continue
                out.append((k, b"" if key_only else entry[0]))
                if len(out) >= limit:
                    break
        return out

    def items(
        self, cf: str, lower: bytes, upper: bytes | None, now_s: int
    ) -> list[tuple[bytes, _Entry]]:
        """Every live ``(key, (value, expire_ts))`` in ``[lower, upper)``."""
        with self._mu:
            data = self._cf(cf)
            return [
                (k, data[k])
                for k in data.irange(lower, upper, inclusive=(True, False))
                if self._alive(data[k], now_s)
            ]

    def delete_range(self, cf: str, lower: bytes, upper: bytes | None) -> int:
        """Delete every key in ``[lower, upper)``; returns how many were removed."""
        with self._mu:
            data = self._cf(cf)
            doomed = list(data.irange(lower, upper, inclusive=(True, False)))
            for k in doomed:
                del data[k]
            return len(doomed)

    def destroy_where(self, predicate: Callable[[bytes], bool], lower: bytes) -> int:
        """Delete a leading run of keys from every column family.

        Delete, in every column family, the keys at or above ``lower`` for which
        ``predicate`` holds until it first fails (an ordered range test).
        """
        removed = 0
        with self._mu:
            for data in self._cfs.values():
                doomed = []
                for k in data.irange(lower, None):
                    if not predicate(k):
                        break
                    doomed.append(k)
                for k in doomed:
                    del data[k]
                removed += len(doomed)
        return removed

    def compare_and_swap(
        self,
        cf: str,
        key: bytes,
        previous: bytes | None,
        value: bytes,
        expire_ts: int | None,
        now_s: int,
        *,
        delete: bool = False,
    ) -> tuple[bytes | None, bool]:
        """Compare and swap atomically.

        Atomically: if the live value equals ``previous`` (``None``: the key must not
        exist), write ``value`` (or delete with ``delete=True``). Returns ``(old,
        swapped)``.
        """
        with self._mu:
            data = self._cf(cf)
            entry = data.get(key)
            old = entry[0] if entry is not None and self._alive(entry, now_s) else None
            if old != previous:
                return old, False
            if delete:
                data.pop(key, None)
            else:
                data[key] = (value, expire_ts)
            return old, True

    def clear(self) -> None:
        """Remove every key of every column family."""
        with self._mu:
            for data in self._cfs.values():
                data.clear()


# ---------------------------------------------------------------------------- handlers


def _ttl_enabled(scope: StoreScope) -> bool:
    return scope.api_version in (kvrpcpb_pb2.V1TTL, kvrpcpb_pb2.V2)


def _cf_error(scope: StoreScope, cf: str) -> str | None:
    """TiKV ``Storage::rawkv_cf``: v1 takes default / lock / write; v2 takes no cf at all."""
    if scope.api_version == kvrpcpb_pb2.V2:
        return None if not cf else f"cf is deprecated in API V2, cf name: {cf}"
    return None if not cf or cf in CFS else f"invalid cf name: {cf}"


def _encoded(scope: StoreScope) -> bool:
    """API v2 stores raw keys memcomparable-encoded; v1 stores them as they are."""
    return bool(scope.api_version == kvrpcpb_pb2.V2)


def _expire(scope: StoreScope, ttl: int) -> int | None:
    """TiKV ``ttl_to_expire_ts``: 0 means no TTL; otherwise now (seconds) + ttl."""
    if ttl == 0:
        return None
    return scope.now_ms() // 1000 + ttl


def _now_s(scope: StoreScope) -> int:
    return scope.now_ms() // 1000


def _precheck(
    scope: StoreScope,
    ctx: kvrpcpb_pb2.Context,
    cmd: str,
    cf: str,
    *,
    keys: Sequence[bytes] = (),
    ranges: Sequence[tuple[bytes, bytes]] = (),
    ttls: Sequence[int] = (),
    read: bool = False,
    ttl_first: bool = False,
) -> str | None:
    """The checks TiKV runs before the region checks; returns the error text.

    Always the API version first. A write then checks the column family and the TTLs (a
    single ``raw_put`` checks the TTL before the cf). A read (``read=True``) checks its
    column family only after taking the region snapshot: see :func:`_cf_error`, called by the
    read handlers after :meth:`StoreScope.check` (``src/storage/mod.rs``).
    """
    err: str | None = scope.check_api_version(ctx, cmd=cmd, txn=False, keys=keys, ranges=ranges)
    if err is not None or read:
        return err
    ttl_err = (
        "ttl is not enabled, but get put request with ttl"
        if not _ttl_enabled(scope) and any(ttls)
        else None
    )
    if ttl_first and ttl_err is not None:
        return ttl_err
    return _cf_error(scope, cf) or ttl_err


def _refused(
    scope: StoreScope,
    resp: Any,
    ctx: kvrpcpb_pb2.Context,
    err: str | None,
    *,
    keys: Sequence[bytes] = (),
    ranges: Sequence[tuple[bytes, bytes]] = (),
) -> bool:
    """A precheck error goes to ``resp.error``, else the region checks run; whether refused."""
    if err is not None:
        resp.error = err
        return True
    return refused(resp, scope.check(ctx, keys=keys, ranges=ranges, txn=_encoded(scope)))


def _read_refused(
    scope: StoreScope, resp: Any, ctx: kvrpcpb_pb2.Context, cmd: str, cf: str, key: bytes
) -> bool:
    """The checks of a single-key read: API version, region, then the column family.

    TiKV checks a read's column family only once it has the region snapshot
    (``src/storage/mod.rs``); errors go to ``resp.error``. Returns whether refused.
    """
    err = _precheck(scope, ctx, cmd, "", keys=[key], read=True)
    if err is None:
        if refused(resp, scope.check(ctx, keys=[key], txn=_encoded(scope))):
            return True
        err = _cf_error(scope, cf)
    if err is None:
        return False
    resp.error = err
    return True


def _scan_bounds(
    scope: StoreScope, ctx: kvrpcpb_pb2.Context, start: bytes, end: bytes, reverse: bool
) -> tuple[bytes, bytes | None]:
    """``[lower, upper)`` of a scan clipped to the region (``upper=None``: unbounded)."""
    region_lo, region_hi = scope.region_bounds(ctx, txn=_encoded(scope))
    if reverse:
        # start_key is the exclusive upper bound, end_key the inclusive lower bound.
        upper: bytes | None = start
        if region_hi and (upper is None or upper > region_hi):
            upper = region_hi
        lower = max(end, region_lo)
        return lower, upper
    upper = end or None
    if region_hi and (upper is None or upper > region_hi):
        upper = region_hi
    return max(start, region_lo), upper


@handler("RawGet")
def raw_get(scope: StoreScope, req: kvrpcpb_pb2.RawGetRequest) -> kvrpcpb_pb2.RawGetResponse:
    """RawGet: the value, or ``not_found``."""
    resp = kvrpcpb_pb2.RawGetResponse()
    if _read_refused(scope, resp, req.context, "raw_get", req.cf, req.key):
        return resp
    value = scope.raw.get(req.cf, req.key, _now_s(scope))
    if value is None:
        resp.not_found = True
    else:
        resp.value = value
    return resp


@handler("RawBatchGet")
def raw_batch_get(
    scope: StoreScope, req: kvrpcpb_pb2.RawBatchGetRequest
) -> kvrpcpb_pb2.RawBatchGetResponse:
    """RawBatchGet: the pairs of the keys that exist (missing keys are left out, as TiKV)."""
    resp = kvrpcpb_pb2.RawBatchGetResponse()
    keys = list(req.keys)
    err = _precheck(scope, req.context, "raw_batch_get", req.cf, keys=keys, read=True)
    if err is None and refused(resp, scope.check(req.context, keys=keys, txn=_encoded(scope))):
        return resp
    err = err or _cf_error(scope, req.cf)
    if err is not None:
        resp.pairs.add(error=kvrpcpb_pb2.KeyError(abort=err))
        return resp
    add = resp.pairs.add
    for key, value in scope.raw.batch_get(req.cf, keys, _now_s(scope)):
        add(key=key, value=value)
    return resp


@handler("RawPut")
def raw_put(scope: StoreScope, req: kvrpcpb_pb2.RawPutRequest) -> kvrpcpb_pb2.RawPutResponse:
    """RawPut (``for_cas`` takes TiKV's atomic path; the mock is atomic either way)."""
    resp = kvrpcpb_pb2.RawPutResponse()
    cmd = "raw_atomic_store" if req.for_cas else "raw_put"
    err = _precheck(scope, req.context, cmd, req.cf, keys=[req.key], ttls=[req.ttl], ttl_first=True)
    if _refused(scope, resp, req.context, err, keys=[req.key]):
        return resp
    scope.raw.put(req.cf, req.key, req.value, _expire(scope, req.ttl))
    return resp


@handler("RawBatchPut")
def raw_batch_put(
    scope: StoreScope, req: kvrpcpb_pb2.RawBatchPutRequest
) -> kvrpcpb_pb2.RawBatchPutResponse:
    """RawBatchPut: ``ttls`` has one TTL per pair, or one for all pairs (TiKV kv.rs)."""
    resp = kvrpcpb_pb2.RawBatchPutResponse()
    pairs = [(p.key, p.value) for p in req.pairs]
    if not req.ttls:
        ttls = [0] * len(pairs)
    elif len(req.ttls) == 1:
        ttls = [req.ttls[0]] * len(pairs)
    else:
        ttls = list(req.ttls)
    cmd = "raw_atomic_store" if req.for_cas else "raw_batch_put"
    keys = [k for k, _ in pairs]
    err = _precheck(scope, req.context, cmd, req.cf, keys=keys, ttls=ttls)
    if err is None and _ttl_enabled(scope) and len(ttls) != len(pairs):
        err = "The length of ttls does not equal to the length of pairs"
    if _refused(scope, resp, req.context, err, keys=keys):
        return resp
    scope.raw.batch_put(req.cf, pairs, [_expire(scope, t) for t in ttls])
    return resp


@handler("RawDelete")
def raw_delete(
    scope: StoreScope, req: kvrpcpb_pb2.RawDeleteRequest
) -> kvrpcpb_pb2.RawDeleteResponse:
    """RawDelete."""
    resp = kvrpcpb_pb2.RawDeleteResponse()
    cmd = "raw_atomic_store" if req.for_cas else "raw_delete"
    err = _precheck(scope, req.context, cmd, req.cf, keys=[req.key])
    if _refused(scope, resp, req.context, err, keys=[req.key]):
        return resp
    scope.raw.delete(req.cf, [req.key])
    return resp


@handler("RawBatchDelete")
def raw_batch_delete(
    scope: StoreScope, req: kvrpcpb_pb2.RawBatchDeleteRequest
) -> kvrpcpb_pb2.RawBatchDeleteResponse:
    """RawBatchDelete."""
    resp = kvrpcpb_pb2.RawBatchDeleteResponse()
    keys = list(req.keys)
    cmd = "raw_atomic_store" if req.for_cas else "raw_batch_delete"
    err = _precheck(scope, req.context, cmd, req.cf, keys=keys)
    if _refused(scope, resp, req.context, err, keys=keys):
        return resp
    scope.raw.delete(req.cf, keys)
    return resp


def _range_for_api_check(start: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
    return [(start, end)] if end else []


@handler("RawScan")
def raw_scan(scope: StoreScope, req: kvrpcpb_pb2.RawScanRequest) -> kvrpcpb_pb2.RawScanResponse:
    """RawScan, clipped to the region.

    RawScan: forward ``[start_key, end_key)``; reverse from ``start_key`` (exclusive) down to
    ``end_key`` (inclusive). An empty ``end_key`` is unbounded; the scan stops at the region.
    """
    resp = kvrpcpb_pb2.RawScanResponse()
    start, end = req.start_key, req.end_key
    err = _precheck(
        scope,
        req.context,
        "raw_scan",
        req.cf,
        keys=[] if end else [start],
        ranges=_range_for_api_check(start, end),
        read=True,
    )
    if err is None:
        region_err = scope.check(
            req.context, ranges=[(start, end)], txn=_encoded(scope), reverse=req.reverse
        )
        if refused(resp, region_err):
            return resp
        err = _cf_error(scope, req.cf)
    if err is not None:
        resp.kvs.add(error=kvrpcpb_pb2.KeyError(abort=err))
        return resp
    lower, upper = _scan_bounds(scope, req.context, start, end, req.reverse)
    for k, v in scope.raw.scan(
        req.cf, lower, upper, req.limit, _now_s(scope), reverse=req.reverse, key_only=req.key_only
    ):
        resp.kvs.add(key=k, value=v)
    return resp


@handler("RawBatchScan")
def raw_batch_scan(
    scope: StoreScope, req: kvrpcpb_pb2.RawBatchScanRequest
) -> kvrpcpb_pb2.RawBatchScanResponse:
    """RawBatchScan: each range scanned like RawScan, at most ``each_limit`` pairs each."""
    resp = kvrpcpb_pb2.RawBatchScanResponse()
    ranges = [(r.start_key, r.end_key) for r in req.ranges]
    err = _precheck(
        scope,
        req.context,
        "raw_batch_scan",
        req.cf,
        ranges=[r for r in ranges if r[1]],
        keys=[r[0] for r in ranges if not r[1]],
        read=True,
    )
    if err is None:
        region_err = scope.check(
            req.context, ranges=ranges, txn=_encoded(scope), reverse=req.reverse
        )
        if refused(resp, region_err):
            return resp
        err = _cf_error(scope, req.cf)
    if err is None and not _ranges_ordered(ranges, req.reverse):
        err = "Invalid KeyRanges"
    if err is not None:
        resp.kvs.add(error=kvrpcpb_pb2.KeyError(abort=err))
        return resp
    now = _now_s(scope)
    for start, end in ranges:
        lower, upper = _scan_bounds(scope, req.context, start, end, req.reverse)
        for k, v in scope.raw.scan(
            req.cf, lower, upper, req.each_limit, now, reverse=req.reverse, key_only=req.key_only
        ):
            resp.kvs.add(key=k, value=v)
    return resp


def _ranges_ordered(ranges: Sequence[tuple[bytes, bytes]], reverse: bool) -> bool:
    """TiKV ``check_key_ranges``: each range well formed and the ranges in scan order."""
    for i, (start, end) in enumerate(ranges):
        if reverse:
            if end and not start > end:
                return False
            if i > 0 and ranges[i - 1][1] and start > ranges[i - 1][1]:
                return False
        else:
            if end and not start < end:
                return False
            if i > 0 and (not ranges[i - 1][1] or start < ranges[i - 1][1]):
                return False
    return True


@handler("RawDeleteRange")
def raw_delete_range(
    scope: StoreScope, req: kvrpcpb_pb2.RawDeleteRangeRequest
) -> kvrpcpb_pb2.RawDeleteRangeResponse:
    """RawDeleteRange within the region.

    RawDeleteRange: delete ``[start_key, end_key)`` within the region (empty end: to the
    region's end).
    """
    resp = kvrpcpb_pb2.RawDeleteRangeResponse()
    start, end = req.start_key, req.end_key
    err = _precheck(
        scope,
        req.context,
        "raw_delete_range",
        req.cf,
        keys=[] if end else [start],
        ranges=_range_for_api_check(start, end),
    )
    if err is None and end and start >= end:
        err = "Invalid KeyRanges"
    if _refused(scope, resp, req.context, err, ranges=[(start, end)]):
        return resp
    lower, upper = _scan_bounds(scope, req.context, start, end, False)
    scope.raw.delete_range(req.cf, lower, upper)
    return resp


@handler("RawGetKeyTTL")
def raw_get_key_ttl(
    scope: StoreScope, req: kvrpcpb_pb2.RawGetKeyTTLRequest
) -> kvrpcpb_pb2.RawGetKeyTTLResponse:
    """RawGetKeyTTL: seconds left (0: no TTL), or ``not_found``."""
    resp = kvrpcpb_pb2.RawGetKeyTTLResponse()
    if _read_refused(scope, resp, req.context, "raw_get_key_ttl", req.cf, req.key):
        return resp
    now = _now_s(scope)
    entry = scope.raw.get_entry(req.cf, req.key, now)
    if entry is None:
        resp.not_found = True
    elif entry[1] is not None:
        resp.ttl = entry[1] - now
    return resp


@handler("RawCompareAndSwap")
def raw_compare_and_swap(
    scope: StoreScope, req: kvrpcpb_pb2.RawCASRequest
) -> kvrpcpb_pb2.RawCASResponse:
    """RawCompareAndSwap.

    RawCompareAndSwap: swap when the current value equals ``previous_value`` (or, with
    ``previous_not_exist``, when there is none); reports the previous value either way.
    """
    resp = kvrpcpb_pb2.RawCASResponse()
    err = _precheck(
        scope, req.context, "raw_compare_and_swap", req.cf, keys=[req.key], ttls=[req.ttl]
    )
    if _refused(scope, resp, req.context, err, keys=[req.key]):
        return resp
    previous = None if req.previous_not_exist else req.previous_value
    old, succeed = scope.raw.compare_and_swap(
        req.cf,
        req.key,
        previous,
        req.value,
        _expire(scope, req.ttl),
        _now_s(scope),
        delete=req.delete,
    )
    resp.succeed = succeed
    if old is None:
        resp.previous_not_exist = True
    else:
        resp.previous_value = old
    return resp


@handler("RawChecksum")
def raw_checksum(
    scope: StoreScope, req: kvrpcpb_pb2.RawChecksumRequest
) -> kvrpcpb_pb2.RawChecksumResponse:
    """RawChecksum (Crc64_Xor).

    RawChecksum (Crc64_Xor): XOR over pairs of crc64(user key + user value); ``total_bytes``
    sums their lengths (TiKV ``raw_checksum_ranges``, default cf). For V1TTL and V2 TiKV reads
    through ``RawEncodeSnapshot``, which strips the stored TTL / flag suffixes from values, so
    the checksum never depends on expiry times.
    """
    resp = kvrpcpb_pb2.RawChecksumResponse()
    if req.algorithm != kvrpcpb_pb2.Crc64_Xor:
        resp.error = f"unknown checksum algorithm {req.algorithm}"
        return resp
    ranges = [(r.start_key, r.end_key) for r in req.ranges]
    err: str | None = scope.check_api_version(
        req.context, cmd="raw_checksum", txn=False, ranges=ranges
    )
    if _refused(scope, resp, req.context, err, ranges=ranges):
        return resp
    now = _now_s(scope)
    checksum = total_kvs = total_bytes = 0
    for start, end in ranges:
        lower, upper = _scan_bounds(scope, req.context, start, end, False)
        for key, (value, _expire_ts) in scope.raw.items("default", lower, upper, now):
            checksum ^= crc64_xz(key, value)
            total_kvs += 1
            total_bytes += len(key) + len(value)
    resp.checksum = checksum
    resp.total_kvs = total_kvs
    resp.total_bytes = total_bytes
    return resp


@handler("UnsafeDestroyRange")
def unsafe_destroy_range(
    scope: StoreScope, req: kvrpcpb_pb2.UnsafeDestroyRangeRequest
) -> kvrpcpb_pb2.UnsafeDestroyRangeResponse:
    """UnsafeDestroyRange: wipe a key range from the store.

    UnsafeDestroyRange: wipe ``[start_key, end_key)`` from every column family of the store,
    without region checks (TiKV's GC worker). TiKV takes the keys as user keys and deletes the
    encoded range, so transactional data of those keys goes, and raw data whose (v1, plain) key
    falls between the encoded bounds.
    """
    resp = kvrpcpb_pb2.UnsafeDestroyRangeResponse()
    start, end = req.start_key, req.end_key
    if not start or not end:
        resp.error = "UnsafeDestroyRange needs a non-empty start_key and end_key"
        return resp
    lo, hi = encode_bytes(start), encode_bytes(end)
    if _encoded(scope):
        scope.raw.destroy_where(lambda k: encode_bytes(k) < hi, decode_bytes_lenient(lo))
    else:
        scope.raw.destroy_where(lambda k: k < hi, lo)
    engine = scope.engine
    if engine is not None:
        engine.unsafe_destroy_range(start, end)
    return resp


@handler("SplitRegion")
def split_region(
    scope: StoreScope, req: kvrpcpb_pb2.SplitRegionRequest
) -> kvrpcpb_pb2.SplitRegionResponse:
    """SplitRegion: batch-split the context's region.

    SplitRegion: batch-split the context's region at the given keys (memcomparable-encoded
    unless ``is_raw_kv`` under API v1) and return the resulting regions in key order.
    """
    resp = kvrpcpb_pb2.SplitRegionResponse()
    keys = list(req.split_keys) or ([req.split_key] if req.split_key else [])
    encoded = not req.is_raw_kv or _encoded(scope)
    if not keys:
        resp.errors.add(abort="SplitRegion: no split key")
        return resp
    region_err = scope.check(req.context, keys=keys, txn=encoded)
    if refused(resp, region_err):
        return resp
    cluster = scope.cluster
    boundary_keys = [encode_bytes(k) if encoded else k for k in keys]
    region = cluster.region_by_id(req.context.region_id)
    if region is not None and req.context.region_epoch.conf_ver != region.conf_ver:
        # An admin split checks conf_ver as well as version (raftstore
        # ``admin_cmd_epoch_lookup``: BatchSplit checks both).
        resp.region_error.message = f"epoch of region {region.id} changed: conf_ver differs"
        resp.region_error.epoch_not_match.current_regions.append(region.to_pb())
        return resp
    if region is not None and region.start_key in boundary_keys:
        resp.errors.add(abort=f"invalid split key: {region.start_key!r} is the region start")
        return resp
    regions = cluster.split_region(req.context.region_id, boundary_keys)
    for r in regions:
        resp.regions.append(r.to_pb())
    if len(regions) == 2:
        resp.left.CopyFrom(regions[0].to_pb())
        resp.right.CopyFrom(regions[1].to_pb())
    return resp
