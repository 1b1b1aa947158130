"""Every AsyncRawClient method checked against a dict model, over a multi-region cluster.

The ``env`` fixture gives a client on a cluster of 10 regions: the in-memory pipeline
double (``fake``) here; ``test_mockcluster.py`` runs the same kind of checks over real gRPC.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from _raw_fake_router import FakeRouter, crc64_xz
from tikv_pd.backoff import Backoffer
from tikv_pd.errors import ClientClosedError
from tikv_raw import AsyncRawClient, Checksum
from tikv_raw._requests import REVERSE_SCAN_UNBOUNDED_UPPER
from tikv_raw._router import BuildForRange

SPLITS = [b"b", b"d", b"f", b"h", b"k", b"m", b"p", b"s", b"v"]


@dataclass
class Env:
    router: FakeRouter
    client: AsyncRawClient
    atomic: AsyncRawClient


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    router = FakeRouter(SPLITS)
    client = AsyncRawClient(router)
    atomic = AsyncRawClient(router, atomic=True)
    yield Env(router, client, atomic)
    await client.close()


def model_scan(
    model: dict[bytes, bytes], start: bytes, end: bytes | None, limit: int, reverse: bool
) -> list[tuple[bytes, bytes]]:
    keys = sorted(k for k in model if k >= start and (end is None or k < end))
    if reverse:
        keys.reverse()
    return [(k, model[k]) for k in keys[:limit]]


def test_crc64_xz_check_value() -> None:
    assert crc64_xz(b"123456789") == 0x995DC9BBDF1939FA


async def test_point_operations(env: Env) -> None:
    c = env.client
    assert await c.get(b"a") is None
    await c.put(b"a", b"1")
    await c.put(b"", b"empty key is a key")
    await c.put(b"e", b"")
    assert await c.get(b"a") == b"1"
    assert await c.get(b"") == b"empty key is a key"
    assert await c.get(b"e") == b""  # an empty value is not "missing"
    await c.delete(b"a")
    await c.delete(b"never-existed")
    assert await c.get(b"a") is None


async def test_batch_operations_across_regions(env: Env) -> None:
    c = env.client
    model = {
        bytes([k]) + b"%03d" % i: b"v%d" % i for i, k in enumerate(b"abcdefghijklmnopqrstuvwxyz")
    }
    await c.batch_put(model)
    assert await c.batch_get([*list(model), b"zz-missing"]) == model
    got = await c.batch_get([b"zz", *sorted(model, reverse=True)])
    assert list(got) == sorted(model, reverse=True)  # request order, missing keys absent
    gone = sorted(model)[::3]
    await c.batch_delete(gone)
    for k in gone:
        del model[k]
    assert await c.scan(limit=100) == sorted(model.items())
    assert await c.batch_get([]) == {}
    await c.batch_put({})
    await c.batch_delete([])


async def test_batch_put_pairs_iterable_and_per_key_ttls(env: Env) -> None:
    c = env.client
    await c.batch_put([(b"a", b"1"), (b"c", b"2"), (b"a", b"3")], ttl=100, ttls={b"c": 5})
    assert await c.batch_get([b"a", b"c"]) == {b"a": b"3", b"c": b"2"}
    assert await c.get_key_ttl(b"a") == 100
    assert await c.get_key_ttl(b"c") == 5
    env.router.now += 6
    assert await c.batch_get([b"a", b"c"]) == {b"a": b"3"}


async def test_batching_limits(env: Env) -> None:
    c = env.client
    keys = [b"c%05d" % i for i in range(1300)]  # one region: [b"b", b"d")
    await c.batch_put(dict.fromkeys(keys, b"x" * 30))
    puts = [r for cmd, r in env.router.requests if cmd == "RawBatchPut"]
    assert sum(len(r.pairs) for r in puts) == 1300
    assert all(sum(len(p.key) + len(p.value) for p in r.pairs) <= 16 * 1024 for r in puts)
    assert len(puts) == -(-1300 * 36 // (16 * 1024))
    env.router.requests.clear()
    assert len(await c.batch_get(keys)) == 1300
    gets = [r for cmd, r in env.router.requests if cmd == "RawBatchGet"]
    assert sorted(len(r.keys) for r in gets) == [276, 512, 512]
    env.router.requests.clear()
    await c.batch_delete(keys)
    deletes = [r for cmd, r in env.router.requests if cmd == "RawBatchDelete"]
    assert max(len(r.keys) for r in deletes) == 512
    assert await c.scan(b"c", b"d", limit=10) == []


@pytest.mark.parametrize("reverse", [False, True])
async def test_scan_matches_model(env: Env, reverse: bool) -> None:
    c = env.client
    model = {
        b"%c%d" % (ch, i): b"%d" % i
        for i, ch in enumerate(b"abcdefghijklmnopqrstuvwxyz")
        for _ in (0,)
    }
    model.update({b"a": b"A", b"b": b"B", b"b\x00": b"B0", b"zz\xff": b"Z"})
    await c.batch_put(model)
    bounds = [b"", b"a", b"b", b"b\x00", b"c", b"k", b"k0", b"s", b"zz", None]
    for i, start in enumerate(bounds[:-1]):
        assert start is not None
        for end in bounds[i + 1 :]:
            for limit in (1, 3, 100):
                want = model_scan(model, start, end, limit, reverse)
                assert await c.scan(start, end, limit=limit, reverse=reverse) == want, (
                    start,
                    end,
                    limit,
                )
    keys_only = await c.scan(limit=5, key_only=True, reverse=reverse)
    assert keys_only == [(k, b"") for k, _ in model_scan(model, b"", None, 5, reverse)]
    assert await c.scan(b"c", b"c", limit=5, reverse=reverse) == []


async def test_reverse_scan_without_upper_bound_sends_the_sentinel(env: Env) -> None:
    await env.client.put(b"zzz", b"1")
    assert await env.client.scan(b"x", None, limit=5, reverse=True) == [(b"zzz", b"1")]
    scans = [r for cmd, r in env.router.requests if cmd == "RawScan"]
    assert scans[0].reverse
    assert scans[0].start_key == REVERSE_SCAN_UNBOUNDED_UPPER
    assert scans[0].end_key == b"x"


@pytest.mark.parametrize("reverse", [False, True])
async def test_scan_iter_pages_lazily(env: Env, reverse: bool) -> None:
    c = env.client
    model = {b"k%04d" % i: b"%d" % i for i in range(0, 2000, 3)}
    model.update({b"a%03d" % i: b"a" for i in range(50)})
    await c.batch_put(model)
    want = model_scan(model, b"", None, 10**6, reverse)
    got = [kv async for kv in c.scan_iter(reverse=reverse, page_size=64)]
    assert got == want
    env.router.requests.clear()
    it = c.scan_iter(b"k", None, reverse=reverse, page_size=10)
    first = [await anext(it) for _ in range(5)]
    assert first == model_scan(model, b"k", None, 5, reverse)
    # Lazy: one page of 10 was fetched (walking at most every region once), not 667 pairs.
    scans = [r for cmd, r in env.router.requests if cmd == "RawScan"]
    assert len(scans) <= len(SPLITS) + 1
    assert all(r.limit <= 10 for r in scans)
    limited = [kv async for kv in c.scan_iter(b"a", b"l", reverse=reverse, page_size=7, limit=30)]
    assert limited == model_scan(model, b"a", b"l", 30, reverse)


async def test_batch_scan(env: Env) -> None:
    c = env.client
    model = {bytes([ch]) * 2: bytes([ch]) for ch in b"abcdefghijklmnopqrstuvwxyz"}
    await c.batch_put(model)
    ranges: list[tuple[bytes, bytes | None]] = [
        (b"a", b"e"),
        (b"x", None),
        (b"c", b"q"),
        (b"m", b"m"),
    ]
    got = await c.batch_scan(ranges, each_limit=3)
    assert got == [model_scan(model, s, e, 3, False) for s, e in ranges]
    got_rev = await c.batch_scan(ranges, each_limit=2, reverse=True, key_only=True)
    assert got_rev == [[(k, b"") for k, _ in model_scan(model, s, e, 2, True)] for s, e in ranges]


async def test_delete_range_and_prefix(env: Env) -> None:
    c = env.client
    model = {b"%c%d" % (ch, i): b"v" for ch in b"abcdefghijklmnopqrstuvwxyz" for i in range(3)}
    model[b"p\xff\xff"] = b"edge"
    await c.batch_put(model)
    await c.delete_range(b"c1", b"q0")
    model = {k: v for k, v in model.items() if not b"c1" <= k < b"q0"}
    assert await c.scan(limit=1000) == sorted(model.items())
    await c.delete_prefix(b"s")
    model = {k: v for k, v in model.items() if not k.startswith(b"s")}
    assert await c.scan(limit=1000) == sorted(model.items())
    await c.delete_range(b"x", None)
    model = {k: v for k, v in model.items() if k < b"x"}
    assert await c.scan(limit=1000) == sorted(model.items())
    ranges = [(r.start_key, r.end_key) for cmd, r in env.router.requests if cmd == "RawDeleteRange"]
    assert (b"c1", b"d") in ranges  # clipped to the region end
    assert (b"x", b"") in ranges  # the last region: up to its (unbounded) end


async def test_ttl_expiry_with_clock(env: Env) -> None:
    c = env.client
    await c.put(b"t", b"v", ttl=10)
    await c.put(b"u", b"forever")
    await c.put(b"w", b"td", ttl=datetime.timedelta(seconds=3))
    assert await c.get_key_ttl(b"t") == 10
    assert await c.get_key_ttl(b"u") == 0
    assert await c.get_key_ttl(b"nope") is None
    env.router.now += 4
    assert await c.get(b"w") is None
    assert 0 < (await c.get_key_ttl(b"t") or 0) <= 6
    env.router.now += 6
    assert await c.get(b"t") is None
    assert await c.get_key_ttl(b"t") is None
    assert await c.get(b"u") == b"forever"


async def test_ttl_refused_by_server_is_a_typed_error() -> None:
    from tikv_raw import RawKVError

    c = AsyncRawClient(FakeRouter(ttl_enabled=False))
    with pytest.raises(RawKVError, match="TTL is not enabled") as info:
        await c.put(b"k", b"v", ttl=5)
    assert info.value.command == "RawPut"
    await c.put(b"k", b"v")
    assert await c.get(b"k") == b"v"


async def test_compare_and_swap(env: Env) -> None:
    c = env.atomic
    assert await c.compare_and_swap(b"k", None, b"1") == (None, True)
    assert await c.compare_and_swap(b"k", None, b"2") == (b"1", False)
    assert await c.compare_and_swap(b"k", b"x", b"2") == (b"1", False)
    assert await c.compare_and_swap(b"k", b"1", b"") == (b"1", True)
    assert await c.get(b"k") == b""
    assert await c.compare_and_swap(b"k", b"", b"3") == (b"", True)  # b"" is not None
    assert await c.get(b"k") == b"3"
    assert await c.compare_and_swap(b"t", None, b"x", ttl=5) == (None, True)
    assert await c.get_key_ttl(b"t") == 5
    # atomic mode marks every write for TiKV's atomic path
    await c.put(b"p", b"1")
    await c.batch_put({b"q": b"1"})
    await c.delete(b"p")
    await c.batch_delete([b"q"])
    writes = [
        r
        for cmd, r in env.router.requests
        if cmd in ("RawPut", "RawBatchPut", "RawDelete", "RawBatchDelete")
    ]
    assert writes
    assert all(r.for_cas for r in writes)


async def test_cas_and_delete_range_refused_before_sending(env: Env) -> None:
    with pytest.raises(ValueError, match="atomic mode"):
        await env.client.compare_and_swap(b"k", None, b"v")
    with pytest.raises(ValueError, match="not available in atomic mode"):
        await env.atomic.delete_range(b"a", b"b")
    with pytest.raises(ValueError, match="not available in atomic mode"):
        await env.atomic.delete_prefix(b"a")
    assert env.router.requests == []


async def test_checksum_matches_independent_crc64(env: Env) -> None:
    c = env.client
    model = {
        b"%c-%d" % (ch, i): b"value-%d" % i
        for ch in b"abcdefghijklmnopqrstuvwxyz"
        for i in range(4)
    }
    await c.batch_put(model)
    await c.with_cf("write").put(b"c-0", b"other cf is not checksummed")

    def expected(start: bytes, end: bytes | None) -> Checksum:
        crc = kvs = size = 0
        for k, v in model.items():
            if k >= start and (end is None or k < end):
                crc ^= crc64_xz(k + v)
                kvs += 1
                size += len(k) + len(v)
        return Checksum(crc, kvs, size)

    assert await c.checksum() == expected(b"", None)
    assert await c.checksum(b"c", b"t") == expected(b"c", b"t")
    assert await c.checksum(b"q", b"q") == Checksum(0, 0, 0)
    with pytest.raises(ValueError, match="default column family"):
        await c.with_cf("write").checksum()


async def test_column_families_are_separate(env: Env) -> None:
    c = env.client
    w = c.with_cf("write")
    assert (c.cf, w.cf) == ("default", "write")
    await c.put(b"k", b"default")
    await w.put(b"k", b"write")
    assert await c.get(b"k") == b"default"
    assert await w.get(b"k") == b"write"
    assert await w.scan(limit=10) == [(b"k", b"write")]
    with pytest.raises(ValueError, match="must be one of"):
        c.with_cf("raft")
    await w.close()  # a view does not own the connection
    assert await c.get(b"k") == b"default"
    await c.close()
    assert w.closed
    with pytest.raises(ClientClosedError):
        await w.get(b"k")


async def test_bad_input_is_refused_before_anything_is_sent(env: Env) -> None:
    c = env.client
    bad = [
        (TypeError, c.get("k")),  # type: ignore[arg-type]
        (TypeError, c.put(b"k", "v")),  # type: ignore[arg-type]
        (ValueError, c.put(b"k", b"v", ttl=0)),
        (TypeError, c.batch_get(b"abc")),  # type: ignore[arg-type]
        (TypeError, c.batch_put({b"a": 1})),  # type: ignore[arg-type]
        (ValueError, c.batch_put({b"a": b"1"}, ttls={b"b": 1})),
        (ValueError, c.scan(b"b", b"a", limit=1)),
        (ValueError, c.scan(b"a", b"", limit=1)),
        (ValueError, c.scan(limit=0)),
        (ValueError, c.scan(limit=10241)),
        (ValueError, c.delete_range(b"a", b"a")),
        (ValueError, c.delete_range(b"b", b"a")),
        (ValueError, c.delete_prefix(b"")),
        (ValueError, c.checksum(b"z", b"a")),
        (ValueError, c.batch_scan([(b"a", b"b", b"c")], each_limit=1)),  # type: ignore[list-item]
        (ValueError, c.batch_scan([(b"b", b"a")], each_limit=1)),
        (ValueError, c.batch_scan([(b"a", b"b")], each_limit=0)),
        (TypeError, c.scan(limit=5, reverse=1)),  # type: ignore[arg-type]
    ]
    for exc, coro in bad:
        with pytest.raises(exc):
            await coro
    with pytest.raises(ValueError, match="page_size"):
        c.scan_iter(page_size=0)
    with pytest.raises(ValueError, match="limit"):
        c.scan_iter(limit=-1)
    assert env.router.requests == []


async def test_connect_validates_arguments_before_connecting() -> None:
    with pytest.raises(ValueError, match="API v2"):
        await AsyncRawClient.connect(["127.0.0.1:1"], keyspace="ks", api_version=1)
    with pytest.raises(ValueError, match="api_version"):
        await AsyncRawClient.connect(["127.0.0.1:1"], api_version=3)
    with pytest.raises(ValueError, match="endpoints"):
        await AsyncRawClient.connect([])
    with pytest.raises(ValueError, match="timeout"):
        await AsyncRawClient.connect(["127.0.0.1:1"], timeout=0)
    with pytest.raises(TypeError, match="config"):
        await AsyncRawClient.connect(["127.0.0.1:1"], config={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="API v2 has no column families"):
        AsyncRawClient(FakeRouter(), api_version=2).with_cf("write")


async def test_keyspaces_are_isolated_and_prefixed_on_the_wire() -> None:
    from tikv_pd.codec import KeyspaceCodec

    router = FakeRouter([b"r\x00\x00\x01m", b"r\x00\x00\x02"])
    a = AsyncRawClient(router, api_version=2, keyspace="a", codec=KeyspaceCodec("raw", 1))
    b = AsyncRawClient(router, api_version=2, keyspace="b", codec=KeyspaceCodec("raw", 2))
    await a.batch_put({b"k1": b"a1", b"z": b"a2", b"": b"a-empty"})
    await b.put(b"k1", b"b1")
    assert await a.get(b"k1") == b"a1"
    assert await b.get(b"k1") == b"b1"
    assert await b.get(b"z") is None
    assert await a.scan(limit=10) == [(b"", b"a-empty"), (b"k1", b"a1"), (b"z", b"a2")]
    assert await a.scan(limit=10, reverse=True) == [
        (b"z", b"a2"),
        (b"k1", b"a1"),
        (b"", b"a-empty"),
    ]
    assert await b.scan(limit=10) == [(b"k1", b"b1")]
    assert await a.batch_get([b"k1", b"z", b"q"]) == {b"k1": b"a1", b"z": b"a2"}
    assert (await a.checksum()).total_kvs == 3
    await b.delete_range(b"", None)
    assert await a.scan(limit=10) != []
    assert await b.scan(limit=10) == []
    # Every key TiKV saw carries a keyspace prefix; unbounded ranges end at the next one.
    scans = [r for cmd, r in router.requests if cmd == "RawScan"]
    assert all(r.start_key.startswith((b"r\x00\x00\x01", b"r\x00\x00\x02")) for r in scans)
    ranges = [(r.start_key, r.end_key) for cmd, r in router.requests if cmd == "RawDeleteRange"]
    assert ranges == [(b"r\x00\x00\x02", b"r\x00\x00\x03")]
    assert router.data["default"].keys() == {
        b"r\x00\x00\x01k1",
        b"r\x00\x00\x01z",
        b"r\x00\x00\x01",
    }


async def test_only_cas_refuses_to_be_resent_after_an_unknown_outcome(env: Env) -> None:
    c = env.atomic
    await c.put(b"k", b"v")
    await c.get(b"k")
    await c.compare_and_swap(b"k", b"v", b"w")
    from tikv_pd.request import Ambiguity

    assert env.router.ambiguities == [
        ("RawPut", Ambiguity.IDEMPOTENT),
        ("RawGet", Ambiguity.IDEMPOTENT),
        ("RawCompareAndSwap", Ambiguity.RAISE),
    ]


async def test_failed_batch_write_says_what_is_unknown() -> None:
    from tikv_raw import RawKVError

    c = AsyncRawClient(FakeRouter(SPLITS, ttl_enabled=False))
    with pytest.raises(RawKVError, match="TTL is not enabled") as info:
        await c.batch_put({b"a": b"1", b"z": b"2"}, ttl=5)
    assert any("all 2 pairs" in note and "may or may not" in note for note in info.value.__notes__)


def test_exported_names() -> None:
    import tikv_raw

    assert sorted(tikv_raw.__all__) == [
        "AsyncRawClient",
        "Checksum",
        "ClientClosedError",
        "PDError",
        "RawClient",
        "RawKVError",
        "RegionError",
        "StoreUnavailableError",
        "TiKVError",
        "TimeoutError",
        "UndeterminedError",
        "prefix_range",
    ]
    for name in tikv_raw.__all__:
        obj = getattr(tikv_raw, name)
        assert obj.__doc__, name
    for cls in (tikv_raw.RawClient, tikv_raw.AsyncRawClient):
        public = [n for n in dir(cls) if not n.startswith("_")]
        assert all(getattr(cls, n).__doc__ for n in public), cls
    sync_api = {n for n in dir(tikv_raw.RawClient) if not n.startswith("_")}
    async_api = {n for n in dir(tikv_raw.AsyncRawClient) if not n.startswith("_")}
    assert sync_api == async_api


async def test_budget_exhausted_batch_is_a_typed_timeout_with_a_note() -> None:
    from tikv_raw import TimeoutError as RawTimeoutError

    class DownRouter(FakeRouter):
        async def call_keys(self, *args: object, **kwargs: object) -> list[object]:
            raise RawTimeoutError("RawBatchDelete", budget_ms=40_000, total_sleep_ms=40_100)

    c = AsyncRawClient(DownRouter(SPLITS))
    with pytest.raises(TimeoutError) as info:  # the builtin catches it too
        await c.batch_delete([b"a", b"b", b"c"])
    assert isinstance(info.value, RawTimeoutError)
    assert any("all 3 keys" in note for note in info.value.__notes__)


async def test_prefix_range_scans_exactly_the_prefix(env: Env) -> None:
    from tikv_raw import prefix_range

    c = env.client
    await c.batch_put({b"user:1": b"a", b"user:2": b"b", b"user;": b"x", b"user": b"y"})
    assert await c.scan(*prefix_range(b"user:"), limit=10) == [(b"user:1", b"a"), (b"user:2", b"b")]
    assert prefix_range(b"\xff") == (b"\xff", None)
    assert (await c.checksum(*prefix_range(b"user:"))).total_kvs == 2


async def test_batch_scan_failure_is_the_error_itself() -> None:
    from tikv_raw import RawKVError

    class FailingRouter(FakeRouter):
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
            if start >= b"x":
                raise RawKVError("RawScan", "boom")
            await asyncio.sleep(0)
            return await super().call_first_region(
                command, start, end, build, reverse=reverse, bo=bo
            )

    c = AsyncRawClient(FailingRouter(SPLITS))
    with pytest.raises(RawKVError, match="boom"):  # not an ExceptionGroup
        await c.batch_scan([(b"a", b"b"), (b"x", None), (b"c", b"d")], each_limit=5)
