"""Speed and memory of the transaction write buffer (client-go ``memdb_bench_test.go``).

``python benchmarks/membuffer.py`` times :class:`tikv_txn.membuffer.MemBuffer` on the
workloads of client-go's memdb benchmarks, in this process, without a cluster (the buffer
is pure client-side state, so a cluster would only add noise):

=====================  =========================================================================
workload               one operation (``--keys`` N, default 100,000)
=====================  =========================================================================
``put_seq``            ``set`` of a 16-byte big-endian sequential key, 128-byte value (Put)
``put_random``         the same with random keys (PutRandom)
``put_large_key``      ``set`` of a 128-byte key (its first 4 bytes little-endian) (LargeIndex)
``get_seq``            ``get`` of each key of a full ``put_seq`` buffer, in order (Get)
``get_random``         ``get`` of each key of a full ``put_random`` buffer (GetRandom)
``set_get_random``     ``set`` then ``get`` of 8-byte keys in random order (MemDbBufferRandom)
``set_get_long_key``   ``set`` then ``get`` of 1 KiB keys sharing a 1016-byte prefix, N / 10 keys
                       (MemBufferSetGetLongKey)
``iterate``            one step of a full forward iteration of N entries (MemDbIter)
``iterate_staged``     the same with a staging buffer open (SnapshotIter)
``iterate_reverse``    one step of a full reverse iteration
``create``             an empty buffer created (MemDbCreation)
=====================  =========================================================================

Every workload checks its result (values read back, keys in order, counts) and fails
loudly if the buffer is wrong: a fast wrong answer is not a result. Reported per workload:
operations per second and the elapsed time. Then memory: bytes per entry of a buffer of N
``put_seq`` entries measured with :mod:`tracemalloc` (the whole structure, and the
overhead above the 16 + 128 payload bytes). ``--json`` prints the result as one JSON
object. The default run takes about 5-10 s; timings move with the machine's load.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from tikv_txn.membuffer import MemBuffer

KEY_SIZE = 16  # client-go memdb_bench_test.go keySize
VALUE_SIZE = 128  # client-go memdb_bench_test.go valueSize


class BenchmarkError(AssertionError):
    """A workload saw the buffer answer wrongly."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise BenchmarkError(what)


def _records(n: int, *, seed: int | None, little_endian: bool = False) -> list[bytes]:
    """``n`` 128-byte records whose first 4 bytes are ``i`` (or random when seeded)."""
    rng = random.Random(seed) if seed is not None else None
    fmt = "<I" if little_endian else ">I"
    pad = bytes(VALUE_SIZE - 4)
    out = []
    for i in range(n):
        number = rng.getrandbits(32) if rng is not None else i
        out.append(struct.pack(fmt, number) + pad)
    return out


def _timed(n: int, body: Callable[[], None]) -> dict[str, Any]:
    gc.collect()
    start = time.perf_counter()
    body()
    elapsed = time.perf_counter() - start
    return {"ops": n, "seconds": round(elapsed, 4), "ops_per_s": round(n / elapsed)}


def _filled(records: list[bytes], key_size: int = KEY_SIZE) -> MemBuffer:
    db = MemBuffer()
    for r in records:
        db.set(r[:key_size], r)
    return db


def bench_put(records: list[bytes], key_size: int = KEY_SIZE) -> dict[str, Any]:
    """``set`` every record: key = the record's first ``key_size`` bytes."""
    db = MemBuffer()

    def body() -> None:
        for r in records:
            db.set(r[:key_size], r)

    result = _timed(len(records), body)
    distinct = {r[:key_size] for r in records}
    _check(len(db) == len(distinct), f"{len(db)} entries for {len(distinct)} distinct keys")
    last = records[-1]
    _check(db.get(last[:key_size]) == last, "the last value written is not read back")
    return result


def bench_get(records: list[bytes]) -> dict[str, Any]:
    """``get`` every key of a buffer holding all records."""
    db = _filled(records)
    expected = {r[:KEY_SIZE]: r for r in records}  # later duplicates win, as in the buffer
    keys = [r[:KEY_SIZE] for r in records]
    found: list[object] = []

    def body() -> None:
        get = db.get
        found.extend(get(k) for k in keys)

    result = _timed(len(keys), body)
    _check(all(v == expected[k] for k, v in zip(keys, found, strict=True)), "wrong value read")
    return result


def _set_then_get(keys: list[bytes], what: str) -> dict[str, Any]:
    """Time ``set`` of every key (value = key) then ``get`` of each; check what was read."""
    db = MemBuffer()
    found: list[object] = []

    def body() -> None:
        for k in keys:
            db.set(k, k)
        get = db.get
        found.extend(get(k) for k in keys)

    result = _timed(2 * len(keys), body)
    _check(found == keys and len(db) == len(set(keys)), f"{what} was lost or read back wrong")
    return result


