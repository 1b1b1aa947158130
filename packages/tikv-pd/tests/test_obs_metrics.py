"""Prometheus metrics (the ``metrics`` extra installed): each metric moves when it should.

Every test collects into its own ``CollectorRegistry`` and runs the raw client (or the PD
client) against MockCluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from tikv_mockstore import MockCluster  # noqa: E402
from tikv_pd.metrics import ClientMetrics, disable_metrics, enable_metrics, get_metrics  # noqa: E402
from tikv_pd.pd_client import PDClient  # noqa: E402
from tikv_raw import AsyncRawClient  # noqa: E402

SPLITS = [b"b", b"d", b"f", b"h"]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, split_raw=SPLITS) as c:
        yield c


@pytest.fixture
def registry() -> Iterator[object]:
    reg = prometheus_client.CollectorRegistry()
    enable_metrics(reg)
    yield reg
    disable_metrics()


@pytest.fixture
async def client(cluster: MockCluster, registry: object) -> AsyncIterator[AsyncRawClient]:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
        yield c


def value(registry: object, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return 0.0 if got is None else float(got)


def total(registry: object, name: str, **match: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``match``."""
    out = 0.0
    for family in registry.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items()):
                out += sample.value
    return out


def leader_store(cluster: MockCluster, key: bytes) -> str:
    region = cluster.region_by_key(key)
    assert region is not None
    return str(region.leader_store_id)


async def test_request_seconds_per_command_and_store(
    cluster: MockCluster, registry: object, client: AsyncRawClient
) -> None:
    name = "tikv_client_go_request_seconds_count"
    keys = [b"a", b"c", b"e", b"g", b"i"]
    stores = [st.id for st in cluster.stores()]
    for i, key in enumerate(keys):  # spread the leaders over the stores, before any request
        region = cluster.region_by_key(key)
        assert region is not None
        if region.leader_store_id != stores[i % len(stores)]:
            cluster.transfer_leader(region.id, stores[i % len(stores)])
    await client.put(b"a1", b"v")
    assert await client.get(b"a1") == b"v"
    labels = {"store": leader_store(cluster, b"a1"), "stale_read": "false", "scope": "false"}
    assert value(registry, name, type="RawPut", **labels) == 1
    assert value(registry, name, type="RawGet", **labels) == 1
    # A batch over five regions: one attempt per region, labelled by its leader's store.
    await client.batch_put(dict.fromkeys(keys, b"x"))
    for store in {leader_store(cluster, k) for k in keys}:
        want = sum(1 for k in keys if leader_store(cluster, k) == store)
        assert total(registry, name, type="RawBatchPut", store=store) == want
    assert total(registry, name, type="RawBatchPut") == len(keys)
    # Every attempt travelled in a BatchCommands message to its store.
    sent = total(registry, name)
    assert total(registry, "tikv_client_go_batch_requests_sum") == sent
    targets = {
        sample.labels["target"]
        for family in registry.collect()  # type: ignore[attr-defined]
        for sample in family.samples
        if sample.name == "tikv_client_go_batch_requests_count"
    }
    assert targets <= set(cluster.store_addresses.values())
    assert len(targets) > 1


async def test_internal_request_source_sets_scope(cluster: MockCluster, registry: object) -> None:
    from tikv_pd.request_context import RequestContext, RequestSource

    ctx = RequestContext(request_source=RequestSource(internal=True, source_type="gc"))
    async with await AsyncRawClient.connect(cluster.pd_endpoints, request_context=ctx) as c:
        await c.get(b"zz")
    assert total(registry, "tikv_client_go_request_seconds_count", type="RawGet", scope="true") == 1
    assert total(registry, "tikv_client_go_request_seconds_count", scope="false") == 0


