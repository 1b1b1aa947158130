"""Request builders and response readers for TiKV's raw commands (pure, no I/O).

Each ``build_*`` function returns the ``kvrpcpb`` request of one raw command with every
field the command needs, except ``context`` (the request pipeline fills region, epoch,
peer, API version and keyspace). Keys given to the builders are wire keys: in API v2 they
already carry the keyspace prefix.

Each ``read_*`` function turns a response into a Python value, raising
:class:`~tikv_raw.RawKVError` when TiKV refused the command. Region errors are not
handled here: the pipeline deals with them before a response reaches these readers.

TiKV facts encoded here:

* ``cf=""`` means the default column family (``Storage::rawkv_cf``).
* ``for_cas`` routes writes through TiKV's "atomic" single-row transaction path
  (``raw_batch_put_atomic`` and friends); client-go sets it on Put, BatchPut, Delete and
  BatchDelete when the client is in atomic mode. All writers of a key must agree on the
  mode, or CAS loses linearizability.
* ``RawBatchPut``: TiKV applies ``ttls`` per pair, and a single-element ``ttls`` to every
  pair (compatibility with old clients); an empty ``ttls`` means no TTL. Old TiKV versions
  only read the scalar ``ttl`` field, so it is also set when all pairs share one TTL.
* ``RawScan`` with ``reverse=true`` reads ``start_key`` as the *exclusive upper* bound and
  ``end_key`` as the *inclusive lower* bound, and returns keys in descending order. An
  empty ``end_key`` means "unbounded" in both directions; an empty ``start_key`` is the
  smallest key, so a reverse scan needs a real upper key even in the last region: we send
  :data:`REVERSE_SCAN_UNBOUNDED_UPPER`, a key above every key TiKV accepts by default.
* ``RawScanResponse`` / ``RawBatchGetResponse`` have no ``error`` field: a failure comes
  back as a pair whose ``error`` (a ``kvrpcpb.KeyError``, usually ``abort``) is set.
* ``RawChecksumRequest`` has no column family: TiKV checksums the default one only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Protocol

from tikv_proto import kvrpcpb_pb2

from tikv_raw._types import Checksum, RawKVError

__all__ = [
    "REVERSE_SCAN_UNBOUNDED_UPPER",
    "build_batch_delete",
    "build_batch_get",
    "build_batch_put",
    "build_cas",
    "build_checksum",
    "build_delete",
    "build_delete_range",
    "build_get",
    "build_get_key_ttl",
    "build_put",
    "build_scan",
    "check_pairs_errors",
    "check_response_error",
    "read_batch_get",
    "read_cas",
    "read_checksum",
    "read_get",
    "read_key_ttl",
    "read_scan",
]

#: TiKV refuses keys longer than ``storage.max-key-size`` (8 KiB by default), and every
#: key of at most 8192 bytes sorts below 8193 bytes of ``0xff``: the upper bound of a
#: reverse scan that has none.
REVERSE_SCAN_UNBOUNDED_UPPER: Final = b"\xff" * 8193


def build_get(key: bytes, cf: str) -> kvrpcpb_pb2.RawGetRequest:
    """``RawGet`` of one key."""
    return kvrpcpb_pb2.RawGetRequest(key=key, cf=cf)


def build_batch_get(keys: Sequence[bytes], cf: str) -> kvrpcpb_pb2.RawBatchGetRequest:
    """``RawBatchGet`` of keys of one region."""
    return kvrpcpb_pb2.RawBatchGetRequest(keys=keys, cf=cf)


def build_put(
    key: bytes, value: bytes, cf: str, *, ttl: int, for_cas: bool
) -> kvrpcpb_pb2.RawPutRequest:
    """``RawPut``; ``ttl`` in seconds, 0 for none."""
    return kvrpcpb_pb2.RawPutRequest(key=key, value=value, cf=cf, ttl=ttl, for_cas=for_cas)


def build_batch_put(
    pairs: Sequence[tuple[bytes, bytes]], ttls: Sequence[int], cf: str, *, for_cas: bool
) -> kvrpcpb_pb2.RawBatchPutRequest:
    """``RawBatchPut`` of pairs of one region with their TTLs (0 = none), in pair order."""
    if len(ttls) != len(pairs):
        raise ValueError(f"got {len(ttls)} ttls for {len(pairs)} pairs")
    request = kvrpcpb_pb2.RawBatchPutRequest(
        pairs=[kvrpcpb_pb2.KvPair(key=k, value=v) for k, v in pairs], cf=cf, for_cas=for_cas
    )
    if any(ttls):
        request.ttls.extend(ttls)
        if len(set(ttls)) == 1:
            request.ttl = ttls[0]
    return request


def build_delete(key: bytes, cf: str, *, for_cas: bool) -> kvrpcpb_pb2.RawDeleteRequest:
    """``RawDelete`` of one key."""
    return kvrpcpb_pb2.RawDeleteRequest(key=key, cf=cf, for_cas=for_cas)


def build_batch_delete(
    keys: Sequence[bytes], cf: str, *, for_cas: bool
) -> kvrpcpb_pb2.RawBatchDeleteRequest:
    """``RawBatchDelete`` of keys of one region."""
    return kvrpcpb_pb2.RawBatchDeleteRequest(keys=keys, cf=cf, for_cas=for_cas)


def build_delete_range(start: bytes, end: bytes, cf: str) -> kvrpcpb_pb2.RawDeleteRangeRequest:
    """``RawDeleteRange`` of ``[start, end)`` inside one region (``end=b""``: region end).

    TiKV's raftstore refuses a delete range whose end lies beyond the region, so the
    caller clips ``end`` to the region it sends to.
    """
    return kvrpcpb_pb2.RawDeleteRangeRequest(start_key=start, end_key=end, cf=cf)


def build_scan(
    lower: bytes,
    upper: bytes | None,
    limit: int,
    cf: str,
    *,
    key_only: bool,
    reverse: bool,
) -> kvrpcpb_pb2.RawScanRequest:
    """``RawScan`` of ``[lower, upper)`` (``upper=None``: unbounded), in either direction.

    The range is always given in natural order; for a reverse scan the bounds are swapped
    into TiKV's order (``start_key`` = exclusive upper, ``end_key`` = inclusive lower).

    Example:
        >>> r = build_scan(b"a", b"m", 10, "", key_only=False, reverse=True)
        >>> (r.start_key, r.end_key, r.reverse)
        (b'm', b'a', True)

    """
    if reverse:
        start_key = REVERSE_SCAN_UNBOUNDED_UPPER if upper is None else upper
        end_key = lower
    else:
        start_key = lower
        end_key = b"" if upper is None else upper
    return kvrpcpb_pb2.RawScanRequest(
        start_key=start_key,
        end_key=end_key,
        limit=limit,
        key_only=key_only,
        cf=cf,
        reverse=reverse,
    )


def build_get_key_ttl(key: bytes, cf: str) -> kvrpcpb_pb2.RawGetKeyTTLRequest:
    """``RawGetKeyTTL`` of one key."""
    return kvrpcpb_pb2.RawGetKeyTTLRequest(key=key, cf=cf)


def build_cas(
    key: bytes, expected: bytes | None, new: bytes, cf: str, *, ttl: int
) -> kvrpcpb_pb2.RawCASRequest:
    """``RawCompareAndSwap``: write ``new`` if the current value equals ``expected``.

    ``expected=None`` asks "the key must not exist" (``previous_not_exist``), which is
    different from ``expected=b""`` (the key exists with an empty value).
    """
    request = kvrpcpb_pb2.RawCASRequest(key=key, value=new, cf=cf, ttl=ttl)
    if expected is None:
        request.previous_not_exist = True
    else:
        request.previous_value = expected
    return request


def build_checksum(ranges: Iterable[tuple[bytes, bytes]]) -> kvrpcpb_pb2.RawChecksumRequest:
    """``RawChecksum`` (CRC64-XOR) of ranges inside one region (``b""`` end: region end)."""
    return kvrpcpb_pb2.RawChecksumRequest(
        algorithm=kvrpcpb_pb2.Crc64_Xor,
        ranges=[kvrpcpb_pb2.KeyRange(start_key=s, end_key=e) for s, e in ranges],
    )


# --- response readers ---------------------------------------------------------------


class _HasError(Protocol):
    @property
    def error(self) -> str: ...


def check_response_error(command: str, response: _HasError) -> None:
    """Raise :class:`RawKVError` when ``response.error`` is set."""
    if response.error:
        raise RawKVError(command, response.error)


def _key_error_text(error: kvrpcpb_pb2.KeyError) -> str:
    # Raw commands fail with ``abort`` (TiKV formats any storage error into it);
    # fall back to the whole message for anything else.
    if error.abort:
        return error.abort
    if error.retryable:
        return error.retryable
    return str(error).strip().replace("\n", " ")


def check_pairs_errors(command: str, pairs: Iterable[kvrpcpb_pb2.KvPair]) -> None:
    """Raise :class:`RawKVError` for the first pair that carries a key error."""
    for pair in pairs:
        if pair.HasField("error"):
            raise RawKVError(command, _key_error_text(pair.error))


def read_get(response: kvrpcpb_pb2.RawGetResponse) -> bytes | None:
    """The value of a ``RawGet`` (``None`` when not found; ``b""`` is a real value)."""
    check_response_error("RawGet", response)
    if response.not_found:
        return None
    return response.value


def read_batch_get(
    responses: Iterable[kvrpcpb_pb2.RawBatchGetResponse],
) -> dict[bytes, bytes]:
    """Merge ``RawBatchGet`` responses into ``{key: value}``; missing keys are absent."""
    out: dict[bytes, bytes] = {}
    for response in responses:
        check_pairs_errors("RawBatchGet", response.pairs)
        for pair in response.pairs:
            out[pair.key] = pair.value
    return out


def read_scan(
    responses: Iterable[kvrpcpb_pb2.RawScanResponse], limit: int | None
) -> list[tuple[bytes, bytes]]:
    """Concatenate ``RawScan`` responses (already in scan order), keeping ``limit`` pairs.

    Key-only scans carry empty values.
    """
    out: list[tuple[bytes, bytes]] = []
    for response in responses:
        check_pairs_errors("RawScan", response.kvs)
        for pair in response.kvs:
            if limit is not None and len(out) >= limit:
                return out
            out.append((pair.key, pair.value))
    return out


def read_key_ttl(response: kvrpcpb_pb2.RawGetKeyTTLResponse) -> int | None:
    """Seconds left of a key's TTL: ``None`` if absent, ``0`` if it never expires.

    TiKV reports an expired key as not found, so a key with a TTL has at least 1 second
    left and 0 unambiguously means "no TTL".
    """
    check_response_error("RawGetKeyTTL", response)
    if response.not_found:
        return None
    return int(response.ttl)


def read_cas(response: kvrpcpb_pb2.RawCASResponse) -> tuple[bytes | None, bool]:
    """``(previous value or None if the key did not exist, whether the swap happened)``."""
    check_response_error("RawCompareAndSwap", response)
    previous = None if response.previous_not_exist else response.previous_value
    return previous, response.succeed


def read_checksum(responses: Iterable[kvrpcpb_pb2.RawChecksumResponse]) -> Checksum:
    """XOR the per-region checksums and add up the counts."""
    total = Checksum()
    for response in responses:
        check_response_error("RawChecksum", response)
        total = total.merge(Checksum(response.checksum, response.total_kvs, response.total_bytes))
    return total