def bench_set_get(n: int, seed: int) -> dict[str, Any]:
    """``set`` then ``get`` of ``n`` 8-byte keys in random order (value = key)."""
    keys = [struct.pack(">Q", i) for i in range(n)]
    random.Random(seed).shuffle(keys)
    return _set_then_get(keys, "a key")


def bench_set_get_long_key(n: int) -> dict[str, Any]:
    """``set`` then ``get`` of ``n`` 1 KiB keys: the number at the end, zeros before it."""
    return _set_then_get([bytes(1016) + struct.pack("<Q", i) for i in range(n)], "a long key")


def bench_iterate(n: int, *, staged: bool = False, reverse: bool = False) -> dict[str, Any]:
    """One full iteration of ``n`` entries written in random order."""
    keys = [struct.pack(">Q", i) for i in range(n)]
    shuffled = keys[:]
    random.Random(n).shuffle(shuffled)
    db = MemBuffer()
    for k in shuffled:
        db.set(k, k)
    if staged:
        db.staging()
    next(db.iterate(), None)  # the first ordered read sorts pending keys: not timed
    seen: list[bytes] = []

    def body() -> None:
        seen.extend(k for k, _ in db.iterate(reverse=reverse))

    result = _timed(n, body)
    _check(seen == (keys[::-1] if reverse else keys), "iteration order or content is wrong")
    return result


def bench_create(n: int) -> dict[str, Any]:
    """Create ``n`` empty buffers."""
    made: list[MemBuffer] = []

    def body() -> None:
        for _ in range(n):
            made.append(MemBuffer())

    result = _timed(n, body)
    _check(len(made) == n and all(len(b) == 0 for b in made[:10]), "buffers not created")
    return result


def measure_memory(n: int) -> dict[str, Any]:
    """Bytes per entry of a buffer of ``n`` sequential 16-byte keys with 128-byte values.

    The records are built before tracing starts; the keys the buffer stores are slices of
    them (new objects), so the figure counts the keys, the structure and the index, and
    the values as shared references (the caller's bytes), plus their payload on top.
    """
    records = _records(n, seed=None)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        db = _filled(records)
        next(db.iterate(), None)  # build the ordered index too
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _check(len(db) == n, "memory buffer lost entries")
    structure = (after - before) / n
    payload = KEY_SIZE + VALUE_SIZE
    return {
        "entries": n,
        "bytes_per_entry_excluding_values": round(structure, 1),
        "bytes_per_entry_including_values": round(structure + VALUE_SIZE, 1),
        "overhead_per_entry": round(structure + VALUE_SIZE - payload, 1),
        "peak_bytes_per_entry_while_building": round((peak - before) / n, 1),
        "buffer_size_accounting": db.size,
    }


def run(n: int = 100_000, seed: int = 42) -> dict[str, Any]:
    """Run every workload on ``n`` keys; returns ``{"workloads": {...}, "memory": {...}}``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seq = _records(n, seed=None)
    rnd = _records(n, seed=seed, little_endian=True)
    large = _records(n, seed=None, little_endian=True)
    workloads = {
        "put_seq": bench_put(seq),
        "put_random": bench_put(rnd),
        "put_large_key": bench_put(large, key_size=VALUE_SIZE),
        "get_seq": bench_get(seq),
        "get_random": bench_get(rnd),
        "set_get_random": bench_set_get(n, seed),
        "set_get_long_key": bench_set_get_long_key(max(n // 10, 1)),
        "iterate": bench_iterate(n),
        "iterate_staged": bench_iterate(n, staged=True),
        "iterate_reverse": bench_iterate(n, reverse=True),
        "create": bench_create(n),
    }
    return {
        "keys": n,
        "python": sys.version.split()[0],
        "workloads": workloads,
        "memory": measure_memory(n),
    }


def _print(result: dict[str, Any]) -> None:
    print(f"MemBuffer, {result['keys']:,} keys, Python {result['python']}")
    print(f"{'workload':<18} {'ops/s':>12} {'seconds':>9}")
    for name, w in result["workloads"].items():
        print(f"{name:<18} {w['ops_per_s']:>12,} {w['seconds']:>9.3f}")
    m = result["memory"]
    print(
        f"memory: {m['bytes_per_entry_including_values']} bytes per entry "
        f"(16 + 128 payload; overhead {m['overhead_per_entry']}), "
        f"peak while building {m['peak_bytes_per_entry_while_building']} bytes per entry"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--keys N``, ``--seed S``, ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys per workload")
    parser.add_argument("--seed", type=int, default=42, help="seed of the random keys")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.keys < 1:
        parser.error("--keys must be >= 1")
    result = run(args.keys, args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