async def test_region_error_backoff_and_retry_metrics(
    cluster: MockCluster, registry: object, client: AsyncRawClient
) -> None:
    region = cluster.region_by_key(b"c")
    assert region is not None
    store = str(region.leader_store_id)
    cluster.faults.add("RawGet", region=region.id, region_error="region_not_found", times=1)
    assert await client.get(b"c") is None
    assert (
        value(registry, "tikv_client_go_region_err_total", type="region_not_found", store=store)
        == 1
    )
    assert value(registry, "tikv_client_go_backoff_seconds_count", type="regionMiss") == 1
    assert value(registry, "tikv_client_go_backoff_seconds_sum", type="regionMiss") > 0
    assert value(registry, "tikv_client_go_request_retry_times_count") == 1
    assert value(registry, "tikv_client_go_request_retry_times_sum") == 1
    # Both attempts were sent and timed.
    assert total(registry, "tikv_client_go_request_seconds_count", type="RawGet") == 2
    # A request without trouble adds no retry observation.
    await client.get(b"c")
    assert value(registry, "tikv_client_go_request_retry_times_count") == 1


async def test_send_failure_counts_rpc_error_and_tikv_rpc_backoff(
    cluster: MockCluster, registry: object, client: AsyncRawClient
) -> None:
    await client.put(b"e1", b"v")  # warm up: the stream to the store exists
    store = leader_store(cluster, b"e1")
    cluster.faults.add("RawGet", store=int(store), drop_stream=True, times=1)
    assert await client.get(b"e1") == b"v"
    assert total(registry, "tikv_client_go_rpc_err_total", store=store) == 1
    assert value(registry, "tikv_client_go_backoff_seconds_count", type="tikvRPC") == 1


async def test_region_cache_hits_and_misses(
    cluster: MockCluster, registry: object, client: AsyncRawClient
) -> None:
    lookups = "tikv_client_python_region_cache_lookups_total"
    await client.get(b"g1")
    misses = value(registry, lookups, result="miss")
    assert misses >= 1
    assert (
        value(
            registry,
            "tikv_client_go_region_cache_operations_total",
            type="get_region_when_miss",
            result="ok",
        )
        == misses
    )
    assert (
        value(
            registry, "tikv_client_go_load_region_cache_seconds_count", type="get_region_when_miss"
        )
        == misses
    )
    hits = value(registry, lookups, result="hit")
    await client.get(b"g2")  # same region: answered from the cache
    assert value(registry, lookups, result="hit") == hits + 1
    assert value(registry, lookups, result="miss") == misses


async def test_rawkv_operation_histogram(
    cluster: MockCluster, registry: object, client: AsyncRawClient
) -> None:
    name = "tikv_client_go_rawkv_cmd_seconds_count"
    await client.batch_put({b"a": b"1", b"c": b"2"})
    await client.put(b"e", b"3")
    await client.get(b"a")
    await client.batch_get([b"a", b"c"])
    await client.scan(b"a", b"z", limit=10)
    await client.scan(b"a", b"z", limit=10, reverse=True)
    await client.scan(b"a", b"z", limit=10, reverse=True)
    await client.delete(b"e")
    await client.checksum()
    # client-go's labels: a single put is observed as batch_put (rawkv.go PutWithTTL).
    assert value(registry, name, type="batch_put") == 2
    assert value(registry, name, type="get") == 1
    assert value(registry, name, type="batch_get") == 1
    assert value(registry, name, type="raw_scan") == 1
    assert value(registry, name, type="raw_reverse_scan") == 2
    assert value(registry, name, type="delete") == 1
    assert value(registry, name, type="raw_checksum") == 1


async def test_tso_batch_size_and_wait(cluster: MockCluster, registry: object) -> None:
    pd = await PDClient.connect(cluster.pd_endpoints)
    try:
        stamps = await asyncio.gather(*(pd.get_timestamp() for _ in range(20)))
        assert len(set(stamps)) == 20
        sent = pd.tso_requests_sent
    finally:
        await pd.close()
    assert value(registry, "tikv_client_go_ts_future_wait_seconds_count") == 20
    # Every timestamp travelled in exactly one TsoRequest; one observation per request.
    assert value(registry, "pd_client_request_handle_tso_batch_size_sum") == 20
    assert value(registry, "pd_client_request_handle_tso_batch_size_count") == sent
    assert 1 <= sent <= 20


