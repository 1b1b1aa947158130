"""Both client flavours against tikv_mockstore.MockCluster over real gRPC.

Each test gets its own cluster (3 stores, 10 raw regions; starting one takes tens of
milliseconds), so tests share nothing. Every result is checked against a dict model.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from _raw_fake_router import crc64_xz
from _raw_model import RawEnv, make_machine
from hypothesis import HealthCheck, settings
from tikv_mockstore import MockCluster
from tikv_raw import AsyncRawClient, Checksum, RawClient, RawKVError

SPLITS = [b"b", b"d", b"f", b"h", b"k", b"m", b"p", b"s", b"v"]


def model_scan(
    model: dict[bytes, bytes], start: bytes, end: bytes | None, limit: int, reverse: bool
) -> list[tuple[bytes, bytes]]:
    keys = sorted(k for k in model if k >= start and (end is None or k < end))
    if reverse:
        keys.reverse()
    return [(k, model[k]) for k in keys[:limit]]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    # V1TTL: API v1 keys with TTL support (TiKV ``storage.enable-ttl = true``).
    with MockCluster(stores=3, split_raw=SPLITS, api_version="V1TTL") as c:
        assert len(c.regions()) >= 10
        yield c


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncRawClient]:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
        yield c


def spread_model(n_per_letter: int) -> dict[bytes, bytes]:
    return {
        bytes([ch]) + b"%04d" % i: b"v%d-%c" % (i, ch)
        for ch in b"abcdefghijklmnopqrstuvwxyz"
        for i in range(n_per_letter)
    }


async def test_every_method_async(cluster: MockCluster, client: AsyncRawClient) -> None:
    c = client
    model = spread_model(20)
    await c.batch_put(model)
    await c.put(b"", b"the empty key")
    await c.put(b"e-empty", b"")
    model[b""] = b"the empty key"
    model[b"e-empty"] = b""
    assert await c.get(b"e-empty") == b""
    assert await c.get(b"") == b"the empty key"
    assert await c.get(b"nope") is None
    keys = [*sorted(model)[::7], b"missing", b"zz"]
    assert await c.batch_get(keys) == {k: model[k] for k in keys if k in model}
    for start, end in [(b"", None), (b"a0005", b"c0003"), (b"g", b"g0"), (b"q", None)]:
        for reverse in (False, True):
            for limit in (1, 17, 10240):
                want = model_scan(model, start, end, limit, reverse)
                got = await c.scan(start, end, limit=limit, reverse=reverse)
                assert got == want, (start, end, limit, reverse)
    assert [kv async for kv in c.scan_iter(page_size=33)] == model_scan(
        model, b"", None, 10**6, False
    )
    assert [kv async for kv in c.scan_iter(b"c", b"x", reverse=True, page_size=50)] == (
        model_scan(model, b"c", b"x", 10**6, True)
    )
    ranges: list[tuple[bytes, bytes | None]] = [(b"a", b"c"), (b"x", None), (b"k", b"k1")]
    assert await c.batch_scan(ranges, each_limit=25) == [
        model_scan(model, s, e, 25, False) for s, e in ranges
    ]
    await c.delete(b"a0000")
    del model[b"a0000"]
    gone = sorted(model)[1::5]
    await c.batch_delete(gone)
    for k in gone:
        del model[k]
    await c.delete_range(b"c0010", b"n0005")
    model = {k: v for k, v in model.items() if not b"c0010" <= k < b"n0005"}
    await c.delete_prefix(b"w")
    model = {k: v for k, v in model.items() if not k.startswith(b"w")}
    assert await c.scan(limit=10240) == sorted(model.items())
    assert (await c.checksum()).total_kvs == len(model)
    await c.put(b"t", b"ttl", ttl=100)
    # Whole seconds left on the cluster's (wall) clock: a second boundary in between reads 99.
    assert await c.get_key_ttl(b"t") in (99, 100)
    assert await c.get_key_ttl(min(model)) == 0  # exists, no TTL
    assert await c.get_key_ttl(b"nope") is None


def test_every_method_sync(cluster: MockCluster) -> None:
    with RawClient.connect(cluster.pd_endpoints) as c:
        model = spread_model(10)
        c.batch_put(model)
        c.put(b"k-x", b"1", ttl=50)
        model[b"k-x"] = b"1"
        assert c.get(b"k-x") == b"1"
        assert c.get_key_ttl(b"k-x") == 50
        assert c.batch_get([b"a0001", b"q"]) == {b"a0001": model[b"a0001"]}
        assert c.scan(b"b", b"e", limit=5, reverse=True) == model_scan(model, b"b", b"e", 5, True)
        assert list(c.scan_iter(page_size=9)) == sorted(model.items())
        assert c.batch_scan([(b"a", b"b")], each_limit=3) == [
            model_scan(model, b"a", b"b", 3, False)
        ]
        c.delete(b"k-x")
        c.batch_delete([b"a0001"])
        c.delete_range(b"m", b"o")
        c.delete_prefix(b"z")
        for k in [b"k-x", b"a0001"] + [k for k in model if b"m" <= k < b"o" or k.startswith(b"z")]:
            model.pop(k, None)
        assert list(c.scan_iter()) == sorted(model.items())
        assert c.checksum().total_kvs == len(model)
        w = c.with_cf("write")
        w.put(b"a0002", b"write cf")
        assert (w.get(b"a0002"), c.get(b"a0002")) == (b"write cf", model[b"a0002"])
    with RawClient.connect(cluster.pd_endpoints, atomic=True) as a:
        assert a.compare_and_swap(b"cas", None, b"1") == (None, True)
        assert a.compare_and_swap(b"cas", b"2", b"3") == (b"1", False)


async def test_ttl_expires_with_the_cluster_clock(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    c = client
    # The cluster clock follows the wall clock: a second boundary between the put and the
    # TTL read would leave 9 s of a 10 s TTL. Frozen, only advance() moves it.
    cluster.clock.freeze()
    await c.put(b"t1", b"v", ttl=10)
    await c.batch_put({b"t2": b"a", b"t3": b"b"}, ttl=30, ttls={b"t3": 5})
    await c.put(b"t4", b"forever")
    assert await c.get_key_ttl(b"t1") == 10
    assert await c.get_key_ttl(b"t3") == 5
    cluster.clock.advance(6_000)
    assert await c.get(b"t3") is None
    assert await c.batch_get([b"t1", b"t2", b"t3", b"t4"]) == {
        b"t1": b"v",
        b"t2": b"a",
        b"t4": b"forever",
    }
    assert 0 < (await c.get_key_ttl(b"t1") or 0) <= 4
    cluster.clock.advance(5_000)
    assert await c.get(b"t1") is None
    assert await c.get_key_ttl(b"t1") is None
    assert await c.scan(b"t", b"u", limit=10) == [(b"t2", b"a"), (b"t4", b"forever")]


async def test_ttl_on_a_cluster_without_ttl_is_a_typed_error() -> None:
    with MockCluster(stores=3, api_version=1) as cluster:
        async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
            with pytest.raises(RawKVError, match=r"(?i)ttl") as info:
                await c.put(b"k", b"v", ttl=5)
            assert info.value.command == "RawPut"
            assert await c.get(b"k") is None
            await c.put(b"k", b"v")
            assert await c.get(b"k") == b"v"


async def test_compare_and_swap(cluster: MockCluster) -> None:
    async with await AsyncRawClient.connect(cluster.pd_endpoints, atomic=True) as c:
        assert await c.compare_and_swap(b"k", None, b"1") == (None, True)
        assert await c.compare_and_swap(b"k", None, b"x") == (b"1", False)
        assert await c.compare_and_swap(b"k", b"0", b"x") == (b"1", False)
        assert await c.compare_and_swap(b"k", b"1", b"") == (b"1", True)
        assert await c.compare_and_swap(b"k", None, b"x") == (b"", False)  # b"" exists
        assert await c.compare_and_swap(b"k", b"", b"2") == (b"", True)
        assert await c.get(b"k") == b"2"
        await c.delete(b"k")
        assert await c.compare_and_swap(b"k", None, b"again", ttl=9) == (None, True)
        assert await c.get_key_ttl(b"k") == 9
        with pytest.raises(ValueError, match="atomic mode"):
            await c.delete_range(b"a", b"z")
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as plain:
        with pytest.raises(ValueError, match="atomic=True"):
            await plain.compare_and_swap(b"k", b"again", b"no")


def independent_checksum(model: dict[bytes, bytes]) -> Checksum:
    crc = kvs = size = 0
    for k, v in model.items():
        crc ^= crc64_xz(k + v)
        kvs += 1
        size += len(k) + len(v)
    return Checksum(crc, kvs, size)


async def test_checksum_equals_an_independent_crc64() -> None:
    with MockCluster(stores=3, split_raw=SPLITS, api_version=1) as cluster:
        async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
            model = spread_model(30)
            await c.batch_put(model)
            assert await c.checksum() == independent_checksum(model)
            part = {k: v for k, v in model.items() if b"c0007" <= k < b"r"}
            assert await c.checksum(b"c0007", b"r") == independent_checksum(part)


async def test_checksum_with_ttl_storage_hashes_user_values(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    # TiKV reads V1TTL values through RawEncodeSnapshot, which strips the stored expiry:
    # the checksum covers key + user value, with or without a TTL.
    model = spread_model(3)
    await client.batch_put(model)
    await client.put(b"ttl-key", b"ttl-value", ttl=1000)
    model[b"ttl-key"] = b"ttl-value"
    assert await client.checksum() == independent_checksum(model)


async def test_keyspaces_are_isolated() -> None:
    with MockCluster(stores=3, api_version=2) as cluster:
        cluster.create_keyspace("alpha")
        cluster.create_keyspace("beta")
        a = await AsyncRawClient.connect(cluster.pd_endpoints, keyspace="alpha")
        b = await AsyncRawClient.connect(cluster.pd_endpoints, keyspace="beta")
        d = await AsyncRawClient.connect(cluster.pd_endpoints, api_version=2)
        try:
            await a.batch_put({b"k1": b"a1", b"k2": b"a2", b"": b"a-empty"})
            await b.put(b"k1", b"b1")
            await d.put(b"k1", b"default keyspace")
            assert await a.get(b"k1") == b"a1"
            assert await b.get(b"k1") == b"b1"
            assert await d.get(b"k1") == b"default keyspace"
            assert await b.get(b"k2") is None
            assert await a.scan(limit=100) == [(b"", b"a-empty"), (b"k1", b"a1"), (b"k2", b"a2")]
            assert await a.scan(limit=100, reverse=True) == [
                (b"k2", b"a2"),
                (b"k1", b"a1"),
                (b"", b"a-empty"),
            ]
            assert await b.scan(limit=100) == [(b"k1", b"b1")]
            assert [kv async for kv in b.scan_iter()] == [(b"k1", b"b1")]
            assert (await a.checksum()).total_kvs == 3
            await b.delete_range(b"", None)
            assert await b.scan(limit=100) == []
            assert await a.batch_get([b"k1", b"k2"]) == {b"k1": b"a1", b"k2": b"a2"}
            assert await d.get(b"k1") == b"default keyspace"
        finally:
            for c in (a, b, d):
                await c.close()


async def test_hundred_thousand_keys_round_trip(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    model = {b"%c%06d" % (97 + i % 26, i): b"value-%d" % i for i in range(100_000)}
    await client.batch_put(model)
    got = [kv async for kv in client.scan_iter(page_size=10240)]
    assert got == sorted(model.items())
    assert (await client.checksum()).total_kvs == 100_000


async def test_batch_survives_splits_and_leader_moves(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    model = spread_model(40)
    await client.batch_put(model)
    cluster.split([b"a0020", b"c0001", b"c0002", b"q0030", b"z"])
    for region in cluster.regions()[:4]:
        assert region.leader is not None
        leader_store = region.leader.store_id
        others = [p.store_id for p in region.peers if p.store_id != leader_store]
        cluster.transfer_leader(region.id, others[0])
    assert await client.scan(limit=10240) == sorted(model.items())
    assert await client.scan(limit=10240, reverse=True) == sorted(model.items(), reverse=True)
    assert await client.batch_get(list(model)) == model
    await client.delete_range(b"a0010", b"c0002")
    model = {k: v for k, v in model.items() if not b"a0010" <= k < b"c0002"}
    assert [kv async for kv in client.scan_iter(page_size=100)] == sorted(model.items())


@pytest.mark.parametrize("move_leaders", [False, True])
async def test_store_stopped_mid_batch(
    cluster: MockCluster, client: AsyncRawClient, move_leaders: bool
) -> None:
    model = spread_model(200)
    region = cluster.region_by_key(b"k")
    assert region is not None
    assert region.leader is not None
    victim = region.leader.store_id
    fault = cluster.faults.add("RawBatchPut", store=victim, hang=True, times=1)
    task = asyncio.create_task(client.batch_put(model))
    # Poll (with a deadline) until one of the batch's requests reached the victim store
    # and hangs there: the batch is now in flight.
    await poll(lambda: cluster.counters.count("RawBatchPut", store=victim) >= 1)
    assert not task.done()
    address = cluster.store_addresses[victim]
    stopping = asyncio.create_task(
        asyncio.to_thread(cluster.stop_store, victim, move_leaders=move_leaders)
    )
    # The store closes its streams and its port before it waits for its handler threads;
    # release the hung request only then, so its answer can never reach the client.
    await poll(lambda: refuses_connections(address))
    fault.release()
    await stopping
    if not move_leaders:
        # The regions led by the stopped store cannot be written until it returns.
        assert not task.done()
        await asyncio.to_thread(cluster.restart_store, victim)
    await asyncio.wait_for(task, 90)
    assert await client.batch_get(list(model)) == model
    assert await client.scan(limit=10240) == sorted(model.items())[:10240]


def refuses_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return False
    except OSError:
        return True


async def poll(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Wait until ``condition()`` holds, checking every 10 ms, failing after ``within`` s."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


def _new_mock_env() -> RawEnv:
    cluster = MockCluster(stores=3, split_raw=[b"t/b", b"t/c", b"t/x"], api_version=1)
    client = RawClient.connect(cluster.pd_endpoints)

    def close() -> None:
        client.close()
        cluster.close()

    return RawEnv(
        client=client,
        split=lambda key: cluster.split([key]),
        prefix=b"t/",
        close=close,
    )


RawModelOnMock = make_machine(_new_mock_env)
RawModelOnMock.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRawModelOnMockCluster = RawModelOnMock.TestCase


async def test_cas_with_unknown_outcome_raises_undetermined(cluster: MockCluster) -> None:
    from tikv_raw import UndeterminedError

    async with await AsyncRawClient.connect(cluster.pd_endpoints, atomic=True) as c:
        await c.put(b"k", b"0")
        cluster.faults.add("RawCompareAndSwap", drop_stream=True, times=1)
        with pytest.raises(UndeterminedError) as info:
            await c.compare_and_swap(b"k", b"0", b"1")
        assert info.value.operation == "RawCompareAndSwap"
        # Not resent: the fault dropped the only attempt, so the value is unchanged here;
        # the caller decides what to do next (e.g. read and compare again).
        assert cluster.counters.count("RawCompareAndSwap") == 1
        assert await c.compare_and_swap(b"k", b"0", b"2") == (b"0", True)


@pytest.mark.parametrize(
    "kind", ["not_leader", "epoch_not_match", "server_is_busy", "region_not_found", "stale_command"]
)
async def test_region_errors_are_retried(
    cluster: MockCluster, client: AsyncRawClient, kind: str
) -> None:
    model = spread_model(5)
    methods = ["RawBatchPut", "RawGet", "RawScan", "RawBatchGet", "RawDeleteRange"]
    times = 2
    if kind == "server_is_busy":
        # Its backoff is 1-2 s, then 2-4 s (client-go tikvServerBusy): keep the test short.
        methods, times = ["RawGet", "RawScan"], 1
    for method in methods:
        cluster.faults.add(method, region_error=kind, times=times)
    await client.batch_put(model)
    assert await client.get(b"c0001") == model[b"c0001"]
    assert await client.scan(limit=1000) == sorted(model.items())
    assert await client.batch_get(list(model)) == model
    await client.delete_range(b"a", b"c")
    model = {k: v for k, v in model.items() if k >= b"c"}
    assert await client.scan(limit=1000, reverse=True) == sorted(model.items(), reverse=True)


async def test_request_context_on_the_wire() -> None:
    with MockCluster(stores=3, api_version=2) as cluster:
        ks = cluster.create_keyspace("ctx")
        async with await AsyncRawClient.connect(cluster.pd_endpoints, keyspace="ctx") as c:
            await c.put(b"k", b"v")
            assert await c.get(b"k") == b"v"
            put_ctx = cluster.counters.last_context("RawPut")
            get_ctx = cluster.counters.last_context("RawGet")
    assert put_ctx is not None
    assert get_ctx is not None
    assert put_ctx.api_version == 2  # kvrpcpb.APIVersion.V2
    assert put_ctx.keyspace_id == ks.id
    assert put_ctx.keyspace_name == "ctx"
    assert put_ctx.max_execution_duration_ms == 20_000  # client-go MaxWriteExecutionTime
    assert get_ctx.max_execution_duration_ms == 0
    assert put_ctx.region_id and put_ctx.peer.store_id


async def test_store_replaced_by_a_new_one(cluster: MockCluster, client: AsyncRawClient) -> None:
    # client-go rawkv_test TestReplaceStore: the old store is removed, a new store takes
    # its peers and leadership; the client's cached leader and address are stale.
    model = spread_model(10)
    await client.batch_put(model)
    region = cluster.region_by_key(b"k0001")
    assert region is not None
    assert region.leader is not None
    old = region.leader.store_id
    new = cluster.add_store()
    for r in cluster.regions():
        if any(p.store_id == old for p in r.peers):
            cluster.add_peer(r.id, new)
            if r.leader is not None and r.leader.store_id == old:
                cluster.transfer_leader(r.id, new)
            cluster.remove_peer(r.id, old)
    cluster.remove_store(old)
    await client.put(b"k0001", b"after the replacement")
    model[b"k0001"] = b"after the replacement"
    assert await client.batch_get(list(model)) == model
    assert await client.scan(limit=10240, reverse=True) == sorted(model.items(), reverse=True)


async def test_merged_regions_and_whole_keyspace_delete(
    cluster: MockCluster, client: AsyncRawClient
) -> None:
    # client-go rawkv_test TestDeleteRangeEmptyKeysMultiRegion: delete everything over
    # many regions, after the layout changed under the client's cache.
    model = spread_model(10)
    await client.batch_put(model)
    assert await client.scan(limit=10240) == sorted(model.items())
    regions = cluster.regions()
    cluster.merge(regions[1].id, regions[2].id)
    await client.delete_range(b"", None)
    assert await client.scan(limit=10240) == []
    assert await client.scan(limit=10240, reverse=True) == []
    assert (await client.checksum()).total_kvs == 0


async def test_unknown_keyspace_is_a_pd_error() -> None:
    from tikv_raw import PDError

    with MockCluster(stores=1, api_version=2) as cluster, pytest.raises(PDError):
        await AsyncRawClient.connect(cluster.pd_endpoints, keyspace="no-such-keyspace")


def test_unknown_keyspace_is_a_pd_error_sync() -> None:
    from tikv_raw import PDError

    with MockCluster(stores=1, api_version=2) as cluster, pytest.raises(PDError):
        RawClient.connect(cluster.pd_endpoints, keyspace="no-such-keyspace")


def test_sync_scan_iter_stops_early_and_threads_share_one_client(cluster: MockCluster) -> None:
    import threading

    with RawClient.connect(cluster.pd_endpoints) as c:
        c.batch_put({b"i%05d" % i: b"v" for i in range(3000)})
        it = c.scan_iter(b"i", b"j", page_size=100)
        first = [next(it) for _ in range(150)]
        it.close()
        assert first == [(b"i%05d" % i, b"v") for i in range(150)]

        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(50):
                    c.put(b"t%d-%03d" % (n, i), b"%d" % n)
                    assert c.get(b"t%d-%03d" % (n, i)) == b"%d" % n
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(list(c.scan_iter(b"t", b"u"))) == 200