def test_transactional_api_moves_its_metrics(registry: object) -> None:
    m = get_metrics()
    assert m is not None
    m.observe_commit_phase("prewrite", 0.01)
    m.observe_commit_phase("commit_primary", 0.002)
    m.count_commit("2pc", "ok")
    m.count_commit("1pc", "fallback")
    m.count_commit("async_commit", "err")
    m.count_lock_resolve("resolve")
    m.count_lock_resolve("query_txn_status", 3)
    m.observe_txn_write(5, 120)
    m.observe_txn_regions("2pc_prewrite", 2)
    m.observe_txn_command("commit", 0.05)
    m.observe_commit_backoff(30, 2)
    phase = "tikv_client_python_txn_commit_phase_seconds_count"
    assert value(registry, phase, phase="prewrite") == 1
    assert value(registry, phase, phase="commit_primary") == 1
    assert value(registry, "tikv_client_go_commit_txn_counter_total", type="ok") == 1
    assert value(registry, "tikv_client_go_one_pc_txn_counter_total", type="fallback") == 1
    assert value(registry, "tikv_client_go_async_commit_txn_counter_total", type="err") == 1
    actions = "tikv_client_go_lock_resolver_actions_total"
    assert value(registry, actions, type="resolve") == 1
    assert value(registry, actions, type="query_txn_status") == 3
    assert value(registry, "tikv_client_go_txn_write_kv_num_sum", scope="general") == 5
    assert value(registry, "tikv_client_go_txn_write_size_bytes_sum", scope="general") == 120
    assert (
        value(registry, "tikv_client_go_txn_regions_num_sum", type="2pc_prewrite", scope="general")
        == 2
    )
    assert (
        value(
            registry,
            "tikv_client_go_txn_cmd_duration_seconds_count",
            type="commit",
            scope="general",
        )
        == 1
    )
    assert value(registry, "tikv_client_go_txn_commit_backoff_count_sum") == 2
    with pytest.raises(ValueError, match="commit phase"):
        m.observe_commit_phase("teleport", 1.0)
    with pytest.raises(ValueError, match="lock resolver action"):
        m.count_lock_resolve("guess")
    with pytest.raises(ValueError, match="protocol"):
        m.count_commit("3pc", "ok")
    with pytest.raises(ValueError, match="result"):
        m.count_commit("2pc", "fallback")


def test_enable_is_idempotent_and_disable_unregisters() -> None:
    reg = prometheus_client.CollectorRegistry()
    original_get = AsyncRawClient.__dict__["get"]
    first = enable_metrics(reg)
    try:
        assert isinstance(first, ClientMetrics)
        assert enable_metrics(reg) is first
        assert get_metrics() is first
        # Operations are instrumented only while metrics (or tracing) are on.
        assert AsyncRawClient.__dict__["get"] is not original_get
        first.observe_backoff("regionMiss", 4)
        assert value(reg, "tikv_client_go_backoff_seconds_count", type="regionMiss") == 1
        other = prometheus_client.CollectorRegistry()
        second = enable_metrics(other)
        assert second is not first
        # The collectors moved: the first registry has none of ours any more.
        assert not [f for f in reg.collect() if f.name.startswith("tikv_client_go")]
    finally:
        disable_metrics()
    assert get_metrics() is None
    assert AsyncRawClient.__dict__["get"] is original_get
    disable_metrics()  # idempotent


def test_backoff_labels_follow_client_go(registry: object) -> None:
    m = get_metrics()
    assert m is not None
    for kind in ("tikvServerBusy", "txnLockFast", "tiflashRPC", "txnNotFound"):
        m.observe_backoff(kind, 10)
    name = "tikv_client_go_backoff_seconds_count"
    assert value(registry, name, type="serverBusy") == 1
    assert value(registry, name, type="tikvLockFast") == 1
    assert value(registry, name, type="tikvRPC") == 1
    assert value(registry, name, type="txnNotFound") == 1


async def test_lock_resolution_counts(registry: object) -> None:
    primary, secondary = b"\x10lock-primary", b"\x90lock-secondary"
    # A transactional cluster (the raw one above splits at plain keys, which API v1
    # transactional clients cannot decode as region boundaries).
    with MockCluster(stores=3, regions=4) as txn_cluster:
        await _leave_a_secondary_lock_and_read_it(txn_cluster, primary, secondary)
    actions = "tikv_client_go_lock_resolver_actions_total"
    got = {
        action: value(registry, actions, type=action)
        for action in (
            "resolve",
            "query_txn_status",
            "query_txn_status_committed",
            "expired",
            "query_resolve_locks",
            "query_resolve_lock_lite",
            "not_expired",
        )
    }
    assert got == {
        "resolve": 1,
        "query_txn_status": 1,
        "query_txn_status_committed": 1,
        "expired": 1,
        "query_resolve_locks": 1,
        "query_resolve_lock_lite": 1,  # a two-key transaction is resolved key by key
        "not_expired": 0,
    }


async def _leave_a_secondary_lock_and_read_it(
    cluster: MockCluster, primary: bytes, secondary: bytes
) -> None:
    from tikv_txn import AsyncTransactionClient

    async with (
        await AsyncTransactionClient.connect(cluster.pd_endpoints) as writer,
        await AsyncTransactionClient.connect(cluster.pd_endpoints) as reader,
    ):
        txn = await writer.begin()
        txn.put(primary, b"p")
        txn.put(secondary, b"s")
        # Commit the primary only: the secondary's lock stays for a reader to resolve.
        committer = txn._new_committer()
        assert await committer.prepare()
        await committer.prewrite()
        await committer.get_commit_ts()
        await committer.commit_primary()
        snap = reader.snapshot(await reader.current_timestamp())
        assert await snap.get(secondary) == b"s"


# -- transactions ------------------------------------------------------------------------

# MockCluster(regions=4) splits the transactional key space at 0x40 / 0x80 / 0xC0.
TXN_KEYS = [b"\x10k", b"\x50k", b"\x90k", b"\xd0k"]


@pytest.fixture
async def txn_client(registry: object) -> AsyncIterator[Any]:
    from tikv_txn import AsyncTransactionClient

    with MockCluster(stores=3, regions=4) as mock:
        async with await AsyncTransactionClient.connect(mock.pd_endpoints) as c:
            yield c


async def test_transaction_command_and_phase_metrics(registry: object, txn_client: Any) -> None:
    from tikv_pd.config import TransactionOptions

    two_pc = TransactionOptions.optimistic(async_commit=False, try_one_pc=False)
    txn = await txn_client.begin(two_pc)
    await txn.get(TXN_KEYS[0])
    await txn.batch_get(TXN_KEYS)
    txn.put(TXN_KEYS[0], b"v")
    await txn.commit()
    rolled = await txn_client.begin(two_pc)
    await rolled.rollback()
    name = "tikv_client_go_txn_cmd_duration_seconds_count"
    got = {
        command: value(registry, name, type=command, scope="general")
        for command in ("get", "batch_get", "commit", "rollback")
    }
    assert got == {"get": 1, "batch_get": 1, "commit": 1, "rollback": 1}
    phase = "tikv_client_python_txn_commit_phase_seconds_count"
    phases = {
        p: value(registry, phase, phase=p) for p in ("prewrite", "get_commit_ts", "commit_primary")
    }
    assert phases == {"prewrite": 1, "get_commit_ts": 1, "commit_primary": 1}
    assert value(registry, "tikv_client_go_commit_txn_counter_total", type="ok") == 1
    assert value(registry, "tikv_client_go_txn_write_kv_num_sum", scope="general") == 1
    # The prewrite and commit RPCs were timed per command.
    assert total(registry, "tikv_client_go_request_seconds_count", type="Prewrite") == 1
    assert total(registry, "tikv_client_go_request_seconds_count", type="Commit") == 1


async def test_commit_protocol_counters(registry: object, txn_client: Any) -> None:
    from tikv_pd.config import TransactionOptions

    one_pc = await txn_client.begin(TransactionOptions.optimistic(try_one_pc=True))
    one_pc.put(b"\x10one-pc", b"v")  # one region: committed by its prewrite
    await one_pc.commit()
    async_commit = await txn_client.begin(TransactionOptions.optimistic(async_commit=True))
    for k in TXN_KEYS:
        async_commit.put(k + b"-ac", b"v")
    await async_commit.commit()
    counts = {
        name: value(registry, f"tikv_client_go_{name}_total", type="ok")
        for name in ("one_pc_txn_counter", "async_commit_txn_counter", "commit_txn_counter")
    }
    assert counts == {
        "one_pc_txn_counter": 1,
        "async_commit_txn_counter": 1,
        "commit_txn_counter": 0,  # no plain 2PC commit happened
    }
